import Glibc

/// What the control socket needs beyond read and write: descriptors
/// passed with a line (SCM_RIGHTS) and the peer's uid (SO_PEERCRED).
/// Constants are spelled out: Swift's Glibc does not import the CMSG macros.
public enum UnixSocket {
    static let solSocket: Int32 = 1, scmRights: Int32 = 1, soPeerCred: Int32 = 17
    static let msgDontwait: Int32 = 0x40, msgNosignal: Int32 = 0x4000, msgCmsgCloexec: Int32 = 0x4000_0000
    /// sizeof(struct cmsghdr) on 64-bit Linux: size_t length, int level, int type.
    static let cmsgHeader = 16
    /// The most descriptors taken from one message; more are closed.
    public static let maxDescriptors = 4

    static func align(_ n: Int) -> Int { (n + 7) & ~7 }

    /// A stream connection to the socket at `path` (close-on-exec), with
    /// send and receive timeouts when given; -1 with errno on failure
    /// (ENAMETOOLONG for a path that does not fit sun_path).
    public static func connect(_ path: String, timeoutMs: Int32? = nil) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path), !bytes.contains(0) else { errno = ENAMETOOLONG; return -1 }
        withUnsafeMutableBytes(of: &address.sun_path) { p in
            p.copyBytes(from: bytes)
            p[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        if let ms = timeoutMs {
            var tv = timeval(tv_sec: Int(ms / 1000), tv_usec: Int(ms % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let e = errno
            close(fd)
            errno = e
            return -1
        }
        return fd
    }

    /// Sends `bytes` in one sendmsg, `descriptors` attached to them (at
    /// most `maxDescriptors`). Returns what sendmsg returns (-1 with errno).
    public static func send(_ fd: Int32, _ bytes: [UInt8], passing descriptors: [Int32]) -> Int {
        guard descriptors.count <= maxDescriptors else { errno = EINVAL; return -1 }
        var data = bytes
        let payload = 4 * descriptors.count
        var control = [UInt8](repeating: 0, count: cmsgHeader + align(max(payload, 4)))
        return data.withUnsafeMutableBytes { d in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: d.baseAddress, iov_len: d.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var m = msghdr()
                    m.msg_iov = iovp
                    m.msg_iovlen = 1
                    if !descriptors.isEmpty {
                        c.storeBytes(of: cmsgHeader + payload, toByteOffset: 0, as: Int.self)
                        c.storeBytes(of: solSocket, toByteOffset: 8, as: Int32.self)
                        c.storeBytes(of: scmRights, toByteOffset: 12, as: Int32.self)
                        for (i, descriptor) in descriptors.enumerated() {
                            c.storeBytes(of: descriptor, toByteOffset: cmsgHeader + 4 * i, as: Int32.self)
                        }
                        m.msg_control = c.baseAddress
                        m.msg_controllen = cmsgHeader + align(payload)
                    }
                    return sendmsg(fd, &m, msgNosignal)
                }
            }
        }
    }

    /// Reads what is there into `buffer` (non-blocking); descriptors that
    /// came with it are appended to `descriptors` (close-on-exec), beyond
    /// `maxDescriptors` in all they are closed. Returns recvmsg's result.
    public static func receive(_ fd: Int32, into buffer: inout [UInt8], descriptors: inout [Int32]) -> Int {
        var control = [UInt8](repeating: 0, count: cmsgHeader + align(4 * maxDescriptors))
        var controlLength = 0
        let n = buffer.withUnsafeMutableBytes { d in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: d.baseAddress, iov_len: d.count)
                return withUnsafeMutablePointer(to: &iov) { iovp in
                    var m = msghdr()
                    m.msg_iov = iovp
                    m.msg_iovlen = 1
                    m.msg_control = c.baseAddress
                    m.msg_controllen = c.count
                    let r = recvmsg(fd, &m, msgDontwait | msgCmsgCloexec)
                    controlLength = min(Int(m.msg_controllen), c.count)
                    return r
                }
            }
        }
        guard n >= 0 else { return n }
        // Walk the control messages; keep SCM_RIGHTS descriptors only (the
        // kernel closes those that did not fit: MSG_CTRUNC).
        var at = 0
        while at + cmsgHeader <= controlLength {
            let length = control.withUnsafeBytes { $0.load(fromByteOffset: at, as: Int.self) }
            guard length >= cmsgHeader, length <= controlLength - at else { break }
            let level = control.withUnsafeBytes { $0.load(fromByteOffset: at + 8, as: Int32.self) }
            let type = control.withUnsafeBytes { $0.load(fromByteOffset: at + 12, as: Int32.self) }
            if level == solSocket && type == scmRights {
                for k in 0..<((length - cmsgHeader) / 4) {
                    let passed = control.withUnsafeBytes { $0.load(fromByteOffset: at + cmsgHeader + 4 * k, as: Int32.self) }
                    if descriptors.count < maxDescriptors { descriptors.append(passed) } else { close(passed) }
                }
            }
            at += align(length)
        }
        return n
    }

    /// Accepts a connection as a non-blocking, close-on-exec socket (Swift's
    /// Glibc has no accept4). -1 with errno when none is waiting.
    public static func acceptNonBlocking(_ listener: Int32) -> Int32 {
        let fd = accept(listener, nil, nil)
        guard fd >= 0 else { return fd }
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0, fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else {
            close(fd)
            return -1
        }
        return fd
    }

    /// The uid of the process at the other end, as it was at connect().
    public static func peerUID(_ fd: Int32) -> UInt32? {
        var cred = [UInt32](repeating: 0, count: 3) // struct ucred: pid, uid, gid
        var length = socklen_t(12)
        let r = cred.withUnsafeMutableBytes { getsockopt(fd, solSocket, soPeerCred, $0.baseAddress, &length) }
        guard r == 0, length == 12 else { return nil }
        return cred[1]
    }
}
