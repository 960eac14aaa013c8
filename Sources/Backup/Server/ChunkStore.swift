import CBackup
import Foundation
import Glibc
import NIOCore
import NIOPosix

/// The server's chunks on disk, one file per digest under
/// `DIR/chunks/XY/` (XY: the digest's first byte). A chunk is written to
/// `DIR/tmp` and renamed into place, so a reader or a server killed
/// midway never sees half of one; durability comes from one syncfs before
/// a manifest that needs the chunks is written (as PBS does by default),
/// not an fsync per chunk. A chunk's mtime is the last time a backup or a
/// garbage collection said it is needed: collection removes those older
/// than its own start (and than the oldest running backup).
public final class ChunkStore: Sendable {
    /// Where the handlers' disk work runs (a direct write or read of a
    /// chunk blocks its thread for milliseconds): threads of NIO's, not
    /// the cooperative pool's two, which verify and answer meanwhile (they
    /// sat idle 15% of a full backup waiting on direct writes).
    public static var disk: NIOThreadPool { .singleton }

    public let root: String
    let chunks: String
    let tmp: String

    public init(root: String) throws {
        self.root = root
        chunks = root + "/chunks"
        tmp = root + "/tmp"
        for d in [root, chunks, tmp, root + "/hosts"] { try Self.makeDirectory(d) }
        for i in 0..<256 { try Self.makeDirectory(chunks + "/" + ChunkDigest.hexString([UInt8(i)])) }
    }

