import Glibc
import Machine
import Synchronization

/// virtio-balloon (virtio 1.2, 5.5): the host asks for `target` pages; the
/// guest hands pages over (inflate) and Skiff drops them from host memory
/// with MADV_DONTNEED (they read back as zeros if the guest takes them
/// back). Also: memory statistics, deflate-on-OOM, and free page
/// reporting (pages the guest is not using, dropped the same way).
public final class Balloon: VirtioDevice {
    public struct Options: Sendable {
        /// Balloon size the host asks for, in MiB.
        public var targetMiB: UInt32 = 0
        public var deflateOnOOM = true
        public var freePageReporting = true
        public init() {}
    }
    enum Feature {
        static let statsQueue: UInt64 = 1 << 1, deflateOnOOM: UInt64 = 1 << 2, reporting: UInt64 = 1 << 5
    }
    public static let pageSize: UInt64 = 4096
    /// Statistics tags (virtio 1.2, 5.5.6.3) by name.
    public static let statNames: [UInt16: String] = [0: "swap-in", 1: "swap-out", 2: "major-faults", 3: "minor-faults",
        4: "free", 5: "total", 6: "available", 7: "caches", 8: "hugetlb-allocations", 9: "hugetlb-failures"]

    public struct State: Sendable {
        public var actualPages: UInt32 = 0
        public var inflatedPages: UInt64 = 0
        public var reportedPages: UInt64 = 0
        public var stats: [UInt16: UInt64] = [:]
    }

    public let type = VirtioDeviceType.balloon
    public let options: Options
    public let queueSizes: [UInt16] = [256, 256, 256, 256] // inflate, deflate, stats, reporting
    public let requiredQueues = 2
    private let state = Mutex(State())
    private let worker = WorkerSlot()
    /// The stats buffer the guest last sent, held until fresh numbers are
    /// wanted; only the worker thread touches the queues.
    private let heldStats = Mutex<UInt16?>(nil)
    private let statsWanted: EventFD

    public init(_ options: Options) throws {
        self.options = options
        statsWanted = try EventFD()
    }

    public var features: UInt64 {
        Feature.statsQueue | (options.deflateOnOOM ? Feature.deflateOnOOM : 0) | (options.freePageReporting ? Feature.reporting : 0)
    }

