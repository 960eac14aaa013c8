import Foundation
import Glibc

extension Manager {
    struct RecoveryReport: Sendable, CustomStringConvertible {
        var adopted = 0, ended = 0, orphansKilled = 0, directoriesRemoved = 0, cgroupsRemoved = 0, intentsFinished = 0
        var seconds = 0.0
        var description: String {
            "adopted \(adopted) VMs, \(ended) had ended, finished \(intentsFinished) interrupted operations, killed \(orphansKilled) orphan processes, removed \(directoriesRemoved) directories and \(cgroupsRemoved) cgroups, in \(String(format: "%.1f", seconds * 1000)) ms"
        }
    }

    /// On start: makes what is on the host agree with the store. Finishes
    /// or undoes interrupted operations, adopts the VM processes still
    /// running (found by pid and start time, or, for a VM whose pid was
    /// never written, by its control socket on a process's command line),
    /// records those that ended, and removes what no row explains:
    /// processes, directories and cgroups.
    func recover() throws -> RecoveryReport {
        let t0 = Date()
        var report = RecoveryReport()
        try loadMeter()
        let byID = Dictionary(uniqueKeysWithValues: try store.vms().map { ($0.id, $0) })
        for intent in try store.intents() {
            switch intent.kind {
            case "delete":
                if let vm = byID[intent.vm] {
                    if let id = identity(vm), VMProcess.isAlive(id) { Self.killTree(id); waitGone(id) }
                    try finishDelete(vm)
                    store.event(vm.name, "deleted", "finished after a restart")
                }
            case "snapshot":
                // The row is written with the intent's removal: no row, so partial.
                if let vm = byID[intent.vm] {
                    let has = try store.db.read { try SnapshotRecord.filter(key: ["vm": vm.name, "name": intent.detail]).fetchOne($0) != nil }
                    if !has, Names.problem(intent.detail) == nil { try? FileManager.default.removeItem(atPath: directory(vm).snapshot(intent.detail)) }
                }
            default: break
            }
            if let id = intent.id { try store.end(id) }
            report.intentsFinished += 1
        }
        let vms = try store.vms()
        let launchers = Self.launchers(under: stateDirectory + "/vms/")
        for vm in vms {
            let state = VMState(rawValue: vm.observed) ?? .exited
            guard state.isActive else { continue }
            if let id = identity(vm), VMProcess.isAlive(id) {
                report.adopted += 1
                store.event(vm.name, "adopted", "pid \(id.pid)")
                if state == .stopping { stopDeadlines[vm.name] = Date().addingTimeInterval(10) }
                continue
            }
            if vm.pid == nil, let found = launchers[vm.id] {
                try store.update(vm.name) { $0.pid = Int64(found.pid); $0.pidStart = found.start }
                report.adopted += 1
                store.event(vm.name, "adopted", "pid \(found.pid), found by its control socket")
                continue
            }
            try ended(vm)
            report.ended += 1
        }
        // What no row explains.
        let ids = Set(try store.vms().map(\.id))
        for (id, process) in launchers where !ids.contains(id) {
            Self.killTree(process)
            Glibc.kill(process.pid, SIGKILL)
            waitGone(process)
            report.orphansKilled += 1
        }
        let root = stateDirectory + "/vms"
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where !ids.contains(entry) {
            try? FileManager.default.removeItem(atPath: root + "/" + entry)
            report.directoriesRemoved += 1
        }
        // Backup jobs: those that ended while skiffd was down are finished,
        // those still running are the VM's again (it stays busy until they end).
        try reconcileBackups()
        let before = cgroups.names().count
        try removeStrayCgroups()
        report.cgroupsRemoved = before - cgroups.names().count
        report.seconds = Date().timeIntervalSince(t0)
        return report
    }

    /// Launchers (`skiff run|restore ... --control-socket <root><id>/control.sock`) by VM id.
    static func launchers(under root: String) -> [String: VMProcess.Identity] {
        var found: [String: VMProcess.Identity] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard args.count > 2, args[1] == "run" || args[1] == "restore",
                  let i = args.firstIndex(of: "--control-socket"), i + 1 < args.count, args[i + 1].hasPrefix(root) else { continue }
            let id = String(args[i + 1].dropFirst(root.count).prefix { $0 != "/" })
            // The launcher is the one whose parent is not also a launcher of this VM (keeper and VMM share its command line).
            guard let start = VMProcess.startTime(pid) else { continue }
            if let previous = found[id], previous.start <= start { continue }
            found[id] = VMProcess.Identity(pid: pid, start: start)
        }
        return found
    }

    func waitGone(_ id: VMProcess.Identity) {
        for _ in 0..<250 where VMProcess.isAlive(id) { usleep(20_000) }
    }
}
