import CKVM
import Devices
import Glibc
import KVM
import Machine

/// A deterministic machine's schedule (`--deterministic`, `skiff record`,
/// `skiff replay`): one vCPU, no in-kernel irqchip, and everything that
/// could differ between two runs decided at the guest's own exits (port
/// and MMIO accesses, interrupt windows), which come in the same order
/// each run because the guest's code makes them.
///
/// - Time: the PIT counts `ticksPerExit` per exit, never the host's clock.
/// - Interrupts: the emulated PIC's, injected at an exit where the guest
///   can take one (else an interrupt window is asked for, except of Linux:
///   `interruptWindows`).
/// - Input: typed bytes reach the UART at an exit; the log says which.
/// - Checks: every interrupt (with a CRC of the registers where it
///   landed), and every `checkpointEvery` exits a checkpoint (CRCs of the
///   vCPU's registers and of all guest memory); the end, the same.
///
/// Recording writes these events; replay reads them, gives the inputs at
/// their exits and compares everything else as it happens, stopping at
/// the first difference with the event, what differed and the vCPU's RIP.
/// virtio-blk and virtio-rng are served at the guest's QueueNotify exit on
/// the vCPU's thread (InlineQueues): entropy is an input of the log, and
/// each disk request is checked by the CRC of its data. Not yet here:
/// virtio-net and vsock, landing an input where the guest makes no exits
/// (it waits for the next one), and starting from a snapshot.
final class Determinism: ExitSchedule, GuestInputs, @unchecked Sendable {
    enum Mode {
        /// `skiff run --deterministic`: input at exits, nothing logged.
        case free
        case record(EventLogWriter)
        case replay([ReplayEvent])
    }
    /// The host's input, moved into the UART at exits (none on replay).
    let input = HostInputQueue()

    /// About 10 µs of guest time per exit: the exit rate of a guest busy
    /// with its devices here, so its timer ticks at roughly the usual rate.
    static let ticksPerExit: UInt64 = 12
    static let defaultCheckpointEvery: UInt64 = 5_000

    let pic: PIC8259
    let pit: PIT8254
    let serial: Serial8250
    let memory: GuestMemory
    let checkpointEvery: UInt64
    var mode: Mode = .free
    /// The guest's exits so far: the machine's only clock.
    private(set) var exits: UInt64 = 0
    /// Replay: the next event of the log.
    private(set) var cursor = 0
    private(set) var checkpoints = 0
    /// Replay: true once every event matched, the end included.
    private(set) var matched = false

    /// Whether an interrupt the guest cannot take yet asks KVM for the
    /// window. Not for Linux: on PVM hosts a PVM-aware kernel sets and
    /// clears its interrupt flag in memory shared with the host, without
    /// an exit, and KVM reports the window only when something else brings
    /// the vCPU into the hypervisor (a host timer): at a place no replay
    /// finds again (three RIPs at one exit count over five runs). Without
    /// the window, the interrupt waits for the guest's next exit with
    /// interrupts on (its HLT at the latest), which comes at the same
    /// place every run. The probe guests' windows, at their emulated
    /// `iretq`, are exact, and they spin without exits waiting for them.
    let interruptWindows: Bool

    init(pic: PIC8259, pit: PIT8254, serial: Serial8250, memory: GuestMemory, interruptWindows: Bool = true,
         checkpointEvery: UInt64 = defaultCheckpointEvery) {
        self.interruptWindows = interruptWindows
        self.pic = pic
        self.pit = pit
        self.serial = serial
        self.memory = memory
        self.checkpointEvery = max(1, checkpointEvery)
    }

    func afterExit(_ vcpu: KVMVcpu, reason: UInt32) -> StopReason? {
        // A kick (stop, pause, a report) is the host's, not the guest's.
        if reason == CKVM_EXIT_INTR { return nil }
        if reason == CKVM_EXIT_HLT, let r = halt(vcpu) { return r }
        exits += 1
        switch pending {
        case .failed(let why)?: pending = nil; return .recordingFailed(why)
        case .differs(let what)?: pending = nil; return diverged(vcpu, what)
        case nil: break
        }
        if let missed = overdue(vcpu) { return missed }
        // A stop asked for during this exit (the guest's reset, or the
        // host's) ends the run here, not some exits later when the main
        // thread gets to it: the end is at the same exit every time.
        if let stop = pendingStop() { return end(vcpu, reason: stop.description) ?? stop }
        // A recording the host stopped while an exit was dispatched (a
        // signal, a request: any stop but the guest's and a kick's) ended here.
        if let r = recordedEnd(vcpu, kicked: false) { return r }
        pit.advance(to: now)
        if let r = takeInputs(vcpu) { return r }
        if let r = interrupt(vcpu) { return r }
        if exits % checkpointEvery == 0 {
            checkpoints += 1
            if let r = produce(.checkpoint(exit: exits, vcpu: Self.vcpuCRC(vcpu), memory: memoryCRC()), vcpu) { return r }
        }
        // A recording the host stopped with a kick (no exit dispatched) ended after this exit, whole.
        if let r = recordedEnd(vcpu, kicked: true) { return r }
        return nil
    }

