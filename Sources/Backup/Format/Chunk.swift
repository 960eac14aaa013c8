import BlockTracking
import CBackup
import Crypto
import Foundation

/// A chunk's address: the SHA-256 of its contents (or, for an encrypted
/// backup, an HMAC-SHA256 of them under the key's id key, so the address
/// says nothing about the contents to whoever lacks the key).
public struct ChunkDigest: Hashable, Sendable, CustomStringConvertible, Codable {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    /// From 64 lowercase hex digits (nothing else: these name files).
    public init?(hex: String) {
        let u = Array(hex.utf8)
        guard u.count == 64 else { return nil }
        var b = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 {
            guard let hi = Self.nibble(u[2 * i]), let lo = Self.nibble(u[2 * i + 1]) else { return nil }
            b[i] = hi << 4 | lo
        }
        bytes = b
    }

    static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return nil
        }
    }

    static let digits = Array("0123456789abcdef".utf8)
    public var hex: String { Self.hexString(bytes) }
    public var description: String { hex }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let d = ChunkDigest(hex: s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a chunk digest (64 lowercase hex digits)"))
        }
        self = d
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(hex)
    }
}

/// A chunk as stored and sent: a header, then its payload (zstd-compressed
/// unless that did not make it smaller; then AES-256-GCM-sealed if the
/// backup is encrypted).
///
///     0   8  magic "SKFCHNK1"
///     8   1  flags: 1 compressed (zstd), 2 encrypted (12-byte nonce,
///            ciphertext, 16-byte tag; the digest is the associated data)
///     9   3  zero
///     12  4  length of the contents (at most Chunk.maxBytes, 1 MiB)
///     16 32  SHA-256 of the payload (bytes 48...): whoever stores the
///            chunk can check it is whole without the key
///     48  -  payload
public enum Chunk {
    /// The changed-block map's chunk: what a map marks is what a backup reads.
    public static let maxBytes = Int(ChangedBlockMap.chunkBytes)
    static let magic = Array("SKFCHNK1".utf8)
    static let headerBytes = 48
    public static let maxBlobBytes = headerBytes + maxBytes + 64
    static let compressed: UInt8 = 1, encrypted: UInt8 = 2
    /// zstd's level: 1 (the fastest of the standard levels) compresses a
    /// Debian root to about a third at several hundred MB/s per core.
    public static let level: Int32 = 1

    public struct Encoded: Sendable {
        public let digest: ChunkDigest
        public let blob: [UInt8]
    }

    /// The digest of `contents` (plain SHA-256, or keyed for encryption).
    public static func digest(_ contents: UnsafeRawBufferPointer, key: BackupKey?) -> ChunkDigest {
        if let key {
            return ChunkDigest(bytes: Array(HMAC<SHA256>.authenticationCode(for: contents, using: key.idKey)))!
        }
        return ChunkDigest(bytes: Array(SHA256.hash(data: contents)))!
    }

    /// The blob for `contents` (already hashed to `digest`).
    public static func encode(_ contents: UnsafeRawBufferPointer, digest: ChunkDigest, key: BackupKey?) throws -> [UInt8] {
        let (header, payload) = try encodeParts(contents, digest: digest, key: key)
        var blob = [UInt8]()
        blob.reserveCapacity(header.count + (payload?.count ?? contents.count))
        blob += header
        if let payload { blob += payload } else { blob += contents }
        return blob
    }

