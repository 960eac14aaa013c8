@testable import Images
import XCTest

/// The store's garbage collection: blobs and `skiff run`'s ready snapshots
/// go once no reference reaches their manifest.
final class ImageStoreTests: XCTestCase {
    func testGarbageCollectionTakesUnreachedBlobsAndReadySnapshots() throws {
        let root = NSTemporaryDirectory() + "skiff-store-test-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try ImageStore(root: root)
        let file = root + "/tmp/rootfs"
        try Data("an erofs root".utf8).write(to: URL(fileURLWithPath: file))
        let (rootfs, bytes) = try store.add(file: file)
        let manifest = ImageManifest(rootfs: rootfs, rootfsBytes: bytes, command: ["true"], user: "root", environment: [:], workdir: "/",
                                     ports: [], health: .tcp(port: 80), volumes: [], cpus: 1, memoryMiB: 128, source: "test", packages: [])
        let digest = try store.add(manifest: manifest)
        try store.tag(ImageReference(name: "app", tag: "1"), digest)
        let live = root + "/ready/" + digest.dropFirst(7)
        let dead = root + "/ready/" + String(repeating: "ab", count: 32)
        for d in [live, dead, live + ".tmp4242"] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            try Data("memory".utf8).write(to: URL(fileURLWithPath: d + "/memory"))
        }
        var (removed, _) = try store.collectGarbage()
        XCTAssertEqual(removed, 2, "the unreached and the half-made ready snapshots")
        XCTAssertTrue(FileManager.default.fileExists(atPath: live + "/memory"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dead))
        XCTAssertNotNil(try? store.manifest(digest))

        _ = try store.remove("app:1")
        (removed, _) = try store.collectGarbage()
        XCTAssertEqual(removed, 3, "the manifest, its root and its ready snapshot")
        XCTAssertFalse(FileManager.default.fileExists(atPath: live))
    }
}
