import Foundation
import Glibc

/// Per-VM resource control and accounting on the host's cgroups: v2 where
/// its controllers are (cpu.weight, cpu.max, memory.max, memory.min), else
/// v1 (hybrid hosts such as this one, whose controllers are all on v1:
/// cpu.shares, cfs quota, memory.limit_in_bytes, the soft limit). Each VM
/// gets `skiff/<name>`; `skiff run --cgroup NAME` joins it before the VM
/// starts, so every process of the VM is counted.
struct Cgroups: Sendable {
    enum Backend: String, Sendable { case v2 = "cgroup2", v1 = "cgroup1", none }
    let backend: Backend
    let v2Root: String

    static let cfsPeriodMicroseconds = 100_000

    static func detect() -> Cgroups {
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            if let c = try? String(contentsOfFile: root + "/cgroup.controllers", encoding: .utf8),
               c.split(separator: " ").contains(where: { $0.hasPrefix("cpu") }),
               c.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("memory") {
                return Cgroups(backend: .v2, v2Root: root)
            }
        }
        if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cpu/cpu.shares") { return Cgroups(backend: .v1, v2Root: "") }
        return Cgroups(backend: .none, v2Root: "")
    }

    private func v1(_ controller: String, _ name: String) -> String { "/sys/fs/cgroup/\(controller)/skiff/\(name)" }
    private func v2(_ name: String) -> String { "\(v2Root)/skiff/\(name)" }

    /// Makes the VM's cgroup(s) and applies its settings.
    func prepare(_ name: String, _ r: VMSpec.Resources) throws {
        switch backend {
        case .none: return
        case .v2:
            try make(v2Root + "/skiff")
            // Only when a controller is missing: a write walks every cgroup below.
            for parent in [v2Root, v2Root + "/skiff"] {
                let on = ((try? String(contentsOfFile: parent + "/cgroup.subtree_control", encoding: .utf8)) ?? "")
                    .split(whereSeparator: { $0 == " " || $0 == "\n" })
                if !["cpu", "memory", "io"].allSatisfy({ on.contains(Substring($0)) }) {
                    try? write(parent + "/cgroup.subtree_control", "+cpu +memory +io")
                }
            }
            let d = v2(name)
            try make(d)
            try write(d + "/cpu.weight", String(r.cpuShares ?? 100))
            try write(d + "/cpu.max", r.cpuLimit.map { "\(Int(($0 * Double(Self.cfsPeriodMicroseconds)).rounded())) \(Self.cfsPeriodMicroseconds)" } ?? "max \(Self.cfsPeriodMicroseconds)")
            try write(d + "/memory.max", r.memoryLimitMiB.map { String($0 << 20) } ?? "max")
            try write(d + "/memory.min", String((r.memoryReservationMiB ?? 0) << 20))
        case .v1:
            for c in ["cpu", "cpuacct", "memory", "blkio"] where FileManager.default.fileExists(atPath: "/sys/fs/cgroup/\(c)") {
                try make("/sys/fs/cgroup/\(c)/skiff")
                try make(v1(c, name))
            }
            let cpu = v1("cpu", name)
            // v1's default is 1024 for a weight of 100.
            try write(cpu + "/cpu.shares", String(max(2, (r.cpuShares ?? 100) * 1024 / 100)))
            try write(cpu + "/cpu.cfs_period_us", String(Self.cfsPeriodMicroseconds))
            try write(cpu + "/cpu.cfs_quota_us", r.cpuLimit.map { String(Int(($0 * Double(Self.cfsPeriodMicroseconds)).rounded())) } ?? "-1")
            let memory = v1("memory", name)
            if FileManager.default.fileExists(atPath: memory) {
                try write(memory + "/memory.limit_in_bytes", r.memoryLimitMiB.map { String($0 << 20) } ?? "-1")
                try? write(memory + "/memory.soft_limit_in_bytes", r.memoryReservationMiB.map { String($0 << 20) } ?? "-1")
            }
        }
    }

    /// Removes the VM's cgroup(s); fails quietly while a process is still in one.
    func remove(_ name: String) {
        switch backend {
        case .none: return
        case .v2: rmdir(v2(name))
        case .v1: for c in ["cpu", "cpuacct", "memory", "blkio"] { rmdir(v1(c, name)) }
        }
    }

    /// Whether any of the VM's cgroups is still there.
    func exists(_ name: String) -> Bool {
        switch backend {
        case .none: return false
        case .v2: return FileManager.default.fileExists(atPath: v2(name))
        case .v1: return ["cpu", "cpuacct", "memory", "blkio"].contains { FileManager.default.fileExists(atPath: v1($0, name)) }
        }
    }

    /// The cgroups skiffd made under `skiff/` (for finding leftovers).
    func names() -> Set<String> {
        let dir: String
        switch backend {
        case .none: return []
        case .v2: dir = v2Root + "/skiff"
        case .v1: dir = "/sys/fs/cgroup/cpu/skiff"
        }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return Set(entries.filter { n in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: dir + "/" + n, isDirectory: &isDir) && isDir.boolValue
        })
    }

    /// CPU time used by every process of the VM so far, in seconds.
    func cpuSeconds(_ name: String) -> Double? {
        switch backend {
        case .none: return nil
        case .v2:
            guard let s = try? String(contentsOfFile: v2(name) + "/cpu.stat", encoding: .utf8) else { return nil }
            for line in s.split(separator: "\n") where line.hasPrefix("usage_usec ") {
                return Double(line.dropFirst(11)).map { $0 / 1e6 }
            }
            return nil
        case .v1:
            guard let s = try? String(contentsOfFile: v1("cpuacct", name) + "/cpuacct.usage", encoding: .utf8) else { return nil }
            return Double(s.trimmingCharacters(in: .whitespacesAndNewlines)).map { $0 / 1e9 }
        }
    }

    /// The processes in the VM's cgroup.
    func processes(_ name: String) -> [pid_t] {
        let file: String
        switch backend {
        case .none: return []
        case .v2: file = v2(name) + "/cgroup.procs"
        case .v1: file = v1("cpu", name) + "/cgroup.procs"
        }
        guard let s = try? String(contentsOfFile: file, encoding: .utf8) else { return [] }
        return s.split(separator: "\n").compactMap { pid_t($0) }
    }

    private func make(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw ManagerError.internal("cgroup \(path): \(String(cString: strerror(errno)))")
        }
    }

    private func write(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ManagerError.internal("cgroup \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw ManagerError.internal("cgroup \(path) = \(value): \(String(cString: strerror(errno)))")
        }
    }
}
