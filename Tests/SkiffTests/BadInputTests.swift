import Foundation
import XCTest

/// Every mistake in what a user gives: exit status 2, one line on stderr
/// naming the problem, no crash.
final class BadInputTests: XCTestCase {
    func expectUsageError(_ args: [String], _ needle: String, environment: [String: String]? = nil,
                          file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try Harness.skiff(["run"] + args, timeout: 30, environment: environment)
        XCTAssertEqual(r.status, 2, "\(args): \(r.stderr)", file: file, line: line)
        XCTAssertFalse(r.signaled, file: file, line: line)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(needle), "expected '\(needle)' in: \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stdout, "", file: file, line: line)
    }

    var null: String { Harness.probe("null") }

    func testMissingEmptyAndRandomKernels() throws {
        try expectUsageError(["--kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux: No such file")
        try expectUsageError(["--kernel", Harness.temporaryFile("empty", [])], "empty file")
        var g = SystemRandomNumberGenerator()
        let random = (0..<65536).map { _ in UInt8.random(in: 0...255, using: &g) }
        try expectUsageError(["--kernel", Harness.temporaryFile("random", random)], "not an ELF or bzImage")
        try expectUsageError(["--kernel", "/tmp"], "not a regular file")
    }

    func testBrokenElfs() throws {
        let elf = [UInt8](try Data(contentsOf: URL(fileURLWithPath: null)))
        try expectUsageError(["--kernel", Harness.temporaryFile("cut.elf", Array(elf.prefix(100)))], "cut short")
        try expectUsageError(["--kernel", Harness.temporaryFile("cut2.elf", Array(elf.prefix(40)))], "cut short")
        var far = elf
        let paddr = 64 + 24 // first program header's p_paddr
        withUnsafeBytes(of: UInt64(0x4000_0000).littleEndian) { for (i, b) in $0.enumerated() { far[paddr + i] = b } }
        try expectUsageError(["--kernel", Harness.temporaryFile("far.elf", far), "--memory", "64"], "outside guest memory")
    }

    func testBrokenBzImages() throws {
        let bz = [UInt8](try Data(contentsOf: URL(fileURLWithPath: try Harness.kernelDirectory() + "/bzImage")))
        var badFlag = bz
        badFlag[0x1fe] = 0
        try expectUsageError(["--kernel", Harness.temporaryFile("flag.bz", badFlag)], "boot flag")
        var badMagic = bz
        badMagic[0x205] = UInt8(ascii: "X")
        try expectUsageError(["--kernel", Harness.temporaryFile("magic.bz", badMagic)], "bad magic")
        var old = bz
        old[0x206] = 0x09; old[0x207] = 0x02
        try expectUsageError(["--kernel", Harness.temporaryFile("old.bz", old)], "boot protocol 2.09 is older than 2.10")
        try expectUsageError(["--kernel", Harness.temporaryFile("cut.bz", Array(bz.prefix(bz.count / 2)))], "cut short")
    }

    func testInitrdLargerThanGuestMemory() throws {
        let path = try Harness.temporaryFile("big.initrd", [])
        XCTAssertEqual(truncate(path, 40 << 20), 0)
        try expectUsageError(["--kernel", null, "--initrd", path, "--memory", "32"], "does not fit in guest memory")
        XCTAssertEqual(truncate(path, 30 << 20), 0) // smaller than memory, no room beside the kernel's floor
        try expectUsageError(["--kernel", null, "--initrd", path, "--memory", "31"], "does not fit in guest memory")
    }

    func testMemoryAndCPUCounts() throws {
        try expectUsageError(["--kernel", null, "--memory", "0"], "--memory 0")
        try expectUsageError(["--kernel", null, "--memory", "100000000"], "more than this host has")
        try expectUsageError(["--kernel", null, "--memory", "lots"], "not a number")
        try expectUsageError(["--kernel", null, "--cpus", "0"], "--cpus 0")
        try expectUsageError(["--kernel", null, "--cpus", "255"], "--cpus 255")
        try expectUsageError(["--kernel", null, "--cpu-template", "nehalem"], "unknown")
        try expectUsageError(["--kernel", null, "--bogus"], "unknown option --bogus")
    }

    func testCommandLineLongerThanTheKernelAccepts() throws {
        try expectUsageError(["--kernel", null, "--cmdline", String(repeating: "a", count: 3000)], "accepts at most 2048")
    }

    func testKVMDeviceMissingOrNotPermitted() throws {
        try expectUsageError(["--kernel", null], "/nonexistent/kvm: No such file", environment: ["SKIFF_KVM_DEVICE": "/nonexistent/kvm"])
        // As an unprivileged user /dev/kvm (0600 root) is not permitted.
        let r = try Harness.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Harness.skiff, "run", "--kernel", null])
        if geteuid() != 0 { throw XCTSkip("needs root to drop privileges") }
        let kvmMode = (try FileManager.default.attributesOfItem(atPath: "/dev/kvm")[.posixPermissions] as? Int) ?? 0
        if kvmMode & 0o006 != 0 { throw XCTSkip("/dev/kvm is open to everyone here") }
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("Permission denied"), r.stderr)
    }

    func testBadDisks() throws {
        try expectUsageError(["--kernel", null, "--disk", "/nonexistent/disk.img"], "disk /nonexistent/disk.img: No such file")
        try expectUsageError(["--kernel", null, "--disk", "/tmp"], "disk /tmp: Is a directory")
        try expectUsageError(["--kernel", null, "--disk", null + ",bogus"], "unknown option 'bogus'")
        try expectUsageError(["--kernel", null, "--disk", null + ",id=" + String(repeating: "x", count: 21)], "longer than 20 bytes")
    }

    func testBadVsock() throws {
        try expectUsageError(["--kernel", null, "--vsock", "cid=2,socket=/tmp/x.sock"], "guest CIDs start at 3")
        try expectUsageError(["--kernel", null, "--vsock", "cid=5"], "needs cid=N and socket=PATH")
        try expectUsageError(["--kernel", null, "--vsock", "cid=5,socket=/etc/passwd"], "exists and is not a socket")
        try expectUsageError(["--kernel", null, "--vsock", "cid=5,socket=/nonexistent/dir/x.sock"], "No such file")
    }

    func testBadNet() throws {
        try expectUsageError(["--kernel", null, "--net", "mac=52:54:00:12:34:56"], "needs tap=NAME")
        try expectUsageError(["--kernel", null, "--net", "tap=t0,mac=01:00:00:00:00:01"], "bad unicast MAC")
        try expectUsageError(["--kernel", null, "--net", "tap=" + String(repeating: "t", count: 20)], "not an interface name")
        // Names reach ip and nft: nothing a tool could read as syntax.
        try expectUsageError(["--kernel", null, "--net", "tap=t0;x"], "not an interface name")
        try expectUsageError(["--kernel", null, "--net", "tap=-x"], "not an interface name")
        try expectUsageError(["--kernel", null, "--net", "tap=t0,bridge=br 0"], "not an interface name")
        try expectUsageError(["--kernel", null, "--net", "tap=t0,host=10.0.0.1/24 drop"], "not an IPv4")
        // The default MAC counts --net options: 200 of them used to trap.
        try expectUsageError(["--kernel", null] + (0..<200).flatMap { ["--net", "tap=t\($0)"] }, "too many virtio devices")
    }

    func testUnknownCommand() throws {
        let r = try Harness.skiff(["launch"])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
    }
}
