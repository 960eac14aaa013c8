import Foundation
import XCTest

/// virtio-vsock against a guest (probes/vsock-hostile.c) and host sockets
/// that misbehave: the VMM stays responsive, bounded and correct.
final class VsockHostileTests: XCTestCase {
    func guest(_ mode: String, socket base: String) throws -> Session {
        try Session(Harness.skiff, ["run", "--kernel", Harness.probe("vsock-hostile"), "--cmdline", mode,
                                    "--vsock", "cid=3,socket=\(base)"])
    }

    /// A host listener whose backlog is full and that never accepts: the
    /// guest's connections to it are reset after a bounded wait, another
    /// port is served meanwhile, and SIGTERM stops the VMM at once.
    func testFullHostBacklogHoldsNothingUp() throws {
        let base = UnixSocket.temporaryPath("vsock-full")
        let other = UnixSocket.listen(base + "_1234", backlog: 16)
        let full = UnixSocket.listen(base + "_1235", backlog: 0)
        var fillers: [Int32] = []
        while fillers.count < 8, let fd = UnixSocket.tryConnect(base + "_1235") { fillers.append(fd) }
        defer {
            for fd in fillers + [other, full] { close(fd) }
            unlink(base + "_1234"); unlink(base + "_1235")
        }
        XCTAssertLessThan(fillers.count, 8, "the listener's backlog did not fill")

        let s = try guest("full", socket: base)
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("FULL-OTHER-CONNECTED\n", timeout: 5), s.stdout + s.stderr)
        XCTAssertTrue(s.waitFor("FULL-REFUSED 3\n", timeout: 10), s.stdout)
        XCTAssertFalse(s.stdout.contains("FULL-CONNECTED\n"), s.stdout)
        XCTAssertTrue(s.waitFor("FULL-RETRYING\n", timeout: 5), s.stdout)
        let start = Date()
        s.signal(SIGTERM) // while three connects wait for the full backlog
        XCTAssertTrue(eventually(timeout: 2) { !s.isRunning }, "SIGTERM did not stop the VMM within 2 s")
        let r = s.wait(timeout: 5)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
    }

    /// 300 guest connections: 256 (the cap) are made, the rest reset; once
    /// the guest resets its own, new ones are made again.
    func testGuestConnectionsAreCapped() throws {
        let base = UnixSocket.temporaryPath("vsock-flood")
        let listener = UnixSocket.listen(base + "_1234", backlog: 1024) // never accepts: they all wait in its backlog
        defer { close(listener); unlink(base + "_1234") }
        let s = try guest("flood", socket: base)
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("FLOOD-DONE\n", timeout: 30), s.stdout + s.stderr)
        XCTAssertTrue(s.stdout.contains("FLOOD-OPEN 256 REFUSED 44\n"), s.stdout)
        XCTAssertTrue(s.stdout.contains("FLOOD-AGAIN CONNECTED\n"), s.stdout)
        // The listener and the one connection left.
        XCTAssertTrue(eventually(timeout: 5) { UnixSocket.openSockets(s.vmmPID()) == 2 }, "\(UnixSocket.openSockets(s.vmmPID())) sockets open")
        s.signal(SIGTERM)
        XCTAssertEqual(s.wait(timeout: 5).status, 0)
    }

    /// Out of descriptors (RLIMIT_NOFILE lowered under the VMM) with host
    /// clients queued on the vsock socket: accept fails with EMFILE, and
    /// the device thread must not spin retrying it. Afterwards the VMM
    /// serves a host connection as before.
    func testAcceptDoesNotSpinWithoutDescriptors() throws {
        let base = UnixSocket.temporaryPath("vsock-emfile")
        unlink(base + "_1234")
        // Unjailed: prlimit on a process of another uid needs CAP_SYS_RESOURCE,
        // which root lacks on these hosts (the jail is tested apart).
        let s = try Session(Harness.skiff, ["run", "--no-jail", "--kernel", Harness.probe("vsock"), "--vsock", "cid=3,socket=\(base)"])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("GUEST-LISTENING\n", timeout: 10), s.stdout + s.stderr)
        // Only the soft limit: raising a hard limit again needs CAP_SYS_RESOURCE.
        let used = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(s.pid)/fd").count
        let limit = try Harness.run("/usr/bin/prlimit", ["--pid", "\(s.pid)", "--nofile=\(used + 2):"])
        XCTAssertEqual(limit.status, 0, limit.stderr)
        var clients: [Int32] = []
        for _ in 0..<10 { if let fd = UnixSocket.tryConnect(base) { clients.append(fd) } }
        XCTAssertEqual(clients.count, 10)
        usleep(200_000)

        // strace on every thread of the VMM for a second: how often accept runs.
        let trace = base + ".strace"
        defer { unlink(trace) }
        let tracer = try Session("/usr/bin/strace", ["-f", "-qq", "-p", "\(s.pid)", "-e", "trace=accept,accept4", "-o", trace])
        usleep(1_500_000)
        tracer.signal(SIGINT)
        _ = tracer.wait(timeout: 10)
        let calls = ((try? String(contentsOfFile: trace, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("EMFILE") }
        XCTAssertLessThan(calls.count, 50, "accept failed \(calls.count) times in 1.5 s: the device thread spins")

        for fd in clients { close(fd) }
        XCTAssertEqual(try Harness.run("/usr/bin/prlimit", ["--pid", "\(s.pid)", "--nofile=1024:"]).status, 0)
        let host = try XCTUnwrap(UnixSocket.connect(base, timeout: 5))
        UnixSocket.send(host, "CONNECT 5000\n")
        XCTAssertTrue(UnixSocket.readLine(host).hasPrefix("OK "))
        UnixSocket.send(host, "ping\n")
        XCTAssertEqual(UnixSocket.readLine(host), "pong from guest\n")
        close(host)
        XCTAssertEqual(s.wait(timeout: 10).status, 0)
    }

    /// The host closes 20 connections and the guest never answers the
    /// SHUTDOWNs: each is reset after a few seconds and its socket closed.
    func testConnectionsTheHostClosedAreReaped() throws {
        let base = UnixSocket.temporaryPath("vsock-close")
        let listener = UnixSocket.listen(base + "_1234", backlog: 32)
        defer { close(listener); unlink(base + "_1234") }
        let s = try guest("hostclose", socket: base)
        defer { if s.isRunning { s.signal(SIGKILL) } }
        for i in 0..<20 {
            guard let fd = UnixSocket.accept(listener, timeout: 10) else { XCTFail("connection \(i) did not come: \(s.stdout)"); return }
            close(fd)
        }
        XCTAssertTrue(s.waitFor("HOSTCLOSE-DONE\n", timeout: 10), s.stdout)
        XCTAssertTrue(eventually(timeout: 6) { UnixSocket.openSockets(s.vmmPID()) == 1 },
                      "\(UnixSocket.openSockets(s.vmmPID())) sockets still open")
        XCTAssertTrue(s.waitFor("HOSTCLOSE-RST 20\n", timeout: 15), s.stdout)
        s.signal(SIGTERM)
        XCTAssertEqual(s.wait(timeout: 5).status, 0)
    }

    /// Data and a full SHUTDOWN in one batch on a connection the host
    /// closed: the flush fails and ends the connection, and the shutdown
    /// must not touch its socket again. strace sees every close and
    /// shutdown of the VMM: none on a closed descriptor (EBADF).
    func testFailedFlushThenShutdownClosesOnce() throws {
        let base = UnixSocket.temporaryPath("vsock-double")
        let listener = UnixSocket.listen(base + "_1234")
        let trace = base + ".strace"
        defer { close(listener); unlink(base + "_1234"); unlink(trace) }
        let s = try Session("/usr/bin/strace", ["-f", "-qq", "-e", "trace=close,shutdown", "-o", trace,
                                                Harness.skiff, "run", "--kernel", Harness.probe("vsock-hostile"),
                                                "--cmdline", "double", "--vsock", "cid=3,socket=\(base)"])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        let fd = try XCTUnwrap(UnixSocket.accept(listener, timeout: 10), s.stdout)
        close(fd)
        let r = s.wait(timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("DOUBLE-RST\nDOUBLE-DONE\n"), r.stdout)
        let bad = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").filter { $0.contains("EBADF") }
        XCTAssertEqual(bad, [], "calls on a closed descriptor")
    }

    /// `<socket>_1236` is a symlink to another listening socket: the guest
    /// is refused and that socket gets no connection.
    func testSymlinkedHostSocketIsNotFollowed() throws {
        let base = UnixSocket.temporaryPath("vsock-link")
        let target = UnixSocket.temporaryPath("vsock-target")
        let victim = UnixSocket.listen(target, backlog: 4)
        unlink(base + "_1236")
        XCTAssertEqual(symlink(target, base + "_1236"), 0)
        defer { close(victim); unlink(target); unlink(base + "_1236") }
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("vsock-hostile"), "--cmdline", "symlink",
                                   "--vsock", "cid=3,socket=\(base)"], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("SYMLINK-REFUSED\n"), r.stdout)
        XCTAssertFalse(UnixSocket.hasConnection(victim, timeout: 0), "the symlink's target got a connection")
    }
}
