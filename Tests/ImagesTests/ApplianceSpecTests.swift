import Images
import XCTest

/// The spec's parser: pure logic (the builder's real runs are in SkiffTests/ApplianceImageTests).
final class ApplianceSpecTests: XCTestCase {
    func testTheRepositorysSpecsParse() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("appliances")
        for name in ["nginx", "redis", "python"] {
            let text = try String(contentsOf: dir.appendingPathComponent("\(name).yaml"), encoding: .utf8)
            let spec = try ApplianceSpec.parse(text, source: name)
            XCTAssertEqual(spec.name, name)
            XCTAssertFalse(spec.command.isEmpty)
        }
        let nginx = try ApplianceSpec.parse(try String(contentsOf: dir.appendingPathComponent("nginx.yaml"), encoding: .utf8))
        XCTAssertEqual(nginx.health, .http(port: 80, path: "/", status: 200))
        XCTAssertEqual(nginx.ports, [80])
    }

    func testDefaults() throws {
        let s = try ApplianceSpec.parse("name: hello\ncommand: [echo, hi]\n")
        XCTAssertEqual(s.version, "latest")
        XCTAssertEqual(s.user, "root")
        XCTAssertEqual(s.workdir, "/")
        XCTAssertEqual(s.cpus, 1)
        XCTAssertEqual(s.memory, 128)
        XCTAssertNil(s.health)
    }

    /// Each bad spec gets a message naming what to change.
    func testBadSpecsAreRefusedWithAClearMessage() {
        let cases: [(String, String)] = [
            ("name: [unclosed\n", "not YAML"),
            ("- a\n- b\n", "must be a mapping"),
            ("name: x\n", "'command' is missing"),
            ("name: x\ncommand: [a]\npackages: [nginx]\npakages: [x]\n", "unknown field 'pakages'"),
            ("name: Bad/Name\ncommand: [a]\n", "name 'Bad/Name'"),
            ("name: x\ncommand: [a]\npackages: [\"nginx; rm -rf /\"]\n", "not a Debian package name"),
            ("name: x\ncommand: [a]\npackages: [\"-oAPT::x\"]\n", "not a Debian package name"),
            ("name: x\ncommand: [a]\nfiles: {\"../etc/passwd\": x}\n", "an absolute path"),
            ("name: x\ncommand: [a]\nfiles: {\"/etc/../../x\": x}\n", "an absolute path"),
            ("name: x\ncommand: [a]\nvolumes: [relative]\n", "an absolute path"),
            ("name: x\ncommand: [a]\nports: [0]\n", "port 0"),
            ("name: x\ncommand: [a]\nports: [80, 80]\n", "listed twice"),
            ("name: x\ncommand: [a]\nhealth: {udp: 53}\n", "health 'udp'"),
            ("name: x\ncommand: [a]\nhealth: {http: {port: 80, path: nope}}\n", "an absolute URL path"),
            ("name: x\ncommand: [a]\nmemory: 1\n", "memory 1"),
            ("name: x\ncommand: [a]\ncpus: many\n", "'cpus' must be a whole number"),
            ("name: x\ncommand: []\n", "non-empty list"),
            ("name: x\ncommand: [a]\nenvironment: {\"1X\": y}\n", "environment '1X'"),
            ("name: x\ncommand: [a]\nuser: \"root; id\"\n", "user 'root; id'"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try ApplianceSpec.parse(text, source: "t.yaml"), text) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(text.debugDescription): \(error)")
                XCTAssertTrue("\(error)".hasPrefix("t.yaml: "), "\(error)")
            }
        }
    }

    func testAnOversizedSpecIsRefused() {
        let big = "name: x\ncommand: [a]\n#" + String(repeating: "x", count: 1 << 20)
        XCTAssertThrowsError(try ApplianceSpec.parse(big)) { XCTAssertTrue("\($0)".contains("over 1 MiB")) }
    }

    func testReferences() {
        XCTAssertEqual(ImageReference("nginx")?.description, "nginx:latest")
        XCTAssertEqual(ImageReference("nginx:1.22")?.description, "nginx:1.22")
        XCTAssertNil(ImageReference("../x"))
        XCTAssertNil(ImageReference("x:a/b"))
        XCTAssertNil(ImageReference(""))
    }
}
