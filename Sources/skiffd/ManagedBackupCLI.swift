import ArgumentParser
import Foundation
import SkiffAPI

/// Backups of skiffd's VMs, through skiffd: `skiff backup VM`, `skiff
/// backup schedule VM`, `skiff backup jobs VM`, `skiff restore-backup ID`.
/// skiffd runs each as a job of its own and the CLI waits for it.
extension BackupCommand {
    struct BackupVM: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "vm",
            abstract: "Back up a VM of skiffd's now (the default: `skiff backup VM`), and wait for it.",
            discussion: "A running VM is paused only for the moment its point in time is taken; a stopped one is read as it is.")
        @Argument(help: "The VM's name.") var vm: String
        @Flag(help: "Print the job and return at once.") var noWait = false
        @OptionGroup var output: Output

        func run() async throws {
            let job: Components.Schemas.BackupJob = try await withClient { c in
                switch try await c.backupVM(path: .init(name: vm)) {
                case .accepted(let r): return try r.body.json
                case .default(let s, let p): throw failure(s, p)
                }
            }
            try await finish(job, wait: !noWait, json: output.json)
        }
    }

    struct Schedule: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show or set when skiffd backs a VM up by itself, and which of its backups pruning keeps after each.",
            discussion: "`skiff backup schedule web --every 1h --keep-last 24 --keep-daily 7`; `--off` ends it (the backups stay).")
        @Argument(help: "The VM's name.") var vm: String
        @Option(help: "How often: N followed by s, m, h or d.") var every: String?
        @Option var keepLast: Int64 = 0
        @Option var keepDaily: Int64 = 0
        @Option var keepWeekly: Int64 = 0
        @Option var keepMonthly: Int64 = 0
        @Flag(help: "No more scheduled backups.") var off = false
        @OptionGroup var output: Output

        func run() async throws {
            if off {
                try await withClient { c in
                    switch try await c.deleteBackupPolicy(path: .init(name: vm)) {
                    case .noContent: return
                    case .default(let s, let p): throw failure(s, p)
                    }
                }
                return
            }
            let policy: Components.Schemas.BackupPolicy = try await withClient { c in
                if let every {
                    guard let seconds = Self.seconds(every) else { throw CLIError("--every \(every): give N followed by s, m, h or d (30m, 6h, 1d)") }
                    let body = Components.Schemas.BackupPolicy(intervalSeconds: seconds, keepLast: keepLast, keepDaily: keepDaily,
                                                               keepWeekly: keepWeekly, keepMonthly: keepMonthly)
                    switch try await c.setBackupPolicy(path: .init(name: vm), body: .json(body)) {
                    case .ok(let r): return try r.body.json
                    case .default(let s, let p): throw failure(s, p)
                    }
                }
                switch try await c.getBackupPolicy(path: .init(name: vm)) {
                case .ok(let r): return try r.body.json
                case .default(let s, let p): throw failure(s, p)
                }
            }
            if output.json { return try printJSON(policy) }
            print("\(vm): every \(policy.intervalSeconds) s, next \(policy.nextAt.map { "in \(max(0, $0 - Int64(Date().timeIntervalSince1970))) s" } ?? "-"); "
                  + "keep last \(policy.keepLast ?? 0), daily \(policy.keepDaily ?? 0), weekly \(policy.keepWeekly ?? 0), monthly \(policy.keepMonthly ?? 0)")
        }

        static func seconds(_ text: String) -> Int64? {
            guard let unit = text.last, let n = Int64(text.dropLast()), n > 0 else { return Int64(text) }
            switch unit {
            case "s": return n
            case "m": return n * 60
            case "h": return n * 3600
            case "d": return n * 86400
            default: return nil
            }
        }
    }

    struct Jobs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A VM's backup and restore jobs, newest first.")
        @Argument(help: "The VM's name.") var vm: String
        @OptionGroup var output: Output

        func run() async throws {
            let list: Components.Schemas.BackupJobList = try await withClient { c in
                switch try await c.listBackupJobs(path: .init(name: vm)) {
                case .ok(let r): return try r.body.json
                case .default(let s, let p): throw failure(s, p)
                }
            }
            if output.json { return try printJSON(list.items) }
            table([["JOB", "KIND", "TRIGGER", "STATE", "STARTED", "BACKUP", "MODE", "READ", "SENT", "SECONDS"]] + list.items.map { j in
                [String(j.id), j.kind.rawValue, j.trigger.rawValue, j.state.rawValue, age(j.startedAt) + " ago", j.backup ?? "-", j.mode ?? "-",
                 j.bytesRead.map { String(format: "%.1f MiB", Double($0) / 1048576) } ?? "-",
                 j.bytesSent.map { String(format: "%.1f MiB", Double($0) / 1048576) } ?? "-", j.seconds.map { String(format: "%.2f", $0) } ?? "-"]
            })
        }
    }
}