    /// A blob's header and its payload; nil for the contents as they are
    /// (most of a disk: random data does not compress), which the caller
    /// then copies once, straight to where the blob goes.
    public static func encodeParts(_ contents: UnsafeRawBufferPointer, digest: ChunkDigest, key: BackupKey?) throws -> (header: [UInt8], payload: [UInt8]?) {
        precondition(contents.count <= maxBytes)
        var flags: UInt8 = 0
        var payload: [UInt8]?
        // Random data (often most of a disk's changed blocks) does not
        // compress: four samples of 32 KiB across the chunk say so for an
        // eighth of the work; any sample that compresses, and the whole
        // chunk is tried.
        let sample = 32 << 10
        let promising = contents.count <= 8 * sample || (0..<4).contains { i in
            let at = (contents.count - sample) * i / 3
            return Zstd.compress(UnsafeRawBufferPointer(rebasing: contents[at..<(at + sample)]), level: level).map { $0.count < sample * 31 / 32 } ?? true
        }
        if promising { payload = Zstd.compress(contents, level: level) }
        if let p = payload, p.count < contents.count { flags |= compressed } else { payload = nil }
        if let key {
            let sealed = try AES.GCM.seal(payload ?? Array(contents), using: key.encryptionKey, authenticating: digest.bytes)
            payload = Array(sealed.combined!)
            flags |= encrypted
        }
        // Stored as it is and not encrypted, the payload is the contents:
        // its hash is the digest, computed already.
        let payloadHash = flags == 0 ? digest.bytes : Array(SHA256.hash(data: payload!))
        var header = [UInt8]()
        header.reserveCapacity(headerBytes)
        header += magic
        header += [flags, 0, 0, 0]
        withUnsafeBytes(of: UInt32(contents.count).littleEndian) { header += $0 }
        header += payloadHash
        return (header, payload)
    }

    /// What a blob's header says, checked against its bytes: the payload's
    /// hash, the flags, the length. Throws a message naming the chunk.
    public static func check(_ blob: UnsafeRawBufferPointer, digest: ChunkDigest) throws -> (flags: UInt8, length: Int) {
        let header = try checkHeader(blob, digest: digest)
        let payload = UnsafeRawBufferPointer(rebasing: blob[headerBytes...])
        guard Array(SHA256.hash(data: payload)) == Array(blob[16..<48]) else {
            throw ChunkError.damaged(digest, "its payload does not match its checksum")
        }
        return header
    }

    /// What a blob's header says, checked without hashing: the magic, the
    /// flags, the length; and for a chunk stored as it is, that its size is
    /// that length and its payload hash is its name (so that the one hash
    /// `check` then makes, or a reader's, tests both).
    public static func checkHeader(_ blob: UnsafeRawBufferPointer, digest: ChunkDigest) throws -> (flags: UInt8, length: Int) {
        guard blob.count >= headerBytes, blob.count <= maxBlobBytes, Array(blob[0..<8]) == magic else {
            throw ChunkError.damaged(digest, "not a chunk (bad header or size)")
        }
        let flags = blob[8]
        guard flags & ~(compressed | encrypted) == 0, blob[9] == 0, blob[10] == 0, blob[11] == 0 else {
            throw ChunkError.damaged(digest, "unknown flags")
        }
        let length = Int(blob[12]) | Int(blob[13]) << 8 | Int(blob[14]) << 16 | Int(blob[15]) << 24
        guard length <= maxBytes else { throw ChunkError.damaged(digest, "says it holds \(length) bytes, more than \(maxBytes)") }
        if flags == 0 {
            guard blob.count - headerBytes == length else { throw ChunkError.damaged(digest, "holds \(blob.count - headerBytes) bytes, its header says \(length)") }
            guard blob[16..<48].elementsEqual(digest.bytes) else { throw ChunkError.damaged(digest, "its contents do not hash to its name") }
        }
        return (flags, length)
    }

    /// The contents of a blob, every check made: header, payload hash,
    /// decryption (with the digest as associated data), length, and the
    /// digest of what comes out. Throws a message naming the chunk.
    public static func decode(_ blob: UnsafeRawBufferPointer, digest: ChunkDigest, key: BackupKey?) throws -> [UInt8] {
        try withContents(blob, digest: digest, key: key) { Array($0) }
    }

    /// `body` on a blob's contents, every check of `decode` made. A chunk
    /// stored as it is (most of a disk's random data) is not copied, and is
    /// hashed once: its payload is its contents, so the header's payload
    /// hash, checked against the bytes, must be the digest itself (a
    /// restore spent 28% of its CPU in SHA-256 hashing such chunks twice).
    public static func withContents<R>(_ blob: UnsafeRawBufferPointer, digest: ChunkDigest, key: BackupKey?,
                                       _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let checked = try check(blob, digest: digest)
        guard checked.flags == 0, key == nil else {
            return try decode(blob, digest: digest, key: key, checked: checked).withUnsafeBytes { try body($0) }
        }
        // Its size and payload hash, the digest, were checked with the header.
        return try body(UnsafeRawBufferPointer(rebasing: blob[headerBytes...]))
    }

