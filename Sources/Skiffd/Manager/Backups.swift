import Foundation
import Glibc
import GRDB

/// Where skiffd sends its VMs' backups (`skiffd --backup-server ...`).
public struct BackupTarget: Sendable {
    public var server: String
    public var tokenFile: String
    public var caCertificate: String?
    /// Chunks are encrypted with this key (`skiff backup key`) before they leave the host.
    public var keyFile: String?
    public init(server: String, tokenFile: String, caCertificate: String? = nil, keyFile: String? = nil) {
        self.server = server; self.tokenFile = tokenFile; self.caCertificate = caCertificate; self.keyFile = keyFile
    }

    /// The `skiff backup` options that name the server, this host's token and the key.
    var arguments: [String] {
        ["--server", server, "--token-file", tokenFile] + (caCertificate.map { ["--ca-cert", $0] } ?? [])
    }
    var keyArguments: [String] { keyFile.map { ["--key-file", $0] } ?? [] }
}

/// What a backup made by skiffd carries of its VM (the manifest's
/// `config`), so that a restore makes the same VM again.
struct BackupConfig: Codable, Sendable {
    var spec: VMSpec
    var labels: [String: String]
    var restartPolicy: String
}

extension Manager {
    // MARK: backup

    /// Starts a backup of the VM's writable disks as a job of its own (a
    /// `skiff backup create` process, `BackupJob`): a running or paused VM
    /// through its control socket (its changed-block maps and
    /// copy-before-write, so it is paused only for a moment), a stopped
    /// one by reading its disks. The VM is this job's until it ends: no
    /// stop, snapshot or delete meanwhile. Returns the job, running.
    func backup(_ name: String, trigger: String = "api") throws -> BackupJobRecord {
        guard let target = backupTarget else {
            throw ManagerError.conflict("skiffd has no backup server: start it with --backup-server URL --backup-token-file FILE")
        }
        let vm = try existing(name)
        try idle(name)
        let state = VMState(rawValue: vm.observed) ?? .exited
        guard state != .starting, state != .stopping else { throw ManagerError.conflict("\(name) is \(state.rawValue); back it up once it runs or has stopped") }
        let live = state == .running || state == .paused
        let spec = try JSON.decode(VMSpec.self, vm.spec)
        let disks = spec.disks.filter { !$0.readOnly }
        guard !disks.isEmpty else {
            throw ManagerError.invalid("\(name) has no writable disk to back up (read-only disks are images it shares: back up where they come from)")
        }
        if live, let d = disks.first(where: { !$0.tracked }) {
            throw ManagerError.conflict("\(name)'s disk \(d.path) is not change-tracked (changeTracking false, or a clone): stop the VM for an offline backup")
        }
        let dir = directory(vm)
        try makeDirectory(dir.backups)
        let config = BackupConfig(spec: spec, labels: (try? JSON.decode([String: String].self, vm.labels)) ?? [:], restartPolicy: vm.restartPolicy)
        let configFile = dir.backups + "/config.json"
        guard FileManager.default.createFile(atPath: configFile, contents: Data(try JSON.encode(config).utf8)) else {
            throw ManagerError.internal("\(configFile): cannot write it")
        }
        var args = ["backup", "create", "--vm", name, "--json", "--work-dir", dir.backups, "--config-file", configFile]
        args += disks.flatMap { ["--disk", $0.path] }
        if live { args += ["--control-socket", dir.controlSocket] }
        return try startJob(kind: "backup", vm: name, trigger: trigger, backup: nil, directory: dir.backups, busy: "backed up",
                            arguments: args + target.arguments + target.keyArguments)
    }

    // MARK: restore

