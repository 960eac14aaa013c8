import CKVM
import Machine

/// A buffer of a descriptor chain, checked to lie wholly in guest RAM.
public struct VirtBuffer: Equatable, Sendable {
    public let address: UInt64
    public let length: UInt32
    public let writable: Bool
}

/// Why a guest's queue cannot be trusted any more. Any of these puts the
/// device into DEVICE_NEEDS_RESET; nothing is read or written past it.
public enum QueueError: Error, Equatable, Sendable, CustomStringConvertible {
    case badSize(UInt16)
    case ringOutsideMemory(String, UInt64)
    case misaligned(String, UInt64)
    case availIndexJump(from: UInt16, to: UInt16)
    case headOutOfRange(UInt16)
    case nextOutOfRange(UInt16)
    case chainTooLong
    case zeroLength
    case bufferOutsideMemory(UInt64, UInt32)
    case readableAfterWritable
    case overlappingBuffers
    case indirectNotNegotiated
    case nestedIndirect
    case indirectWithNext
    case badIndirectTable(UInt64, UInt32)

    public var description: String {
        switch self {
        case .badSize(let s): "queue size \(s) is not a power of two within the maximum"
        case .ringOutsideMemory(let r, let a): "\(r) at 0x\(String(a, radix: 16)) is not in guest RAM"
        case .misaligned(let r, let a): "\(r) at 0x\(String(a, radix: 16)) is misaligned"
        case .availIndexJump(let f, let t): "available index jumped from \(f) to \(t), more than the queue holds"
        case .headOutOfRange(let i): "chain head \(i) is beyond the queue"
        case .nextOutOfRange(let i): "next descriptor \(i) is beyond its table"
        case .chainTooLong: "descriptor chain longer than the queue (a loop?)"
        case .zeroLength: "zero-length buffer"
        case .bufferOutsideMemory(let a, let l): "buffer 0x\(String(a, radix: 16))+\(l) is not in guest RAM"
        case .readableAfterWritable: "device-readable buffer after a device-writable one"
        case .overlappingBuffers: "a device-writable buffer overlaps another buffer of its chain"
        case .indirectNotNegotiated: "indirect descriptor without VIRTIO_F_INDIRECT_DESC"
        case .nestedIndirect: "indirect descriptor inside an indirect table"
        case .indirectWithNext: "indirect descriptor with NEXT set"
        case .badIndirectTable(let a, let l): "indirect table 0x\(String(a, radix: 16))+\(l) is malformed"
        }
    }
}

/// A chain popped from the available ring: its head (to return in the used
/// ring) and its buffers, device-readable ones first.
public struct DescriptorChain: Sendable {
    public let head: UInt16
    public let buffers: [VirtBuffer]

    public var readable: ArraySlice<VirtBuffer> { buffers.prefix { !$0.writable } }
    public var writable: ArraySlice<VirtBuffer> { buffers.drop { !$0.writable } }
}

/// The address and size of a split virtqueue as the driver configured it.
public struct QueueConfiguration: Equatable, Sendable {
    public var size: UInt16 = 0
    public var ready = false
    public var descriptorTable: UInt64 = 0
    public var availableRing: UInt64 = 0
    public var usedRing: UInt64 = 0
    public init() {}
}

/// A split virtqueue (virtio 1.2, 2.7), driven by one device thread. All
/// positions are private state, so a snapshot can save them later.
public final class VirtQueue: @unchecked Sendable {
    public static let descriptorSize: UInt64 = 16
    static let flagNext: UInt16 = 1, flagWrite: UInt16 = 2, flagIndirect: UInt16 = 4
    static let availNoInterrupt: UInt16 = 1
    /// Longest indirect table accepted (Linux uses at most a few hundred).
    public static let maxIndirect: UInt32 = 1024