    static func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else { throw BackupError.failed("\(path): \(String(cString: strerror(errno)))") }
    }

    func path(_ d: ChunkDigest) -> String {
        let hex = d.hex
        return chunks + "/" + hex.prefix(2) + "/" + hex
    }

    /// Whether a chunk is stored, and whether its contents were checked
    /// against its name. A chunk is stored on its uploader's word (its
    /// header checked, not its hash: SHA-256 was 41% of the server's CPU in
    /// a full backup, by perf), since only the hosts that sent it rely on
    /// it; it is checked in full when another upload of it comes (which
    /// may be another host's, whose backup will then rely on the stored
    /// copy: the checked upload takes the place of an unchecked one), and
    /// by `verify`. Unchecked chunks have mode 0400, checked ones 0600.
    public enum Standing: Equatable, Sendable { case absent, unchecked, checked }
    static let uncheckedMode: mode_t = 0o400, checkedMode: mode_t = 0o600

    public func standing(_ d: ChunkDigest) -> Standing {
        var st = stat()
        guard lstat(path(d), &st) == 0 else { return .absent }
        return st.st_mode & 0o200 != 0 ? .checked : .unchecked
    }

    /// `verify` found the stored chunk right.
    public func markChecked(_ d: ChunkDigest) { _ = chmod(path(d), Self.checkedMode) }

    /// Marks the chunk as needed now; false if it is not stored.
    @discardableResult
    public func touch(_ d: ChunkDigest) -> Bool { utimensat(AT_FDCWD, path(d), nil, 0) == 0 }

    /// The stored blob (at most Chunk.maxBlobBytes are read), direct
    /// (`DirectIO`) where the filesystem allows.
    public func read(_ d: ChunkDigest) throws -> ByteBuffer {
        let file = path(d)
        var direct = true
        var fd = DirectIO.open(file, O_RDONLY | O_CLOEXEC)
        if fd < 0 && errno == EINVAL { direct = false; fd = open(file, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else {
            throw errno == ENOENT ? BackupError.notFound("chunk \(d.hex) is missing from the store") : BackupError.failed("chunk \(d.hex): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size <= Chunk.maxBlobBytes else { throw BackupError.failed("chunk \(d.hex): larger than any chunk") }
        let size = Int(st.st_size)
        var blob = ByteBufferAllocator().buffer(capacity: size)
        if direct, case .success = DirectIO.read(fd, count: size, { blob.writeBytes($0) }) { return blob }
        // Buffered: where direct reads fail (a filesystem that takes O_DIRECT at open only).
        var failure: Int32 = 0
        blob.clear()
        blob.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { b in
            var done = 0
            while done < size {
                let n = pread(fd, b.baseAddress! + done, size - done, off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { failure = n < 0 ? errno : EIO; return 0 }
                done += n
            }
            return done
        }
        guard failure == 0 else { throw BackupError.failed("chunk \(d.hex): \(failure == EIO ? "short read" : String(cString: strerror(failure)))") }
        return blob
    }

    /// Writes a blob (already verified) to a temporary file, to be put in
    /// place by `place` (which the repository does in its actor, so that a
    /// collection cannot remove a chunk between a backup's use of it and
    /// its touch).
    ///
    /// Direct (`DirectIO`) where the filesystem allows.
    public func stage(_ d: ChunkDigest, _ blob: UnsafeRawBufferPointer, checked: Bool) throws -> String {
        let name = tmp + "/" + d.hex + "." + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let mode = checked ? Self.checkedMode : Self.uncheckedMode
        if blob.count <= DirectIO.bufferBytes, try stageDirect(name, d, blob, mode: mode) { return name }
        let fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw BackupError.failed("storing chunk \(d.hex): \(String(cString: strerror(errno)))") }
        do { try Self.writeAll(fd, blob, d) } catch { close(fd); unlink(name); throw error }
        // Written back from now on, not all at the manifest's syncfs: the
        // disk works while the backup goes on.
        _ = cbackup_start_writeback(fd)
        close(fd)
        return name
    }

    /// False (nothing left behind) where the filesystem refuses direct I/O (tmpfs).
    private func stageDirect(_ name: String, _ d: ChunkDigest, _ blob: UnsafeRawBufferPointer, mode: mode_t) throws -> Bool {
        let fd = DirectIO.open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: Int32(mode))
        guard fd >= 0 else {
            if errno == EINVAL { return false }
            throw BackupError.failed("storing chunk \(d.hex): \(String(cString: strerror(errno)))")
        }
        var failure = DirectIO.write(fd, blob, at: 0)
        if failure == 0, ftruncate(fd, off_t(blob.count)) != 0 { failure = errno }
        close(fd)
        guard failure == 0 else {
            unlink(name)
            // Some filesystems take O_DIRECT at open and refuse its writes.
            if failure == EINVAL { return false }
            throw BackupError.failed("storing chunk \(d.hex): \(String(cString: strerror(failure)))")
        }
        return true
    }

    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, _ d: ChunkDigest) throws {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw BackupError.failed("storing chunk \(d.hex): \(String(cString: strerror(n < 0 ? errno : EIO)))") }
            done += n
        }
    }

    /// Puts a staged chunk in place; one stored already is kept, and touched.
    /// Puts a staged chunk in place. `replacing`: over whatever copy is
    /// there (the staged one was checked, the stored one was not). Else only
    /// where none is: false (the staged one removed) if one came meanwhile.
    public func place(_ d: ChunkDigest, staged: String, replacing: Bool) throws -> Bool {
        if replacing {
            guard rename(staged, path(d)) == 0 else {
                let e = String(cString: strerror(errno)); unlink(staged)
                throw BackupError.failed("storing chunk \(d.hex): \(e)")
            }
            return true
        }
        // link, not rename: it fails where a copy is, which must not be replaced unchecked.
        defer { unlink(staged) }
        if link(staged, path(d)) == 0 { return true }
        if errno == EEXIST { return false }
        throw BackupError.failed("storing chunk \(d.hex): \(String(cString: strerror(errno)))")
    }

    /// Everything written so far reaches the disk (before a manifest that needs it).
    public func sync() throws {
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw BackupError.failed("\(root): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard cbackup_syncfs(fd) == 0 else { throw BackupError.failed("syncfs \(root): \(String(cString: strerror(errno)))") }
    }

    /// Every stored chunk with its mtime (seconds) and size on disk.
    public func all() -> [(digest: ChunkDigest, mtime: Int, bytes: Int64)] {
        var out: [(ChunkDigest, Int, Int64)] = []
        for i in 0..<256 {
            let dir = chunks + "/" + ChunkDigest.hexString([UInt8(i)])
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { continue }
            for n in names {
                guard let d = ChunkDigest(hex: n) else { continue }
                var st = stat()
                if lstat(dir + "/" + n, &st) == 0 { out.append((d, st.st_mtim.tv_sec, Int64(st.st_blocks) * 512)) }
            }
        }
        return out
    }

    /// Leftovers of writes a killed server did not finish.
    public func removeTemporaries(olderThan seconds: Int) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? []
        let now = time(nil)
        for n in names {
            var st = stat()
            if lstat(tmp + "/" + n, &st) == 0, now - st.st_mtim.tv_sec > seconds { unlink(tmp + "/" + n) }
        }
    }
}
