import CKVM
import Glibc
import KVM
import X86Emulator

/// Completes, on a vCPU's own thread, the instructions KVM's emulator gave
/// up on (KVM_EXIT_INTERNAL_ERROR, emulation failure). On PVM hosts KVM
/// emulates all guest kernel code and lacks XSAVE/XRSTOR, int3, popcnt and
/// a few more; elsewhere this never runs. The instruction's bytes, its
/// operands and the guest's page tables are all the guest's: X86Emulator
/// checks them, and a bad one gets the fault hardware would raise.
public final class InstructionCompletion {
    let vcpu: KVMVcpu
    let memory: GuestMemory
    let features: CPUFeatures
    /// Instructions completed so far, by operation (for the figures).
    public private(set) var completed: [Mnemonic: UInt64] = [:]

    public init(vcpu: KVMVcpu, memory: GuestMemory) {
        self.vcpu = vcpu
        self.memory = memory
        self.features = Self.hostFeatures
    }

    /// The XSAVE layout and variants come from the CPU itself, not from the
    /// vCPU's CPUID table: on PVM hosts KVM leaves XSAVE out of its supported
    /// set, yet the guest kernel sees the host's XSAVE bits and leaf 0xD (it
    /// picks XSAVEC there), and KVM's XSAVE image uses the host's offsets.
    static let hostFeatures: CPUFeatures = {
        func cpuid(_ leaf: UInt32, _ sub: UInt32) -> CPUIDLeaf {
            var r = [UInt32](repeating: 0, count: 4)
            ckvm_host_cpuid(leaf, sub, &r)
            return CPUIDLeaf(function: leaf, index: sub, eax: r[0], ebx: r[1], ecx: r[2], edx: r[3])
        }
        var leaves = [cpuid(0, 0)]
        if leaves[0].eax >= 0xd { leaves += (0..<63).map { cpuid(0xd, UInt32($0)) } }
        let extended = cpuid(0x8000_0000, 0)
        if extended.eax >= 0x8000_0008 { leaves.append(cpuid(0x8000_0008, 0)) }
        return CPUFeatures(cpuid: leaves)
    }()

    /// The instruction bytes KVM fetched (up to 15).
    static func bytes(_ run: UnsafeMutablePointer<kvm_run>) -> [UInt8] {
        guard ckvm_emulation_failure_flags(run) & CKVM_EMULATION_FLAG_INSTRUCTION_BYTES != 0 else { return [] }
        let n = min(Int(ckvm_emulation_failure_size(run)), 15)
        return Array(UnsafeBufferPointer(start: ckvm_emulation_failure_bytes(run), count: n))
    }

    /// Handles one emulation failure; nil when the guest may go on.
    func handle(_ run: UnsafeMutablePointer<kvm_run>) -> StopReason? {
        let bytes = Self.bytes(run)
        let regs: kvm_regs, sregs: kvm_sregs
        do {
            regs = try vcpu.registers()
            sregs = try vcpu.specialRegisters()
        } catch {
            return .kvmError("\(error)")
        }
        let before = CPUState(regs, sregs)
        let emulator = Emulator(features: features, memory: GuestPhysical(memory), context: VcpuExtendedState(vcpu))
        switch emulator.execute(bytes: bytes, state: before) {
        case .notEmulated(let why):
            return .emulationFailure(vcpu: vcpu.id, detail: "\(why) at rip 0x\(String(before.rip, radix: 16)) (bytes \(Self.hex(bytes)))")
        case .completed(let inst, let after, let exception):
            do {
                try write(after, over: before, regs: regs, sregs: sregs)
                if let e = exception { try inject(e) }
            } catch {
                return .kvmError("completing an instruction at rip 0x\(String(before.rip, radix: 16)): \(error)")
            }
            if let op = inst?.operation { completed[op, default: 0] += 1 }
            return nil
        }
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.isEmpty ? "not given by KVM" : bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ")
    }

    private func write(_ s: CPUState, over old: CPUState, regs: kvm_regs, sregs: kvm_sregs) throws {
        var r = regs
        s.store(into: &r)
        try vcpu.setRegisters(r)
        var sr = sregs
        s.store(into: &sr)
        if s.cr2 != old.cr2 || s.cs != old.cs || s.ss != old.ss || s.ds != old.ds || s.es != old.es || s.fs != old.fs || s.gs != old.gs {
            try vcpu.setSpecialRegisters(sr)
        }
    }

    /// Delivers `e` at the next entry as if the instruction had raised it.
    private func inject(_ e: X86Exception) throws {
        var events = try vcpu.events()
        events.exception.injected = 1
        events.exception.pending = 0
        events.exception.nr = e.vector
        events.exception.has_error_code = e.errorCode == nil ? 0 : 1
        events.exception.error_code = e.errorCode ?? 0
        events.exception_has_payload = 0
        try vcpu.setEvents(events)
    }
}

