import XCTest
@testable import Machine

/// The snapshot file formats, as pure logic: what is written reads back,
/// and every kind of damage is caught by the reader.
final class SnapshotFormatTests: XCTestCase {
    func sample() -> [(String, StateWriter)] {
        var a = StateWriter()
        a.u8(7); a.u16(0x1234); a.u32(0xdead_beef); a.u64(1 << 40); a.bool(true); a.string("vd\u{e9}"); a.blob([1, 2, 3])
        var b = StateWriter()
        b.u32(0)
        return [("alpha", a), ("beta", b)]
    }

    func testStateFileRoundTrip() throws {
        let bytes = StateFile.encode(sample())
        let sections = try StateFile.decode(bytes, path: "t")
        XCTAssertEqual(Set(sections.keys), ["alpha", "beta"])
        var r = sections["alpha"]!
        XCTAssertEqual(try r.u8(), 7)
        XCTAssertEqual(try r.u16(), 0x1234)
        XCTAssertEqual(try r.u32(), 0xdead_beef)
        XCTAssertEqual(try r.u64(), 1 << 40)
        XCTAssertEqual(try r.bool(), true)
        XCTAssertEqual(try r.string(), "vd\u{e9}")
        XCTAssertEqual(try r.blob(), [1, 2, 3])
        XCTAssertNoThrow(try r.finish())
        XCTAssertThrowsError(try r.u8()) // nothing left
    }

    func testEveryFlippedBitAndEveryTruncationIsRefused() {
        let bytes = StateFile.encode(sample())
        for i in bytes.indices {
            var broken = bytes
            broken[i] ^= 0x10
            // The version string is informational: a change there still reads.
            if (try? StateFile.decode(broken, path: "t")) != nil {
                XCTAssertTrue((14..<19).contains(i), "flipping byte \(i) went unnoticed")
            }
        }
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try StateFile.decode(Array(bytes.prefix(n)), path: "t"), "\(n) bytes accepted")
        }
        XCTAssertThrowsError(try StateFile.decode(bytes + [0], path: "t"))
    }

    func testReaderBoundsAndLimits() {
        var w = StateWriter()
        w.u32(1_000_000) // a count no snapshot has
        var r = StateReader(w.bytes[...], what: "t")
        XCTAssertThrowsError(try r.count(limit: 64))
        var b = StateReader(w.bytes[...], what: "t")
        XCTAssertThrowsError(try b.blob(limit: 16))
        var bad = StateReader([2][...], what: "t")
        XCTAssertThrowsError(try bad.bool())
    }

    func testPageBitmapRuns() {
        var map = PageBitmap(pages: 200)
        map.insert(0..<3)
        map.insert(63..<65)
        map[130] = true
        map.insert(190..<250) // clamped
        XCTAssertEqual(map.runs, [0..<3, 63..<65, 130..<131, 190..<200])
        XCTAssertEqual(map.count, 3 + 2 + 1 + 10)
        var full = PageBitmap(pages: 128)
        full.insert(0..<128)
        XCTAssertEqual(full.runs, [0..<128])
        XCTAssertNil(PageBitmap(pages: 65, words: [0, 2])) // a bit past the end
        XCTAssertNil(PageBitmap(pages: 65, words: [0]))
        XCTAssertNotNil(PageBitmap(pages: 65, words: [~0, 1]))
    }

    func testMemoryFileHeader() throws {
        let h = MemoryFile.Header(snapshotID: Array(0..<16), totalSize: 3 << 30, regions: [(0, 2 << 30), (4 << 30, 1 << 30)])
        let bytes = h.encode()
        XCTAssertEqual(bytes.count, Int(MemoryFile.dataOffset))
        XCTAssertEqual(try MemoryFile.Header.decode(bytes, path: "m"), h)
        for i in 8..<76 { // the header proper; the rest of its page is padding
            var broken = bytes
            broken[i] ^= 1
            XCTAssertThrowsError(try MemoryFile.Header.decode(broken, path: "m"), "byte \(i)")
        }
    }
}
