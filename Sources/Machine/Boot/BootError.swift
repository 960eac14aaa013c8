/// What is wrong with a kernel, initrd or command line a user gave. Each
/// message names the file and the problem, fit for one line on stderr.
public struct BootError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Little-endian reads from a byte array that fail instead of trapping.
struct ByteReader {
    let bytes: [UInt8]
    let name: String

    func u8(_ at: Int) throws -> UInt8 {
        guard at >= 0, at < bytes.count else { throw truncated(at) }
        return bytes[at]
    }
    func u16(_ at: Int) throws -> UInt16 { UInt16(try uint(at, 2)) }
    func u32(_ at: Int) throws -> UInt32 { UInt32(try uint(at, 4)) }
    func u64(_ at: Int) throws -> UInt64 { try uint(at, 8) }

    func uint(_ at: Int, _ width: Int) throws -> UInt64 {
        guard at >= 0, width <= bytes.count, at <= bytes.count - width else { throw truncated(at) }
        var v: UInt64 = 0
        for i in (0..<width).reversed() { v = v << 8 | UInt64(bytes[at + i]) }
        return v
    }

    func truncated(_ at: Int) -> BootError {
        BootError("\(name): cut short (needs data at byte \(at), file has \(bytes.count))")
    }
}
