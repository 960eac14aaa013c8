import Glibc
import Machine

/// Connecting to host Unix sockets by path, without blocking and without
/// following a symlink.
enum HostSocket {
    enum Outcome { case connected, busy, refused }
    /// O_PATH, Linux's number: glibc names it only under _GNU_SOURCE.
    static let openPath: Int32 = 0o10000000

    /// A new non-blocking stream socket, or nil (out of descriptors).
    static func stream() -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        return fd >= 0 ? fd : nil
    }

    /// Connects the non-blocking socket `fd` to the socket file at `path`.
    /// `.busy`: the listener's backlog is full (EAGAIN; a Unix socket is
    /// not "in progress", the same call may be retried).
    ///
    /// Only a socket file is connected, never a symlink: the VMM may run
    /// as root, and a link planted at `<socket>_<port>` would hand the
    /// guest any socket on the host. The file is opened with O_PATH |
    /// O_NOFOLLOW, checked, and connected through /proc/self/fd, so the
    /// checked file is the one connected. Where /proc is not mounted (a
    /// jail's minimal root) the path is connected after the check, which
    /// leaves a small race to whoever can write that directory.
    static func connect(_ fd: Int32, to path: String) -> Outcome {
        let file = open(path, openPath | O_NOFOLLOW | O_CLOEXEC)
        guard file >= 0 else { return .refused }
        defer { Glibc.close(file) }
        var st = stat()
        guard fstat(file, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return .refused }
        var r = connect(fd, path: "/proc/self/fd/\(file)")
        if r == ENOENT, access("/proc/self/fd", F_OK) != 0 { r = connect(fd, path: path) }
        switch r {
        case 0: return .connected
        case EAGAIN: return .busy
        default: return .refused
        }
    }

    /// 0 or the errno of `connect(2)` to `path` (ENAMETOOLONG if it does not fit).
    static func connect(_ fd: Int32, path: String) -> Int32 {
        var address = sockaddr_un()
        guard unixAddress(path, &address) else { return ENAMETOOLONG }
        while true {
            let r = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            if r == 0 { return 0 }
            if errno != EINTR { return errno }
        }
    }
}
