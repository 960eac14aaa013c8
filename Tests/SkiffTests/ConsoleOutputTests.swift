import Foundation
import XCTest

/// Guest serial output on the host (finding 10): escaped on a terminal,
/// the guest's bytes exactly through a pipe. probes/escapes.S prints the
/// sequences.
final class ConsoleOutputTests: XCTestCase {
    let escapes = "\u{1b}]0;owned\u{07}|\u{1b}[2J|"

    func testControlSequencesAreEscapedOnATerminal() throws {
        // script(1) gives skiff a pseudo-terminal as stdout (and stdin).
        let r = try Harness.run("/usr/bin/script", ["-qec", "\(Harness.skiff) run --kernel \(Harness.probe("escapes"))", "/dev/null"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        let bytes = Array(r.stdout.utf8)
        guard let start = r.stdout.range(of: "ESC-START"), let end = r.stdout.range(of: "ESC-END") else {
            return XCTFail("no probe output: \(r.stdout.debugDescription)")
        }
        let line = String(r.stdout[start.upperBound..<end.lowerBound])
        XCTAssertEqual(line, "\r\n^[]0;owned^G|^[[2J|\\x9b2J|\\xc2\\x9b|\\x80|^?|caf\u{e9}\tx\u{8}y\r\n")
        XCTAssertFalse(bytes.contains(0x1b), "a raw ESC reached the terminal: \(r.stdout.debugDescription)")
    }

    func testFileGetsTheGuestsBytesUnchanged() throws {
        let file = try Harness.temporaryFile("escapes.out", [])
        let r = try Harness.run("/bin/sh", ["-c", "exec \(Harness.skiff) run --kernel \(Harness.probe("escapes")) > \(file)"], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        let expected: [UInt8] = Array("ESC-START\n".utf8) + Array(escapes.utf8) + [0x9b] + Array("2J|".utf8) + [0xc2, 0x9b, 0x7c, 0x80, 0x7c, 0x7f, 0x7c]
            + Array("caf".utf8) + [0xc3, 0xa9] + Array("\tx\u{8}y\nESC-END\n".utf8)
        XCTAssertEqual(out, expected, String(decoding: out, as: UTF8.self).debugDescription)
    }
}
