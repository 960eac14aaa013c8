import Foundation
import Machine
import XCTest

/// Broken snapshots are refused before anything runs: exit status 2, one
/// line naming the file and the problem, and the files left as they were.
final class BadSnapshotTests: XCTestCase {
    static let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-badsnap-\(getpid())").path
    /// Two snapshots of the counting probe: with and without a virtio-rng.
    static let withRNG = scratch + "/rng", plain = scratch + "/plain"
    /// Made once for the class: nil, or what went wrong.
    static let prepared: String? = {
        try? FileManager.default.removeItem(atPath: scratch)
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        for (dir, extra) in [(withRNG, ["--rng"]), (plain, [])] {
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

    /// A copy of `source` with `change` applied to it.
    func brokenCopy(of source: String, _ change: (_ dir: String) throws -> Void) throws -> String {
        let dir = Self.scratch + "/case-\(UUID().uuidString.prefix(8))"
        try FileManager.default.copyItem(atPath: source, toPath: dir)
        try change(dir)
        return dir
    }

    /// Restores `dir`, expecting a refusal that mentions `words`; the files must not change.
    func assertRefused(_ dir: String, _ words: String, extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws {
        let contents = { ["state", "memory"].map { try? Data(contentsOf: URL(fileURLWithPath: dir + "/" + $0)) } }
        let before = contents()
        let r = try Harness.skiff(["restore", dir] + extra, timeout: 20)
        XCTAssertEqual(r.status, 2, "\(r.stdout.prefix(200)) \(r.stderr)", file: file, line: line)
        XCTAssertFalse(r.signaled, file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(words), "expected '\(words)' in: \(r.stderr)", file: file, line: line)
        XCTAssertFalse(r.stdout.contains("C00"), "the guest ran", file: file, line: line)
        XCTAssertEqual(before, contents(), "a refused restore changed the snapshot", file: file, line: line)
    }

    func rewrite(_ path: String, _ body: (inout [UInt8]) -> Void) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        body(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func testGoodSnapshotRestores() throws {
        let r = try Session(Harness.skiff, ["restore", Self.withRNG])
        XCTAssertTrue(r.waitFor("C00 00000040", timeout: 20), r.stdout.prefix(200) + r.stderr)
        r.signal(SIGTERM)
        XCTAssertEqual(r.wait(timeout: 10).status, 0)
    }

    func testCorruptTruncatedOrForeignStateFile() throws {
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/state") { $0[$0.count - 100] ^= 0x40 } }, "checksum mismatch")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/state") { $0.removeLast(300) } }, "truncated")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/state") { $0 = (0..<4096).map { _ in UInt8.random(in: 0...255) } } },
                          "not a Skiff snapshot state file")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/state") { $0 = [] } }, "not a Skiff snapshot state file")
        // Another format version: refused by name, never read as this one.
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/state") { $0[8] = 99 } }, "snapshot format 99")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try FileManager.default.removeItem(atPath: d + "/state") }, "not a snapshot (no state file)")
    }

    func testCorruptTruncatedOrForeignMemoryFile() throws {
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/memory") { $0[20] ^= 1 } }, "memory file header checksum mismatch")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/memory") { $0.removeLast(4096) } }, "truncated or extended")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/memory") { $0 += [UInt8](repeating: 0, count: 4096) } }, "truncated or extended")
        try assertRefused(try brokenCopy(of: Self.plain) { d in try rewrite(d + "/memory") { $0 = Array($0.prefix(100)) } }, "not a Skiff snapshot memory file")
        // The memory of another snapshot (same size, other VM).
        try assertRefused(try brokenCopy(of: Self.plain) { d in
            try FileManager.default.removeItem(atPath: d + "/memory")
            try FileManager.default.copyItem(atPath: Self.withRNG + "/memory", toPath: d + "/memory")
        }, "belongs to another snapshot")
    }

    /// The state of a VM with other devices than the snapshot's
    /// configuration names: the restore sees the mismatch and stops.
    func testDeviceStateOfAnotherVM() throws {
        let dir = try brokenCopy(of: Self.withRNG) { d in
            let mine = try StateFile.read(d + "/state")
            let other = try StateFile.read(Self.plain + "/state")
            var sections: [(String, StateWriter)] = []
            for name in mine.keys.sorted() {
                var w = StateWriter()
                w.bytes = (name == "devices" ? other[name]! : mine[name]!).remainingBytes
                sections.append((name, w))
            }
            try StateFile.write(sections, to: d + "/state")
        }
        try assertRefused(dir, "the snapshot has 0 virtio devices, this VM 1")
        // And identity options that do not fit the snapshot's devices.
        try assertRefused(Self.plain, "has no vsock devices", extra: ["--vsock", "cid=9,socket=\(Self.scratch)/x.sock"])
        try assertRefused(Self.plain, "network devices", extra: ["--net", "tap=skiffbad0"])
        try assertRefused(Self.plain, "only --disk, --net, --vsock", extra: ["--memory", "64"])
    }

    /// A disk that changed size since the snapshot is not the guest's disk.
    func testDiskOfAnotherSize() throws {
        let disk = Self.scratch + "/disk.img", socket = Self.scratch + "/disk.sock", snap = Self.scratch + "/with-disk"
        XCTAssertTrue(FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20)))
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("counter"), "--disk", disk, "--control-socket", socket])
        XCTAssertTrue(s.waitFor("C00 00000003", timeout: 20), s.stderr)
        XCTAssertEqual(try Harness.skiff(["snapshot", socket, snap]).status, 0)
        s.signal(SIGKILL)
        _ = s.wait(timeout: 10)
        XCTAssertEqual(truncate(disk, 2 << 20), 0)
        try assertRefused(snap, "not the disk it was taken with")
        XCTAssertEqual(truncate(disk, 1 << 20), 0)
        let r = try Session(Harness.skiff, ["restore", snap])
        XCTAssertTrue(r.waitFor("C00 00000040", timeout: 20), r.stdout.prefix(200) + r.stderr)
        r.signal(SIGTERM)
        XCTAssertEqual(r.wait(timeout: 10).status, 0)
    }
}