    public let memory: GuestMemory
    public let size: UInt16
    public let config: QueueConfiguration
    let eventIndex: Bool
    let indirect: Bool
    public private(set) var nextAvailable: UInt16 = 0
    public private(set) var nextUsed: UInt16 = 0
    private var usedAtLastSignal: UInt16 = 0

    /// Checks the rings lie in RAM with the spec's alignment.
    public init(_ config: QueueConfiguration, maxSize: UInt16, memory: GuestMemory, eventIndex: Bool, indirect: Bool) throws(QueueError) {
        let n = UInt64(config.size)
        guard config.size > 0, config.size <= maxSize, config.size & (config.size - 1) == 0 else { throw .badSize(config.size) }
        let rings: [(String, UInt64, UInt64, UInt64)] = [
            ("descriptor table", config.descriptorTable, 16 * n, 16),
            ("available ring", config.availableRing, 6 + 2 * n, 2),
            ("used ring", config.usedRing, 6 + 8 * n, 4),
        ]
        for (name, address, length, alignment) in rings {
            guard address % alignment == 0 else { throw .misaligned(name, address) }
            guard memory.contains(address, length: length) else { throw .ringOutsideMemory(name, address) }
        }
        self.memory = memory
        self.config = config
        self.size = config.size
        self.eventIndex = eventIndex
        self.indirect = indirect
    }

    /// The device's positions in the rings: all a snapshot needs besides
    /// the configuration (the rings themselves are in guest memory).
    public struct Positions: Equatable, Sendable {
        public var nextAvailable: UInt16, nextUsed: UInt16, usedAtLastSignal: UInt16
        public init(nextAvailable: UInt16, nextUsed: UInt16, usedAtLastSignal: UInt16) {
            self.nextAvailable = nextAvailable; self.nextUsed = nextUsed; self.usedAtLastSignal = usedAtLastSignal
        }
    }

    public var positions: Positions {
        get { Positions(nextAvailable: nextAvailable, nextUsed: nextUsed, usedAtLastSignal: usedAtLastSignal) }
        set { nextAvailable = newValue.nextAvailable; nextUsed = newValue.nextUsed; usedAtLastSignal = newValue.usedAtLastSignal }
    }

    // Ring fields. The ring bounds were checked at init, so these cannot fail.
    private func ring(_ address: UInt64) -> UnsafeMutableRawPointer { try! memory.pointer(at: address, length: 2) }
    private var availIndex: UInt16 { ckvm_load_acquire_u16(ring(config.availableRing + 2)) }
    private var availFlags: UInt16 { ckvm_load_acquire_u16(ring(config.availableRing)) }
    private var usedEvent: UInt16 { ckvm_load_acquire_u16(ring(config.availableRing + 4 + 2 * UInt64(size))) }

    /// Whether the driver made a chain available that was not popped yet.
    public var hasAvailable: Bool { availIndex != nextAvailable }

    /// The next chain the driver made available, or nil if there is none.
    public func pop() throws(QueueError) -> DescriptorChain? {
        let available = availIndex
        if available == nextAvailable { return nil }
        guard available &- nextAvailable <= size else { throw .availIndexJump(from: nextAvailable, to: available) }
        let slot = UInt64(nextAvailable % size)
        let head: UInt16 = try! memory.load(UInt16.self, at: config.availableRing + 4 + 2 * slot)
        nextAvailable &+= 1
        if eventIndex {
            // avail_event: ask to be notified as soon as anything new comes.
            memory.markDirty(config.usedRing + 4 + 8 * UInt64(size), length: 2)
            ckvm_store_release_u16(ring(config.usedRing + 4 + 8 * UInt64(size)), nextAvailable)
        }
        guard head < size else { throw .headOutOfRange(head) }
        return DescriptorChain(head: head, buffers: try walk(head))
    }

