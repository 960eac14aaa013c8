import Glibc
import XCTest
@testable import Devices
@testable import Machine

/// The record/replay event log as pure logic: what is written reads back,
/// and every kind of damage is refused with one line naming it; and the
/// deterministic machine's PIC and PIT.
final class EventLogTests: XCTestCase {
    let events: [ReplayEvent] = [
        .interrupt(exit: 10, vector: 32, registers: 0xdead_beef),
        .consoleInput(exit: 12, bytes: Array("hello".utf8)),
        .entropy(exit: 12, bytes: [1, 2, 3]),
        .block(exit: 40, write: true, disk: 0, sector: 8, length: 512, data: 7),
        .checkpoint(exit: 5_000, vcpu: 1, memory: 2),
        .end(exit: 5_001, vcpu: 3, memory: 4, reason: "guest reset (i8042)"),
    ]

    func log(_ events: [ReplayEvent], header: [UInt8] = [9, 8, 7]) -> [UInt8] {
        var (bytes, crc) = EventLog.encodeHeader(header)
        for e in events {
            let (b, c) = EventLog.encode(e, previous: crc)
            bytes += b; crc = c
        }
        return bytes
    }

    func testRoundTripThroughTheWriter() throws {
        let path = NSTemporaryDirectory() + "/events-\(getpid())"
        defer { unlink(path) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let w = try EventLogWriter(fd: fd, path: path, header: [9, 8, 7])
        for e in events { try w.append(e) }
        try w.finish()
        close(fd)
        let (header, read) = try EventLog.read(path)
        XCTAssertEqual(header, [9, 8, 7])
        XCTAssertEqual(read, events)
        XCTAssertEqual(try EventLog.decode(log(events), path: "t").events, events)
    }

    /// Cut anywhere, or any byte flipped: refused (the version string's
    /// bytes excepted: they are for messages only), in one line.
    func testEveryCutAndFlipIsRefused() throws {
        let good = log(events)
        let versionBytes = 12..<(14 + StateFile.skiffVersion.utf8.count)
        for n in 0..<good.count {
            XCTAssertThrowsError(try EventLog.decode(Array(good.prefix(n)), path: "t"), "cut at \(n)") { e in
                XCTAssertFalse("\(e)".contains("\n"), "\(e)")
            }
        }
        for i in good.indices where !versionBytes.contains(i) {
            var bad = good
            bad[i] ^= 0x20
            XCTAssertThrowsError(try EventLog.decode(bad, path: "t"), "byte \(i)") { e in
                XCTAssertFalse("\(e)".contains("\n"), "\(e)")
            }
        }
        XCTAssertThrowsError(try EventLog.decode(Array(good.prefix(good.count - 1)), path: "t")) { e in
            XCTAssertTrue("\(e)".contains("truncated"), "\(e)")
        }
    }

    func testForeignOtherVersionAndMisorderedLogsAreRefused() {
        XCTAssertThrowsError(try EventLog.decode(StateFile.encode([]), path: "t")) { e in
            XCTAssertEqual("\(e)", "t: not a Skiff event log")
        }
        var other = log(events)
        other[8] = 2 // the format, little-endian
        XCTAssertThrowsError(try EventLog.decode(other, path: "t")) { e in
            XCTAssertTrue("\(e)".contains("event log format 2"), "\(e)")
        }
        // Without its end record: the recording did not finish.
        XCTAssertThrowsError(try EventLog.decode(log(Array(events.dropLast())), path: "t")) { e in
            XCTAssertTrue("\(e)".contains("without its end record"), "\(e)")
        }
        // Records well formed and chained, but out of order in time, or after the end.
        XCTAssertThrowsError(try EventLog.decode(log([events[3], events[0], events[5]]), path: "t")) { e in
            XCTAssertTrue("\(e)".contains("goes back in time"), "\(e)")
        }
        XCTAssertThrowsError(try EventLog.decode(log([events[5], events[5]]), path: "t")) { e in
            XCTAssertTrue("\(e)".contains("after the end record"), "\(e)")
        }
        // A record rewritten with a CRC of its own is found: the next one's chain breaks.
        var good = log(events)
        let (first, _) = EventLog.encode(events[0], previous: EventLog.encodeHeader([9, 8, 7]).crc)
        let start = EventLog.encodeHeader([9, 8, 7]).bytes.count
        let forged = EventLog.encode(.interrupt(exit: 10, vector: 33, registers: 0xdead_beef), previous: EventLog.encodeHeader([9, 8, 7]).crc).bytes
        XCTAssertEqual(forged.count, first.count)
        good.replaceSubrange(start..<(start + first.count), with: forged)
        XCTAssertThrowsError(try EventLog.decode(good, path: "t")) { e in
            XCTAssertTrue("\(e)".contains("record 2"), "\(e)")
        }
    }

    func testPICPrioritiesMasksAndEOI() {
        let pic = PIC8259()
        let master = pic.ports(slave: false), slave = pic.ports(slave: true)
        func out(_ d: any BusDevice, _ offset: UInt64, _ v: UInt8) { withUnsafeBytes(of: v) { d.write(offset: offset, data: $0) } }
        for (d, base, cascade) in [(master, UInt8(0x20), UInt8(4)), (slave, UInt8(0x28), UInt8(2))] {
            out(d, 0, 0x11); out(d, 1, base); out(d, 1, cascade); out(d, 1, 0x01)
        }
        out(master, 1, ~UInt8(1 | 4 | 16)); out(slave, 1, ~UInt8(1 << 1))
        XCTAssertNil(pic.pendingVector)
        pic.raise(4); pic.raise(0)
        XCTAssertEqual(pic.acknowledge(), 0x20, "IRQ 0 first")
        XCTAssertNil(pic.acknowledge(), "IRQ 4 waits for IRQ 0's EOI")
        out(master, 0, 0x20)
        XCTAssertEqual(pic.acknowledge(), 0x24)
        out(master, 0, 0x20)
        pic.raise(3) // masked
        XCTAssertNil(pic.pendingVector)
        pic.raise(9) // the slave's IRQ 1, through the master's 2
        XCTAssertEqual(pic.acknowledge(), 0x29)
    }

    func testPITRunsOnTheClockItIsGiven() {
        final class Count: InterruptLine, @unchecked Sendable { var n = 0; func pulse() { n += 1 } }
        let irq = Count()
        let pit = PIT8254(irq: irq)
        func out(_ offset: UInt64, _ v: UInt8) { withUnsafeBytes(of: v) { pit.write(offset: offset, data: $0) } }
        out(3, 0x34); out(0, 0xe8); out(0, 0x03) // mode 2, count 1000
        pit.advance(to: 999)
        XCTAssertEqual(irq.n, 0)
        pit.advance(to: 1000)
        XCTAssertEqual(irq.n, 1)
        pit.advance(to: 5500) // missed ticks are one interrupt
        XCTAssertEqual(irq.n, 2)
        XCTAssertEqual(pit.nextDeadline, 6000)
        out(3, 0x00) // latch
        var lo: UInt8 = 0, hi: UInt8 = 0
        withUnsafeMutableBytes(of: &lo) { pit.read(offset: 0, into: $0) }
        withUnsafeMutableBytes(of: &hi) { pit.read(offset: 0, into: $0) }
        XCTAssertEqual(UInt16(lo) | UInt16(hi) << 8, 500)
    }
}
