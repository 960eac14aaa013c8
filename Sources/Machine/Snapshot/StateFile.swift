import CKVM
import Glibc

/// Why a snapshot cannot be taken or used. Restoring checks everything it
/// reads and stops at the first problem, before any guest runs.
public struct SnapshotError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A snapshot's state file: a header, then named sections of little-endian
/// fields. The header carries the format version and a CRC-32C of
/// everything after it, so a file cut short, corrupted or written by an
/// incompatible Skiff is refused before anything is restored.
///
///   "SKIFFSTA" | format u32 | skiff version (u16 length + UTF-8) |
///   payload length u64 | CRC-32C u32 | payload
///   payload = section*, section = name (u16 + UTF-8) | length u32 | bytes
public enum StateFile {
    static let magic = Array("SKIFFSTA".utf8)
    /// Bumped whenever a section's layout changes: another number is refused.
    public static let formatVersion: UInt32 = 1
    /// Written for the reader's messages; compatibility is decided by the
    /// format version and the sizes of KVM's structures, not by this.
    public static let skiffVersion = "0.4.0"
    /// The largest state file read (state is small; memory has its own file).
    static let maxSize = 64 << 20

    public static func encode(_ sections: [(String, StateWriter)]) -> [UInt8] {
        var payload = StateWriter()
        for (name, section) in sections {
            payload.string(name)
            payload.u32(UInt32(section.bytes.count))
            payload.bytes += section.bytes
        }
        var header = StateWriter()
        header.bytes += magic
        header.u32(formatVersion)
        header.string(skiffVersion)
        header.u64(UInt64(payload.bytes.count))
        header.u32(payload.bytes.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) })
        return header.bytes + payload.bytes
    }

    /// The sections of a state file, after checking magic, version, length
    /// and checksum.
    public static func decode(_ bytes: [UInt8], path: String) throws(SnapshotError) -> [String: StateReader] {
        var r = StateReader(bytes[...], what: "\(path)")
        guard bytes.count >= magic.count, Array(bytes.prefix(magic.count)) == magic else {
            throw SnapshotError("\(path): not a Skiff snapshot state file")
        }
        try r.skip(magic.count)
        let format = try r.u32()
        let version = (try? r.string()) ?? "?"
        guard format == formatVersion else {
            throw SnapshotError("\(path): snapshot format \(format) (Skiff \(version)); this Skiff (\(skiffVersion)) reads format \(formatVersion) only")
        }
        let length = try r.u64()
        let crc = try r.u32()
        guard UInt64(r.remaining) == length else {
            throw SnapshotError("\(path): state is \(r.remaining) bytes, its header says \(length): truncated or extended")
        }
        let payload = try r.take(Int(length))
        guard payload.withUnsafeBytes({ ckvm_crc32c(0, $0.baseAddress, $0.count) }) == crc else {
            throw SnapshotError("\(path): checksum mismatch: the state file is corrupt")
        }
        var p = StateReader(payload, what: path)
        var sections: [String: StateReader] = [:]
        while p.remaining > 0 {
            let name = try p.string()
            let size = try p.u32()
            sections[name] = StateReader(try p.take(Int(size)), what: "\(path) [\(name)]")
        }
        return sections
    }

    /// Writes a state file at `path` (tests and tools that rewrite snapshots).
    public static func write(_ sections: [(String, StateWriter)], to path: String) throws(SnapshotError) {
        try writeFile(path, encode(sections))
    }

    public static func read(_ path: String) throws(SnapshotError) -> [String: StateReader] {
        try decode(readBytes(path), path: path)
    }

    /// The file's bytes, undecoded (a seal covers exactly these).
    public static func readBytes(_ path: String) throws(SnapshotError) -> [UInt8] {
        try readFile(path, limit: maxSize)
    }
}

/// Little-endian fields appended to a byte array.
public struct StateWriter: Sendable {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    public mutating func blob(_ b: [UInt8]) { u32(UInt32(b.count)); bytes += b }
    public mutating func string(_ s: String) { let b = Array(s.utf8); u16(UInt16(b.count)); bytes += b }
}