    /// Follows a chain, checking every descriptor before anything uses it.
    func walk(_ head: UInt16) throws(QueueError) -> [VirtBuffer] {
        var buffers: [VirtBuffer] = []
        var table = config.descriptorTable, tableSize = UInt32(size)
        var index = UInt32(head)
        var count: UInt32 = 0
        var inIndirect = false
        var sawWritable = false
        while true {
            count += 1
            guard count <= tableSize else { throw .chainTooLong }
            let d = table + UInt64(index) * Self.descriptorSize
            let p: UnsafeMutableRawPointer
            do { p = try memory.pointer(at: d, length: Self.descriptorSize) } catch { throw .badIndirectTable(table, tableSize) }
            let address = p.loadUnaligned(as: UInt64.self)
            let length = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
            let flags = p.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            let next = p.loadUnaligned(fromByteOffset: 14, as: UInt16.self)

            if flags & Self.flagIndirect != 0 {
                guard indirect else { throw .indirectNotNegotiated }
                guard !inIndirect else { throw .nestedIndirect }
                guard flags & Self.flagNext == 0 else { throw .indirectWithNext }
                guard length > 0, length % 16 == 0, length / 16 <= Self.maxIndirect,
                      memory.contains(address, length: UInt64(length)) else { throw .badIndirectTable(address, length) }
                inIndirect = true
                table = address
                tableSize = length / 16
                index = 0
                count = 0
                continue
            }
            guard length > 0 else { throw .zeroLength }
            guard memory.contains(address, length: UInt64(length)) else { throw .bufferOutsideMemory(address, length) }
            let writable = flags & Self.flagWrite != 0
            if writable { sawWritable = true } else if sawWritable { throw .readableAfterWritable }
            buffers.append(VirtBuffer(address: address, length: length, writable: writable))
            guard flags & Self.flagNext != 0 else { break }
            guard UInt32(next) < tableSize else { throw .nextOutOfRange(next) }
            index = UInt32(next)
        }
        if buffers.count > 1, buffers.contains(where: \.writable) { try checkOverlaps(buffers) }
        return buffers
    }

    /// A device write must never land in another buffer of the same chain
    /// (it would change what the device reads next). In address order, a
    /// buffer overlaps an earlier one exactly when it starts before the
    /// furthest end seen so far: not only its neighbour's (R[A,4096]
    /// R[A+16,16] W[A+2048,1] overlaps the first, not the second). So keep
    /// that end for all earlier buffers and for the writable ones: a
    /// writable buffer may overlap none, a readable one no writable one.
    /// Ends cannot overflow: every buffer lies in guest RAM.
    func checkOverlaps(_ buffers: [VirtBuffer]) throws(QueueError) {
        var endAll: UInt64 = 0, endWritable: UInt64 = 0
        for b in buffers.sorted(by: { $0.address < $1.address }) {
            if b.address < (b.writable ? endAll : endWritable) { throw .overlappingBuffers }
            let end = b.address + UInt64(b.length)
            endAll = max(endAll, end)
            if b.writable { endWritable = max(endWritable, end) }
        }
    }

    /// Returns a chain to the driver with the number of bytes written to it.
    public func push(head: UInt16, written: UInt32) {
        let slot = UInt64(nextUsed % size)
        let element = config.usedRing + 4 + 8 * slot
        try! memory.store(UInt32(head), at: element)
        try! memory.store(written, at: element + 4)
        nextUsed &+= 1
        memory.markDirty(config.usedRing + 2, length: 2)
        ckvm_store_release_u16(ring(config.usedRing + 2), nextUsed)
    }

    /// Whether the driver wants an interrupt for what was pushed since the
    /// last one (VIRTIO_F_EVENT_IDX's used_event, or the NO_INTERRUPT flag).
    public func needsInterrupt() -> Bool {
        defer { usedAtLastSignal = nextUsed }
        guard nextUsed != usedAtLastSignal else { return false }
        ckvm_full_fence() // order our used.idx store before reading used_event
        if eventIndex {
            let event = usedEvent
            return nextUsed &- event &- 1 < nextUsed &- usedAtLastSignal
        }
        return availFlags & Self.availNoInterrupt == 0
    }
}
