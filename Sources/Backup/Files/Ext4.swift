import Foundation

/// Reads files out of an ext4 filesystem without mounting it: enough of the
/// format (superblock, group descriptors, inodes, extent trees, linear and
/// hashed directories, fast symlinks) to list a directory and copy a file
/// out of a backed-up disk, reading only the blocks it needs through `read`
/// (a backup's chunks, fetched on demand). Every field comes from a disk
/// that may be hostile: offsets and counts are checked, loops bounded, and
/// anything this reader does not know is an error, not a guess.
public struct Ext4 {
    public typealias Reader = @Sendable (_ offset: UInt64, _ count: Int) async throws -> [UInt8]

    let read: Reader
    let size: UInt64
    public let blockSize: Int
    let inodesPerGroup: UInt32
    let inodeSize: Int
    let inodeCount: UInt32
    let descriptorSize: Int
    let firstDataBlock: UInt64
    let groups: UInt64
    let incompat: UInt32

    public struct Entry: Sendable, Equatable {
        public let name: String
        public let inode: UInt32
        public let kind: Kind
        public let size: UInt64
        public let mode: UInt16
    }

    public enum Kind: String, Sendable { case file, directory, symlink, other }

    enum Feature {
        static let fileType: UInt32 = 0x2, recover: UInt32 = 0x4, journalDevice: UInt32 = 0x8, metaBG: UInt32 = 0x10
        static let extents: UInt32 = 0x40, bits64: UInt32 = 0x80, mmp: UInt32 = 0x100, flexBG: UInt32 = 0x200
        static let eaInode: UInt32 = 0x400, dirData: UInt32 = 0x1000, csumSeed: UInt32 = 0x2000, largeDir: UInt32 = 0x4000
        static let inlineData: UInt32 = 0x8000, encrypt: UInt32 = 0x10000, casefold: UInt32 = 0x20000
        /// What this reader understands (others make it refuse the disk).
        static let known: UInt32 = fileType | recover | extents | bits64 | mmp | flexBG | eaInode | csumSeed | largeDir
    }

    public static func open(size: UInt64, read: @escaping Reader) async throws -> Ext4 {
        guard size >= 2048 else { throw BackupError.invalid("the disk is too small to hold ext4") }
        let sb = try await read(1024, 1024)
        func u16(_ o: Int) -> UInt16 { UInt16(sb[o]) | UInt16(sb[o + 1]) << 8 }
        func u32(_ o: Int) -> UInt32 { UInt32(sb[o]) | UInt32(sb[o + 1]) << 8 | UInt32(sb[o + 2]) << 16 | UInt32(sb[o + 3]) << 24 }
        guard sb.count == 1024, u16(56) == 0xEF53 else { throw BackupError.invalid("the disk does not hold an ext4 filesystem at its start (no superblock); partitioned disks are not read yet") }
        let logBlock = u32(24)
        guard logBlock <= 6 else { throw BackupError.invalid("ext4: block size 2^\(10 + logBlock)") }
        let blockSize = 1024 << Int(logBlock)
        let incompat = u32(96)
        guard incompat & ~Feature.known == 0 else {
            throw BackupError.invalid(String(format: "ext4: features 0x%x this reader does not know (inline data, encryption, casefold or meta_bg)", incompat & ~Feature.known))
        }
        let bits64 = incompat & Feature.bits64 != 0
        let inodeSize = u32(76) == 0 ? 128 : Int(u16(88))
        guard inodeSize >= 128, inodeSize <= blockSize, inodeSize & (inodeSize - 1) == 0 else { throw BackupError.invalid("ext4: inode size \(inodeSize)") }
        let descriptorSize = bits64 ? Int(u16(254)) : 32
        guard descriptorSize >= 32, descriptorSize <= 1024, descriptorSize & (descriptorSize - 1) == 0 else { throw BackupError.invalid("ext4: descriptor size \(descriptorSize)") }
        let blocksPerGroup = u32(32), inodesPerGroup = u32(40)
        guard blocksPerGroup > 0, inodesPerGroup > 0 else { throw BackupError.invalid("ext4: no blocks or inodes per group") }
        let blocks = UInt64(u32(4)) | (bits64 ? UInt64(u32(0x150)) << 32 : 0)
        let firstData = UInt64(u32(20))
        guard blocks > firstData else { throw BackupError.invalid("ext4: \(blocks) blocks") }
        let groups = (blocks - firstData + UInt64(blocksPerGroup) - 1) / UInt64(blocksPerGroup)
        return Ext4(read: read, size: size, blockSize: blockSize, inodesPerGroup: inodesPerGroup, inodeSize: inodeSize, inodeCount: u32(0),
                    descriptorSize: descriptorSize, firstDataBlock: firstData, groups: groups, incompat: incompat)
    }

