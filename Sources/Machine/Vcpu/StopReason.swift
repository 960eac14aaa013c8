/// Why a VM stopped. The first reason reported wins.
public enum StopReason: Equatable, Sendable, CustomStringConvertible {
    /// The guest reset the machine (i8042 pulse, KVM reset event).
    case reset(String)
    /// The guest powered off.
    case powerOff
    /// Stopped from the host (SIGTERM, SIGINT).
    case signal(Int32)
    /// Asked to stop through the control socket (`stop`, as skiffd does).
    case requested
    /// The person at the console typed the escape (Ctrl-A x).
    case consoleQuit
    /// The guest triple-faulted: a reset on a PC, reported as such.
    case tripleFault(vcpu: UInt32)
    /// The guest's kernel reported a crash to the hypervisor.
    case guestCrash
    /// KVM could not emulate an instruction, or another internal error.
    case emulationFailure(vcpu: UInt32, detail: String)
    /// A KVM call failed or KVM reported an exit it could not run.
    case kvmError(String)
    /// A replay did not do what its recording did (the first difference).
    case divergence(String)
    /// A recording or replay could not go on (its log could not be written).
    case recordingFailed(String)
    /// A replay reached the end of a recording that was stopped from the host.
    case replayEnded

    /// `skiff run`'s exit status: 0 for an orderly stop.
    public var exitStatus: Int32 {
        switch self {
        case .reset, .powerOff, .signal, .requested, .consoleQuit, .tripleFault, .replayEnded: 0
        case .guestCrash, .emulationFailure, .kvmError, .divergence, .recordingFailed: 1
        }
    }

    public var description: String {
        switch self {
        case .reset(let how): "guest reset (\(how))"
        case .powerOff: "guest powered off"
        case .requested: "stopped on request (control socket)"
        case .consoleQuit: "stopped from the console (Ctrl-A x)"
        case .signal(let s): "stopped by signal \(s == 15 ? "SIGTERM" : s == 2 ? "SIGINT" : String(s))"
        case .tripleFault(let v): "guest triple-faulted on vCPU \(v) (a reset)"
        case .guestCrash: "guest reported a crash"
        case .emulationFailure(let v, let d): "KVM emulation failure on vCPU \(v): \(d)"
        case .kvmError(let e): "KVM error: \(e)"
        case .divergence(let d): "replay diverged: \(d)"
        case .recordingFailed(let d): "recording failed: \(d)"
        case .replayEnded: "the replay reached the end of its recording"
        }
    }
}
