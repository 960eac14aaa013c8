import Foundation
import XCTest

/// `skiff image import` (issue 11): docker save tarballs and OCI layouts
/// made by oci_fixtures.py (Python's tarfile), imported into a store of
/// the test's own; the hostile ones refused by name, the store unchanged
/// and nothing written outside the import's work folder.
final class OCIImportTests: XCTestCase {
    var store = "", fixtures = "", canary = ""

    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("imports keep the images' owners: needs root") }
        store = "/tmp/skiff-oci-store-\(getpid())"
        fixtures = "/tmp/skiff-oci-fixtures-\(getpid())"
        canary = "/tmp/skiff-oci-canary-\(getpid())"
        for p in [store, fixtures, canary] { try? FileManager.default.removeItem(atPath: p) }
        let r = try Harness.run("/usr/bin/python3", [Harness.root.appendingPathComponent("Tests/SkiffTests/oci_fixtures.py").path, fixtures, "/bin/busybox", canary])
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    override func tearDown() {
        for p in [store, fixtures, canary] { try? FileManager.default.removeItem(atPath: p) }
    }

    var environment: [String: String] { ["SKIFF_IMAGES": store, "SKIFFD_BIN": ManagerHarness.skiffd] }

    func skiff(_ args: [String], timeout: Double = 120) throws -> Harness.Result {
        try Harness.skiff(args, timeout: timeout, environment: environment)
    }

    func testDockerSaveAndOCILayoutImportWithWhiteoutsAndRun() throws {
        var r = try skiff(["image", "import", fixtures + "/good.tar"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("dropped setuid/setgid from 1 file"), r.stderr)
        r = try skiff(["image", "inspect", "tiny:1"])
        let manifest = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
        XCTAssertEqual(manifest["command"] as? [String], ["/bin/sh", "-c", "echo imported-$GREETING"], r.stdout)
        XCTAssertEqual((manifest["environment"] as? [String: String])?["GREETING"], "ok")

        // The root as written: whiteouts applied, setuid gone, the hard link one file.
        let rootfs = try XCTUnwrap(manifest["rootfs"] as? String)
        let extracted = fixtures + "/extracted"
        let fsck = try Harness.run("/usr/bin/fsck.erofs", ["--extract=" + extracted, store + "/blobs/sha256/" + String(rootfs.dropFirst(7))])
        XCTAssertEqual(fsck.status, 0, fsck.stderr)
        let fm = FileManager.default
        XCTAssertFalse(fm.fileExists(atPath: extracted + "/a/old"), "whiteout .wh.old")
        XCTAssertFalse(fm.fileExists(atPath: extracted + "/b/x"), "opaque folder")
        XCTAssertTrue(fm.fileExists(atPath: extracted + "/b/new"))
        let suid = try fm.attributesOfItem(atPath: extracted + "/bin/suid")[.posixPermissions] as? Int ?? -1
        XCTAssertEqual(suid, 0o755)
        // fsck.erofs extracts hard links as copies: the image's own inode says.
        let image = store + "/blobs/sha256/" + rootfs.dropFirst(7)
        let nid = { (p: String) in (try? Harness.run("/usr/bin/dump.erofs", ["--path=" + p, image]).stdout)?.firstMatch(of: /NID: (\d+)\s+Links: (\d+)/).map { "\($0.1) \($0.2)" } }
        XCTAssertEqual(nid("/bin/bb2"), nid("/bin/busybox"), "bin/bb2 is a hard link to bin/busybox")
        XCTAssertEqual(nid("/bin/busybox")?.hasSuffix(" 2"), true)
        XCTAssertEqual(try fm.destinationOfSymbolicLink(atPath: extracted + "/bin/sh"), "busybox")

        r = try skiff(["image", "import", fixtures + "/good-oci"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try skiff(["image", "ls"])
        XCTAssertTrue(r.stdout.contains("tiny:1") && r.stdout.contains("tinyoci:2"), r.stdout)

        // It runs: its command, its environment, its status.
        r = try skiff(["run", "--rm", "--network", "none", "tiny:1"], timeout: 300)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("imported-ok"), r.stdout)
    }

    /// Everything the store holds, by path and size.
    func storeContents() -> [String: Int] { Harness.treeSizes(store) }

    func testHostileArchivesAreRefusedAndChangeNothing() throws {
        XCTAssertEqual(try skiff(["image", "import", fixtures + "/good-oci"]).status, 0)
        let before = storeContents()
        let cases: [(String, String)] = [
            ("bad-dotdot.tar", "climbs out of the root"),
            ("bad-absolute.tar", "an absolute path"),
            ("bad-symlink.tar", "through a symbolic link"),
            ("bad-hardlink.tar", "climbs out of the root"),
            ("bad-device.tar", "a device node"),
            ("bad-notar.tar", "not a tar archive"),
            ("bad-missing.tar", "missing from the image"),
            ("bad-pax.tar", "pax header of"),
        ]
        for (file, expected) in cases {
            let r = try skiff(["image", "import", fixtures + "/" + file])
            XCTAssertNotEqual(r.status, 0, file)
            XCTAssertTrue(r.stderr.contains(expected), "\(file): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("Fatal error"), r.stderr)
            XCTAssertEqual(storeContents(), before, "\(file) changed the store")
            XCTAssertFalse(FileManager.default.fileExists(atPath: canary), "\(file) wrote \(canary)")
        }
    }
}
