import Foundation
import Glibc
import GRDB

extension Manager {
    /// A full snapshot through `skiff snapshot SOCKET DIR` (the one client
    /// that makes the files the VMM writes into). The intent row comes
    /// first: a skiffd killed during it removes the partial directory on
    /// restart; the snapshot's row is written once the files are complete.
    func snapshot(_ name: String, snapshotName: String?) async throws -> SnapshotRecord {
        let vm = try existing(name)
        try idle(name)
        guard vm.observed == VMState.running.rawValue || vm.observed == VMState.paused.rawValue else {
            throw ManagerError.conflict("\(name) is \(vm.observed): only a running or paused VM can be snapshotted")
        }
        let snap = snapshotName ?? "snap-\(Int64(Date().timeIntervalSince1970 * 1000))"
        if let p = Names.problem(snap, what: "snapshot name") { throw ManagerError.invalid(p) }
        let exists = try await store.db.read { try SnapshotRecord.filter(key: ["vm": name, "name": snap]).fetchOne($0) != nil }
        guard !exists else { throw ManagerError.conflict("\(name) has a snapshot named \(snap) already") }
        let path = directory(vm).snapshot(snap)
        let intent = try store.begin("snapshot", vm: vm.id, detail: snap)
        busy[name] = "snapshotted"
        defer { busy[name] = nil }
        let result = await Subprocess.run(skiff, ["snapshot", directory(vm).controlSocket, path])
        guard result.status == 0 else {
            try? FileManager.default.removeItem(atPath: path)
            try store.end(intent)
            throw ManagerError.conflict("snapshot of \(name) failed: \(result.output.trimmingCharacters(in: .whitespacesAndNewlines).suffix(500))")
        }
        let record = SnapshotRecord(vm: name, name: snap, path: path, bytes: Self.diskBytes(path), createdAt: Int64(Date().timeIntervalSince1970))
        try await store.db.write { db in
            try record.insert(db)
            _ = try IntentRecord.deleteOne(db, key: intent)
        }
        store.event(name, "snapshot", snap)
        return record
    }

    func snapshots(_ name: String) throws -> [SnapshotRecord] {
        _ = try existing(name)
        return try store.db.read { try SnapshotRecord.filter(sql: "vm = ?", arguments: [name]).order(sql: "createdAt, name").fetchAll($0) }
    }

    /// N VMs restored from one snapshot of `name` (the newest if none is
    /// named), each with its own identity (`skiff restore --clone-index`).
    /// Their rows are written first, then each is started.
    /// The clones' files are made first, off the actor (`createWithFiles`).
    nonisolated func clone(_ name: String, count: Int, snapshotName: String?, prefix: String?) async throws -> [VMRecord] {
        guard (1...1000).contains(count) else { throw ManagerError.invalid("count \(count): between 1 and 1000") }
        guard let base = try store.vm(named: name) else { throw ManagerError.notFound("no VM named \(name) (see GET /v1/vms)") }
        let ids = (0..<count).map { _ in Manager.newID() }
        let withCgroups = try await makeFiles(ids, resources: try JSON.decode(VMSpec.self, base.spec).resources)
        return try await clone(name, ids: ids, withCgroups: withCgroups, snapshotName: snapshotName, prefix: prefix)
    }

    private func clone(_ name: String, ids: [String], withCgroups: Set<String>, snapshotName: String?, prefix: String?) async throws -> [VMRecord] {
        // Those not made into VMs (all of them if the clone is refused) go.
        var unused = ids[...]
        defer { for id in unused { removeFiles(id) } }
        let count = ids.count
        let vm = try existing(name)
        let snaps = try snapshots(name)
        guard let snap = snapshotName.map({ n in snaps.first { $0.name == n } }) ?? snaps.last else {
            throw ManagerError.notFound(snapshotName.map { "\(name) has no snapshot named \($0)" } ?? "\(name) has no snapshot: take one first (POST /v1/vms/\(name)/snapshots)")
        }
        let base = prefix ?? "\(name)-clone"
        var spec = try JSON.decode(VMSpec.self, vm.spec)
        spec.snapshot = snap.path
        // Clones share the base's disks: one changed-block map cannot serve
        // several writers (the second VMM would find it locked).
        for i in spec.disks.indices { spec.disks[i].changeTracking = false }
        // Clone numbers go on from the VMs already restored from this snapshot.
        let first = try highestCloneIndex(snap.path).map { $0 + 1 } ?? 0
        var made: [VMRecord] = []
        for i in 0..<count {
            var s = spec
            s.cloneIndex = first + i
            let cloneName = "\(base)-\(first + i)"
            let labels = (try? JSON.decode([String: String].self, vm.labels)) ?? [:]
            // create removes its directory itself if it refuses the VM.
            let id = unused.removeFirst()
            made.append(try create(CreateRequest(name: cloneName, labels: labels, spec: s,
                                                 restartPolicy: RestartPolicy(rawValue: vm.restartPolicy) ?? .no, start: true),
                                   id: id, prepared: true, cgroupMade: withCgroups.contains(id)))
            // Other requests between clones (a clone of 1000 takes a second or
            // more), but not after the last: this reply would queue behind them.
            if i < count - 1 { await Task.yield() }
        }
        return made
    }

    /// The largest clone number among the VMs restored from a snapshot. A
    /// synchronous read: an `await` here would let the clone's reply queue
    /// behind every request that came in meanwhile (bench/manager's p99).
    private func highestCloneIndex(_ snapshot: String) throws -> Int? {
        try store.db.read { db in
            try Int.fetchOne(db, sql: "SELECT MAX(json_extract(spec, '$.cloneIndex')) FROM vm WHERE json_extract(spec, '$.snapshot') = ?",
                             arguments: [snapshot])
        }
    }

    /// Bytes a snapshot holds on disk (its memory file is sparse).
    static func diskBytes(_ path: String) -> Int64 {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        var total: Int64 = 0
        for n in names {
            var st = stat()
            if lstat(path + "/" + n, &st) == 0 { total += Int64(st.st_blocks) * 512 }
        }
        return total
    }
}

/// Runs a short-lived helper (`skiff snapshot`) off the actor.
enum Subprocess {
    struct Result: Sendable { let status: Int32; let output: String }

    static func run(_ executable: String, _ arguments: [String]) async -> Result {
        await Blocking.run {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments = arguments
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            p.standardInput = FileHandle.nullDevice
            do { try p.run() } catch { return Result(status: 127, output: "\(executable): \(error)") }
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return Result(status: p.terminationStatus, output: String(decoding: data, as: UTF8.self))
        }
    }
}
