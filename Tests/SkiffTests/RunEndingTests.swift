import Foundation
import XCTest

/// How `skiff run` ends, as `docker run` users expect: the status of the
/// command the guest ran, a guest kernel panic as an error with its
/// reason; `--append` to the default command line; and `--config FILE`,
/// a VM described by one JSON document in Firecracker's shape. The `say`
/// probe prints what its command line tells it to, as a guest would.
final class RunEndingTests: XCTestCase {
    var say: String { Harness.probe("say") }

    func testTheGuestCommandsStatusIsSkiffsStatus() throws {
        var r = try Harness.skiff(["run", "--kernel", say, "--cmdline", "say hello skiff:_exit_7 --"])
        XCTAssertEqual(r.status, 7, r.stderr)
        XCTAssertEqual(r.stdout, "hello\nskiff: exit 7\n")
        XCTAssertEqual(r.stderr, "", "a command's status is no error of skiff's")
        // The last one counts (a program may print the line before /init does); nonsense is ignored.
        r = try Harness.skiff(["run", "--kernel", say, "--cmdline", "say skiff:_exit_9 skiff:_exit_3 skiff:_exit_300 skiff:_exit_x skiff:_exit_-1 --"])
        XCTAssertEqual(r.status, 3, r.stdout + r.stderr)
        r = try Harness.skiff(["run", "--kernel", say, "--cmdline", "say nothing_to_report --"])
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func testAGuestKernelPanicIsAnErrorWithItsReason() throws {
        let r = try Harness.skiff(["run", "--kernel", say, "--cmdline",
                                   "say [____1.234567]_Kernel_panic_-_not_syncing:_Attempted_to_kill_init! skiff:_exit_0 --"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "skiff: guest kernel panic: Attempted to kill init!\n")
    }

    func testAppendAddsToTheCommandLine() throws {
        let r = try Harness.skiff(["run", "--kernel", say, "--cmdline", "say one", "--append", "two", "--append", "skiff:_exit_4 --"])
        XCTAssertEqual(r.stdout, "one\ntwo\nskiff: exit 4\n")
        XCTAssertEqual(r.status, 4)
        let help = try Harness.skiff(["run", "--help"])
        XCTAssertTrue(help.stdout.contains("console=ttyS0 reboot=k panic=-1"), "the default command line is shown: \(help.stdout)")
    }

    func testConfigFileInFirecrackersShape() throws {
        let dir = NSTemporaryDirectory() + "skiff-config-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        func config(_ text: String, _ extra: [String] = []) throws -> Harness.Result {
            let file = dir + "/vm.json"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            return try Harness.skiff(["run", "--config", file] + extra)
        }
        let good = """
        {
          "boot-source": { "kernel_image_path": "\(say)", "boot_args": "say from\\u0020the_file skiff:_exit_5 --" },
          "machine-config": { "vcpu_count": 2, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false },
          "drives": [ { "drive_id": "rootfs", "path_on_host": "\(disk)", "is_root_device": false, "is_read_only": true } ],
          "entropy": {},
          "logger": null
        }
        """
        var r = try config(good)
        XCTAssertEqual(r.status, 5, r.stderr)
        XCTAssertEqual(r.stdout, "from\nthe file\nskiff: exit 5\n")
        // Flags after --config override it.
        r = try config(good, ["--cmdline", "say overridden --"])
        XCTAssertEqual(r.stdout, "overridden\n")
        XCTAssertEqual(r.status, 0)

        func refused(_ text: String, _ says: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try config(text)
            XCTAssertEqual(r.status, 2, "\(text.prefix(80)): \(r.stderr)", file: file, line: line)
            XCTAssertTrue(r.stderr.contains(says), "'\(r.stderr)' does not say '\(says)'", file: file, line: line)
            XCTAssertEqual(r.stdout, "", "a refused config ran the guest", file: file, line: line)
        }
        let boot = #""boot-source": {"kernel_image_path": "\#(say)"}"#
        try refused("{\(boot), ", "JSON, line 1")
        try refused("{\(boot)} x", "text after the document")
        try refused(#"{\#(boot), "drives": [{"path_on_host": "\#(disk)", "is_readonly": true}]}"#, "unknown member \"is_readonly\"")
        try refused(#"{\#(boot), "logger": {"log_path": "/tmp/x"}}"#, "\"logger\" is not supported")
        try refused(#"{\#(boot), "machine-config": {"vcpu_count": "2"}}"#, "vcpu_count: expected a whole number")
        try refused(#"{\#(boot), "machine-config": {"vcpu_count": 1.5}}"#, "vcpu_count: expected a whole number")
        try refused(#"{\#(boot), "machine-config": {"mem_size_mib": 01}}"#, "leading zero")
        try refused(#"{\#(boot), "machine-config": {"cpu_template": "T2"}}"#, "cpu_template T2: unknown")
        try refused(#"{\#(boot), "boot-source": {}}"#, "given twice")
        try refused(#"{"boot-source": {"kernel_image_path": "a\ud800"}}"#, "lone surrogate")
        try refused(String(repeating: "[", count: 40) + String(repeating: "]", count: 40), "nested more than 32")
        try refused("{\"x\": \"" + String(repeating: "a", count: 70_000) + "\"}", "larger than 65536 bytes")
        try refused("[1]", "expected an object")
        r = try Harness.skiff(["run", "--config", "/dev/zero"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("larger than"), r.stderr)
    }

    /// On a terminal Ctrl-C reaches the guest (as a byte on its serial
    /// line) and Ctrl-A x stops the VM, as in QEMU. `script` gives skiff a
    /// terminal; the echo probe answers each line in capitals.
    func testOnATerminalCtrlCReachesTheGuestAndCtrlAXStopsTheVM() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/script") else { throw XCTSkip("no script(1)") }
        let s = try Session("/usr/bin/script", ["-qfec", "\(Harness.skiff) run --kernel \(Harness.probe("echo"))", "/dev/null"])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("ECHO-READY", timeout: 20), s.stdout)
        s.send("ab\u{3}c\u{1}\u{1}d\r")
        // The guest got ^C and one ^A as bytes; the terminal shows them escaped.
        XCTAssertTrue(s.waitFor("AB^CC^AD", timeout: 20), s.stdout)
        XCTAssertTrue(s.isRunning, "Ctrl-C stopped the VM")
        s.send("\u{1}x")
        let r = s.wait(timeout: 20)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("stopped from the console (Ctrl-A x)"), r.stdout)
    }
}
