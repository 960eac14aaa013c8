import Glibc
import SkiffControl

/// One request to a VM's control socket and its reply, in SkiffControl's
/// grammar (the VMM's own). Blocking, with a timeout: callers run it off
/// the event loop.
enum ControlChannel {
    static func request(_ request: ControlRequest, socket path: String, timeoutMs: Int32 = 5000) throws -> ControlReply {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ManagerError.internal("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw ManagerError.internal("\(path): path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { p in
            p.copyBytes(from: bytes)
            p[bytes.count] = 0
        }
        var tv = timeval(tv_sec: Int(timeoutMs / 1000), tv_usec: Int(timeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw ManagerError.conflict("the VM's control socket does not answer (\(String(cString: strerror(errno)))): is it still starting or already gone?") }
        let line = request.line
        guard line.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == line.count else {
            throw ManagerError.conflict("the VM's control socket closed: \(String(cString: strerror(errno)))")
        }
        var answer: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !answer.contains(0x0a) && answer.count <= ControlReply.maxLine {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            answer += buf.prefix(n)
        }
        guard let end = answer.firstIndex(of: 0x0a) else { throw ManagerError.conflict("the VM closed its control connection without answering") }
        do { return try ControlReply.parse(Array(answer[..<end])) } catch { throw ManagerError.internal("the VM's reply: \(error.description)") }
    }
}
