import Foundation
import XCTest

/// Pause, snapshot, restore, diff snapshots and clones, on the counting
/// probe (probes/counter.S): every CPU prints "Cxx <count>" lines, counts
/// going up by one, so a restored guest that lost or repeated any work
/// shows it as a gap or a repeat.
final class SnapshotTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-snap-\(getpid())-\(name.hashValue & 0xffff)").path
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: scratch)
    }

    /// Each CPU's counts, in order, from complete lines.
    static func counts(_ text: String) -> [String: [Int]] {
        var result: [String: [Int]] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            let parts = line.split(separator: " ")
            guard parts.count == 2, parts[0].hasPrefix("C"), let n = Int(parts[1], radix: 16) else { continue }
            result[String(parts[0]), default: []].append(n)
        }
        return result
    }

    /// Every CPU's counts go up by exactly one; returns the last of each.
    func assertContinuous(_ text: String, cpus: Int, file: StaticString = #filePath, line: UInt = #line) -> [String: Int] {
        let c = Self.counts(text)
        XCTAssertEqual(c.count, cpus, "CPUs seen: \(c.keys.sorted())", file: file, line: line)
        var last: [String: Int] = [:]
        for (cpu, seq) in c {
            XCTAssertEqual(seq.first, 1, "\(cpu) does not start at 1", file: file, line: line)
            for (a, b) in zip(seq, seq.dropFirst()) where b != a + 1 {
                XCTFail("\(cpu): \(a) then \(b) (\(b == a ? "a repeat" : "a gap"))", file: file, line: line)
                break
            }
            last[cpu] = seq.last
        }
        return last
    }

    func startCounter(cpus: Int, socket: String, extra: [String] = []) throws -> Session {
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("counter"), "--cpus", String(cpus),
                                            "--control-socket", socket] + extra)
        // Every CPU has printed a few lines.
        for cpu in 0..<cpus { XCTAssertTrue(s.waitFor(String(format: "C%02X 00000005", cpu), timeout: 20), s.stdout.suffix(200) + s.stderr) }
        return s
    }

    func control(_ args: [String]) throws -> Harness.Result {
        let r = try Harness.skiff(args, timeout: 30)
        XCTAssertEqual(r.status, 0, "\(args): \(r.stderr)")
        return r
    }

    /// Pause, snapshot, kill, restore: the count goes on where it stopped.
    func checkPauseSnapshotKillRestore(cpus: Int) throws {
        let socket = scratch + "/ctl", snap = scratch + "/snap"
        let s = try startCounter(cpus: cpus, socket: socket)
        XCTAssertEqual(try control(["pause", socket]).stdout, "paused\n")
        let paused = s.stdout
        usleep(300_000)
        XCTAssertEqual(s.stdout, paused, "output went on while paused")
        XCTAssertEqual(try control(["status", socket]).stdout, "paused\n")
        XCTAssertTrue(try control(["snapshot", socket, snap]).stdout.hasPrefix("full snapshot \(snap): "))
        s.signal(SIGKILL)
        let before = s.wait(timeout: 10).stdout
        XCTAssertEqual(before, paused)

        let r = try Session(Harness.skiff, ["restore", snap])
        for cpu in 0..<cpus {
            let last = Self.counts(before)[String(format: "C%02X", cpu)]?.last ?? 0
            XCTAssertTrue(r.waitFor(String(format: "C%02X %08X", cpu, last + 20), timeout: 20), "CPU \(cpu) did not go on: \(r.stdout.prefix(300)) \(r.stderr)")
        }
        r.signal(SIGTERM)
        let after = r.wait(timeout: 10)
        XCTAssertEqual(after.status, 0, after.stderr)
        _ = assertContinuous(before + after.stdout, cpus: cpus)
    }

    func testPauseSnapshotKillRestoreContinuesTheCount() throws { try checkPauseSnapshotKillRestore(cpus: 1) }
    func testPauseSnapshotKillRestoreWithFourVcpus() throws { try checkPauseSnapshotKillRestore(cpus: 4) }

    /// resume lets a paused VM go on, and a snapshot of a running VM pauses
    /// it only while it is taken.
    func testResumeAndSnapshotOfARunningVM() throws {
        let socket = scratch + "/ctl"
        let s = try startCounter(cpus: 2, socket: socket)
        _ = try control(["pause", socket])
        let paused = s.stdout.count
        _ = try control(["resume", socket])
        XCTAssertEqual(try control(["status", socket]).stdout, "running\n")
        usleep(300_000)
        XCTAssertGreaterThan(s.stdout.count, paused, "no output after resume")
        _ = try control(["snapshot", socket, scratch + "/live"])
        XCTAssertEqual(try control(["status", socket]).stdout, "running\n")
        let bad = try Harness.skiff(["snapshot", socket, scratch + "/d2", "--diff"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("--track-dirty-pages"), bad.stderr)
        let unknown = try Harness.skiff(["status", scratch + "/no-such-socket"])
        XCTAssertEqual(unknown.status, 2, unknown.stderr)
        s.signal(SIGTERM)
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
        _ = assertContinuous(r.stdout, cpus: 2)
    }

    /// A diff snapshot holds only what changed since the full one, and
    /// restores (over its base) to where the VM was when it was taken.
    func testDiffSnapshotOverItsBase() throws {
        let socket = scratch + "/ctl", base = scratch + "/base", diff = scratch + "/diff"
        let s = try startCounter(cpus: 2, socket: socket, extra: ["--track-dirty-pages"])
        _ = try control(["snapshot", socket, base])
        usleep(300_000)
        _ = try control(["pause", socket])
        let summary = try control(["snapshot", socket, diff, "--diff"]).stdout
        XCTAssertTrue(summary.hasPrefix("diff snapshot \(diff): "), summary)
        let pages = Int(summary.split(separator: " ")[3]) ?? -1
        XCTAssertTrue((1...16).contains(pages), "diff of \(pages) pages: \(summary)")
        s.signal(SIGKILL)
        let before = s.wait(timeout: 10).stdout
        var st = stat()
        XCTAssertEqual(stat(diff + "/memory", &st), 0)
        XCTAssertLessThanOrEqual(Int(st.st_blocks) * 512, 128 << 10, "diff memory file is not sparse")

        let r = try Session(Harness.skiff, ["restore", diff])
        let last = Self.counts(before)["C01"]?.last ?? 0
        XCTAssertTrue(r.waitFor(String(format: "C01 %08X", last + 10), timeout: 20), r.stdout.prefix(300) + r.stderr)
        r.signal(SIGTERM)
        _ = assertContinuous(before + r.wait(timeout: 10).stdout, cpus: 2)
    }

    /// `skiff clone -n 3`: three VMs from one snapshot, each going on from
    /// the same count, each with its own vsock CID and socket.
    func testClonesStartFromOneSnapshot() throws {
        let socket = scratch + "/ctl", snap = scratch + "/snap", out = scratch + "/clones"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let s = try startCounter(cpus: 1, socket: socket, extra: ["--rng", "--vsock", "cid=7,socket=\(scratch!)/v.sock"])
        _ = try control(["pause", socket])
        _ = try control(["snapshot", socket, snap])
        s.signal(SIGKILL)
        let before = s.wait(timeout: 10).stdout
        let last = Self.counts(before)["C00"]?.last ?? 0

        let clone = try Session(Harness.skiff, ["clone", snap, "-n", "3", "--output-dir", out])
        let deadline = Date().addingTimeInterval(20)
        var consoles: [String] = []
        while Date() < deadline {
            consoles = (0..<3).map { (try? String(contentsOfFile: "\(out)/clone-\($0).console", encoding: .utf8)) ?? "" }
            if consoles.allSatisfy({ $0.contains(String(format: "C00 %08X", last + 10)) }) { break }
            usleep(50_000)
        }
        for i in 0..<3 {
            // Each clone goes on from the snapshot's count (which may have
            // been taken in the middle of a line): no gap, no repeat.
            let lastAfter = assertContinuous(before + consoles[i], cpus: 1)["C00"] ?? 0
            XCTAssertGreaterThan(lastAfter, last, "clone \(i): \(consoles[i].prefix(100))")
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(scratch!)/v.sock.clone\(i)"), "clone \(i) has no vsock socket of its own")
        }
        // Stop the clones; `skiff clone` then ends with them, status 0.
        let pids = clone.stdout.split(separator: "\n").compactMap { Int32($0.split(separator: " ").last ?? "") }
        XCTAssertEqual(pids.count, 3, clone.stdout)
        for pid in pids { kill(pid, SIGTERM) }
        let r = clone.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// vsock across a snapshot: the probe guest talks to the host, waits for
    /// a host connection and is snapshotted there; the restored VM (a new
    /// process on the same socket) takes the host's connection and answers.
    func testVsockWorksAfterRestore() throws {
        let base = scratch + "/v.sock", socket = scratch + "/ctl", snap = scratch + "/snap"
        let listener = UnixSocket.listen(base + "_1234")
        defer { close(listener) }
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("vsock"), "--vsock", "cid=42,socket=\(base)",
                                            "--control-socket", socket])
        let guest = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(guest, 0)
        XCTAssertEqual(UnixSocket.readLine(guest), "hello from guest\n")
        UnixSocket.send(guest, "hello from host\n")
        XCTAssertTrue(s.waitFor("GUEST-LISTENING", timeout: 10), s.stdout)
        close(guest)
        _ = try control(["pause", socket])
        _ = try control(["snapshot", socket, snap])
        s.signal(SIGKILL)
        _ = s.wait(timeout: 10)

        let r = try Session(Harness.skiff, ["restore", snap])
        let host = try XCTUnwrap(UnixSocket.connect(base, timeout: 5))
        defer { close(host) }
        UnixSocket.send(host, "CONNECT 5000\n")
        let ok = UnixSocket.readLine(host)
        XCTAssertTrue(ok.hasPrefix("OK "), ok)
        UnixSocket.send(host, "ping after restore\n")
        XCTAssertEqual(UnixSocket.readLine(host), "pong from guest\n")
        XCTAssertTrue(r.waitFor("VSOCK-DONE", timeout: 10), r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("HOST-SAID ping after restore\n"), r.stdout)
        close(host)
        let done = r.wait(timeout: 10)
        XCTAssertEqual(done.status, 0, done.stderr)
    }

    /// A restore signals every queue's notifier (to serve what was queued
    /// while the snapshot was taken): a balloon whose driver enabled only
    /// two of its four queues must take that in its stride.
    func testRestoredBalloonWithFewerQueuesRuns() throws {
        let socket = scratch + "/ctl", snap = scratch + "/snap"
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("balloon-hostile"), "--balloon", "no-reporting",
                                            "--rng", "--cmdline", "wait quiet", "--control-socket", socket])
        XCTAssertTrue(s.waitFor("TICK", timeout: 20), s.stdout + s.stderr)
        _ = try control(["snapshot", socket, snap])
        s.signal(SIGKILL)
        _ = s.wait(timeout: 10)

        let r = try Session(Harness.skiff, ["restore", snap])
        // Two ticks from the restored VM: its rng still serves.
        XCTAssertTrue(r.waitFor("TICK\nTICK\n", timeout: 20), r.stdout + r.stderr)
        r.signal(SIGTERM)
        let done = r.wait(timeout: 10)
        XCTAssertEqual(done.status, 0, done.stderr)
        XCTAssertEqual(done.stderr, "skiff: stopped by signal SIGTERM\n")
        XCTAssertFalse(done.stdout.contains("TICK-BAD"), done.stdout)
    }
}
