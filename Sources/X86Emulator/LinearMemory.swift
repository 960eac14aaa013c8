/// Why an instruction did not complete: the fault to deliver to the guest,
/// or something Skiff does not emulate (the VM then stops and says so).
public enum EmulationStop: Error, Equatable, Sendable {
    case fault(X86Exception)
    case notEmulated(String)
}

/// The guest's memory as one instruction addresses it: segmentation, then
/// paging, then physical memory. A multi-byte access is translated page by
/// page before any byte is written, so a faulting store changes nothing.
struct LinearMemory {
    let state: CPUState
    let memory: PhysicalMemory
    let walker: PageWalker

    init(state: CPUState, memory: PhysicalMemory, physicalAddressBits: Int) {
        self.state = state
        self.memory = memory
        self.walker = PageWalker(state: state, memory: memory, physicalAddressBits: physicalAddressBits)
    }

    /// base + index * scale + displacement, wrapped to the address size.
    func effectiveAddress(_ m: MemoryOperand, nextRIP: UInt64) -> UInt64 {
        var a = UInt64(bitPattern: m.displacement)
        if m.ripRelative { a &+= nextRIP }
        if let b = m.base { a &+= state.gpr[b] }
        if let i = m.index { a &+= state.gpr[i] &* m.scale }
        return truncate(a, m.addressSize)
    }

    var canonicalBits: UInt64 { state.cr4 & CR4.la57 != 0 ? 57 : 48 }

    func isCanonical(_ a: UInt64) -> Bool {
        let top = Int64(bitPattern: a) >> Int64(canonicalBits - 1)
        return top == 0 || top == -1
    }

    /// Segment checks and the linear address of `size` bytes at `offset`.
    func linear(_ seg: SegmentName, _ offset: UInt64, size: Int, write: Bool) throws(EmulationStop) -> UInt64 {
        let s = state.segment(seg)
        let segFault: X86Exception = seg == .ss ? .stackFault() : .generalProtection()
        if state.is64 {
            let base = (seg == .fs || seg == .gs) ? s.base : 0
            let a = base &+ offset
            guard isCanonical(a), isCanonical(a &+ UInt64(max(size, 1) - 1)) else { throw .fault(segFault) }
            return a
        }
        if state.mode == .real || state.mode == .virtual8086 {
            return (s.base &+ (offset & 0xffff)) & 0xffff_ffff
        }
        guard !s.unusable, s.present else { throw .fault(segFault) }
        if write && (s.isCode || !s.isWritableData) { throw .fault(segFault) }
        if !write && !s.isReadable { throw .fault(segFault) }
        let last = offset &+ UInt64(max(size, 1) - 1)
        let limit = UInt64(s.limit)
        if s.isExpandDown {
            let upper: UInt64 = s.defaultBig ? 0xffff_ffff : 0xffff
            guard offset > limit, last <= upper, last >= offset else { throw .fault(segFault) }
        } else {
            guard last <= limit, last >= offset else { throw .fault(segFault) }
        }
        return (s.base &+ offset) & 0xffff_ffff
    }

    /// The physical pieces of a linear range, all translated first.
    func translate(_ linear: UInt64, count: Int, _ access: PageWalker.Access, implicit: Bool = false) throws(EmulationStop) -> [(address: UInt64, count: Int)] {
        var pieces: [(UInt64, Int)] = []
        var at = linear, left = count
        let user = !implicit && state.cpl == 3
        while left > 0 {
            let inPage = Int(4096 - (at & 0xfff))
            let n = min(inPage, left)
            switch walker.translate(at, access, user: user, implicit: implicit) {
            case .success(let pa): pieces.append((pa, n))
            case .failure(let e): throw .fault(e)
            }
            at = state.inIA32e ? at &+ UInt64(n) : (at &+ UInt64(n)) & 0xffff_ffff
            left -= n
        }
        return pieces
    }

    func read(linear: UInt64, count: Int, implicit: Bool = false) throws(EmulationStop) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        for piece in try translate(linear, count: count, .read, implicit: implicit) {
            guard let bytes = memory.read(piece.address, count: piece.count) else {
                throw .notEmulated("read of \(piece.count) bytes at guest-physical 0x\(String(piece.address, radix: 16)), outside RAM")
            }
            out += bytes
        }
        return out
    }

    func write(linear: UInt64, _ bytes: [UInt8], implicit: Bool = false) throws(EmulationStop) {
        let pieces = try translate(linear, count: bytes.count, .write, implicit: implicit)
        for p in pieces where !memory.contains(p.address, count: p.count) {
            throw .notEmulated("write of \(p.count) bytes at guest-physical 0x\(String(p.address, radix: 16)), outside RAM")
        }
        var from = 0
        for p in pieces {
            _ = memory.write(p.address, bytes[from..<(from + p.count)])
            from += p.count
        }
    }

    func read(_ seg: SegmentName, _ offset: UInt64, count: Int) throws(EmulationStop) -> [UInt8] {
        try read(linear: linear(seg, offset, size: count, write: false), count: count)
    }

    func write(_ seg: SegmentName, _ offset: UInt64, _ bytes: [UInt8]) throws(EmulationStop) {
        try write(linear: linear(seg, offset, size: bytes.count, write: true), bytes)
    }
}
