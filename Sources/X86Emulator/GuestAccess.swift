/// Guest-physical memory as the emulator sees it. Implementations bound
/// every access: an address outside RAM is an answer (`nil`, `false`), not
/// a trap.
public protocol PhysicalMemory {
    func read(_ address: UInt64, count: Int) -> [UInt8]?
    /// Whether all `count` bytes at `address` are RAM (checked before a
    /// store, so that a store half outside RAM changes nothing).
    func contains(_ address: UInt64, count: Int) -> Bool
    func write(_ address: UInt64, _ bytes: ArraySlice<UInt8>) -> Bool
    /// Sets bits of an aligned 8-byte word atomically (page-table A/D bits,
    /// which other vCPUs may be updating).
    func atomicOr64(_ address: UInt64, _ bits: UInt64) -> Bool
    /// LOCK CMPXCHG16B on an aligned 16-byte word: returns the old value
    /// and whether it matched; nil outside RAM.
    func compareExchange128(_ address: UInt64, expected: (UInt64, UInt64), desired: (UInt64, UInt64)) -> (old: (UInt64, UInt64), swapped: Bool)?
}

/// The vCPU state beyond the registers, read only by the instructions that
/// need it (each read is a KVM call).
public protocol ExtendedStateAccess {
    /// XCR0 as the guest set it.
    func xcr0() -> UInt64?
    /// IA32_XSS as the guest set it.
    func xss() -> UInt64?
    /// The vCPU's x87/SSE/AVX/... state in the standard XSAVE layout
    /// (KVM_GET_XSAVE: 4096 bytes, header at 512).
    func xsaveImage() -> [UInt8]?
    func setXSaveImage(_ image: [UInt8]) -> Bool
}

extension [UInt8] {
    func le(_ offset: Int, _ size: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<size where offset + i < count { v |= UInt64(self[offset + i]) << UInt64(8 * i) }
        return v
    }

    mutating func setLE(_ offset: Int, _ size: Int, _ value: UInt64) {
        for i in 0..<size where offset + i < count { self[offset + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * i)) }
    }
}
