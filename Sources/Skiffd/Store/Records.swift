import GRDB

/// A VM as skiffd keeps it: what was asked for (the spec, desired state)
/// and what was last seen (observed state, its process). One row per VM.
struct VMRecord: Codable, FetchableRecord, PersistableRecord, Sendable, Equatable {
    static let databaseTableName = "vm"

    var id: String
    var name: String
    /// JSON of `VMSpec`: how to build the VM.
    var spec: String
    /// JSON object of the VM's labels.
    var labels: String
    var restartPolicy: String
    /// running | paused | stopped
    var desired: String
    /// `VMState`'s raw value.
    var observed: String
    /// The VM's launcher (`skiff run`), and its start time in clock ticks
    /// since boot (/proc/PID/stat field 22), so a reused pid is not
    /// mistaken for the VM.
    var pid: Int64?
    var pidStart: Int64?
    var exitStatus: Int64?
    var stopReason: String?
    var restarts: Int64
    /// When the restart policy next starts the VM (Unix seconds).
    var restartAt: Double?
    var createdAt: Int64
    var startedAt: Int64?
    var stoppedAt: Int64?
    /// Each start gets a new one: the snapshot of usage counters it began with belongs to it.
    var generation: Int64
}

/// An operation written before it is carried out, removed after: a
/// restarted skiffd finishes or undoes every row it finds (`Recovery`).
struct IntentRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "intent"
    var id: Int64?
    /// create | delete | snapshot | clone
    var kind: String
    var vm: String
    /// What the operation needs to be finished or undone (a snapshot's name, ...).
    var detail: String
    var createdAt: Double
}

struct SnapshotRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "snapshot"
    var vm: String
    var name: String
    var path: String
    var bytes: Int64
    var createdAt: Int64
}

struct EventRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "event"
    var seq: Int64?
    /// Unix milliseconds.
    var time: Int64
    var vm: String
    var kind: String
    var detail: String?
}

/// One VM's use over one minute (`Metering`).
struct UsageRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "usage"
    var vm: String
    /// Unix seconds of the minute's start.
    var minute: Int64
    var vcpuSeconds: Double
    var memoryGiBSeconds: Double
    var diskReadBytes: Int64
    var diskWriteBytes: Int64
    var diskReadOps: Int64
    var diskWriteOps: Int64
    var netRxBytes: Int64
    var netTxBytes: Int64
    var secondsRunning: Double
    var secondsPaused: Double
    var snapshotBytes: Int64
}
