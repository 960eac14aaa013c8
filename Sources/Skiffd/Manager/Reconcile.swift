import Foundation
import Glibc
import GRDB
import SkiffControl

extension Manager {
    /// One pass of the loop that brings observed state to desired state:
    /// notices VMs that ended (and how, from their exit files), promotes
    /// starting VMs whose control socket answers, kills those past their
    /// stop timeout, and restarts what the restart policy says should run.
    /// Nothing in it waits on a VM: the starting VMs are asked all at once,
    /// off the actor, so the API answers while they are. Returns whether
    /// a VM is still starting (the loop then comes back sooner).
    @discardableResult
    func reconcile() async throws -> Bool {
        children.subtract(VMProcess.reap(children))
        let now = Date()
        let vms = try store.vms()
        reconcileCount += 1
        if reconcileCount % 25 == 0 { removeStrayCgroups(vms) }
        if reconcileCount % 3000 == 0 { try store.pruneEvents(keeping: 100_000) } // every 3000 passes: 10 minutes at the idle pace
        var starting: [(name: String, generation: Int64, socket: String)] = []
        for vm in vms {
            let state = VMState(rawValue: vm.observed) ?? .exited
            if state.isActive {
                guard let id = identity(vm) else {
                    // Starting, but its pid was never written: skiffd died between
                    // the row and the spawn's answer (`Recovery` looks for the process).
                    continue
                }
                if !VMProcess.isAlive(id) {
                    try ended(vm)
                    continue
                }
                if state == .starting { starting.append((vm.name, vm.generation, directory(vm).controlSocket)) }
                if state == .stopping, let deadline = stopDeadlines[vm.name], deadline < now {
                    Self.killTree(id)
                    stopDeadlines[vm.name] = nil
                    store.event(vm.name, "killed", "did not stop within its timeout")
                }
                if Console.size(directory(vm).console) > Console.maxBytes { try? Console.rotate(directory(vm).console) }
            } else if let at = vm.restartAt, at <= now.timeIntervalSince1970, vm.desired == DesiredState.running.rawValue, busy[vm.name] == nil {
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
                    guard var v = try VMRecord.filter(Column("name") == vm.name).fetchOne(db),
                          v.observed == VMState.starting.rawValue, v.generation == vm.generation else { continue }
                    v.observed = VMState.running.rawValue
                    try v.update(db)
                    try Store.eventRecord(vm.name, "running", nil).insert(db)
                }
            }
        }
        return answered.contains(false)
    }

    /// cgroups of VMs that no longer run (a removal that found a process
    /// not yet reaped, or a VM deleted while skiffd was down).
    func removeStrayCgroups(_ vms: [VMRecord]) {
        let live = Set(vms.filter { VMState(rawValue: $0.observed)?.isActive == true }.map { Self.cgroupName($0) })
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
