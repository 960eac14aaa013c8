// The instruction completion as a hostile guest drives it: any instruction
// bytes, any registers and control registers, page tables and XSAVE areas
// made of the input. It never traps; a fault leaves every register but CR2
// as it was; KVM is only ever handed a whole XSAVE image.
//
// Input: [mode][15 instruction bytes][16 x 8 GPR bytes][8 control bytes]
// [the rest: guest RAM from physical 0 (page tables, descriptor tables, data)].
import X86Emulator

final class FuzzMemory: PhysicalMemory {
    var bytes: [UInt8]
    init(_ b: [UInt8]) { bytes = b }
    func read(_ address: UInt64, count: Int) -> [UInt8]? {
        guard contains(address, count: count) else { return nil }
        return Array(bytes[Int(address)..<(Int(address) + count)])
    }
    func contains(_ address: UInt64, count: Int) -> Bool { count >= 0 && address <= UInt64(bytes.count) && UInt64(count) <= UInt64(bytes.count) - address }
    func write(_ address: UInt64, _ data: ArraySlice<UInt8>) -> Bool {
        guard contains(address, count: data.count) else { return false }
        bytes.replaceSubrange(Int(address)..<(Int(address) + data.count), with: data)
        return true
    }
    func atomicOr64(_ address: UInt64, _ bits: UInt64) -> Bool {
        guard address & 7 == 0, contains(address, count: 8) else { return false }
        for i in 0..<8 { bytes[Int(address) + i] |= UInt8(truncatingIfNeeded: bits >> UInt64(8 * i)) }
        return true
    }
    func compareExchange128(_ address: UInt64, expected: (UInt64, UInt64), desired: (UInt64, UInt64)) -> (old: (UInt64, UInt64), swapped: Bool)? {
        guard address & 15 == 0, contains(address, count: 16) else { return nil }
        return ((0, 0), false)
    }
}

final class FuzzXState: ExtendedStateAccess {
    var image: [UInt8]
    let xcr0Value: UInt64
    init(image: [UInt8], xcr0: UInt64) { self.image = image; xcr0Value = xcr0 }
    func xcr0() -> UInt64? { xcr0Value }
    func xss() -> UInt64? { 0 }
    func xsaveImage() -> [UInt8]? { image }
    func setXSaveImage(_ i: [UInt8]) -> Bool {
        precondition(i.count == 4096, "a partial XSAVE image reached KVM")
        image = i
        return true
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard input.count >= 1 + 15 + 128 + 8 else { return 0 }
    func le(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(input[at + $1]) << UInt64(8 * $1) } }
    let mode = input[0]
    let bytes = Array(input[1..<16])
    var s = CPUState()
    for i in 0..<16 { s.gpr[i] = le(16 + 8 * i) }
    let control = Array(input[144..<152])
    let ram = Array(input[152...]) + [UInt8](repeating: 0, count: max(0, 65536 - (input.count - 152)))
    s.cr3 = UInt64(control[0]) << 12 & 0xf000
    s.cr0 = CR0.pe | (control[1] & 1 != 0 ? CR0.pg : 0) | (control[1] & 2 != 0 ? CR0.wp : 0) | (control[1] & 4 != 0 ? CR0.ts : 0) | CR0.ne
    s.cr4 = (control[2] & 1 != 0 ? CR4.osxsave : 0) | (control[2] & 2 != 0 ? CR4.smap : 0) | (control[2] & 4 != 0 ? CR4.la57 : 0) | CR4.pae
    s.rflags = UInt64(control[3]) << 8 | UInt64(control[4]) | RFlags.fixed
    s.gdt = TableRegister(base: UInt64(control[5]) << 8, limit: UInt16(control[6]) << 4 | 7)
    switch mode % 4 {
    case 0, 1: // 64-bit, kernel or user mode
        s.efer = EFER.lme | EFER.lma | EFER.nxe
        s.cs.long = true
        s.cs.selector = mode % 4 == 1 ? 0x33 : 0x10
    case 2: // 32-bit protected mode
        s.cs.defaultBig = true; s.cs.selector = 0x08; s.ss.defaultBig = control[7] & 1 != 0
        s.cr4 &= ~CR4.pae
    default: // compatibility mode
        s.efer = EFER.lme | EFER.lma
        s.cs.defaultBig = true; s.cs.selector = 0x23
    }
    s.rip = le(8) & 0xffff
    var features = CPUFeatures()
    features.components[2] = .init(size: 256, offset: 576, aligned: false, supervisor: false)
    features.components[5] = .init(size: 64, offset: 1088, aligned: control[7] & 2 != 0, supervisor: false)
    features.xsavec = true; features.xgetbv1 = true
    let memory = FuzzMemory(ram)
    let xstate = FuzzXState(image: Array(ram.prefix(4096)), xcr0: 0x27 & (UInt64(control[7]) | 3))
    let outcome = Emulator(features: features, memory: memory, context: xstate).execute(bytes: bytes, state: s)
    if case .completed(_, let after, let e?) = outcome, !e.isTrap {
        var same = after
        same.cr2 = s.cr2
        precondition(same == s, "a fault changed registers")
        if e.vector == 14 { precondition(after.cr2 == e.address, "#PF without CR2") }
    }
    precondition(memory.bytes.count == ram.count)
    return 0
}