    /// A new VM `name` from backup `id` (one made by skiffd, whose manifest
    /// carries its VM's configuration): its row first (created, not
    /// running), empty disk files in its directory, then a `skiff backup
    /// restore` job into them; when that succeeds the VM starts (if
    /// `start`), when it fails the VM is removed again.
    ///
    /// `live`: the job serves each disk on a socket while it restores it
    /// (`skiff backup restore --live`), and the VM starts as soon as every
    /// socket is there, its disks given `fill=`: a chunk the guest touches
    /// first is fetched first, the rest comes in order. A live restore that
    /// fails removes its VM, running or not.
    func restoreBackup(_ id: String, name given: String?, start: Bool, live: Bool = false) async throws -> BackupJobRecord {
        if live && !start { throw ManagerError.invalid("a live restore starts its VM: leave start true, or restore without live") }
        guard let target = backupTarget else {
            throw ManagerError.conflict("skiffd has no backup server: start it with --backup-server URL --backup-token-file FILE")
        }
        if let p = Names.problem(id, what: "backup id") { throw ManagerError.invalid(p) }
        if let given, let p = Names.problem(given) { throw ManagerError.invalid(p) }
        // The manifest, off the actor: a short `skiff backup show`.
        let shown = await Subprocess.run(tool, ["--client", "backup", "show", id, "--json"] + target.arguments)
        guard shown.status == 0 else {
            let why = shown.output.trimmingCharacters(in: .whitespacesAndNewlines).suffix(400)
            throw why.contains("no backup") ? ManagerError.notFound(String(why)) : ManagerError.conflict("backup \(id): \(why)")
        }
        guard let doc = try? JSONSerialization.jsonObject(with: Data(shown.output.utf8)) as? [String: Any],
              let diskCount = (doc["disks"] as? [Any])?.count,
              let text = doc["config"] as? String, let config = try? JSON.decode(BackupConfig.self, text) else {
            throw ManagerError.invalid("backup \(id) carries no VM configuration skiffd made (a `skiff backup create` of image files?): restore its disks with `skiff backup restore \(id) --disk-output FILE`")
        }
        let name = given ?? String(((doc["vm"] as? String) ?? "vm").prefix(54)) + "-restored"
        if let p = Names.problem(name) { throw ManagerError.invalid(p) }
        if try store.vm(named: name) != nil { throw ManagerError.conflict("a VM named \(name) exists already; pick another name (--name) or delete it first") }
        var spec = config.spec
        // A new VM that boots from its restored disks: not the snapshot or clone number it may have had.
        spec.snapshot = nil
        spec.cloneIndex = nil
        guard spec.disks.filter({ !$0.readOnly }).count == diskCount else {
            throw ManagerError.invalid("backup \(id) has \(diskCount) disks, its configuration \(spec.disks.filter { !$0.readOnly }.count) writable ones")
        }
        let vmID = Self.newID()
        let dir = VMDirectory(path: stateDirectory + "/vms/" + vmID)
        try makeDirectory(dir.path)
        try makeDirectory(dir.backups)
        var outputs: [String] = [], sockets: [String] = []
        for i in spec.disks.indices where !spec.disks[i].readOnly {
            let path = dir.path + "/disk\(outputs.count).img"
            if live {
                spec.disks[i].fill = dir.path + "/disk\(outputs.count).fill.sock"
                sockets.append(spec.disks[i].fill!)
            }
            // Empty until the job fills it: the row's disks exist from the start.
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                try? FileManager.default.removeItem(atPath: dir.path)
                throw ManagerError.internal("\(path): cannot make it")
            }
            spec.disks[i].path = path
            spec.disks[i].changeTracking = nil
            outputs.append(path)
        }
        let vm: VMRecord
        do {
            vm = try create(CreateRequest(name: name, labels: config.labels, spec: spec,
                                          restartPolicy: RestartPolicy(rawValue: config.restartPolicy) ?? .no, start: false), id: vmID)
        } catch {
            try? FileManager.default.removeItem(atPath: dir.path)
            throw error
        }
        if start { try store.update(vm.name) { $0.desired = DesiredState.running.rawValue } }
        let args = ["backup", "restore", id, "--force", "--json"] + outputs.flatMap { ["--disk-output", $0] } + sockets.flatMap { ["--live", $0] }
        do {
            return try startJob(kind: "restore", vm: name, trigger: "api", backup: id, directory: dir.backups, busy: "restored",
                                arguments: args + target.arguments + target.keyArguments)
        } catch {
            try? finishDelete(vm)
            throw error
        }
    }

    // MARK: jobs

    /// A job's files: `PREFIX.out` (its report), `PREFIX.log` (what it
    /// said on stderr), `PREFIX.status` (its exit status, written by the
    /// shell around it once it has ended: a job that is gone without one
    /// was killed).
    struct JobFiles {
        let prefix: String
        var out: String { prefix + ".out" }
        var log: String { prefix + ".log" }
        var status: String { prefix + ".status" }
        func remove() { for f in [out, log, status, prefix + ".tmp"] { unlink(f) } }
    }

    func jobFiles(_ job: BackupJobRecord) -> JobFiles? {
        guard let id = job.id, let vm = try? store.vm(named: job.vm) else { return nil }
        return JobFiles(prefix: directory(vm).backups + "/job-\(id)")
    }

    private func startJob(kind: String, vm name: String, trigger: String, backup: String?, directory: String, busy what: String,
                          arguments: [String]) throws -> BackupJobRecord {
        var job = BackupJobRecord(id: nil, kind: kind, vm: name, trigger: trigger, state: "running", pid: nil, pidStart: nil, backup: backup,
                                  detail: nil, startedAt: Int64(Date().timeIntervalSince1970), endedAt: nil)
        job = try store.db.write { db in
            try job.insert(db)
            job.id = db.lastInsertedRowID
            try Store.eventRecord(name, kind == "backup" ? "backup started" : "restore started", "job \(job.id!)").insert(db)
            return job
        }
        let files = JobFiles(prefix: directory + "/job-\(job.id!)")
        files.remove()
        busy[name] = what
        // sh writes the status once the job has ended, whoever is its parent by then.
        let script = "\"$@\" >\"$0.out\"; echo $? >\"$0.tmp\" && mv -f \"$0.tmp\" \"$0.status\""
        do {
            let id = try VMProcess.spawn("/bin/sh", arguments: ["-c", script, files.prefix, tool, "--client"] + arguments,
                                         input: "/dev/null", console: files.log)
            children.insert(id.pid)
            return try store.db.write { db in
                job.pid = Int64(id.pid); job.pidStart = id.start
                try job.update(db)
                return job
            }
        } catch {
            busy[name] = nil
            _ = try? endJob(job, state: "failed", detail: "could not start: \(error)")
            throw error
        }
    }

    @discardableResult
    func endJob(_ job: BackupJobRecord, state: String, backup: String? = nil, detail: String?) throws -> BackupJobRecord {
        var j = job
        j.state = state
        j.backup = backup ?? job.backup
        j.detail = detail
        j.endedAt = Int64(Date().timeIntervalSince1970)
        j.pid = nil; j.pidStart = nil
        try store.db.write { db in
            try j.update(db)
            // A failure's reason goes in the event too: a failed restore's VM, and its jobs with it, are removed.
            let what = j.backup.map { "job \(job.id ?? 0), backup \($0)" } ?? "job \(job.id ?? 0)"
            let why = state == "succeeded" ? "" : detail.map { ": " + $0.suffix(500) } ?? ""
            try Store.eventRecord(job.vm, "\(job.kind) \(state)", what + why).insert(db)
            // A VM's history is its last 100 jobs (a schedule adds one per interval).
            try db.execute(sql: """
                DELETE FROM backupJob WHERE vm = ? AND state != 'running' AND id NOT IN
                  (SELECT id FROM backupJob WHERE vm = ? ORDER BY id DESC LIMIT 100)
                """, arguments: [job.vm, job.vm])
        }
        return j
    }

    func runningJobs() throws -> [BackupJobRecord] {
        try store.db.read { try BackupJobRecord.filter(Column("state") == "running").order(Column("id")).fetchAll($0) }
    }

    func jobs(vm name: String) throws -> [BackupJobRecord] {
        _ = try existing(name)
        return try store.db.read { try BackupJobRecord.filter(Column("vm") == name).order(Column("id").desc).limit(100).fetchAll($0) }
    }

    func job(_ id: Int64) throws -> BackupJobRecord {
        guard let j = try store.db.read({ try BackupJobRecord.fetchOne($0, key: id) }) else {
            throw ManagerError.notFound("no backup job \(id) (GET /v1/vms/NAME/backups lists a VM's)")
        }
        return j
    }

    /// One pass over the running jobs (the reconcile loop's): those whose
    /// status file is there are finished, those whose process is gone
    /// without one were killed. Then the schedules that are due.
    func reconcileBackups() throws {
        for job in try runningJobs() {
            guard let files = jobFiles(job) else {
                try endJob(job, state: "interrupted", detail: "its VM is gone")
                continue
            }
            if let status = Self.readStatus(files.status) {
                try finish(job, status: status, files: files)
            } else if let pid = job.pid, let start = job.pidStart, VMProcess.isAlive(.init(pid: pid_t(pid), start: start)) {
                busy[job.vm] = job.kind == "backup" ? "backed up" : "restored" // adopted after a restart
                if job.kind == "restore" { try startLive(job.vm) }
            } else if job.pid != nil || Date().timeIntervalSince1970 - Double(job.startedAt) > 10 {
                // Read again: it may have ended between the two looks.
                if let status = Self.readStatus(files.status) { try finish(job, status: status, files: files) } else { try interrupted(job, files: files) }
            }
        }
        try scheduledBackups()
    }

    /// A live restore's VM, once its filler serves every disk (each
    /// socket is renamed into place when it listens): started once.
    private func startLive(_ name: String) throws {
        guard let vm = try store.vm(named: name), vm.desired == DesiredState.running.rawValue, vm.generation == 0,
              VMState(rawValue: vm.observed) == .created else { return }
        let spec = try JSON.decode(VMSpec.self, vm.spec)
        let sockets = spec.disks.compactMap(\.fill)
        guard !sockets.isEmpty, sockets.allSatisfy({ path in
            var st = stat()
            return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
        }) else { return }
        do {
            try admit(spec, excluding: vm.id)
            _ = try launch(vm)
            store.event(name, "live restore", "started on its disks as they arrive")
        } catch {
            // It starts when the restore has finished, if it can then.
            logger.warning("\(name): a live start failed: \(error)")
        }
    }

    /// A restored VM whose restore failed: its process (a live restore's runs) and everything else.
    private func removeRestored(_ vm: VMRecord) throws {
        if let id = identity(vm), VMProcess.isAlive(id) { Self.killTree(id); waitGone(id) }
        try finishDelete(vm)
    }

    static func readStatus(_ path: String) -> Int32? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private func finish(_ job: BackupJobRecord, status: Int32, files: JobFiles) throws {
        let out = (FileManager.default.contents(atPath: files.out).map { String(decoding: $0.prefix(1 << 16), as: UTF8.self) } ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let log = Self.tail(files.log)
        files.remove()
        busy[job.vm] = nil
        // A report, or a live restore's list of them (one per disk).
        let parsed = status == 0 ? try? JSONSerialization.jsonObject(with: Data(out.utf8)) : nil
        let report = parsed as? [String: Any] ?? ((parsed as? [[String: Any]]).map { ["disks": $0] })
        guard let report else {
            let why = log.isEmpty ? "exit status \(status)" : log
            try endJob(job, state: "failed", detail: why)
            if job.kind == "restore", let vm = try store.vm(named: job.vm) { try removeRestored(vm); store.event(job.vm, "deleted", "its restore failed") }
            return
        }
        let made = job.kind == "backup" ? report["id"] as? String : nil
        try endJob(job, state: "succeeded", backup: made, detail: out)
        // A live restore's VM runs already (unless it could not start on the partial disk).
        if job.kind == "restore", let vm = try store.vm(named: job.vm), vm.desired == DesiredState.running.rawValue,
           VMState(rawValue: vm.observed)?.isActive != true {
            do {
                try admit(try JSON.decode(VMSpec.self, vm.spec), excluding: vm.id)
                _ = try launch(vm)
            } catch {
                try store.update(vm.name) { $0.desired = DesiredState.stopped.rawValue; $0.stopReason = "restored, but not started: \(error)" }
            }
        }
        if job.kind == "backup", let policy = try policy(of: job.vm) { prune(job.vm, policy) }
    }

    private func interrupted(_ job: BackupJobRecord, files: JobFiles) throws {
        // skiffd died between the spawn and writing its pid: the job may run on, unknown; it goes.
        if job.pid == nil { for p in Self.jobProcesses(files.prefix) { Glibc.kill(-p, SIGKILL); Glibc.kill(p, SIGKILL) } }
        busy[job.vm] = nil
        let log = Self.tail(files.log)
        files.remove()
        try endJob(job, state: "interrupted", detail: "its process ended without an exit status (killed)" + (log.isEmpty ? "" : ": " + log))
        guard let vm = try store.vm(named: job.vm) else { return }
        if job.kind == "restore" {
            try removeRestored(vm)
            store.event(job.vm, "deleted", "its restore was interrupted")
            return
        }
        // A live backup's session stays open in the VMM until told: its
        // chunks go back into the map, its copy-before-write ends.
        if VMState(rawValue: vm.observed)?.isActive == true {
            let socket = directory(vm).controlSocket
            Task.detached { _ = try? await ControlChannel.ask(.backupEnd(completed: false), socket: socket, timeoutMs: 2000) }
        }
        Self.removeWorkDirectories(directory(vm).backups)
    }

    /// The shells of jobs with this prefix (`sh -c SCRIPT PREFIX ...`), by /proc.
    static func jobProcesses(_ prefix: String) -> [pid_t] {
        var found: [pid_t] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            if args.count > 3, args[1] == "-c", args[3] == prefix { found.append(pid) }
        }
        return found
    }

    /// A live backup's `.skiff-backup-*` directories, left by a killed job.
    static func removeWorkDirectories(_ dir: String) {
        for e in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where e.hasPrefix(".skiff-backup-") {
            try? FileManager.default.removeItem(atPath: dir + "/" + e)
        }
    }

    /// The last line or so of what a job said (its error), at most 2 KiB.
    static func tail(_ path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "" }
        let text = String(decoding: data.suffix(2048), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.split(separator: "\n").suffix(3).joined(separator: "; ")
    }

    // MARK: schedules

    func policy(of name: String) throws -> BackupPolicyRecord? {
        try store.db.read { try BackupPolicyRecord.fetchOne($0, key: name) }
    }

    func setPolicy(_ p: BackupPolicyRecord) throws -> BackupPolicyRecord {
        _ = try existing(p.vm)
        guard (5...31_622_400).contains(p.intervalSeconds) else { throw ManagerError.invalid("intervalSeconds \(p.intervalSeconds): between 5 and 31622400 (a year)") }
        for (k, v) in [("keepLast", p.keepLast), ("keepDaily", p.keepDaily), ("keepWeekly", p.keepWeekly), ("keepMonthly", p.keepMonthly)] {
            guard (0...100_000).contains(v) else { throw ManagerError.invalid("\(k) \(v): between 0 and 100000") }
        }
        var record = p
        record.nextAt = Int64(Date().timeIntervalSince1970) + p.intervalSeconds
        try store.db.write { try record.save($0) }
        store.event(p.vm, "backup policy", "every \(p.intervalSeconds) s")
        return record
    }

    func deletePolicy(_ name: String) throws {
        _ = try existing(name)
        let removed = try store.db.write { try BackupPolicyRecord.deleteOne($0, key: name) }
        guard removed else { throw ManagerError.notFound("\(name) has no backup policy") }
    }

    /// Starts the backups that are due. One that cannot start now (the VM
    /// busy or starting) is recorded as a failed job, and the next is due
    /// an interval later: a schedule never piles up.
    private func scheduledBackups() throws {
        let now = Int64(Date().timeIntervalSince1970)
        let due = try store.db.read { try BackupPolicyRecord.filter(Column("nextAt") <= now).fetchAll($0) }
        for var p in due {
            p.nextAt = now + p.intervalSeconds
            try store.db.write { try p.update($0) }
            do { _ = try backup(p.vm, trigger: "schedule") } catch {
                let skipped = BackupJobRecord(id: nil, kind: "backup", vm: p.vm, trigger: "schedule", state: "running", pid: nil, pidStart: nil,
                                              backup: nil, detail: nil, startedAt: now, endedAt: nil)
                let row = try store.db.write { db -> BackupJobRecord in
                    var r = skipped
                    try r.insert(db)
                    r.id = db.lastInsertedRowID
                    return r
                }
                try endJob(row, state: "failed", detail: "not started: \(error)")
            }
        }
    }

    /// `skiff backup prune` of the VM's backups with its policy's counts,
    /// off the actor (it talks to the server); what it did goes to the events.
    private func prune(_ vm: String, _ p: BackupPolicyRecord) {
        guard let target = backupTarget, p.keepLast + p.keepDaily + p.keepWeekly + p.keepMonthly > 0 else { return }
        let args = ["--client", "backup", "prune", "--vm", vm, "--keep-last", String(p.keepLast), "--keep-daily", String(p.keepDaily),
                    "--keep-weekly", String(p.keepWeekly), "--keep-monthly", String(p.keepMonthly)] + target.arguments
        let tool = self.tool, store = self.store
        Task.detached {
            let r = await Subprocess.run(tool, args)
            store.event(vm, r.status == 0 ? "backups pruned" : "backup prune failed", r.output.trimmingCharacters(in: .whitespacesAndNewlines).suffix(500).description)
        }
    }
}
