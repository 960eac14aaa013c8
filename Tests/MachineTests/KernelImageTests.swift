import XCTest
@testable import Machine

/// Builds small ELF64 images in memory to exercise the parser's checks.
func makeElf(segments: [(paddr: UInt64, data: [UInt8], memsz: UInt64)], pvhEntry: UInt32? = nil, entry: UInt64 = 0x100000,
             linuxNote: Bool = false) -> [UInt8] {
    var phdrs: [[UInt8]] = []
    var payload: [UInt8] = []
    let count = segments.count + (pvhEntry == nil && !linuxNote ? 0 : 1)
    let dataStart = 64 + 56 * count
    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    for s in segments {
        let offset = UInt64(dataStart + payload.count)
        payload += s.data
        phdrs.append(le(UInt32(1)) + le(UInt32(7)) + le(offset) + le(s.paddr) + le(s.paddr) + le(UInt64(s.data.count)) + le(s.memsz) + le(UInt64(0x1000)))
    }
    if pvhEntry != nil || linuxNote {
        // Linux's own notes come first in a vmlinux, as here ("Linux", type 1, 4 bytes; name padded to 8).
        var note = linuxNote ? le(UInt32(6)) + le(UInt32(4)) + le(UInt32(1)) + Array("Linux\0\0\0".utf8) + le(UInt32(0)) : []
        if let pvh = pvhEntry { note += le(UInt32(4)) + le(UInt32(4)) + le(UInt32(18)) + Array("Xen\0".utf8) + le(pvh) }
        let offset = UInt64(dataStart + payload.count)
        payload += note
        phdrs.append(le(UInt32(4)) + le(UInt32(4)) + le(offset) + le(UInt64(0)) + le(UInt64(0)) + le(UInt64(note.count)) + le(UInt64(note.count)) + le(UInt64(4)))
    }
    var header: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
    header += le(UInt16(2)) + le(UInt16(62)) + le(UInt32(1)) + le(entry) + le(UInt64(64)) + le(UInt64(0))
    header += le(UInt32(0)) + le(UInt16(64)) + le(UInt16(56)) + le(UInt16(count)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
    return header + phdrs.joined() + payload
}

/// A minimal bzImage: setup sectors, the header fields Skiff reads, a payload.
func makeBzImage(version: UInt16 = 0x020f, xloadflags: UInt16 = 1, payload: Int = 4096, magic: String = "HdrS") -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 5 * 512 + payload)
    func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[at + i] = x } } }
    b[0x1f1] = 4
    put(UInt32(payload / 16), 0x1f4)
    put(UInt16(0xaa55), 0x1fe)
    b[0x201] = 0x6a
    for (i, c) in magic.utf8.enumerated() { b[0x202 + i] = c }
    put(version, 0x206)
    b[0x211] = 1
    put(UInt32(0x7fff_ffff), 0x22c)
    put(xloadflags, 0x236)
    put(UInt32(2047), 0x238)
    put(UInt32(0x100000), 0x260)
    return b
}

final class KernelImageTests: XCTestCase {
    func testElfWithPVHNoteEntersAtPVH() throws {
        let image = try KernelImage.parse(makeElf(segments: [(0x100000, [1, 2, 3], 16)], pvhEntry: 0x100010), path: "k")
        XCTAssertEqual(image.entry, .pvh32(0x100010))
        XCTAssertEqual(image.end, 0x100010)
        XCTAssertFalse(image.isLinux, "a probe guest: no Linux note")
    }

    /// The deterministic machine treats Linux apart (Determinism.interruptWindows).
    func testLinuxIsKnownByItsNoteOrItsFormat() throws {
        let elf = try KernelImage.parse(makeElf(segments: [(0x100000, [1, 2, 3], 16)], pvhEntry: 0x100010, linuxNote: true), path: "k")
        XCTAssertTrue(elf.isLinux)
        XCTAssertEqual(elf.entry, .pvh32(0x100010), "the PVH note after Linux's is still found")
        XCTAssertTrue(try KernelImage.parse(makeBzImage(), path: "b").isLinux)
    }

    func testElfWithoutNoteEntersIn64BitMode() throws {
        let image = try KernelImage.parse(makeElf(segments: [(0x200000, [0x90], 1)], entry: 0x200000), path: "k")
        XCTAssertEqual(image.entry, .long64(0x200000))
    }

    func testRejectsEmptyRandomAndTruncated() {
        XCTAssertThrowsError(try KernelImage.parse([], path: "e")) { XCTAssertTrue("\($0)".contains("empty")) }
        var rng = SystemRandomNumberGenerator()
        let random = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) } // ELF/HdrS magic by chance: 2^-32
        XCTAssertThrowsError(try KernelImage.parse(random, path: "r")) { XCTAssertTrue("\($0)".contains("not an ELF or bzImage")) }
        let elf = makeElf(segments: [(0x100000, [UInt8](repeating: 1, count: 100), 100)])
        for cut in [10, 63, 64 + 20, elf.count - 10] {
            XCTAssertThrowsError(try KernelImage.parse(Array(elf.prefix(cut)), path: "t"), "cut at \(cut)") {
                XCTAssertTrue("\($0)".contains("cut short"), "\($0)")
            }
        }
    }

    func testSegmentOutsideGuestMemoryIsRefused() throws {
        let image = try KernelImage.parse(makeElf(segments: [(0x4000_0000, [1], 1)]), path: "far")
        let memory = try GuestMemory(size: 16 << 20)
        XCTAssertThrowsError(try image.load(into: memory)) { XCTAssertTrue("\($0)".contains("outside guest memory"), "\($0)") }
        XCTAssertThrowsError(try KernelImage.parse(makeElf(segments: [(0x100000, [1], UInt64.max - 0x1000)]), path: "wrap")) {
            XCTAssertTrue("\($0)".contains("wraps"), "\($0)")
        }
    }

    func testSegmentOverBootStructuresIsRefused() throws {
        let image = try KernelImage.parse(makeElf(segments: [(0x7000, [1], 1)]), path: "low")
        let memory = try GuestMemory(size: 16 << 20)
        XCTAssertThrowsError(try image.load(into: memory)) { XCTAssertTrue("\($0)".contains("boot area"), "\($0)") }
    }

    func testBzImageHeader() throws {
        let image = try KernelImage.parse(makeBzImage(), path: "bz")
        XCTAssertEqual(image.entry, .long64(0x100200))
        XCTAssertEqual(image.commandLineLimit, 2048)
        XCTAssertEqual(image.setupHeader?.count, 0x202 + 0x6a - 0x1f1)
        XCTAssertThrowsError(try KernelImage.parse(makeBzImage(version: 0x0209), path: "old")) {
            XCTAssertTrue("\($0)".contains("older than 2.10"), "\($0)")
        }
        XCTAssertThrowsError(try KernelImage.parse(makeBzImage(xloadflags: 0), path: "no64"))
        XCTAssertThrowsError(try KernelImage.parse(makeBzImage(magic: "HdrX"), path: "magic")) {
            XCTAssertTrue("\($0)".contains("bad magic"), "\($0)")
        }
        XCTAssertThrowsError(try KernelImage.parse(Array(makeBzImage().prefix(3000)), path: "cut")) {
            XCTAssertTrue("\($0)".contains("cut short"), "\($0)")
        }
    }
}
