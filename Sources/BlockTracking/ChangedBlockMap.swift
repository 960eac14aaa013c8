import Glibc

/// Which 1 MiB chunks of a disk the guest changed since the last backup:
/// the VMM's changed-block tracking, read by the backup client (so an
/// incremental backup reads only what changed). Kept in a file beside the
/// disk (`DISK.cbt`), with a generation number that each backup advances
/// and a `clean` mark that only an orderly close sets: a VMM that died (or
/// a file that was damaged) leaves a map that is known to be unreliable,
/// and the next backup reads everything and compares hashes instead.
///
/// File layout (little-endian; the file may come from elsewhere, so every
/// field is checked):
///
///     0   8  magic "SKIFFCBT"
///     8   4  version (1)
///     12  4  log2 of the chunk size (20)
///     16  8  disk bytes
///     24 16  map id (random, new whenever the map is started afresh)
///     40  8  generation
///     48  1  clean (1: closed by its owner, 0: in use or died)
///     49  7  zero
///     56  8  the disk file's modification time when the map was closed
///            (ns since the epoch): a disk written by anything else since
///            (mounted on the host, copied over) makes the map unreliable
///     64  8  FNV-1a of bytes 0..<64 and the bitmap
///     72  -  bitmap, one bit per chunk, chunk i in byte i/8, bit i%8
public struct ChangedBlockMap: Equatable, Sendable {
    /// 1 MiB: a backup's chunk too (Backup's Chunk.maxBytes). Measured by
    /// bench/backup against 4 MiB (PBS's and the borg setting's size): a 1%
    /// change in 36 extents stores about a third as much per round, and an
    /// incremental backup reads and sends that much less.
    public static let chunkShift: UInt32 = 20
    public static let chunkBytes: UInt64 = 1 << 20
    static let magic = Array("SKIFFCBT".utf8)
    static let version: UInt32 = 1
    static let headerBytes = 72

    public let diskBytes: UInt64
    public var id: [UInt8]
    public var generation: UInt64
    /// False when the map cannot be trusted (new, or its owner died): a
    /// backup on it reads every chunk.
    public var reliable: Bool
    /// The disk's mtime (ns) when the map was last closed cleanly.
    public var diskModified: UInt64 = 0
    public private(set) var bits: [UInt8]

    public var chunks: Int { Self.chunkCount(diskBytes) }

    public static func chunkCount(_ diskBytes: UInt64) -> Int { Int((diskBytes + chunkBytes - 1) / chunkBytes) }

    /// A new map: nothing is known, so every chunk counts as changed.
    public init(diskBytes: UInt64) {
        self.diskBytes = diskBytes
        id = (0..<16).map { _ in UInt8.random(in: 0...255) }
        generation = 0
        reliable = false
        bits = [UInt8](repeating: 0, count: (Self.chunkCount(diskBytes) + 7) / 8)
    }

    public func isDirty(_ chunk: Int) -> Bool { !reliable || bits[chunk >> 3] & (1 << (chunk & 7)) != 0 }

    public mutating func mark(_ chunk: Int) { bits[chunk >> 3] |= 1 << (chunk & 7) }

    /// Marks every chunk that bytes [offset, offset+length) touch (clipped to the disk).
    public mutating func mark(offset: UInt64, length: UInt64) {
        guard length > 0, offset < diskBytes else { return }
        let end = min(diskBytes, offset &+ length < offset ? diskBytes : offset + length)
        var c = Int(offset >> UInt64(Self.chunkShift))
        let last = Int((end - 1) >> UInt64(Self.chunkShift))
        while c <= last { mark(c); c += 1 }
    }

    /// The chunks marked, in order.
    public var dirtyChunks: [Int] { (0..<chunks).filter { isDirty($0) } }

    /// Adds another map's marks (a backup that did not finish gives its chunks back).
    public mutating func merge(_ other: [UInt8]) {
        for i in bits.indices where i < other.count { bits[i] |= other[i] }
    }

    /// Starts the next generation: the marks so far are returned and cleared.
    public mutating func advance() -> [UInt8] {
        let taken = bits
        bits = [UInt8](repeating: 0, count: bits.count)
        generation &+= 1
        reliable = true
        return taken
    }

    // MARK: the file

    public func encoded(clean: Bool) -> [UInt8] {
        var out = Self.magic
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        put(Self.version)
        put(Self.chunkShift)
        put(diskBytes)
        out += id
        put(generation)
        out.append(clean && reliable ? 1 : 0)
        out += [UInt8](repeating: 0, count: 7)
        put(diskModified)
        put(Self.fnv(out + bits))
        out += bits
        return out
    }