    /// Replay: the recording ended at this exit, stopped by the host (a
    /// stop the guest made comes again by itself). A stop seen while an
    /// exit was dispatched ended it before the exit's work, a kick after.
    private func recordedEnd(_ vcpu: KVMVcpu, kicked: Bool) -> StopReason? {
        guard case .replay(let log) = mode, cursor < log.count, case .end(let e, _, _, let why) = log[cursor], e == exits,
              why.hasPrefix("stopped"), (why == Self.hostStop) == kicked else { return nil }
        return end(vcpu, reason: why) ?? .replayEnded
    }

    func finished(_ vcpu: KVMVcpu, reason: StopReason?) {
        _ = end(vcpu, reason: reason?.description ?? Self.hostStop)
    }

    /// The end's reason when a kick ended the run; every stop from the host says "stopped ...", none of the guest's does.
    static let hostStop = "stopped from the host"
    /// The VM's stop reason, if one was asked for (set by the VirtualMachine).
    var pendingStop: () -> StopReason? = { nil }
    private var ended = false
    /// Replay: the first difference.
    private(set) var divergence: String?

    /// The end record, once: written, or compared.
    private func end(_ vcpu: KVMVcpu, reason: String) -> StopReason? {
        guard !ended else { return nil }
        ended = true
        let r = produce(.end(exit: exits, vcpu: Self.vcpuCRC(vcpu), memory: memoryCRC(), reason: reason), vcpu)
        if case .replay = mode, r == nil { matched = true }
        return r
    }

    // MARK: time

    /// PIT ticks skipped while the guest was halted.
    private var skipped: UInt64 = 0
    /// The machine's clock, in PIT ticks: its exits, and the waits it halted through.
    var now: UInt64 { exits &* Self.ticksPerExit &+ skipped }

    /// The guest halted, waiting for an interrupt. Its time skips to the
    /// PIT's next deadline, unless input comes first: a recording waits for
    /// that deadline in real time (so typing reaches an idle guest, at an
    /// exit the log names), a replay knows from its log. Halted with
    /// interrupts off, it never wakes: a power-off, as without a schedule.
    private func halt(_ vcpu: KVMVcpu) -> StopReason? {
        guard vcpu.run.pointee.if_flag != 0 else { return .powerOff }
        guard pic.pendingVector == nil, let deadline = pit.nextDeadline, deadline > now else { return nil }
        var inputFirst = false
        switch mode {
        case .replay(let log):
            if cursor < log.count, case .consoleInput(let e, _) = log[cursor], e == exits &+ 1 { inputFirst = true }
        case .free, .record:
            var wait = timespec(), start = timespec()
            clock_gettime(CLOCK_MONOTONIC, &start)
            let nanoseconds = Int((deadline - now) * 1_000_000_000 / PIT8254.hz)
            while input.receiveSpace == Serial8250.rxCapacity, pendingStop() == nil {
                clock_gettime(CLOCK_MONOTONIC, &wait)
                let waited = (wait.tv_sec - start.tv_sec) * 1_000_000_000 + (wait.tv_nsec - start.tv_nsec)
                if waited >= nanoseconds { break }
                usleep(UInt32(min(1000, max(1, (nanoseconds - waited) / 1000))))
            }
            inputFirst = input.receiveSpace < Serial8250.rxCapacity
        }
        if !inputFirst { skipped &+= deadline - now }
        return nil
    }

    // MARK: inputs

    private func takeInputs(_ vcpu: KVMVcpu) -> StopReason? {
        switch mode {
        case .free, .record:
            let space = serial.receiveSpace
            guard space > 0 else { return nil }
            let bytes = input.take(space)
            guard !bytes.isEmpty else { return nil }
            _ = serial.receive(bytes)
            return produce(.consoleInput(exit: exits, bytes: bytes), vcpu)
        case .replay(let log):
            while cursor < log.count, log[cursor].isInput, log[cursor].exit == exits {
                if case .consoleInput(_, let bytes) = log[cursor] {
                    guard serial.receive(bytes) == bytes.count else {
                        return diverged(vcpu, "event \(cursor + 1) (\(log[cursor].summary)): the UART has no room for it")
                    }
                }
                cursor += 1
            }
            return nil
        }
    }

    /// Replay: an event of the log whose exit has passed without it.
    private func overdue(_ vcpu: KVMVcpu) -> StopReason? {
        guard case .replay(let log) = mode, cursor < log.count, log[cursor].exit < exits else { return nil }
        return diverged(vcpu, "event \(cursor + 1) (\(log[cursor].summary)) did not happen")
    }

