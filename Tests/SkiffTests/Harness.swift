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

/// A running process with its output collected as it comes.
final class Session: @unchecked Sendable {
    let process = Process()
    private let input = Pipe(), output = Pipe(), errors = Pipe()
    private let lock = NSLock()
    private var out = Data(), err = Data()
    private let started = Date()

    init(_ executable: String, _ args: [String], environment: [String: String]? = nil) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        output.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            self?.lock.withLock { self?.out.append(d) }
        }
        errors.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            self?.lock.withLock { self?.err.append(d) }
        }
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var stdout: String { lock.withLock { String(decoding: out, as: UTF8.self) } }
    var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }

    func send(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }
    func closeInput() { try? input.fileHandleForWriting.close() }

    /// Waits until stdout contains `text`; false on timeout or exit.
    @discardableResult
    func waitFor(_ text: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if stdout.contains(text) { return true }
            if !process.isRunning { return stdout.contains(text) }
            usleep(20_000)
        }
        return false
    }

    /// CPU seconds (user + system, guest time included) used so far.
    func cpuSeconds() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return -1 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0) // utime, stime
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func signal(_ s: Int32) { kill(pid, s) }

    func wait(timeout: Double) -> Harness.Result {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning {
            process.interrupt(); usleep(500_000)
            if process.isRunning { kill(pid, SIGKILL) }
            process.waitUntilExit()
            XCTFail("\(process.arguments ?? []) did not finish in \(timeout) s")
        }
        process.waitUntilExit()
        usleep(50_000) // let the readability handlers drain
        output.fileHandleForReading.readabilityHandler = nil
        errors.fileHandleForReading.readabilityHandler = nil
        let restOut = output.fileHandleForReading.readDataToEndOfFile()
        let restErr = errors.fileHandleForReading.readDataToEndOfFile()
        lock.withLock { out.append(restOut); err.append(restErr) }
        return Harness.Result(status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
                              stdout: stdout, stderr: stderr, seconds: Date().timeIntervalSince(started))
    }
}
