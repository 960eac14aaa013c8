import Foundation
import Machine
import XCTest

/// `skiff clone` as a new user meets it (issue 8): a missing output
/// directory, stopping it with a signal, output that never stops, CIDs
/// from a snapshot that would overflow. On the counting probe.
final class CloneTests: XCTestCase {
    static let scratch = "/tmp/skiff-clone-\(getpid())"
    static let snap = scratch + "/snap", vsockSnap = scratch + "/vsnap"
    /// Made once for the class: nil, or what went wrong.
    static let prepared: String? = {
        try? FileManager.default.removeItem(atPath: scratch)
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        for (dir, extra) in [(snap, [String]()), (vsockSnap, ["--vsock", "cid=7,socket=\(scratch)/v.sock"])] {
            let socket = dir + ".sock"
            guard let s = try? Session(Harness.skiff, ["run", "--kernel", Harness.probe("counter"), "--control-socket", socket] + extra) else {
                return "cannot start skiff"
            }
            defer { s.signal(SIGKILL); _ = s.wait(timeout: 10) }
            guard s.waitFor("C00 00000003", timeout: 20) else { return "counter did not count: \(s.stderr)" }
            guard let r = try? Harness.skiff(["snapshot", socket, dir]), r.status == 0 else { return "snapshot failed" }
        }
        return nil
    }()

    override func setUpWithError() throws {
        if let problem = Self.prepared { XCTFail(problem) }
    }

    func testMissingOutputDirectoryIsNamed() throws {
        let r = try Harness.skiff(["clone", Self.snap, "-n", "2", "--output-dir", Self.scratch + "/missing"], timeout: 20)
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(r.stderr, "skiff: --output-dir \(Self.scratch)/missing: No such file or directory\n")
        XCTAssertEqual(r.stdout, "", "clones were started")
    }

    /// SIGTERM to `skiff clone` stops its clones and it waits for them.
    func testSignalToCloneStopsItsClones() throws {
        for sig in [SIGTERM, SIGINT] {
            let clone = try Session(Harness.skiff, ["clone", Self.snap, "-n", "2"])
            // The snapshot's count is anywhere: wait for both clones, then for them to count on.
            XCTAssertTrue(clone.waitFor("clone 1 pid ", timeout: 20), clone.stdout.suffix(200) + clone.stderr)
            let pids = clone.stdout.split(separator: "\n").filter { $0.hasPrefix("clone ") }.compactMap { Int32($0.split(separator: " ").last ?? "") }
            XCTAssertEqual(pids.count, 2, clone.stdout.prefix(300) + "")
            let started = clone.stdout.count
            let deadline = Date().addingTimeInterval(20)
            while clone.stdout.count < started + 1000 && Date() < deadline { usleep(20_000) }
            for pid in pids { XCTAssertEqual(kill(pid, 0), 0, "clone \(pid) is not running: \(clone.stderr)") }
            clone.signal(sig)
            let r = clone.wait(timeout: 10)
            XCTAssertFalse(r.signaled, "skiff clone died of the signal: \(r.stderr)")
            XCTAssertEqual(r.status, 0, r.stderr)
            for pid in pids {
                let alive = kill(pid, 0) == 0
                XCTAssertFalse(alive, "clone \(pid) still runs after signal \(sig) to skiff clone")
                if alive { kill(pid, SIGKILL) }
            }
        }
    }

    /// Under --output-dir each clone's log is capped (here at 4096 bytes
    /// through SKIFF_CONSOLE_LOG_MAX); the last line says so.
    func testCloneLogIsCapped() throws {
        let out = Self.scratch + "/logs"
        try? FileManager.default.removeItem(atPath: out)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        let clone = try Session(Harness.skiff, ["clone", Self.snap, "-n", "1", "--output-dir", out], environment: ["SKIFF_CONSOLE_LOG_MAX": "4096"])
        let log = out + "/clone-0.console"
        var text = ""
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if text.utf8.count > 4096 || text.contains("console output stopped") { break }
            usleep(50_000)
        }
        usleep(500_000) // the guest goes on counting
        let size = (try FileManager.default.attributesOfItem(atPath: log)[.size] as? Int) ?? -1
        clone.signal(SIGTERM)
        XCTAssertEqual(clone.wait(timeout: 10).status, 0)
        XCTAssertLessThanOrEqual(size, 4096, "the clone's log grew past its cap")
        text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        XCTAssertTrue(text.hasSuffix("\n[skiff: console output stopped at 4096 bytes (SKIFF_CONSOLE_LOG_MAX)]\n"), String(text.suffix(200)))
        XCTAssertTrue(text.contains("\nC00 "), String(text.prefix(100))) // the snapshot may fall mid-line
    }

    /// A snapshot's vsock CID plus the clone number must stay a guest CID:
    /// refused before any clone starts, never a trap.
    func testCloneCIDsThatDoNotFitAreRefused() throws {
        let dir = Self.scratch + "/bigcid"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.copyItem(atPath: Self.vsockSnap, toPath: dir)
        for (cid, n) in [(UInt64.max, 1), (UInt64(UInt32.max) - 3, 3)] {
            try Self.rewriteVsockCID(dir, cid)
            let r = try Harness.skiff(["clone", dir, "-n", String(n)], timeout: 20)
            XCTAssertFalse(r.signaled, "skiff clone trapped on cid \(cid): \(r.stderr)")
            XCTAssertEqual(r.status, 2, r.stderr)
            XCTAssertTrue(r.stderr.contains("is past the last guest CID"), r.stderr)
            XCTAssertEqual(r.stdout, "", "clones were started")
        }
    }

    /// The config section ends with the vsock CID (u64) and socket path (u16 length + bytes).
    static func rewriteVsockCID(_ dir: String, _ cid: UInt64) throws {
        let state = try StateFile.read(dir + "/state")
        var sections: [(String, StateWriter)] = []
        for name in state.keys.sorted() {
            var w = StateWriter()
            w.bytes = state[name]!.remainingBytes
            if name == "config" {
                let pathLength = Int(w.bytes[w.bytes.count - 2 - (scratch + "/v.sock").utf8.count]) // little-endian u16, short path
                let at = w.bytes.count - 2 - pathLength - 8
                withUnsafeBytes(of: cid.littleEndian) { for (i, b) in $0.enumerated() { w.bytes[at + i] = b } }
            }
            sections.append((name, w))
        }
        try StateFile.write(sections, to: dir + "/state")
    }
}
