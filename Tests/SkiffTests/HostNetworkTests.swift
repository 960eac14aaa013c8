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
        let s = try Session("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "--kernel", Harness.probe("wait"),
                                             "--net", "tap=tap7,host=10.0.9.1/24,bridge=br7,nat"])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("WAITING", timeout: 10), s.stderr)
        XCTAssertTrue(try ip(ns, ["ip", "-br", "addr", "show", "br7"]).contains("10.0.9.1/24"))
        XCTAssertTrue(try ip(ns, ["ip", "link", "show", "tap7"]).contains("master br7"))
        let rules = try ip(ns, ["nft", "list", "ruleset"])
        XCTAssertTrue(rules.contains("ip saddr 10.0.9.0/24 oifname != \"br7\" masquerade"), rules)
        XCTAssertEqual(try ip(ns, ["cat", "/proc/sys/net/ipv4/ip_forward"]), "1\n")

        s.signal(SIGTERM)
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr) // only "stopped by signal SIGTERM"
        let links = try ip(ns, ["ip", "-br", "link"])
        XCTAssertFalse(links.contains("tap7") || links.contains("br7"), links)
        XCTAssertEqual(try ip(ns, ["nft", "list", "ruleset"]), "")
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