    // MARK: interrupts

    private func interrupt(_ vcpu: KVMVcpu) -> StopReason? {
        guard pic.pendingVector != nil else { vcpu.requestInterruptWindow(false); return nil }
        guard vcpu.readyForInterrupt else { vcpu.requestInterruptWindow(interruptWindows); return nil }
        guard let vector = pic.acknowledge() else { return nil }
        do { try vcpu.inject(vector: vector) } catch { return .kvmError("\(error)") }
        vcpu.requestInterruptWindow(false)
        return produce(.interrupt(exit: exits, vector: vector, registers: Self.registersCRC(vcpu)), vcpu)
    }

    // MARK: the log

    /// Record: appends. Replay: the log's next event must be this one.
    private func produce(_ event: ReplayEvent, _ vcpu: KVMVcpu) -> StopReason? {
        switch take(event) {
        case nil: return nil
        case .failed(let why)?: return .recordingFailed(why)
        case .differs(let what)?: return diverged(vcpu, what)
        }
    }

    enum Problem { case failed(String), differs(String) }

    private func take(_ event: ReplayEvent) -> Problem? {
        switch mode {
        case .free: return nil
        case .record(let writer):
            do { try writer.append(event) } catch { return .failed("\(error)") }
            return nil
        case .replay(let log):
            guard cursor < log.count, log[cursor] == event else { return mismatch(event, log) }
            cursor += 1
            return nil
        }
    }

    /// The log's next event is not `event`: what the replay says.
    private func mismatch(_ event: ReplayEvent, _ log: [ReplayEvent]) -> Problem {
        guard cursor < log.count else { return .differs("the replay went on past its recording's end: \(event.summary)") }
        return .differs("event \(cursor + 1): the recording has \(log[cursor].summary), the replay \(event.summary)")
    }

    // MARK: what devices give the guest (GuestInputs), while an exit is dispatched

    /// The exit being dispatched (afterExit counts it once it is done).
    private var dispatching: UInt64 { exits &+ 1 }
    /// What went wrong inside a device's work: the run stops at the end of this exit.
    private var pending: Problem?

    private func note(_ event: ReplayEvent) {
        guard pending == nil else { return }
        pending = take(event)
    }

    func entropy(into p: UnsafeMutableRawPointer, count: Int) -> Int {
        if case .replay(let log) = mode {
            guard pending == nil, cursor < log.count, case .entropy(let e, let bytes) = log[cursor], e == dispatching, bytes.count == count else {
                if pending == nil { pending = mismatch(.entropy(exit: dispatching, bytes: [UInt8](repeating: 0, count: count)), log) }
                memset(p, 0, count)
                return count
            }
            bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: count) }
            cursor += 1
            return count
        }
        let done = Rng.hostEntropy(into: p, count: count)
        if case .record = mode { note(.entropy(exit: dispatching, bytes: Array(UnsafeRawBufferPointer(start: p, count: done)))) }
        return done
    }

    func diskIO(disk: UInt8, write: Bool, sector: UInt64, length: UInt64, crc: UInt32) {
        note(.block(exit: dispatching, write: write, disk: disk, sector: sector, length: UInt32(truncatingIfNeeded: length), data: crc))
    }

    /// The first difference: kept, and the run ends with it (no end record is compared after).
    private func diverged(_ vcpu: KVMVcpu, _ what: String) -> StopReason {
        let rip = (try? vcpu.registers().rip).map { "0x" + String($0, radix: 16) } ?? "?"
        let d = "\(what); vCPU at rip \(rip), exit \(exits)"
        if divergence == nil { divergence = d }
        ended = true
        return .divergence(d)
    }

    // MARK: state hashes

    static func registersCRC(_ vcpu: KVMVcpu) -> UInt32 {
        guard var r = try? vcpu.registers() else { return 0 }
        return withUnsafeBytes(of: &r) { ckvm_crc32c(0, $0.baseAddress, $0.count) }
    }

    /// The general registers and the control and segment state.
    static func vcpuCRC(_ vcpu: KVMVcpu) -> UInt32 {
        var crc = registersCRC(vcpu)
        if var s = try? vcpu.specialRegisters() {
            crc = withUnsafeBytes(of: &s) { ckvm_crc32c(crc, $0.baseAddress, $0.count) }
        }
        return crc
    }

    /// All of guest RAM (16 MiB in 2 ms with SSE 4.2's CRC-32C).
    func memoryCRC() -> UInt32 {
        var crc: UInt32 = 0
        for r in memory.regions { crc = ckvm_crc32c(crc, r.host, Int(r.size)) }
        return crc
    }
}
