import CBackup
import Dispatch
import Foundation
import Glibc
import NIOCore

/// `skiff backup restore ID --disk-output F --live SOCKET`: a restore the
/// VM need not wait for. The image is made at its full size at once, with
/// a flags file beside it (`F.fill`, one byte per chunk: 1 once the chunk
/// is whole in the image) and a socket; a VM started on it (`skiff run
/// --disk F,fill=SOCKET`) asks for each chunk it touches before it is
/// there (`Devices.DiskFill`), and gets it ahead of the rest, which is
/// fetched in order in the background. A chunk is written once, before
/// its flag is set, and never after: what the guest writes is never
/// overwritten. Every chunk is checked (`Chunk.decode`) before it is
/// written; one that fails is not marked, the VM's read of it fails with
/// an I/O error, and the restore ends with that message. When every chunk
/// is there the image is synced and the flags file removed: the disk is
/// then a plain image, for this run and the next.
public enum LiveRestore {
    public struct Report: Codable, Sendable {
        public var id: String
        public var disk: String
        public var bytesWritten: Int64
        public var bytesFetched: Int64
        /// Chunks the VM asked for before the background reached them.
        public var askedFor: Int
        public var seconds: Double
    }

    /// Restores disk `index` of backup `id` into `output`, serving `socket`.
    /// `ready` is called once a VM may start on it.
    public static func run(id: String, index: Int = 0, output: String, socket: String, key: BackupKey?, overwrite: Bool = false, jobs: Int = 4,
                           server: ServerConnection, ready: @Sendable () -> Void) async throws -> Report {
        let t0 = Date()
        let m = try await server.manifest(id)
        try m.validate()
        guard m.disks.indices.contains(index) else { throw BackupError.invalid("backup \(id) has \(m.disks.count) disks; no disk \(index)") }
        if m.keyFingerprint != key?.fingerprint {
            throw BackupError.invalid(m.keyFingerprint.map { "backup \(id) is encrypted with key \($0): give it with --key-file" } ?? "backup \(id) is not encrypted: leave out --key-file")
        }
        let disk = m.disks[index]
        guard disk.chunkBytes == 1 << 20 else { throw BackupError.invalid("backup \(id): chunks of \(disk.chunkBytes) bytes; a live restore needs 1 MiB ones") }
        if !overwrite && access(output, F_OK) == 0 { throw BackupError.conflict("\(output) exists: pick another path, or remove it first") }
        let fd = open(output, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BackupError.invalid("\(output): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(disk.bytes)) == 0 else { throw BackupError.failed("\(output): \(String(cString: strerror(errno)))") }
        let filler = try Filler(disk: disk, fd: fd, path: output, key: key, server: server)
        let listener = try listen(socket)
        defer { close(listener); unlink(socket) }
        ready()

        // Requests from VMs, each connection on a thread of its own (its reads block).
        let stop = Stop()
        let acceptor = Thread { serve(listener: listener, filler: filler, stop: stop) }
        acceptor.start()
        defer { stop.set() }

        // The rest, in order, `jobs` at a time (the VM's requests go past them).
        var failures: [String] = []
        await withTaskGroup(of: String?.self) { group in
            var next = 0
            func add() -> Bool {
                while next < disk.chunks.count && filler.present(next) { next += 1 }
                guard next < disk.chunks.count else { return false }
                let c = next
                next += 1
                group.addTask { do { try await filler.ensure(c); return nil } catch { return "\(error)" } }
                return true
            }
            for _ in 0..<max(1, jobs) where add() {}
            while let r = await group.next() {
                if let r { failures.append(r) }
                _ = add()
            }
        }
        let stats = await filler.stats
        guard failures.isEmpty else {
            throw BackupError.failed("restoring \(disk.name) of \(id) live: \(failures.count) chunks could not be had, the first: \(failures[0]); their reads fail in the VM, and \(output).fill stays")
        }
        guard fdatasync(fd) == 0 else { throw BackupError.failed("\(output): \(String(cString: strerror(errno)))") }
        filler.finished()
        return Report(id: id, disk: output, bytesWritten: stats.written, bytesFetched: stats.fetched, askedFor: stats.asked,
                      seconds: Date().timeIntervalSince(t0))
    }

    /// Listens on `path`: bound under a temporary name and moved into place
    /// once listening, so a VM that finds the socket can connect at once.
    static func listen(_ path: String) throws -> Int32 {
        let temporary = path + ".\(getpid()).tmp"
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(temporary.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw BackupError.invalid("--live \(path): too long for a socket path") }
        withUnsafeMutableBytes(of: &address.sun_path) { p in p.copyBytes(from: bytes); p[bytes.count] = 0 }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BackupError.failed("socket: \(String(cString: strerror(errno)))") }
        unlink(temporary)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0, Glibc.listen(fd, 8) == 0, chmod(temporary, 0o600) == 0, rename(temporary, path) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd); unlink(temporary)
            throw BackupError.failed("--live \(path): \(e)")
        }
        return fd
    }

    final class Stop: @unchecked Sendable {
        private let lock = NSLock()
        private var stopped = false
        func set() { lock.lock(); stopped = true; lock.unlock() }
        var isSet: Bool { lock.lock(); defer { lock.unlock() }; return stopped }
    }

    /// Accepts VMs (a VMM connects once per run) until told to stop.
    static func serve(listener: Int32, filler: Filler, stop: Stop) {
        while !stop.isSet {
            var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 200) == 1 else { continue }
            let c = accept(listener, nil, nil)
            guard c >= 0 else { continue }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            Thread { answer(c, filler: filler, stop: stop) }.start()
        }
    }

    /// One VM's requests: a chunk number in, the same number out once it is
    /// there (the top bit set if it cannot be). Anything else ends the
    /// connection; the VM's request then fails, not the restore.
    static func answer(_ fd: Int32, filler: Filler, stop: Stop) {
        defer { close(fd) }
        while true {
            var request: UInt32 = 0
            var got = 0
            while got < 4 {
                let n = withUnsafeMutableBytes(of: &request) { read(fd, $0.baseAddress! + got, 4 - got) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }
                got += n
            }
            let c = Int(UInt32(littleEndian: request))
            var ok = false
            if c < filler.chunkCount {
                let done = DispatchSemaphore(value: 0)
                let box = Box()
                Task {
                    await filler.asked()
                    box.ok = (try? await filler.ensure(c)) != nil
                    done.signal()
                }
                done.wait()
                ok = box.ok
            }
            var reply = (UInt32(truncatingIfNeeded: c) | (ok ? 0 : 0x8000_0000)).littleEndian
            guard withUnsafeBytes(of: &reply, { write(fd, $0.baseAddress, 4) }) == 4 else { return }
        }
    }

    final class Box: @unchecked Sendable { var ok = false }

    /// The chunks: which are there, and fetching one once however many ask.
    actor Filler {
        let disk: Manifest.Disk
        /// The image, and its flags file (`PATH.fill`).
        let fd: Int32
        let path: String
        nonisolated let flagsPath: String
        nonisolated let chunkCount: Int
        nonisolated(unsafe) let flags: UnsafeMutablePointer<UInt8>
        let key: BackupKey?
        let server: ServerConnection
        var inFlight: [Int: Task<Void, Error>] = [:]
        var written: Int64 = 0, fetched: Int64 = 0, askedCount = 0

        init(disk: Manifest.Disk, fd: Int32, path: String, key: BackupKey?, server: ServerConnection) throws {
            self.disk = disk; self.fd = fd; self.path = path; self.flagsPath = path + ".fill"; self.key = key; self.server = server
            chunkCount = disk.chunks.count
            let ffd = open(self.flagsPath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard ffd >= 0 else { throw BackupError.failed("\(flagsPath): \(String(cString: strerror(errno)))") }
            defer { close(ffd) }
            guard ftruncate(ffd, off_t(max(chunkCount, 1))) == 0,
                  let p = mmap(nil, max(chunkCount, 1), PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0), p != MAP_FAILED else {
                throw BackupError.failed("\(flagsPath): \(String(cString: strerror(errno)))")
            }
            flags = p.assumingMemoryBound(to: UInt8.self)
            // A zero chunk is a hole of the new image already.
            for (c, d) in disk.chunks.enumerated() where d == nil { flags[c] = 1 }
        }

        nonisolated func present(_ c: Int) -> Bool { flags[c] != 0 }

        var stats: (written: Int64, fetched: Int64, asked: Int) { (written, fetched, askedCount) }

        func asked() { askedCount += 1 }

        /// Chunk `c` is in the image and marked, once this returns.
        func ensure(_ c: Int) async throws {
            if flags[c] != 0 { return }
            if let t = inFlight[c] { return try await t.value }
            guard let d = disk.chunks[c] else { flags[c] = 1; return }
            let (disk, fd, path, key, server) = (self.disk, self.fd, self.path, self.key, self.server)
            let t = Task {
                let (w, f) = try await DiskRestore.place(c, d, of: disk, into: fd, path: path, key: key, server: server)
                self.landed(c, written: w, fetched: f)
            }
            inFlight[c] = t
            defer { inFlight[c] = nil }
            try await t.value
        }

        /// Written whole: marked, from now on the VM's.
        private func landed(_ c: Int, written w: Int, fetched f: Int) {
            flags[c] = 1
            written += Int64(w); fetched += Int64(f)
        }

        /// Every chunk is there: the flags file goes (a later run finds a
        /// plain disk). Its mapping stays until the process ends, for a VM
        /// that might still ask.
        nonisolated func finished() { unlink(flagsPath) }
    }
}
