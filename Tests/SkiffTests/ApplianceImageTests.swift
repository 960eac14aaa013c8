import Foundation
import XCTest

/// Issue 11: appliance images built from the repository's specs by the real
/// builder (mmdebstrap from Debian's mirror, strace, mkfs.erofs) into a
/// store of the test's own, and booted by `skiff run IMAGE` on the default
/// kernel.
final class ApplianceImageTests: XCTestCase {
    var store = ""

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("the builder runs mmdebstrap and namespaces: needs root") }
        store = "/tmp/skiff-images-test-\(getpid())"
        try? FileManager.default.removeItem(atPath: store)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: store) }

    var environment: [String: String] { ["SKIFF_IMAGES": store, "SKIFFD_BIN": ManagerHarness.skiffd] }

    func spec(_ name: String) -> String { Harness.root.appendingPathComponent("appliances/\(name).yaml").path }

    func build(_ specPath: String) throws -> Harness.Result {
        try Harness.skiff(["appliance", "build", specPath], timeout: 600, environment: environment)
    }

    /// Everything the store holds, by path and size: what a failed build must not change.
    func storeContents() -> [String: Int] {
        var out: [String: Int] = [:]
        let e = FileManager.default.enumerator(atPath: store)
        while let p = e?.nextObject() as? String {
            out[p] = (try? FileManager.default.attributesOfItem(atPath: store + "/" + p)[.size] as? Int) ?? -1
        }
        return out
    }

    func testPythonOneShotPrintsAndExitsWithItsStatusAndBuildsReproducibly() throws {
        var r = try build(spec("python"))
        XCTAssertEqual(r.status, 0, r.stderr)
        let digest = r.stdout.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        XCTAssertTrue(digest.hasPrefix("sha256:"), r.stdout)
        print(r.stderr.split(separator: "\n").filter { $0.contains("trimmed") || $0.contains("KiB") }.joined(separator: "\n"))

        // One boot (about a minute on this host): the output, the standard
        // library the spec keeps, and the program's status as skiff's.
        r = try Harness.skiff(["run", "--rm", "python", "--", "python3", "-c", "import json, sys; print(6*7); print(json.dumps({'a': 1})); sys.exit(3)"],
                              timeout: 300, environment: environment)
        XCTAssertEqual(r.status, 3, "a failing program's status is skiff's: " + r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.split(separator: "\n").contains { $0.trimmingCharacters(in: .whitespacesAndNewlines) == "42" }, r.stdout)
        XCTAssertTrue(r.stdout.contains("{\"a\": 1}"), r.stdout)

        // The same spec and package versions: the same digest.
        r = try build(spec("python"))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(digest), "rebuilt as \(r.stdout), first \(digest)")

        r = try Harness.skiff(["image", "ls"], timeout: 30, environment: environment)
        XCTAssertTrue(r.stdout.contains("python:3.11"), r.stdout)
        r = try Harness.skiff(["run", "nosuch"], timeout: 30, environment: environment)
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("no image nosuch"), r.stderr)
    }

    /// nginx in at most 16 MiB, with its files where the spec put them.
    func testNginxImageIsSmall() throws {
        let r = try build(spec("nginx"))
        XCTAssertEqual(r.status, 0, r.stderr)
        let inspect = try Harness.skiff(["image", "inspect", "nginx:1.22"], timeout: 30, environment: environment)
        let manifest = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any] ?? [:]
        let bytes = manifest["rootfsBytes"] as? Int ?? 0
        print("nginx appliance: \(bytes >> 10) KiB of erofs")
        XCTAssertGreaterThan(bytes, 100 << 10)
        XCTAssertLessThanOrEqual(bytes, 16 << 20)
    }

    func testBadSpecsChangeNothing() throws {
        XCTAssertEqual(try build(spec("python")).status, 0)
        let before = storeContents()
        let dir = "/tmp/skiff-bad-specs-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases = [
            ("malformed", "name: [unclosed\n", "not YAML"),
            ("unknown-package", "name: nopkg\ncommand: [true]\npackages: [skiff-no-such-package]\n", "skiff-no-such-package"),
            ("never-healthy", "name: sick\ncommand: [sleep, \"600\"]\nhealth: {tcp: 9}\n", "health check never passed"),
        ]
        for (name, text, expected) in cases {
            let path = dir + "/\(name).yaml"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let r = try build(path)
            XCTAssertNotEqual(r.status, 0, name)
            XCTAssertTrue(r.stderr.contains(expected), "\(name): \(r.stderr.suffix(1500))")
            XCTAssertEqual(storeContents(), before, "\(name) changed the store")
        }
    }
}
