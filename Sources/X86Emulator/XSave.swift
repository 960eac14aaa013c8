/// XSAVE, XSAVEOPT, XSAVEC, XSAVES and XRSTOR, XRSTORS (SDM vol. 1 ch. 13):
/// the vCPU's extended state (from KVM, in the standard layout) moved to or
/// from guest memory in the layout the instruction defines.
struct XSaveArea {
    static let legacySize = 512, headerOffset = 512, extendedStart = 576
    static let x87InitFCW: UInt64 = 0x37f, mxcsrInit: UInt64 = 0x1f80

    let features: CPUFeatures

    /// Where each component of `mask` (2-62) lies in the compacted layout
    /// of `mask`, and the layout's size.
    func compactedOffsets(_ mask: UInt64) throws(EmulationStop) -> (offsets: [Int: Int], size: Int) {
        var offsets: [Int: Int] = [:]
        var at = Self.extendedStart
        for i in 2..<63 where mask & (1 << UInt64(i)) != 0 {
            let c = try component(i)
            if c.aligned { at = (at + 63) & ~63 }
            offsets[i] = at
            at += c.size
        }
        return (offsets, at)
    }

    func component(_ i: Int) throws(EmulationStop) -> CPUFeatures.Component {
        guard let c = features.components[i], c.size > 0, c.size <= 8192, c.offset >= 0, c.offset <= 65536 else {
            throw .notEmulated("XSAVE state component \(i) is not described by the vCPU's CPUID")
        }
        return c
    }

    /// The standard layout's size for `mask`.
    func standardSize(_ mask: UInt64) throws(EmulationStop) -> Int {
        var size = Self.extendedStart
        for i in 2..<63 where mask & (1 << UInt64(i)) != 0 {
            let c = try component(i)
            size = max(size, c.offset + c.size)
        }
        return size
    }

    /// Component i's bytes in KVM's image (standard layout), bounds-checked.
    func imageRange(_ i: Int, in image: [UInt8]) throws(EmulationStop) -> Range<Int> {
        let c = try component(i)
        guard c.offset + c.size <= image.count, c.offset >= Self.extendedStart else {
            throw .notEmulated("XSAVE state component \(i) (offset \(c.offset), \(c.size) bytes) lies outside KVM's \(image.count)-byte image")
        }
        return c.offset..<(c.offset + c.size)
    }
}

extension Emulator {
    func xsave(_ inst: Instruction, _ s: inout CPUState, _ mem: LinearMemory) throws(EmulationStop) {
        let op = inst.operation
        let compacted = op == .xsavec || op == .xsaves
        let (address, _, rfbm) = try xsaveOperand(inst, s, mem, supervisor: op == .xsaves, store: true)
        let area = XSaveArea(features: features)
        guard let image = context.xsaveImage(), image.count >= XSaveArea.extendedStart else {
            throw .notEmulated("the vCPU's extended state could not be read from KVM")
        }
        let xinuse = image.le(XSaveArea.headerOffset, 8)
        // XSAVE writes every requested component; the others write only
        // those not in their initial state (the init optimisation).
        let written = (op == .xsave) ? rfbm : rfbm & xinuse
        let layout = compacted ? try area.compactedOffsets(rfbm) : (offsets: [:], size: try area.standardSize(rfbm))
        // A store: fault as one (write access) before reading the header back.
        _ = try mem.translate(address, count: layout.size, .write)
        var buffer = try mem.read(linear: address, count: layout.size)

        let form64 = inst.rexW
        let xmmCount = s.is64 ? 16 : 8
        if written & 1 != 0 {
            for i in 0..<8 { buffer[i] = image[i] }               // FCW, FSW, FTW, FOP
            if form64 {
                for i in 8..<24 { buffer[i] = image[i] }          // 64-bit FIP, FDP
            } else {
                buffer.setLE(8, 4, image.le(8, 4)); buffer.setLE(12, 4, 0)   // FIP, FCS
                buffer.setLE(16, 4, image.le(16, 4)); buffer.setLE(20, 4, 0) // FDP, FDS
            }
            for i in 32..<160 { buffer[i] = image[i] }            // ST0-7
        }
        if rfbm & 6 != 0 { for i in 24..<32 { buffer[i] = image[i] } } // MXCSR, MXCSR_MASK
        if written & 2 != 0 { for i in 160..<(160 + 16 * xmmCount) { buffer[i] = image[i] } }
        for i in 2..<63 where written & (1 << UInt64(i)) != 0 {
            let from = try area.imageRange(i, in: image)
            let to = compacted ? layout.offsets[i]! : from.lowerBound
            for k in 0..<from.count { buffer[to + k] = image[from.lowerBound + k] }
        }
        let h = XSaveArea.headerOffset
        if compacted {
            buffer.setLE(h, 8, xinuse & rfbm)
            buffer.setLE(h + 8, 8, rfbm | 1 << 63)
            for i in (h + 16)..<(h + 64) { buffer[i] = 0 }
        } else {
            let old = buffer.le(h, 8)
            buffer.setLE(h, 8, (old & ~rfbm) | (xinuse & rfbm))
        }
        try mem.write(linear: address, buffer)
    }

