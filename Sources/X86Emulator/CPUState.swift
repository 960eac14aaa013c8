/// The architectural state an emulated instruction reads and writes: what
/// KVM_GET_REGS and KVM_GET_SREGS give, in the processor's own terms.
/// Nothing here is trusted: every value came from the guest.
public struct CPUState: Equatable, Sendable {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15: the encoding order.
    public var gpr: [UInt64] = Array(repeating: 0, count: 16)
    public var rip: UInt64 = 0
    public var rflags: UInt64 = 2
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, efer: UInt64 = 0
    public var cs = SegmentRegister(), ds = SegmentRegister(), es = SegmentRegister()
    public var fs = SegmentRegister(), gs = SegmentRegister(), ss = SegmentRegister()
    public var tr = SegmentRegister(), ldt = SegmentRegister()
    public var gdt = TableRegister(), idt = TableRegister()

    public init() {}

    public enum Mode: Equatable, Sendable {
        case real, virtual8086
        /// Protected mode outside IA-32e, with CS's default size (2 or 4).
        case protected(Int)
        /// IA-32e compatibility mode, with CS's default size (2 or 4).
        case compatibility(Int)
        case long64
    }

    public var mode: Mode {
        if cr0 & CR0.pe == 0 { return .real }
        if rflags & RFlags.vm != 0 && efer & EFER.lma == 0 { return .virtual8086 }
        if efer & EFER.lma != 0 {
            return cs.long ? .long64 : .compatibility(cs.defaultBig ? 4 : 2)
        }
        return .protected(cs.defaultBig ? 4 : 2)
    }

    public var is64: Bool { mode == .long64 }
    public var inIA32e: Bool { efer & EFER.lma != 0 }
    /// The current privilege level: CS's RPL in protected mode.
    public var cpl: UInt8 {
        switch mode {
        case .real: 0
        case .virtual8086: 3
        default: UInt8(cs.selector & 3)
        }
    }

    public func segment(_ s: SegmentName) -> SegmentRegister {
        switch s { case .es: es; case .cs: cs; case .ss: ss; case .ds: ds; case .fs: fs; case .gs: gs }
    }

    public mutating func setSegment(_ s: SegmentName, _ value: SegmentRegister) {
        switch s { case .es: es = value; case .cs: cs = value; case .ss: ss = value
        case .ds: ds = value; case .fs: fs = value; case .gs: gs = value }
    }

    /// A general register of `size` bytes (1 means the low byte: no AH-style
    /// registers are used by the instructions emulated here).
    public func register(_ index: Int, size: Int) -> UInt64 {
        truncate(gpr[index & 15], size)
    }

    /// Writes as the processor does: 32-bit results zero the upper half,
    /// 8- and 16-bit ones keep the rest of the register.
    public mutating func setRegister(_ index: Int, size: Int, _ value: UInt64) {
        let i = index & 15
        switch size {
        case 8: gpr[i] = value
        case 4: gpr[i] = value & 0xffff_ffff
        case 2: gpr[i] = (gpr[i] & ~0xffff) | (value & 0xffff)
        default: gpr[i] = (gpr[i] & ~0xff) | (value & 0xff)
        }
    }
}

@inline(__always) func truncate(_ v: UInt64, _ size: Int) -> UInt64 {
    size >= 8 ? v : v & ((1 << UInt64(size * 8)) - 1)
}

public enum SegmentName: Int, Sendable, CaseIterable { case es = 0, cs, ss, ds, fs, gs }

/// A segment register with its hidden descriptor cache, as KVM keeps it.
public struct SegmentRegister: Equatable, Sendable {
    public var selector: UInt16 = 0
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xffff
    /// The descriptor's 4-bit type field.
    public var type: UInt8 = 3
    public var present = true
    public var dpl: UInt8 = 0
    /// D/B: default operation size 32 bits (code) or a 32-bit stack (SS).
    public var defaultBig = false
    /// S: a code or data segment (not a system one).
    public var codeOrData = true
    public var long = false
    public var granularity = false
    public var available = false
    public var unusable = false

    public init() {}

    public var isCode: Bool { codeOrData && type & 8 != 0 }
    public var isConforming: Bool { isCode && type & 4 != 0 }
    public var isWritableData: Bool { codeOrData && type & 8 == 0 && type & 2 != 0 }
    public var isReadable: Bool { !isCode || type & 2 != 0 }
    public var isExpandDown: Bool { codeOrData && type & 0xc == 4 }
}

public struct TableRegister: Equatable, Sendable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0xffff
    public init(base: UInt64 = 0, limit: UInt16 = 0xffff) { self.base = base; self.limit = limit }
}

public enum CR0 {
    public static let pe: UInt64 = 1 << 0, mp: UInt64 = 1 << 1, em: UInt64 = 1 << 2, ts: UInt64 = 1 << 3
    public static let ne: UInt64 = 1 << 5, wp: UInt64 = 1 << 16, am: UInt64 = 1 << 18, pg: UInt64 = 1 << 31
}

public enum CR4 {
    public static let pse: UInt64 = 1 << 4, pae: UInt64 = 1 << 5, osfxsr: UInt64 = 1 << 9, la57: UInt64 = 1 << 12
    public static let osxsave: UInt64 = 1 << 18, smep: UInt64 = 1 << 20, smap: UInt64 = 1 << 21, pke: UInt64 = 1 << 22
}

public enum EFER {
    public static let lme: UInt64 = 1 << 8, lma: UInt64 = 1 << 10, nxe: UInt64 = 1 << 11
}

public enum RFlags {
    public static let cf: UInt64 = 1 << 0, fixed: UInt64 = 1 << 1, pf: UInt64 = 1 << 2, af: UInt64 = 1 << 4
    public static let zf: UInt64 = 1 << 6, sf: UInt64 = 1 << 7, tf: UInt64 = 1 << 8, `if`: UInt64 = 1 << 9
    public static let df: UInt64 = 1 << 10, of: UInt64 = 1 << 11, iopl: UInt64 = 3 << 12, nt: UInt64 = 1 << 14
    public static let rf: UInt64 = 1 << 16, vm: UInt64 = 1 << 17, ac: UInt64 = 1 << 18
    public static let vif: UInt64 = 1 << 19, vip: UInt64 = 1 << 20, id: UInt64 = 1 << 21
    /// The arithmetic flags.
    public static let status: UInt64 = cf | pf | af | zf | sf | of
}
