import Foundation
import GRDB
import SkiffControl

/// Metering: what each VM uses, accumulated per minute and written to the
/// `usage` table. CPU is the VM's cgroup's own count (every thread of its
/// processes: vCPUs and devices); memory is the proportional set size of
/// its processes (smaps_rollup: pages it shares with other VMs, such as a
/// clone's snapshot pages, count once across all of them, and pages the
/// balloon gave back count not at all), integrated over time.
struct Meter: Sendable {
    struct Sample: Codable, Sendable {
        var cpuSeconds: Double
        var time: Date
        var io: ControlStats?
        /// The VM's start this sample belongs to (`VMRecord.generation`).
        var generation: Int64
        /// Resident bytes at this reading (for the last stretch of a VM that ends between readings).
        var pss: Int64 = 0
        var paused = false
    }
    /// The last CPU reading per VM (per start: a restarted VM's cgroup counts from zero).
    var last: [String: Sample] = [:]
    /// The minute being accumulated, per VM.
    var current: [String: UsageRecord] = [:]

    mutating func ended(_ vm: String) { last[vm] = nil }

    /// A VM just started: its new cgroup and VMM count from zero.
    mutating func started(_ vm: String, generation: Int64) {
        last[vm] = Sample(cpuSeconds: 0, time: Date(), io: ControlStats(), generation: generation)
    }

    static func minute(_ d: Date) -> Int64 { Int64(d.timeIntervalSince1970) / 60 * 60 }

    static func empty(_ vm: String, _ minute: Int64) -> UsageRecord {
        UsageRecord(vm: vm, minute: minute, vcpuSeconds: 0, memoryGiBSeconds: 0, diskReadBytes: 0, diskWriteBytes: 0, diskReadOps: 0,
                    diskWriteOps: 0, netRxBytes: 0, netTxBytes: 0, secondsRunning: 0, secondsPaused: 0, snapshotBytes: 0)
    }
}

extension Manager {
    /// What one VM's host side says now: read off the actor (a control
    /// socket round trip and a page-table walk per VM), so API requests are
    /// not held up behind a host of many VMs.
    struct Reading: Sendable { var cpu: Double; var io: ControlStats?; var pss: Int64 }

    nonisolated static func read(_ id: VMProcess.Identity, cgroups: Cgroups, cgroup: String, socket: String) -> Reading {
        let tree = [id.pid] + VMProcess.descendants(id.pid)
        let cpu = cgroups.cpuSeconds(cgroup) ?? cpuSeconds(of: tree)
        // The VMM's own device counters (what the guest moved); a paused
        // or busy VMM that does not answer in time is asked next tick.
        var io: ControlStats?
        if case .ok(let text)? = try? ControlChannel.request(.stats, socket: socket, timeoutMs: 200) { io = try? ControlStats.parse(text) }
        return Reading(cpu: cpu, io: io, pss: proportionalBytes(tree))
    }

