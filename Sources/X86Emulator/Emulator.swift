/// Completes an instruction KVM's own emulator could not (on PVM hosts it
/// emulates all guest kernel code and lacks some instructions): decodes it,
/// checks it as the processor would, and returns the state after it, or
/// the fault it raises.
public struct Emulator {
    public let features: CPUFeatures
    let memory: PhysicalMemory
    let context: ExtendedStateAccess

    public init(features: CPUFeatures, memory: PhysicalMemory, context: ExtendedStateAccess) {
        self.features = features
        self.memory = memory
        self.context = context
    }

    public enum Outcome: Equatable, Sendable {
        /// The instruction ran (RIP past it) or faulted (RIP at it); deliver
        /// `exception` if there is one. Write `state` back either way.
        case completed(Instruction?, CPUState, exception: X86Exception?)
        /// Skiff does not emulate this: stop the VM, saying why.
        case notEmulated(String)
    }

    /// `bytes`: the instruction bytes at RIP as KVM fetched them (maybe
    /// fewer than 15 at the end of a page); the rest is fetched here.
    public func execute(bytes given: [UInt8], state: CPUState) -> Outcome {
        let mem = LinearMemory(state: state, memory: memory, physicalAddressBits: features.physicalAddressBits)
        var bytes = Array(given.prefix(Decoder.maxLength))
        var decoded = Decoder.decode(bytes, mode: state.mode)
        if decoded == .truncated {
            // Fetch the rest from the instruction's own pages.
            do {
                let at = try mem.linear(.cs, state.rip &+ UInt64(bytes.count), size: 1, write: false)
                var fetched: [UInt8] = []
                for piece in try mem.translate(at, count: Decoder.maxLength - bytes.count, .fetch) {
                    guard let b = memory.read(piece.address, count: piece.count) else { break }
                    fetched += b
                }
                bytes += fetched
            } catch {
                if case .fault(let e) = error { return .completed(nil, state, exception: e) }
            }
            decoded = Decoder.decode(bytes, mode: state.mode)
        }
        switch decoded {
        case .notEmulated, .truncated:
            return .notEmulated("instruction not emulated")
        case .fault(let e):
            return .completed(nil, state, exception: e)
        case .instruction(let inst):
            var s = state
            do {
                let trap = try run(inst, &s, mem)
                return .completed(inst, s, exception: trap)
            } catch {
                switch error {
                case .fault(let e):
                    var faulted = state
                    if let a = e.address { faulted.cr2 = a }
                    return .completed(inst, faulted, exception: e)
                case .notEmulated(let why):
                    return .notEmulated("\(inst.operation.rawValue): \(why)")
                }
            }
        }
    }

