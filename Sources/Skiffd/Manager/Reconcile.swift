import Foundation
import Glibc
import GRDB
import SkiffControl

extension Manager {
    /// What one look at the host found. Taken off the actor: with a
    /// hundred VMs, a pass's reads (every row, a /proc read and a stat per
    /// VM) took 4 ms, and up to 60 ms on a host busy starting VMs, while
    /// every API request waited (bench/manager's p99, traced).
    struct Look: Sendable {
        var vms: [VMRecord] = []
        /// Active VMs whose process, as their row named it, is not alive.
        var gone: Set<String> = []
        /// VMs whose console log is over its bound.
        var longConsoles: Set<String> = []
        var reaped: Set<pid_t> = []
    }

    nonisolated static func look(store: Store, root: String, children: Set<pid_t>) throws -> Look {
        var look = Look()
        look.reaped = VMProcess.reap(children)
        look.vms = try store.vms()
        for vm in look.vms where VMState(rawValue: vm.observed)?.isActive ?? true {
            guard let pid = vm.pid, let start = vm.pidStart else { continue }
            if !VMProcess.isAlive(.init(pid: pid_t(pid), start: start)) { look.gone.insert(vm.name); continue }
            if Console.size(VMDirectory(path: root + vm.id).console) > Console.maxBytes { look.longConsoles.insert(vm.name) }
        }
        return look
    }

    /// One pass of the loop that brings observed state to desired state:
    /// notices VMs that ended (and how, from their exit files), promotes
    /// starting VMs whose control socket answers, kills those past their
    /// stop timeout, and restarts what the restart policy says should run.
    /// Nothing in it waits on a VM: the host is looked at, and the starting
    /// VMs are asked all at once, off the actor, so the API answers while
    /// they are. What it acts on it reads again first (the rows may have
    /// changed meanwhile). Returns whether a VM is still starting (the loop
    /// then comes back sooner).
    @discardableResult
    func reconcile() async throws -> Bool {
        let store = self.store, root = stateDirectory + "/vms/", kids = children
        let look = try await Blocking.run { try Self.look(store: store, root: root, children: kids) }
        children.subtract(look.reaped)
        let now = Date()
        reconcileCount += 1
        if reconcileCount % 25 == 0 { try removeStrayCgroups() }
        if reconcileCount % 3000 == 0 { try store.pruneEvents(keeping: 100_000) } // every 3000 passes: 10 minutes at the idle pace
        var starting: [(name: String, generation: Int64, socket: String)] = []
        for seen in look.vms {
            let state = VMState(rawValue: seen.observed) ?? .exited
            if state.isActive {
                guard let id = identity(seen) else {
                    // Starting, but its pid was never written: skiffd died between
                    // the row and the spawn's answer (`Recovery` looks for the process).
                    continue
                }
                if look.gone.contains(seen.name) {
                    // Still the same process, and still gone.
                    if let vm = try store.vm(named: seen.name), VMState(rawValue: vm.observed)?.isActive == true,
                       identity(vm) == id, !VMProcess.isAlive(id) { try ended(vm) }
                    continue
                }
                if state == .starting { starting.append((seen.name, seen.generation, directory(seen).controlSocket)) }
                if state == .stopping, let deadline = stopDeadlines[seen.name], deadline < now, VMProcess.isAlive(id) {
                    Self.killTree(id)
                    stopDeadlines[seen.name] = nil
                    store.event(seen.name, "killed", "did not stop within its timeout")
                }
                if look.longConsoles.contains(seen.name) { try? Console.rotate(directory(seen).console) }
            } else if let at = seen.restartAt, at <= now.timeIntervalSince1970, seen.desired == DesiredState.running.rawValue, busy[seen.name] == nil {
                guard let vm = try store.vm(named: seen.name), VMState(rawValue: vm.observed)?.isActive == false,
                      vm.restartAt == at, vm.desired == DesiredState.running.rawValue else { continue }
                try store.update(vm.name) { $0.restarts += 1 }
                if let again = try store.vm(named: vm.name) {
                    do { _ = try launch(again) } catch { try scheduleRestart(again, failed: true) }
                }
            }
        }
        try reconcileBackups()
        guard !starting.isEmpty else { return false }
        let sockets = starting.map(\.socket)
        let answered = await Blocking.run { ControlChannel.answering(sockets, timeoutMs: 200) }
        // The actor was free meanwhile: promote only the same start of the
        // same VM; all in one transaction, not one per VM.
        let promote = zip(starting, answered).filter { $0.1 }.map { $0.0 }
        if !promote.isEmpty {
            try await store.db.write { db in
                for vm in promote {
                    try db.execute(sql: "UPDATE vm SET observed = ? WHERE name = ? AND observed = ? AND generation = ?",
                                   arguments: [VMState.running.rawValue, vm.name, VMState.starting.rawValue, vm.generation])
                    if db.changesCount > 0 { try Store.eventRecord(vm.name, "running", nil).insert(db) }
                }
            }
        }
        return answered.contains(false)
    }

