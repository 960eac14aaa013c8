import CKVM
import Glibc
import KVM
import Synchronization

/// Set once when the VM is stopping; read by every vCPU before each entry.
public final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    public init() {}
    public var isSet: Bool { value.load(ordering: .acquiring) }
    public func set() { value.store(true, ordering: .releasing) }
}

/// One vCPU's thread body: enter the guest, dispatch each exit to the
/// buses, stop on what ends the VM. Everything in `kvm_run` is checked
/// before use: sizes, counts and offsets come from KVM but describe what
/// the guest did.
public final class VcpuLoop: @unchecked Sendable {
    public let vcpu: KVMVcpu
    let io: Bus
    let mmio: Bus
    let stopping: StopFlag
    let pauseGate: PauseGate
    let onStop: @Sendable (StopReason) -> Void
    /// Completes instructions KVM's emulator lacks (nil: stop on them).
    public let completion: InstructionCompletion?
    /// Exits handled so far (read after the thread ends, and meanwhile by
    /// SKIFF_GUEST_PROFILE's sampler: a diagnostic count, not synchronised).
    public private(set) var exits: UInt64 = 0
    /// SKIFF_GUEST_PROFILE's sampler: a kick with nothing else asked is a sample.
    public var sampler: GuestSampler?
    /// A deterministic machine's timing, inputs and checks (nil: KVM's irqchip does it).
    public var schedule: ExitSchedule?
    private let ended = Atomic<Bool>(false)
    /// The loop has returned (its thread is about to end).
    public var hasEnded: Bool { ended.load(ordering: .acquiring) }

    public init(vcpu: KVMVcpu, io: Bus, mmio: Bus, stopping: StopFlag, pauseGate: PauseGate,
                completion: InstructionCompletion? = nil, onStop: @escaping @Sendable (StopReason) -> Void) {
        self.vcpu = vcpu
        self.completion = completion
        self.pauseGate = pauseGate
        self.io = io
        self.mmio = mmio
        self.stopping = stopping
        self.onStop = onStop
    }

    public func run() {
        defer { ended.store(true, ordering: .releasing) }
        _ = ckvm_thread_block_signal(SIGUSR1, 0)
        // A VM that starts paused: park before the first entry (nothing
        // is pending yet, so no KVM_RUN is needed to complete an exit).
        if pauseGate.isRequested { pauseGate.park { vcpu.setImmediateExit(false) } }
        while !stopping.isSet {
            do {
                guard try vcpu.enter() else {
                    // Kicked: to pause (the exit before this one is now
                    // complete), to stop, or to report registers.
                    if pauseGate.isRequested { pauseGate.park { vcpu.setImmediateExit(false) } }
                    else if let sampler, !stopping.isSet { sampler.record(vcpu) }
                    continue
                }
            } catch {
                finish(.kvmError("\(error)"))
                return
            }
            exits &+= 1
            if let reason = dispatch() ?? schedule?.afterExit(vcpu, reason: vcpu.run.pointee.exit_reason) {
                finish(reason)
                return
            }
        }
        schedule?.finished(vcpu, reason: nil)
    }

    func finish(_ reason: StopReason) {
        schedule?.finished(vcpu, reason: reason)
        onStop(reason)
    }

    /// Makes the vCPU leave KVM_RUN now (or skip its next entry).
    public func kick(_ thread: HostThread) {
        vcpu.setImmediateExit(true)
        thread.signal(SIGUSR1)
    }

    func dispatch() -> StopReason? {
        let run = vcpu.run
        switch run.pointee.exit_reason {
        case CKVM_EXIT_IO:
            let io = run.pointee.io
            let size = Int(io.size), count = Int(io.count), offset = Int(io.data_offset)
            guard size == 1 || size == 2 || size == 4, count >= 1, offset >= 0,
                  count <= (vcpu.runPageSize - min(offset, vcpu.runPageSize)) / size else {
                return .kvmError("malformed I/O exit (port 0x\(String(io.port, radix: 16)), size \(size), count \(count))")
            }
            let base = UnsafeMutableRawPointer(run) + offset
            for i in 0..<count {
                let data = UnsafeMutableRawBufferPointer(start: base + i * size, count: size)
                if io.direction == CKVM_EXIT_IO_IN { self.io.read(UInt64(io.port), into: data) }
                else { self.io.write(UInt64(io.port), data: UnsafeRawBufferPointer(data)) }
            }
        case CKVM_EXIT_MMIO:
            let m = run.pointee.mmio
            let length = Int(m.len)
            guard (1...8).contains(length) else { return .kvmError("malformed MMIO exit (length \(length))") }
            let data = UnsafeMutableRawBufferPointer(start: ckvm_mmio_data(run), count: length)
            if m.is_write != 0 { mmio.write(m.phys_addr, data: UnsafeRawBufferPointer(data)) }
            else { mmio.read(m.phys_addr, into: data) }
        case CKVM_EXIT_INTR, CKVM_EXIT_IRQ_WINDOW_OPEN:
            break
        case CKVM_EXIT_HLT:
            // A deterministic machine's guest waits for its next interrupt (ExitSchedule).
            if schedule != nil { return nil }
            return .powerOff
        case CKVM_EXIT_SHUTDOWN:
            return .tripleFault(vcpu: vcpu.id)
        case CKVM_EXIT_SYSTEM_EVENT:
            switch ckvm_system_event_type(run) {
            case UInt32(KVM_SYSTEM_EVENT_SHUTDOWN): return .powerOff
            case UInt32(KVM_SYSTEM_EVENT_RESET): return .reset("KVM system event")
            default: return .guestCrash
            }
        case CKVM_EXIT_INTERNAL_ERROR:
            let sub = run.pointee.internal.suberror
            if sub == UInt32(KVM_INTERNAL_ERROR_EMULATION), let completion { return completion.handle(run) }
            let rip = (try? vcpu.registers().rip).map { "0x" + String($0, radix: 16) } ?? "?"
            if sub == UInt32(KVM_INTERNAL_ERROR_EMULATION) {
                let bytes = InstructionCompletion.hex(InstructionCompletion.bytes(run))
                return .emulationFailure(vcpu: vcpu.id, detail: "instruction not emulated at rip \(rip) (bytes \(bytes))")
            }
            return .emulationFailure(vcpu: vcpu.id, detail: "internal error \(sub) at rip \(rip)")
        case CKVM_EXIT_FAIL_ENTRY:
            let reason = run.pointee.fail_entry.hardware_entry_failure_reason
            return .kvmError("vCPU \(vcpu.id) could not enter the guest (hardware reason 0x\(String(reason, radix: 16)))")
        default:
            return .kvmError("vCPU \(vcpu.id): unexpected exit reason \(run.pointee.exit_reason)")
        }
        return nil
    }
}
