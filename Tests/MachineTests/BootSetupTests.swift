import XCTest
@testable import Machine

final class BootSetupTests: XCTestCase {
    func testGuestMemorySplitsAroundTheHole() throws {
        let memory = try GuestMemory(size: 3 << 30)
        XCTAssertEqual(memory.regions.map(\.guestBase), [0, 0x1_0000_0000])
        XCTAssertEqual(memory.end, 0x1_4000_0000)
        XCTAssertNoThrow(try memory.store(UInt64(7), at: 0x1_3fff_fff8))
        XCTAssertThrowsError(try memory.store(UInt64(7), at: 0x1_3fff_fffc))   // straddles the end
        XCTAssertThrowsError(try memory.store(UInt8(7), at: 0x8000_0000))      // in the hole
        XCTAssertThrowsError(try memory.store(UInt32(7), at: 0x7fff_fffe))     // straddles the hole
        XCTAssertThrowsError(try memory.pointer(at: UInt64.max, length: 2))    // wraps
        XCTAssertThrowsError(try memory.pointer(at: 0, length: UInt64.max))
    }

    func testMPTableChecksumsAndCPUs() {
        let bytes = MPTable.build(cpus: 3, at: 0xf0000)
        XCTAssertEqual(Array(bytes[0..<4]), Array("_MP_".utf8))
        XCTAssertEqual(bytes[0..<16].reduce(0, &+), 0)
        let config = Array(bytes[16...])
        XCTAssertEqual(Array(config[0..<4]), Array("PCMP".utf8))
        let length = Int(config[4]) | Int(config[5]) << 8
        XCTAssertEqual(length, config.count)
        XCTAssertEqual(config.reduce(0, &+), 0)
        let processors = stride(from: 44, to: 44 + 3 * 20, by: 20).map { config[$0] }
        XCTAssertEqual(processors, [0, 0, 0])
        XCTAssertEqual(config[44 + 3], 3) // CPU 0: enabled + BSP
    }

    func testE820CoversRAMOnBothSidesOfTheHole() throws {
        let memory = try GuestMemory(size: 3 << 30)
        let map = E820Entry.map(for: memory)
        let ram = map.filter { $0.kind == .ram }.reduce(UInt64(0)) { $0 + $1.size }
        XCTAssertEqual(ram, (3 << 30) - (X86Layout.highMemory - X86Layout.ebdaStart))
        XCTAssertEqual(map.last, E820Entry(address: 0x1_0000_0000, size: 1 << 30, kind: .ram))
    }

    func testCommandLineAndInitrdLimits() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let kernel = try KernelImage.parse(makeElf(segments: [(0x100000, [1], 0x1000)], pvhEntry: 0x100000), path: "k")
        XCTAssertThrowsError(try BootSetup.prepare(memory: memory, kernel: kernel, initrd: nil,
                                                   commandLine: String(repeating: "x", count: 2048), cpus: 1)) {
            XCTAssertTrue("\($0)".contains("accepts at most 2048"), "\($0)")
        }
        XCTAssertThrowsError(try BootSetup.prepare(memory: memory, kernel: kernel, initrd: ("big", [UInt8](repeating: 0, count: 16 << 20)),
                                                   commandLine: "", cpus: 1)) {
            XCTAssertTrue("\($0)".contains("does not fit"), "\($0)")
        }
        let boot = try BootSetup.prepare(memory: memory, kernel: kernel, initrd: ("i", [1, 2, 3]), commandLine: "hello", cpus: 1)
        let at = try XCTUnwrap(boot.initrdAddress)
        XCTAssertEqual(at % 4096, 0)
        XCTAssertEqual(try memory.read(at: at, count: 3), [1, 2, 3])
        XCTAssertEqual(try memory.load(UInt32.self, at: X86Layout.pvhStartInfo), 0x336e_c578)
        XCTAssertEqual(try memory.read(at: X86Layout.commandLine, count: 6), Array("hello\0".utf8))
    }
}