/// Reads what a `StateWriter` wrote; every read is bounds-checked and a
/// short read names the file and section.
public struct StateReader: Sendable {
    var data: ArraySlice<UInt8>
    let what: String

    public init(_ data: ArraySlice<UInt8>, what: String) { self.data = data; self.what = what }

    public var remaining: Int { data.count }
    /// What is left, as bytes (tools and tests that rewrite sections).
    public var remainingBytes: [UInt8] { Array(data) }

    mutating func take(_ n: Int) throws(SnapshotError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= data.count else { throw SnapshotError("\(what): truncated (wanted \(n) more bytes, \(data.count) left)") }
        defer { data = data.dropFirst(n) }
        return data.prefix(n)
    }

    public mutating func bytes(_ n: Int) throws(SnapshotError) -> [UInt8] { Array(try take(n)) }

    mutating func skip(_ n: Int) throws(SnapshotError) { _ = try take(n) }

    mutating func integer<T: FixedWidthInteger>(_ type: T.Type) throws(SnapshotError) -> T {
        let b = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, byte) in b.enumerated() { v |= T(byte) << (8 * i) }
        return v
    }

    public mutating func u8() throws(SnapshotError) -> UInt8 { try integer(UInt8.self) }
    public mutating func u16() throws(SnapshotError) -> UInt16 { try integer(UInt16.self) }
    public mutating func u32() throws(SnapshotError) -> UInt32 { try integer(UInt32.self) }
    public mutating func u64() throws(SnapshotError) -> UInt64 { try integer(UInt64.self) }
    public mutating func bool() throws(SnapshotError) -> Bool {
        let v = try u8()
        guard v <= 1 else { throw SnapshotError("\(what): bad boolean \(v)") }
        return v == 1
    }
    public mutating func blob(limit: Int = 1 << 20) throws(SnapshotError) -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw SnapshotError("\(what): field of \(n) bytes, at most \(limit) expected") }
        return Array(try take(n))
    }
    public mutating func string() throws(SnapshotError) -> String {
        let n = Int(try u16())
        return String(decoding: try take(n), as: UTF8.self)
    }
    /// A count of items that follow, bounded so a lying file cannot make us allocate.
    public mutating func count(limit: Int) throws(SnapshotError) -> Int {
        let n = Int(try u32())
        guard n <= limit else { throw SnapshotError("\(what): \(n) entries, at most \(limit) expected") }
        return n
    }
    /// The section must have been read to its end: a longer one was written
    /// by something else.
    public func finish() throws(SnapshotError) {
        guard data.isEmpty else { throw SnapshotError("\(what): \(data.count) unexpected bytes at the end") }
    }
}

/// Whole-file I/O for snapshots, with errors that name the file.
func writeFile(_ path: String, _ bytes: [UInt8]) throws(SnapshotError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
    guard fd >= 0 else { throw SnapshotError("\(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    try writeWhole(fd, bytes, name: path)
}

/// All of `bytes` to an open file, then fsync (`name` for messages).
public func writeWhole(_ fd: Int32, _ bytes: [UInt8], name path: String) throws(SnapshotError) {
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        guard n > 0 else { throw SnapshotError("\(path): \(String(cString: strerror(errno)))") }
        done += n
    }
    guard fsync(fd) == 0 else { throw SnapshotError("\(path): fsync: \(String(cString: strerror(errno)))") }
}

func readFile(_ path: String, limit: Int) throws(SnapshotError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SnapshotError("\(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw SnapshotError("\(path): not a regular file") }
    guard st.st_size <= limit else { throw SnapshotError("\(path): \(st.st_size) bytes, larger than a state file can be") }
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
        guard n > 0 else { throw SnapshotError("\(path): read: \(n == 0 ? "file shrank" : String(cString: strerror(errno)))") }
        done += n
    }
    return bytes
}
