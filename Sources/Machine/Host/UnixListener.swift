import Glibc

/// Fills a sockaddr_un; false if the path does not fit.
public func unixAddress(_ path: String, _ address: inout sockaddr_un) -> Bool {
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { p in
        p.copyBytes(from: bytes)
        p[bytes.count] = 0
    }
    return true
}

/// A listening Unix stream socket at a path (non-blocking), for the
/// control and vsock sockets, bound by whoever has the privilege. A socket
/// some process still listens on is never taken over; only a stale one,
/// left by a process that is gone (ECONNREFUSED), is replaced; anything
/// else at the path is refused.
public enum UnixListener {
    public enum Failure: Error, Sendable {
        case tooLong, notASocket, inUse, system(Int32)

        /// The reason, with the caller's words for who holds a live socket.
        public func reason(inUse holder: String) -> String {
            switch self {
            case .tooLong: "path too long"
            case .notASocket: "exists and is not a socket"
            case .inUse: "in use by \(holder)"
            case .system(let e): String(cString: strerror(e))
            }
        }
    }

    /// With `mode`, the socket file gets it whatever the umask: it is set
    /// between bind and listen, before anyone can connect.
    public static func bind(_ path: String, backlog: Int32, mode: mode_t? = nil) throws(Failure) -> Int32 {
        var address = sockaddr_un()
        guard unixAddress(path, &address) else { throw .tooLong }
        let size = socklen_t(MemoryLayout<sockaddr_un>.size)
        func stream() -> Int32 { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        func call(_ fd: Int32, _ op: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
            withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { op(fd, $0, size) } }
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket }
            let probe = stream()
            guard probe >= 0 else { throw .system(errno) }
            // Accepted or queued, or a full backlog: a live listener.
            let r = call(probe, Glibc.connect), e = errno
            close(probe)
            if r == 0 || e == EAGAIN { throw .inUse }
            if e == ECONNREFUSED { unlink(path) } else if e != ENOENT { throw .system(e) }
        }
        let fd = stream()
        guard fd >= 0 else { throw .system(errno) }
        guard call(fd, Glibc.bind) == 0 else {
            let e = errno; close(fd)
            throw e == EADDRINUSE ? .inUse : .system(e)
        }
        guard mode.map({ chmod(path, $0) == 0 }) ?? true, Glibc.listen(fd, backlog) == 0 else {
            let e = errno; close(fd); unlink(path)
            throw .system(e)
        }
        return fd
    }
}