/// Guest RAM for the emulator: bounds-checked, and every store marked
/// dirty (KVM's log does not see writes made from user space).
struct GuestPhysical: PhysicalMemory {
    let memory: GuestMemory
    init(_ m: GuestMemory) { memory = m }

    func read(_ address: UInt64, count: Int) -> [UInt8]? { try? memory.read(at: address, count: count) }
    func contains(_ address: UInt64, count: Int) -> Bool { memory.contains(address, length: UInt64(count)) }
    func write(_ address: UInt64, _ bytes: ArraySlice<UInt8>) -> Bool {
        guard !bytes.isEmpty else { return true }
        guard let p = try? memory.pointer(at: address, length: UInt64(bytes.count)) else { return false }
        memory.markDirty(address, length: UInt64(bytes.count))
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return true
    }
    func atomicOr64(_ address: UInt64, _ bits: UInt64) -> Bool {
        guard address & 7 == 0, let p = try? memory.pointer(at: address, length: 8) else { return false }
        memory.markDirty(address, length: 8)
        ckvm_atomic_or_u64(p.assumingMemoryBound(to: UInt64.self), bits)
        return true
    }
    func compareExchange128(_ address: UInt64, expected: (UInt64, UInt64), desired: (UInt64, UInt64)) -> (old: (UInt64, UInt64), swapped: Bool)? {
        guard address & 15 == 0, let p = try? memory.pointer(at: address, length: 16) else { return nil }
        memory.markDirty(address, length: 16)
        var lo = expected.0, hi = expected.1
        let swapped = ckvm_cmpxchg16b(p, &lo, &hi, desired.0, desired.1) != 0
        return ((lo, hi), swapped)
    }
}

/// The vCPU's extended state through KVM, read only when an instruction needs it.
struct VcpuExtendedState: ExtendedStateAccess {
    let vcpu: KVMVcpu
    init(_ v: KVMVcpu) { vcpu = v }
    static let msrXSS: UInt32 = 0xda0

    func xcr0() -> UInt64? { try? vcpu.xcr0() }
    func xss() -> UInt64? { vcpu.readMSRs([Self.msrXSS]).first?.value ?? 0 }
    func xsaveImage() -> [UInt8]? { try? vcpu.xsave() }
    func setXSaveImage(_ image: [UInt8]) -> Bool { (try? vcpu.setXSave(image)) != nil }
}

extension CPUState {
    init(_ r: kvm_regs, _ s: kvm_sregs) {
        self.init()
        gpr = [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
        rip = r.rip
        rflags = r.rflags
        (cr0, cr2, cr3, cr4, efer) = (s.cr0, s.cr2, s.cr3, s.cr4, s.efer)
        (cs, ds, es, fs, gs, ss, tr, ldt) = (.init(s.cs), .init(s.ds), .init(s.es), .init(s.fs), .init(s.gs), .init(s.ss), .init(s.tr), .init(s.ldt))
        gdt = TableRegister(base: s.gdt.base, limit: s.gdt.limit)
        idt = TableRegister(base: s.idt.base, limit: s.idt.limit)
    }

    func store(into r: inout kvm_regs) {
        (r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi) = (gpr[0], gpr[1], gpr[2], gpr[3], gpr[4], gpr[5], gpr[6], gpr[7])
        (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) = (gpr[8], gpr[9], gpr[10], gpr[11], gpr[12], gpr[13], gpr[14], gpr[15])
        r.rip = rip
        r.rflags = rflags
    }

    func store(into s: inout kvm_sregs) {
        s.cr2 = cr2
        s.cs.update(cs); s.ds.update(ds); s.es.update(es); s.fs.update(fs); s.gs.update(gs); s.ss.update(ss)
    }
}

extension SegmentRegister {
    init(_ k: kvm_segment) {
        self.init()
        selector = k.selector
        base = k.base
        limit = k.limit
        type = k.type
        present = k.present != 0
        dpl = k.dpl
        defaultBig = k.db != 0
        codeOrData = k.s != 0
        long = k.l != 0
        granularity = k.g != 0
        available = k.avl != 0
        unusable = k.unusable != 0
    }
}

extension kvm_segment {
    mutating func update(_ r: SegmentRegister) {
        selector = r.selector
        base = r.base
        limit = r.limit
        type = r.type
        present = r.present ? 1 : 0
        dpl = r.dpl
        db = r.defaultBig ? 1 : 0
        s = r.codeOrData ? 1 : 0
        l = r.long ? 1 : 0
        g = r.granularity ? 1 : 0
        avl = r.available ? 1 : 0
        unusable = r.unusable ? 1 : 0
    }
}
