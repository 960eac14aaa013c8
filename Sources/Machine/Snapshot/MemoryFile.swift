import CKVM
import Glibc

/// A snapshot's guest memory: a 4 KiB header, then each RAM region's bytes
/// in guest-physical order, page-aligned so a restore can map the file
/// directly. Pages never written are holes (the file is sparse).
///
/// The header names the snapshot it belongs to (the state file carries the
/// same identifier), the RAM size and layout, and has its own CRC-32C: a
/// memory file from another snapshot, of the wrong size or cut short is
/// refused. Page contents are not checksummed (that would make restore
/// time grow with memory size).
public enum MemoryFile {
    public static let dataOffset: UInt64 = 4096
    static let magic = Array("SKIFFMEM".utf8)
    static let formatVersion: UInt32 = 1

    public struct Header: Equatable, Sendable {
        public var snapshotID: [UInt8]
        public var totalSize: UInt64
        public var regions: [(base: UInt64, size: UInt64)]

        public static func == (a: Header, b: Header) -> Bool {
            a.snapshotID == b.snapshotID && a.totalSize == b.totalSize
                && a.regions.map(\.base) == b.regions.map(\.base) && a.regions.map(\.size) == b.regions.map(\.size)
        }

        func encode() -> [UInt8] {
            var w = StateWriter()
            w.bytes += MemoryFile.magic
            w.u32(MemoryFile.formatVersion)
            w.bytes += snapshotID
            w.u64(totalSize)
            w.u32(UInt32(regions.count))
            for r in regions { w.u64(r.base); w.u64(r.size) }
            w.u32(w.bytes.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) })
            return w.bytes + [UInt8](repeating: 0, count: Int(MemoryFile.dataOffset) - w.bytes.count)
        }

        public static func decode(_ bytes: [UInt8], path: String) throws(SnapshotError) -> Header {
            guard bytes.count == Int(MemoryFile.dataOffset), Array(bytes.prefix(8)) == MemoryFile.magic else {
                throw SnapshotError("\(path): not a Skiff snapshot memory file")
            }
            var r = StateReader(bytes[8...], what: path)
            let format = try r.u32()
            guard format == MemoryFile.formatVersion else {
                throw SnapshotError("\(path): memory file format \(format); this Skiff reads format \(MemoryFile.formatVersion)")
            }
            let id = Array(try r.take(16))
            let total = try r.u64()
            let n = try r.count(limit: 8)
            var regions: [(base: UInt64, size: UInt64)] = []
            for _ in 0..<n { regions.append((try r.u64(), try r.u64())) }
            let used = bytes.count - r.remaining
            let crc = try r.u32()
            guard bytes.withUnsafeBytes({ ckvm_crc32c(0, $0.baseAddress, used) }) == crc else {
                throw SnapshotError("\(path): memory file header checksum mismatch: the file is corrupt")
            }
            return Header(snapshotID: id, totalSize: total, regions: regions)
        }
    }

    static func header(of memory: GuestMemory, id: [UInt8]) -> Header {
        Header(snapshotID: id, totalSize: memory.totalSize, regions: memory.regions.map { ($0.guestBase, $0.size) })
    }

    /// Writes `memory` into `fd`, a new empty file (`name` for messages):
    /// every page with content (`dirty` nil: a full snapshot), or only the
    /// pages `dirty` marks (a diff). Returns the number of pages written.
    @discardableResult
    public static func write(_ memory: GuestMemory, fd: Int32, name path: String, id: [UInt8], dirty: [PageBitmap]? = nil) throws(SnapshotError) -> Int {
        let fail = { (what: String) in SnapshotError("\(path): \(what): \(String(cString: strerror(errno)))") }
        guard ftruncate(fd, off_t(dataOffset + memory.totalSize)) == 0 else { throw fail("ftruncate") }
        try pwriteAll(fd, header(of: memory, id: id).encode(), at: 0, path: path)
        var written = 0
        var fileOffset = dataOffset
        for (i, region) in memory.regions.enumerated() {
            let pages: PageBitmap
            if let dirty {
                guard i < dirty.count, dirty[i].pages == region.pages else { throw SnapshotError("\(path): dirty map does not fit region \(i)") }
                pages = dirty[i]
            } else {
                pages = try contentPages(memory, region: i, path: path)
            }
            for run in pages.runs {
                let start = run.lowerBound * Int(GuestMemory.pageSize)
                let bytes = UnsafeRawBufferPointer(start: region.host + start, count: run.count * Int(GuestMemory.pageSize))
                try pwriteAll(fd, bytes, at: fileOffset + UInt64(start), path: path)
                written += run.count
            }
            fileOffset += region.size
        }
        guard fdatasync(fd) == 0 else { throw fail("fdatasync") }
        return written
    }

    /// /proc/self/pagemap opened before the VMM lost its view of /proc (a
    /// jailed VMM has none), or -1 to open it when needed.
    nonisolated(unsafe) public static var pagemap: Int32 = -1

    /// The pages of a region that may hold something other than zeros:
    /// those the host has (resident or swapped, from /proc/self/pagemap)
    /// and, for restored RAM, those its snapshot files hold.
    static func contentPages(_ memory: GuestMemory, region index: Int, path: String) throws(SnapshotError) -> PageBitmap {
        let region = memory.regions[index]
        var pages = PageBitmap(pages: region.pages)
        let map = pagemap >= 0 ? pagemap : Glibc.open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard map >= 0 else { throw SnapshotError("/proc/self/pagemap: \(String(cString: strerror(errno)))") }
        defer { if map != pagemap { close(map) } }
        let firstPage = Int(bitPattern: region.host) / Int(GuestMemory.pageSize)
        let chunk = 65536
        var entries = [UInt64](repeating: 0, count: chunk)
        var page = 0
        while page < region.pages {
            let n = min(chunk, region.pages - page)
            let got = entries.withUnsafeMutableBytes { pread(map, $0.baseAddress, n * 8, off_t((firstPage + page) * 8)) }
            guard got == n * 8 else { throw SnapshotError("/proc/self/pagemap: short read") }
            for k in 0..<n where entries[k] & (3 << 62) != 0 { pages[page + k] = true } // present or swapped
            page += n
        }
        // Pages of restored RAM not touched since restore live in the files.
        var fileOffset = dataOffset
        for r in memory.regions.prefix(index) { fileOffset += r.size }
        for layer in memory.layers {
            if let bitmaps = layer.pages {
                if index < bitmaps.count { pages.formUnion(bitmaps[index]) }
                continue
            }
            var at = off_t(fileOffset)
            let end = off_t(fileOffset + region.size)
            while at < end {
                let data = lseek(layer.fd, at, CKVM_SEEK_DATA)
                guard data >= 0, data < end else { break }
                let hole = min(lseek(layer.fd, data, CKVM_SEEK_HOLE), end)
                guard hole > data else { break }
                let first = Int((UInt64(data) - fileOffset) / GuestMemory.pageSize)
                let last = Int((UInt64(hole) - fileOffset + GuestMemory.pageSize - 1) / GuestMemory.pageSize)
                pages.insert(first..<last)
                at = hole
            }
        }
        return pages
    }

    /// Opens a memory file for restore, checking it belongs to snapshot
    /// `id` and holds RAM of exactly `size` bytes laid out as `ranges`.
    public static func open(_ path: String, id: [UInt8], size: UInt64, ranges: [(UInt64, UInt64)]) throws(SnapshotError) -> Int32 {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SnapshotError("\(path): \(String(cString: strerror(errno)))") }
        var valid = false
        defer { if !valid { close(fd) } }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw SnapshotError("\(path): not a regular file") }
        guard UInt64(st.st_size) >= dataOffset else { throw SnapshotError("\(path): \(st.st_size) bytes: not a Skiff snapshot memory file") }
        var bytes = [UInt8](repeating: 0, count: Int(dataOffset))
        guard bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, $0.count, 0) }) == Int(dataOffset) else {
            throw SnapshotError("\(path): cannot read its header")
        }
        let header = try Header.decode(bytes, path: path)
        guard header.snapshotID == id else { throw SnapshotError("\(path): belongs to another snapshot (its identifier differs from the state file's)") }
        guard header.totalSize == size, header.regions.map(\.base) == ranges.map(\.0), header.regions.map(\.size) == ranges.map(\.1) else {
            throw SnapshotError("\(path): holds \(header.totalSize >> 20) MiB of RAM, the snapshot's VM has \(size >> 20) MiB")
        }
        guard UInt64(st.st_size) == dataOffset + size else {
            throw SnapshotError("\(path): \(st.st_size) bytes, expected \(dataOffset + size): truncated or extended")
        }
        valid = true
        return fd
    }

    static func pwriteAll(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64, path: String) throws(SnapshotError) {
        var failure: SnapshotError?
        bytes.withUnsafeBytes { b in
            do throws(SnapshotError) { try pwriteAll(fd, b, at: offset, path: path) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws(SnapshotError) {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, min(bytes.count - done, 64 << 20), off_t(offset) + off_t(done))
            guard n > 0 else { throw SnapshotError("\(path): write: \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}
