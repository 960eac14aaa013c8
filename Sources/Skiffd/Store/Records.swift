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

/// A backup of a VM to the backup server, or a restore of one into a new
/// VM: a `skiff backup` process of its own (`BackupJobs`), which outlives
/// a skiffd that dies meanwhile. The row is written before the process
/// starts; its status file says how it ended.
struct BackupJobRecord: Codable, FetchableRecord, PersistableRecord, Sendable, Equatable {
    static let databaseTableName = "backupJob"
    var id: Int64?
    /// backup | restore
    var kind: String
    /// The VM backed up, or the new VM a restore makes.
    var vm: String
    /// api | schedule
    var trigger: String
    /// running | succeeded | failed | interrupted
    var state: String
    var pid: Int64?
    var pidStart: Int64?
    /// The backup's id on the server: the one made, or the one restored.
    var backup: String?
    /// The report (JSON) of a finished job, or why it failed.
    var detail: String?
    var startedAt: Int64
    var endedAt: Int64?
}

/// A VM's backup schedule and what its pruning keeps.
struct BackupPolicyRecord: Codable, FetchableRecord, PersistableRecord, Sendable, Equatable {
    static let databaseTableName = "backupPolicy"
    var vm: String
    var intervalSeconds: Int64
    var keepLast: Int64
    var keepDaily: Int64
    var keepWeekly: Int64
    var keepMonthly: Int64
    /// When the next scheduled backup is due (Unix seconds).
    var nextAt: Int64
}
