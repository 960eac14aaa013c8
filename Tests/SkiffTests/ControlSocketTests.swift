import Foundation
import SkiffControl
import XCTest

/// The control socket against local users and clients that misbehave, and
/// snapshot directories given wrong (finding 2, finding 7 and the
/// new-user findings of issue 8), on the counting probe.
final class ControlSocketTests: XCTestCase {
    var scratch: String!

    override func setUpWithError() throws {
        scratch = "/tmp/skiff-ctl-\(getpid())-\(name.hashValue & 0xffff)"
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: scratch) }

    func startCounter(socket: String) throws -> Session {
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("counter"), "--control-socket", socket])
        XCTAssertTrue(s.waitFor("C00 00000005", timeout: 20), s.stdout.suffix(200) + s.stderr)
        return s
    }

    /// A connected client socket, or nil.
    static func connect(_ path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        _ = withUnsafeMutableBytes(of: &address.sun_path) { p in Array(path.utf8).withUnsafeBytes { memcpy(p.baseAddress!, $0.baseAddress!, $0.count) } }
        let r = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard r == 0 else { close(fd); return nil }
        return fd
    }

    /// One reply line (without its newline), waiting at most `timeout`.
    static func readLine(_ fd: Int32, timeout: Double = 10) -> String? {
        var line: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        var byte: UInt8 = 0
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) >= 0 else { return nil }
            if p.revents == 0 { continue }
            guard read(fd, &byte, 1) == 1 else { return nil }
            if byte == 0x0a { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        return nil
    }

    /// Mode 0600 whatever the umask; a peer of another uid is closed
    /// unanswered even where the file mode would let it in.
    func testSocketIsPrivateAndOtherUsersAreRefused() throws {
        let socket = scratch + "/ctl"
        let old = umask(0o002)
        let s = try startCounter(socket: socket)
        umask(old)
        defer { s.signal(SIGKILL); _ = s.wait(timeout: 10) }
        let mode = try FileManager.default.attributesOfItem(atPath: socket)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600, "control socket mode under umask 002")

        // Past the file mode, the peer check must hold on its own.
        XCTAssertEqual(chmod(socket, 0o666), 0)
        let client = """
        import socket
        s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect('\(socket)')
        try:
            s.sendall(b'status\\n'); a = s.recv(100)
        except OSError:
            a = b''  # closed on us: refused
        print('answer:', a)
        """
        let other = try Harness.run("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c", client], timeout: 20)
        XCTAssertEqual(other.stdout, "answer: b''\n", "uid 65534 was answered: \(other.stdout) \(other.stderr)")
        let mine = try Harness.skiff(["status", socket])
        XCTAssertEqual(mine.stdout, "running\n", mine.stderr)
    }

    /// A second VM on a live VM's socket is refused (exit 2) and the first
    /// keeps its socket; a VM that stops removes its socket; a stale one
    /// (its VM killed) is replaced.
    func testLiveSocketIsNotTakenAndNoneIsLeftBehind() throws {
        let socket = scratch + "/ctl"
        let first = try startCounter(socket: socket)
        let second = try Harness.skiff(["run", "--kernel", Harness.probe("counter"), "--control-socket", socket], timeout: 20)
        XCTAssertEqual(second.status, 2, second.stderr)
        XCTAssertTrue(second.stderr.contains("control socket \(socket): in use by another VM"), second.stderr)
        XCTAssertEqual(try Harness.skiff(["status", socket]).stdout, "running\n", "the first VM lost its socket")
        first.signal(SIGTERM)
        XCTAssertEqual(first.wait(timeout: 10).status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the control socket was left behind")

        let killed = try startCounter(socket: socket)
        killed.signal(SIGKILL)
        _ = killed.wait(timeout: 10)
        let third = try startCounter(socket: socket)
        XCTAssertEqual(try Harness.skiff(["status", socket]).stdout, "running\n", "a stale socket was not replaced")
        third.signal(SIGTERM)
        XCTAssertEqual(third.wait(timeout: 10).status, 0)
    }

    /// A client that sends and never reads neither holds the server for
    /// another client nor the VM's shutdown.
    func testClientThatNeverReadsHoldsNothing() throws {
        let socket = scratch + "/ctl"
        let s = try startCounter(socket: socket)
        guard let hog = Self.connect(socket) else { return XCTFail("cannot connect") }
        defer { close(hog) }
        _ = fcntl(hog, F_SETFL, O_NONBLOCK)
        let requests = [UInt8](String(repeating: "status\n", count: 8192).utf8)
        var sent = 0
        let until = Date().addingTimeInterval(3)
        while Date() < until {
            let n = requests.withUnsafeBytes { send(hog, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            if errno != EAGAIN { break } // dropped by the VM: fine
            usleep(10_000)
        }
        XCTAssertGreaterThan(sent, 64 << 10, "the hog could not even send")
        let other = try Harness.skiff(["status", socket], timeout: 10)
        XCTAssertEqual(other.stdout, "running\n", "another client was not answered: \(other.stderr)")
        let stopped = Date()
        s.signal(SIGTERM)
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(stopped), 2, "SIGTERM took too long with a client that never reads")
    }

    /// A `memory.new` planted in the snapshot directory as a symbolic link
    /// is not followed: the file it points to stays as it was. The client
    /// makes the files (O_EXCL|O_NOFOLLOW) and refuses a directory with
    /// anything in it; the VMM writes only into new, empty files it is sent.
    func testPlantedSymlinkInSnapshotDirectoryIsNotFollowed() throws {
        let socket = scratch + "/ctl", dir = scratch + "/snap", sentinel = scratch + "/sentinel"
        let s = try startCounter(socket: socket)
        defer { s.signal(SIGKILL); _ = s.wait(timeout: 10) }
        let original = Data("precious host file\n".utf8)
        XCTAssertTrue(FileManager.default.createFile(atPath: sentinel, contents: original))
        XCTAssertEqual(mkdir(dir, 0o700), 0)
        XCTAssertEqual(symlink(sentinel, dir + "/memory.new"), 0)
        XCTAssertEqual(symlink(sentinel, dir + "/state.new"), 0)
        let r = try Harness.skiff(["snapshot", socket, dir], timeout: 30)
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(dir): not empty"), r.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: sentinel)), original, "the symlink's target was written")
        // A peer that sends a file with something in it (the sentinel,
        // opened through the link) as the snapshot's files is refused.
        let planted = open(dir + "/memory.new", O_RDWR)
        defer { close(planted) }
        guard let c = Self.connect(socket) else { return XCTFail("cannot connect") }
        defer { close(c) }
        XCTAssertGreaterThan(SkiffControl.UnixSocket.send(c, ControlRequest.snapshot(directory: dir, diff: false).line,
                                                          passing: [planted, planted, planted]), 0)
        let answer = Self.readLine(c, timeout: 30) ?? "(none)"
        XCTAssertTrue(answer.hasPrefix("error snapshot \(dir): the files sent are not new empty files"), answer)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: sentinel)), original, "the symlink's target was written")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/state"))
    }

    /// Snapshot directories given wrong: exit 2, one line with the path as
    /// the user gave it, nothing overwritten.
    func testSnapshotDirectoryMistakes() throws {
        let socket = scratch + "/ctl"
        let s = try startCounter(socket: socket)
        defer { s.signal(SIGKILL); _ = s.wait(timeout: 10) }
        func refused(_ dir: String, _ words: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try Harness.skiff(["snapshot", socket, dir], timeout: 30)
            XCTAssertEqual(r.status, 2, r.stdout + r.stderr, file: file, line: line)
            XCTAssertEqual(r.stderr, "skiff: \(dir): \(words)\n", file: file, line: line)
        }
        try refused(scratch + "/missing/snap", "parent directory does not exist")
        XCTAssertTrue(FileManager.default.createFile(atPath: scratch + "/file", contents: Data("x".utf8)))
        try refused(scratch + "/file", "not a directory")
        try FileManager.default.createDirectory(atPath: scratch + "/busy", withIntermediateDirectories: false)
        XCTAssertTrue(FileManager.default.createFile(atPath: scratch + "/busy/notes", contents: Data("mine".utf8)))
        try refused(scratch + "/busy", "not empty (holds a snapshot?)")
        // A snapshot is never overwritten.
        XCTAssertEqual(try Harness.skiff(["snapshot", socket, scratch + "/snap"], timeout: 30).status, 0)
        let state = try Data(contentsOf: URL(fileURLWithPath: scratch + "/snap/state"))
        try refused(scratch + "/snap", "not empty (holds a snapshot?)")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: scratch + "/snap/state")), state)
        // An empty directory is fine, and a relative path names the client's.
        try FileManager.default.createDirectory(atPath: scratch + "/empty", withIntermediateDirectories: false)
        let r = try Harness.run("/bin/sh", ["-c", "cd \(scratch!) && exec \(Harness.skiff) snapshot ctl empty"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix("full snapshot \(scratch!)/empty: "), r.stdout)
        // Restoring what is not a snapshot says so.
        let notSnapshot = try Harness.skiff(["restore", scratch + "/busy"], timeout: 20)
        XCTAssertEqual(notSnapshot.status, 2)
        XCTAssertEqual(notSnapshot.stderr, "skiff: \(scratch!)/busy: not a snapshot (no state file)\n")
    }
}
