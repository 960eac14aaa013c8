import CKVM
import Glibc

/// One vCPU's KVM handle and its shared `kvm_run` page.
public final class KVMVcpu: @unchecked Sendable {
    public let id: UInt32
    public let fd: Int32
    /// The `kvm_run` structure KVM shares with us; written by KVM on each exit.
    public let run: UnsafeMutablePointer<kvm_run>
    let runSize: Int

    init(id: UInt32, fd: Int32, run: UnsafeMutableRawPointer, runSize: Int) {
        self.id = id
        self.fd = fd
        self.run = run.bindMemory(to: kvm_run.self, capacity: 1)
        self.runSize = runSize
    }

    deinit {
        munmap(UnsafeMutableRawPointer(run), runSize)
        close(fd)
    }

    /// Enters the guest until the next exit. Returns false when interrupted
    /// by a signal (a kick from another thread), true on a real exit.
    public func enter() throws -> Bool {
        if ckvm_ioctl_val(fd, CKVM_RUN, 0) == 0 { return true }
        if errno == EINTR || errno == EAGAIN { return false }
        throw SystemError("KVM_RUN on vCPU \(id)")
    }

    /// Makes the next (or current, with a signal) KVM_RUN return at once.
    public func setImmediateExit(_ on: Bool) {
        ckvm_set_immediate_exit(run, on ? 1 : 0)
    }

    /// Injects external interrupt `vector` (a VM without KVM's irqchip):
    /// only when `readyForInterrupt`, else KVM refuses or loses it.
    public func inject(vector: UInt8) throws {
        var irq = kvm_interrupt(irq: UInt32(vector))
        _ = try check("KVM_INTERRUPT", ckvm_ioctl_ptr(fd, CKVM_INTERRUPT, &irq))
    }

    /// At this exit, the guest takes an interrupt at its next entry (IF set, no shadow).
    public var readyForInterrupt: Bool { run.pointee.ready_for_interrupt_injection != 0 }

    /// Asks KVM to exit (KVM_EXIT_IRQ_WINDOW_OPEN) as soon as the guest can take an interrupt.
    public func requestInterruptWindow(_ on: Bool) { run.pointee.request_interrupt_window = on ? 1 : 0 }

    /// Bytes of the run page, for bounds checks of offsets KVM hands us.
    public var runPageSize: Int { runSize }

    public func registers() throws -> kvm_regs {
        var r = kvm_regs()
        _ = try check("KVM_GET_REGS", ckvm_ioctl_ptr(fd, CKVM_GET_REGS, &r))
        return r
    }

    public func setRegisters(_ regs: kvm_regs) throws {
        var r = regs
        _ = try check("KVM_SET_REGS", ckvm_ioctl_ptr(fd, CKVM_SET_REGS, &r))
    }

    public func specialRegisters() throws -> kvm_sregs {
        var s = kvm_sregs()
        _ = try check("KVM_GET_SREGS", ckvm_ioctl_ptr(fd, CKVM_GET_SREGS, &s))
        return s
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var s = sregs
        _ = try check("KVM_SET_SREGS", ckvm_ioctl_ptr(fd, CKVM_SET_SREGS, &s))
    }

    public func setFPU(_ fpu: kvm_fpu) throws {
        var f = fpu
        _ = try check("KVM_SET_FPU", ckvm_ioctl_ptr(fd, CKVM_SET_FPU, &f))
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws {
        let list = CPUIDList(entries)
        _ = try check("KVM_SET_CPUID2", ckvm_ioctl_ptr(fd, CKVM_SET_CPUID2, list.raw))
    }

    /// Sets MSRs; throws naming the first one KVM refused.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws {
        let header = MemoryLayout<kvm_msrs>.size
        let stride = MemoryLayout<kvm_msr_entry>.stride
        let buf = UnsafeMutableRawPointer.allocate(byteCount: header + msrs.count * stride, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: header + msrs.count * stride)
        buf.storeBytes(of: UInt32(msrs.count), as: UInt32.self)
        for (i, m) in msrs.enumerated() {
            var e = kvm_msr_entry()
            e.index = m.index
            e.data = m.value
            buf.storeBytes(of: e, toByteOffset: header + i * stride, as: kvm_msr_entry.self)
        }
        let set = try check("KVM_SET_MSRS", ckvm_ioctl_ptr(fd, CKVM_SET_MSRS, buf))
        if Int(set) < msrs.count {
            let bad = msrs[Int(set)].index
            throw SystemError("KVM_SET_MSRS: MSR 0x\(String(bad, radix: 16)) refused", errno: EINVAL)
        }
    }

    public func lapic() throws -> kvm_lapic_state {
        var l = kvm_lapic_state()
        _ = try check("KVM_GET_LAPIC", ckvm_ioctl_ptr(fd, CKVM_GET_LAPIC, &l))
        return l
    }

    public func setLAPIC(_ state: kvm_lapic_state) throws {
        var l = state
        _ = try check("KVM_SET_LAPIC", ckvm_ioctl_ptr(fd, CKVM_SET_LAPIC, &l))
    }
}

extension KVMVcpu {
    public func events() throws -> kvm_vcpu_events {
        var e = kvm_vcpu_events()
        _ = try check("KVM_GET_VCPU_EVENTS", ckvm_ioctl_ptr(fd, CKVM_GET_VCPU_EVENTS, &e))
        return e
    }

    public func setEvents(_ events: kvm_vcpu_events) throws {
        var e = events
        _ = try check("KVM_SET_VCPU_EVENTS", ckvm_ioctl_ptr(fd, CKVM_SET_VCPU_EVENTS, &e))
    }

    /// The extended state (x87, SSE, AVX, ...) in the standard XSAVE layout.
    public func xsave() throws -> [UInt8] {
        var x = kvm_xsave()
        _ = try check("KVM_GET_XSAVE", ckvm_ioctl_ptr(fd, CKVM_GET_XSAVE, &x))
        return withUnsafeBytes(of: &x) { Array($0) }
    }

    public func setXSave(_ bytes: [UInt8]) throws {
        var x = kvm_xsave()
        guard bytes.count == MemoryLayout<kvm_xsave>.size else { throw SystemError("KVM_SET_XSAVE: \(bytes.count) bytes", errno: EINVAL) }
        withUnsafeMutableBytes(of: &x) { $0.copyBytes(from: bytes) }
        _ = try check("KVM_SET_XSAVE", ckvm_ioctl_ptr(fd, CKVM_SET_XSAVE, &x))
    }

    /// XCR0 as the guest last set it.
    public func xcr0() throws -> UInt64 {
        var x = kvm_xcrs()
        _ = try check("KVM_GET_XCRS", ckvm_ioctl_ptr(fd, CKVM_GET_XCRS, &x))
        let n = min(Int(x.nr_xcrs), 16)
        return withUnsafeBytes(of: &x.xcrs) { raw in
            let list = raw.bindMemory(to: kvm_xcr.self)
            return (0..<n).first { list[$0].xcr == 0 }.map { list[$0].value } ?? 1
        }
    }
}