    static func decode(_ blob: UnsafeRawBufferPointer, digest: ChunkDigest, key: BackupKey?, checked: (flags: UInt8, length: Int)) throws -> [UInt8] {
        let (flags, length) = checked
        let stored = UnsafeRawBufferPointer(rebasing: blob[headerBytes...])
        var opened: [UInt8]?
        if flags & encrypted != 0 {
            guard let key else { throw ChunkError.needsKey(digest) }
            do {
                let box = try AES.GCM.SealedBox(combined: stored)
                opened = Array(try AES.GCM.open(box, using: key.encryptionKey, authenticating: digest.bytes))
            } catch {
                throw ChunkError.damaged(digest, "does not decrypt with this key")
            }
        } else if key != nil {
            throw ChunkError.damaged(digest, "is not encrypted, and this backup's chunks are")
        }
        let contents: [UInt8]
        if flags & compressed != 0 {
            let out = opened.map { o in o.withUnsafeBytes { Zstd.decompress($0, length: length) } } ?? Zstd.decompress(stored, length: length)
            guard let c = out else {
                throw ChunkError.damaged(digest, "does not decompress to \(length) bytes")
            }
            contents = c
        } else {
            let payload = opened ?? Array(stored)
            guard payload.count == length else { throw ChunkError.damaged(digest, "holds \(payload.count) bytes, its header says \(length)") }
            contents = payload
        }
        guard contents.withUnsafeBytes({ Self.digest($0, key: key) }) == digest else {
            throw ChunkError.damaged(digest, "its contents do not hash to its name")
        }
        return contents
    }

    /// For a store without the key: the blob is whole, and for an
    /// unencrypted chunk, its contents hash to its name. Returns the
    /// contents' length.
    public static func verify(_ blob: UnsafeRawBufferPointer, digest: ChunkDigest) throws -> Int {
        let checked = try check(blob, digest: digest)
        switch checked.flags {
        case 0:
            // Stored as it is: the payload, whose hash the check compared
            // with the header's, which is the digest, is the contents.
            break
        case compressed: _ = try decode(blob, digest: digest, key: nil, checked: checked)
        default: break // encrypted: whole, which is all a store without the key can know
        }
        return checked.length
    }

}

public enum ChunkError: Error, CustomStringConvertible, Equatable {
    case damaged(ChunkDigest, String)
    case needsKey(ChunkDigest)

    public var description: String {
        switch self {
        case .damaged(let d, let why): return "chunk \(d.hex) is damaged: it \(why)"
        case .needsKey(let d): return "chunk \(d.hex) is encrypted: give the backup's key (--key-file)"
        }
    }
}

/// Debian's libzstd, one frame per chunk.
enum Zstd {
    /// nil if zstd failed (the caller stores the contents as they are).
    static func compress(_ input: UnsafeRawBufferPointer, level: Int32) -> [UInt8]? {
        let bound = ZSTD_compressBound(input.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { ZSTD_compress($0.baseAddress, bound, input.baseAddress, input.count, level) }
        guard ZSTD_isError(n) == 0 else { return nil }
        out.removeSubrange(n...)
        return out
    }

    /// Exactly `length` bytes, or nil: a frame that says another size,
    /// holds more, or is malformed.
    static func decompress(_ input: UnsafeRawBufferPointer, length: Int) -> [UInt8]? {
        guard ZSTD_getFrameContentSize(input.baseAddress, input.count) == UInt64(length) else { return nil }
        var failed = false
        // Uninitialized: zstd writes every byte or fails (then nothing is kept).
        let out = [UInt8](unsafeUninitializedCapacity: length) { b, count in
            let n = ZSTD_decompress(b.baseAddress, length, input.baseAddress, input.count)
            failed = ZSTD_isError(n) != 0 || n != length
            count = failed ? 0 : length
        }
        return failed ? nil : out
    }
}
