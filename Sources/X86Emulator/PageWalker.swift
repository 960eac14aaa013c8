/// Linear-to-physical translation as the MMU does it, over guest page
/// tables the guest may have filled with anything: every level is read
/// through `PhysicalMemory`, reserved bits fault, permissions follow
/// CR0.WP, EFER.NXE, CR4.SMEP/SMAP and RFLAGS.AC. Accessed and dirty bits
/// are set as hardware sets them.
public struct PageWalker {
    public enum Access: Equatable, Sendable { case read, write, fetch }

    let state: CPUState
    let memory: PhysicalMemory
    /// MAXPHYADDR: bits above it in an entry are reserved.
    let physicalAddressBits: Int

    public init(state: CPUState, memory: PhysicalMemory, physicalAddressBits: Int = 52) {
        self.state = state
        self.memory = memory
        self.physicalAddressBits = min(max(physicalAddressBits, 32), 52)
    }

    /// `user`: a CPL3 access; false for CPL0-2 and for implicit supervisor
    /// accesses (descriptor tables), which SMAP treats as such whatever AC is.
    public func translate(_ linear: UInt64, _ access: Access, user: Bool, implicit: Bool = false) -> Result<UInt64, X86Exception> {
        guard state.cr0 & CR0.pg != 0 else { return .success(linear & 0xffff_ffff) }
        let nxe = state.efer & EFER.nxe != 0
        var code: UInt32 = (access == .write ? PFError.write : 0) | (user ? PFError.user : 0)
        if access == .fetch && (nxe || state.cr4 & CR4.smep != 0) { code |= PFError.fetch }
        func fault(_ extra: UInt32) -> Result<UInt64, X86Exception> { .failure(.pageFault(linear, code: code | extra)) }

        let long = state.efer & EFER.lma != 0
        let pae = state.cr4 & CR4.pae != 0
        let entrySize: UInt64 = (long || pae) ? 8 : 4
        let levels: Int, bitsPerLevel: Int
        if long { levels = state.cr4 & CR4.la57 != 0 ? 5 : 4; bitsPerLevel = 9 }
        else if pae { levels = 3; bitsPerLevel = 9 }
        else { levels = 2; bitsPerLevel = 10 }
        let maxPhys: UInt64 = entrySize == 8 ? (1 << UInt64(physicalAddressBits)) - 1 : 0xffff_ffff
        let addressMask = maxPhys & ~0xfff
        // Bits 62:MAXPHYADDR (and 63 without NXE) are reserved in 8-byte entries.
        let reservedHigh: UInt64 = entrySize == 8 ? ((~maxPhys) & ((1 << 63) - 1)) | (nxe ? 0 : 1 << 63) : 0

        var table: UInt64
        if long { table = state.cr3 & addressMask }
        else if pae {
            // The four PDPTEs, as the processor loaded them with CR3.
            table = state.cr3 & 0xffff_ffe0
        } else { table = state.cr3 & 0xffff_f000 }

        var writable = true, userOK = true, executable = true
        var walked: [(UInt64, UInt64)] = [] // entry address, entry
        for level in stride(from: levels, through: 1, by: -1) {
            let shift = 12 + (level - 1) * bitsPerLevel
            let index: UInt64
            if pae && !long && level == 3 { index = (linear >> 30) & 3 }
            else { index = (linear >> UInt64(shift)) & ((1 << UInt64(bitsPerLevel)) - 1) }
            let entryAddress = table + index * entrySize
            // Page tables outside RAM read as all ones: a reserved-bit fault.
            guard let raw = memory.read(entryAddress, count: Int(entrySize)) else { return fault(PFError.present | PFError.reserved) }
            let entry = raw.le(0, Int(entrySize))
            if entry & 1 == 0 { return fault(0) }
            let isPDPTE = pae && !long && level == 3
            if isPDPTE {
                // PDPTEs have no R/W, U/S or NX; bits 1, 2, 5-8 are reserved.
                if entry & 0x1e6 != 0 || entry & reservedHigh & ~(1 << 63) != 0 || entry & (1 << 63) != 0 { return fault(PFError.present | PFError.reserved) }
            } else if entry & reservedHigh != 0 {
                return fault(PFError.present | PFError.reserved)
            }
            if !isPDPTE {
                writable = writable && entry & 2 != 0
                userOK = userOK && entry & 4 != 0
                if entrySize == 8 && nxe && entry & (1 << 63) != 0 { executable = false }
            }
            walked.append((entryAddress, entry))
            let large = level > 1 && !isPDPTE && entry & 0x80 != 0
            if level == levels && long && large { return fault(PFError.present | PFError.reserved) } // no PS in the top level
            if large && level >= 3 && (!long || level > 3) { return fault(PFError.present | PFError.reserved) }
            if large || level == 1 {
                let pageShift = UInt64(shift)
                var frame: UInt64
                if large {
                    if entrySize == 4 {
                        guard state.cr4 & CR4.pse != 0 else { return fault(PFError.present | PFError.reserved) }
                        // 4 MiB page: bits 31:22, and 39:32 from bits 20:13.
                        frame = (entry & 0xffc0_0000) | ((entry >> 13) & 0xff) << 32
                        if entry & (1 << 21) != 0 { return fault(PFError.present | PFError.reserved) }
                    } else {
                        let low = (UInt64(1) << pageShift) - 1
                        // Bits 12..pageShift-1 (above PAT) must be zero.
                        if entry & low & ~0x1fff != 0 { return fault(PFError.present | PFError.reserved) }
                        frame = entry & addressMask & ~low
                    }
                } else {
                    frame = entry & (entrySize == 8 ? addressMask : 0xffff_f000)
                }
                // Permissions.
                let supervisorAccess = !user
                if user && !userOK { return fault(PFError.present) }
                if access == .write && !writable && (user || state.cr0 & CR0.wp != 0) { return fault(PFError.present) }
                if access == .fetch {
                    if !executable { return fault(PFError.present) }
                    if supervisorAccess && userOK && state.cr4 & CR4.smep != 0 { return fault(PFError.present) }
                } else if supervisorAccess && userOK && state.cr4 & CR4.smap != 0 && (implicit || state.rflags & RFlags.ac == 0 || state.cpl == 3) {
                    return fault(PFError.present)
                }
                // Accessed on every level, dirty on the leaf for a write.
                for (i, (address, e)) in walked.enumerated() {
                    var bits: UInt64 = 0x20
                    if i == walked.count - 1 && access == .write { bits |= 0x40 }
                    if isPDPTEAddress(i, pae: pae, long: long) { continue }
                    if e & bits != bits { _ = memory.atomicOr64(address & ~7, entrySize == 8 ? bits : bits << ((address & 4) * 8)) }
                }
                return .success(frame | (linear & ((UInt64(1) << pageShift) - 1)))
            }
            table = entry & (entrySize == 8 ? addressMask : 0xffff_f000)
        }
        return fault(0)
    }

    private func isPDPTEAddress(_ level: Int, pae: Bool, long: Bool) -> Bool { pae && !long && level == 0 }
}
