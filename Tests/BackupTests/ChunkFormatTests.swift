@testable import Backup
import BlockTracking
import Foundation
import XCTest

/// The chunk format and the changed-block map: pure logic, every byte of
/// which may come from elsewhere.
final class ChunkFormatTests: XCTestCase {
    func contents(_ n: Int, seed: UInt64 = 1) -> [UInt8] {
        var x = seed
        return (0..<n).map { i in
            if i % 2 == 0 { return UInt8(i % 7) } // half compressible
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }

    func testRoundTripPlainAndEncrypted() throws {
        let data = contents(1 << 20)
        for key in [nil, BackupKey(master: [UInt8](repeating: 7, count: 32))] {
            let d = data.withUnsafeBytes { Chunk.digest($0, key: key) }
            let blob = try data.withUnsafeBytes { try Chunk.encode($0, digest: d, key: key) }
            XCTAssertLessThan(blob.count, data.count, "compressed")
            XCTAssertEqual(try blob.withUnsafeBytes { try Chunk.decode($0, digest: d, key: key) }, data)
            XCTAssertEqual(try blob.withUnsafeBytes { try Chunk.verify($0, digest: d) }, data.count)
        }
    }

    func testEncryptedDigestsDependOnTheKey() {
        let data = contents(4096)
        let a = data.withUnsafeBytes { Chunk.digest($0, key: BackupKey(master: [UInt8](repeating: 1, count: 32))) }
        let b = data.withUnsafeBytes { Chunk.digest($0, key: BackupKey(master: [UInt8](repeating: 2, count: 32))) }
        let plain = data.withUnsafeBytes { Chunk.digest($0, key: nil) }
        XCTAssertNotEqual(a, b)
        XCTAssertNotEqual(a, plain)
    }

    /// Every flipped byte of a blob is found, with a message that names the chunk.
    func testEveryFlippedByteIsFound() throws {
        let data = contents(8192)
        let key = BackupKey(master: [UInt8](repeating: 3, count: 32))
        for k in [nil, key] {
            let d = data.withUnsafeBytes { Chunk.digest($0, key: k) }
            let blob = try data.withUnsafeBytes { try Chunk.encode($0, digest: d, key: k) }
            for i in stride(from: 0, to: blob.count, by: max(1, blob.count / 300)) {
                var bad = blob
                bad[i] ^= 0x40
                XCTAssertThrowsError(try bad.withUnsafeBytes { try Chunk.decode($0, digest: d, key: k) }, "byte \(i)") { e in
                    XCTAssertTrue("\(e)".contains(d.hex), "\(e)")
                }
                XCTAssertThrowsError(try bad.withUnsafeBytes { try Chunk.verify($0, digest: d) }, "byte \(i)")
            }
        }
    }

    func testHostileBlobs() {
        let d = ChunkDigest(hex: String(repeating: "ab", count: 32))!
        for blob in [[], Array("SKFCHNK1".utf8), [UInt8](repeating: 0, count: 100), Array("SKFCHNK1".utf8) + [UInt8](repeating: 0xff, count: 60)] {
            XCTAssertThrowsError(try blob.withUnsafeBytes { try Chunk.decode($0, digest: d, key: nil) })
        }
        // A chunk under another's name.
        let data = contents(4096)
        let real = data.withUnsafeBytes { Chunk.digest($0, key: nil) }
        let blob = try! data.withUnsafeBytes { try Chunk.encode($0, digest: real, key: nil) }
        XCTAssertThrowsError(try blob.withUnsafeBytes { try Chunk.verify($0, digest: d) })
        // An encrypted chunk without its key, and with another.
        let k = BackupKey(master: [UInt8](repeating: 9, count: 32))
        let ed = data.withUnsafeBytes { Chunk.digest($0, key: k) }
        let eb = try! data.withUnsafeBytes { try Chunk.encode($0, digest: ed, key: k) }
        XCTAssertThrowsError(try eb.withUnsafeBytes { try Chunk.decode($0, digest: ed, key: nil) })
        XCTAssertThrowsError(try eb.withUnsafeBytes { try Chunk.decode($0, digest: ed, key: BackupKey(master: [UInt8](repeating: 8, count: 32))) })
    }

    func testDigestText() {
        XCTAssertNil(ChunkDigest(hex: String(repeating: "A", count: 64)))
        XCTAssertNil(ChunkDigest(hex: String(repeating: "a", count: 63)))
        XCTAssertNil(ChunkDigest(hex: "../" + String(repeating: "a", count: 61)))
        let d = ChunkDigest(hex: "00" + String(repeating: "f", count: 62))!
        XCTAssertEqual(d.hex, "00" + String(repeating: "f", count: 62))
    }

    func testRetention() {
        let day: Int64 = 86400
        // One backup every 6 hours for 60 days.
        let backups = (0..<240).map { (id: "b\($0)", createdAt: 1_700_000_000 + Int64($0) * day / 4) }
        XCTAssertEqual(Retention(last: 3).keep(backups), ["b239", "b238", "b237"])
        let daily = Retention(daily: 7).keep(backups)
        XCTAssertEqual(daily.count, 7)
        XCTAssertTrue(daily.contains("b239"))
        let all = Retention(last: 2, daily: 7, weekly: 4, monthly: 3).keep(backups)
        XCTAssertTrue(all.isSuperset(of: daily))
        XCTAssertLessThanOrEqual(all.count, 2 + 7 + 4 + 3)
        XCTAssertGreaterThan(all.count, 7)
        XCTAssertThrowsError(try Retention().validate())
        XCTAssertThrowsError(try Retention(last: -1).validate())
    }

    func testManifestValidation() throws {
        let d = ChunkDigest(hex: String(repeating: "a", count: 64))!
        let size = UInt64(Chunk.maxBytes) * 5 / 2 // two chunks and a half
        var m = Manifest(vm: "web", consistency: "offline", disks: [.init(name: "disk0", bytes: size, chunks: [d, nil, d])])
        try m.validate()
        m.disks[0].chunks.append(nil)
        XCTAssertThrowsError(try m.validate()) // 4 chunks for a disk of 2.5
        m.disks[0].chunks.removeLast()
        for bad in ["../x", "a/b", "", String(repeating: "x", count: 65), ".hidden", "nul\u{0}"] {
            var n = m
            n.vm = bad
            XCTAssertThrowsError(try n.validate(), bad)
        }
    }

    func testChangedBlockMap() {
        let c = ChangedBlockMap.chunkBytes
        var m = ChangedBlockMap(diskBytes: 10 * c + 512)
        XCTAssertEqual(m.chunks, 11)
        XCTAssertTrue(m.isDirty(5), "a new map knows nothing")
        _ = m.advance()
        XCTAssertFalse(m.isDirty(5))
        m.mark(offset: 4 * c - 1, length: 2)
        XCTAssertEqual(m.dirtyChunks, [3, 4])
        m.mark(offset: 10 * c, length: UInt64.max) // clipped, no overflow
        XCTAssertEqual(m.dirtyChunks, [3, 4, 10])
        let bytes = m.encoded(clean: true)
        let (back, problem) = ChangedBlockMap.decode(bytes, diskBytes: m.diskBytes)
        XCTAssertNil(problem)
        XCTAssertEqual(back, m)
        let (unclean, why) = ChangedBlockMap.decode(m.encoded(clean: false), diskBytes: m.diskBytes)
        XCTAssertNotNil(why)
        XCTAssertEqual(unclean?.reliable, false)
        XCTAssertTrue(unclean!.isDirty(0))
        // Any flipped byte, a truncation or another disk's size: not this disk's map.
        for i in 0..<bytes.count {
            var bad = bytes
            bad[i] ^= 1
            let (b, _) = ChangedBlockMap.decode(bad, diskBytes: m.diskBytes)
            XCTAssertTrue(b == nil || b!.reliable == false, "byte \(i)")
        }
        XCTAssertNil(ChangedBlockMap.decode(Array(bytes.dropLast()), diskBytes: m.diskBytes).map)
        XCTAssertNil(ChangedBlockMap.decode(bytes, diskBytes: m.diskBytes + 512).map)
    }

    /// Backup IDs are unique on the whole server (two hosts backing up in
    /// one second once got the same ID), valid names, and sort as they began.
    func testBackupIDsAreUniqueAndOrdered() {
        var taken: Set<String> = []
        let ms = 1_796_300_000_123
        for _ in 0..<3 { taken.insert(Repository.backupID(ms: ms) { taken.contains($0) }) }
        XCTAssertEqual(taken.count, 3)
        let a = Repository.backupID(ms: ms) { _ in false }, b = Repository.backupID(ms: ms + 1) { _ in false }
        XCTAssertTrue(a < b, "\(a) < \(b)")
        XCTAssertTrue(a.hasSuffix(".123Z"), a)
        for id in taken { XCTAssertNil(Names.problem(id, what: "backup id"), id) }
    }

    /// The server's filter of a host's digests: never a false "no" (the
    /// client would send a chunk it need not, which is only slower, but a
    /// false "no" for every chunk would make the filter pointless), about
    /// 1% false "maybe", and a hostile filter's sizes refused.
    func testDigestFilter() throws {
        let held = (0..<5000).map { i in Array("held \(i)".utf8).withUnsafeBytes { Chunk.digest($0, key: nil) } }
        let filter = DigestFilter(held, count: held.count)
        XCTAssertNil(filter.problem)
        for d in held { XCTAssertTrue(filter.mayHold(d)) }
        let others = (0..<20000).map { i in Array("other \(i)".utf8).withUnsafeBytes { Chunk.digest($0, key: nil) } }
        let maybes = others.filter(filter.mayHold).count
        XCTAssertLessThan(maybes, 20000 * 3 / 100, "false positives")
        // Through JSON, as the server sends it.
        let back = try JSONDecoder().decode(DigestFilter.self, from: JSONEncoder().encode(filter))
        XCTAssertEqual(back, filter)
        // An empty host's filter says no to everything.
        let empty = DigestFilter([], count: 0)
        XCTAssertFalse(empty.mayHold(held[0]))
        for bad in [#"{"bits":"","hashes":7}"#, #"{"bits":"AAAA","hashes":0}"#, #"{"bits":"AAAA","hashes":9}"#] {
            XCTAssertNotNil(try JSONDecoder().decode(DigestFilter.self, from: Data(bad.utf8)).problem, bad)
        }
    }
}
