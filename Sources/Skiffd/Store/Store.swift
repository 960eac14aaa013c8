import Foundation
import GRDB

/// skiffd's state: one SQLite database in WAL mode. Every change is
/// written (and committed) before skiffd acts on it, so that whatever it
/// finds on restart explains the processes and files it finds.
final class Store: Sendable {
    let db: DatabasePool

    init(path: String) throws {
        var config = Configuration()
        config.busyMode = .timeout(5)
        // WAL with synchronous=NORMAL: a commit survives skiffd being killed
        // at any point (the state this manager must explain); only a power
        // loss can take back the last commits, never corrupt the database.
        //
        // Checkpoints are not made by commits (SQLite's automatic one runs
        // in the committing connection and syncs the WAL and the database,
        // 12 to 21 ms here, stalling whichever request commits then: most of
        // bench/manager's p99), but by `checkpoint()`, on a connection of
        // its own, which writers do not wait for.
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
        }
        db = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(db)
        var c = Configuration()
        c.busyMode = .timeout(5)
        checkpointer = try DatabaseQueue(path: path, configuration: c)
    }

    /// The connection that moves the WAL's pages into the database.
    private let checkpointer: DatabaseQueue

    /// A passive checkpoint: as far as readers allow, without holding up
    /// the writer (skiffd's reconcile loop calls it every few seconds, off
    /// the manager).
    func checkpoint() throws {
        try checkpointer.writeWithoutTransaction { _ = try $0.checkpoint(.passive) }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "vm") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("spec", .text).notNull()
                t.column("labels", .text).notNull()
                t.column("restartPolicy", .text).notNull()
                t.column("desired", .text).notNull()
                t.column("observed", .text).notNull()
                t.column("pid", .integer)
                t.column("pidStart", .integer)
                t.column("exitStatus", .integer)
                t.column("stopReason", .text)
                t.column("restarts", .integer).notNull()
                t.column("restartAt", .double)
                t.column("createdAt", .integer).notNull()
                t.column("startedAt", .integer)
                t.column("stoppedAt", .integer)
                t.column("generation", .integer).notNull()
            }
            try db.create(table: "intent") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("kind", .text).notNull()
                t.column("vm", .text).notNull()
                t.column("detail", .text).notNull()
                t.column("createdAt", .double).notNull()
            }
            try db.create(table: "snapshot") { t in
                t.column("vm", .text).notNull()
                t.column("name", .text).notNull()
                t.column("path", .text).notNull()
                t.column("bytes", .integer).notNull()
                t.column("createdAt", .integer).notNull()
                t.primaryKey(["vm", "name"])
            }
            try db.create(table: "event") { t in
                t.autoIncrementedPrimaryKey("seq")
                t.column("time", .integer).notNull()
                t.column("vm", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("detail", .text)
            }
            try db.create(table: "usage") { t in
                t.column("vm", .text).notNull()
                t.column("minute", .integer).notNull()
                t.column("vcpuSeconds", .double).notNull()
                t.column("memoryGiBSeconds", .double).notNull()
                t.column("diskReadBytes", .integer).notNull()
                t.column("diskWriteBytes", .integer).notNull()
                t.column("diskReadOps", .integer).notNull()
                t.column("diskWriteOps", .integer).notNull()
                t.column("netRxBytes", .integer).notNull()
                t.column("netTxBytes", .integer).notNull()
                t.column("secondsRunning", .double).notNull()
                t.column("secondsPaused", .double).notNull()
                t.column("snapshotBytes", .integer).notNull()
                t.primaryKey(["vm", "minute"])
            }
        }
        m.registerMigration("v2-meter") { db in
            try db.create(table: "meterSample") { t in
                t.primaryKey("vm", .text)
                t.column("sample", .text).notNull()
            }
        }
        m.registerMigration("v3-backup") { db in
            try db.create(table: "backupJob") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("kind", .text).notNull()
                t.column("vm", .text).notNull()
                t.column("trigger", .text).notNull()
                t.column("state", .text).notNull()
                t.column("pid", .integer)
                t.column("pidStart", .integer)
                t.column("backup", .text)
                t.column("detail", .text)
                t.column("startedAt", .integer).notNull()
                t.column("endedAt", .integer)
            }
            try db.create(table: "backupPolicy") { t in
                t.primaryKey("vm", .text)
                t.column("intervalSeconds", .integer).notNull()
                t.column("keepLast", .integer).notNull()
                t.column("keepDaily", .integer).notNull()
                t.column("keepWeekly", .integer).notNull()
                t.column("keepMonthly", .integer).notNull()
                t.column("nextAt", .integer).notNull()
            }
        }
        return m
    }

    // MARK: VMs

    func vm(named name: String) throws -> VMRecord? {
        try db.read { try VMRecord.filter(Column("name") == name).fetchOne($0) }
    }

    func vms() throws -> [VMRecord] {
        try db.read { try VMRecord.order(Column("name")).fetchAll($0) }
    }

    func save(_ vm: VMRecord) throws {
        try db.write { try vm.save($0) }
    }

    /// Applies `change` to the VM's current row in one transaction (with
    /// `event`, if given, in the same one); nil if it is gone.
    @discardableResult
    func update(_ name: String, event: (kind: String, detail: String?)? = nil, _ change: (inout VMRecord) throws -> Void) throws -> VMRecord? {
        try db.write { db in
            guard var vm = try VMRecord.filter(Column("name") == name).fetchOne(db) else { return nil }
            try change(&vm)
            try vm.update(db)
            if let event { try Self.eventRecord(name, event.kind, event.detail).insert(db) }
            return vm
        }
    }

    /// A new VM's row and its `created` event, in one transaction.
    func insert(_ vm: VMRecord) throws {
        try db.write { db in
            try vm.insert(db)
            try Self.eventRecord(vm.name, "created", nil).insert(db)
        }
    }

    static func eventRecord(_ vm: String, _ kind: String, _ detail: String?) -> EventRecord {
        EventRecord(seq: nil, time: Int64(Date().timeIntervalSince1970 * 1000), vm: vm, kind: kind, detail: detail)
    }

    // MARK: intents

    func begin(_ kind: String, vm: String, detail: String = "") throws -> Int64 {
        try db.write { db in
            let i = IntentRecord(id: nil, kind: kind, vm: vm, detail: detail, createdAt: Date().timeIntervalSince1970)
            try i.insert(db)
            return db.lastInsertedRowID
        }
    }

    func end(_ intent: Int64) throws {
        _ = try db.write { try IntentRecord.deleteOne($0, key: intent) }
    }

    func intents() throws -> [IntentRecord] {
        try db.read { try IntentRecord.order(Column("id")).fetchAll($0) }
    }

    // MARK: events

    func event(_ vm: String, _ kind: String, _ detail: String? = nil) {
        let e = Self.eventRecord(vm, kind, detail)
        _ = try? db.write { try e.insert($0) }
    }

    /// The event log is bounded: the oldest beyond `keeping` go.
    func pruneEvents(keeping: Int64) throws {
        try db.write { try $0.execute(sql: "DELETE FROM event WHERE seq <= (SELECT MAX(seq) FROM event) - ?", arguments: [keeping]) }
    }

    func events(since: Int64, limit: Int = 10_000) throws -> [EventRecord] {
        try db.read { try EventRecord.filter(Column("seq") > since).order(Column("seq")).limit(limit).fetchAll($0) }
    }
}