    func block(_ n: UInt64) async throws -> [UInt8] { try await bytes(n &* UInt64(blockSize), blockSize) }

    func bytes(_ offset: UInt64, _ count: Int) async throws -> [UInt8] {
        guard offset < size, UInt64(count) <= size - offset else { throw BackupError.invalid("ext4: a structure at byte \(offset) lies beyond the disk") }
        let b = try await read(offset, count)
        guard b.count == count else { throw BackupError.failed("ext4: short read at \(offset)") }
        return b
    }

    struct Inode {
        let number: UInt32
        let mode: UInt16
        let size: UInt64
        let flags: UInt32
        let blocks: [UInt8] // i_block, 60 bytes
        var kind: Kind {
            switch mode & 0xF000 {
            case 0x8000: return .file
            case 0x4000: return .directory
            case 0xA000: return .symlink
            default: return .other
            }
        }
    }

    func inode(_ n: UInt32) async throws -> Inode {
        guard n >= 1, inodeCount == 0 || n <= inodeCount else { throw BackupError.invalid("ext4: inode \(n) out of range") }
        let group = UInt64((n - 1) / inodesPerGroup), index = UInt64((n - 1) % inodesPerGroup)
        guard group < groups else { throw BackupError.invalid("ext4: inode \(n) in group \(group) of \(groups)") }
        let gdtBlock = firstDataBlock + 1
        let d = try await bytes(gdtBlock * UInt64(blockSize) + group * UInt64(descriptorSize), descriptorSize)
        func u32(_ b: [UInt8], _ o: Int) -> UInt32 { UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }
        let table = UInt64(u32(d, 8)) | (descriptorSize >= 64 ? UInt64(u32(d, 0x28)) << 32 : 0)
        let raw = try await bytes(table &* UInt64(blockSize) &+ index * UInt64(inodeSize), inodeSize)
        let mode = UInt16(raw[0]) | UInt16(raw[1]) << 8
        let size = UInt64(u32(raw, 4)) | UInt64(u32(raw, 108)) << 32
        return Inode(number: n, mode: mode, size: size, flags: u32(raw, 32), blocks: Array(raw[40..<100]))
    }

    /// The file's data as (logical block, physical block, count) runs, from its extent tree.
    func extents(_ i: Inode) async throws -> [(logical: UInt64, physical: UInt64, count: UInt64, zero: Bool)] {
        guard i.flags & 0x80000 != 0 else {
            throw BackupError.invalid("ext4: inode \(i.number) uses block maps (ext2/ext3 style), which this reader does not read yet")
        }
        var out: [(UInt64, UInt64, UInt64, Bool)] = []
        var visited = 0
        func walk(_ node: [UInt8], depth limit: Int) async throws {
            func u16(_ o: Int) -> UInt16 { UInt16(node[o]) | UInt16(node[o + 1]) << 8 }
            func u32(_ o: Int) -> UInt32 { UInt32(node[o]) | UInt32(node[o + 1]) << 8 | UInt32(node[o + 2]) << 16 | UInt32(node[o + 3]) << 24 }
            guard node.count >= 12, u16(0) == 0xF30A else { throw BackupError.invalid("ext4: inode \(i.number): a damaged extent tree") }
            let entries = Int(u16(2)), depth = Int(u16(6))
            guard depth < limit, 12 + entries * 12 <= node.count else { throw BackupError.invalid("ext4: inode \(i.number): a damaged extent tree") }
            visited += 1
            guard visited < 100_000 else { throw BackupError.invalid("ext4: inode \(i.number): an extent tree too large") }
            for e in 0..<entries {
                let o = 12 + e * 12
                if depth == 0 {
                    var len = UInt64(u16(o + 4))
                    let uninitialized = len > 32768
                    if uninitialized { len -= 32768 }
                    let start = UInt64(u16(o + 6)) << 32 | UInt64(u32(o + 8))
                    out.append((UInt64(u32(o)), start, len, uninitialized))
                } else {
                    let leaf = UInt64(u16(o + 8)) << 32 | UInt64(u32(o + 4))
                    try await walk(try await block(leaf), depth: depth)
                }
            }
        }
        try await walk(i.blocks, depth: 6)
        return out
    }

    /// Up to `limit` bytes of the file's contents (holes and unwritten extents as zeroes).
    func contents(_ i: Inode, limit: UInt64) async throws -> [UInt8] {
        guard i.size <= limit else { throw BackupError.invalid("ext4: inode \(i.number) holds \(i.size) bytes, more than \(limit)") }
        if i.kind == .symlink && i.flags & 0x80000 == 0 && i.size < 60 { return Array(i.blocks.prefix(Int(i.size))) } // fast symlink
        if i.flags & 0x10000000 != 0 { throw BackupError.invalid("ext4: inode \(i.number) has inline data, which this reader does not read") }
        var out = [UInt8](repeating: 0, count: Int(i.size))
        let bs = UInt64(blockSize)
        for e in try await extents(i) where !e.zero {
            for k in 0..<e.count {
                let at = (e.logical + k) * bs
                guard at < i.size else { break }
                let b = try await block(e.physical + k)
                let n = Int(min(bs, i.size - at))
                out.replaceSubrange(Int(at)..<Int(at) + n, with: b.prefix(n))
            }
        }
        return out
    }

