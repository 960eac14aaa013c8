/// Decodes the one instruction KVM's emulator gave up on, from the bytes at
/// the guest's RIP. Only the instructions Skiff completes are recognised;
/// everything else is `.notEmulated`, so the VM stops with its bytes named
/// rather than run on a guess.
public enum Mnemonic: String, Equatable, Sendable {
    case xsave, xsaveopt, xsavec, xsaves, xrstor, xrstors
    case cmpxchg16b, popcnt, lsl
    case clac, stac, xgetbv
    case int3, iret, fwait, fnclex, fninit
    case ldmxcsr, stmxcsr
}

/// A memory operand, before segmentation: base + index * scale + disp.
public struct MemoryOperand: Equatable, Sendable {
    public var segment: SegmentName
    public var base: Int?
    public var index: Int?
    public var scale: UInt64 = 1
    public var displacement: Int64 = 0
    public var ripRelative = false
    /// 2, 4 or 8 bytes: how the address is computed and truncated.
    public var addressSize: Int
}

public struct Instruction: Equatable, Sendable {
    public var operation: Mnemonic
    public var length: Int
    /// 2, 4 or 8.
    public var operandSize: Int
    public var rexW = false
    public var lock = false
    /// ModRM.reg with REX.R (the register operand), when there is a ModRM.
    public var reg = 0
    /// ModRM.rm with REX.B, when the r/m operand is a register.
    public var rmRegister: Int?
    public var memory: MemoryOperand?
}

public enum DecodeResult: Equatable, Sendable {
    case instruction(Instruction)
    /// An encoding real hardware rejects: deliver this fault.
    case fault(X86Exception)
    /// The bytes ran out before the instruction did (the rest lies on a page
    /// KVM did not fetch).
    case truncated
    /// Not one of the instructions Skiff emulates.
    case notEmulated
}

public enum Decoder {
    public static let maxLength = 15

