/// Segment descriptors read from the guest's GDT or LDT, and the two
/// instructions here that use them: LSL and protected-mode IRET.
struct Descriptor {
    let low: UInt64
    var base: UInt64 { (low >> 16) & 0xff_ffff | ((low >> 56) & 0xff) << 24 }
    var rawLimit: UInt32 { UInt32(low & 0xffff) | UInt32((low >> 48) & 0xf) << 16 }
    var granularity: Bool { low & (1 << 55) != 0 }
    /// The limit in bytes, as the segment register's cache holds it.
    var limit: UInt32 { granularity ? rawLimit << 12 | 0xfff : rawLimit }
    var type: UInt8 { UInt8((low >> 40) & 0xf) }
    var codeOrData: Bool { low & (1 << 44) != 0 }
    var dpl: UInt8 { UInt8((low >> 45) & 3) }
    var present: Bool { low & (1 << 47) != 0 }
    var available: Bool { low & (1 << 52) != 0 }
    var long: Bool { low & (1 << 53) != 0 }
    var defaultBig: Bool { low & (1 << 54) != 0 }
    var isCode: Bool { codeOrData && type & 8 != 0 }
    var isConforming: Bool { isCode && type & 4 != 0 }
    var isWritableData: Bool { codeOrData && type & 8 == 0 && type & 2 != 0 }

    func register(selector: UInt16) -> SegmentRegister {
        var r = SegmentRegister()
        r.selector = selector
        r.base = base
        r.limit = limit
        r.type = type | 1 // loading sets the accessed bit
        r.present = present
        r.dpl = dpl
        r.defaultBig = defaultBig
        r.codeOrData = codeOrData
        r.long = long
        r.granularity = granularity
        r.available = available
        r.unusable = false
        return r
    }
}

extension Emulator {
    /// The descriptor `selector` names and its linear address, or nil when
    /// the selector is null or lies beyond its table's limit.
    func descriptor(_ selector: UInt16, _ s: CPUState, _ mem: LinearMemory, bytes: Int = 8) throws(EmulationStop) -> (Descriptor, UInt64)? {
        let index = UInt64(selector >> 3)
        let local = selector & 4 != 0
        if !local && index == 0 { return nil }
        let base: UInt64, limit: UInt64
        if local {
            guard !s.ldt.unusable, s.ldt.present else { return nil }
            (base, limit) = (s.ldt.base, UInt64(s.ldt.limit))
        } else {
            (base, limit) = (s.gdt.base, UInt64(s.gdt.limit))
        }
        guard index * 8 + UInt64(bytes) - 1 <= limit else { return nil }
        let address = s.inIA32e ? base &+ index * 8 : (base &+ index * 8) & 0xffff_ffff
        let raw = try mem.read(linear: address, count: 8, implicit: true)
        return (Descriptor(low: raw.le(0, 8)), address)
    }

    func lsl(_ inst: Instruction, _ s: inout CPUState, _ mem: LinearMemory) throws(EmulationStop) {
        switch s.mode {
        case .real, .virtual8086: throw .fault(.invalidOpcode)
        default: break
        }
        let selector = UInt16(truncatingIfNeeded: try readRM(inst, s, mem, size: 2))
        let rpl = UInt8(selector & 3), cpl = s.cpl
        func fail() { s.rflags &= ~RFlags.zf }
        // System descriptors are 16 bytes in IA-32e mode.
        guard let (d, _) = try descriptor(selector, s, mem) else { return fail() }
        if d.codeOrData {
            if !d.isConforming && (d.dpl < cpl || d.dpl < rpl) { return fail() }
        } else {
            let valid: Set<UInt8> = s.inIA32e ? [2, 9, 0xb] : [1, 2, 3, 9, 0xb]
            guard valid.contains(d.type), d.dpl >= cpl, d.dpl >= rpl else { return fail() }
            if s.inIA32e, try descriptor(selector, s, mem, bytes: 16) == nil { return fail() }
        }
        s.setRegister(inst.reg, size: inst.operandSize, UInt64(d.limit))
        s.rflags |= RFlags.zf
    }