    /// One sample of every VM's use since the last.
    func meterTick() async throws {
        // One at a time (the actor is re-entered while the readings are
        // taken): a second tick waits for the first, then reads afresh.
        while metering { try await Task.sleep(nanoseconds: 5_000_000) }
        metering = true
        defer { metering = false }
        let vms = try store.vms()
        let targets = vms.compactMap { vm -> (String, VMProcess.Identity, String, String)? in
            guard VMState(rawValue: vm.observed)?.isActive == true, let id = identity(vm) else { return nil }
            return (vm.name, id, Self.cgroupName(vm), directory(vm).controlSocket)
        }
        let cgroups = self.cgroups
        // On a thread of its own, not the cooperative pool's: a round of
        // control-socket trips and smaps_rollup walks over 100 VMs blocks for
        // tens of milliseconds, which took one of the pool's two threads
        // from the API (bench/manager's p99).
        let readings = await Blocking.run {
            Dictionary(targets.map { ($0.0, Manager.read($0.1, cgroups: cgroups, cgroup: $0.2, socket: $0.3)) }, uniquingKeysWith: { a, _ in a })
        }
        let now = Date()
        let minute = Meter.minute(now)
        var finished: [UsageRecord] = []
        // The rows again: a VM may have stopped, restarted or gone meanwhile.
        for vm in try store.vms() {
            let state = VMState(rawValue: vm.observed) ?? .exited
            var u = meter.current[vm.name] ?? Meter.empty(vm.name, minute)
            if u.minute != minute {
                finished.append(u)
                u = Meter.empty(vm.name, minute)
            }
            guard state.isActive, identity(vm) != nil, let reading = readings[vm.name],
                  targets.contains(where: { $0.0 == vm.name && $0.1 == identity(vm) }) else {
                meter.current[vm.name] = u
                continue
            }
            let cpu = reading.cpu, io = reading.io
            if let previous = meter.last[vm.name], previous.generation == vm.generation {
                let dt = now.timeIntervalSince(previous.time)
                u.vcpuSeconds += max(0, cpu - previous.cpuSeconds)
                if let io, let before = previous.io {
                    func delta(_ a: UInt64, _ b: UInt64) -> Int64 { a >= b ? Int64(clamping: a - b) : Int64(clamping: a) }
                    u.diskReadBytes += delta(io.diskReadBytes, before.diskReadBytes)
                    u.diskWriteBytes += delta(io.diskWriteBytes, before.diskWriteBytes)
                    u.diskReadOps += delta(io.diskReadOps, before.diskReadOps)
                    u.diskWriteOps += delta(io.diskWriteOps, before.diskWriteOps)
                    u.netRxBytes += delta(io.netRxBytes, before.netRxBytes)
                    u.netTxBytes += delta(io.netTxBytes, before.netTxBytes)
                }
                let pss = reading.pss
                u.memoryGiBSeconds += Double(pss) / Double(1 << 30) * dt
                if state == .paused { u.secondsPaused += dt } else { u.secondsRunning += dt }
            }
            meter.last[vm.name] = Meter.Sample(cpuSeconds: cpu, time: now, io: io ?? meter.last[vm.name]?.io, generation: vm.generation,
                                               pss: reading.pss, paused: state == .paused)
            u.snapshotBytes = try await store.db.read { try Int64.fetchOne($0, sql: "SELECT COALESCE(SUM(bytes), 0) FROM snapshot WHERE vm = ?", arguments: [vm.name]) } ?? 0
            meter.current[vm.name] = u
        }
        try flush(finished + Array(meter.current.values))
    }

    /// The VM's process is gone (its cgroup not yet removed): bills the
    /// stretch since the last reading, CPU from the cgroup's final count and
    /// memory at the last resident size. Device counters since the last
    /// reading died with the VMM.
    func meterEnded(_ vm: VMRecord) {
        defer { meter.ended(vm.name) }
        guard let previous = meter.last[vm.name], previous.generation == vm.generation else { return }
        let now = Date(), dt = now.timeIntervalSince(previous.time)
        var u = meter.current[vm.name] ?? Meter.empty(vm.name, Meter.minute(now))
        if u.minute != Meter.minute(now) {
            try? flush([u])
            u = Meter.empty(vm.name, Meter.minute(now))
        }
        if let cpu = cgroups.cpuSeconds(Self.cgroupName(vm)) { u.vcpuSeconds += max(0, cpu - previous.cpuSeconds) }
        u.memoryGiBSeconds += Double(previous.pss) / Double(1 << 30) * dt
        if previous.paused { u.secondsPaused += dt } else { u.secondsRunning += dt }
        meter.current[vm.name] = u
        try? flush([u])
    }

    /// Writes finished minutes and the one in progress (replaced as it
    /// grows), and the last reading of each VM, so that a restarted skiffd
    /// bills the time it was down from there.
    func flush(_ records: [UsageRecord]) throws {
        let samples = try meter.last.map { ($0.key, try JSON.encode($0.value)) }
        try store.db.write { db in
            for r in records where r.vcpuSeconds > 0 || r.secondsRunning > 0 || r.secondsPaused > 0 || r.snapshotBytes > 0 {
                try r.save(db)
            }
            for (vm, json) in samples {
                try db.execute(sql: "INSERT OR REPLACE INTO meterSample (vm, sample) VALUES (?, ?)", arguments: [vm, json])
            }
        }
    }

