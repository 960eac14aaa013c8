import CBackup
import Glibc
import Synchronization

/// Reads and writes of whole chunks past the page cache (O_DIRECT), for
/// the chunk store and a restore's image. A chunk is written once and
/// read rarely, and the kernel's copies into and out of page-cache pages
/// were the largest cost of both a full backup and a restore here (by
/// perf: about 530 MB/s per core, where the disk moves 1.4 GB/s direct).
///
/// Direct I/O wants block-aligned buffers, offsets and lengths: bytes are
/// staged through page-aligned buffers of `bufferBytes` (kept for the
/// next: a fresh 4 MiB mapping faults on every page), and a write is
/// padded to whole blocks, the file cut to its length after. Where a
/// filesystem refuses direct I/O (tmpfs), callers fall back to buffered.
enum DirectIO {
    static let alignment = 4096
    static let bufferBytes = roundUp(Chunk.maxBlobBytes)
    /// Free buffers, by address; at most 16 are kept.
    private static let free = Mutex<[Int]>([])

    static func roundUp(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// A descriptor opened with O_DIRECT, or -1 (errno set; EINVAL where
    /// the filesystem has no direct I/O).
    static func open(_ path: String, _ flags: Int32, mode: Int32 = 0o600) -> Int32 {
        cbackup_open_direct(path, flags, mode)
    }

    /// `body` on an aligned buffer of `bufferBytes`; nil if none could be had.
    static func withBuffer<R>(_ body: (UnsafeMutableRawPointer) throws -> R) rethrows -> R? {
        guard let buffer = free.withLock({ $0.popLast() }).flatMap({ UnsafeMutableRawPointer(bitPattern: $0) })
                ?? cbackup_aligned_alloc(UInt(alignment), UInt(bufferBytes)) else { return nil }
        defer { free.withLock { if $0.count < 16 { $0.append(Int(bitPattern: buffer)) } else { Glibc.free(buffer) } } }
        return try body(buffer)
    }

    /// Writes `bytes` (at most `bufferBytes`) at `offset` (aligned) of the
    /// direct descriptor `fd`, padded with zeros to whole blocks, through
    /// an aligned buffer. 0, or the errno of the failure.
    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int32 {
        guard bytes.count <= bufferBytes, offset % alignment == 0 else { return EINVAL }
        return withBuffer { buffer -> Int32 in
            let padded = roundUp(bytes.count)
            if bytes.count > 0 { buffer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
            memset(buffer + bytes.count, 0, padded - bytes.count)
            var done = 0
            while done < padded {
                let n = pwrite(fd, buffer + done, padded - done, off_t(offset + done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return n < 0 ? errno : EIO }
                done += n
            }
            return 0
        } ?? ENOMEM
    }

    /// Reads the first `count` bytes (at most `bufferBytes`) of the direct
    /// descriptor `fd` and hands them to `body`. The errno of a failure,
    /// EIO for a file shorter than `count`.
    static func read<R>(_ fd: Int32, count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> Result<R, Errno> {
        guard count <= bufferBytes else { return .failure(Errno(EINVAL)) }
        return try withBuffer { buffer -> Result<R, Errno> in
            let padded = roundUp(count)
            var done = 0
            while done < count {
                let n = pread(fd, buffer + done, padded - done, off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return .failure(Errno(n < 0 ? errno : EIO)) }
                done += n
            }
            return .success(try body(UnsafeRawBufferPointer(start: buffer, count: count)))
        } ?? .failure(Errno(ENOMEM))
    }

    struct Errno: Error { let code: Int32; init(_ c: Int32) { code = c } }
}
