import Foundation
import XCTest

/// Issue 11: appliance images built from the repository's specs by the real
/// builder (mmdebstrap from Debian's mirror, strace, mkfs.erofs) into a
/// store of the test's own, and booted by `skiff run IMAGE` on the default
/// kernel.
final class ApplianceImageTests: XCTestCase {
    /// One store for the class: an image one test built (each build is a
    /// minute or two: mmdebstrap, a traced run, mkfs.erofs) serves the next.
    static let store = "/tmp/skiff-images-test-\(getpid())"
    var store: String { Self.store }

    override class func setUp() { try? FileManager.default.removeItem(atPath: store) }
    override class func tearDown() { try? FileManager.default.removeItem(atPath: store) }

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("the builder runs mmdebstrap and namespaces: needs root") }
    }

    var environment: [String: String] { ["SKIFF_IMAGES": store, "SKIFFD_BIN": ManagerHarness.skiffd] }

    func spec(_ name: String) -> String { Harness.root.appendingPathComponent("appliances/\(name).yaml").path }

    func build(_ specPath: String) throws -> Harness.Result {
        try Harness.skiff(["appliance", "build", specPath], timeout: 600, environment: environment)
    }

    /// The image's digest, building it from its spec if the store lacks it.
    @discardableResult
    func ensure(_ name: String) throws -> String {
        if let digest = try imageDigest(name) { return digest }
        let r = try build(spec(name))
        XCTAssertEqual(r.status, 0, r.stderr)
        print(r.stderr.split(separator: "\n").filter { $0.contains("trimmed") || $0.contains("KiB") }.joined(separator: "\n"))
        return try imageDigest(name) ?? ""
    }

    func imageDigest(_ name: String) throws -> String? {
        let r = try Harness.skiff(["image", "ls", "--json"], timeout: 30, environment: environment)
        let rows = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [[String: String]] ?? []
        return rows.first { $0["reference"] == name + ":latest" }?["digest"]
    }

    /// Everything the store holds, by path and size.
    func storeContents() -> [String: Int] { Harness.treeSizes(store) }

    func testPythonOneShotPrintsAndExitsWithItsStatusAndBuildsReproducibly() throws {
        let digest = try ensure("python")
        XCTAssertTrue(digest.hasPrefix("sha256:"), digest)

        // One boot (about a minute on this host): the output, the standard
        // library the spec keeps, and the program's status as skiff's.
        var r = try Harness.skiff(["run", "--rm", "--network", "none", "python", "--", "python3", "-c", "import json, sys; print(6*7); print(json.dumps({'a': 1})); sys.exit(3)"],
                              timeout: 300, environment: environment)
        XCTAssertEqual(r.status, 3, "a failing program's status is skiff's: " + r.stdout + r.stderr)
        // The console ends lines with \r\n, one Character in Swift: split on any newline.
        XCTAssertTrue(r.stdout.split(whereSeparator: \.isNewline).contains { $0.trimmingCharacters(in: .whitespaces) == "42" }, r.stdout)
        XCTAssertTrue(r.stdout.contains("{\"a\": 1}"), r.stdout)

        // The same spec and package versions: the same digest.
        r = try build(spec("python"))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(digest), "rebuilt as \(r.stdout), first \(digest)")

        r = try Harness.skiff(["image", "ls"], timeout: 30, environment: environment)
        XCTAssertTrue(r.stdout.contains("python:3.11"), r.stdout)
        r = try Harness.skiff(["run", "nosuch"], timeout: 30, environment: environment)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("no image nosuch"), r.stderr)
    }

    /// nginx in at most 16 MiB, with its files where the spec put them.
    func testNginxImageIsSmall() throws {
        try ensure("nginx")
        let inspect = try Harness.skiff(["image", "inspect", "nginx:1.22"], timeout: 30, environment: environment)
        let manifest = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any] ?? [:]
        let bytes = manifest["rootfsBytes"] as? Int ?? 0
        print("nginx appliance: \(bytes >> 10) KiB of erofs")
        XCTAssertGreaterThan(bytes, 100 << 10)
        XCTAssertLessThanOrEqual(bytes, 16 << 20)
    }

    func netns(_ ns: String, _ args: [String], timeout: Double = 30) throws -> Harness.Result {
        try Harness.run("/usr/sbin/ip", ["netns", "exec", ns] + args, timeout: timeout, environment: environment.merging(["SKIFF_NET_DIR": leases]) { $1 })
    }

    var leases: String { "/tmp/skiff-net-test-\(getpid())" }

    /// nginx and redis at once on Skiff's network in a namespace made for
    /// the test: each gets its own address, and answers on the host's
    /// 127.0.0.1 through its published port; each TAP is an isolated port;
    /// when they stop, the bridge, its NAT, the ports and the leases go.
    func testNginxAndRedisAnswerThroughPublishedPorts() throws {
        try ensure("nginx")
        try ensure("redis")
        let ns = "skiff-appnet-\(getpid())"
        XCTAssertEqual(try Harness.run("/usr/sbin/ip", ["netns", "add", ns]).status, 0)
        defer { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", ns]) }
        _ = try netns(ns, ["ip", "link", "set", "lo", "up"])
        defer { try? FileManager.default.removeItem(atPath: leases) }
        var env = environment
        env["SKIFF_NET_DIR"] = leases

        let bad = try Harness.skiff(["run", "-p", "70000:80", "nginx"], environment: env)
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("-p 70000:80"), bad.stderr)

        let nginx = try Session("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "-p", "8080:80", "nginx"], environment: env)
        let redis = try Session("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "-p", "6379:6379", "redis"], environment: env)
        defer { for vm in [nginx, redis] where vm.isRunning { vm.signal(SIGKILL); _ = vm.wait(timeout: 10) } }

        // A second VM asking for a host port already published is refused.
        let published = Date()
        while Date().timeIntervalSince(published) < 30, !(try netns(ns, ["nft", "list", "ruleset"]).stdout.contains("dport 8080")) {
            Thread.sleep(forTimeInterval: 0.2)
        }
        let taken = try netns(ns, [Harness.skiff, "run", "-p", "8080:80", "nginx"], timeout: 60)
        XCTAssertNotEqual(taken.status, 0)
        XCTAssertTrue(taken.stderr.contains("published by another VM"), taken.stderr)

        let t0 = Date()
        var http = "", pong = ""
        while Date().timeIntervalSince(t0) < 300 && (http != "200" || pong != "+PONG") {
            if http != "200" {
                http = (try netns(ns, ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8080/"])).stdout
            }
            if pong != "+PONG" {
                // The connect waits for a VM still booting (the host knows
                // its MAC and sends the SYN; none comes back until redis
                // listens), so it gets a limit of its own.
                pong = (try netns(ns, ["timeout", "10", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\\r\\n' >&3 && timeout 5 head -c 5 <&3"])).stdout
            }
            if !nginx.isRunning || !redis.isRunning { break }
            Thread.sleep(forTimeInterval: 1)
        }
        print("appliance network: nginx HTTP \(http), redis \(pong), after \(Int(Date().timeIntervalSince(t0))) s")
        XCTAssertEqual(http, "200", nginx.stdout + nginx.stderr)
        XCTAssertEqual(pong, "+PONG", redis.stdout + redis.stderr)
        let page = try netns(ns, ["curl", "-s", "-m", "5", "http://127.0.0.1:8080/"]).stdout
        XCTAssertTrue(page.contains("Skiff appliance: nginx"), page)
        let ports = try netns(ns, ["bridge", "-d", "link", "show"]).stdout
        XCTAssertEqual(ports.components(separatedBy: "master skiff0").count - 1, 2, ports)
        XCTAssertEqual(ports.components(separatedBy: "isolated on").count - 1, 2, ports)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: leases).filter { $0 != "lock" }.count, 2)

        // Each took its ready snapshot once healthy (ReadySnapshot).
        let readyRoot = store + "/ready"
        let snapshotted = Date()
        while Date().timeIntervalSince(snapshotted) < 120,
              ((try? FileManager.default.contentsOfDirectory(atPath: readyRoot)) ?? []).filter({ !$0.contains(".tmp") }).count < 2 {
            Thread.sleep(forTimeInterval: 0.5)
        }
        XCTAssertEqual(((try? FileManager.default.contentsOfDirectory(atPath: readyRoot)) ?? []).filter { !$0.contains(".tmp") }.count, 2,
                       nginx.stderr + redis.stderr)

        for vm in [nginx, redis] { vm.signal(SIGTERM); _ = vm.wait(timeout: 30) }
        XCTAssertFalse(try netns(ns, ["ip", "-br", "link"]).stdout.contains("skiff0"))
        XCTAssertEqual(try netns(ns, ["nft", "list", "ruleset"]).stdout, "")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: leases).filter { $0 != "lock" }, [])

        // Two nginx from the ready snapshot at once: each restored with its
        // own address, MAC and hostname (given by the agent), each
        // answering on its own published port; exec runs in each.
        let names = ["web-a-\(getpid())", "web-b-\(getpid())"]
        let restored = try names.enumerated().map { i, name in
            try Session("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "--name", name, "-p", "\(8081 + i):80", "nginx"], environment: env)
        }
        defer { for vm in restored where vm.isRunning { vm.signal(SIGKILL); _ = vm.wait(timeout: 10) } }
        let r0 = Date()
        var answered = [false, false]
        while Date().timeIntervalSince(r0) < 60 && answered.contains(false) {
            for i in 0..<2 where !answered[i] {
                answered[i] = (try netns(ns, ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(8081 + i)/"])).stdout == "200"
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        print("appliance ready snapshot: two restored nginx answered after \(Int(Date().timeIntervalSince(r0) * 1000)) ms")
        XCTAssertEqual(answered, [true, true], restored.map { $0.stderr }.joined(separator: "\n"))
        for (i, name) in names.enumerated() {
            let said = Date() // the launcher says so once its own health check passed too
            while Date().timeIntervalSince(said) < 10 && !restored[i].stderr.contains("restored from its ready snapshot") { Thread.sleep(forTimeInterval: 0.1) }
            XCTAssertTrue(restored[i].stderr.contains("restored from its ready snapshot"), restored[i].stderr)
            var r = try netns(ns, [Harness.skiff, "exec", name, "--", "/.skiff/busybox", "hostname"], timeout: 30)
            XCTAssertEqual(r.stdout, name + "\n", r.stderr)
            r = try netns(ns, [Harness.skiff, "exec", name, "--", "/.skiff/sh", "-c", "/.skiff/busybox ip -o -4 addr show dev eth0; echo out; echo err >&2; exit 7"], timeout: 30)
            XCTAssertEqual(r.status, 7, r.stderr)
            XCTAssertTrue(r.stdout.contains("out") && r.stderr.contains("err"), r.stdout + r.stderr)
            XCTAssertEqual(r.stdout.components(separatedBy: "inet ").count - 1, 1, "one address on eth0: " + r.stdout)
        }
        let a = try netns(ns, [Harness.skiff, "exec", names[0], "--", "/.skiff/busybox", "ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        let b = try netns(ns, [Harness.skiff, "exec", names[1], "--", "/.skiff/busybox", "ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        XCTAssertNotEqual(a, b, "both restored VMs have one address")
        // skiff cp: a file into the VM and out again, and a missing one
        // leaving the host's path as it was.
        let local = "/tmp/skiff-cp-\(getpid())"
        try "from the host\n".write(toFile: local + ".in", atomically: true, encoding: .utf8)
        defer { for f in [".in", ".out", ".missing"] { try? FileManager.default.removeItem(atPath: local + f) } }
        XCTAssertEqual(try Harness.skiff(["cp", local + ".in", names[0] + ":/tmp/copied"], timeout: 30, environment: env).status, 0)
        XCTAssertEqual(try netns(ns, [Harness.skiff, "exec", names[0], "--", "/.skiff/busybox", "cat", "/tmp/copied"]).stdout, "from the host\n")
        var cp = try Harness.skiff(["cp", names[0] + ":/proc/sys/kernel/hostname", local + ".out"], timeout: 30, environment: env)
        XCTAssertEqual(cp.status, 0, cp.stderr)
        XCTAssertEqual(try String(contentsOfFile: local + ".out", encoding: .utf8), names[0] + "\n")
        cp = try Harness.skiff(["cp", names[0] + ":/no/such/file", local + ".missing"], timeout: 30, environment: env)
        XCTAssertEqual(cp.status, 1)
        XCTAssertTrue(cp.stderr.contains("/no/such/file"), cp.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: local + ".missing"))
        // exec's round trip: `true`, 20 times (bench/appliance measures 100).
        var times: [Double] = []
        for _ in 0..<20 {
            let t = Date()
            XCTAssertEqual(try netns(ns, [Harness.skiff, "exec", names[0], "--", "/.skiff/busybox", "true"]).status, 0)
            times.append(Date().timeIntervalSince(t) * 1000)
        }
        print("appliance exec true: median \(Int(times.sorted()[10])) ms of 20 (with ip netns exec)")
        // An interactive session with a terminal, driven through tmux:
        // type a command, read its output, exit with a status.
        let tmux = "skiff-exec-\(getpid())"
        _ = try Harness.run("/usr/bin/tmux", ["new-session", "-d", "-s", tmux, "-x", "120", "-y", "30",
                                              "ip netns exec \(ns) \(Harness.skiff) exec -it \(names[1]) -- /.skiff/sh; echo exec-ended-$?; sleep 30"])
        defer { _ = try? Harness.run("/usr/bin/tmux", ["kill-session", "-t", tmux]) }
        func pane() throws -> String { try Harness.run("/usr/bin/tmux", ["capture-pane", "-p", "-t", tmux]).stdout }
        func waitPane(_ text: String) throws -> Bool {
            let t = Date()
            while Date().timeIntervalSince(t) < 30 { if try pane().contains(text) { return true }; Thread.sleep(forTimeInterval: 0.2) }
            return false
        }
        _ = try Harness.run("/usr/bin/tmux", ["send-keys", "-t", tmux, "echo tty-$((6*7)) $(/.skiff/busybox tty)", "Enter"])
        XCTAssertTrue(try waitPane("tty-42 /dev/pts/"), (try? pane()) ?? "")
        _ = try Harness.run("/usr/bin/tmux", ["send-keys", "-t", tmux, "exit 5", "Enter"])
        XCTAssertTrue(try waitPane("exec-ended-5"), (try? pane()) ?? "")
        XCTAssertEqual(try netns(ns, [Harness.skiff, "exec", "nosuch-vm", "--", "true"]).status, 1)
        XCTAssertEqual(try netns(ns, [Harness.skiff, "exec", names[0], "--", "no-such-program"]).status, 127)
        for vm in restored { vm.signal(SIGTERM); _ = vm.wait(timeout: 30) }
    }

    func testBadSpecsChangeNothing() throws {
        try ensure("python")
        let before = storeContents()
        let dir = "/tmp/skiff-bad-specs-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A package of the user's own whose postinst fails (dpkg-deb), given by its path.
        let pkg = dir + "/failing"
        try FileManager.default.createDirectory(atPath: pkg + "/DEBIAN", withIntermediateDirectories: true)
        try "Package: skiff-failing-postinst\nVersion: 1\nArchitecture: all\nMaintainer: Skiff <skiff@example.org>\nDescription: fails on purpose\n"
            .write(toFile: pkg + "/DEBIAN/control", atomically: true, encoding: .utf8)
        try "#!/bin/sh\necho skiff-postinst-says-no >&2\nexit 1\n".write(toFile: pkg + "/DEBIAN/postinst", atomically: true, encoding: .utf8)
        chmod(pkg + "/DEBIAN/postinst", 0o755)
        XCTAssertEqual(try Harness.run("/usr/bin/dpkg-deb", ["--root-owner-group", "--build", pkg, dir + "/failing.deb"]).status, 0)
        let cases = [
            ("malformed", "name: [unclosed\n", "not YAML"),
            ("unknown-package", "name: nopkg\ncommand: [true]\npackages: [skiff-no-such-package]\n", "skiff-no-such-package"),
            // Debian's sysvinit-core Conflicts: systemd-sysv; apt refuses before it downloads.
            ("conflicting", "name: clash\ncommand: [true]\npackages: [sysvinit-core, systemd-sysv]\n", "Conflicts"),
            ("failing-maintainer-script", "name: broken\ncommand: [true]\npackages: [./failing.deb]\n", "post-installation script"),
            ("never-healthy", "name: sick\ncommand: [sleep, \"600\"]\nhealth: {tcp: 9}\n", "health check never passed"),
        ]
        for (name, text, expected) in cases {
            let path = dir + "/\(name).yaml"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let r = try build(path)
            XCTAssertNotEqual(r.status, 0, name)
            XCTAssertTrue(r.stderr.contains(expected), "\(name): \(r.stderr.suffix(1500))")
            let after = storeContents()
            let changed = Set(after.keys).symmetricDifference(before.keys).union(after.keys.filter { before[$0] != nil && before[$0] != after[$0] })
            XCTAssertTrue(changed.isEmpty, "\(name) changed the store: \(changed.count) paths, " + changed.sorted().prefix(5).joined(separator: ", "))
        }
    }
}
