@testable import Skiffd
import XCTest

/// Names become directory entries and URL path segments: these must never pass.
final class NamesTests: XCTestCase {
    func testAcceptsDockerStyleNames() {
        for n in ["a", "web-1", "db_2.prod", "A9", String(repeating: "x", count: 63)] { XCTAssertNil(Names.problem(n), n) }
    }

    func testRefusesPathsControlBytesAndLongNames() {
        for n in ["", "/", "a/b", "..", ".hidden", "-flag", "a\u{0}b", "a b", "a\nb", String(repeating: "x", count: 64),
                  String(repeating: "é", count: 10), "semi;colon"] {
            XCTAssertNotNil(Names.problem(n), "accepted \(n.debugDescription)")
        }
        XCTAssertEqual(Names.problem("a\u{0}b"), "the name has byte 0x00; only letters, digits, '_', '.' and '-' are allowed")
    }
}
