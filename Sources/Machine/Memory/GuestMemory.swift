import Glibc

/// Why a guest-physical access was refused.
public struct GuestMemoryError: Error, CustomStringConvertible, Equatable, Sendable {
    public let address: UInt64
    public let length: UInt64
    public var description: String {
        "guest range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) is not guest RAM"
    }
}

/// Guest RAM: anonymous host mappings at guest-physical addresses, split
/// around the 32-bit hole. Every access is checked to lie wholly within one
/// region: guest-supplied addresses and lengths can never reach past it.
public final class GuestMemory: @unchecked Sendable {
    public struct Region: @unchecked Sendable {
        public let guestBase: UInt64
        public let size: UInt64
        public let host: UnsafeMutableRawPointer
        public var guestEnd: UInt64 { guestBase + size }
    }

    public let regions: [Region]
    public let totalSize: UInt64

    /// Maps `size` bytes of RAM with `layout`'s hole. Pages are reserved
    /// lazily (MAP_NORESERVE): only what the guest touches costs host memory.
    public init(size: UInt64, layout: X86Layout.Type = X86Layout.self) throws {
        var regions: [Region] = []
        for (base, length) in layout.ramRanges(size: size) {
            guard let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), p != MAP_FAILED else {
                for r in regions { munmap(r.host, Int(r.size)) }
                throw GuestMemoryError(address: base, length: length)
            }
            regions.append(Region(guestBase: base, size: length, host: p))
        }
        self.regions = regions
        self.totalSize = size
    }

    deinit {
        for r in regions { munmap(r.host, Int(r.size)) }
    }

    /// The highest guest-physical address of RAM, plus one.
    public var end: UInt64 { regions.last?.guestEnd ?? 0 }

    /// Host pointer to `length` bytes at `address`, or an error if any byte
    /// falls outside RAM. Overflow-safe for any 64-bit inputs.
    public func pointer(at address: UInt64, length: UInt64) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        for r in regions where address >= r.guestBase && address < r.guestEnd {
            let offset = address - r.guestBase
            guard length <= r.size - offset else { break }
            return r.host + Int(offset)
        }
        throw GuestMemoryError(address: address, length: length)
    }

    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        (try? pointer(at: address, length: length)) != nil
    }

    public func write(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(at: address, length: UInt64(bytes.count))
        var i = 0
        for b in bytes { p.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        let p = try pointer(at: address, length: UInt64(bytes.count))
        p.copyMemory(from: src, byteCount: bytes.count)
    }

    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let p = try pointer(at: address, length: UInt64(count))
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    public func fill(_ byte: UInt8, at address: UInt64, length: UInt64) throws(GuestMemoryError) {
        let p = try pointer(at: address, length: length)
        memset(p, Int32(byte), Int(length))
    }

    /// Loads a trivial value; unaligned addresses are fine on x86.
    public func load<T: BitwiseCopyable>(_ type: T.Type, at address: UInt64) throws(GuestMemoryError) -> T {
        try pointer(at: address, length: UInt64(MemoryLayout<T>.size)).loadUnaligned(as: T.self)
    }

    public func store<T: BitwiseCopyable>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        try pointer(at: address, length: UInt64(MemoryLayout<T>.size)).storeBytes(of: value, as: T.self)
    }
}