    /// The readings and the minute in progress a previous skiffd left.
    func loadMeter() throws {
        let rows = try store.db.read { try Row.fetchAll($0, sql: "SELECT vm, sample FROM meterSample") }
        for row in rows {
            let vm: String = row["vm"], json: String = row["sample"]
            if let s = try? JSON.decode(Meter.Sample.self, json) { meter.last[vm] = s }
        }
        let minute = Meter.minute(Date())
        for u in try store.db.read({ try UsageRecord.filter(sql: "minute = ?", arguments: [minute]).fetchAll($0) }) { meter.current[u.vm] = u }
    }

    /// Proportional set size of these processes, in bytes.
    static func proportionalBytes(_ pids: [pid_t]) -> Int64 {
        var total: Int64 = 0
        for pid in pids {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/smaps_rollup", encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where line.hasPrefix("Pss:") {
                total += (Int64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0) * 1024
            }
        }
        return total
    }

    /// utime + stime of these processes (no cgroup to ask), in seconds.
    static func cpuSeconds(of pids: [pid_t]) -> Double {
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        var ticks: Double = 0
        for pid in pids {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { continue }
            let f = stat[stat.index(after: close)...].split(separator: " ")
            guard f.count > 12 else { continue }
            ticks += (Double(f[11]) ?? 0) + (Double(f[12]) ?? 0)
        }
        return ticks / hz
    }

    /// Use per VM over [from, to), from the stored minutes.
    func usage(from: Int64?, to: Int64?) async throws -> [UsageRecord] {
        try await meterTick() // up to this moment
        let lo = from ?? 0, hi = to ?? Int64.max
        return try await store.db.read { db in
            try UsageRecord.fetchAll(db, sql: """
                SELECT vm, MIN(minute) AS minute, SUM(vcpuSeconds) AS vcpuSeconds, SUM(memoryGiBSeconds) AS memoryGiBSeconds,
                       SUM(diskReadBytes) AS diskReadBytes, SUM(diskWriteBytes) AS diskWriteBytes, SUM(diskReadOps) AS diskReadOps,
                       SUM(diskWriteOps) AS diskWriteOps, SUM(netRxBytes) AS netRxBytes, SUM(netTxBytes) AS netTxBytes,
                       SUM(secondsRunning) AS secondsRunning, SUM(secondsPaused) AS secondsPaused, MAX(snapshotBytes) AS snapshotBytes
                FROM usage WHERE minute >= ? AND minute < ? GROUP BY vm ORDER BY vm
                """, arguments: [lo / 60 * 60, hi])
        }
    }
}

extension Manager {
    /// The Prometheus exposition, with names in KubeVirt's style
    /// (`kubevirt_vmi_*` there, `skiff_vm_*` here).
    func prometheusText() async throws -> String {
        let totals = try await usage(from: nil, to: nil)
        let vms = Dictionary(try store.vms().map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ value: (UsageRecord) -> Double) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for u in totals { out += "\(name){name=\"\(u.vm)\"} \(value(u))\n" }
        }
        family("skiff_vm_vcpu_seconds_total", "counter", "CPU time used by the VM's processes.", { $0.vcpuSeconds })
        family("skiff_vm_memory_resident_gib_seconds_total", "counter", "Proportional resident memory integrated over time.", { $0.memoryGiBSeconds })
        family("skiff_vm_running_seconds_total", "counter", "Seconds the VM ran.", { $0.secondsRunning })
        family("skiff_vm_paused_seconds_total", "counter", "Seconds the VM was paused.", { $0.secondsPaused })
        family("skiff_vm_snapshot_bytes", "gauge", "Bytes of snapshots stored.", { Double($0.snapshotBytes) })
        out += "# HELP skiff_vm_info The VM's state.\n# TYPE skiff_vm_info gauge\n"
        for (name, vm) in vms.sorted(by: { $0.key < $1.key }) { out += "skiff_vm_info{name=\"\(name)\",state=\"\(vm.observed)\"} 1\n" }
        return out
    }
}
