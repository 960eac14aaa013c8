import Glibc

/// The control socket's protocol: one request per line, one reply line per
/// request. The grammar lives here only; the VM's server and the `skiff`
/// client both use it, and a fuzzer (Fuzz/Sources/fuzz-control-request)
/// feeds it arbitrary bytes. Foundation-free: the VM process links it.
///
///     status                 -> ok running | ok paused
///     pause | resume         -> ok paused | ok running
///     snapshot DIR [diff]    -> ok full|diff snapshot DIR: ...
///     stop                   -> ok stopping
///     stats                  -> ok disk_read_bytes=N disk_write_bytes=N disk_read_ops=N
///                               disk_write_ops=N net_rx_bytes=N net_tx_bytes=N
///                               net_rx_packets=N net_tx_packets=N
///     version                -> ok skiff-control 2
///     backup-begin           -> ok backup disks=N paused_us=N DISK...
///                               (a backup's point in time; with three files per
///                               tracked disk, see ChangeTracker.BackupFiles)
///     backup-end ok|failed   -> ok backup ended
///
/// Words are separated by spaces. DIR is an absolute path of printable
/// UTF-8 without spaces; the directory itself travels as a file descriptor
/// (SCM_RIGHTS) with the line, the text only names it (a diff snapshot
/// records its base's path).
public enum ControlRequest: Equatable, Sendable {
    case status, pause, resume
    case snapshot(directory: String, diff: Bool)
    case stop
    /// The devices' I/O counters, for metering.
    case stats
    /// The protocol's version, so a client can tell what it may send.
    case version
    /// A backup's point in time (the tracked disks' maps taken, their
    /// copy-before-write begun), and its end.
    case backupBegin
    case backupEnd(completed: Bool)

    /// This grammar's version (`version` answers `skiff-control 2`; 2 added backup-begin and backup-end).
    public static let protocolVersion = 2

    /// The longest request line, newline excluded.
    public static let maxLine = 4096

    public static let usage = "status, pause, resume, snapshot DIR [diff], stop, stats, version, backup-begin, backup-end ok|failed"

    /// Parses one line (without its newline).
    public static func parse(_ line: [UInt8]) throws(ControlProtocolError) -> ControlRequest {
        guard line.count <= maxLine else { throw ControlProtocolError("request longer than \(maxLine) bytes") }
        let words = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        guard let verb = words.first else { throw ControlProtocolError("empty request (\(usage))") }
        switch (Array(verb), words.count) {
        case (Array("status".utf8), 1): return .status
        case (Array("pause".utf8), 1): return .pause
        case (Array("resume".utf8), 1): return .resume
        case (Array("stop".utf8), 1): return .stop
        case (Array("stats".utf8), 1): return .stats
        case (Array("version".utf8), 1): return .version
        case (Array("backup-begin".utf8), 1): return .backupBegin
        case (Array("backup-end".utf8), 2):
            if Array(words[1]) == Array("ok".utf8) { return .backupEnd(completed: true) }
            if Array(words[1]) == Array("failed".utf8) { return .backupEnd(completed: false) }
        case (Array("snapshot".utf8), 2), (Array("snapshot".utf8), 3):
            if words.count == 3 { guard Array(words[2]) == Array("diff".utf8) else { break } }
            let directory = try Self.directory(Array(words[1]))
            return .snapshot(directory: directory, diff: words.count == 3)
        default: break
        }
        throw ControlProtocolError("unknown request (\(usage))")
    }

    /// A snapshot directory as the line may carry it.
    public static func directory(_ bytes: [UInt8]) throws(ControlProtocolError) -> String {
        guard bytes.first == UInt8(ascii: "/") else { throw ControlProtocolError("snapshot: the directory must be an absolute path") }
        guard bytes.allSatisfy({ $0 > 0x20 && $0 != 0x7f }) else {
            throw ControlProtocolError("snapshot: the directory's path has a space or a control character")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw ControlProtocolError("snapshot: the directory's path is not UTF-8") }
        return text
    }

    /// The line that carries this request, newline included.
    public var line: [UInt8] {
        switch self {
        case .status: return Array("status\n".utf8)
        case .pause: return Array("pause\n".utf8)
        case .resume: return Array("resume\n".utf8)
        case .stop: return Array("stop\n".utf8)
        case .stats: return Array("stats\n".utf8)
        case .version: return Array("version\n".utf8)
        case .backupBegin: return Array("backup-begin\n".utf8)
        case .backupEnd(let completed): return Array("backup-end \(completed ? "ok" : "failed")\n".utf8)
        case .snapshot(let directory, let diff): return Array("snapshot \(directory)\(diff ? " diff" : "")\n".utf8)
        }
    }
}

