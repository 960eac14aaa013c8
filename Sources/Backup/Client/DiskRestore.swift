import CBackup
import Foundation
import Glibc
import NIOCore

/// `skiff backup restore ID`: a backup's disks back into image files. Each
/// chunk is fetched and decoded, which checks it whole (its payload's hash,
/// decryption, its contents against its digest); a chunk that fails stops
/// the restore with a message naming it, and the partial file is removed:
/// a restore never leaves silently wrong data. A zero chunk is a hole.
public enum DiskRestore {
    public struct Report: Codable, Sendable {
        public var id: String
        public var disks: [String]
        public var bytesWritten: Int64
        public var bytesFetched: Int64
        public var seconds: Double
    }

    /// Writes disk `i` of backup `id` to `outputs[i]` (a path that must not
    /// exist yet, unless `overwrite`).
    public static func run(id: String, outputs: [String], key: BackupKey?, overwrite: Bool = false, jobs: Int = 4,
                           server: ServerConnection) async throws -> Report {
        let t0 = Date()
        let m = try await server.manifest(id)
        try m.validate()
        guard outputs.count == m.disks.count else {
            throw BackupError.invalid("backup \(id) has \(m.disks.count) disk\(m.disks.count == 1 ? "" : "s") (\(m.disks.map(\.name).joined(separator: ", "))): give one output for each")
        }
        if m.keyFingerprint != key?.fingerprint {
            throw BackupError.invalid(m.keyFingerprint.map { "backup \(id) is encrypted with key \($0): give it with --key-file" + (key != nil ? " (this key is \(key!.fingerprint))" : "") }
                                      ?? "backup \(id) is not encrypted: leave out --key-file")
        }
        var written: Int64 = 0, fetched: Int64 = 0
        for (disk, output) in zip(m.disks, outputs) {
            let partial = output + ".partial"
            if !overwrite && access(output, F_OK) == 0 { throw BackupError.conflict("\(output) exists: pick another path, or remove it first") }
            let fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw BackupError.invalid("\(partial): \(String(cString: strerror(errno)))") }
            do {
                guard ftruncate(fd, off_t(disk.bytes)) == 0 else { throw BackupError.failed("\(partial): \(String(cString: strerror(errno)))") }
                // Chunks written direct (DirectIO) where the filesystem allows.
                let direct = DirectIO.open(partial, O_WRONLY | O_CLOEXEC)
                defer { if direct >= 0 { close(direct) } }
                let (w, f) = try await restore(disk, to: fd, direct: direct, path: partial, key: key, jobs: jobs, server: server)
                written += w; fetched += f
                guard fsync(fd) == 0 else { throw BackupError.failed("\(partial): \(String(cString: strerror(errno)))") }
                close(fd)
                guard rename(partial, output) == 0 else { throw BackupError.failed("\(output): \(String(cString: strerror(errno)))") }
            } catch {
                close(fd)
                unlink(partial)
                throw BackupError.failed("restoring \(disk.name) of \(id): \(error) (nothing was written to \(output))")
            }
        }
        return Report(id: id, disks: outputs, bytesWritten: written, bytesFetched: fetched, seconds: Date().timeIntervalSince(t0))
    }

    static func restore(_ disk: Manifest.Disk, to fd: Int32, direct: Int32, path: String, key: BackupKey?, jobs: Int,
                        server: ServerConnection) async throws -> (written: Int64, fetched: Int64) {
        let work = disk.chunks.enumerated().compactMap { c, d in d.map { (c, $0) } }
        var written: Int64 = 0, fetched: Int64 = 0
        try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            var next = work.makeIterator()
            func add() -> Bool {
                guard let (c, d) = next.next() else { return false }
                group.addTask { try await place(c, d, of: disk, into: fd, direct: direct, path: path, key: key, server: server) }
                return true
            }
            for _ in 0..<max(1, jobs) where add() {}
            while let (w, f) = try await group.next() {
                written += Int64(w); fetched += Int64(f)
                _ = add()
            }
        }
        return (written, fetched)
    }

    /// Fetches chunk `c` of `disk` (digest `d`), checks it whole
    /// (`Chunk.decode`) and its length, and writes it at its place in `fd`
    /// (`path`, for messages), or through `direct`, the same file opened
    /// for direct I/O (-1: none), where the chunk is whole blocks. Returns
    /// the bytes written and fetched.
    static func place(_ c: Int, _ d: ChunkDigest, of disk: Manifest.Disk, into fd: Int32, direct: Int32 = -1, path: String,
                      key: BackupKey?, server: ServerConnection) async throws -> (written: Int, fetched: Int) {
        let blob = try await server.chunk(d)
        let start = UInt64(c) * UInt64(disk.chunkBytes)
        let expected = Int(min(UInt64(disk.chunkBytes), disk.bytes - start))
        let ok = try blob.withUnsafeReadableBytes { b in
            try Chunk.withContents(b, digest: d, key: key) { contents in
                guard contents.count == expected else {
                    throw BackupError.failed("chunk \(d.hex) holds \(contents.count) bytes, chunk \(c) of the disk needs \(expected)")
                }
                if direct >= 0, contents.count % DirectIO.alignment == 0, DirectIO.write(direct, contents, at: Int(start)) == 0 {
                    return true
                }
                var done = 0
                while done < contents.count {
                    let n = pwrite(fd, contents.baseAddress! + done, contents.count - done, off_t(start) + off_t(done))
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { return false }
                    done += n
                }
                return true
            }
        }
        guard ok else { throw BackupError.failed("\(path): \(String(cString: strerror(errno)))") }
        // Written back while the rest comes (the fsync at the end finds it done).
        _ = cbackup_start_writeback(fd)
        return (expected, blob.readableBytes)
    }
}