    /// Reads a map file's bytes for a disk of `diskBytes`; nil (with the
    /// reason) if they are not a map of this disk.
    public static func decode(_ b: [UInt8], diskBytes: UInt64) -> (map: ChangedBlockMap?, problem: String?) {
        guard b.count >= headerBytes, Array(b[0..<8]) == magic else { return (nil, "not a changed-block map") }
        func u32(_ at: Int) -> UInt32 { b[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        func u64(_ at: Int) -> UInt64 { b[at..<at + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        guard u32(8) == version else { return (nil, "changed-block map version \(u32(8)), this Skiff reads \(version)") }
        guard u32(12) == chunkShift else { return (nil, "changed-block map of \(u32(12))-bit chunks, not \(chunkShift)") }
        guard u64(16) == diskBytes else { return (nil, "changed-block map of a \(u64(16))-byte disk, this one has \(diskBytes)") }
        var m = ChangedBlockMap(diskBytes: diskBytes)
        guard b.count == headerBytes + m.bits.count else { return (nil, "changed-block map of \(b.count) bytes, expected \(headerBytes + m.bits.count)") }
        let bits = Array(b[headerBytes...])
        guard fnv(Array(b[0..<64]) + bits) == u64(64) else { return (nil, "changed-block map's checksum does not match its contents") }
        m.id = Array(b[24..<40])
        m.generation = u64(40)
        m.reliable = b[48] == 1
        m.diskModified = u64(56)
        m.bits = bits
        return (m, m.reliable ? nil : "the changed-block map was not closed cleanly (its VMM stopped without saving it)")
    }

    static func fnv(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf29ce484222325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        return h
    }

    public var idText: String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: id.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }
}

/// A map file on disk: opened and locked (exclusively, so one VMM or one
/// backup uses a disk's map at a time), read, and rewritten in place.
public final class ChangedBlockMapFile {
    public let path: String
    public let fd: Int32

    /// Opens (creating) PATH and takes its lock; throws if another holds it.
    public init(path: String) throws(MapFileError) {
        self.path = path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw MapFileError("changed-block map \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw MapFileError("changed-block map \(path) is in use (a running VM's disk: back it up through its control socket)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The map the file holds for the disk open on `disk`, or a new one
    /// (unreliable) if it holds none or one of another disk; `problem`
    /// says why it is not to be trusted. A disk modified since the map was
    /// closed makes it unreliable too.
    public func load(disk: Int32, diskBytes: UInt64) -> (map: ChangedBlockMap, problem: String?) {
        var (map, problem) = load(diskBytes: diskBytes)
        if problem == nil, map.diskModified != Self.modified(disk) {
            map.reliable = false
            problem = "the disk was written by something other than Skiff since its changed-block map was closed"
        }
        return (map, problem)
    }

    /// A file's modification time in ns since the epoch (0 if unknown).
    public static func modified(_ fd: Int32) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mtim.tv_sec >= 0 else { return 0 }
        return UInt64(st.st_mtim.tv_sec) &* 1_000_000_000 &+ UInt64(st.st_mtim.tv_nsec)
    }

    func load(diskBytes: UInt64) -> (map: ChangedBlockMap, problem: String?) {
        var st = stat()
        let limit = ChangedBlockMap.headerBytes + (ChangedBlockMap.chunkCount(diskBytes) + 7) / 8
        guard fstat(fd, &st) == 0, st.st_size > 0 else { return (ChangedBlockMap(diskBytes: diskBytes), "no changed-block map yet") }
        guard st.st_size <= off_t(limit) else { return (ChangedBlockMap(diskBytes: diskBytes), "changed-block map of \(st.st_size) bytes, more than its disk needs") }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count else { return (ChangedBlockMap(diskBytes: diskBytes), "changed-block map: short read") }
        let (m, problem) = ChangedBlockMap.decode(bytes, diskBytes: diskBytes)
        return (m ?? ChangedBlockMap(diskBytes: diskBytes), problem)
    }

    /// Writes the map (durably: fdatasync).
    public func save(_ map: ChangedBlockMap, clean: Bool) throws(MapFileError) {
        let bytes = map.encoded(clean: clean)
        let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count, ftruncate(fd, off_t(bytes.count)) == 0, fdatasync(fd) == 0 else {
            throw MapFileError("changed-block map \(path): \(String(cString: strerror(errno)))")
        }
    }
}

public struct MapFileError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
