@testable import X86Emulator

/// RAM for unit tests: a flat array from guest-physical 0.
final class FlatMemory: PhysicalMemory {
    var bytes: [UInt8]
    init(size: Int) { bytes = Array(repeating: 0, count: size) }

    func read(_ address: UInt64, count: Int) -> [UInt8]? {
        guard contains(address, count: count) else { return nil }
        return Array(bytes[Int(address)..<(Int(address) + count)])
    }
    func contains(_ address: UInt64, count: Int) -> Bool { address <= UInt64(bytes.count) && UInt64(count) <= UInt64(bytes.count) - address }
    func write(_ address: UInt64, _ data: ArraySlice<UInt8>) -> Bool {
        guard contains(address, count: data.count) else { return false }
        bytes.replaceSubrange(Int(address)..<(Int(address) + data.count), with: data)
        return true
    }
    func atomicOr64(_ address: UInt64, _ bits: UInt64) -> Bool {
        guard address & 7 == 0, contains(address, count: 8) else { return false }
        bytes.setLE(Int(address), 8, bytes.le(Int(address), 8) | bits)
        return true
    }
    func compareExchange128(_ address: UInt64, expected: (UInt64, UInt64), desired: (UInt64, UInt64)) -> (old: (UInt64, UInt64), swapped: Bool)? {
        guard address & 15 == 0, contains(address, count: 16) else { return nil }
        let old = (bytes.le(Int(address), 8), bytes.le(Int(address) + 8, 8))
        if old == expected {
            bytes.setLE(Int(address), 8, desired.0); bytes.setLE(Int(address) + 8, 8, desired.1)
            return (old, true)
        }
        return (old, false)
    }

    func u64(_ a: Int) -> UInt64 { bytes.le(a, 8) }
    func set(_ a: Int, _ v: UInt64, size: Int = 8) { bytes.setLE(a, size, v) }
}

/// KVM's side of the extended state, as a 4096-byte standard XSAVE image.
final class FakeExtendedState: ExtendedStateAccess {
    var image = [UInt8](repeating: 0, count: 4096)
    var xcr0Value: UInt64 = 7
    var xssValue: UInt64 = 0
    var sets = 0
    func xcr0() -> UInt64? { xcr0Value }
    func xss() -> UInt64? { xssValue }
    func xsaveImage() -> [UInt8]? { image }
    func setXSaveImage(_ i: [UInt8]) -> Bool { image = i; sets += 1; return true }
}

/// A 64-bit kernel-mode vCPU with identity-mapped 2 MiB pages over the
/// first 4 MiB (page tables at 0x1000), the way Linux runs.
struct TestMachine {
    let memory = FlatMemory(size: 4 << 20)
    let xstate = FakeExtendedState()
    var state = CPUState()
    /// AVX at the standard offset 576, as on x86 CPUs.
    var features: CPUFeatures = {
        var f = CPUFeatures()
        f.components[2] = .init(size: 256, offset: 576, aligned: false, supervisor: false)
        f.supportedXCR0 = 7
        f.xsaveopt = true; f.xsavec = true; f.xsaves = true; f.xgetbv1 = true
        return f
    }()

    init() {
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 with two 2 MiB pages.
        memory.set(0x1000, 0x2000 | 0x7)
        memory.set(0x2000, 0x3000 | 0x7)
        memory.set(0x3000, 0x0000_0000 | 0x83)      // supervisor, writable
        memory.set(0x3008, 0x0020_0000 | 0x87)      // user, writable
        state.cr0 = CR0.pe | CR0.pg | CR0.wp | CR0.ne | CR0.mp
        state.cr3 = 0x1000
        state.cr4 = CR4.pae | CR4.osxsave
        state.efer = EFER.lme | EFER.lma | EFER.nxe
        state.cs.selector = 0x10; state.cs.type = 0xb; state.cs.long = true; state.cs.limit = 0xffff_ffff
        state.ss.selector = 0x18; state.ss.type = 3; state.ss.defaultBig = true; state.ss.limit = 0xffff_ffff
        for s in [SegmentName.ds, .es, .fs, .gs] { var r = SegmentRegister(); r.unusable = true; state.setSegment(s, r) }
        state.rip = 0x10_0000
        state.rflags = RFlags.fixed
    }

    var emulator: Emulator { Emulator(features: features, memory: memory, context: xstate) }

    func run(_ bytes: [UInt8]) -> Emulator.Outcome { emulator.execute(bytes: bytes, state: state) }

    /// Runs and expects completion; returns the new state and exception.
    func complete(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> (CPUState, X86Exception?) {
        switch run(bytes) {
        case .completed(_, let s, let e): return (s, e)
        case .notEmulated(let why): fatalError("not emulated: \(why)")
        }
    }
}