/// A reply line: `ok [TEXT]` or `error TEXT`.
public enum ControlReply: Equatable, Sendable {
    case ok(String)
    case error(String)

    /// Replies are bounded too: a client reads at most this much.
    public static let maxLine = 4096

    /// Reads one reply line from a connected socket (blocking; the caller
    /// sets a timeout if it wants one). nil: the peer closed it, or sent
    /// more than a line's worth, without a newline.
    public static func read(from fd: Int32) throws(ControlProtocolError) -> ControlReply? {
        var answer: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !answer.contains(0x0a) && answer.count <= maxLine {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            answer += buf.prefix(n)
        }
        guard let end = answer.firstIndex(of: 0x0a) else { return nil }
        return try parse(Array(answer[..<end]))
    }

    public static func parse(_ line: [UInt8]) throws(ControlProtocolError) -> ControlReply {
        guard line.count <= maxLine else { throw ControlProtocolError("reply longer than \(maxLine) bytes") }
        let text = String(decoding: line, as: UTF8.self)
        if text == "ok" { return .ok("") }
        if text.hasPrefix("ok ") { return .ok(String(text.dropFirst(3))) }
        if text.hasPrefix("error ") { return .error(String(text.dropFirst(6))) }
        throw ControlProtocolError("unexpected reply: \(String(text.prefix(80)))")
    }

    /// The line that carries this reply, newline included. Control bytes
    /// in the text (a message quoting something odd) become `?`, so a
    /// reply is always one line; an overlong text is cut.
    public var line: [UInt8] {
        let (head, text): (String, String)
        switch self {
        case .ok(let t): (head, text) = ("ok", t)
        case .error(let t): (head, text) = ("error", t)
        }
        let room = Self.maxLine - head.utf8.count - 1
        var body: [UInt8] = []
        for scalar in text.unicodeScalars {
            let bytes = scalar.value < 0x20 || scalar.value == 0x7f ? [UInt8(ascii: "?")] : Array(String(scalar).utf8)
            guard body.count + bytes.count <= room else { break } // whole characters only
            body += bytes
        }
        if body.isEmpty, case .ok = self { return Array(head.utf8) + [0x0a] }
        return Array(head.utf8) + [UInt8(ascii: " ")] + body + [0x0a]
    }
}

public struct ControlProtocolError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// `stats`'s answer: the VM's devices' counters, summed by kind.
public struct ControlStats: Codable, Equatable, Sendable {
    public var diskReadBytes: UInt64 = 0, diskWriteBytes: UInt64 = 0, diskReadOps: UInt64 = 0, diskWriteOps: UInt64 = 0
    public var netRxBytes: UInt64 = 0, netTxBytes: UInt64 = 0, netRxPackets: UInt64 = 0, netTxPackets: UInt64 = 0
    public init() {}

    static let keys = ["disk_read_bytes", "disk_write_bytes", "disk_read_ops", "disk_write_ops",
                       "net_rx_bytes", "net_tx_bytes", "net_rx_packets", "net_tx_packets"]

    var values: [UInt64] { [diskReadBytes, diskWriteBytes, diskReadOps, diskWriteOps, netRxBytes, netTxBytes, netRxPackets, netTxPackets] }

    public var text: String { zip(Self.keys, values).map { "\($0)=\($1)" }.joined(separator: " ") }

    /// Parses an `ok` text; unknown keys are ignored (a newer VMM may say more).
    public static func parse(_ text: String) throws(ControlProtocolError) -> ControlStats {
        var s = ControlStats()
        for word in text.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { throw ControlProtocolError("stats: '\(word.prefix(40))' is not key=value") }
            guard let v = UInt64(kv[1]) else { throw ControlProtocolError("stats: \(kv[0]) is not a count") }
            switch kv[0] {
            case "disk_read_bytes": s.diskReadBytes = v
            case "disk_write_bytes": s.diskWriteBytes = v
            case "disk_read_ops": s.diskReadOps = v
            case "disk_write_ops": s.diskWriteOps = v
            case "net_rx_bytes": s.netRxBytes = v
            case "net_tx_bytes": s.netTxBytes = v
            case "net_rx_packets": s.netRxPackets = v
            case "net_tx_packets": s.netTxPackets = v
            default: break
            }
        }
        return s
    }
}
