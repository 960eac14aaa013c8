import XCTest
import Machine
@testable import Devices

/// The descriptor-chain walker through a mock driver's rings in guest memory.
final class VirtQueueTests: XCTestCase {
    let a: UInt64 = 0x40000 // data buffers live from here
    var memory: GuestMemory!
    var driver: MockDriver!

    override func setUpWithError() throws {
        memory = try GuestMemory(size: 1 << 20)
        driver = MockDriver(memory: memory)
    }

    func pop(_ chain: [MockDriver.Descriptor], indirect: Bool = false) throws -> DescriptorChain? {
        let q = try driver.queue()
        if indirect { try driver.publishIndirect(chain, table: 0x30000) } else { try driver.publish(chain) }
        return try q.pop()
    }

    func assertRefused(_ chain: [MockDriver.Descriptor], _ error: QueueError, indirect: Bool = false,
                       file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try pop(chain, indirect: indirect), file: file, line: line) {
            XCTAssertEqual($0 as? QueueError, error, file: file, line: line)
        }
    }

    func testValidChainComesOutInOrder() throws {
        let chain = try XCTUnwrap(pop([.r(a, 16), .r(a + 16, 512), .w(a + 528, 1)]))
        XCTAssertEqual(chain.head, 0)
        XCTAssertEqual(chain.buffers.map(\.address), [a, a + 16, a + 528])
        XCTAssertEqual(chain.readable.count, 2)
        XCTAssertEqual(chain.writable.count, 1)
    }

    /// Finding 6: the writable buffer lies inside the first readable one,
    /// which is not its neighbour in address order.
    func testWritableInsideANonNeighbouringBufferIsRefused() throws {
        assertRefused([.r(a, 4096), .r(a + 16, 16), .w(a + 2048, 1)], .overlappingBuffers)
        try setUpWithError()
        assertRefused([.r(a, 4096), .r(a + 16, 16), .w(a + 2048, 1)], .overlappingBuffers, indirect: true)
    }

    func testEveryKindOfOverlapWithAWritableBufferIsRefused() throws {
        let cases: [[MockDriver.Descriptor]] = [
            [.r(a, 16), .w(a + 8, 16)],                          // neighbours
            [.r(a + 100, 16), .w(a, 4096)],                      // writable first in address order
            [.r(a, 64), .w(a + 128, 16), .w(a + 130, 2)],        // two writables
            [.r(a, 8), .w(a + 4096, 16), .w(a, 8192)],           // writable swallowing everything
            [.r(a, 8), .w(a + 16, 4096), .w(a + 64, 4), .w(a + 8192, 1)],
        ]
        for chain in cases {
            try setUpWithError()
            assertRefused(chain, .overlappingBuffers)
        }
    }

    func testReadableBuffersMayOverlapEachOtherAndAdjacentBuffersAreFine() throws {
        XCTAssertNotNil(try pop([.r(a, 4096), .r(a + 16, 16), .r(a + 1024, 8), .w(a + 4096, 1)]))
        try setUpWithError()
        XCTAssertNotNil(try pop([.r(a + 100, 4), .w(a, 100), .w(a + 104, 8)]))
    }

    func testRulesOfTheWalker() throws {
        assertRefused([.r(a, 16), .w(a + 16, 1), .r(a + 32, 1)], .readableAfterWritable)
        try setUpWithError()
        assertRefused([.r(a, 0)], .zeroLength)
        try setUpWithError()
        assertRefused([.r(memory.end - 8, 16)], .bufferOutsideMemory(memory.end - 8, 16))
        try setUpWithError()
        // A chain that loops: 0 -> 1 -> 0.
        try driver.put(.init(address: a, length: 16, flags: VirtQueue.flagNext, next: 1), table: driver.config.descriptorTable, index: 0)
        try driver.put(.init(address: a, length: 16, flags: VirtQueue.flagNext, next: 0), table: driver.config.descriptorTable, index: 1)
        let q = try driver.queue()
        try driver.makeAvailable(0)
        XCTAssertThrowsError(try q.pop()) { XCTAssertEqual($0 as? QueueError, .chainTooLong) }
    }

    func testUsedRingGetsTheHeadAndLength() throws {
        let q = try driver.queue()
        try driver.publish([.w(a, 64)])
        let chain = try XCTUnwrap(q.pop())
        q.push(head: chain.head, written: 64)
        XCTAssertEqual(driver.usedIndex, 1)
        XCTAssertEqual(try driver.used(0).head, 0)
        XCTAssertEqual(try driver.used(0).length, 64)
        XCTAssertNil(try q.pop())
    }
}