    /// IRET in protected and IA-32e mode (KVM emulates the real-mode form):
    /// the same-privilege and outer-privilege returns, with every check of
    /// the new CS and SS the processor makes.
    func iret(_ inst: Instruction, _ s: inout CPUState, _ mem: LinearMemory) throws(EmulationStop) {
        switch s.mode {
        case .real, .virtual8086: throw .notEmulated("IRET outside protected mode")
        default: break
        }
        let o = inst.operandSize, cpl = s.cpl
        if s.rflags & RFlags.nt != 0 {
            if s.inIA32e { throw .fault(.generalProtection()) }
            throw .notEmulated("IRET with NT set (a task return)")
        }
        let stackBig = s.is64 || s.ss.defaultBig
        var sp = s.is64 ? s.gpr[4] : (stackBig ? s.gpr[4] & 0xffff_ffff : s.gpr[4] & 0xffff)
        func pop() throws(EmulationStop) -> UInt64 {
            let v = try mem.read(.ss, sp, count: o).le(0, o)
            sp = s.is64 ? sp &+ UInt64(o) : (stackBig ? (sp &+ UInt64(o)) & 0xffff_ffff : (sp &+ UInt64(o)) & 0xffff)
            return v
        }
        let newRIP = try pop()
        let csSelector = UInt16(truncatingIfNeeded: try pop())
        let newFlags = try pop()
        var newSP: UInt64? = nil, ssSelector: UInt16? = nil
        if s.is64 {
            newSP = try pop()
            ssSelector = UInt16(truncatingIfNeeded: try pop())
        }
        if !s.inIA32e && newFlags & RFlags.vm != 0 && cpl == 0 && o == 4 {
            throw .notEmulated("IRET to virtual-8086 mode")
        }
        let rpl = UInt8(csSelector & 3)
        let csCode = UInt32(csSelector & 0xfffc)
        guard csSelector & 0xfffc != 0 else { throw .fault(.generalProtection()) }
        guard let (cs, csAddress) = try descriptor(csSelector, s, mem) else { throw .fault(.generalProtection(csCode)) }
        guard cs.isCode, rpl >= cpl else { throw .fault(.generalProtection(csCode)) }
        if cs.isConforming ? cs.dpl > rpl : cs.dpl != rpl { throw .fault(.generalProtection(csCode)) }
        guard cs.present else { throw .fault(.segmentNotPresent(csCode)) }
        let to64 = s.inIA32e && cs.long
        if s.inIA32e && cs.long && cs.defaultBig { throw .fault(.generalProtection(csCode)) }
        var rip = newRIP
        if to64 {
            guard mem.isCanonical(rip) else { throw .fault(.generalProtection()) }
        } else {
            rip &= 0xffff_ffff
            guard rip <= UInt64(cs.limit) else { throw .fault(.generalProtection()) }
        }
        let outer = rpl > cpl
        if outer && !s.is64 {
            newSP = try pop()
            ssSelector = UInt16(truncatingIfNeeded: try pop())
        }
        var newSS: SegmentRegister? = nil
        var ssAddress: UInt64? = nil
        if let sel = ssSelector {
            let ssCode = UInt32(sel & 0xfffc)
            if sel & 0xfffc == 0 {
                // A null SS is allowed only on a return to 64-bit code below CPL 3.
                guard to64, rpl != 3, UInt8(sel & 3) == rpl else { throw .fault(.generalProtection()) }
                var null = SegmentRegister()
                null.selector = sel
                null.unusable = true
                null.dpl = rpl
                null.present = false
                null.defaultBig = true
                newSS = null
            } else {
                guard let (ss, addr) = try descriptor(sel, s, mem) else { throw .fault(.generalProtection(ssCode)) }
                guard UInt8(sel & 3) == rpl, ss.isWritableData, ss.dpl == rpl else { throw .fault(.generalProtection(ssCode)) }
                guard ss.present else { throw .fault(.stackFault(ssCode)) }
                newSS = ss.register(selector: sel)
                ssAddress = (ss.type & 1 == 0) ? addr : nil
            }
        }
        // RFLAGS: what the old privilege level may change.
        var mask = RFlags.status | RFlags.tf | RFlags.df | RFlags.nt | RFlags.rf | RFlags.ac | RFlags.id
        let iopl = UInt8((s.rflags >> 12) & 3)
        if cpl <= iopl { mask |= RFlags.if }
        if cpl == 0 { mask |= RFlags.iopl | RFlags.vif | RFlags.vip }
        if o == 2 { mask &= 0xffff }
        // Commit: set accessed bits as loading the descriptors does.
        if cs.type & 1 == 0 { try setAccessed(csAddress, mem) }
        if let a = ssAddress { try setAccessed(a, mem) }
        s.rflags = (s.rflags & ~mask) | (newFlags & mask) | RFlags.fixed
        s.rip = rip
        s.cs = cs.register(selector: csSelector)
        if let ss = newSS, let nsp = newSP {
            s.ss = ss
            if s.is64 || to64 { s.gpr[4] = nsp }
            else if ss.defaultBig { s.gpr[4] = nsp & 0xffff_ffff }
            else { s.gpr[4] = (s.gpr[4] & ~0xffff) | (nsp & 0xffff) }
        } else if stackBig {
            s.gpr[4] = sp
        } else {
            s.gpr[4] = (s.gpr[4] & ~0xffff) | sp
        }
        if outer {
            // Data segments the new, less privileged code may not use.
            for seg in [SegmentName.es, .ds, .fs, .gs] {
                let r = s.segment(seg)
                if !r.unusable && (!r.isCode || !r.isConforming) && r.dpl < rpl {
                    var null = SegmentRegister()
                    null.unusable = true
                    null.present = false
                    if seg == .fs || seg == .gs { null.base = r.base } // 64-bit bases survive
                    s.setSegment(seg, null)
                }
            }
        }
    }

    private func setAccessed(_ descriptorAddress: UInt64, _ mem: LinearMemory) throws(EmulationStop) {
        let byte = try mem.read(linear: descriptorAddress &+ 5, count: 1, implicit: true)
        try mem.write(linear: descriptorAddress &+ 5, [byte[0] | 1], implicit: true)
    }
}
