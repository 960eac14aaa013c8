import Foundation
import XCTest

/// Host-side Unix sockets for the vsock tests, close-on-exec: a VMM the
/// test starts holds only its own sockets (the tests count them).
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

    static func listen(_ path: String, backlog: Int32 = 1) -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var a = address(path)
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        precondition(r == 0 && Glibc.listen(fd, backlog) == 0)
        // A jailed VMM runs as an unprivileged uid: connecting needs write
        // permission on the socket (as for Firecracker's jailer).
        chmod(path, 0o666)
        return fd
    }

    /// One non-blocking attempt: the connected socket, or nil (a full backlog: EAGAIN).
    static func tryConnect(_ path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var a = address(path)
        if withUnsafePointer(to: &a, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }) == 0 { return fd }
        close(fd)
        return nil
    }

    /// Whether a connection waits on `listener` (within `timeout` seconds).
    static func hasConnection(_ listener: Int32, timeout: Double) -> Bool {
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(timeout * 1000)) == 1
    }

    /// The next connection on `listener`, or nil after `timeout` seconds.
    static func accept(_ listener: Int32, timeout: Double) -> Int32? {
        guard hasConnection(listener, timeout: timeout) else { return nil }
        let fd = Glibc.accept(listener, nil, nil)
        guard fd >= 0 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    static func connect(_ path: String, timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
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

    /// How many sockets process `pid` holds open (/proc/PID/fd), less any
    /// it inherited from this process (other tests' sockets without
    /// close-on-exec) that this process still has.
    static func openSockets(_ pid: pid_t) -> Int {
        func sockets(_ dir: String) -> Set<String> {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            return Set(names.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0) }.filter { $0.hasPrefix("socket:") })
        }
        return sockets("/proc/\(pid)/fd").subtracting(sockets("/proc/self/fd")).count
    }

    static func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("skiff-\(name)-\(getpid()).sock").path
    }
}

/// Polls `condition` every 50 ms for up to `timeout` seconds.
func eventually(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(50_000)
    }
    return condition()
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
        XCTAssertFalse(FileManager.default.fileExists(atPath: base), "vsock socket left behind")
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
        XCTAssertFalse(FileManager.default.fileExists(atPath: base), "vsock socket left behind")
    }

    /// A second VM on a live VM's socket is refused and the first keeps it;
    /// a stale socket file (nobody listening) is replaced; the socket file
    /// goes when the VM exits.
    func testSocketInUseIsRefusedStaleOneReplacedAndRemovedAtExit() throws {
        let base = UnixSocket.temporaryPath("vsock-u")
        close(UnixSocket.listen(base)) // a stale socket file: it refuses connections
        defer { unlink(base) }
        let first = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("vsock"), "--vsock", "cid=3,socket=\(base)"])
        defer { if first.isRunning { first.signal(SIGKILL) } }
        XCTAssertTrue(first.waitFor("GUEST-LISTENING\n", timeout: 10), first.stdout + first.stderr)

        let second = try Harness.skiff(["run", "--kernel", Harness.probe("vsock"), "--vsock", "cid=4,socket=\(base)"], timeout: 5)
        XCTAssertEqual(second.status, 2, second.stdout)
        XCTAssertEqual(second.stderr, "skiff: vsock socket \(base): in use by another process\n")

        // The first VM still answers on its socket.
        let host = try XCTUnwrap(UnixSocket.connect(base, timeout: 5))
        UnixSocket.send(host, "CONNECT 5000\n")
        XCTAssertTrue(UnixSocket.readLine(host).hasPrefix("OK "))
        UnixSocket.send(host, "ping\n")
        XCTAssertEqual(UnixSocket.readLine(host), "pong from guest\n")
        close(host)
        XCTAssertEqual(first.wait(timeout: 10).status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: base), "vsock socket left behind")
    }
}
