import Foundation
import Glibc
import XCTest

/// skiffd against real probe guests: the lifecycle through the API, bad
/// input, crashes of skiffd itself, restart policies.
final class ManagerTests: XCTestCase {
    var m: ManagerHarness!
    /// cgroups that were there before (another VM's): not this test's to account for.
    var cgroupsBefore: Set<String> = []

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("skiffd runs VMs jailed: needs root") }
        guard FileManager.default.fileExists(atPath: ManagerHarness.skiffd) else { throw XCTSkip("no skiffd at \(ManagerHarness.skiffd)") }
        cgroupsBefore = ManagerHarness.cgroups()
        m = try ManagerHarness(testID)
        try m.start()
    }

    override func tearDown() { m?.tearDown() }

    /// "testLifecycle..." from "-[ManagerTests testLifecycle...]" or "ManagerTests.testLifecycle...".
    var testID: String { String(name.split(whereSeparator: { $0 == " " || $0 == "." }).last?.filter { $0.isLetter } ?? "t") }

    var tick: String { Harness.probe("tick") }

    func testLifecycleThroughTheAPI() throws {
        var r = try m.create(["name": "web", "kernel": tick, "cmdline": "slow", "labels": ["team": "a"]])
        XCTAssertEqual(r.status, 201, r.body)
        try m.waitFor("web", "running")
        XCTAssertEqual(try m.api("POST", "/vms/web/pause").object["observed"] as? String, "paused")
        XCTAssertEqual(try m.api("POST", "/vms/web/resume").object["observed"] as? String, "running")
        r = try m.api("POST", "/vms/web/snapshots", #"{"name":"s1"}"#)
        XCTAssertEqual(r.status, 201, r.body)
        r = try m.api("POST", "/vms/web/clone", #"{"count":3}"#)
        XCTAssertEqual(r.status, 201, r.body)
        for i in 0..<3 { try m.waitFor("web-clone-\(i)", "running") }
        XCTAssertEqual((try m.api("GET", "/vms?label=team=a").object["items"] as? [Any])?.count, 4, "clones keep the labels")
        let logs = try m.api("GET", "/vms/web/logs")
        XCTAssertTrue(logs.body.hasPrefix("TICK-START"), logs.body.prefix(200).description)
        r = try m.api("POST", "/vms/web/stop", #"{"timeoutSeconds":5}"#)
        XCTAssertEqual(r.status, 200, r.body)
        let stopped = try m.waitFor("web", "stopped")
        XCTAssertEqual(stopped["exitStatus"] as? Int, 0)
        XCTAssertEqual(stopped["stopReason"] as? String, "stopped on request (control socket)")
        XCTAssertEqual(try m.api("DELETE", "/vms/web-clone-0").status, 409, "a running VM is not deleted without force")
        for n in ["web", "web-clone-0", "web-clone-1", "web-clone-2"] {
            XCTAssertEqual(try m.api("DELETE", "/vms/\(n)?force=true").status, 204)
        }
        XCTAssertEqual(try m.vms().count, 0)
        XCTAssertEqual(ManagerHarness.launchers(under: m.state + "/vms/").count, 0, "a VM process is left")
        XCTAssertEqual(m.directories(), [], "a VM directory is left")
        XCTAssertEqual(ManagerHarness.cgroups().subtracting(cgroupsBefore), [], "a cgroup is left")
        let events = try m.api("GET", "/events").object["items"] as? [[String: Any]] ?? []
        XCTAssertTrue(events.contains { $0["kind"] as? String == "snapshot" && $0["vm"] as? String == "web" })
    }

    /// Each bad request: a 4xx problem document that says what is wrong, and nothing changes.
    func testBadInputGets4xxAndChangesNothing() throws {
        XCTAssertEqual(try m.create(["name": "keep", "kernel": tick, "cmdline": "slow"]).status, 201)
        try m.waitFor("keep", "running")
        let before = try m.api("GET", "/vms").body
        func refused(_ method: String, _ path: String, _ body: String?, _ status: Int, _ says: String, contentType: String = "application/json",
                     file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try m.api(method, path, body, contentType: contentType)
            XCTAssertEqual(r.status, status, "\(method) \(path) \(body?.prefix(80) ?? ""): \(r.body.prefix(300))", file: file, line: line)
            XCTAssertTrue(r.contentType.hasPrefix("application/problem+json"), "content type \(r.contentType)", file: file, line: line)
            XCTAssertTrue(r.detail.lowercased().contains(says.lowercased()), "'\(r.detail.prefix(300))' does not say '\(says)'", file: file, line: line)
        }
        let k = tick
        try refused("POST", "/vms", #"{"name": "x", "#, 400, "json")
        try refused("POST", "/vms", #"{"name": "x", "kernel": "\#(k)", "colour": "red"}"#, 400, "colour")
        try refused("POST", "/vms", #"{"name": "x", "cpus": "two"}"#, 400, "cpus")
        try refused("POST", "/vms", #"{"name": "x", "memoryMiB": "lots"}"#, 400, "memoryMiB")
        try refused("POST", "/vms", #"{"name": "x", "memoryMiB": 1e30}"#, 400, "json")
        try refused("POST", "/vms", #"{"cpus": 1}"#, 400, "name")
        try refused("POST", "/vms", "{\"name\": \"x\", \"cmdline\": \"" + String(repeating: "a", count: 1 << 20) + "\"}", 413, "1048576")
        for bad in ["a/b", "..", "a\\u0000b", String(repeating: "n", count: 300), ".x", "a b"] {
            try refused("POST", "/vms", #"{"name": "\#(bad)", "kernel": "\#(k)"}"#, 400, "name")
        }
        try refused("POST", "/vms", #"{"name": "x", "kernel": "/nonexistent/vmlinux"}"#, 400, "no such file")
        try refused("POST", "/vms", #"{"name": "x", "kernel": "relative/path"}"#, 400, "absolute")
        try refused("POST", "/vms", #"{"name": "x", "kernel": "\#(k)", "cpus": 0}"#, 400, "cpus")
        try refused("POST", "/vms", #"{"name": "keep", "kernel": "\#(k)"}"#, 409, "exists")
        try refused("POST", "/vms", #"{"name": "x"}"#, 400, "json", contentType: "text/plain")
        try refused("POST", "/vms", #"{"name": "x", "kernel": "\#(k)", "resources": {"cpuReservation": 1000}}"#, 422, "reservation")
        try refused("POST", "/vms/nope/start", nil, 404, "no vm named nope")
        try refused("GET", "/vms/nope", nil, 404, "no vm named nope")
        try refused("DELETE", "/vms/nope", nil, 404, "no vm named nope")
        try refused("POST", "/vms/keep/resume", nil, 409, "not paused")
        try refused("POST", "/vms/keep/start", nil, 409, "running already")
        try refused("POST", "/vms/keep/stop", #"{"timeoutSeconds": -1}"#, 400, "timeoutSeconds")
        try refused("GET", "/nowhere", nil, 404, "no such path")
        try refused("POST", "/vms/keep/clone", #"{"count": 2}"#, 404, "no snapshot")
        XCTAssertEqual(try m.api("GET", "/vms").body, before, "a refused request changed something")

        // Two creates of one name at once: one wins, the other is told why.
        let body = #"{"name": "twin", "kernel": "\#(k)", "cmdline": "slow"}"#
        let statuses = Statuses()
        let harness = self.m!
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            let s = (try? harness.api("POST", "/vms", body).status) ?? 0
            statuses.append(s)
        }
        XCTAssertEqual(statuses.all.sorted(), [201, 409])
        XCTAssertEqual(try m.vms().filter { $0["name"] as? String == "twin" }.count, 1)
    }

    /// skiffd killed (SIGKILL) at random points of create, snapshot, clone
    /// and delete: after each restart, rows, processes, directories and
    /// cgroups agree, and no VM that ran before stopped.
    func testSIGKILLAtRandomPointsLeavesNothingUnexplained() throws {
        let rounds = Int(ProcessInfo.processInfo.environment["SKIFFD_CRASH_ROUNDS"] ?? "") ?? 12
        XCTAssertEqual(try m.create(["name": "base", "kernel": tick, "cmdline": "slow"]).status, 201)
        try m.waitFor("base", "running")
        XCTAssertEqual(try m.api("POST", "/vms/base/snapshots", #"{"name":"s0"}"#).status, 201)
        var adoption: [Double] = []
        var generator = SystemRandomNumberGenerator()
        for round in 0..<rounds {
            let running = Dictionary(uniqueKeysWithValues: try m.vms().compactMap { vm -> (String, Int)? in
                guard vm["observed"] as? String == "running", let pid = vm["pid"] as? Int else { return nil }
                return (vm["name"] as! String, pid)
            })
            // Requests in flight while skiffd dies.
            let ops: [(String, String, String?)] = [
                ("POST", "/vms", #"{"name": "c\#(round)", "kernel": "\#(tick)", "cmdline": "slow"}"#),
                ("POST", "/vms/base/snapshots", #"{"name": "s\#(round + 1)"}"#),
                ("POST", "/vms/base/clone", #"{"count": 2, "snapshot": "s0", "namePrefix": "k\#(round)"}"#),
                ("DELETE", "/vms/c\(round - 1)?force=true", nil),
            ]
            let group = DispatchGroup()
            let m = self.m!
            for op in ops {
                DispatchQueue.global().async(group: group) { _ = try? m.api(op.0, op.1, op.2) }
            }
            usleep(UInt32.random(in: 0...150_000, using: &generator))
            m.crash()
            group.wait()
            let line = try m.start()
            if let ms = line.split(separator: " ").suffix(2).first.flatMap({ Double($0) }) { adoption.append(ms) }
            try assertConsistent(round: round)
            for (name, pid) in running where name != "c\(round - 1)" { // deleted this round
                let vm = try m.vm(name)
                XCTAssertEqual(vm["pid"] as? Int, pid, "round \(round): \(name) did not keep running through skiffd's crash: \(vm)")
            }
        }
        adoption.sort()
        if !adoption.isEmpty {
            print("manager: crash rounds=\(rounds) adoption_ms_median=\(adoption[adoption.count / 2]) max=\(adoption.last!) vms=\(try m.vms().count)")
        }
    }

    func assertConsistent(round: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        // Give the reconcile loop a moment to see VMs that were starting.
        usleep(500_000)
        let vms = try m.vms()
        let ids = Set(vms.compactMap { $0["id"] as? String })
        let launchers = ManagerHarness.launchers(under: m.state + "/vms/")
        XCTAssertEqual(Set(launchers.keys).subtracting(ids), [], "round \(round): VM processes no row explains", file: file, line: line)
        XCTAssertEqual(m.directories(), ids, "round \(round): directories and rows differ", file: file, line: line)
        for vm in vms {
            let id = vm["id"] as! String, state = vm["observed"] as? String ?? ""
            let active = ["starting", "running", "paused", "stopping"].contains(state)
            XCTAssertEqual(launchers[id] != nil, active, "round \(round): \(vm["name"]!) is \(state) but its process \(launchers[id] == nil ? "is gone" : "runs")", file: file, line: line)
            if let pid = vm["pid"] as? Int, active { XCTAssertEqual(launchers[id].map(Int.init), pid, file: file, line: line) }
        }
        let cgroups = ManagerHarness.cgroups()
        let activeIDs = Set(vms.filter { ["starting", "running", "paused", "stopping"].contains($0["observed"] as? String ?? "") }.compactMap { $0["id"] as? String })
        XCTAssertTrue(cgroups.isSubset(of: Set(ids.map { "vm-" + $0 })), "round \(round): cgroups no row explains: \(cgroups)", file: file, line: line)
        _ = activeIDs
    }

    /// `events -f` is a stream skiffd pushes (NDJSON, woken by each commit):
    /// a VM's lifecycle reaches a follower as it happens, in order, with no
    /// poll; the API's plain list still answers; a follower ends with skiffd.
    func testEventsAreStreamedAsTheyHappen() throws {
        let env = ["SKIFFD_SOCKET": m.socket, "SKIFFD_BIN": ManagerHarness.skiffd]
        let follow = try Session(Harness.skiff, ["events", "-f", "--json"], environment: env)
        defer { if follow.isRunning { follow.signal(SIGKILL) } }
        usleep(300_000)
        XCTAssertTrue(follow.isRunning, follow.stderr)
        XCTAssertEqual(try m.create(["name": "ev", "kernel": tick, "cmdline": "slow"]).status, 201)
        XCTAssertTrue(follow.waitFor("\"kind\":\"running\"", timeout: 20), follow.stdout + follow.stderr)
        let t0 = Date()
        XCTAssertEqual(try m.api("POST", "/vms/ev/stop", #"{"timeoutSeconds":5}"#).status, 200)
        XCTAssertTrue(follow.waitFor("\"kind\":\"stopped\"", timeout: 20), follow.stdout + follow.stderr)
        let delay = Date().timeIntervalSince(t0)
        let kinds = follow.stdout.split(separator: "\n").compactMap { line -> String? in
            let e = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return e?["vm"] as? String == "ev" ? e?["kind"] as? String : nil
        }
        XCTAssertEqual(kinds, ["created", "started", "running", "stopping", "stopped"], follow.stdout)
        let seqs = follow.stdout.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["seq"] as? Int
        }
        XCTAssertEqual(seqs, seqs.sorted(), "events out of order")
        XCTAssertEqual(Set(seqs).count, seqs.count, "an event sent twice")
        print("events -f: stop to the stopped event \(Int(delay * 1000)) ms")
        // The raw API: NDJSON with follow, a JSON list without.
        let listed = try m.api("GET", "/events?since=0").object["items"] as? [[String: Any]] ?? []
        XCTAssertEqual(listed.compactMap { $0["seq"] as? Int }.filter { seqs.contains($0) }, seqs)
        m.stop()
        XCTAssertEqual(follow.wait(timeout: 20).status, 0, "events -f goes on after skiffd stopped")
    }

    /// The CLI as a user runs it: `skiff` hands manager commands to skiffd's CLI.
    func testCLI() throws {
        let env = ["SKIFFD_SOCKET": m.socket, "SKIFFD_BIN": ManagerHarness.skiffd]
        func skiff(_ args: [String]) throws -> Harness.Result { try Harness.skiff(args, timeout: 60, environment: env) }
        var r = try skiff(["create", "cli", "--kernel", tick, "--cmdline", "slow", "--label", "app=web", "--restart", "on-failure"])
        XCTAssertEqual(r.status, 0, r.stderr)
        try m.waitFor("cli", "running")
        r = try skiff(["ps", "--json"])
        let list = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
        XCTAssertEqual(list.first?["name"] as? String, "cli", r.stdout + r.stderr)
        r = try skiff(["ps"])
        XCTAssertTrue(r.stdout.hasPrefix("NAME") && r.stdout.contains("cli") && r.stdout.contains("running"), r.stdout)
        XCTAssertTrue(try skiff(["logs", "cli"]).stdout.hasPrefix("TICK-START"))
        // logs -f follows until the VM stops.
        let follow = try Session(Harness.skiff, ["logs", "-f", "cli"], environment: env)
        defer { if follow.isRunning { follow.signal(SIGKILL) } }
        XCTAssertTrue(follow.waitFor("TICK-START", timeout: 20), follow.stdout + follow.stderr)
        XCTAssertEqual(try skiff(["pause", "cli"]).stdout, "cli paused\n")
        XCTAssertEqual(try skiff(["resume", "cli"]).stdout, "cli running\n")
        r = try skiff(["stop", "nope"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("no VM named nope"), r.stderr)
        XCTAssertTrue(follow.isRunning, "logs -f ended while the VM runs")
        XCTAssertEqual(try skiff(["stop", "-t", "5", "cli"]).status, 0)
        try m.waitFor("cli", "stopped")
        XCTAssertEqual(follow.wait(timeout: 20).status, 0, "logs -f goes on after the VM stopped")
        r = try skiff(["usage", "--format", "csv"])
        XCTAssertTrue(r.stdout.hasPrefix("VM,VCPU_S,") && r.stdout.contains("\ncli,"), r.stdout)
        XCTAssertEqual(try skiff(["rm", "cli"]).stdout, "cli\n")
        for command in ["ps", "create", "start", "stop", "kill", "pause", "resume", "rm", "logs", "inspect", "snapshot", "clone", "usage", "events"] {
            r = try skiff([command, "--help"])
            XCTAssertEqual(r.status, 0, "\(command) --help: \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("USAGE: skiff \(command)"), "\(command) --help: \(r.stdout)")
        }
        XCTAssertTrue(try skiff(["--version"]).stdout.hasPrefix("skiff "))
        // Without a skiffd: what to do about it.
        r = try Harness.skiff(["ps"], timeout: 30, environment: ["SKIFFD_SOCKET": m.root + "/none.sock", "SKIFFD_BIN": ManagerHarness.skiffd])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("skiffd is not running"), r.stderr)
    }

    /// attach: the console over a WebSocket, both ways, with two clients at
    /// once; the VM runs on when they go; a plain GET is told to upgrade.
    func testAttachOverAWebSocket() throws {
        XCTAssertEqual(try m.create(["name": "echo", "kernel": Harness.probe("echo")]).status, 201)
        try m.waitFor("echo", "running")
        let env = ["SKIFFD_SOCKET": m.socket, "SKIFFD_BIN": ManagerHarness.skiffd]
        let first = try Session(Harness.skiff, ["attach", "echo"], environment: env)
        let second = try Session(Harness.skiff, ["attach", "echo"], environment: env)
        defer { for s in [first, second] where s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(first.waitFor("ECHO-READY", timeout: 20), "the last of the log comes first: \(first.stdout) \(first.stderr)")
        XCTAssertTrue(second.waitFor("ECHO-READY", timeout: 20), second.stdout + second.stderr)
        first.send("hello from one\n")
        XCTAssertTrue(first.waitFor("HELLO FROM ONE", timeout: 20), "typed keys reach the guest: \(first.stdout) \(first.stderr)")
        XCTAssertTrue(second.waitFor("HELLO FROM ONE", timeout: 20), "every client sees the output: \(second.stdout)")
        second.send("and two\n")
        XCTAssertTrue(first.waitFor("AND TWO", timeout: 20), first.stdout)
        // A client that goes (input ended, then SIGINT) leaves the VM running.
        first.closeInput()
        first.signal(SIGINT)
        _ = first.wait(timeout: 10)
        XCTAssertEqual(try m.api("GET", "/vms/echo").object["observed"] as? String, "running")
        second.send("still here\n")
        XCTAssertTrue(second.waitFor("STILL HERE", timeout: 20), second.stdout)
        XCTAssertTrue(try m.api("GET", "/vms/echo/logs").body.contains("STILL HERE"), "the log has it too")
        let plain = try m.api("GET", "/vms/echo/attach")
        XCTAssertEqual(plain.status, 426, plain.body)
        XCTAssertTrue(plain.detail.contains("WebSocket"), plain.body)
        // The VM stops: the attached client ends by itself.
        XCTAssertEqual(try m.api("POST", "/vms/echo/kill").status, 200)
        let r = second.wait(timeout: 20)
        XCTAssertFalse(second.isRunning, "attach did not end with the VM")
        XCTAssertEqual(r.status, 0, r.stderr)

        try m.waitFor("echo", "stopped")
        var refused = try Harness.skiff(["attach", "echo"], timeout: 30, environment: env)
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("echo is stopped"), refused.stderr)
        refused = try Harness.skiff(["attach", "nope"], timeout: 30, environment: env)
        XCTAssertTrue(refused.stderr.contains("no VM named nope"), refused.stderr)
        XCTAssertEqual(try m.api("GET", "/vms/nope/attach").status, 404)
    }

    /// TCP: TLS with the given certificate, the bearer token always, and
    /// no plain TCP beyond loopback.
    func testTCPWithTLSAndABearerToken() throws {
        m.stop()
        let cert = m.root + "/cert.pem", key = m.root + "/key.pem", token = m.root + "/token"
        let made = try Harness.run("/usr/bin/openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                        "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                                                        "-addext", "subjectAltName=IP:127.0.0.1"], timeout: 30)
        XCTAssertEqual(made.status, 0, made.stderr)
        try "tls-token-for-the-test-\(getpid())".write(toFile: token, atomically: true, encoding: .utf8)
        let port = 19_300 + Int(getpid() % 200)
        func daemon(_ extra: [String]) throws -> Harness.Result {
            try Harness.run(ManagerHarness.skiffd, ["--state-dir", m.state, "--socket", m.socket, "--skiff", Harness.skiff] + extra, timeout: 30)
        }
        var r = try daemon(["--tcp", "0.0.0.0:\(port)", "--token-file", token])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("needs TLS"), r.stderr)
        r = try daemon(["--tcp", "127.0.0.1:\(port)", "--token-file", token, "--tls-cert", token, "--tls-key", key])
        XCTAssertNotEqual(r.status, 0, "a token file is no certificate")
        XCTAssertTrue(r.stderr.contains("--tls-cert"), r.stderr)
        r = try daemon(["--tcp", "127.0.0.1:\(port)", "--token-file", token, "--tls-cert", cert])
        XCTAssertTrue(r.stderr.contains("both --tls-cert and --tls-key"), r.stderr)

        try m.start(extra: ["--tcp", "127.0.0.1:\(port)", "--token-file", token, "--tls-cert", cert, "--tls-key", key])
        func curl(_ args: [String]) throws -> Harness.Result {
            try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"] + args, timeout: 30)
        }
        let url = "https://127.0.0.1:\(port)/v1/vms"
        let bearer = "Authorization: Bearer tls-token-for-the-test-\(getpid())"
        XCTAssertEqual(try curl(["--cacert", cert, "-H", bearer, url]).stdout, "200", "TLS with the token")
        XCTAssertEqual(try curl(["--cacert", cert, url]).stdout, "401", "TLS without the token")
        XCTAssertEqual(try curl(["--cacert", cert, "-H", "Authorization: Bearer wrong-wrong-wrong-wrong", url]).stdout, "401")
        XCTAssertNotEqual(try curl(["-H", bearer, url]).status, 0, "a client that does not trust the certificate must fail")
        XCTAssertNotEqual(try curl(["-H", bearer, "http://127.0.0.1:\(port)/v1/vms"]).stdout, "200", "plain HTTP on the TLS port")
        XCTAssertNotEqual(try curl(["--cacert", cert, "--tls-max", "1.1", "-H", bearer, url]).stdout, "200", "TLS 1.1")
    }

    func testRestartPolicies() throws {
        let failing = Harness.probe("emulation-failure")
        XCTAssertEqual(try m.create(["name": "fails", "kernel": failing, "restartPolicy": "on-failure"]).status, 201)
        XCTAssertEqual(try m.create(["name": "once", "kernel": failing, "restartPolicy": "no"]).status, 201)
        // Backoff: 0.5 s, 1 s, 2 s, ... between attempts.
        let deadline = Date().addingTimeInterval(30)
        var restarts = 0
        while Date() < deadline, restarts < 3 { restarts = try m.vm("fails")["restarts"] as? Int ?? 0; usleep(100_000) }
        XCTAssertGreaterThanOrEqual(restarts, 3, "on-failure did not restart a failing guest")
        let restartedAt = (try m.api("GET", "/events").object["items"] as? [[String: Any]] ?? [])
            .filter { $0["vm"] as? String == "fails" && $0["kind"] as? String == "restarted" }.compactMap { $0["time"] as? Int }
        if restartedAt.count >= 3 {
            let gaps = zip(restartedAt.dropFirst(), restartedAt).map { $0 - $1 }
            XCTAssertGreaterThan(gaps[1], gaps[0], "backoff does not grow: \(gaps) ms")
        }
        let once = try m.vm("once")
        XCTAssertEqual(once["observed"] as? String, "exited")
        XCTAssertEqual(once["restarts"] as? Int, 0)
        XCTAssertEqual(once["exitStatus"] as? Int, 1)
        XCTAssertTrue((once["stopReason"] as? String ?? "").contains("emulation failure"), "\(once)")
        XCTAssertEqual(try m.api("DELETE", "/vms/fails?force=true").status, 204)

        // always: back after the host's VMs and skiffd are all killed.
        XCTAssertEqual(try m.create(["name": "svc", "kernel": tick, "cmdline": "slow", "restartPolicy": "always"]).status, 201)
        let first = try m.waitFor("svc", "running")
        m.crash()
        for (_, pid) in ManagerHarness.launchers(under: m.state + "/vms/") {
            for p in Session.descendants(of: pid) { kill(p, SIGKILL) }
            kill(pid, SIGKILL)
        }
        usleep(300_000)
        try m.start()
        let again = try m.waitFor("svc", "running", timeout: 30)
        XCTAssertNotEqual(again["pid"] as? Int, first["pid"] as? Int)
    }
}

final class Statuses: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int] = []
    func append(_ v: Int) { lock.withLock { values.append(v) } }
    var all: [Int] { lock.withLock { values } }
}
