import Glibc
import SkiffControl

/// One request to a VM's control socket and its reply, in SkiffControl's
/// grammar (the VMM's own). Blocking, with a timeout: callers run it off
/// the event loop.
enum ControlChannel {
    static func request(_ request: ControlRequest, socket path: String, timeoutMs: Int32 = 5000) throws -> ControlReply {
        let fd = UnixSocket.connect(path, timeoutMs: timeoutMs)
        guard fd >= 0 else {
            throw ManagerError.conflict("the VM's control socket does not answer (\(String(cString: strerror(errno)))): is it still starting or already gone?")
        }
        defer { close(fd) }
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
