import Glibc
import Machine
import Synchronization

/// The virtio-mmio transport (virtio 1.2, 4.2.2; version 2, the modern
/// interface): the register file a driver sees, feature negotiation, queue
/// configuration, and the device's start and reset. Device-independent.
public final class MMIOTransport: BusDevice {
    public static let windowSize: UInt64 = 0x1000
    static let magic: UInt32 = 0x7472_6976 // "virt"
    static let vendor: UInt32 = 0x4646_4b53 // "SKFF"
    /// Status bits (virtio 1.2, 2.1).
    public enum Status {
        public static let acknowledge: UInt32 = 1, driver: UInt32 = 2, driverOK: UInt32 = 4
        public static let featuresOK: UInt32 = 8, needsReset: UInt32 = 64, failed: UInt32 = 128
    }

    struct Registers {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [QueueConfiguration]
        var active = false
        var configGeneration: UInt32 = 0
    }

    public let device: any VirtioDevice
    public let signals: VirtioSignals
    /// One per queue; KVM signals them directly when ioeventfd is in use.
    public let notifiers: [EventFD]
    let memory: GuestMemory
    let state: Mutex<Registers>
    /// What the device was activated with, while it is active.
    var context: VirtioContext? { activeContext.withLock { $0 } }
    let activeContext = Mutex<VirtioContext?>(nil)
    /// Whether the device was started (and so has its thread), for the
    /// fuzz targets that wait for it.
    public var isActivated: Bool { context != nil }

    /// A deterministic machine's queue service and interrupt line (nil: a device thread and the irqfd).
    let inline: InlineQueues?

    public init(device: any VirtioDevice, memory: GuestMemory, irq: EventFD, name: String, inline: InlineQueues? = nil) throws {
        self.device = device
        self.memory = memory
        self.inline = inline
        signals = VirtioSignals(irq: irq, line: inline?.line, name: name)
        notifiers = try device.queueSizes.map { _ in try EventFD() }
        state = Mutex(Registers(queues: device.queueSizes.map { _ in QueueConfiguration() }))
    }