    /// The entries of directory inode `i` (`.` and `..` left out).
    func entries(_ i: Inode) async throws -> [Entry] {
        guard i.kind == .directory else { throw BackupError.invalid("ext4: inode \(i.number) is not a directory") }
        let data = try await contents(i, limit: 256 << 20)
        var found: [(String, UInt32, UInt8)] = []
        var o = 0
        while o + 8 <= data.count {
            let inode = UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
            let rec = Int(data[o + 4]) | Int(data[o + 5]) << 8
            let nameLength = Int(data[o + 6])
            guard rec >= 8, o + rec <= data.count, 8 + nameLength <= rec else { throw BackupError.invalid("ext4: directory inode \(i.number): a damaged entry at byte \(o)") }
            if inode != 0 && nameLength > 0 {
                let name = String(decoding: data[(o + 8)..<(o + 8 + nameLength)], as: UTF8.self)
                if name != "." && name != ".." { found.append((name, inode, data[o + 7])) }
            }
            o += rec
        }
        var out: [Entry] = []
        for (name, n, _) in found {
            let child = try await inode(n)
            out.append(Entry(name: name, inode: n, kind: child.kind, size: child.size, mode: child.mode))
        }
        return out.sorted { $0.name < $1.name }
    }

    /// The inode a path names (absolute; symlinks in it not followed).
    func lookup(_ path: String) async throws -> Inode {
        var current = try await inode(2)
        for part in path.split(separator: "/") where part != "." {
            guard current.kind == .directory else { throw BackupError.notFound("\(path): \(part) is under something that is not a directory") }
            guard let e = try await entries(current).first(where: { $0.name == part }) else { throw BackupError.notFound("\(path): no \(part)") }
            current = try await inode(e.inode)
        }
        return current
    }

    /// A directory's entries, or a single entry for anything else.
    public func list(_ path: String) async throws -> [Entry] {
        let i = try await lookup(path)
        if i.kind == .directory { return try await entries(i) }
        return [Entry(name: String(path.split(separator: "/").last ?? "/"), inode: i.number, kind: i.kind, size: i.size, mode: i.mode)]
    }

    /// A regular file's (or symlink's) contents, up to `limit` bytes.
    public func file(_ path: String, limit: UInt64 = 1 << 30) async throws -> [UInt8] {
        let i = try await lookup(path)
        guard i.kind == .file || i.kind == .symlink else { throw BackupError.invalid("\(path) is a \(i.kind.rawValue), not a file") }
        return try await contents(i, limit: limit)
    }
}

/// A backup's disk as bytes fetched on demand: each chunk is fetched (and
/// checked) the first time a read touches it, and a few are kept.
public actor ChunkedDisk {
    let disk: Manifest.Disk
    let key: BackupKey?
    let server: ServerConnection
    var cache: [Int: [UInt8]] = [:]
    var order: [Int] = []
    public private(set) var fetched = 0

    public init(_ disk: Manifest.Disk, key: BackupKey?, server: ServerConnection) {
        self.disk = disk; self.key = key; self.server = server
    }

    func chunk(_ c: Int) async throws -> [UInt8] {
        if let b = cache[c] { return b }
        let length = Int(min(UInt64(disk.chunkBytes), disk.bytes - UInt64(c) * UInt64(disk.chunkBytes)))
        var contents = [UInt8](repeating: 0, count: length)
        if let d = disk.chunks[c] {
            let blob = try await server.chunk(d)
            contents = try blob.withUnsafeReadableBytes { try Chunk.decode($0, digest: d, key: key) }
            guard contents.count == length else { throw BackupError.failed("chunk \(d.hex) holds \(contents.count) bytes, chunk \(c) needs \(length)") }
            fetched += 1
        }
        cache[c] = contents
        order.append(c)
        if order.count > 16 { cache[order.removeFirst()] = nil }
        return contents
    }

    public func read(_ offset: UInt64, _ count: Int) async throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var at = offset
        let end = offset + UInt64(count)
        while at < end {
            let c = Int(at / UInt64(disk.chunkBytes))
            guard c < disk.chunks.count else { break }
            let b = try await chunk(c)
            let inChunk = Int(at % UInt64(disk.chunkBytes))
            let n = min(b.count - inChunk, Int(end - at))
            out += b[inChunk..<(inChunk + n)]
            at += UInt64(n)
        }
        return out
    }
}
