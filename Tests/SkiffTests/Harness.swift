import Foundation
import XCTest

/// Runs the real `skiff` binary against real guests on /dev/kvm.
enum Harness {
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// $SKIFF_BIN (scripts/test sets it to the static release build), else
    /// the debug build next to this test bundle.
    static var skiff: String {
        if let b = ProcessInfo.processInfo.environment["SKIFF_BIN"] { return b }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("skiff").path
    }

    static let probeDirectory: String = {
        let out = root.appendingPathComponent(".build/probes").path
        let r = try! run("/bin/bash", [root.appendingPathComponent("probes/build.sh").path, out], timeout: 120)
        precondition(r.status == 0, "probes/build.sh failed: \(r.stderr)")
        return out
    }()

    static func probe(_ name: String) -> String { probeDirectory + "/\(name).elf" }

    /// Static Linux user programs for guests (probes/linux), built by
    /// probes/linux/build.sh into .build/linux-probes.
    static let linuxProbeDirectory: String = {
        let out = root.appendingPathComponent(".build/linux-probes").path
        let r = try! run("/bin/bash", [root.appendingPathComponent("probes/linux/build.sh").path, out], timeout: 120)
        precondition(r.status == 0, "probes/linux/build.sh failed: \(r.stderr)")
        return out
    }()

    static func linuxProbe(_ name: String) -> String { linuxProbeDirectory + "/\(name)" }

    struct Result {
        let status: Int32
        let signaled: Bool
        let stdout: String
        let stderr: String
        let seconds: Double
        var stderrLines: [Substring] { stderr.split(separator: "\n") }
    }

    static func run(_ executable: String, _ args: [String], timeout: Double = 60, environment: [String: String]? = nil) throws -> Result {
        let s = try Session(executable, args, environment: environment)
        return s.wait(timeout: timeout)
    }

    /// Every path under `root` with its size: what a refused build or import must leave as it was.
    static func treeSizes(_ root: String) -> [String: Int] {
        var out: [String: Int] = [:]
        let e = FileManager.default.enumerator(atPath: root)
        while let p = e?.nextObject() as? String {
            out[p] = (try? FileManager.default.attributesOfItem(atPath: root + "/" + p)[.size] as? Int) ?? -1
        }
        return out
    }

    static func skiff(_ args: [String], timeout: Double = 60, environment: [String: String]? = nil) throws -> Result {
        try run(skiff, args, timeout: timeout, environment: environment)
    }

    static func temporaryFile(_ name: String, _ bytes: [UInt8]) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-tests-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    /// The default kernel's folder; scripts/test builds it before the tests.
    static func kernelDirectory() throws -> String {
        let r = try skiff(["kernel", "build"], timeout: 3600)
        guard r.status == 0 else { throw XCTSkip("default kernel unavailable: \(r.stderr)") }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A running process with its output collected as it comes. Spawned and
/// reaped by hand (posix_spawn, waitpid): Foundation's Process left
/// children unreaped here when two ran at once.
final class Session: @unchecked Sendable {
    let pid: pid_t
    let arguments: [String]
    private let lock = NSLock()
    private var out = Data(), err = Data()
    private var openStreams = 2
    private var rawStatus: Int32?
    private var inputFD: Int32
    private let started = Date()

    /// Writing to a guest that has just stopped must fail, not kill the tests.
    static let ignorePipeSignal: Void = { _ = Glibc.signal(SIGPIPE, SIG_IGN) }()

    init(_ executable: String, _ args: [String], environment: [String: String]? = nil) throws {
        Self.ignorePipeSignal
        arguments = [executable] + args
        var stdin: [Int32] = [0, 0], stdout: [Int32] = [0, 0], stderr: [Int32] = [0, 0]
        guard pipe(&stdin) == 0, pipe(&stdout) == 0, pipe(&stderr) == 0 else { throw POSIXError(.EMFILE) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin[0], 0)
        posix_spawn_file_actions_adddup2(&actions, stdout[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderr[1], 2)
        for fd in stdin + stdout + stderr { posix_spawn_file_actions_addclose(&actions, fd) }
        let env = ProcessInfo.processInfo.environment.merging(environment ?? [:]) { $1 }.map { "\($0)=\($1)" }
        var argv = arguments.map { strdup($0) } + [nil]
        var envp = env.map { strdup($0) } + [nil]
        defer { for p in argv + envp { free(p) } }
        var child: pid_t = 0
        let r = posix_spawn(&child, executable, &actions, nil, &argv, &envp)
        close(stdin[0]); close(stdout[1]); close(stderr[1])
        guard r == 0 else {
            close(stdin[1]); close(stdout[0]); close(stderr[0])
            throw POSIXError(POSIXErrorCode(rawValue: r) ?? .ENOENT)
        }
        pid = child
        inputFD = stdin[1]
        collect(stdout[0], isError: false)
        collect(stderr[0], isError: true)
    }

    deinit { closeInput() }

    /// Ends the child's standard input (end-of-file).
    func closeInput() {
        lock.withLock {
            if inputFD >= 0 { close(inputFD); inputFD = -1 }
        }
    }

    private func collect(_ fd: Int32, isError: Bool) {
        Thread.detachNewThread { [self] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                let d = Data(buf[0..<n])
                lock.withLock { if isError { err.append(d) } else { out.append(d) } }
            }
            close(fd)
            lock.withLock { openStreams -= 1 }
        }
    }

    var stdout: String { lock.withLock { String(decoding: out, as: UTF8.self) } }
    var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }

    var isRunning: Bool {
        lock.withLock {
            if rawStatus == nil {
                var st: Int32 = 0
                if waitpid(pid, &st, WNOHANG) == pid { rawStatus = st }
            }
            return rawStatus == nil
        }
    }

    func send(_ text: String) { _ = Array(text.utf8).withUnsafeBytes { write(inputFD, $0.baseAddress, $0.count) } }

    /// Waits until stdout contains `text`; false on timeout or exit.
    @discardableResult
    func waitFor(_ text: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if stdout.contains(text) { return true }
            if !isRunning { usleep(50_000); return stdout.contains(text) }
            usleep(20_000)
        }
        return false
    }

