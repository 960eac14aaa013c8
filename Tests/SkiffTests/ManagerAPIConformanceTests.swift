import Foundation
import Glibc
import XCTest

/// The API against its own document: the document validates
/// (openapi-spec-validator), and schemathesis, generating requests from it
/// against a live skiffd, finds no 5xx and no response the document does
/// not describe.
final class ManagerAPIConformanceTests: XCTestCase {
    static let document = Harness.root.appendingPathComponent("Sources/SkiffAPI/openapi.yaml").path
    static let hooks = Harness.root.appendingPathComponent("Tests/SkiffTests/schemathesis_hooks.py").path

    func testDocumentValidates() throws {
        let r = try Harness.run("/usr/bin/env", ["python3", "-m", "openapi_spec_validator", Self.document], timeout: 120)
        guard !r.stderr.contains("No module named") else { throw XCTSkip("openapi-spec-validator is not installed (scripts/deps)") }
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("OK"), r.stdout)
    }

    func testSchemathesisFindsNoServerErrorAndNoResponseOutsideTheDocument() throws {
        guard geteuid() == 0 else { throw XCTSkip("skiffd needs root") }
        guard FileManager.default.fileExists(atPath: ManagerHarness.skiffd) else { throw XCTSkip("no skiffd") }
        let which = try Harness.run("/usr/bin/env", ["sh", "-c", "command -v schemathesis"], timeout: 10)
        guard which.status == 0 else { throw XCTSkip("schemathesis is not installed (scripts/deps)") }
        let m = try ManagerHarness("conformance")
        defer { m.tearDown() }
        let token = "conformance-token-\(getpid())-0123456789"
        try token.write(toFile: m.root + "/token", atomically: true, encoding: .utf8)
        let port = 19_600 + Int(getpid() % 300)
        // At most 24 VMs: schemathesis asks for clones by the thousand, and
        // each is a real VM on this host's two cores.
        try m.start(extra: ["--tcp", "127.0.0.1:\(port)", "--token-file", m.root + "/token", "--max-vms", "24"])
        // A VM for the operations on one (the stateful phase also links them from POST /vms).
        XCTAssertEqual(try m.create(["name": "0", "kernel": Harness.probe("tick"), "cmdline": "slow"]).status, 201)
        let checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"
        let r = try Harness.run(which.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                                ["run", Self.document, "--url", "http://127.0.0.1:\(port)/v1", "-H", "Authorization: Bearer \(token)",
                                 "--checks", checks, "--max-examples", "25", "--seed", "1"], timeout: 900,
                                environment: ["SCHEMATHESIS_HOOKS": Self.hooks])
        let summary = r.stdout.split(separator: "\n").filter { $0.contains("generated") || $0.contains("passed") || $0.contains("❌") }
        print("manager: schemathesis: \(summary.joined(separator: " | "))")
        XCTAssertEqual(r.status, 0, "schemathesis found failures: \(r.stdout.suffix(4000)) \(r.stderr.suffix(1000))")
    }
}
