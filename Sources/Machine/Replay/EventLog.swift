import CKVM
import Glibc

/// Why a recording cannot be written or replayed. One line, naming the
/// file and what is wrong with it.
public struct ReplayError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What a deterministic run did that the next run must do the same:
/// the inputs that entered the guest (replayed from the log) and the
/// checks of what it did with them (compared on replay). `exit` is the
/// count of the guest's own exits when it happened: the only clock a
/// deterministic machine has.
public enum ReplayEvent: Equatable, Sendable {
    /// An interrupt injected (check), with a CRC of the vCPU's registers there.
    case interrupt(exit: UInt64, vector: UInt8, registers: UInt32)
    /// Bytes typed into the serial port (input).
    case consoleInput(exit: UInt64, bytes: [UInt8])
    /// Bytes virtio-rng gave the guest (input).
    case entropy(exit: UInt64, bytes: [UInt8])
    /// A virtio-blk read or write (check): disk, first sector, length, CRC of the data.
    case block(exit: UInt64, write: Bool, disk: UInt8, sector: UInt64, length: UInt32, data: UInt32)
    /// The vCPU's registers and all of guest memory, hashed (check).
    case checkpoint(exit: UInt64, vcpu: UInt32, memory: UInt32)
    /// The last record: how the run stopped, and its final state (check).
    case end(exit: UInt64, vcpu: UInt32, memory: UInt32, reason: String)

    public var exit: UInt64 {
        switch self {
        case .interrupt(let e, _, _), .consoleInput(let e, _), .entropy(let e, _), .block(let e, _, _, _, _, _),
             .checkpoint(let e, _, _), .end(let e, _, _, _): return e
        }
    }

    /// Inputs come from the log on replay; everything else is compared.
    public var isInput: Bool {
        switch self {
        case .consoleInput, .entropy: return true
        default: return false
        }
    }

    public var summary: String {
        switch self {
        case .interrupt(let e, let v, let r): return "interrupt vector \(v) at exit \(e) (registers crc \(Self.hex(r)))"
        case .consoleInput(let e, let b): return "console input of \(b.count) byte\(b.count == 1 ? "" : "s") at exit \(e)"
        case .entropy(let e, let b): return "entropy, \(b.count) bytes at exit \(e)"
        case .block(let e, let w, let d, let s, let l, let c):
            return "virtio-blk \(w ? "write" : "read") of disk \(d), sector \(s), \(l) bytes at exit \(e) (data crc \(Self.hex(c)))"
        case .checkpoint(let e, let v, let m): return "checkpoint at exit \(e) (vCPU crc \(Self.hex(v)), memory crc \(Self.hex(m)))"
        case .end(let e, let v, let m, let r): return "end (\(r)) at exit \(e) (vCPU crc \(Self.hex(v)), memory crc \(Self.hex(m)))"
        }
    }

    static func hex(_ v: UInt32) -> String { let s = String(v, radix: 16); return String(repeating: "0", count: 8 - s.count) + s }

    var kind: UInt8 {
        switch self {
        case .interrupt: return 1
        case .consoleInput: return 2
        case .entropy: return 3
        case .block: return 4
        case .checkpoint: return 5
        case .end: return 6
        }
    }

    func encode(_ w: inout StateWriter) {
        w.u64(exit)
        switch self {
        case .interrupt(_, let v, let r): w.u8(v); w.u32(r)
        case .consoleInput(_, let b), .entropy(_, let b): w.blob(b)
        case .block(_, let write, let d, let s, let l, let c): w.bool(write); w.u8(d); w.u64(s); w.u32(l); w.u32(c)
        case .checkpoint(_, let v, let m): w.u32(v); w.u32(m)
        case .end(_, let v, let m, let r): w.u32(v); w.u32(m); w.string(r)
        }
    }

