import Glibc

/// Writes to a terminal, pipe or file descriptor that the CLI's streaming
/// commands (`attach`, `exec`) share.
public enum Descriptor {
    /// All of `bytes`, retrying short writes and EINTR; false when the
    /// descriptor stops taking them.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
