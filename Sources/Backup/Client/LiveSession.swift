import BlockTracking
import Foundation
import Glibc
import SkiffControl

/// A running VM's point in time, through its control socket: the VMM
/// pauses the VM for the moment it takes each tracked disk's changed-block
/// map and begins copy-before-write into files this client made (a jailed
/// VMM opens no path), then runs on while the backup reads.
final class LiveSession: @unchecked Sendable {
    let socket: String
    let directory: String
    struct Disk {
        let copies: Int32
        let flags: UnsafePointer<UInt8>
        let chunks: Int
        /// The map as it was at the point in time (its generation the one this backup completes).
        let changed: ChangedBlockMap?
        let problem: String?
    }
    private(set) var disks: [Disk] = []
    private(set) var pausedMicroseconds = 0
    private var ended = false

    /// Begins the backup of `sizes.count` tracked disks; their files go in
    /// a new directory under `workDirectory` (the copies may grow to the
    /// size of what the guest writes while the backup runs).
    init(socket: String, sizes: [UInt64], workDirectory: String) throws {
        self.socket = socket
        var template = Array((workDirectory + "/.skiff-backup-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BackupError.failed("\(workDirectory): cannot make a work directory: \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        do {
            for i in sizes.indices {
                for kind in ["copies", "copied", "changed"] {
                    let fd = open(directory + "/disk\(i).\(kind)", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                    guard fd >= 0 else { throw BackupError.failed("\(directory): \(String(cString: strerror(errno)))") }
                    fds.append(fd)
                }
            }
            let reply = try Self.ask(.backupBegin, socket: socket, passing: fds)
            guard case .ok(let text) = reply else {
                if case .error(let e) = reply { throw BackupError.failed("the VM's control socket: \(e)") }
                throw BackupError.failed("the VM's control socket gave no answer")
            }
            for w in text.split(separator: " ") where w.hasPrefix("paused_us=") { pausedMicroseconds = Int(w.dropFirst(10)) ?? 0 }
            for (i, size) in sizes.enumerated() {
                let chunks = ChangedBlockMap.chunkCount(size)
                let copied = fds[3 * i + 1]
                var st = stat()
                guard fstat(copied, &st) == 0, st.st_size == off_t(chunks) else {
                    throw BackupError.failed("disk \(i): the VMM's flags file has \(st.st_size) bytes, its size needs \(chunks): is it the same disk?")
                }
                guard let p = mmap(nil, chunks, PROT_READ, MAP_SHARED, copied, 0), p != MAP_FAILED else {
                    throw BackupError.failed("mapping the flags file: \(String(cString: strerror(errno)))")
                }
                let changedFd = fds[3 * i + 2]
                var bytes = [UInt8](repeating: 0, count: 72 + (chunks + 7) / 8)
                let n = bytes.withUnsafeMutableBytes { pread(changedFd, $0.baseAddress, $0.count, 0) }
                let (map, problem) = n == bytes.count ? ChangedBlockMap.decode(bytes, diskBytes: size) : (nil, "the VMM wrote no changed-block map")
                disks.append(Disk(copies: dup(fds[3 * i]), flags: UnsafePointer(p.assumingMemoryBound(to: UInt8.self)), chunks: chunks,
                                  changed: map, problem: problem))
            }
        } catch {
            if !disks.isEmpty || pausedMicroseconds > 0 { _ = try? Self.ask(.backupEnd(completed: false), socket: socket, passing: []) }
            cleanUp()
            throw error
        }
    }

    /// Tells the VMM the backup is over: `completed`, the chunks it read
    /// leave the map; not, they stay marked for the next one.
    func end(completed: Bool) {
        guard !ended else { return }
        ended = true
        _ = try? Self.ask(.backupEnd(completed: completed), socket: socket, passing: [])
        cleanUp()
    }

    private func cleanUp() {
        for d in disks { munmap(UnsafeMutableRawPointer(mutating: d.flags), d.chunks); close(d.copies) }
        disks = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    static func ask(_ request: ControlRequest, socket: String, passing fds: [Int32]) throws -> ControlReply {
        let fd = UnixSocket.connect(socket, timeoutMs: 30_000)
        guard fd >= 0 else { throw BackupError.failed("the VM's control socket \(socket): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard UnixSocket.send(fd, request.line, passing: fds) == request.line.count else {
            throw BackupError.failed("the VM's control socket \(socket): \(String(cString: strerror(errno)))")
        }
        do {
            guard let reply = try ControlReply.read(from: fd) else { throw BackupError.failed("the VM's control socket \(socket) closed without an answer") }
            return reply
        } catch let e as ControlProtocolError { throw BackupError.failed("the VM's control socket: \(e.description)") }
    }
}