/// `skiff restore-backup ID --name NEW`: a new VM from a backup.
struct RestoreBackup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore-backup",
        abstract: "Make a new VM from a backup of one of skiffd's VMs (skiff backup ls), and start it.",
        discussion: "Its disks are restored into the new VM's directory; the VM starts once they are complete and checked, or with --live at once, while they arrive (each chunk the guest touches first is fetched first).")
    @Argument(help: "The backup's id.") var id: String
    @Option(help: "The new VM's name (default: the backed-up VM's, with -restored).") var name: String?
    @Flag(help: "Create it stopped.") var noStart = false
    @Flag(help: "Start it at once, on its disks as they are restored (a live restore).") var live = false
    @Flag(help: "Print the job and return at once.") var noWait = false
    @OptionGroup var output: Output

    func run() async throws {
        let job: Components.Schemas.BackupJob = try await withClient { c in
            switch try await c.restoreBackup(path: .init(id: id), body: .json(.init(name: name, start: !noStart, live: live ? true : nil))) {
            case .accepted(let r): return try r.body.json
            case .default(let s, let p): throw failure(s, p)
            }
        }
        try await finish(job, wait: !noWait, json: output.json)
    }
}

/// Waits for a backup job (polling skiffd), then prints it; a job that did
/// not succeed is exit status 1 with its reason.
func finish(_ started: Components.Schemas.BackupJob, wait: Bool, json: Bool) async throws {
    var job = started
    if wait {
        while job.state == .running {
            try await Task.sleep(nanoseconds: 200_000_000)
            job = try await withClient { c in
                switch try await c.getBackupJob(path: .init(id: started.id)) {
                case .ok(let r): return try r.body.json
                case .default(404, _) where started.kind == .restore:
                    // A failed restore's VM is removed, and its jobs with it: the reason is in the events.
                    let reason = try? await c.getEvents(query: .init(since: 0)).ok.body.json.items.last {
                        $0.vm == started.vm && $0.kind.hasPrefix("restore ") && $0.detail?.hasPrefix("job \(started.id)") == true
                    }
                    throw CLIError("the restore (job \(started.id)) \(reason.map { "\($0.kind.dropFirst(8)): \($0.detail ?? "")" } ?? "ended"), and \(started.vm) was removed")
                case .default(let s, let p): throw failure(s, p)
                }
            }
        }
    }
    if json { try printJSON(job) } else if job.state == .running {
        print("job \(job.id): \(job.kind.rawValue) of \(job.vm) running (skiff backup jobs \(job.vm))")
    } else if job.state == .succeeded {
        if job.kind == .backup {
            print("backup \(job.backup ?? "?") of \(job.vm): \(job.mode ?? "?"), \(job.consistency ?? "?")")
            print(String(format: "read %.1f MiB, sent %.1f MiB, %.2f s", Double(job.bytesRead ?? 0) / 1048576, Double(job.bytesSent ?? 0) / 1048576, job.seconds ?? 0))
        } else {
            print("\(job.vm): restored from \(job.backup ?? "?")")
        }
    }
    if job.state == .failed || job.state == .interrupted {
        throw CLIError("\(job.kind.rawValue) of \(job.vm) \(job.state.rawValue): \(job.error ?? "no reason recorded")")
    }
}
