import Glibc
import Machine
import Synchronization

/// Device types (virtio 1.2, 5).
public enum VirtioDeviceType: UInt32, Sendable {
    case net = 1, block = 2, rng = 4, balloon = 5, vsock = 19
}

/// Feature bits every Skiff device offers (virtio 1.2, 6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
    public static let transport = indirectDescriptors | eventIndex | version1
}

/// What a device model implements; the transport does the rest.
public protocol VirtioDevice: AnyObject, Sendable {
    var type: VirtioDeviceType { get }
    /// Device-specific feature bits (the transport adds its own).
    var features: UInt64 { get }
    /// One entry per queue: its largest size.
    var queueSizes: [UInt16] { get }
    /// How many queues, counted from the first, a driver must enable; the
    /// rest depend on features it may not take (the balloon's).
    var requiredQueues: Int { get }
    /// Device configuration space, read and written at byte offsets.
    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer)
    func writeConfig(offset: Int, data: UnsafeRawBufferPointer)
    /// Called once the driver sets DRIVER_OK with valid queues; starts the
    /// device's work (its own thread). A throw marks the device broken.
    func activate(_ context: VirtioContext) throws
    /// Stops the device's work and forgets the queues (status written 0).
    func reset()

    // Pause and snapshot (defaults below suit devices whose only state is
    // their queues).
    /// Stops the device's thread between two requests, keeping its state:
    /// what it had started is finished, nothing new is taken.
    func quiesce()
    /// Starts the work again after `quiesce`, on the same queues.
    func resume(_ context: VirtioContext) throws
    /// Device state beyond the transport's (which saves the queues).
    func saveState(_ w: inout StateWriter)
    func restoreState(_ r: inout StateReader) throws(SnapshotError)
    /// Called once a restored device is active again: what the host side
    /// could not keep (vsock connections) is told to the guest here.
    func didRestore()
}

extension VirtioDevice {
    public var requiredQueues: Int { queueSizes.count }
    public func quiesce() { reset() }
    public func resume(_ context: VirtioContext) throws { try activate(context) }
    public func saveState(_ w: inout StateWriter) {}
    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {}
    public func didRestore() {}
}

/// Lets a device raise interrupts and report a misbehaving driver without
/// touching the transport's lock: both are atomics the transport reads.
public final class VirtioSignals: Sendable {
    static let usedBuffer: UInt32 = 1, configChange: UInt32 = 2
    let interruptStatus = Atomic<UInt32>(0)
    let needsReset = Atomic<Bool>(false)
    let irq: EventFD
    /// A deterministic machine's PIC line, in place of the irqfd.
    let line: (any InterruptLine)?
    let name: String

    init(irq: EventFD, line: (any InterruptLine)? = nil, name: String) {
        self.irq = irq
        self.line = line
        self.name = name
    }

    func raise() {
        if let line { line.pulse() } else { irq.signal() }
    }

    public func usedBuffers() {
        interruptStatus.bitwiseOr(Self.usedBuffer, ordering: .sequentiallyConsistent)
        raise()
    }

    /// The driver broke the rules: DEVICE_NEEDS_RESET and a config-change
    /// interrupt (virtio 1.2, 2.1.2). Logged once per device.
    public func broken(_ why: String) {
        if !needsReset.exchange(true, ordering: .sequentiallyConsistent) {
            var line = Array("skiff: \(name): \(why); device needs reset\n".utf8)
            _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        }
        interruptStatus.bitwiseOr(Self.configChange, ordering: .sequentiallyConsistent)
        raise()
    }
}

/// What an activated device works with.
public struct VirtioContext: Sendable {
    public let memory: GuestMemory
    /// The queues the driver enabled: a prefix of the device's.
    public let queues: [VirtQueue]
    /// One per queue of the device, enabled or not: signalled when the
    /// driver notifies that queue (so there may be more than `queues`).
    public let notifiers: [EventFD]
    public let signals: VirtioSignals
    public let features: UInt64
    /// A deterministic machine's: queues served at the notify exit, no thread.
    public var inline: InlineQueues? = nil
}

