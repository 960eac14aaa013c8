import Foundation
import Glibc

/// A VM's console log, bounded: the launcher appends to `console.log`
/// (O_APPEND, so it never needs to be told); when it passes `maxBytes`
/// skiffd copies it to `console.log.1` and truncates it (logrotate's
/// copytruncate), so at most twice that is kept and the VM never waits.
enum Console {
    static let maxBytes: Int64 = 1 << 20

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
