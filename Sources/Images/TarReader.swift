import Foundation

/// A tar stream read entry by entry (POSIX ustar, pax extended headers,
/// GNU long names), for `skiff image import`. The file is hostile: every
/// header's checksum is verified, every number parsed with bounds, pax and
/// long-name records limited in size, and anything not understood is an
/// error naming the entry, never a trap.
public final class TarReader {
    public struct Entry {
        public var path: String
        public var link: String
        /// The ustar type flag: "0" file, "1" hard link, "2" symlink, "3"/"4" devices, "5" directory, "6" FIFO.
        public var type: UInt8
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        public var size: Int64
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// The most a pax record set or a GNU long name may hold.
    static let maxMetadata = 64 << 10
    static let maxEntrySize: Int64 = 64 << 30

    let fd: Int32
    let name: String
    private var remaining: Int64 = 0 // data bytes of the current entry not yet read, padding included
    private var entries = 0

    public init(path: String, name: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure("\(name): \(String(cString: strerror(errno)))") }
        self.name = name
    }

    deinit { close(fd) }

    /// The next entry, or nil at the end of the archive.
    public func next() throws -> Entry? {
        try skip()
        var paxPath: String?, paxLink: String?, paxSize: Int64?, longName: String?, longLink: String?
        while true {
            var block = [UInt8](repeating: 0, count: 512)
            let got = try readFully(&block)
            if got == 0 || block.allSatisfy({ $0 == 0 }) { return nil } // the end (two zero blocks, or none)
            guard got == 512 else { throw Failure("\(name): the archive ends inside a header") }
            entries += 1
            guard entries <= 1_000_000 else { throw Failure("\(name): more than a million entries") }
            try verifyChecksum(block)
            let type = block[156]
            let size = try number(block[124..<136], "size")
            guard size >= 0, size <= Self.maxEntrySize else { throw Failure("\(name): an entry of \(size) bytes") }
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K"):
                guard size <= Self.maxMetadata else {
                    throw Failure("\(name): a \(type == UInt8(ascii: "L") || type == UInt8(ascii: "K") ? "long name" : "pax header") of \(size) bytes (at most \(Self.maxMetadata))")
                }
                var data = [UInt8](repeating: 0, count: Int(size))
                guard try readFully(&data) == data.count else { throw Failure("\(name): the archive ends inside a header") }
                try skipPadding(size)
                if type == UInt8(ascii: "x") {
                    let records = try pax(data)
                    paxPath = records["path"] ?? paxPath
                    paxLink = records["linkpath"] ?? paxLink
                    if let s = records["size"] {
                        guard let n = Int64(s), n >= 0, n <= Self.maxEntrySize else { throw Failure("\(name): a pax size of '\(s.prefix(20))'") }
                        paxSize = n
                    }
                } else if type == UInt8(ascii: "L") {
                    longName = Self.cString(data[...])
                } else if type == UInt8(ascii: "K") {
                    longLink = Self.cString(data[...])
                } // 'g': global records, nothing Skiff uses
                continue
            default:
                var path = Self.cString(block[0..<100])
                if block[257..<262].elementsEqual(Array("ustar".utf8)) {
                    let prefix = Self.cString(block[345..<500])
                    if !prefix.isEmpty { path = prefix + "/" + path }
                }
                let entry = Entry(path: paxPath ?? longName ?? path, link: paxLink ?? longLink ?? Self.cString(block[157..<257]),
                                  type: type == 0 ? UInt8(ascii: "0") : type,
                                  mode: UInt32(truncatingIfNeeded: try number(block[100..<108], "mode") & 0o7777),
                                  uid: UInt32(truncatingIfNeeded: max(0, min(try number(block[108..<116], "uid"), Int64(UInt32.max - 1)))),
                                  gid: UInt32(truncatingIfNeeded: max(0, min(try number(block[116..<124], "gid"), Int64(UInt32.max - 1)))),
                                  size: paxSize ?? size)
                guard !entry.path.utf8.contains(0), entry.path.utf8.count <= 4096, entry.link.utf8.count <= 4096 else {
                    throw Failure("\(name): an entry's name is longer than 4096 bytes or holds a NUL")
                }
                // Only files carry data; a link's or a directory's size is ignored, as tar does.
                remaining = entry.type == UInt8(ascii: "0") || entry.type == UInt8(ascii: "7") ? (entry.size + 511) / 512 * 512 : 0
                return entry
            }
        }
    }

    /// The current entry's data into `out` (or dropped when nil).
    public func copyData(_ entry: Entry, to out: Int32?) throws {
        var left = entry.size
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while left > 0 {
            let want = Int(min(Int64(buffer.count), left))
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, want) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure("\(name): the archive ends inside \(entry.path.prefix(200))") }
            if let out {
                var done = 0
                while done < n {
                    let w = buffer.withUnsafeBytes { write(out, $0.baseAddress! + done, n - done) }
                    if w < 0 && errno == EINTR { continue }
                    guard w > 0 else { throw Failure("writing \(entry.path.prefix(200)): \(String(cString: strerror(errno)))") }
                    done += w
                }
            }
            left -= Int64(n)
            remaining -= Int64(n)
        }
    }

    private func skip() throws {
        while remaining > 0 {
            var buffer = [UInt8](repeating: 0, count: Int(min(remaining, 1 << 16)))
            let n = try readFully(&buffer)
            guard n == buffer.count else { throw Failure("\(name): the archive ends inside an entry") }
            remaining -= Int64(n)
        }
    }

    private func skipPadding(_ size: Int64) throws {
        let pad = Int((512 - size % 512) % 512)
        if pad > 0 {
            var b = [UInt8](repeating: 0, count: pad)
            guard try readFully(&b) == pad else { throw Failure("\(name): the archive ends inside a header") }
        }
    }

    private func readFully(_ buffer: inout [UInt8]) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw Failure("\(name): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            done += n
        }
        return done
    }

    private func verifyChecksum(_ block: [UInt8]) throws {
        var sum: Int64 = 0
        for (i, b) in block.enumerated() { sum += (148..<156).contains(i) ? 32 : Int64(b) }
        guard let stored = try? number(block[148..<156], "checksum"), stored == sum else {
            throw Failure("\(name): a header's checksum is wrong (not a tar archive, or a damaged one)")
        }
    }

    /// An octal field (NUL or space terminated), or GNU's base-256 form.
    private func number(_ field: ArraySlice<UInt8>, _ what: String) throws -> Int64 {
        if let first = field.first, first & 0x80 != 0 {
            guard first == 0x80, field.count <= 12 else { throw Failure("\(name): a negative or oversized \(what) field") }
            var v: Int64 = 0
            for b in field.dropFirst() {
                guard v < Int64.max >> 8 else { throw Failure("\(name): an oversized \(what) field") }
                v = v << 8 | Int64(b)
            }
            return v
        }
        var v: Int64 = 0
        var seen = false
        for b in field {
            if b == 0 || (b == 32 && seen) { break }
            if b == 32 { continue }
            guard (0x30...0x37).contains(b), v < Int64.max >> 3 else { throw Failure("\(name): a \(what) field that is not an octal number") }
            v = v << 3 | Int64(b - 0x30)
            seen = true
        }
        return v
    }

    /// "LEN key=value\n" records.
    private func pax(_ data: [UInt8]) throws -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        while i < data.count {
            guard let space = data[i...].firstIndex(of: 32), let len = Int(String(decoding: data[i..<space], as: UTF8.self)),
                  len > space - i + 1, i + len <= data.count, data[i + len - 1] == 0x0a else {
                throw Failure("\(name): a malformed pax header")
            }
            let record = data[(space + 1)..<(i + len - 1)]
            guard let eq = record.firstIndex(of: UInt8(ascii: "=")) else { throw Failure("\(name): a pax record without '='") }
            out[String(decoding: record[..<eq], as: UTF8.self)] = String(decoding: record[(eq + 1)...], as: UTF8.self)
            i += len
        }
        return out
    }

    static func cString(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
}