    /// cgroups of VMs that no longer run (a removal that found a process
    /// not yet reaped, or a VM deleted while skiffd was down).
    func removeStrayCgroups() throws {
        let live = Set(try store.vms().filter { VMState(rawValue: $0.observed)?.isActive == true }.map { Self.cgroupName($0) })
        for name in cgroups.names() where name.hasPrefix("vm-") && !live.contains(name) { cgroups.remove(name) }
    }

    /// The VM's process is gone: record how it ended, then apply its restart policy.
    func ended(_ vm: VMRecord) throws {
        let record = VMProcess.exitRecord(directory(vm).exitFile)
        let asked = vm.desired == DesiredState.stopped.rawValue
        let status = record.status
        let reason = record.reason ?? (status == nil ? "the VM's process was killed (no exit status recorded)" : "exit status \(status!)")
        stopDeadlines[vm.name] = nil
        meterEnded(vm) // before the cgroup, which holds the final CPU count, goes
        releaseCgroup(vm, waiting: false)
        unlink(directory(vm).controlSocket)
        guard let updated = try store.update(vm.name, { v in
            v.observed = (asked ? VMState.stopped : VMState.exited).rawValue
            v.exitStatus = status.map { Int64($0) }
            v.stopReason = reason
            v.stoppedAt = Int64(Date().timeIntervalSince1970)
            v.pid = nil; v.pidStart = nil
        }) else { return }
        store.event(vm.name, asked ? "stopped" : "exited", "\(reason) (status \(status.map(String.init) ?? "unknown"))")
        if !asked { try scheduleRestart(updated, failed: status != 0) }
    }

    /// `always` restarts whatever the status, `on-failure` only after a
    /// failure, `no` never (the VM is then desired stopped, as it is).
    /// Backoff doubles from 0.5 s up to 30 s; it starts over once a VM has
    /// run for 10 s.
    func scheduleRestart(_ vm: VMRecord, failed: Bool) throws {
        let policy = RestartPolicy(rawValue: vm.restartPolicy) ?? .no
        let restart = policy == .always || (policy == .onFailure && failed)
        guard restart, vm.desired == DesiredState.running.rawValue else {
            try store.update(vm.name) { $0.desired = DesiredState.stopped.rawValue; $0.restartAt = nil }
            return
        }
        let ranFor = Double((vm.stoppedAt ?? 0) - (vm.startedAt ?? 0))
        let consecutive = ranFor >= 10 ? 0 : vm.restarts
        let delay = min(30, 0.5 * pow(2, Double(min(consecutive, 6))))
        try store.update(vm.name) {
            $0.restartAt = Date().timeIntervalSince1970 + delay
            if ranFor >= 10 { $0.restarts = 0 }
        }
    }
}
