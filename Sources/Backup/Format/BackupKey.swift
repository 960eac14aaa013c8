import CBackup
import Crypto
import Foundation

/// A client's backup key: 32 random bytes in a file (64 hex digits) that
/// the server never sees. Two keys are derived from it with HKDF: one seals
/// chunks (AES-256-GCM), one names them (HMAC-SHA256), so that chunks of
/// one key deduplicate with each other and with nothing else.
public struct BackupKey: Sendable {
    let encryptionKey: SymmetricKey
    let idKey: SymmetricKey
    /// Names the key in manifests (a restore with another key is refused up front).
    public let fingerprint: String

    public init(master: [UInt8]) {
        let m = SymmetricKey(data: master)
        encryptionKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: m, info: Array("skiff-backup chunk encryption".utf8), outputByteCount: 32)
        idKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: m, info: Array("skiff-backup chunk id".utf8), outputByteCount: 32)
        let f = HKDF<SHA256>.deriveKey(inputKeyMaterial: m, info: Array("skiff-backup key fingerprint".utf8), outputByteCount: 8)
        fingerprint = f.withUnsafeBytes { ChunkDigest.hexString(Array($0)) }
    }

    /// Reads a key file (64 hex digits, a newline allowed).
    public static func load(_ path: String) throws -> BackupKey {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw BackupError.invalid("key file \(path): cannot read it") }
        let hex = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let d = ChunkDigest(hex: hex) else { throw BackupError.invalid("key file \(path): not a key (64 lowercase hex digits; make one with `skiff backup key FILE`)") }
        return BackupKey(master: d.bytes)
    }

    /// Writes a new random key to `path` (mode 0600; an existing file is kept).
    public static func create(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BackupError.invalid("key file \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var g = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &g) }
        let line = Array((ChunkDigest.hexString(bytes) + "\n").utf8)
        guard line.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == line.count, fsync(fd) == 0 else {
            throw BackupError.invalid("key file \(path): \(String(cString: strerror(errno)))")
        }
    }
}

extension ChunkDigest {
    static func hexString(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }
}

/// What the backup commands and the server report: a message a person can act on.
public enum BackupError: Error, CustomStringConvertible {
    case invalid(String)
    case notFound(String)
    case forbidden(String)
    case conflict(String)
    case failed(String)

    public var description: String {
        switch self {
        case .invalid(let m), .notFound(let m), .forbidden(let m), .conflict(let m), .failed(let m): return m
        }
    }
}

/// glibc's allocator for the backup commands and server, which allocate and
/// free several chunk-sized buffers per chunk: above 128 KiB it maps each one
/// afresh and unmaps it when freed, so every chunk paid page faults and
/// zeroing for memory it had just given back (a fifth of a full backup's
/// time, by perf). Kept in the heap instead, they are reused.
public enum Allocator {
    public static func keepLargeBuffers() { cbackup_keep_large_buffers() }
}
