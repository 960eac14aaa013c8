/// A VM's lifecycle inside its VMM, as one explicit state machine: every
/// change of state is an event checked against this table, so that a
/// request that does not fit the state (resume a running VM, pause one
/// that is stopping) is refused with the state it met, in one place.
/// The control socket's `status` answers with the state's name.
///
///     created --start--> running --pause--> paused --resume--> running
///     created --startPaused--> paused
///     running|paused --snapshot--> snapshotting --snapshotDone--> (back)
///     any but stopped --stop--> stopping --end--> stopped
public enum Lifecycle: Equatable, Sendable, CustomStringConvertible {
    case created
    case running
    case paused
    /// A snapshot is being written (the vCPUs are parked); `resumeAfter`:
    /// the VM was running before and runs again after.
    case snapshotting(resumeAfter: Bool)
    case stopping
    case stopped

    public enum Event: Sendable, CustomStringConvertible {
        case start, startPaused, pause, resume, snapshot, snapshotDone, stop, end

        public var description: String {
            switch self {
            case .start: "start"
            case .startPaused: "start paused"
            case .pause: "pause"
            case .resume: "resume"
            case .snapshot: "snapshot"
            case .snapshotDone: "finish a snapshot"
            case .stop: "stop"
            case .end: "end"
            }
        }
    }

    /// The state after `event`, or nil if it cannot happen in this one.
    public func after(_ event: Event) -> Lifecycle? {
        switch (self, event) {
        case (.created, .start): .running
        case (.created, .startPaused): .paused
        case (.running, .pause): .paused
        case (.paused, .resume): .running
        case (.running, .snapshot): .snapshotting(resumeAfter: true)
        case (.paused, .snapshot): .snapshotting(resumeAfter: false)
        case (.snapshotting(let resume), .snapshotDone): resume ? .running : .paused
        case (.stopping, .stop): .stopping
        case (.stopped, _): nil
        case (_, .stop): .stopping
        case (.stopping, .end): .stopped
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .created: "created"
        case .running: "running"
        case .paused: "paused"
        case .snapshotting: "snapshotting"
        case .stopping: "stopping"
        case .stopped: "stopped"
        }
    }
}

/// A request the VM's state does not allow.
public struct LifecycleError: Error, CustomStringConvertible, Sendable {
    public let state: Lifecycle
    public let event: Lifecycle.Event
    public init(state: Lifecycle, event: Lifecycle.Event) { self.state = state; self.event = event }
    public var description: String { "cannot \(event) a VM that is \(state)" }
}
