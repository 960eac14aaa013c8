import Foundation
import XCTest
@testable import Appliance

final class CpioTests: XCTestCase {
    /// The archive must be what GNU cpio reads back, byte for byte.
    func testGNUCpioReadsTheArchive() throws {
        var w = CpioWriter()
        w.directory("bin")
        w.file("bin/hello", Array("hello, world\n".utf8), permissions: 0o755)
        w.symlink("bin/hi", to: "hello")
        w.file("odd", [1, 2, 3])
        let bytes = w.finish()
        XCTAssertEqual(bytes.count % 4, 0)

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cpio-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let archive = dir.appendingPathComponent("a.cpio")
        try Data(bytes).write(to: archive)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "cd '\(dir.path)' && mkdir x && cd x && cpio -id --quiet < ../a.cpio"]
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(try String(contentsOf: dir.appendingPathComponent("x/bin/hello"), encoding: .utf8), "hello, world\n")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: dir.appendingPathComponent("x/bin/hi").path), "hello")
        XCTAssertEqual(try Data(contentsOf: dir.appendingPathComponent("x/odd")), Data([1, 2, 3]))
        let mode = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("x/bin/hello").path)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o755)
    }

    func testInitramfsHasInitAndBusybox() throws {
        let image = try Initramfs.build(busybox: [0x7f, 0x45, 0x4c, 0x46], applets: ["sh", "ls", "busybox"], agent: [0x7f, 0x45, 0x4c, 0x46])
        let text = String(decoding: image, as: UTF8.self)
        for name in ["init\0", "bin/busybox\0", "bin/sh\0", "bin/ls\0", "dev/console\0", "TRAILER!!!\0"] {
            XCTAssertTrue(text.contains(name), name)
        }
        XCTAssertFalse(text.contains("bin/busybox\0busybox"))
    }
}
