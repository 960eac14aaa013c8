import CKVM
import Foundation
import XCTest

/// A snapshot this host did not seal (another host's, a download, a forged
/// state file) names host resources restore must not open unless they are
/// given again: refused with exit 2 and one line, the named objects untouched.
final class SnapshotTrustTests: XCTestCase {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-trust-\(getpid())").path
    /// Another host: its own state directory, so its own key.
    var elsewhere: [String: String] { ["SKIFF_STATE_DIR": scratch + "/other-host"] }

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("needs root (host resources, network namespaces)") }
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: scratch) }

    /// Snapshots the counting probe run with `extra`, under `environment`.
    func snapshot(_ name: String, _ extra: [String], environment: [String: String]? = nil, wrap: [String] = []) throws -> String {
        let dir = scratch + "/" + name, socket = scratch + "/\(name).control"
        let s = try Session(wrap.first ?? Harness.skiff, Array(wrap.dropFirst()) + (wrap.isEmpty ? [] : [Harness.skiff])
                            + ["run", "--kernel", Harness.probe("counter"), "--control-socket", socket] + extra, environment: environment)
        defer { s.signal(SIGTERM); _ = s.wait(timeout: 10) } // SIGTERM: its host networking is undone
        XCTAssertTrue(s.waitFor("C00 00000003", timeout: 20), s.stderr)
        let r = try Harness.skiff(["snapshot", socket, dir])
        XCTAssertEqual(r.status, 0, r.stderr)
        return dir
    }

    /// Runs `skiff restore` under strace; the paths it opened, and its result.
    func tracedRestore(_ args: [String], wrap: [String] = []) throws -> (Harness.Result, String) {
        let trace = scratch + "/trace-\(UUID().uuidString.prefix(6))"
        let r = try Harness.run(wrap.first ?? "/usr/bin/strace", Array(wrap.dropFirst()) + (wrap.isEmpty ? [] : ["/usr/bin/strace"])
                                + ["-f", "-qq", "-o", trace, "-e", "trace=open,openat,unlink,unlinkat,connect,bind",
                                   Harness.skiff, "restore"] + args, timeout: 30)
        return (r, (try? String(contentsOfFile: trace, encoding: .utf8)) ?? "")
    }

    func assertRefusedOneLine(_ r: Harness.Result, _ words: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 2, r.stderr, file: file, line: line)
        let lines = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("strace") }
        XCTAssertEqual(lines.count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(words), r.stderr, file: file, line: line)
        XCTAssertFalse(r.stdout.contains("C00"), "the guest ran", file: file, line: line)
    }

    func testForeignSnapshotDoesNotOpenTheDiskOrSocketItNames() throws {
        let disk = scratch + "/sentinel.img"
        let sentinel = Data((0..<(1 << 16)).map { UInt8(truncatingIfNeeded: $0 * 7) })
        try sentinel.write(to: URL(fileURLWithPath: disk))
        let vsock = scratch + "/v.sock"
        let dir = try snapshot("foreign", ["--disk", disk, "--vsock", "cid=5,socket=\(vsock)"], environment: elsewhere)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/seal"))

        // A live socket at the path the snapshot names: must stay as it is.
        let listener = UnixSocket.listen(vsock)
        defer { close(listener); unlink(vsock) }
        var before = stat(), after = stat()
        stat(vsock, &before)
        let diskBefore = try FileManager.default.attributesOfItem(atPath: disk)[.modificationDate] as? Date

        let (r, trace) = try tracedRestore([dir])
        assertRefusedOneLine(r, "not sealed by this host")
        XCTAssertFalse(trace.contains(disk), "restore opened the disk the snapshot names:\n\(trace)")
        XCTAssertFalse(trace.contains(vsock), "restore touched the socket the snapshot names:\n\(trace)")
        stat(vsock, &after)
        XCTAssertEqual(before.st_ino, after.st_ino, "the socket was replaced")
        XCTAssertNotNil(UnixSocket.connect(vsock, timeout: 1), "the existing socket still answers")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: disk)), sentinel)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: disk)[.modificationDate] as? Date, diskBefore)

        // Named by the person restoring, the same resources are used.
        let own = scratch + "/own.sock"
        let ok = try Session(Harness.skiff, ["restore", dir, "--disk", disk, "--vsock", "cid=5,socket=\(own)"])
        defer { ok.signal(SIGKILL) }
        XCTAssertTrue(ok.waitFor("C00 000000", timeout: 20), ok.stderr)
        ok.signal(SIGTERM)
        XCTAssertEqual(ok.wait(timeout: 10).status, 0)
    }

    /// A sealed snapshot whose state is changed to name another file (its
    /// checksum made right again) no longer holds its seal: refused too.
    func testForgedStateLosesItsSeal() throws {
        let disk = scratch + "/disk-a.img", other = scratch + "/disk-b.img"
        try Data(count: 1 << 16).write(to: URL(fileURLWithPath: disk))
        try Data(repeating: 0x5a, count: 1 << 16).write(to: URL(fileURLWithPath: other))
        let dir = try snapshot("forged", ["--disk", disk])
        // Sealed here: it restores with its own disk.
        let good = try Session(Harness.skiff, ["restore", dir])
        XCTAssertTrue(good.waitFor("C00 000000", timeout: 20), good.stderr)
        good.signal(SIGKILL); _ = good.wait(timeout: 10)

        let statePath = dir + "/state"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: statePath)))
        let a = Array(disk.utf8), b = Array(other.utf8)
        guard let at = (0...(bytes.count - a.count)).first(where: { Array(bytes[$0..<($0 + a.count)]) == a }) else {
            return XCTFail("the disk's path is not in the state file")
        }
        bytes.replaceSubrange(at..<(at + a.count), with: b)
        // Header: magic 8, format 4, version (u16 length + bytes), length 8, CRC 4, payload.
        let versionLength = Int(bytes[12]) | Int(bytes[13]) << 8
        let crcAt = 14 + versionLength + 8
        let crc = bytes[(crcAt + 4)...].withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) }
        withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { bytes[crcAt + i] = $0[i] } }
        try Data(bytes).write(to: URL(fileURLWithPath: statePath))

        let (r, trace) = try tracedRestore([dir])
        assertRefusedOneLine(r, "not sealed by this host")
        XCTAssertFalse(trace.contains(other), "restore opened the file the forged state names:\n\(trace)")
    }

    /// The bridge a foreign snapshot names is neither made nor joined.
    func testForeignSnapshotDoesNotMakeTheBridgeItNames() throws {
        let ns = "skiff-trust-\(getpid())"
        XCTAssertEqual(try Harness.run("/usr/sbin/ip", ["netns", "add", ns]).status, 0)
        defer { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", ns]) }
        let inNS = ["/usr/sbin/ip", "netns", "exec", ns]
        let dir = try snapshot("bridged", ["--net", "tap=sktap1,bridge=skbr1"], environment: elsewhere, wrap: inNS)
        // The first VM made the bridge and removed it when it stopped.
        XCTAssertFalse(try Harness.run("/usr/sbin/ip", ["netns", "exec", ns, "ip", "link", "show", "skbr1"]).status == 0)
        let (r, trace) = try tracedRestore([dir], wrap: inNS)
        assertRefusedOneLine(r, "not sealed by this host")
        XCTAssertFalse(trace.contains("/dev/net/tun"), "restore opened a TAP:\n\(trace)")
        let links = try Harness.run("/usr/sbin/ip", ["netns", "exec", ns, "ip", "-br", "link"]).stdout
        XCTAssertFalse(links.contains("skbr1") || links.contains("sktap1"), links)
    }
}
