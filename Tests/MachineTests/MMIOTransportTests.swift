import XCTest
import Machine
@testable import Devices

/// The virtio-mmio register file as a driver sees it, on a virtio-rng.
final class MMIOTransportTests: XCTestCase {
    var memory: GuestMemory!
    var transport: MMIOTransport!

    override func setUpWithError() throws {
        memory = try GuestMemory(size: 1 << 20)
        transport = try MMIOTransport(device: Rng(), memory: memory, irq: try EventFD(), name: "test")
    }

    override func tearDown() { set(0x70, 0) } // reset: stops the device's thread

    func set(_ offset: UInt64, _ v: UInt32) { transport.set(offset, v) }
    func get(_ offset: UInt64) -> UInt32 { transport.get(offset) }
    var driverFeatures: UInt64 { transport.state.withLock { $0.driverFeatures } }
    func start(_ driver: MockDriver, low: UInt32 = 0) { transport.start([driver], features: UInt64(low)) }
    func waitUsed(_ driver: MockDriver, _ count: UInt16) -> Bool { driver.waitUsed(count) }

    func testDriverServedThroughTheTransport() throws {
        let driver = MockDriver(memory: memory)
        start(driver)
        XCTAssertEqual(get(0x70), 0xf)
        try driver.publish([.w(0x40000, 32)])
        set(0x50, 0)
        XCTAssertTrue(waitUsed(driver, 1))
        XCTAssertEqual(try driver.used(0).length, 32)
    }

    /// Finding 6: once FEATURES_OK is set, a status write cannot clear it
    /// (or any bit) and the driver's features stay as accepted, until reset.
    func testStatusBitsOnlyAddUpAndFeaturesFreezeUntilReset() throws {
        let driver = MockDriver(memory: memory)
        start(driver, low: UInt32(VirtioFeature.eventIndex))
        let accepted = driverFeatures
        XCTAssertEqual(accepted, VirtioFeature.version1 | VirtioFeature.eventIndex)
        set(0x70, 1 | 2)                     // try to clear FEATURES_OK and DRIVER_OK
        XCTAssertEqual(get(0x70), 0xf)
        set(0x24, 0); set(0x20, UInt32(VirtioFeature.indirectDescriptors))
        set(0x24, 1); set(0x20, 0)           // and drop VERSION_1
        XCTAssertEqual(driverFeatures, accepted)
        set(0x70, 1 | 2 | 8)                 // setting it again changes nothing
        XCTAssertEqual(driverFeatures, accepted)
        XCTAssertEqual(get(0x70), 0xf)
        // The device still runs, on what was negotiated.
        try driver.publish([.w(0x40000, 16)])
        set(0x50, 0)
        XCTAssertTrue(waitUsed(driver, 1))
        // A reset clears everything; features are the driver's to choose again.
        set(0x70, 0)
        XCTAssertEqual(get(0x70), 0)
        set(0x70, 1 | 2)
        set(0x24, 0); set(0x20, UInt32(VirtioFeature.indirectDescriptors))
        set(0x24, 1); set(0x20, 1)
        set(0x70, 1 | 2 | 8)
        XCTAssertEqual(driverFeatures, VirtioFeature.version1 | VirtioFeature.indirectDescriptors)
        XCTAssertEqual(get(0x70), 1 | 2 | 8)
    }

    /// Features the device refused leave FEATURES_OK clear; the driver may retry.
    func testRefusedFeaturesLeaveFeaturesOKClear() {
        set(0x70, 1 | 2)
        set(0x24, 0); set(0x20, 0)
        set(0x24, 1); set(0x20, 0)           // no VERSION_1: refused
        set(0x70, 1 | 2 | 8)
        XCTAssertEqual(get(0x70), 1 | 2)
        set(0x24, 1); set(0x20, 1)
        set(0x70, 1 | 2 | 8)
        XCTAssertEqual(get(0x70), 1 | 2 | 8)
    }
}
