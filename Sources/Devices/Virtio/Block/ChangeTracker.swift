import BlockTracking
import Glibc
import Synchronization

/// Changed-block tracking for one disk: every write, discard and
/// write-zeroes marks the chunks (1 MiB) it touches in the disk's map
/// (`BlockTracking`), which is saved, marked clean, when the VMM closes
/// the disk in order. While a backup reads the disk, the first write to a
/// chunk copies its old contents aside first (copy-before-write), so the
/// backup sees the disk as it was at the moment it began while the guest
/// runs on.
public final class ChangeTracker: @unchecked Sendable {
    let file: ChangedBlockMapFile
    let disk: Int32
    let diskBytes: UInt64
    let state: Mutex<State>
    /// Why the map was not trusted when the VM started (nil: it was).
    public let problem: String?

    struct State {
        var map: ChangedBlockMap
        var session: BackupSession?
        var closed = false
    }

    /// The files a backup gave for one disk: where old chunks go (at their
    /// own offset, sparse), one byte per chunk that is set once its old
    /// contents are there (shared with the backup client, which reads a
    /// chunk from the disk and then checks its byte), and where the map of
    /// chunks changed before the backup is written.
    public struct BackupFiles: Sendable {
        public let copies: Int32, copied: Int32, changed: Int32
        public init(copies: Int32, copied: Int32, changed: Int32) { self.copies = copies; self.copied = copied; self.changed = changed }
    }

    final class BackupSession: @unchecked Sendable {
        let copies: Int32
        let copiedFd: Int32
        let flags: UnsafeMutablePointer<UInt8>
        let chunks: Int
        /// The marks the backup took (given back if it does not finish).
        let taken: [UInt8]
        init(copies: Int32, copiedFd: Int32, flags: UnsafeMutablePointer<UInt8>, chunks: Int, taken: [UInt8]) {
            self.copies = copies; self.copiedFd = copiedFd; self.flags = flags; self.chunks = chunks; self.taken = taken
        }
        func close() {
            munmap(flags, chunks)
            Glibc.close(copies)
            Glibc.close(copiedFd)
        }
    }

    /// Tracks `disk` (open read-write) in the map `file`: the map is loaded
    /// (or started afresh if it cannot be trusted) and at once saved as in
    /// use, so that a VMM that dies leaves it marked unreliable.
    public init(file: ChangedBlockMapFile, disk: Int32, diskBytes: UInt64) throws(BlockError) {
        self.file = file
        self.disk = disk
        self.diskBytes = diskBytes
        let (map, problem) = file.load(disk: disk, diskBytes: diskBytes)
        self.problem = problem
        do { try file.save(map, clean: false) } catch { throw BlockError(error.description) }
        state = Mutex(State(map: map))
    }

    /// Runs `write` (the guest's write of [offset, offset+length)) with
    /// the chunks it touches marked, and copied aside first if a backup is
    /// reading them. The lock is held across the write: a backup that
    /// begins takes the map either before the write or after it.
    func writing<T>(offset: UInt64, length: UInt64, _ write: () -> T) -> T {
        state.withLock { s -> T in
            if let session = s.session, length > 0, offset < diskBytes {
                let first = Int(offset >> UInt64(ChangedBlockMap.chunkShift))
                let last = Int((min(diskBytes, offset + length) - 1) >> UInt64(ChangedBlockMap.chunkShift))
                for c in first...last where c < session.chunks && session.flags[c] == 0 { copyAside(c, session) }
            }
            s.map.mark(offset: offset, length: length)
            return write()
        }
    }

    /// Copies chunk `c`'s current contents to the backup's copies file,
    /// then sets its byte. If the copy fails the byte is set to 2 (the
    /// client fails the backup rather than read a chunk the guest changed).
    private func copyAside(_ c: Int, _ session: BackupSession) {
        let start = UInt64(c) << UInt64(ChangedBlockMap.chunkShift)
        let count = Int(min(ChangedBlockMap.chunkBytes, diskBytes - start))
        var buffer = [UInt8](repeating: 0, count: count)
        let ok = buffer.withUnsafeMutableBytes { b in
            fullIO(count) { d in pread(disk, b.baseAddress! + d, count - d, off_t(start) + off_t(d)) }
                && fullIO(count) { d in pwrite(session.copies, b.baseAddress! + d, count - d, off_t(start) + off_t(d)) }
        }
        // The copy is complete before its byte says so, and the byte is
        // set before the guest's write reaches the disk (the client checks
        // the byte after reading the disk).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        session.flags[c] = ok ? 1 : 2
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Starts a backup: the map of chunks changed so far is written to
    /// `files.changed` (its generation the one the backup completes) and
    /// a new generation begins. A backup still open (its client gone) is
    /// given up first. Called with the device quiesced (no request in flight).
    public func beginBackup(_ files: BackupFiles) throws(BlockError) -> String {
        let chunks = ChangedBlockMap.chunkCount(diskBytes)
        guard ftruncate(files.copied, off_t(chunks)) == 0 else { throw BlockError("backup: sizing its flags file: \(String(cString: strerror(errno)))") }
        guard let p = mmap(nil, max(chunks, 1), PROT_READ | PROT_WRITE, MAP_SHARED, files.copied, 0), p != MAP_FAILED else {
            throw BlockError("backup: mapping its flags file: \(String(cString: strerror(errno)))")
        }
        let flags = p.assumingMemoryBound(to: UInt8.self)
        return try state.withLock { s throws(BlockError) -> String in
            if let old = s.session { s.map.merge(old.taken); s.map.generation &-= 1; old.close(); s.session = nil }
            let before = s.map
            let bytes = before.encoded(clean: true)
            let n = bytes.withUnsafeBytes { pwrite(files.changed, $0.baseAddress, $0.count, 0) }
            guard n == bytes.count else {
                munmap(p, max(chunks, 1))
                throw BlockError("backup: writing the changed-block map: \(String(cString: strerror(errno)))")
            }
            let taken = s.map.advance()
            s.session = BackupSession(copies: dup(files.copies), copiedFd: dup(files.copied), flags: flags, chunks: chunks, taken: taken)
            return "map=\(before.idText),generation=\(before.generation),reliable=\(before.reliable ? 1 : 0),changed=\(before.dirtyChunks.count)"
        }
    }

    /// Ends the backup: `completed`, its chunks are gone from the map; not,
    /// they are marked again and the generation goes back, as if it had
    /// not begun. False if no backup was open.
    public func endBackup(completed: Bool) -> Bool {
        state.withLock { s in
            guard let session = s.session else { return false }
            if !completed { s.map.merge(session.taken); s.map.generation &-= 1 }
            session.close()
            s.session = nil
            return true
        }
    }

    /// Saves the map as closed cleanly (the VMM stops in order): the disk
    /// is synced first, and its modification time recorded. A backup still
    /// open gives its chunks back.
    public func close() {
        state.withLock { s in
            guard !s.closed else { return }
            s.closed = true
            if let session = s.session { s.map.merge(session.taken); s.map.generation &-= 1; session.close(); s.session = nil }
            guard fdatasync(disk) == 0 || errno == EINVAL else { return } // left unclean
            s.map.diskModified = ChangedBlockMapFile.modified(disk)
            try? file.save(s.map, clean: true)
        }
    }
}