    public var snapshot: State { state.withLock { $0 } }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        // num_pages is 32 bits: a target past 16 TiB (an option or a
        // snapshot's) is clamped, not trapped on.
        let target = UInt32(clamping: UInt64(options.targetMiB) << 20 / Self.pageSize)
        let actual = state.withLock { $0.actualPages }
        var config = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: target.littleEndian) { for i in 0..<4 { config[i] = $0[i] } }
        withUnsafeBytes(of: actual.littleEndian) { for i in 0..<4 { config[4 + i] = $0[i] } }
        for i in data.indices { data[i] = offset >= 0 && offset + i < config.count ? config[offset + i] : 0 }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        // Only `actual` (offset 4) is the driver's to write.
        guard offset == 4, data.count == 4 else { return }
        state.withLock { $0.actualPages = data.loadUnaligned(as: UInt32.self) }
    }

    public func activate(_ context: VirtioContext) throws {
        let memory = context.memory
        let negotiated = context.features
        // Queue roles follow the features the driver took (virtio 1.2, 5.5.2).
        var index = 2
        let statsQueue = negotiated & Feature.statsQueue != 0 && context.queues.count > index ? index : nil
        if statsQueue != nil { index += 1 }
        let reportingQueue = negotiated & Feature.reporting != 0 && context.queues.count > index ? index : nil
        worker.set(try QueueWorker(name: "virtio-balloon", context: context, extraFDs: [statsWanted.fd]) { [self] q, _ throws(QueueError) in
            if q < 0 { // the host wants statistics: hand the held buffer back
                statsWanted.consume()
                if let s = statsQueue, let head = heldStats.withLock({ h in defer { h = nil }; return h }) {
                    context.queues[s].push(head: head, written: 0)
                    if context.queues[s].needsInterrupt() { context.signals.usedBuffers() }
                }
                return
            }
            let queue = context.queues[q]
            var used = false
            while let chain = try queue.pop() {
                switch q {
                case 0: // inflate: PFNs (u32) of pages the guest gives up
                    let io = ChainIO(memory: memory, buffers: chain.readable)
                    let pfns = io.read(offset: 0, count: Int(min(io.length, 1 << 16)))
                    var dropped: UInt64 = 0
                    for i in stride(from: 0, to: pfns.count - 3, by: 4) {
                        let pfn = UInt64(pfns[i]) | UInt64(pfns[i + 1]) << 8 | UInt64(pfns[i + 2]) << 16 | UInt64(pfns[i + 3]) << 24
                        if discard(memory, pfn * Self.pageSize, Self.pageSize) { dropped += 1 } // a u32 PFN: < 2^44
                    }
                    // The counters are for reports; they start from whatever a
                    // snapshot said, so they wrap rather than trap.
                    state.withLock { $0.inflatedPages &+= dropped }
                    queue.push(head: chain.head, written: 0)
                case 1: // deflate: the pages come back on first touch
                    queue.push(head: chain.head, written: 0)
                case statsQueue:
                    let io = ChainIO(memory: memory, buffers: chain.readable)
                    let bytes = io.read(offset: 0, count: Int(min(io.length, 10 * 64)))
                    var stats: [UInt16: UInt64] = [:]
                    for i in stride(from: 0, to: bytes.count - 9, by: 10) {
                        let tag = UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8
                        let value = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[i + 2 + $1]) << (8 * $1) }
                        stats[tag] = value
                    }
                    state.withLock { $0.stats = stats }
                    // Kept until the host wants fresh numbers (returning it asks).
                    heldStats.withLock { $0 = chain.head }
                    continue
                case reportingQueue: // free page reporting: ranges the guest is not using
                    var dropped: UInt64 = 0
                    for b in chain.buffers where discard(memory, b.address, UInt64(b.length)) {
                        dropped += UInt64(b.length) / Self.pageSize
                    }
                    state.withLock { $0.reportedPages &+= dropped }
                    queue.push(head: chain.head, written: 0)
                default:
                    queue.push(head: chain.head, written: 0)
                }
                used = true
            }
            if used && queue.needsInterrupt() { context.signals.usedBuffers() }
        })
    }

    /// Asks the guest for fresh statistics (it answers on the stats queue).
    public func requestStatistics() {
        statsWanted.signal()
    }

    /// Drops whole pages in [address, address+length) that are guest RAM.
    private func discard(_ memory: GuestMemory, _ address: UInt64, _ length: UInt64) -> Bool {
        guard length > 0, address % Self.pageSize == 0, length % Self.pageSize == 0,
              let p = try? memory.pointer(at: address, length: length) else { return false }
        memory.markDirty(address, length: length) // its content changes (to zeros, or the snapshot's)
        return madvise(p, Int(length), MADV_DONTNEED) == 0
    }

    public func reset() {
        worker.stop()
        heldStats.withLock { $0 = nil }
    }

    /// Pausing keeps the stats buffer the guest lent us.
    public func quiesce() { worker.stop() }

    public func saveState(_ w: inout StateWriter) {
        let s = snapshot
        w.u32(s.actualPages)
        w.u64(s.inflatedPages)
        w.u64(s.reportedPages)
        let held = heldStats.withLock { $0 }
        w.bool(held != nil)
        w.u16(held ?? 0)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        let actual = try r.u32(), inflated = try r.u64(), reported = try r.u64()
        let hasHeld = try r.bool()
        let held = try r.u16()
        state.withLock { $0.actualPages = actual; $0.inflatedPages = inflated; $0.reportedPages = reported }
        heldStats.withLock { $0 = hasHeld ? held : nil }
    }
}