    /// CPU seconds (user + system, guest time included) used so far by
    /// the process and its descendants (a jailed VMM is a grandchild).
    func cpuSeconds() -> Double {
        var ticks = 0.0
        for p in [pid] + Self.descendants(of: pid) {
            guard let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            ticks += (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0) // utime, stime
        }
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Every process below `pid`, children first.
    static func descendants(of pid: pid_t) -> [pid_t] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let children = tasks.flatMap { t in
            ((try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/children", encoding: .utf8)) ?? "")
                .split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return children + children.flatMap { descendants(of: $0) }
    }

    /// The process running the VM: the deepest descendant (launcher ->
    /// keeper -> VMM when jailed), or this one. Waits up to 5 s for it.
    func vmmPID() -> pid_t {
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            if let last = Self.descendants(of: pid).last, Self.descendants(of: pid).count >= 2 { return last }
            usleep(10_000)
        }
        return Self.descendants(of: pid).last ?? pid
    }

    /// A jailed VMM dies after its launcher (by the parent-death signal):
    /// waiting for a killed session waits for these too.
    private var killedDescendants: [pid_t] = []

    func signal(_ s: Int32) {
        guard isRunning else { return }
        if s == SIGKILL { lock.withLock { killedDescendants += Self.descendants(of: pid) } }
        kill(pid, s)
    }

    func wait(timeout: Double) -> Harness.Result {
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning && Date() < deadline { usleep(5_000) }
        if isRunning {
            kill(pid, SIGINT); usleep(500_000)
            if isRunning { kill(pid, SIGKILL) }
            XCTFail("\(arguments) did not finish in \(timeout) s")
        }
        var st: Int32 = 0
        lock.withLock {
            if rawStatus == nil, waitpid(pid, &st, 0) == pid { rawStatus = st }
        }
        let gone = Date().addingTimeInterval(5)
        for p in lock.withLock({ killedDescendants }) {
            while kill(p, 0) == 0 && Date() < gone { usleep(2_000) }
        }
        let drained = Date().addingTimeInterval(5)
        while lock.withLock({ openStreams > 0 }) && Date() < drained { usleep(2_000) }
        let status = lock.withLock { rawStatus ?? 0 }
        let signaled = status & 0x7f != 0
        return Harness.Result(status: signaled ? 128 + (status & 0x7f) : (status >> 8) & 0xff, signaled: signaled,
                              stdout: stdout, stderr: stderr, seconds: Date().timeIntervalSince(started))
    }
}
