/// The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 bytes,
/// little-endian. Parsed apart from any I/O so it can be fuzzed alone.
public struct VsockHeader: Equatable, Sendable {
    public enum Op: UInt16, Sendable {
        case request = 1, response = 2, reset = 3, shutdown = 4, readWrite = 5, creditUpdate = 6, creditRequest = 7
    }
    public static let size = 44
    public static let streamType: UInt16 = 1
    public static let shutdownReceive: UInt32 = 1, shutdownSend: UInt32 = 2

    public var sourceCID: UInt64
    public var destinationCID: UInt64
    public var sourcePort: UInt32
    public var destinationPort: UInt32
    public var length: UInt32
    public var type: UInt16 = VsockHeader.streamType
    public var op: UInt16
    public var flags: UInt32 = 0
    public var bufferAllocation: UInt32 = 0
    public var forwardCount: UInt32 = 0

    public init(sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32,
                length: UInt32 = 0, op: Op, flags: UInt32 = 0, bufferAllocation: UInt32 = 0, forwardCount: UInt32 = 0) {
        self.sourceCID = sourceCID
        self.destinationCID = destinationCID
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.op = op.rawValue
        self.flags = flags
        self.bufferAllocation = bufferAllocation
        self.forwardCount = forwardCount
    }

    public var operation: Op? { Op(rawValue: op) }

    public static func parse(_ b: [UInt8]) -> VsockHeader? {
        guard b.count >= size else { return nil }
        func u(_ at: Int, _ width: Int) -> UInt64 { (0..<width).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * $1) } }
        var h = VsockHeader(sourceCID: u(0, 8), destinationCID: u(8, 8), sourcePort: UInt32(u(16, 4)),
                            destinationPort: UInt32(u(20, 4)), length: UInt32(u(24, 4)), op: .request)
        h.type = UInt16(u(28, 2))
        h.op = UInt16(u(30, 2))
        h.flags = UInt32(u(32, 4))
        h.bufferAllocation = UInt32(u(36, 4))
        h.forwardCount = UInt32(u(40, 4))
        return h
    }

    public var bytes: [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(Self.size)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        put(sourceCID); put(destinationCID); put(sourcePort); put(destinationPort); put(length)
        put(type); put(op); put(flags); put(bufferAllocation); put(forwardCount)
        return b
    }
}