    static func decode(kind: UInt8, _ r: inout StateReader) throws(SnapshotError) -> ReplayEvent? {
        let exit = try r.u64()
        switch kind {
        case 1: return .interrupt(exit: exit, vector: try r.u8(), registers: try r.u32())
        case 2: return .consoleInput(exit: exit, bytes: try r.blob(limit: EventLog.maxInputBytes))
        case 3: return .entropy(exit: exit, bytes: try r.blob(limit: EventLog.maxInputBytes))
        case 4: return .block(exit: exit, write: try r.bool(), disk: try r.u8(), sector: try r.u64(), length: try r.u32(), data: try r.u32())
        case 5: return .checkpoint(exit: exit, vcpu: try r.u32(), memory: try r.u32())
        case 6: return .end(exit: exit, vcpu: try r.u32(), memory: try r.u32(), reason: try r.string())
        default: return nil
        }
    }
}

/// A recording's event log (`REC/events`): a header, then records, each
/// checksummed with a CRC-32C chained to the one before, so a record
/// changed, dropped, reordered or cut off is found where it happens, and
/// a log that does not end with its `end` record was cut short.
///
///   "SKIFFRRL" | format u32 | skiff version (u16 + UTF-8) |
///   header length u32 | header CRC-32C u32 | header | record*
///   record = kind u8 | length u32 | payload | CRC-32C u32
///   (the CRC covers kind, length and payload, seeded with the previous
///   record's CRC, the first with the header's)
///
/// The header is the machine the recording ran on (the VMM's own bytes:
/// configuration, kernel identity, CPUID), opaque here.
public enum EventLog {
    static let magic = Array("SKIFFRRL".utf8)
    /// Bumped whenever a record's or the header's layout changes.
    public static let formatVersion: UInt32 = 1
    /// The largest input record (console bytes, an entropy request).
    public static let maxInputBytes = 1 << 20
    static let maxHeaderBytes = 1 << 20
    /// The largest log read (a recording's inputs; memory is never in it).
    public static let maxSize = 1 << 30

