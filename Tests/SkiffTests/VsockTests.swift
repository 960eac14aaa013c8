import Foundation
import XCTest

/// Host-side Unix sockets for the vsock tests.
enum UnixSocket {
    static func address(_ path: String) -> sockaddr_un {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            let b = Array(path.utf8)
            p.copyBytes(from: b)
            p[b.count] = 0
        }
        return a
    }

    static func listen(_ path: String) -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var a = address(path)
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        precondition(r == 0 && Glibc.listen(fd, 1) == 0)
        // A jailed VMM runs as an unprivileged uid: connecting needs write
        // permission on the socket (as for Firecracker's jailer).
        chmod(path, 0o666)
        return fd
    }

    static func connect(_ path: String, timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var a = address(path)
            if withUnsafePointer(to: &a, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }) == 0 { return fd }
            close(fd)
            usleep(20_000)
        }
        return nil
    }

    /// Reads until a newline (or 5 s without one).
    static func readLine(_ fd: Int32) -> String {
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var out: [UInt8] = []
        var b: UInt8 = 0
        while read(fd, &b, 1) == 1 { out.append(b); if b == UInt8(ascii: "\n") { break } }
        return String(decoding: out, as: UTF8.self)
    }

    static func send(_ fd: Int32, _ s: String) { _ = Array(s.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
}

final class VsockTests: XCTestCase {
    /// A stream each way between a probe guest and host Unix sockets.
    func testStreamsBothWaysThroughHostUnixSockets() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-vsock-\(getpid()).sock").path
        let listener = UnixSocket.listen(base + "_1234")
        defer { close(listener); unlink(base + "_1234") }
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("vsock"), "--vsock", "cid=42,socket=\(base)"])
        defer { if s.isRunning { s.signal(SIGKILL) } }

        // Guest -> host: the guest connects to CID 2 port 1234.
        let guestConnection = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(guestConnection, 0)
        XCTAssertEqual(UnixSocket.readLine(guestConnection), "hello from guest\n")
        UnixSocket.send(guestConnection, "hello from host\n")
        XCTAssertTrue(s.waitFor("GUEST-GOT hello from host\n", timeout: 10), s.stdout)
        close(guestConnection)

        // Host -> guest: CONNECT to the guest's port 5000.
        XCTAssertTrue(s.waitFor("GUEST-LISTENING", timeout: 10), s.stdout)
        let host = try XCTUnwrap(UnixSocket.connect(base, timeout: 5))
        defer { close(host) }
        UnixSocket.send(host, "CONNECT 5000\n")
        let ok = UnixSocket.readLine(host)
        XCTAssertTrue(ok.hasPrefix("OK ") && ok.hasSuffix("\n"), ok)
        UnixSocket.send(host, "ping from host\n")
        XCTAssertEqual(UnixSocket.readLine(host), "pong from guest\n")
        XCTAssertTrue(s.waitFor("VSOCK-DONE", timeout: 10), s.stdout)
        XCTAssertTrue(s.stdout.hasPrefix("VSOCK-CID 42\nGUEST-CONNECTED\n"), s.stdout)
        XCTAssertTrue(s.stdout.contains("HOST-SAID ping from host\n"), s.stdout)
        close(host) // the guest sees the stream shut down and resets
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func testRefusedConnectionAndBadConnectLine() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-vsock-r\(getpid()).sock").path
        unlink(base + "_1234") // nobody listens: the guest's connection is refused
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("vsock"), "--vsock", "cid=3,socket=\(base)"])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("GUEST-REFUSED\nGUEST-LISTENING\n", timeout: 10), s.stdout)
        let bad = try XCTUnwrap(UnixSocket.connect(base, timeout: 5))
        UnixSocket.send(bad, "HELLO THERE\n")
        XCTAssertEqual(UnixSocket.readLine(bad), "") // closed without an answer
        close(bad)
        XCTAssertTrue(s.isRunning)
        s.signal(SIGTERM)
        XCTAssertEqual(s.wait(timeout: 5).status, 0)
    }
}
