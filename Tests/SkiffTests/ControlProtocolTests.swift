import SkiffControl
import XCTest

/// The control protocol's grammar (SkiffControl), without a VM.
final class ControlProtocolTests: XCTestCase {
    func parse(_ text: String) -> ControlRequest? { try? ControlRequest.parse(Array(text.utf8)) }

    func testRequestsParseAndRoundTrip() {
        XCTAssertEqual(parse("status"), .status)
        XCTAssertEqual(parse("  pause  "), .pause)
        XCTAssertEqual(parse("snapshot /a/b"), .snapshot(directory: "/a/b", diff: false))
        XCTAssertEqual(parse("snapshot /a/b diff"), .snapshot(directory: "/a/b", diff: true))
        XCTAssertEqual(parse("backup-begin"), .backupBegin)
        XCTAssertEqual(parse("backup-end ok"), .backupEnd(completed: true))
        XCTAssertEqual(parse("backup-end failed"), .backupEnd(completed: false))
        for r: ControlRequest in [.status, .pause, .resume, .stop, .snapshot(directory: "/x/caf\u{e9}", diff: true),
                                  .backupBegin, .backupEnd(completed: true), .backupEnd(completed: false)] {
            XCTAssertEqual(try ControlRequest.parse(Array(r.line.dropLast())), r)
        }
    }

    func testBadRequestsAreRefused() {
        for bad in ["", "status now", "snapshot", "snapshot rel/dir", "snapshot /a full", "snapshot /a diff diff",
                    "snapshot /a\u{7}b", "reboot", "backup-begin now", "backup-end", "backup-end yes", "backup-end ok ok", String(repeating: "s", count: 5000)] {
            XCTAssertNil(parse(bad), bad)
        }
        XCTAssertNil(try? ControlRequest.parse([0x73, 0x6e, 0x61, 0x70, 0x73, 0x68, 0x6f, 0x74, 0x20, 0x2f, 0xff])) // not UTF-8
    }

    func testRepliesAreOneBoundedLine() throws {
        XCTAssertEqual(try ControlReply.parse(Array("ok running".utf8)), .ok("running"))
        XCTAssertEqual(try ControlReply.parse(Array("ok".utf8)), .ok(""))
        XCTAssertEqual(try ControlReply.parse(Array("error no".utf8)), .error("no"))
        XCTAssertNil(try? ControlReply.parse(Array("okay".utf8)))
        XCTAssertEqual(ControlReply.error("a\nb").line, Array("error a?b\n".utf8))
        let long = ControlReply.error(String(repeating: "\u{e9}", count: 5000)).line
        XCTAssertLessThanOrEqual(long.count, ControlReply.maxLine + 1)
        XCTAssertNotNil(String(validating: long, as: UTF8.self), "cut inside a character")
    }
}

final class ControlStatsTests: XCTestCase {
    func testStatsRoundTripAndHostileAnswers() throws {
        var s = ControlStats()
        s.diskReadBytes = 1; s.diskWriteBytes = 2; s.diskReadOps = 3; s.diskWriteOps = 4
        s.netRxBytes = 5; s.netTxBytes = 6; s.netRxPackets = 7; s.netTxPackets = 8
        XCTAssertEqual(try ControlStats.parse(s.text), s)
        XCTAssertEqual(try ControlStats.parse(s.text + " future_counter=9"), s, "unknown keys are a newer VMM's")
        for bad in ["disk_read_bytes", "disk_read_bytes=-1", "disk_read_bytes=1e3", "disk_read_bytes=99999999999999999999999"] {
            XCTAssertThrowsError(try ControlStats.parse(bad), bad)
        }
        XCTAssertEqual(try ControlRequest.parse(Array("stats".utf8)), .stats)
        XCTAssertEqual(try ControlRequest.parse(Array("version".utf8)), .version)
        XCTAssertEqual(ControlRequest.stats.line, Array("stats\n".utf8))
    }
}
