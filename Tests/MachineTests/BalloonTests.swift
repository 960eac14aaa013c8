import XCTest
import Machine
@testable import Devices

/// virtio-balloon through its transport and a mock driver.
final class BalloonTests: XCTestCase {
    var memory: GuestMemory!

    override func setUpWithError() throws { memory = try GuestMemory(size: 1 << 20) }

    func transport(_ balloon: Balloon) throws -> MMIOTransport {
        try MMIOTransport(device: balloon, memory: memory, irq: try EventFD(), name: "balloon")
    }

    /// Finding 1: a driver with only the two required queues notifies
    /// queues 2 and 3; the balloon ignores that and still inflates.
    func testNotifiesForQueuesNotEnabledAreIgnored() throws {
        let balloon = try Balloon(.init())
        let t = try transport(balloon)
        let inflate = MockDriver(memory: memory, at: 0x10000), deflate = MockDriver(memory: memory, at: 0x20000)
        t.start([inflate, deflate])
        defer { t.set(0x70, 0) }
        XCTAssertEqual(t.get(0x70), 0xf)
        t.set(0x50, 2); t.set(0x50, 3); t.set(0x50, 99)
        try memory.store(UInt32(0x80), at: 0x40000)       // PFN 0x80: the page at 0x80000
        try inflate.publish([.r(0x40000, 4)])
        t.set(0x50, 0)
        XCTAssertTrue(inflate.waitUsed(1))
        XCTAssertEqual(balloon.snapshot.inflatedPages, 1)
        XCTAssertEqual(t.get(0x70) & 0x40, 0, "device needs reset")
    }

    /// Finding 8: counters restored from a snapshot at their maximum wrap
    /// rather than trap when the guest inflates more.
    func testRestoredCountersAtTheirMaximumDoNotTrap() throws {
        let balloon = try Balloon(.init())
        var w = StateWriter()
        w.u32(.max); w.u64(.max); w.u64(.max); w.bool(false); w.u16(0)
        var r = StateReader(w.bytes[...], what: "balloon")
        try balloon.restoreState(&r)
        let t = try transport(balloon)
        let inflate = MockDriver(memory: memory, at: 0x10000), deflate = MockDriver(memory: memory, at: 0x20000)
        t.start([inflate, deflate])
        defer { t.set(0x70, 0) }
        try memory.store(UInt32(0x80), at: 0x40000)
        try inflate.publish([.r(0x40000, 4)])
        t.set(0x50, 0)
        XCTAssertTrue(inflate.waitUsed(1))
        XCTAssertEqual(balloon.snapshot.inflatedPages, 0)
    }

    /// Finding 8: a target beyond what num_pages holds (16 TiB) is clamped.
    func testHugeTargetIsClamped() throws {
        var o = Balloon.Options()
        o.targetMiB = .max
        let t = try transport(try Balloon(o))
        XCTAssertEqual(t.get(0x100), UInt32.max)
    }
}
