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
        let reply: ControlReply?
        do { reply = try ControlReply.read(from: fd) } catch { throw ManagerError.internal("the VM's reply: \(error.description)") }
        guard let reply else { throw ManagerError.conflict("the VM closed its control connection without answering") }
        return reply
    }
}
