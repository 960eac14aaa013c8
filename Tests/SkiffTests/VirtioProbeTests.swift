import Foundation
import XCTest

/// virtio devices driven from CPL3 by probe guests (probes/*.c), polling.
final class VirtioProbeTests: XCTestCase {
    func image(_ name: String, bytes: Int, fill: UInt8 = 0) throws -> String {
        try Harness.temporaryFile(name, [UInt8](repeating: fill, count: bytes))
    }

    func testBlockWriteReadFlushIDAndReadOnlyDisk() throws {
        let rw = try image("rw.img", bytes: 8 << 20)
        let ro = try image("ro.img", bytes: 1 << 20, fill: 0x5a)
        // strace shows the guest's flush reaching the host file as fdatasync.
        let trace = rw + ".strace"
        let r = try Harness.run("/usr/bin/strace", ["-f", "-qq", "-e", "trace=fdatasync", "-o", trace,
                                                    Harness.skiff, "run", "--kernel", Harness.probe("blk"),
                                                    "--disk", rw + ",id=skiff-disk0", "--disk", ro + ",ro"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for line in ["BLK-CAPACITY 16384", "BLK-WRITE 00", "BLK-READ 00", "BLK-COMPARE OK", "BLK-FLUSH 00",
                     "BLK-GETID 00", "BLK-ID skiff-disk0", "BLK-RANGE 01", "BLK-FILL 00", "BLK-WRITE-ZEROES 00",
                     "BLK-DISCARD 00", "BLK-READ-ZEROES 00", "BLK-ZEROED OK", "BLK-UNSUPPORTED 02",
                     "BLK-DISCARD-2SEG 01", "BLK-WRITE-ZEROES-2SEG 01", "BLK-MAX-WRITE-ZEROES 2048",
                     "BLK-WRITE-ZEROES-BIG 01", "BLK-WRITE-ZEROES-MAX 00",
                     "BLK-RO-FEATURE 01", "BLK-RO-WRITE 01", "BLK-RO-READ 00", "BLK-DONE"] {
            XCTAssertTrue(r.stdout.contains(line + "\n"), "missing \(line) in:\n\(r.stdout)")
        }
        // The host sees exactly the bytes the guest wrote, where it wrote them.
        let disk = [UInt8](try Data(contentsOf: URL(fileURLWithPath: rw)))
        XCTAssertEqual(Array(disk[4096..<8192]), (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) })
        // Sectors 16-31 were written, then zeroed (write-zeroes) and punched (discard).
        XCTAssertTrue(disk[0..<4096].allSatisfy { $0 == 0 } && disk[8192...].allSatisfy { $0 == 0 })
        XCTAssertTrue(try Data(contentsOf: URL(fileURLWithPath: ro)).allSatisfy { $0 == 0x5a }, "read-only disk changed")
        let syscalls = try String(contentsOfFile: trace, encoding: .utf8)
        XCTAssertTrue(syscalls.contains("fdatasync("), "flush did not reach the file: \(syscalls)")
    }

    /// O_DIRECT needs a filesystem that has it (tmpfs does not): /var/tmp.
    func testBlockWithODirect() throws {
        let path = "/var/tmp/skiff-direct-\(getpid()).img"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(count: 8 << 20)))
        defer { unlink(path) }
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("blk"), "--disk", path + ",direct,id=direct"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("BLK-COMPARE OK\nBLK-FLUSH 00\n"), r.stdout)
        let disk = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(Array(disk[4096..<8192]), (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) })
    }

    func testEntropyDeviceReturnsFreshBytes() throws {
        var seen: Set<String> = []
        for _ in 0..<2 {
            let r = try Harness.skiff(["run", "--kernel", Harness.probe("rng"), "--rng"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let fields = r.stdout.split(separator: " ")
            XCTAssertEqual(fields.count, 3, r.stdout)
            XCTAssertEqual(fields[1], "64")
            let hex = fields[2].trimmingCharacters(in: .newlines)
            XCTAssertEqual(hex.count, 128)
            XCTAssertNotEqual(hex, String(repeating: "0", count: 128))
            seen.insert(hex)
        }
        XCTAssertEqual(seen.count, 2, "two guests got the same bytes")
    }

    /// One hostile probe per rule of the virtqueue walker: Skiff stays up,
    /// the device reports NEEDS_RESET with one log line, the VM's other
    /// device keeps working, and the image holds only the valid write.
    func testEveryBrokenChainBreaksOnlyItsDevice() throws {
        let rules = ["loop": "longer than the queue", "oob-addr": "not in guest RAM", "huge-len": "not in guest RAM",
                     "bad-head": "chain head", "bad-next": "next descriptor", "bad-indirect": "indirect table",
                     "nested-indirect": "inside an indirect table", "zero-len": "zero-length",
                     "avail-jump": "available index jumped", "overlap": "overlaps"]
        for (mode, reason) in rules.sorted(by: { $0.key < $1.key }) {
            let disk = try image("hostile-\(mode).img", bytes: 1 << 20)
            let r = try Harness.skiff(["run", "--kernel", Harness.probe("vq-hostile"), "--disk", disk, "--rng", "--cmdline", mode])
            XCTAssertEqual(r.status, 0, "\(mode): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("VALID-WRITE 00\n"), "\(mode): \(r.stdout)")
            XCTAssertTrue(r.stdout.contains("STATUS 4f\n"), "\(mode): no NEEDS_RESET: \(r.stdout)")
            XCTAssertTrue(r.stdout.contains("OTHER-DEVICE OK\n"), "\(mode): \(r.stdout)")
            XCTAssertEqual(r.stderrLines.count, 1, "\(mode): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(reason) && r.stderr.contains("needs reset"), "\(mode): \(r.stderr)")
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: disk)))
            XCTAssertTrue(bytes[0..<512].allSatisfy { $0 == 0xab }, "\(mode): valid write missing")
            XCTAssertTrue(bytes[512...].allSatisfy { $0 == 0 }, "\(mode): image changed outside the valid write")
        }
    }

    func testNotificationStormIsHarmless() throws {
        let disk = try image("storm.img", bytes: 1 << 20)
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("vq-hostile"), "--disk", disk, "--rng", "--cmdline", "storm"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.components(separatedBy: "VALID-WRITE 00\n").count, 3, r.stdout)
        XCTAssertTrue(r.stdout.contains("OTHER-DEVICE OK\n"), r.stdout)
        XCTAssertEqual(r.stderr, "")
    }

    /// A balloon driver that enables only the two required queues and
    /// notifies queues 2 and 3 (which it does not have): ignored, the
    /// balloon and the VM's other device go on serving.
    func testBalloonIgnoresNotifiesForQueuesNotEnabled() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("balloon-hostile"), "--balloon", "--rng"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for line in ["BALLOON-INFLATE OK", "STATUS 0f", "OTHER-DEVICE OK", "BALLOON-DONE"] {
            XCTAssertTrue(r.stdout.contains(line + "\n"), "missing \(line) in:\n\(r.stdout)")
        }
        XCTAssertEqual(r.stderr, "")
    }
}
