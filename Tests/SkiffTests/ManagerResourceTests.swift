import Foundation
import Glibc
import XCTest

/// skiffd's resource allocation and metering, each against a measure of
/// its own: the VM's cgroup read here, what the probe guest was told to do,
/// and a real Prometheus server scraping skiffd.
final class ManagerResourceTests: XCTestCase {
    var m: ManagerHarness!
    var meter: String { Harness.probe("meter") }

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("skiffd runs VMs jailed: needs root") }
        guard FileManager.default.fileExists(atPath: ManagerHarness.skiffd) else { throw XCTSkip("no skiffd at \(ManagerHarness.skiffd)") }
        m = try ManagerHarness(String(name.split(whereSeparator: { $0 == " " || $0 == "." }).last?.filter { $0.isLetter } ?? "r"))
    }

    override func tearDown() { m?.tearDown() }

    /// CPU seconds the VM's cgroup has counted (v1 cpuacct or v2 cpu.stat).
    static func cgroupCPU(_ id: String) -> Double? {
        if let s = try? String(contentsOfFile: "/sys/fs/cgroup/cpuacct/skiff/vm-\(id)/cpuacct.usage", encoding: .utf8) {
            return Double(s.trimmingCharacters(in: .whitespacesAndNewlines)).map { $0 / 1e9 }
        }
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            guard let s = try? String(contentsOfFile: "\(root)/skiff/vm-\(id)/cpu.stat", encoding: .utf8) else { continue }
            for l in s.split(separator: "\n") where l.hasPrefix("usage_usec ") { return Double(l.dropFirst(11)).map { $0 / 1e6 } }
        }
        return nil
    }

    func burn(_ name: String, _ resources: [String: Any]) throws -> String {
        let r = try m.create(["name": name, "kernel": meter, "cmdline": "burn", "resources": resources])
        XCTAssertEqual(r.status, 201, r.body)
        try m.waitFor(name, "running")
        return r.object["id"] as? String ?? ""
    }

    func testSharesOneToThreeOnOneCoreAndALimitOfHalf() throws {
        // Every VM on host CPU 0: skiffd's affinity is inherited.
        try m.start(prefix: ["/usr/bin/taskset", "-c", "0"])
        let a = try burn("low", ["cpuShares": 100]), b = try burn("high", ["cpuShares": 300])
        usleep(1_000_000)
        let a0 = try XCTUnwrap(Self.cgroupCPU(a)), b0 = try XCTUnwrap(Self.cgroupCPU(b)), t0 = Date()
        usleep(6_000_000)
        let a1 = try XCTUnwrap(Self.cgroupCPU(a)), b1 = try XCTUnwrap(Self.cgroupCPU(b)), wall = Date().timeIntervalSince(t0)
        let low = (a1 - a0) / wall, high = (b1 - b0) / wall
        let share = low / (low + high)
        print("manager: shares 1:3 on one core: low=\(String(format: "%.3f", low)) high=\(String(format: "%.3f", high)) cores, low's part \(String(format: "%.1f", share * 100))%")
        XCTAssertEqual(share, 0.25, accuracy: 0.05, "shares 1:3 gave \(low) and \(high) cores")
        XCTAssertEqual(low + high, 1, accuracy: 0.1, "the two did not fill the core")
        XCTAssertEqual(try m.api("DELETE", "/vms/low?force=true").status, 204)
        XCTAssertEqual(try m.api("DELETE", "/vms/high?force=true").status, 204)

        let c = try burn("half", ["cpuLimit": 0.5])
        usleep(1_000_000)
        let c0 = try XCTUnwrap(Self.cgroupCPU(c)), t1 = Date()
        usleep(6_000_000)
        let used = (try XCTUnwrap(Self.cgroupCPU(c)) - c0) / Date().timeIntervalSince(t1)
        print("manager: cpuLimit 0.5: used \(String(format: "%.3f", used)) cores")
        XCTAssertEqual(used, 0.5, accuracy: 0.05)
    }

    func testAdmissionRefusesReservationsTheHostCannotHold() throws {
        try m.start()
        let host = try m.api("GET", "/host").object
        let cpus = try XCTUnwrap(host["cpus"] as? Int), memory = try XCTUnwrap(host["memoryMiB"] as? Int)
        XCTAssertEqual(try m.create(["name": "a", "kernel": meter, "resources": ["cpuReservation": Double(cpus) - 0.5]]).status, 201)
        var r = try m.create(["name": "b", "kernel": meter, "resources": ["cpuReservation": 1]])
        XCTAssertEqual(r.status, 422, r.body)
        XCTAssertTrue(r.detail.contains("CPU reservations would total \(Double(cpus) + 0.5)"), r.detail)
        r = try m.create(["name": "c", "kernel": meter, "memoryMiB": 64, "resources": ["memoryReservationMiB": memory + 1]])
        XCTAssertEqual(r.status, 422, r.body)
        XCTAssertTrue(r.detail.contains("memory reservations"), r.detail)
        XCTAssertEqual(try m.vms().map { $0["name"] as? String }, ["a"], "a refused VM was kept")
        // Created stopped, it holds nothing; starting it is admitted then.
        XCTAssertEqual(try m.create(["name": "d", "kernel": meter, "start": false, "resources": ["cpuReservation": 1]]).status, 201)
        XCTAssertEqual(try m.api("POST", "/vms/d/start").status, 422)
        XCTAssertEqual(try m.api("POST", "/vms/a/stop").status, 200)
        try m.waitFor("a", "stopped")
        XCTAssertEqual(try m.api("POST", "/vms/d/start").status, 200)
    }

    /// vCPU-seconds against the cgroup's own count, resident memory against
    /// what the guest touched, disk bytes against what it was told to move.
    func testMeteringMatchesIndependentMeasures() throws {
        try m.start()
        let disk = m.root + "/disk.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: disk, contents: nil))
        XCTAssertEqual(truncate(disk, 8 << 20), 0)
        let busy = try burn("busy", ["cpuLimit": 0.3])
        for (name, cmdline) in [("small", "touch=0"), ("big", "touch=96"), ("io", "blkwrite=100 blkread=50")] {
            var fields: [String: Any] = ["name": name, "kernel": meter, "cmdline": cmdline, "memoryMiB": 256]
            if name == "io" { fields["disks"] = [["path": disk]] }
            XCTAssertEqual(try m.create(fields).status, 201)
        }
        for n in ["small", "big", "io"] { try m.waitFor(n, "running") }
        usleep(10_000_000)
        let cgroup = try XCTUnwrap(Self.cgroupCPU(busy))
        let usage = try m.api("GET", "/usage").object["items"] as? [[String: Any]] ?? []
        func u(_ vm: String) -> [String: Any] { usage.first { $0["vm"] as? String == vm } ?? [:] }
        let billed = try XCTUnwrap(u("busy")["vcpuSeconds"] as? Double)
        print("manager: metering: busy billed \(String(format: "%.3f", billed)) vCPU-s, its cgroup counted \(String(format: "%.3f", cgroup)) s")
        XCTAssertEqual(billed, cgroup, accuracy: cgroup * 0.02, "vCPU-seconds differ from the cgroup's count by more than 2%")
        XCTAssertEqual(billed / (u("busy")["secondsRunning"] as? Double ?? 1), 0.3, accuracy: 0.05, "a VM limited to 0.3 CPUs")

        func resident(_ vm: String) -> Double { (u(vm)["memoryGiBSeconds"] as? Double ?? 0) / max(u(vm)["secondsRunning"] as? Double ?? 1, 0.001) * 1024 }
        let extra = resident("big") - resident("small")
        print("manager: metering: big - small resident = \(String(format: "%.1f", extra)) MiB (touched 96 MiB)")
        XCTAssertEqual(extra, 96, accuracy: 96 * 0.05, "resident memory billed for 96 MiB touched")

        let io = u("io")
        XCTAssertEqual(io["diskWriteBytes"] as? Int, 100 * 4096)
        XCTAssertEqual(io["diskReadBytes"] as? Int, 50 * 4096)
        XCTAssertEqual(io["diskWriteOps"] as? Int, 100)
        XCTAssertEqual(io["diskReadOps"] as? Int, 50)
    }

    /// Debian's Prometheus scrapes skiffd over TCP with the bearer token,
    /// and its query API returns the VM's series.
    func testPrometheusScrapesSkiffd() throws {
        let prometheus = "/usr/bin/prometheus"
        guard FileManager.default.isExecutableFile(atPath: prometheus) else { throw XCTSkip("Debian's prometheus is not installed (scripts/deps)") }
        let token = m.root + "/token"
        try "t0k3n-for-the-test-\(getpid())".write(toFile: token, atomically: true, encoding: .utf8)
        let port = 19_000 + Int(getpid() % 500), promPort = port + 1
        try m.start(extra: ["--tcp", "127.0.0.1:\(port)", "--token-file", token])
        _ = try burn("scraped", ["cpuLimit": 0.2])
        let config = """
        global: { scrape_interval: 1s }
        scrape_configs:
          - job_name: skiffd
            metrics_path: /metrics
            authorization: { credentials_file: \(token) }
            static_configs: [ { targets: ["127.0.0.1:\(port)"] } ]
        """
        try config.write(toFile: m.root + "/prometheus.yml", atomically: true, encoding: .utf8)
        let p = try Session(prometheus, ["--config.file=\(m.root)/prometheus.yml", "--storage.tsdb.path=\(m.root)/tsdb",
                                         "--web.listen-address=127.0.0.1:\(promPort)"])
        defer { kill(p.pid, SIGTERM); _ = p.wait(timeout: 20) }
        let deadline = Date().addingTimeInterval(60)
        var answer = ""
        while Date() < deadline {
            answer = (try? Harness.run("/usr/bin/curl", ["-s", "http://127.0.0.1:\(promPort)/api/v1/query?query=skiff_vm_vcpu_seconds_total"], timeout: 10).stdout) ?? ""
            if answer.contains("\"name\":\"scraped\"") { break }
            usleep(500_000)
        }
        XCTAssertTrue(answer.contains("\"name\":\"scraped\""), "Prometheus has no series for the VM: \(answer.prefix(500)) \(p.stderr.suffix(800))")
        let unauthorized = try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/v1/vms"], timeout: 10)
        XCTAssertEqual(unauthorized.stdout, "401", "TCP without the token")
        let wrong = try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer nope", "http://127.0.0.1:\(port)/v1/vms"], timeout: 10)
        XCTAssertEqual(wrong.stdout, "401", "TCP with a wrong token")
    }
}
