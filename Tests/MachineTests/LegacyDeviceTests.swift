import Synchronization
import XCTest
@testable import Devices
@testable import Machine

final class CountingLine: InterruptLine, @unchecked Sendable {
    let count = Mutex(0)
    func pulse() { count.withLock { $0 += 1 } }
    var pulses: Int { count.withLock { $0 } }
}

final class Collected: @unchecked Sendable {
    let bytes = Mutex<[UInt8]>([])
}

func out(_ d: any BusDevice, _ offset: UInt64, _ v: UInt8) {
    withUnsafeBytes(of: v) { d.write(offset: offset, data: $0) }
}
func inb(_ d: any BusDevice, _ offset: UInt64) -> UInt8 {
    var v: UInt8 = 0
    withUnsafeMutableBytes(of: &v) { d.read(offset: offset, into: $0) }
    return v
}

final class LegacyDeviceTests: XCTestCase {
    func testSerialTransmitsAndRaisesTHRE() {
        let line = CountingLine(), sink = Collected()
        let uart = Serial8250(irq: line, sink: { b in sink.bytes.withLock { $0.append(b) } })
        out(uart, 0, 0x41)
        XCTAssertEqual(sink.bytes.withLock { $0 }, [0x41])
        XCTAssertEqual(line.pulses, 0)
        out(uart, 1, 0x02)                  // enable THRE interrupt: fires at once
        XCTAssertEqual(line.pulses, 1)
        XCTAssertEqual(inb(uart, 2) & 0x0f, 0x02)
        XCTAssertEqual(inb(uart, 2) & 0x0f, 0x01) // acknowledged by the read
        XCTAssertEqual(inb(uart, 5) & 0x60, 0x60)
    }

    func testSerialReceiveIsBoundedAndInterrupts() {
        let line = CountingLine()
        let uart = Serial8250(irq: line, sink: { _ in })
        out(uart, 1, 0x01)
        XCTAssertEqual(uart.receive([UInt8](repeating: 7, count: 100)), Serial8250.rxCapacity)
        XCTAssertEqual(line.pulses, 1)
        XCTAssertEqual(inb(uart, 5) & 1, 1)
        XCTAssertEqual(inb(uart, 2) & 0x0f, 0x04)
        for _ in 0..<Serial8250.rxCapacity { XCTAssertEqual(inb(uart, 0), 7) }
        XCTAssertEqual(inb(uart, 5) & 1, 0)
    }

    /// ConsoleInput re-sends end-of-file only after a driver turns the
    /// receiver on anew: the count moves on RDA 0 -> 1, not on the THRE
    /// toggling every transmit does, nor on a write to the divisor latch.
    func testSerialCountsReceiverStarts() {
        let uart = Serial8250(irq: CountingLine(), sink: { _ in })
        XCTAssertEqual(uart.receiverStartCount, 0)
        out(uart, 1, 0x01)
        XCTAssertEqual(uart.receiverStartCount, 1)
        out(uart, 1, 0x03); out(uart, 1, 0x01)
        XCTAssertEqual(uart.receiverStartCount, 1, "THRE on and off is not a start")
        out(uart, 3, 0x80); out(uart, 1, 0x00); out(uart, 1, 0x01); out(uart, 3, 0x03)
        XCTAssertEqual(uart.receiverStartCount, 1, "divisor latch writes are not IER writes")
        out(uart, 1, 0x00); out(uart, 1, 0x05)
        XCTAssertEqual(uart.receiverStartCount, 2)
    }

    func testSerialLoopbackAndDivisorLatch() {
        let sink = Collected()
        let uart = Serial8250(irq: CountingLine(), sink: { b in sink.bytes.withLock { $0.append(b) } })
        out(uart, 3, 0x80); out(uart, 0, 0x01); out(uart, 1, 0x00); out(uart, 3, 0x03)
        XCTAssertEqual(sink.bytes.withLock { $0 }, []) // divisor writes are not output
        out(uart, 4, 0x1f)
        XCTAssertEqual(inb(uart, 6) & 0xf0, 0xf0)
        out(uart, 0, 0x55)
        XCTAssertEqual(inb(uart, 0), 0x55)
        XCTAssertEqual(sink.bytes.withLock { $0 }, [])
    }

    func testI8042ResetLine() {
        let resets = CountingLine()
        let kbd = I8042(onReset: { resets.pulse() })
        out(kbd, 4, 0xa5)
        out(kbd, 0, 0xfe)
        XCTAssertEqual(resets.pulses, 0)
        out(kbd, 4, 0xfe)
        XCTAssertEqual(resets.pulses, 1)
    }

    /// The calendar by arithmetic agrees with glibc's gmtime_r (which the
    /// VMM may not call on a vCPU thread) across leap years and centuries.
    func testCMOSCalendarMatchesGmtime() {
        var t = 0
        while t < 4_200_000_000 {
            var tt = time_t(t), parts = tm()
            gmtime_r(&tt, &parts)
            let u = CMOS.utc(t)
            XCTAssertEqual([u.year, u.month, u.day, u.hour, u.minute, u.second, u.weekday],
                           [Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday), Int(parts.tm_hour),
                            Int(parts.tm_min), Int(parts.tm_sec), Int(parts.tm_wday)], "at \(t)")
            t += 86_399 * 13 + 7
        }
    }

    func testCMOSReadsClockInBCD() {
        let rtc = CMOS(clock: { 1_700_000_000 }) // 2023-11-14 22:13:20 UTC
        let read = { (i: UInt8) -> UInt8 in out(rtc, 0, i); return inb(rtc, 1) }
        XCTAssertEqual(read(0x00), 0x20)
        XCTAssertEqual(read(0x02), 0x13)
        XCTAssertEqual(read(0x04), 0x22)
        XCTAssertEqual(read(0x07), 0x14)
        XCTAssertEqual(read(0x08), 0x11)
        XCTAssertEqual(read(0x09), 0x23)
        XCTAssertEqual(read(0x32), 0x20)
        out(rtc, 0, 0x40); out(rtc, 1, 0x99)
        XCTAssertEqual(read(0x40), 0x99)
    }

    func testBusRefusesOverlapsAndFindsDevices() throws {
        var bus = Bus()
        let a = I8042(onReset: {}), b = CMOS()
        try bus.attach(a, at: 0x60, length: 5)
        try bus.attach(b, at: 0x70, length: 2)
        XCTAssertThrowsError(try bus.attach(b, at: 0x64, length: 4))
        XCTAssertTrue(bus.device(at: 0x64)?.0 === a)
        XCTAssertEqual(bus.device(at: 0x64)?.1, 4)
        XCTAssertNil(bus.device(at: 0x65))
        XCTAssertNil(bus.device(at: 0x72))
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(0x1234, into: $0) }
        XCTAssertEqual(v, 0xffff_ffff)
    }
}
