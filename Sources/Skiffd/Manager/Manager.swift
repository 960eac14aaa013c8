import Foundation
import Glibc
import GRDB
import Logging
import SkiffControl

/// The host manager's operations on VMs. Each one writes what it is about
/// to do to the store (and commits) before doing it, so that a skiffd
/// killed at any point finds, on restart, rows that explain every process,
/// directory and cgroup (`Recovery`). One actor: operations on the state
/// are serialised; the VMs themselves run in their own processes.
actor Manager {
    let store: Store
    let cgroups: Cgroups
    let stateDirectory: String
    /// The `skiff` binary that runs each VM.
    let skiff: String
    let logger: Logger
    let host: HostCapacity
    /// skiffd --max-vms.
    let maxVMs: Int

    /// VMs with an operation in flight (a snapshot, a delete): others on them wait or are refused.
    var busy: [String: String] = [:]
    /// When a stopping VM is killed if it has not stopped.
    var stopDeadlines: [String: Date] = [:]
    var meter = Meter()
    /// Launchers this skiffd started (its children, to be reaped).
    var children: Set<pid_t> = []
    var reconcileCount = 0
    /// A meter tick is taking its readings.
    var metering = false
    /// skiffd --backup-server ...: where `backup` sends VMs' disks.
    let backupTarget: BackupTarget?
    /// This executable: backup jobs are `skiffd --client backup ...` processes of their own.
    let tool: String

    init(store: Store, stateDirectory: String, skiff: String, maxVMs: Int = 1000, backupTarget: BackupTarget? = nil, logger: Logger) {
        self.store = store
        self.backupTarget = backupTarget
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        self.tool = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        self.cgroups = Cgroups.detect()
        self.stateDirectory = stateDirectory
        self.skiff = skiff
        self.logger = logger
        self.host = HostCapacity.read()
        self.maxVMs = maxVMs
    }

    func directory(_ vm: VMRecord) -> VMDirectory { VMDirectory(path: stateDirectory + "/vms/" + vm.id) }
    static func cgroupName(_ vm: VMRecord) -> String { cgroupName(vm.id) }
    static func cgroupName(_ id: String) -> String { "vm-" + id }

    // MARK: create

    struct CreateRequest: Sendable {
        var name: String
        var labels: [String: String] = [:]
        var spec: VMSpec
        var restartPolicy: RestartPolicy = .no
        var start = true
    }

    /// `create` with the new VM's files made first, off the actor (its
    /// directory and cgroup are named by a fresh ID, so nothing else
    /// touches them). Making inodes and cgroups is most of a create's time
    /// on these hosts: ext4 without a journal skips every inode deleted in
    /// the last minutes when it allocates one (80% of a clone's time on the
    /// actor after a hundred deletes, by perf), and a cgroup v1 mkdir waits
    /// for the launchers joining theirs (up to 80 ms, traced); every
    /// request queued behind them.
    nonisolated func createWithFiles(_ r: CreateRequest) async throws -> VMRecord {
        let id = Manager.newID()
        let withCgroups = try await makeFiles([id], resources: r.start ? r.spec.resources : nil)
        return try await create(r, id: id, prepared: true, cgroupMade: withCgroups.contains(id))
    }

    /// What a new VM has before its first start: its directory, its
    /// snapshots' directory, the console's input FIFO and log, and (if
    /// `resources`) its cgroup. On a thread of its own. Returns the IDs
    /// whose cgroups it made: one can go as a stray before its VM has a
    /// row, and `launch` then makes it again.
    nonisolated func makeFiles(_ ids: [String], resources: VMSpec.Resources?) async throws -> Set<String> {
        let root = stateDirectory + "/vms/", cgroups = self.cgroups
        return try await Blocking.run {
            var withCgroups: Set<String> = []
            for id in ids {
                let d = VMDirectory(path: root + id)
                for path in [d.path, d.snapshots] {
                    guard mkdir(path, 0o700) == 0 || errno == EEXIST else { throw ManagerError.internal("\(path): \(String(cString: strerror(errno)))") }
                }
                try Console.makeInput(d.consoleInput)
                let fd = open(d.console, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw ManagerError.internal("\(d.console): \(String(cString: strerror(errno)))") }
                close(fd)
                if let resources, cgroups.backend != .none, (try? cgroups.prepare(Self.cgroupName(id), resources)) != nil { withCgroups.insert(id) }
            }
            return withCgroups
        }
    }

    /// Undoes `makeFiles` for a VM that was not made.
    func removeFiles(_ id: String) {
        try? FileManager.default.removeItem(atPath: stateDirectory + "/vms/" + id)
        cgroups.remove(Self.cgroupName(id))
    }

    /// `prepared`: `makeFiles` made its files (and its cgroup if
    /// `cgroupMade`); they are removed if the VM is refused.
    func create(_ r: CreateRequest, id: String = Manager.newID(), prepared: Bool = false, cgroupMade: Bool = false) throws -> VMRecord {
        do { try check(r) } catch {
            if prepared { removeFiles(id) }
            throw error
        }
        let now = Int64(Date().timeIntervalSince1970)
        // One that starts at once is written `starting` from the first (one
        // transaction fewer per create: bench/manager's clones).
        let vm = VMRecord(id: id, name: r.name, spec: try JSON.encode(r.spec), labels: try JSON.encode(r.labels),
                          restartPolicy: r.restartPolicy.rawValue, desired: (r.start ? DesiredState.running : .stopped).rawValue,
                          observed: (r.start ? VMState.starting : .created).rawValue, pid: nil, pidStart: nil, exitStatus: nil, stopReason: nil,
                          restarts: 0, restartAt: nil, createdAt: now, startedAt: r.start ? now : nil, stoppedAt: nil, generation: r.start ? 1 : 0)
        // The directory first (one no row explains is removed on restart),
        // then the row: its name is unique in the database too, so two
        // creates of one name cannot both get past it. A row is never
        // without its directory, whenever skiffd dies.
        if !prepared {
            try makeDirectory(directory(vm).path)
            try makeDirectory(directory(vm).snapshots)
        }
        do { try store.insert(vm) } catch {
            removeFiles(id)
            throw ManagerError.conflict("a VM named \(r.name) exists already; pick another name or delete it first")
        }
        if r.start { return try launch(vm, written: true, cgroupMade: cgroupMade) }
        return vm
    }

    /// Whether a VM may be made as asked (and, if it starts, admitted).
    private func check(_ r: CreateRequest) throws {
        if let p = Names.problem(r.name) { throw ManagerError.invalid(p) }
        try validate(r.spec)
        guard r.labels.count <= 64 else { throw ManagerError.invalid("at most 64 labels") }
        for (k, v) in r.labels {
            guard !k.isEmpty, k.utf8.count <= 63, k.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: ",") }) else {
                throw ManagerError.invalid("label key '\(k.prefix(80))': 1 to 63 printable characters, no '=', ',' or space")
            }
            guard v.utf8.count <= 256, !v.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) else {
                throw ManagerError.invalid("label \(k): the value has a control character or more than 256 bytes")
            }
        }
        guard busy[r.name] == nil else { throw ManagerError.conflict("a VM named \(r.name) is being \(busy[r.name]!)") }
        let (taken, count) = try store.db.read { db in
            (try VMRecord.filter(Column("name") == r.name).fetchCount(db) > 0, try VMRecord.fetchCount(db))
        }
        if taken { throw ManagerError.conflict("a VM named \(r.name) exists already; pick another name or delete it first") }
        guard count < maxVMs else {
            throw ManagerError.insufficient("this host holds \(count) VMs, its most (skiffd --max-vms \(maxVMs)): delete one first")
        }
        if r.start { try admit(r.spec, excluding: nil) }
    }

    func validate(_ s: VMSpec) throws {
        guard (1...254).contains(s.cpus) else { throw ManagerError.invalid("cpus \(s.cpus): between 1 and 254") }
        guard s.memoryMiB >= 2, s.memoryMiB <= host.memoryMiB else {
            throw ManagerError.invalid("memoryMiB \(s.memoryMiB): between 2 and the host's \(host.memoryMiB)")
        }
        func file(_ path: String, _ what: String) throws {
            let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            guard path.hasPrefix("/"), !parts.isEmpty, !path.utf8.contains(where: { $0 < 0x20 }),
                  !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
                throw ManagerError.invalid("\(what) \(path.prefix(200).debugDescription): give an absolute path without '.', '..', '//' or control characters")
            }
            var st = stat()
            guard stat(path, &st) == 0 else { throw ManagerError.invalid("\(what) \(path.prefix(200)): \(String(cString: strerror(errno)))") }
        }
        if let k = s.kernel { try file(k, "kernel") }
        if let i = s.initrd { try file(i, "initrd") }
        if let c = s.cmdline, c.utf8.contains(where: { $0 < 0x20 }) { throw ManagerError.invalid("cmdline: has a control character") }
        for d in s.disks { try file(d.path, "disk") }
        if let snap = s.snapshot { try file(snap + "/state", "snapshot") }
        let r = s.resources
        if let w = r.cpuShares, !(1...10_000).contains(w) { throw ManagerError.invalid("cpuShares \(w): between 1 and 10000") }
        if let l = r.cpuLimit, !(l >= 0.01 && l <= Double(host.cpus)) { throw ManagerError.invalid("cpuLimit \(l): between 0.01 and the host's \(host.cpus) CPUs") }
        if let m = r.memoryLimitMiB, m < s.memoryMiB { throw ManagerError.invalid("memoryLimitMiB \(m): below the guest's memory (\(s.memoryMiB) MiB); the VM would be killed") }
        if let c = r.cpuReservation, let l = r.cpuLimit, c > l { throw ManagerError.invalid("cpuReservation \(c) is above cpuLimit \(l)") }
        if let m = r.memoryReservationMiB, let l = r.memoryLimitMiB, m > l { throw ManagerError.invalid("memoryReservationMiB \(m) is above memoryLimitMiB \(l)") }
    }

    /// vSphere's admission control: the reservations of every VM that
    /// should run, with this one, must fit the host.
    func admit(_ s: VMSpec, excluding id: String?) throws {
        // Reserving nothing fits whatever the others hold (admission kept them within the host).
        guard (s.resources.cpuReservation ?? 0) > 0 || (s.resources.memoryReservationMiB ?? 0) > 0 else { return }
        let others = try reservations(excluding: id)
        let cpu = others.cpu + (s.resources.cpuReservation ?? 0), memory = others.memoryMiB + (s.resources.memoryReservationMiB ?? 0)
        guard cpu <= Double(host.cpus) + 1e-9 else {
            throw ManagerError.insufficient("CPU reservations would total \(cpu) of this host's \(host.cpus) CPUs: lower cpuReservation or stop another VM")
        }
        guard memory <= host.memoryMiB else {
            throw ManagerError.insufficient("memory reservations would total \(memory) MiB of this host's \(host.memoryMiB) MiB: lower memoryReservationMiB or stop another VM")
        }
    }

    /// What the VMs that should run have reserved (one query: admission runs on every create).
    func reservations(excluding id: String?) throws -> (cpu: Double, memoryMiB: Int64) {
        try store.db.read { db in
            let row = try Row.fetchOne(db, sql: """
                SELECT COALESCE(SUM(json_extract(spec, '$.resources.cpuReservation')), 0) AS cpu,
                       COALESCE(SUM(json_extract(spec, '$.resources.memoryReservationMiB')), 0) AS memory
                FROM vm WHERE desired != 'stopped' AND id IS NOT ?
                """, arguments: [id])
            return (row?["cpu"] ?? 0, row?["memory"] ?? 0)
        }
    }

    // MARK: start

    func start(_ name: String) throws -> VMRecord {
        let vm = try existing(name)
        try idle(name)
        let state = VMState(rawValue: vm.observed) ?? .exited
        guard !state.isActive else { throw ManagerError.conflict("\(name) is \(state.rawValue) already") }
        try admit(try JSON.decode(VMSpec.self, vm.spec), excluding: vm.id)
        guard let updated = try store.update(name, { $0.desired = DesiredState.running.rawValue; $0.restarts = 0 }) else { throw ManagerError.notFound("no VM named \(name)") }
        return try launch(updated)
    }

    /// Starts the VM's process: the row says `starting` (committed) before
    /// the process exists (`written`: a new row said so from the first),
    /// and gets its pid after. `cgroupMade`: by `makeFiles`.
    func launch(_ vm: VMRecord, written: Bool = false, cgroupMade: Bool = false) throws -> VMRecord {
        let spec = try JSON.decode(VMSpec.self, vm.spec)
        let dir = directory(vm)
        let cgroup = cgroups.backend == .none ? nil : Self.cgroupName(vm)
        let starting: VMRecord
        if written { starting = vm } else {
            guard let s = try store.update(vm.name, {
                $0.observed = VMState.starting.rawValue
                $0.pid = nil; $0.pidStart = nil
                $0.exitStatus = nil; $0.stopReason = nil
                $0.restartAt = nil
                $0.startedAt = Int64(Date().timeIntervalSince1970)
                $0.stoppedAt = nil
                $0.generation += 1
            }) else { throw ManagerError.notFound("no VM named \(vm.name)") }
            starting = s
        }
        unlink(dir.exitFile)
        unlink(dir.controlSocket)
        do {
            // Unless `makeFiles` made it and it is still there (a stray before the row).
            if let cgroup, !(cgroupMade && cgroups.exists(cgroup)) { try cgroups.prepare(cgroup, spec.resources) }
            try Console.rotate(dir.console)
            try Console.makeInput(dir.consoleInput)
            let id = try VMProcess.spawn(skiff, arguments: spec.arguments(directory: dir, cgroup: cgroup),
                                         input: dir.consoleInput, console: dir.console)
            children.insert(id.pid)
            meter.started(vm.name, generation: starting.generation)
            let running = try store.update(vm.name, event: (starting.generation > 1 ? "restarted" : "started", "pid \(id.pid)")) {
                $0.pid = Int64(id.pid); $0.pidStart = id.start
            } ?? starting
            return running
        } catch {
            try store.update(vm.name) {
                $0.observed = VMState.exited.rawValue
                $0.stopReason = "could not start: \(error)"
                $0.stoppedAt = Int64(Date().timeIntervalSince1970)
            }
            throw error
        }
    }

    // MARK: stop, kill, pause, resume

    func stop(_ name: String, timeoutSeconds: Int) async throws -> VMRecord {
        let vm = try existing(name)
        try idle(name)
        guard let updated = try store.update(name, { v in
            v.desired = DesiredState.stopped.rawValue
            v.restartAt = nil
            if VMState(rawValue: v.observed)?.isActive == true { v.observed = VMState.stopping.rawValue }
        }) else { throw ManagerError.notFound("no VM named \(name)") }
        guard VMState(rawValue: vm.observed)?.isActive == true else { return updated }
        stopDeadlines[name] = Date().addingTimeInterval(Double(timeoutSeconds))
        store.event(name, "stopping")
        if (try? await ControlChannel.ask(.stop, socket: directory(vm).controlSocket, timeoutMs: 2000)) == nil {
            // Still starting (no socket yet), or wedged: the launcher passes
            // SIGTERM on, if it is still the process asked (the actor was free meanwhile).
            if let id = identity(vm), (try? store.vm(named: name))?.pidStart == id.start { _ = Glibc.kill(id.pid, SIGTERM) }
        }
        return updated
    }

    func kill(_ name: String) throws -> VMRecord {
        let vm = try existing(name)
        guard let updated = try store.update(name, { v in
            v.desired = DesiredState.stopped.rawValue
            v.restartAt = nil
            if VMState(rawValue: v.observed)?.isActive == true { v.observed = VMState.stopping.rawValue }
        }) else { throw ManagerError.notFound("no VM named \(name)") }
        if let id = identity(vm) { Self.killTree(id) }
        store.event(name, "killed")
        return updated
    }

    /// SIGKILL to the VMM (below the launcher, which then undoes the host
    /// side and writes the exit file), or to the launcher if it has none.
    static func killTree(_ id: VMProcess.Identity) {
        let below = VMProcess.descendants(id.pid)
        if below.isEmpty { _ = Glibc.kill(id.pid, SIGKILL) } else { for p in below.reversed() { Glibc.kill(p, SIGKILL) } }
    }

    func pause(_ name: String) async throws -> VMRecord { try await control(name, .pause, from: .running, to: .paused, desired: .paused, doing: "paused") }
    func resume(_ name: String) async throws -> VMRecord { try await control(name, .resume, from: .paused, to: .running, desired: .running, doing: "resumed") }

    private func control(_ name: String, _ request: ControlRequest, from: VMState, to: VMState, desired: DesiredState, doing event: String) async throws -> VMRecord {
        let vm = try existing(name)
        try idle(name)
        guard vm.observed == from.rawValue else {
            throw ManagerError.conflict("\(name) is \(vm.observed), not \(from.rawValue)")
        }
        try store.update(name) { $0.desired = desired.rawValue }
        // The VM is this operation's while the VMM answers (off the actor).
        busy[name] = event
        defer { busy[name] = nil }
        switch try await ControlChannel.ask(request, socket: directory(vm).controlSocket) {
        case .ok: break
        case .error(let text): throw ManagerError.conflict("\(name): \(text)")
        }
        store.event(name, event)
        // Unless the VM ended (or was restarted) while its VMM answered.
        return try store.update(name) { v in
            if v.generation == vm.generation, VMState(rawValue: v.observed)?.isActive == true { v.observed = to.rawValue }
        } ?? vm
    }

    // MARK: delete

    func delete(_ name: String, force: Bool) async throws {
        let vm = try existing(name)
        try idle(name)
        let active = VMState(rawValue: vm.observed)?.isActive == true
        guard !active || force else {
            throw ManagerError.conflict("\(name) is \(vm.observed): stop it first, or delete with force=true to kill it")
        }
        let intent = try store.begin("delete", vm: vm.id)
        busy[name] = "deleted"
        defer { busy[name] = nil }
        try store.update(name) { $0.desired = DesiredState.stopped.rawValue; $0.restartAt = nil }
        if active, let id = identity(vm) {
            Self.killTree(id)
            // The launcher undoes its host side and exits; wait for that (bounded).
            for _ in 0..<100 where VMProcess.isAlive(id) {
                children.subtract(VMProcess.reap(children))
                try? await Task.sleep(nanoseconds: 20_000_000)
            }
            if VMProcess.isAlive(id) { _ = Glibc.kill(id.pid, SIGKILL) }
            children.subtract(VMProcess.reap(children)) // a zombie still holds its cgroup
            meterEnded(vm)
        }
        try finishDelete(vm)
        try store.end(intent)
        store.event(name, "deleted")
    }

    /// Removes the VM's cgroup once its last process is gone. A launcher
    /// that exited but is not reaped yet still holds it: `waiting`, reap and
    /// retry for up to half a second (a delete, which has the VM to itself);
    /// otherwise one try, and the reconcile loop sweeps up what is left.
    func releaseCgroup(_ vm: VMRecord, waiting: Bool) {
        let name = Self.cgroupName(vm)
        for _ in 0..<(waiting ? 50 : 1) {
            children.subtract(VMProcess.reap(children))
            cgroups.remove(name)
            guard cgroups.exists(name) else { return }
            if waiting { usleep(10_000) }
        }
    }

    /// The files, the cgroup, then the rows (also run by `Recovery`).
    func finishDelete(_ vm: VMRecord) throws {
        releaseCgroup(vm, waiting: true)
        try? FileManager.default.removeItem(atPath: directory(vm).path)
        try store.db.write { db in
            _ = try VMRecord.deleteOne(db, key: vm.id)
            try db.execute(sql: "DELETE FROM meterSample WHERE vm = ?", arguments: [vm.name])
            try db.execute(sql: "DELETE FROM snapshot WHERE vm = ?", arguments: [vm.name])
            try db.execute(sql: "DELETE FROM backupPolicy WHERE vm = ?", arguments: [vm.name])
            try db.execute(sql: "DELETE FROM backupJob WHERE vm = ? AND state != 'running'", arguments: [vm.name])
        }
    }

    // MARK: helpers

    func existing(_ name: String) throws -> VMRecord {
        if let p = Names.problem(name) { throw ManagerError.invalid(p) }
        guard let vm = try store.vm(named: name) else { throw ManagerError.notFound("no VM named \(name) (see GET /v1/vms)") }
        return vm
    }

    func idle(_ name: String) throws {
        if let what = busy[name] { throw ManagerError.conflict("\(name) is being \(what); try again when that is done") }
    }

    func identity(_ vm: VMRecord) -> VMProcess.Identity? {
        guard let pid = vm.pid, let start = vm.pidStart else { return nil }
        return VMProcess.Identity(pid: pid_t(pid), start: start)
    }

    func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
            throw ManagerError.internal("\(path): \(String(cString: strerror(errno)))")
        }
    }

    static func newID() -> String {
        String(UInt64.random(in: 0...UInt64.max), radix: 16).leftPadded(16)
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

enum JSON {
    static func encode<T: Encodable>(_ v: T) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = .sortedKeys
        return String(decoding: try e.encode(v), as: UTF8.self)
    }
    static func decode<T: Decodable>(_ t: T.Type, _ s: String) throws -> T {
        try JSONDecoder().decode(t, from: Data(s.utf8))
    }
}

/// What this host has, for admission.
struct HostCapacity: Sendable {
    let cpus: Int
    let memoryMiB: Int64

    static func read() -> HostCapacity {
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var memory: Int64 = 0
        if let m = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
            for line in m.split(separator: "\n") where line.hasPrefix("MemTotal:") {
                memory = (Int64(line.split(separator: " ")[1]) ?? 0) / 1024
            }
        }
        return HostCapacity(cpus: max(cpus, 1), memoryMiB: memory)
    }
}

extension Manager {
    func list() throws -> [VMRecord] { try store.vms() }

    struct HostSummary: Sendable {
        var cpus: Int, memoryMiB: Int64, reservedCpus: Double, reservedMemoryMiB: Int64, cgroup: String, vms: Int
    }

    func hostSummary() throws -> HostSummary {
        let r = try reservations(excluding: nil)
        let count = try store.db.read { try VMRecord.fetchCount($0) }
        return HostSummary(cpus: host.cpus, memoryMiB: host.memoryMiB, reservedCpus: r.cpu, reservedMemoryMiB: r.memoryMiB,
                           cgroup: cgroups.backend.rawValue, vms: count)
    }
}

