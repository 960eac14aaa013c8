import Foundation

/// A Bloom filter of the chunk digests one host's backups hold, sent by the
/// server when a backup begins. A chunk the filter does not hold is surely
/// new to the host, so the client uploads it without asking `have` first:
/// on a full backup that is one request per chunk instead of two (by perf,
/// the second request cost about 0.3 ms of CPU on each side per chunk).
/// A "maybe" still asks. The filter names only the host's own digests, so
/// it tells a host nothing about another's; and a lying server can only
/// make the client send more or ask more, never store less.
///
/// Digests are SHA-256 or HMAC-SHA-256 values, uniform already: the k bit
/// positions are k 32-bit words of the digest itself, no further hashing.
public struct DigestFilter: Codable, Sendable, Equatable {
    /// The bits, base64 in JSON.
    public let bits: Data
    /// How many bit positions each digest sets (1...8: a digest has 8 words).
    public let hashes: Int

    /// About 1% false positives: 10 bits and 7 positions per digest.
    static let bitsPerDigest = 10, defaultHashes = 7
    /// A filter of more than 64 MiB (50 million chunks, 50 TiB) is refused
    /// from a server; the client then asks `have` of every chunk.
    public static let maxBytes = 64 << 20

    public init<S: Sequence>(_ digests: S, count: Int) where S.Element == ChunkDigest {
        let bytes = min(Self.maxBytes, max(64, (count * Self.bitsPerDigest + 7) / 8))
        var b = [UInt8](repeating: 0, count: bytes)
        let n = UInt32(bytes * 8)
        for d in digests {
            for w in Self.words(d, Self.defaultHashes) { let bit = Int(w % n); b[bit >> 3] |= 1 << UInt8(bit & 7) }
        }
        bits = Data(b)
        hashes = Self.defaultHashes
    }

    /// Whether the filter may hold `d`; false means it surely does not.
    public func mayHold(_ d: ChunkDigest) -> Bool {
        let n = UInt32(bits.count * 8)
        return bits.withUnsafeBytes { (b: UnsafeRawBufferPointer) in
            Self.words(d, hashes).allSatisfy { w in let bit = Int(w % n); return b[bit >> 3] & (1 << UInt8(bit & 7)) != 0 }
        }
    }

    /// Checked as anything from a server is: a usable size and count.
    public var problem: String? {
        guard (1...8).contains(hashes) else { return "a digest filter with \(hashes) hash positions (1 to 8)" }
        guard (1...Self.maxBytes).contains(bits.count) else { return "a digest filter of \(bits.count) bytes (1 to \(Self.maxBytes))" }
        return nil
    }

    static func words(_ d: ChunkDigest, _ k: Int) -> [UInt32] {
        (0..<k).map { i in
            let o = 4 * i
            return UInt32(d.bytes[o]) | UInt32(d.bytes[o + 1]) << 8 | UInt32(d.bytes[o + 2]) << 16 | UInt32(d.bytes[o + 3]) << 24
        }
    }
}