    func xrstor(_ inst: Instruction, _ s: inout CPUState, _ mem: LinearMemory) throws(EmulationStop) {
        let supervisor = inst.operation == .xrstors
        let (address, xcr0, rfbm) = try xsaveOperand(inst, s, mem, supervisor: supervisor, store: false)
        let enabled = xcr0 | (supervisor ? (context.xss() ?? 0) : 0)
        let h = XSaveArea.headerOffset
        let header = try mem.read(linear: address &+ UInt64(h), count: 64)
        let xstateBV = header.le(0, 8), xcompBV = header.le(8, 8)
        let compacted = xcompBV & (1 << 63) != 0
        if compacted {
            if !supervisor && !features.xsavec { throw .fault(.generalProtection()) }
            let comp = xcompBV & ~(1 << 63)
            if comp & ~enabled != 0 || xstateBV & ~comp != 0 || header[16..<64].contains(where: { $0 != 0 }) {
                throw .fault(.generalProtection())
            }
        } else {
            if supervisor { throw .fault(.generalProtection()) }
            if xstateBV & ~xcr0 != 0 || header[8..<24].contains(where: { $0 != 0 }) { throw .fault(.generalProtection()) }
        }
        let area = XSaveArea(features: features)
        let layout = compacted ? try area.compactedOffsets(xcompBV & ~(1 << 63)) : (offsets: [:], size: try area.standardSize(rfbm))
        let source = try mem.read(linear: address, count: max(layout.size, XSaveArea.extendedStart))
        guard var image = context.xsaveImage(), image.count >= XSaveArea.extendedStart else {
            throw .notEmulated("the vCPU's extended state could not be read from KVM")
        }
        if rfbm & xstateBV & ~xcr0 != 0 {
            throw .notEmulated("XRSTORS of supervisor state 0x\(String(rfbm & xstateBV & ~xcr0, radix: 16)): KVM does not expose it")
        }
        let load = rfbm & xstateBV
        let xmmCount = s.is64 ? 16 : 8
        if rfbm & 6 != 0 {
            let mxcsr = (xstateBV & 6 != 0 || !compacted) ? source.le(24, 4) : XSaveArea.mxcsrInit
            var mask = image.le(28, 4)
            if mask == 0 { mask = 0xffbf }
            if mxcsr & ~mask != 0 { throw .fault(.generalProtection()) }
            image.setLE(24, 4, mxcsr)
        }
        if rfbm & 1 != 0 {
            if load & 1 != 0 {
                for i in 0..<8 { image[i] = source[i] }
                if inst.rexW { for i in 8..<24 { image[i] = source[i] } }
                else { image.setLE(8, 8, source.le(8, 4)); image.setLE(16, 8, source.le(16, 4)) }
                for i in 32..<160 { image[i] = source[i] }
            } else {
                for i in 0..<24 { image[i] = 0 }
                for i in 32..<160 { image[i] = 0 }
                image.setLE(0, 2, XSaveArea.x87InitFCW)
            }
        }
        if rfbm & 2 != 0 {
            for i in 160..<(160 + 16 * xmmCount) { image[i] = load & 2 != 0 ? source[i] : 0 }
        }
        for i in 2..<63 where rfbm & (1 << UInt64(i)) != 0 {
            let to = try area.imageRange(i, in: image)
            if load & (1 << UInt64(i)) != 0 {
                let from = compacted ? layout.offsets[i]! : to.lowerBound
                guard from + to.count <= source.count else { throw .fault(.generalProtection()) }
                for k in 0..<to.count { image[to.lowerBound + k] = source[from + k] }
            } else {
                for k in to { image[k] = 0 }
            }
        }
        let bv = image.le(h, 8)
        image.setLE(h, 8, (bv & ~rfbm) | load)
        guard context.setXSaveImage(image) else {
            throw .notEmulated("KVM refused the extended state XRSTOR loaded (XSTATE_BV 0x\(String(xstateBV, radix: 16)))")
        }
    }

    /// The checks every XSAVE-family instruction makes, its 64-byte-aligned
    /// linear address, XCR0 and the requested-feature bitmap.
    private func xsaveOperand(_ inst: Instruction, _ s: CPUState, _ mem: LinearMemory, supervisor: Bool, store: Bool) throws(EmulationStop) -> (UInt64, UInt64, UInt64) {
        guard let m = inst.memory else { throw .fault(.invalidOpcode) }
        if s.cr4 & CR4.osxsave == 0 { throw .fault(.invalidOpcode) }
        if s.cr0 & CR0.ts != 0 { throw .fault(.deviceNotAvailable) }
        if supervisor && s.cpl != 0 { throw .fault(.generalProtection()) }
        let ea = mem.effectiveAddress(m, nextRIP: s.rip &+ UInt64(inst.length))
        let address = try mem.linear(m.segment, ea, size: XSaveArea.extendedStart, write: store)
        if address & 63 != 0 { throw .fault(.generalProtection()) }
        guard let xcr0 = context.xcr0() else { throw .notEmulated("XCR0 could not be read from KVM") }
        var enabled = xcr0
        if supervisor {
            guard let xss = context.xss() else { throw .notEmulated("IA32_XSS could not be read from KVM") }
            enabled |= xss
        }
        let requested = (s.gpr[2] & 0xffff_ffff) << 32 | (s.gpr[0] & 0xffff_ffff)
        return (address, xcr0, enabled & requested)
    }
}
