import Foundation
import XCTest

/// Issue 10's packaging: Skiff's .deb (scripts/package-deb, built by
/// scripts/test before the suite, since a test cannot run `swift build`
/// while `swift test` holds the build folder) installed by apt into a fresh
/// Debian 12 root (mmdebstrap), and run from there: the default kernel
/// found through the installed build inputs, `skiff run` of the default
/// guest, skiffd started by the unit's own ExecStart and running a VM.
final class PackageTests: XCTestCase {
    func testTheDebInstallsIntoAFreshRootAndRunsFromThere() throws {
        guard let deb = ProcessInfo.processInfo.environment["SKIFF_DEB"] else {
            throw XCTSkip("SKIFF_DEB is not set: scripts/test builds the package (scripts/package-deb --debug) and sets it")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: deb), deb)
        let kernel = try Harness.kernelDirectory()
        let work = "/tmp/skiff-fresh-root-\(getpid())"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: work) }
        let script = Harness.root.appendingPathComponent("Tests/SkiffTests/fresh_root_install.sh").path
        let r = try Harness.run("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/bash", script, deb, kernel, work], timeout: 900)
        print(r.stdout)
        XCTAssertEqual(r.status, 0, "stdout:\n\(r.stdout)\nstderr:\n\(r.stderr.suffix(6000))")
        for step in ["mmdebstrap root", "apt installed", "installed:", "state directory", "skiff kernel build found", "skiff run booted",
                     "skiffd started", "skiffd ran a VM", "removed"] {
            XCTAssertTrue(r.stdout.contains("ok: \(step)"), "missing step \(step):\n\(r.stdout)")
        }
        XCTAssertTrue(r.stdout.contains("exit 7"), r.stdout)
    }
}