extension VirtQueue {
    /// Serves every available chain (`serve` returns the bytes it wrote to
    /// the chain), then interrupts if the driver wants one.
    public func drain(_ signals: VirtioSignals, _ serve: (DescriptorChain) -> UInt32) throws(QueueError) {
        var any = false
        while let chain = try pop() {
            push(head: chain.head, written: serve(chain))
            any = true
        }
        if any && needsInterrupt() { signals.usedBuffers() }
    }
}

/// Where a device keeps its worker between activation and reset.
public final class WorkerSlot: Sendable {
    private let worker = Mutex<QueueWorker?>(nil)
    public init() {}
    public func set(_ w: QueueWorker) { worker.withLock { $0 = w } }
    /// Stops the worker, if any, and waits for it.
    public func stop() {
        let w = worker.withLock { w -> QueueWorker? in defer { w = nil }; return w }
        w?.shutdown()
    }
}

/// A device's worker thread: waits for queue notifications (or its stop
/// signal) and hands each notified queue to the device. A `QueueError`
/// from the handler breaks the device; the thread then idles until reset.
public final class QueueWorker: @unchecked Sendable {
    private let stop: EventFD
    private var thread: HostThread?
    private var inline: InlineQueues?

    /// With `pollQueue`, after serving a burst the thread keeps watching that
    /// queue's available ring for `pollNanoseconds` before it sleeps again:
    /// a driver that submits its next request at once is served without a
    /// wake-up (the cost that dominates small requests at queue depth 1).
    public init(name: String, context: VirtioContext, extraFDs: [Int32] = [], pollQueue: Int? = nil,
                pollNanoseconds: Int = 50_000,
                handle: @escaping @Sendable (_ queue: Int, _ readyFD: Int32?) throws(QueueError) -> Void) throws {
        let stop = try EventFD()
        self.stop = stop
        if let inline = context.inline {
            // No thread: the notify exit serves the queue (InlineQueues).
            inline.broken = false
            inline.handle = { q throws(QueueError) in
                guard q < context.queues.count else { return }
                try handle(q, nil)
            }
            self.inline = inline
            return
        }
        let notifierFDs = context.notifiers.map(\.fd)
        thread = try HostThread(name: name) {
            var broken = false
            while true {
                // A broken device waits for its reset only: a readable
                // backend it no longer serves would otherwise spin it.
                let ready = Poller.wait(broken ? [stop.fd] : [stop.fd] + notifierFDs + extraFDs)
                if ready.contains(stop.fd) { return }
                for fd in ready {
                    if let q = notifierFDs.firstIndex(of: fd) {
                        context.notifiers[q].consume()
                        // Every queue's notifier is watched (and drained, so
                        // it cannot keep poll awake), but only the enabled
                        // queues exist: a notify for another one (a driver
                        // that enabled fewer, a restore signalling them all)
                        // is ignored.
                        guard !broken, q < context.queues.count else { continue }
                        do throws(QueueError) {
                            try handle(q, nil)
                            if let p = pollQueue, p == q {
                                try Self.busyPoll(context.queues[p], nanoseconds: pollNanoseconds) { () throws(QueueError) in try handle(p, nil) }
                            }
                        } catch {
                            broken = true
                            context.signals.broken("\(error)")
                        }
                    } else if !broken {
                        do throws(QueueError) { try handle(-1, fd) } catch {
                            broken = true
                            context.signals.broken("\(error)")
                        }
                    }
                }
            }
        }
    }

    static func busyPoll(_ queue: VirtQueue, nanoseconds: Int, _ handle: () throws(QueueError) -> Void) throws(QueueError) {
        var deadline = monotonicNanoseconds() + nanoseconds
        while monotonicNanoseconds() < deadline {
            if queue.hasAvailable {
                try handle()
                deadline = monotonicNanoseconds() + nanoseconds
            }
        }
    }

    static func monotonicNanoseconds() -> Int {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return t.tv_sec * 1_000_000_000 + t.tv_nsec
    }

    /// Stops the thread and waits for it.
    public func shutdown() {
        if let inline { inline.handle = nil; self.inline = nil }
        stop.signal()
        thread?.join()
        thread = nil
    }
}
