import CSkiffd
import Foundation
import Glibc

/// A VM's process tree as skiffd sees it: the launcher (`skiff run`, which
/// skiffd starts in a session of its own, so that it outlives skiffd) ->
/// the jail's keeper -> the VMM. skiffd finds them again after a restart
/// by pid and start time, and learns how a VM ended from its exit file
/// (written by the launcher), not from wait(), since it may not be the
/// launcher's parent by then.
enum VMProcess {
    struct Identity: Equatable, Sendable {
        let pid: pid_t
        /// Clock ticks since boot: /proc/PID/stat field 22.
        let start: Int64
    }

    /// Starts `EXECUTABLE ARGS` (`skiff run ...`, or a backup job) with its
    /// console (stdout and stderr) appended to `console`, stdin from
    /// `input` (the FIFO `attach` writes), in a new session, with no
    /// descriptor of skiffd's.
    static func spawn(_ executable: String, arguments: [String], input: String, console: String) throws -> Identity {
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let envp = Self.environment.map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        let r = cskiffd_spawn(executable, argv, envp, input, console, &pid)
        guard r == 0 else { throw ManagerError.internal("starting \(executable): \(String(cString: strerror(r)))") }
        // The start time is read at once: the child exists (a zombie at worst) until reaped.
        return Identity(pid: pid, start: startTime(pid) ?? 0)
    }

    /// What a VM's processes get of skiffd's environment (read once).
    static let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"] + ["SKIFF_CACHE", "SKIFF_KVM_DEVICE", "HOME"].compactMap { k in
        ProcessInfo.processInfo.environment[k].map { "\(k)=\($0)" }
    }

    /// A process's state letter (R, S, Z, ...) and start time, from one
    /// read of /proc/PID/stat (the reconcile loop asks for every VM five
    /// times a second); nil if it does not exist.
    static func status(_ pid: pid_t) -> (state: UInt8, start: Int64)? {
        guard let stat = procStat(pid), let close = stat.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        // Fields after the command (which may hold spaces and parentheses): state is field 3, start time field 22.
        let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19, let state = fields[0].first, let start = Int64(String(decoding: fields[19], as: UTF8.self)) else { return nil }
        return (state, start)
    }

    static func startTime(_ pid: pid_t) -> Int64? { status(pid)?.start }

    /// The identity still names a live process (not a zombie, not a reused pid).
    static func isAlive(_ id: Identity) -> Bool {
        guard let s = status(id.pid), s.state != UInt8(ascii: "Z"), s.state != UInt8(ascii: "X") else { return false }
        return s.start == id.start
    }

    /// /proc/PID/stat's bytes, read with one system call (Foundation's
    /// file reading was most of skiffd's time with 100 VMs, by perf).
    static func procStat(_ pid: pid_t) -> [UInt8]? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return n > 0 ? Array(buffer[..<n]) : nil
    }

    static func children(_ pid: pid_t) -> [pid_t] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8) else { return [] }
        return text.split(separator: " ").compactMap { pid_t($0) }
    }

    /// Every process of the VM below its launcher (keeper, VMM), deepest last.
    static func descendants(_ pid: pid_t) -> [pid_t] {
        var all: [pid_t] = []
        var frontier = [pid]
        while let p = frontier.popLast() {
            for c in children(p) { all.append(c); frontier.append(c) }
        }
        return all
    }

    /// How the VM ended, from its exit file: the launcher's status and the VMM's reason.
    static func exitRecord(_ path: String) -> (status: Int?, reason: String?) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return (nil, nil) }
        var status: Int?, reason: String?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("status ") { status = Int(line.dropFirst(7)) }
            if line.hasPrefix("reason ") { reason = String(line.dropFirst(7).prefix(1000)) }
        }
        return (status, reason)
    }

    /// Reaps those of `pids` (launchers skiffd started) that have exited;
    /// their status is read from the exit file instead, which outlives
    /// skiffd. Returns those reaped. (Only these: Foundation's Process
    /// waits for its own children.)
    static func reap(_ pids: Set<pid_t>) -> Set<pid_t> {
        var reaped: Set<pid_t> = []
        for pid in pids {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || (r < 0 && errno == ECHILD) { reaped.insert(pid) }
        }
        return reaped
    }
}
