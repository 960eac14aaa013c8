/// A virtio-blk request as the driver framed it (virtio 1.2, 5.2.6): a
/// 16-byte header in the device-readable part, data, and a status byte as
/// the last device-writable byte. Parsing is apart from any I/O, so it can
/// be tested and fuzzed alone.
public struct BlockRequest: Equatable, Sendable {
    public enum Kind: UInt32, Sendable {
        case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
    }
    public enum Status: UInt8, Sendable { case ok = 0, ioError = 1, unsupported = 2 }

    public static let sectorSize: UInt64 = 512
    public static let headerSize: UInt64 = 16
    public static let idLength = 20
    public static let segmentSize: UInt64 = 16

    public let kind: Kind?
    public let rawType: UInt32
    public let sector: UInt64
    /// Bytes of data: after the header (writes, discards) or before the
    /// status byte (reads, get-ID).
    public let dataLength: UInt64

    public enum ParseError: Error, Equatable { case headerTooShort, noStatusByte }

    /// `header` is the first 16 readable bytes; the lengths are those of the
    /// chain's readable and writable parts.
    public static func parse(header: [UInt8], readableLength: UInt64, writableLength: UInt64) throws(ParseError) -> BlockRequest {
        guard header.count >= Int(headerSize), readableLength >= headerSize else { throw .headerTooShort }
        guard writableLength >= 1 else { throw .noStatusByte }
        let type = UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24
        var sector: UInt64 = 0
        for i in (8..<16).reversed() { sector = sector << 8 | UInt64(header[i]) }
        let kind = Kind(rawValue: type)
        let data: UInt64 = switch kind {
        case .write, .discard, .writeZeroes: readableLength - headerSize
        default: writableLength - 1
        }
        return BlockRequest(kind: kind, rawType: type, sector: sector, dataLength: data)
    }

    /// Whether [sector, sector + dataLength) lies on a disk of `capacity`
    /// sectors, with whole sectors.
    public func fits(capacitySectors capacity: UInt64) -> Bool {
        guard dataLength % Self.sectorSize == 0 else { return false }
        let sectors = dataLength / Self.sectorSize
        return sector <= capacity && sectors <= capacity - sector
    }

    /// Discard and write-zeroes segments: (sector, count, flags).
    public static func segments(_ bytes: [UInt8]) -> [(sector: UInt64, count: UInt32, flags: UInt32)] {
        stride(from: 0, to: bytes.count - bytes.count % Int(segmentSize), by: Int(segmentSize)).map { o in
            var sector: UInt64 = 0
            for i in (0..<8).reversed() { sector = sector << 8 | UInt64(bytes[o + i]) }
            let count = (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[o + 8 + $1]) << (8 * $1) }
            let flags = (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[o + 12 + $1]) << (8 * $1) }
            return (sector, count, flags)
        }
    }
}
