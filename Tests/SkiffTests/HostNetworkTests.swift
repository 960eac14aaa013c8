import Foundation
import XCTest

/// `--net` host set-up: TAP, address, bridge and NAT made for the VM and
/// gone when it stops. In a network namespace made for the test.
final class HostNetworkTests: XCTestCase {
    func ip(_ ns: String, _ args: [String]) throws -> String {
        try Harness.run("/usr/sbin/ip", ["netns", "exec", ns] + args).stdout
    }

    func testTapBridgeAndNATAreMadeAndRemoved() throws {
        let ns = "skiff-hn-\(getpid())"
        XCTAssertEqual(try Harness.run("/usr/sbin/ip", ["netns", "add", ns]).status, 0)
        defer { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", ns]) }
        // ip and nft are run by absolute path: a look-alike first in PATH is never run.
        let decoys = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-decoys-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: decoys, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: decoys) }
        for tool in ["ip", "nft"] {
            FileManager.default.createFile(atPath: decoys + "/" + tool, contents: Data("#!/bin/sh\ntouch \(decoys)/ran-\(tool)\nexit 0\n".utf8),
                                           attributes: [.posixPermissions: 0o755])
        }
        let s = try Session("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "--kernel", Harness.probe("wait"),
                                             "--net", "tap=tap7,host=10.0.9.1/24,bridge=br7,nat"],
                            environment: ["PATH": decoys + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin")])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("WAITING", timeout: 10), s.stderr)
        XCTAssertTrue(try ip(ns, ["ip", "-br", "addr", "show", "br7"]).contains("10.0.9.1/24"))
        XCTAssertTrue(try ip(ns, ["ip", "link", "show", "tap7"]).contains("master br7"))
        let rules = try ip(ns, ["nft", "list", "ruleset"])
        XCTAssertTrue(rules.contains("ip saddr 10.0.9.0/24 oifname != \"br7\" masquerade"), rules)
        XCTAssertEqual(try ip(ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]), "1\n")
        // On the bridge the guest may send only with its own MAC.
        XCTAssertTrue(rules.contains("iifname \"tap7\" ether saddr != 52:54:00:12:34:56 drop"), rules)
        XCTAssertFalse(FileManager.default.fileExists(atPath: decoys + "/ran-ip") || FileManager.default.fileExists(atPath: decoys + "/ran-nft"),
                       "a tool was found through PATH")

        s.signal(SIGTERM)
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr) // only "stopped by signal SIGTERM"
        let links = try ip(ns, ["ip", "-br", "link"])
        XCTAssertFalse(links.contains("tap7") || links.contains("br7"), links)
        XCTAssertEqual(try ip(ns, ["nft", "list", "ruleset"]), "")
        XCTAssertEqual(try ip(ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]), "0\n", "ip_forward left behind")
    }

    /// VMs (clones) sharing a bridge: both start though they race to make
    /// it, and it stays until the last one stops.
    func testVMsShareABridgeUntilTheLastStops() throws {
        let ns = "skiff-hn3-\(getpid())"
        XCTAssertEqual(try Harness.run("/usr/sbin/ip", ["netns", "add", ns]).status, 0)
        defer { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", ns]) }
        let vms = try (0..<2).map { i in
            try Session("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "--kernel", Harness.probe("wait"),
                                         "--net", "tap=shtap\(i),bridge=shbr,mac=52:54:00:00:00:0\(i + 1)"])
        }
        defer { vms.forEach { $0.signal(SIGKILL) } }
        for vm in vms { XCTAssertTrue(vm.waitFor("WAITING", timeout: 10), vm.stderr) }
        vms[0].signal(SIGTERM)
        XCTAssertEqual(vms[0].wait(timeout: 10).status, 0)
        let links = try ip(ns, ["ip", "-br", "link"])
        XCTAssertTrue(links.contains("shbr"), "the bridge went with the first VM: \(links)")
        XCTAssertTrue(try ip(ns, ["ip", "link", "show", "shtap1"]).contains("master shbr"))
        vms[1].signal(SIGTERM)
        XCTAssertEqual(vms[1].wait(timeout: 10).status, 0)
        XCTAssertFalse(try ip(ns, ["ip", "-br", "link"]).contains("shbr"), "the bridge outlived its last VM")
    }

    func testNATWithoutAnAddressIsRefused() throws {
        let ns = "skiff-hn2-\(getpid())"
        XCTAssertEqual(try Harness.run("/usr/sbin/ip", ["netns", "add", ns]).status, 0)
        defer { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", ns]) }
        let r = try Harness.run("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "--kernel", Harness.probe("wait"),
                                                 "--net", "tap=tap8,bridge=br8,nat"])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertTrue(r.stderr.contains("nat needs host=ADDRESS/PREFIX"), r.stderr)
        let links = try ip(ns, ["ip", "-br", "link"])
        XCTAssertFalse(links.contains("br8"), "the bridge made before the error was not removed: \(links)")
    }
}
