import Foundation
import Glibc
import XCTest

/// A real skiffd (the debug build beside the tests) on a state directory
/// and socket of its own, running real VMs with the real `skiff`, spoken
/// to with curl over its Unix socket: the API as any client sees it.
final class ManagerHarness: @unchecked Sendable {
    let root: String
    var state: String { root + "/state" }
    var socket: String { root + "/skiffd.sock" }
    private(set) var daemon: Session?
    /// Logs of every skiffd this harness ran, oldest first.
    private(set) var logs: [String] = []

    static var skiffd: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("skiffd").path
    }

    init(_ name: String) throws {
        // Short: a VM's control socket path under it must fit sun_path (108 bytes).
        root = "/tmp/skd-\(name.prefix(12))-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    /// Starts skiffd and waits until it answers; returns its log line on recovery.
    @discardableResult
    func start(prefix: [String] = [], extra: [String] = []) throws -> String {
        let argv = prefix + [Self.skiffd, "--state-dir", state, "--socket", socket, "--skiff", Harness.skiff] + extra
        let s = try Session(argv[0], Array(argv.dropFirst()))
        daemon = s
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if s.stderr.contains("listening on socket") || s.stdout.contains("listening on socket") { break }
            if !s.isRunning { break }
            usleep(20_000)
        }
        guard s.isRunning else { throw XCTSkip("skiffd did not start: \(s.stdout) \(s.stderr)") }
        return (s.stdout + s.stderr).split(separator: "\n").first { $0.contains("adopted") }.map(String.init) ?? ""
    }

    /// SIGKILL, as a crash would: the VMs are not its children and go on.
    func crash() {
        guard let d = daemon else { return }
        kill(d.pid, SIGKILL)
        let r = d.wait(timeout: 10)
        logs.append(r.stdout + r.stderr)
        daemon = nil
    }

    func stop() {
        guard let d = daemon else { return }
        kill(d.pid, SIGTERM)
        let r = d.wait(timeout: 20)
        logs.append(r.stdout + r.stderr)
        daemon = nil
    }

    struct Reply {
        let status: Int
        let body: String
        let contentType: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) }
        var object: [String: Any] { json as? [String: Any] ?? [:] }
        var detail: String { object["detail"] as? String ?? body }
    }

    /// One request; `body` is sent as is (so it may be anything).
    func api(_ method: String, _ path: String, _ body: String? = nil, contentType: String = "application/json",
             headers: [String] = []) throws -> Reply {
        var args = ["-s", "-S", "--max-time", "60", "-o", "-", "-w", "\n%{http_code} %{content_type}", "--unix-socket", socket, "-X", method]
        for h in headers { args += ["-H", h] }
        var bodyFile: String?
        defer { if let f = bodyFile { unlink(f) } }
        if let body {
            // From a file, not stdin: curls started at once would inherit
            // each other's stdin pipes (Session's pipes are not close-on-exec)
            // and wait for an end of file that does not come.
            let file = root + "/body-\(UUID().uuidString)"
            FileManager.default.createFile(atPath: file, contents: Data(body.utf8))
            bodyFile = file
            args += ["-H", "content-type: \(contentType)", "--data-binary", "@" + file]
        }
        return parse(try Harness.run("/usr/bin/curl", args + ["http://skiffd/v1" + path], timeout: 120))
    }

    private func parse(_ r: Harness.Result) -> Reply {
        let out = r.stdout
        guard let nl = out.lastIndex(of: "\n") else { return Reply(status: 0, body: out + r.stderr, contentType: "") }
        let tail = out[out.index(after: nl)...].split(separator: " ", maxSplits: 1)
        return Reply(status: Int(tail.first ?? "") ?? 0, body: String(out[..<nl]), contentType: tail.count > 1 ? String(tail[1]) : "")
    }

    func create(_ fields: [String: Any]) throws -> Reply {
        let data = try JSONSerialization.data(withJSONObject: fields)
        return try api("POST", "/vms", String(decoding: data, as: UTF8.self))
    }

    func vm(_ name: String) throws -> [String: Any] { try api("GET", "/vms/\(name)").object }

    func vms() throws -> [[String: Any]] { try api("GET", "/vms").object["items"] as? [[String: Any]] ?? [] }

    /// Waits until the VM's observed state is `state`.
    @discardableResult
    func waitFor(_ name: String, _ state: String, timeout: Double = 30) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try vm(name)
            if last["observed"] as? String == state { return last }
            usleep(50_000)
        }
        XCTFail("\(name) is \(last["observed"] ?? "?"), not \(state), after \(timeout) s: \(last)")
        return last
    }

    /// Removes every VM (killed) and the state; the host is left as found.
    func tearDown() {
        if let d = daemon, ProcessInfo.processInfo.environment["SKIFFD_TEST_KEEP"] != nil { print("skiffd log: \(d.stdout)\(d.stderr)") }
        if daemon == nil { _ = try? start() }
        for vm in (try? vms()) ?? [] { _ = try? api("DELETE", "/vms/\(vm["name"] as? String ?? "")?force=true") }
        stop()
        for (id, pid) in ManagerHarness.launchers(under: state + "/vms/") { _ = id; kill(pid, SIGKILL) }
        if ProcessInfo.processInfo.environment["SKIFFD_TEST_KEEP"] == nil { try? FileManager.default.removeItem(atPath: root) }
    }

    /// `skiff run|restore` launchers whose control socket is under `root`, by VM id.
    static func launchers(under root: String) -> [String: pid_t] {
        var found: [String: pid_t] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard args.count > 2, args[1] == "run" || args[1] == "restore",
                  let i = args.firstIndex(of: "--control-socket"), i + 1 < args.count, args[i + 1].hasPrefix(root) else { continue }
            let id = String(args[i + 1].dropFirst(root.count).prefix { $0 != "/" })
            // The launcher is the first (lowest pid): keeper and VMM share its command line.
            if found[id].map({ $0 > pid }) ?? true { found[id] = pid }
        }
        return found
    }

    /// Each VM's directory, by id.
    func directories() -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: state + "/vms")) ?? [])
    }

    /// skiffd's cgroups (v1's cpu hierarchy or v2's), by name.
    static func cgroups() -> Set<String> {
        for dir in ["/sys/fs/cgroup/cpu/skiff", "/sys/fs/cgroup/skiff", "/sys/fs/cgroup/unified/skiff"] {
            if let e = try? FileManager.default.contentsOfDirectory(atPath: dir) {
                return Set(e.filter { $0.hasPrefix("vm-") && FileManager.default.fileExists(atPath: dir + "/" + $0 + "/cgroup.procs") })
            }
        }
        return []
    }
}