    public var offeredFeatures: UInt64 { device.features | VirtioFeature.transport }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset >= 0x100 {
            device.readConfig(offset: Int(offset - 0x100), into: data)
            return
        }
        // Registers are 32 bits wide and read whole (virtio 1.2, 4.2.2.2).
        guard data.count == 4, offset % 4 == 0 else { for i in data.indices { data[i] = 0 }; return }
        let value: UInt32 = state.withLock { r in
            switch offset {
            case 0x000: return Self.magic
            case 0x004: return 2
            case 0x008: return device.type.rawValue
            case 0x00c: return Self.vendor
            case 0x010:
                let f = offeredFeatures
                return r.deviceFeaturesSelect == 0 ? UInt32(truncatingIfNeeded: f) : r.deviceFeaturesSelect == 1 ? UInt32(f >> 32) : 0
            case 0x034:
                return Int(r.queueSelect) < device.queueSizes.count ? UInt32(device.queueSizes[Int(r.queueSelect)]) : 0
            case 0x044:
                return Int(r.queueSelect) < r.queues.count && r.queues[Int(r.queueSelect)].ready ? 1 : 0
            case 0x060: return signals.interruptStatus.load(ordering: .sequentiallyConsistent)
            case 0x070: return r.status | (signals.needsReset.load(ordering: .sequentiallyConsistent) ? Status.needsReset : 0)
            case 0x0fc: return r.configGeneration
            default: return 0
            }
        }
        data.storeBytes(of: value, as: UInt32.self)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        if offset >= 0x100 {
            device.writeConfig(offset: Int(offset - 0x100), data: data)
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return }
        let v = data.loadUnaligned(as: UInt32.self)
        if offset == 0x050 { // QueueNotify, when it was not caught by an ioeventfd
            if let inline { inline.notify(Int(v), signals) }
            else if Int(v) < notifiers.count { notifiers[Int(v)].signal() }
            return
        }
        if offset == 0x064 { // InterruptACK
            signals.interruptStatus.bitwiseAnd(~v, ordering: .sequentiallyConsistent)
            return
        }
        state.withLock { r in
            let q = Int(r.queueSelect)
            let configurable = q < r.queues.count && !r.queues[q].ready && !r.active
            switch offset {
            case 0x014: r.deviceFeaturesSelect = v
            case 0x020:
                guard r.status & Status.featuresOK == 0 else { break }
                if r.driverFeaturesSelect == 0 { r.driverFeatures = (r.driverFeatures & ~0xffff_ffff) | UInt64(v) }
                else if r.driverFeaturesSelect == 1 { r.driverFeatures = (r.driverFeatures & 0xffff_ffff) | UInt64(v) << 32 }
            case 0x024: r.driverFeaturesSelect = v
            case 0x030: r.queueSelect = v
            case 0x038 where configurable: r.queues[q].size = UInt16(truncatingIfNeeded: v)
            case 0x044 where q < r.queues.count && !r.active: r.queues[q].ready = v & 1 == 1
            case 0x080 where configurable: r.queues[q].descriptorTable = low(r.queues[q].descriptorTable, v)
            case 0x084 where configurable: r.queues[q].descriptorTable = high(r.queues[q].descriptorTable, v)
            case 0x090 where configurable: r.queues[q].availableRing = low(r.queues[q].availableRing, v)
            case 0x094 where configurable: r.queues[q].availableRing = high(r.queues[q].availableRing, v)
            case 0x0a0 where configurable: r.queues[q].usedRing = low(r.queues[q].usedRing, v)
            case 0x0a4 where configurable: r.queues[q].usedRing = high(r.queues[q].usedRing, v)
            case 0x070: writeStatus(&r, v)
            default: break
            }
        }
    }

    private func low(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & ~0xffff_ffff) | UInt64(v) }
    private func high(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & 0xffff_ffff) | UInt64(v) << 32 }

    private func writeStatus(_ r: inout Registers, _ v: UInt32) {
        if v == 0 {
            if r.active { device.reset() }
            activeContext.withLock { $0 = nil }
            let generation = r.configGeneration &+ 1
            r = Registers(queues: device.queueSizes.map { _ in QueueConfiguration() })
            r.configGeneration = generation
            signals.interruptStatus.store(0, ordering: .sequentiallyConsistent)
            signals.needsReset.store(false, ordering: .sequentiallyConsistent)
            return
        }
        // A driver never clears a status bit (virtio 1.2, 3.1.1); only a
        // reset does. Writes only add bits: once FEATURES_OK stands, the
        // features it accepted (frozen by it, above) are the device's until
        // the reset, and a running device cannot be talked out of them.
        var status = (v | r.status) & ~Status.needsReset
        if status & Status.featuresOK != 0 && r.status & Status.featuresOK == 0 {
            // Only features we offered, and the modern interface, are accepted.
            let ok = r.driverFeatures & ~offeredFeatures == 0 && r.driverFeatures & VirtioFeature.version1 != 0
            if !ok { status &= ~Status.featuresOK }
        }
        r.status = status
        if status & Status.driverOK != 0, status & Status.featuresOK != 0, !r.active, status & Status.failed == 0 {
            activate(&r)
        }
    }

    private func activate(_ r: inout Registers) {
        r.active = true
        do {
            // The enabled queues must be a prefix of the device's, at least
            // as long as it requires.
            let enabled = r.queues.prefix { $0.ready }
            guard enabled.count >= device.requiredQueues, !r.queues.dropFirst(enabled.count).contains(where: \.ready) else {
                signals.broken("driver set DRIVER_OK with queues \(r.queues.indices.filter { r.queues[$0].ready }) enabled")
                return
            }
            var queues: [VirtQueue] = []
            for (i, config) in enabled.enumerated() {
                queues.append(try VirtQueue(config, maxSize: device.queueSizes[i], memory: memory,
                                            eventIndex: r.driverFeatures & VirtioFeature.eventIndex != 0,
                                            indirect: r.driverFeatures & VirtioFeature.indirectDescriptors != 0))
            }
            var context = VirtioContext(memory: memory, queues: queues, notifiers: notifiers,
                                        signals: signals, features: r.driverFeatures)
            context.inline = inline
            activeContext.withLock { $0 = context }
            try device.activate(context)
        } catch {
            signals.broken("\(error)")
        }
    }
}