    /// Runs `inst` on `s`; returns the trap it raises after completing.
    func run(_ inst: Instruction, _ s: inout CPUState, _ mem: LinearMemory) throws(EmulationStop) -> X86Exception? {
        let next = s.rip &+ UInt64(inst.length)
        let nextRIP = s.is64 ? next : next & 0xffff_ffff
        switch inst.operation {
        case .int3:
            s.rip = nextRIP
            return .breakpoint
        case .clac, .stac:
            if s.cpl != 0 { throw .fault(.invalidOpcode) }
            if inst.operation == .clac { s.rflags &= ~RFlags.ac } else { s.rflags |= RFlags.ac }
        case .popcnt:
            let v = try readRM(inst, s, mem, size: inst.operandSize)
            s.setRegister(inst.reg, size: inst.operandSize, UInt64(v.nonzeroBitCount))
            s.rflags &= ~RFlags.status
            if v == 0 { s.rflags |= RFlags.zf }
        case .cmpxchg16b:
            try cmpxchg16b(inst, &s, mem)
        case .fwait:
            if s.cr0 & (CR0.mp | CR0.ts) == (CR0.mp | CR0.ts) { throw .fault(.deviceNotAvailable) }
            guard let image = context.xsaveImage(), image.count >= 4 else { throw .notEmulated("the x87 state could not be read from KVM") }
            // A pending unmasked x87 exception (FSW.ES) is delivered here.
            if image.le(2, 2) & 0x80 != 0 && s.cr0 & CR0.ne != 0 { throw .fault(.x87FloatingPoint) }
        case .fnclex:
            if s.cr0 & (CR0.em | CR0.ts) != 0 { throw .fault(.deviceNotAvailable) }
            guard var image = context.xsaveImage(), image.count >= 4 else { throw .notEmulated("the x87 state could not be read from KVM") }
            let fsw = image.le(2, 2)
            if fsw & 0x80ff != 0 {
                image.setLE(2, 2, fsw & ~0x80ff) // exception flags, SF, ES and B
                guard context.setXSaveImage(image) else { throw .notEmulated("KVM refused the x87 state") }
            }
        case .fninit:
            // Linux's kernel_fpu_begin(): the x87 unit to its initial state.
            if s.cr0 & (CR0.em | CR0.ts) != 0 { throw .fault(.deviceNotAvailable) }
            guard var image = context.xsaveImage(), image.count >= 160 else { throw .notEmulated("the x87 state could not be read from KVM") }
            image.setLE(0, 2, XSaveArea.x87InitFCW)
            for i in 2..<24 { image[i] = 0 }  // FSW, FTW (all empty), FOP, FIP, FDP
            guard context.setXSaveImage(image) else { throw .notEmulated("KVM refused the x87 state") }
        case .ldmxcsr, .stmxcsr:
            // MXCSR (kernel_fpu_begin() loads its default): #UD without
            // CR4.OSFXSR, #NM with CR0.TS, #GP for a reserved bit.
            guard let m = inst.memory else { throw .fault(.invalidOpcode) }
            if s.cr4 & CR4.osfxsr == 0 || s.cr0 & CR0.em != 0 { throw .fault(.invalidOpcode) }
            if s.cr0 & CR0.ts != 0 { throw .fault(.deviceNotAvailable) }
            guard var image = context.xsaveImage(), image.count >= 32 else { throw .notEmulated("the SSE state could not be read from KVM") }
            let ea = mem.effectiveAddress(m, nextRIP: s.rip &+ UInt64(inst.length))
            if inst.operation == .stmxcsr {
                try mem.write(m.segment, ea, [UInt8](image[24..<28]))
            } else {
                let value = try mem.read(m.segment, ea, count: 4).le(0, 4)
                var mask = image.le(28, 4)
                if mask == 0 { mask = 0xffbf }
                if value & ~mask != 0 { throw .fault(.generalProtection()) }
                image.setLE(24, 4, value)
                guard context.setXSaveImage(image) else { throw .notEmulated("KVM refused MXCSR 0x\(String(value, radix: 16))") }
            }
        case .xgetbv:
            if s.cr4 & CR4.osxsave == 0 { throw .fault(.invalidOpcode) }
            guard let xcr0 = context.xcr0() else { throw .notEmulated("XCR0 could not be read from KVM") }
            let value: UInt64
            switch s.gpr[1] & 0xffff_ffff {
            case 0: value = xcr0
            case 1 where features.xgetbv1:
                guard let image = context.xsaveImage(), image.count >= 576 else { throw .notEmulated("the extended state could not be read from KVM") }
                value = image.le(XSaveArea.headerOffset, 8) & xcr0
            default: throw .fault(.generalProtection())
            }
            s.setRegister(0, size: 4, value & 0xffff_ffff)
            s.setRegister(2, size: 4, value >> 32)
        case .xsave, .xsaveopt, .xsavec, .xsaves:
            try xsave(inst, &s, mem)
        case .xrstor, .xrstors:
            try xrstor(inst, &s, mem)
        case .lsl:
            try lsl(inst, &s, mem)
        case .iret:
            try iret(inst, &s, mem)
            return nil // RIP comes from the stack
        }
        s.rip = nextRIP
        return nil
    }

    /// The r/m operand: a register or `size` bytes of memory.
    func readRM(_ inst: Instruction, _ s: CPUState, _ mem: LinearMemory, size: Int) throws(EmulationStop) -> UInt64 {
        if let r = inst.rmRegister { return s.register(r, size: size) }
        guard let m = inst.memory else { throw .fault(.invalidOpcode) }
        let ea = mem.effectiveAddress(m, nextRIP: s.rip &+ UInt64(inst.length))
        return try mem.read(m.segment, ea, count: size).le(0, size)
    }

    func cmpxchg16b(_ inst: Instruction, _ s: inout CPUState, _ mem: LinearMemory) throws(EmulationStop) {
        guard let m = inst.memory else { throw .fault(.invalidOpcode) }
        let ea = mem.effectiveAddress(m, nextRIP: s.rip &+ UInt64(inst.length))
        let linear = try mem.linear(m.segment, ea, size: 16, write: true)
        if linear & 15 != 0 { throw .fault(.generalProtection()) }
        // The processor always writes (the old value back on a mismatch).
        guard let piece = try mem.translate(linear, count: 16, .write).first else { throw .fault(.generalProtection()) }
        guard let r = memory.compareExchange128(piece.address, expected: (s.gpr[0], s.gpr[2]), desired: (s.gpr[3], s.gpr[1])) else {
            throw .notEmulated("CMPXCHG16B at guest-physical 0x\(String(piece.address, radix: 16)), outside RAM")
        }
        if r.swapped {
            s.rflags |= RFlags.zf
        } else {
            s.rflags &= ~RFlags.zf
            s.gpr[0] = r.old.0
            s.gpr[2] = r.old.1
        }
    }
}