    /// The file's first bytes, up to and including the header.
    public static func encodeHeader(_ header: [UInt8]) -> (bytes: [UInt8], crc: UInt32) {
        var w = StateWriter()
        w.bytes += magic
        w.u32(formatVersion)
        w.string(StateFile.skiffVersion)
        w.u32(UInt32(header.count))
        let crc = header.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) }
        w.u32(crc)
        w.bytes += header
        return (w.bytes, crc)
    }

    /// One record, chained to `previous` (its CRC is the next one's seed).
    public static func encode(_ event: ReplayEvent, previous: UInt32) -> (bytes: [UInt8], crc: UInt32) {
        var payload = StateWriter()
        event.encode(&payload)
        var w = StateWriter()
        w.u8(event.kind)
        w.u32(UInt32(payload.bytes.count))
        w.bytes += payload.bytes
        let crc = w.bytes.withUnsafeBytes { ckvm_crc32c(previous, $0.baseAddress, $0.count) }
        w.u32(crc)
        return (w.bytes, crc)
    }

    /// A whole log: its header's bytes and its events, every check made
    /// (magic, format, lengths, each record's chained CRC, known kinds,
    /// exits in order, an `end` last and nothing after it).
    public static func decode(_ bytes: [UInt8], path: String) throws(ReplayError) -> (header: [UInt8], events: [ReplayEvent]) {
        guard bytes.count >= magic.count, Array(bytes.prefix(magic.count)) == magic else {
            throw ReplayError("\(path): not a Skiff event log")
        }
        do {
            var r = StateReader(bytes[magic.count...], what: path)
            let format = try r.u32()
            let version = (try? r.string()) ?? "?"
            guard format == formatVersion else {
                throw ReplayError("\(path): event log format \(format) (Skiff \(version)); this Skiff (\(StateFile.skiffVersion)) reads format \(formatVersion) only")
            }
            let length = Int(try r.u32())
            let crc = try r.u32()
            guard length <= maxHeaderBytes, length <= r.remaining else { throw ReplayError("\(path): the header is cut short or its length is wrong (\(length) bytes): the log is truncated or corrupt") }
            let header = try r.bytes(length)
            guard header.withUnsafeBytes({ ckvm_crc32c(0, $0.baseAddress, $0.count) }) == crc else {
                throw ReplayError("\(path): the header's checksum does not match: the log is corrupt")
            }
            var previous = crc
            var events: [ReplayEvent] = []
            var lastExit: UInt64 = 0
            while r.remaining > 0 {
                let n = events.count + 1
                let offset = bytes.count - r.remaining
                guard r.remaining >= 5 else { throw ReplayError("\(path): record \(n) (byte \(offset)) is cut short: the log is truncated") }
                let start = r.data
                let kind = try r.u8()
                let size = Int(try r.u32())
                guard size <= r.remaining, r.remaining - size >= 4 else {
                    throw ReplayError("\(path): record \(n) (byte \(offset)) is cut short or its length is wrong: the log is truncated or corrupt")
                }
                let payload = try r.bytes(size)
                let stored = try r.u32()
                let computed = start.prefix(5 + size).withUnsafeBytes { ckvm_crc32c(previous, $0.baseAddress, $0.count) }
                guard stored == computed else { throw ReplayError("\(path): checksum mismatch at record \(n) (byte \(offset)): the log is corrupt") }
                previous = stored
                var p = StateReader(payload[...], what: "\(path) record \(n)")
                guard let event = try ReplayEvent.decode(kind: kind, &p), p.remaining == 0 else {
                    throw ReplayError("\(path): record \(n) (byte \(offset)) is of an unknown kind (\(kind)) or the wrong size")
                }
                guard event.exit >= lastExit else { throw ReplayError("\(path): record \(n) goes back in time (exit \(event.exit) after \(lastExit))") }
                if case .end = events.last { throw ReplayError("\(path): record \(n) comes after the end record") }
                lastExit = event.exit
                events.append(event)
            }
            guard case .end = events.last else {
                throw ReplayError("\(path): ends after \(events.count) records without its end record: the log is truncated (the recording did not finish)")
            }
            return (header, events)
        } catch let e as ReplayError {
            throw e
        } catch {
            throw ReplayError("\(path): \(error): the log is truncated or corrupt")
        }
    }

    /// Reads and decodes a log file (at most `maxSize` bytes).
    public static func read(_ path: String) throws(ReplayError) -> (header: [UInt8], events: [ReplayEvent]) {
        let bytes: [UInt8]
        do { bytes = try readFile(path, limit: maxSize) } catch { throw ReplayError("\(error)") }
        return try decode(bytes, path: path)
    }
}

/// Appends a recording's records to its log, buffered (a record is small;
/// the buffer goes out at 64 KiB and at `finish`, which syncs it).
public final class EventLogWriter {
    let fd: Int32
    let path: String
    var buffer: [UInt8] = []
    var previous: UInt32
    public private(set) var count = 0
    public private(set) var bytesWritten = 0

    /// Writes the header at once: a log without an end record is refused.
    public init(fd: Int32, path: String, header: [UInt8]) throws(ReplayError) {
        self.fd = fd
        self.path = path
        let (bytes, crc) = EventLog.encodeHeader(header)
        previous = crc
        buffer = bytes
        try flush()
    }

    public func append(_ event: ReplayEvent) throws(ReplayError) {
        let (bytes, crc) = EventLog.encode(event, previous: previous)
        previous = crc
        buffer += bytes
        count += 1
        if buffer.count >= 64 << 10 { try flush() }
    }

    /// Writes what is buffered and syncs the file.
    public func finish() throws(ReplayError) {
        try flush()
        guard fdatasync(fd) == 0 else { throw ReplayError("\(path): \(String(cString: strerror(errno)))") }
    }

    func flush() throws(ReplayError) {
        var done = 0
        while done < buffer.count {
            let n = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ReplayError("\(path): \(String(cString: strerror(errno)))") }
            done += n
        }
        bytesWritten += buffer.count
        buffer.removeAll(keepingCapacity: true)
    }
}
