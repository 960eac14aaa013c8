import Glibc
import Machine
@testable import Devices

/// A guest's virtio driver in a unit test: lays out one split queue in
/// GuestMemory (descriptor table, available ring, used ring, one page each)
/// and makes chains available, as a driver would.
final class MockDriver {
    let memory: GuestMemory
    private(set) var config = QueueConfiguration()
    private var nextAvailable: UInt16 = 0
    private var nextDescriptor: UInt16 = 0

    init(memory: GuestMemory, size: UInt16 = 16, at base: UInt64 = 0x10000) {
        self.memory = memory
        config.size = size
        config.descriptorTable = base
        config.availableRing = base + 0x1000
        config.usedRing = base + 0x2000
        config.ready = true
    }

    func queue(eventIndex: Bool = false, indirect: Bool = true, maxSize: UInt16 = 256) throws -> VirtQueue {
        try VirtQueue(config, maxSize: maxSize, memory: memory, eventIndex: eventIndex, indirect: indirect)
    }

    struct Descriptor {
        var address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0
        static func r(_ a: UInt64, _ l: UInt32) -> Self { .init(address: a, length: l) }
        static func w(_ a: UInt64, _ l: UInt32) -> Self { .init(address: a, length: l, flags: VirtQueue.flagWrite) }
    }

    /// Writes `d` at `table[index]`.
    func put(_ d: Descriptor, table: UInt64, index: UInt16) throws {
        let at = table + UInt64(index) * 16
        try memory.store(d.address, at: at)
        try memory.store(d.length, at: at + 8)
        try memory.store(d.flags, at: at + 12)
        try memory.store(d.next, at: at + 14)
    }

    /// Writes a chain of consecutive descriptors (NEXT links added) into
    /// the queue's table and makes it available; returns its head.
    @discardableResult
    func publish(_ chain: [Descriptor]) throws -> UInt16 {
        let head = nextDescriptor
        for (i, var d) in chain.enumerated() {
            let index = (head &+ UInt16(i)) % config.size
            if i < chain.count - 1 { d.flags |= VirtQueue.flagNext; d.next = (index &+ 1) % config.size }
            try put(d, table: config.descriptorTable, index: index)
        }
        nextDescriptor = (head &+ UInt16(chain.count)) % config.size
        try makeAvailable(head)
        return head
    }

    /// An indirect table at `table` holding `chain`, published as one descriptor.
    @discardableResult
    func publishIndirect(_ chain: [Descriptor], table: UInt64) throws -> UInt16 {
        for (i, var d) in chain.enumerated() {
            if i < chain.count - 1 { d.flags |= VirtQueue.flagNext; d.next = UInt16(i + 1) }
            try put(d, table: table, index: UInt16(i))
        }
        return try publish([Descriptor(address: table, length: UInt32(chain.count * 16), flags: VirtQueue.flagIndirect)])
    }

    func makeAvailable(_ head: UInt16) throws {
        try memory.store(head, at: config.availableRing + 4 + 2 * UInt64(nextAvailable % config.size))
        nextAvailable &+= 1
        try memory.store(nextAvailable, at: config.availableRing + 2)
    }

    var usedIndex: UInt16 { (try? memory.load(UInt16.self, at: config.usedRing + 2)) ?? 0 }
    func used(_ i: UInt16) throws -> (head: UInt32, length: UInt32) {
        let at = config.usedRing + 4 + 8 * UInt64(i % config.size)
        return (try memory.load(UInt32.self, at: at), try memory.load(UInt32.self, at: at + 4))
    }
}

/// A driver's register accesses on a transport.
extension MMIOTransport {
    func set(_ offset: UInt64, _ v: UInt32) { withUnsafeBytes(of: v) { write(offset: offset, data: $0) } }
    func get(_ offset: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { read(offset: offset, into: $0) }
        return v
    }

    /// Acknowledge, features (VERSION_1 | `features`), FEATURES_OK, one
    /// queue per driver (queue i from drivers[i]), DRIVER_OK.
    func start(_ drivers: [MockDriver], features: UInt64 = 0) {
        let f = features | VirtioFeature.version1
        set(0x70, 1 | 2)
        set(0x24, 1); set(0x20, UInt32(f >> 32))
        set(0x24, 0); set(0x20, UInt32(truncatingIfNeeded: f))
        set(0x70, 1 | 2 | 8)
        for (i, driver) in drivers.enumerated() {
            let c = driver.config
            set(0x30, UInt32(i)); set(0x38, UInt32(c.size))
            set(0x80, UInt32(truncatingIfNeeded: c.descriptorTable)); set(0x84, UInt32(c.descriptorTable >> 32))
            set(0x90, UInt32(truncatingIfNeeded: c.availableRing)); set(0x94, UInt32(c.availableRing >> 32))
            set(0xa0, UInt32(truncatingIfNeeded: c.usedRing)); set(0xa4, UInt32(c.usedRing >> 32))
            set(0x44, 1)
        }
        set(0x70, 1 | 2 | 8 | 4)
    }
}

extension MockDriver {
    /// Waits (up to 2 s) for the device to have returned `count` chains.
    func waitUsed(_ count: UInt16) -> Bool {
        for _ in 0..<2000 where usedIndex != count { usleep(1000) }
        return usedIndex == count
    }
}
