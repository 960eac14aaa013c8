import CKVM
import KVM

/// Puts a vCPU in the state a boot protocol promises at the kernel's entry.
public enum VcpuBoot {
    public enum MSR {
        public static let sysenterCS: UInt32 = 0x174, sysenterESP: UInt32 = 0x175, sysenterEIP: UInt32 = 0x176
        public static let star: UInt32 = 0xc000_0081, lstar: UInt32 = 0xc000_0082, cstar: UInt32 = 0xc000_0083
        public static let syscallMask: UInt32 = 0xc000_0084, kernelGSBase: UInt32 = 0xc000_0102
        public static let tsc: UInt32 = 0x10, miscEnable: UInt32 = 0x1a0, mtrrDefType: UInt32 = 0x2ff
    }

    /// Architectural reset values a firmware would leave behind.
    public static let bootMSRs: [(index: UInt32, value: UInt64)] = [
        (MSR.sysenterCS, 0), (MSR.sysenterESP, 0), (MSR.sysenterEIP, 0),
        (MSR.star, 0), (MSR.lstar, 0), (MSR.cstar, 0), (MSR.syscallMask, 0), (MSR.kernelGSBase, 0),
        (MSR.tsc, 0),
        (MSR.miscEnable, 1),                    // fast strings
        (MSR.mtrrDefType, (1 << 11) | 6),       // MTRRs on, write-back by default
    ]

    public static func configure(_ vcpu: KVMVcpu, entry: KernelImage.Entry) throws {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37f
        fpu.mxcsr = 0x1f80
        try vcpu.setFPU(fpu)

        var sregs = try vcpu.specialRegisters()
        var regs = kvm_regs()
        regs.rflags = 0x2
        sregs.gdt.base = X86Layout.gdtAddress
        sregs.gdt.limit = UInt16(BootSetup.gdt.count * 8 - 1)
        sregs.idt.base = X86Layout.idtAddress
        sregs.idt.limit = 7
        let data = segment(selector: BootSetup.dataSelector, type: 3, long: false)
        sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        sregs.tr = segment(selector: BootSetup.tssSelector, type: 0xb, long: false, system: true)

        switch entry {
        case .long64(let address):
            sregs.cs = segment(selector: BootSetup.codeSelector64, type: 0xb, long: true)
            sregs.cr3 = X86Layout.pml4
            sregs.cr4 |= 1 << 5                      // PAE
            sregs.cr0 |= 1 | (1 << 31)               // PE, PG
            sregs.efer |= (1 << 8) | (1 << 10)       // LME, LMA
            regs.rip = address
            regs.rsp = X86Layout.bootStack
            regs.rbp = X86Layout.bootStack
            regs.rsi = X86Layout.zeroPage
        case .pvh32(let address):
            sregs.cs = segment(selector: BootSetup.codeSelector32, type: 0xb, long: false)
            sregs.cr0 = (sregs.cr0 | 1) & ~(1 << 31)  // PE, paging off
            sregs.cr4 = 0
            sregs.efer = 0
            regs.rip = UInt64(address)
            regs.rbx = X86Layout.pvhStartInfo
        }
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(regs)
    }

    /// A flat segment (base 0, 4 GiB) as KVM caches it.
    static func segment(selector: UInt16, type: UInt8, long: Bool, system: Bool = false) -> kvm_segment {
        var s = kvm_segment()
        s.base = 0
        s.limit = system ? 0x67 : 0xffff_ffff
        s.selector = selector
        s.type = type
        s.present = 1
        s.dpl = 0
        s.db = (long || system) ? 0 : 1
        s.s = system ? 0 : 1
        s.l = long ? 1 : 0
        s.g = system ? 0 : 1
        return s
    }

    /// LINT0 as ExtINT and LINT1 as NMI, as a BIOS leaves them, so the
    /// legacy PIC reaches the boot CPU before the guest sets up its IOAPIC.
    public static func configureLocalInterrupts(_ vcpu: KVMVcpu) throws {
        var lapic = try vcpu.lapic()
        withUnsafeMutableBytes(of: &lapic.regs) { regs in
            func set(_ offset: Int, mode: UInt32) {
                let v = regs.load(fromByteOffset: offset, as: UInt32.self)
                regs.storeBytes(of: (v & ~0x700) | (mode << 8), toByteOffset: offset, as: UInt32.self)
            }
            set(0x350, mode: 7) // LVT LINT0: ExtINT
            set(0x360, mode: 4) // LVT LINT1: NMI
        }
        try vcpu.setLAPIC(lapic)
    }
}
