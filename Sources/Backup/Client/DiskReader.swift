import BlockTracking
import Glibc
import Synchronization

/// Reads a disk chunk by chunk for a backup. Holes (a sparse image's
/// unwritten ranges) are found with SEEK_DATA and not read. A running VM's
/// disk is read under its VMM's copy-before-write: a chunk is read from the
/// disk, then its flag is checked, and if the guest has written the chunk
/// since the backup began, its old contents are read from the copy instead.
final class DiskReader: @unchecked Sendable {
    let path: String
    let fd: Int32
    let size: UInt64
    /// The backup's copies file and flags (a live backup), else nil.
    let live: (copies: Int32, flags: UnsafePointer<UInt8>)?

    init(path: String, fd: Int32, size: UInt64, live: (copies: Int32, flags: UnsafePointer<UInt8>)?) {
        self.path = path; self.fd = fd; self.size = size; self.live = live
    }

    static func open(_ path: String) throws -> (fd: Int32, size: UInt64) {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BackupError.invalid("disk \(path): \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw BackupError.invalid("disk \(path): \(String(cString: strerror(errno)))") }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { close(fd); throw BackupError.invalid("disk \(path): not a file or block device") }
        let end = kind == S_IFBLK ? lseek(fd, 0, SEEK_END) : st.st_size
        guard end > 0, end % 512 == 0 else { close(fd); throw BackupError.invalid("disk \(path): its size (\(end) bytes) is not a positive multiple of 512") }
        return (fd, UInt64(end))
    }

    var chunks: Int { ChangedBlockMap.chunkCount(size) }

    func range(_ chunk: Int) -> (start: off_t, count: Int) {
        let start = UInt64(chunk) * ChangedBlockMap.chunkBytes
        return (off_t(start), Int(min(ChangedBlockMap.chunkBytes, size - start)))
    }

    /// Chunk `chunk` into `buffer` (resized to the chunk's length). Returns
    /// the bytes read from files and whether the chunk is all zeroes.
    func read(_ chunk: Int, into buffer: inout [UInt8]) throws -> (bytesRead: Int, zero: Bool) {
        let (start, count) = range(chunk)
        // Not zeroed first (4 MiB of memset a chunk, by perf): every byte is
        // read or, past a short file's end, zeroed; a hole's buffer is not used.
        if buffer.count != count { buffer = [UInt8](unsafeUninitializedCapacity: count) { _, n in n = count } }
        var bytes = 0
        let data = lseek(fd, start, 3 /* SEEK_DATA */)
        let hole = (data < 0 && errno == ENXIO) || (data >= 0 && data >= start + off_t(count))
        if !hole {
            try readFully(fd, &buffer, at: start, what: path)
            bytes = count
        }
        if let live {
            // The disk was read first; a flag set by now means the guest may
            // have written the chunk meanwhile, and the copy has what it held.
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            switch live.flags[chunk] {
            case 0: break
            case 1:
                try readFully(live.copies, &buffer, at: start, what: path + "'s copy-before-write file")
                bytes += count
                return (bytes, Self.isZero(buffer))
            default: throw BackupError.failed("disk \(path): the VMM could not copy chunk \(chunk) aside before the guest wrote it; the backup would not be of one point in time")
            }
        }
        if hole { return (bytes, true) }
        return (bytes, Self.isZero(buffer))
    }

    func readFully(_ fd: Int32, _ buffer: inout [UInt8], at start: off_t, what: String) throws {
        let count = buffer.count
        let ok = buffer.withUnsafeMutableBytes { b in
            var done = 0
            while done < count {
                let n = pread(fd, b.baseAddress! + done, count - done, start + off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n == 0 { memset(b.baseAddress! + done, 0, count - done); return true } // a short file reads as zeroes
                guard n > 0 else { return false }
                done += n
            }
            return true
        }
        guard ok else { throw BackupError.failed("reading \(what): \(String(cString: strerror(errno)))") }
    }

    static func isZero(_ b: [UInt8]) -> Bool {
        b.withUnsafeBytes { raw in
            let words = raw.count / 8
            let p = raw.baseAddress!.assumingMemoryBound(to: UInt64.self)
            var acc: UInt64 = 0
            var i = 0
            while i < words {
                acc |= p[i]
                if i & 1023 == 1023, acc != 0 { return false }
                i += 1
            }
            for j in (words * 8)..<raw.count { acc |= UInt64(raw[j]) }
            return acc == 0
        }
    }
}
