import Foundation
import Glibc

/// A VM's console log, bounded: the launcher appends to `console.log`
/// (O_APPEND, so it never needs to be told); when it passes `maxBytes`
/// skiffd copies it to `console.log.1` and truncates it (logrotate's
/// copytruncate), so at most twice that is kept and the VM never waits.
enum Console {
    static let maxBytes: Int64 = 1 << 20

    /// The console's input FIFO, made afresh (0600: root's only).
    static func makeInput(_ path: String) throws {
        var st = stat()
        if lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFIFO { return }
        unlink(path)
        guard mkfifo(path, 0o600) == 0 else { throw ManagerError.internal("\(path): \(String(cString: strerror(errno)))") }
    }

    /// Writes `bytes` to the console input FIFO; false if no VM reads it.
    /// Nonblocking: a guest that does not drain its UART makes attach
    /// wait (briefly, then drop), never skiffd.
    static func send(_ bytes: [UInt8], to path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var done = 0, waits = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n > 0 { done += n; continue }
            guard n < 0, errno == EAGAIN || errno == EINTR, waits < 200 else { return false }
            waits += 1
            usleep(5_000)
        }
        return true
    }

    static func size(_ path: String) -> Int64 {
        var st = stat()
        return lstat(path, &st) == 0 ? Int64(st.st_size) : 0
    }

    /// Rotates if over the bound.
    static func rotate(_ path: String) throws {
        guard size(path) > maxBytes else { return }
        let old = path + ".1"
        unlink(old)
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.write(to: URL(fileURLWithPath: old))
        truncate(path, 0)
    }

    /// The last `tail` bytes of both files, oldest first.
    static func read(_ path: String, tail: Int?) -> [UInt8] {
        let current = (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data()
        var bytes = [UInt8](current)
        if let tail, bytes.count >= tail { return Array(bytes.suffix(tail)) }
        let old = (try? Data(contentsOf: URL(fileURLWithPath: path + ".1"))) ?? Data()
        bytes = [UInt8](old) + bytes
        if let tail { return Array(bytes.suffix(tail)) }
        return bytes
    }
}
