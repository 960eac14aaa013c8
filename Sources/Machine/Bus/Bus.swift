/// A device on an I/O-port or MMIO bus. `offset` is relative to the base
/// the device was attached at; `data` is 1, 2, 4 or 8 bytes, little-endian.
/// Called from vCPU threads: a device guards its own state.
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// An address space (ports or guest-physical MMIO) split among devices.
/// Built before the vCPUs start and read-only after, so lookups need no lock.
/// Accesses nobody claims read as all ones and are dropped, as on a PC.
public struct Bus: Sendable {
    public struct Range: Sendable {
        public let base: UInt64
        public let length: UInt64
        public let device: any BusDevice
    }
    public private(set) var ranges: [Range] = []

    public init() {}

    public mutating func attach(_ device: any BusDevice, at base: UInt64, length: UInt64) throws(BusError) {
        guard length > 0, base <= UInt64.max - length else { throw BusError.overlap(base) }
        for r in ranges where base < r.base + r.length && r.base < base + length {
            throw BusError.overlap(base)
        }
        ranges.append(Range(base: base, length: length, device: device))
        ranges.sort { $0.base < $1.base }
    }

    public func device(at address: UInt64) -> (any BusDevice, UInt64)? {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let r = ranges[mid]
            if address < r.base { hi = mid } else if address - r.base >= r.length { lo = mid + 1 } else {
                return (r.device, address - r.base)
            }
        }
        return nil
    }

    public func read(_ address: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if let (d, offset) = device(at: address) { d.read(offset: offset, into: data) } else {
            for i in data.indices { data[i] = 0xff }
        }
    }

    public func write(_ address: UInt64, data: UnsafeRawBufferPointer) {
        if let (d, offset) = device(at: address) { d.write(offset: offset, data: data) }
    }
}

public enum BusError: Error, CustomStringConvertible {
    case overlap(UInt64)
    public var description: String {
        switch self { case .overlap(let a): "bus range at 0x\(String(a, radix: 16)) overlaps another device" }
    }
}

/// An interrupt a device can raise; wired to the VM's irqchip by the VMM.
public protocol InterruptLine: Sendable {
    /// An edge: the line goes high and low again.
    func pulse()
}