    public static func decode(_ bytes: [UInt8], mode: CPUState.Mode) -> DecodeResult {
        var p = 0
        func next() -> UInt8? {
            guard p < bytes.count, p < maxLength else { return nil }
            defer { p += 1 }
            return bytes[p]
        }
        let is64 = mode == .long64
        let defaultSize: Int
        switch mode {
        case .long64: defaultSize = 4
        case .protected(let s), .compatibility(let s): defaultSize = s
        case .real, .virtual8086: return .notEmulated
        }
        var opsize66 = false, addr67 = false, lock = false, repF3 = false, repF2 = false
        var segment: SegmentName?
        var rex: UInt8 = 0
        var op: UInt8 = 0
        prefixes: while true {
            guard let b = next() else { return p >= maxLength ? .fault(.generalProtection()) : .truncated }
            switch b {
            case 0x66: opsize66 = true; rex = 0
            case 0x67: addr67 = true; rex = 0
            case 0xf0: lock = true; rex = 0
            case 0xf2: repF2 = true; repF3 = false; rex = 0
            case 0xf3: repF3 = true; repF2 = false; rex = 0
            case 0x26: segment = .es; rex = 0
            case 0x2e: segment = .cs; rex = 0
            case 0x36: segment = .ss; rex = 0
            case 0x3e: segment = .ds; rex = 0
            case 0x64: segment = .fs; rex = 0
            case 0x65: segment = .gs; rex = 0
            case 0x40...0x4f where is64: rex = b
            default: op = b; break prefixes
            }
        }
        let rexW = rex & 8 != 0
        let operandSize = rexW ? 8 : (opsize66 ? (defaultSize == 4 ? 2 : 4) : defaultSize)
        let addressSize = is64 ? (addr67 ? 4 : 8) : (addr67 ? (defaultSize == 4 ? 2 : 4) : defaultSize)
        let mandatory = opsize66 || repF2 || repF3
        var inst = Instruction(operation: .int3, length: 0, operandSize: operandSize, rexW: rexW, lock: lock)

        // ModRM (+ SIB, displacement) for the r/m forms.
        func modrm(_ m: UInt8) -> DecodeResult? {
            let mod = m >> 6, regField = Int((m >> 3) & 7), rm = Int(m & 7)
            inst.reg = regField | (rex & 4 != 0 ? 8 : 0)
            if mod == 3 { inst.rmRegister = rm | (rex & 1 != 0 ? 8 : 0); return nil }
            var mem = MemoryOperand(segment: segment ?? .ds, addressSize: addressSize)
            func disp(_ n: Int) -> Int64? {
                var v: UInt64 = 0
                for i in 0..<n { guard let b = next() else { return nil }; v |= UInt64(b) << UInt64(8 * i) }
                return n == 1 ? Int64(Int8(truncatingIfNeeded: v)) : n == 2 ? Int64(Int16(truncatingIfNeeded: v)) : Int64(Int32(truncatingIfNeeded: v))
            }
            if addressSize == 2 {
                let pairs: [(Int?, Int?)] = [(3, 6), (3, 7), (5, 6), (5, 7), (6, nil), (7, nil), (5, nil), (3, nil)]
                if mod == 0 && rm == 6 {
                    guard let d = disp(2) else { return .truncated }
                    mem.displacement = d
                } else {
                    (mem.base, mem.index) = pairs[rm]
                    if mod == 1 { guard let d = disp(1) else { return .truncated }; mem.displacement = d }
                    if mod == 2 { guard let d = disp(2) else { return .truncated }; mem.displacement = d }
                    if segment == nil && (rm == 2 || rm == 3 || rm == 6) { mem.segment = .ss }
                }
                inst.memory = mem
                return nil
            }
            if rm == 4 {
                guard let sib = next() else { return .truncated }
                let scale = sib >> 6, index = Int((sib >> 3) & 7) | (rex & 2 != 0 ? 8 : 0), base = Int(sib & 7)
                if index != 4 { mem.index = index; mem.scale = 1 << UInt64(scale) }
                if base == 5 && mod == 0 {
                    guard let d = disp(4) else { return .truncated }
                    mem.displacement = d
                } else {
                    mem.base = base | (rex & 1 != 0 ? 8 : 0)
                }
            } else if rm == 5 && mod == 0 {
                guard let d = disp(4) else { return .truncated }
                mem.displacement = d
                mem.ripRelative = is64
            } else {
                mem.base = rm | (rex & 1 != 0 ? 8 : 0)
            }
            if mod == 1 { guard let d = disp(1) else { return .truncated }; mem.displacement = d }
            if mod == 2 { guard let d = disp(4) else { return .truncated }; mem.displacement = d }
            if segment == nil, let b = mem.base, b & 7 == 4 || (b & 7 == 5) { mem.segment = .ss }
            inst.memory = mem
            return nil
        }
        func finish(_ o: Mnemonic) -> DecodeResult {
            if p > maxLength { return .fault(.generalProtection()) }
            inst.operation = o
            inst.length = p
            return .instruction(inst)
        }
        func needMemory() -> Bool { inst.memory != nil }
        func lockUD(_ r: DecodeResult) -> DecodeResult {
            if lock, case .instruction(let i) = r, i.operation != .cmpxchg16b { return .fault(.invalidOpcode) }
            return r
        }

        switch op {
        case 0xcc: return lockUD(finish(.int3))
        case 0xcf: return lockUD(finish(.iret))
        case 0x9b: return lockUD(finish(.fwait))
        case 0xdb:
            guard let m = next() else { return .truncated }
            switch m {
            case 0xe2: return lockUD(finish(.fnclex))
            case 0xe3: return lockUD(finish(.fninit))
            default: return .notEmulated
            }
        case 0x0f:
            guard let op2 = next() else { return .truncated }
            switch op2 {
            case 0x01:
                guard let m = next() else { return .truncated }
                if mandatory { return .notEmulated }
                switch m {
                case 0xca: return lockUD(finish(.clac))
                case 0xcb: return lockUD(finish(.stac))
                case 0xd0: return lockUD(finish(.xgetbv))
                default: return .notEmulated
                }
            case 0x03:
                guard let m = next() else { return .truncated }
                if let r = modrm(m) { return r }
                return lockUD(finish(.lsl))
            case 0xae:
                guard let m = next() else { return .truncated }
                if mandatory { return .notEmulated }
                if let r = modrm(m) { return r }
                guard needMemory() else { return .notEmulated } // fences and the like
                switch inst.reg & 7 {
                case 2: return lockUD(finish(.ldmxcsr))
                case 3: return lockUD(finish(.stmxcsr))
                case 4: return lockUD(finish(.xsave))
                case 5: return lockUD(finish(.xrstor))
                case 6: return lockUD(finish(.xsaveopt))
                default: return .notEmulated
                }
            case 0xc7:
                guard let m = next() else { return .truncated }
                if repF2 || repF3 { return .notEmulated }
                if let r = modrm(m) { return r }
                let sub = inst.reg & 7
                if !needMemory() { return (sub == 1 || sub >= 3 && sub <= 5) ? .fault(.invalidOpcode) : .notEmulated }
                switch sub {
                case 1: return rexW ? finish(.cmpxchg16b) : .notEmulated // cmpxchg8b: KVM's own
                case 3 where !opsize66: return lockUD(finish(.xrstors))
                case 4 where !opsize66: return lockUD(finish(.xsavec))
                case 5 where !opsize66: return lockUD(finish(.xsaves))
                default: return .notEmulated
                }
            case 0xb8:
                guard repF3, !repF2 else { return .notEmulated }
                guard let m = next() else { return .truncated }
                if let r = modrm(m) { return r }
                return lockUD(finish(.popcnt))
            default:
                return .notEmulated
            }
        default:
            return .notEmulated
        }
    }
}
