import Glibc
import SkiffControl

/// One request to a VM's control socket and its reply, in SkiffControl's
/// grammar (the VMM's own).
enum ControlChannel {
    /// Blocking, with a timeout: for code already off the actor.
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

    /// The same, awaited on a thread of its own: a VMM slow to answer
    /// holds up only the operation that asked it.
    static func ask(_ request: ControlRequest, socket path: String, timeoutMs: Int32 = 5000) async throws -> ControlReply {
        try await Blocking.run { try Self.request(request, socket: path, timeoutMs: timeoutMs) }
    }

    /// Which of these VMMs answer `status` within `timeoutMs`, all asked at
    /// once (one poll over every socket): the reconcile loop's test of a
    /// starting VM, which costs one timeout in all, not one per VM.
    static func answering(_ sockets: [String], timeoutMs: Int32) -> [Bool] {
        var answered = [Bool](repeating: false, count: sockets.count)
        var fds = [Int32](repeating: -1, count: sockets.count)
        defer { for fd in fds where fd >= 0 { close(fd) } }
        let line = ControlRequest.status.line
        for (i, path) in sockets.enumerated() {
            // A Unix socket's connect does not wait for the server's accept,
            // and a full backlog fails at once with the timeout set short.
            let fd = UnixSocket.connect(path, timeoutMs: 50)
            guard fd >= 0 else { continue }
            fds[i] = fd
            if line.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }) != line.count {
                close(fd)
                fds[i] = -1
            }
        }
        var replies = [[UInt8]](repeating: [], count: sockets.count)
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let end = Int64(deadline.tv_sec) * 1000 + Int64(deadline.tv_nsec) / 1_000_000 + Int64(timeoutMs)
        while true {
            let polled = fds.enumerated().filter { $0.element >= 0 }.map { (index: $0.offset, fd: pollfd(fd: $0.element, events: Int16(POLLIN), revents: 0)) }
            guard !polled.isEmpty else { break }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let left = end - (Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000)
            guard left > 0 else { break }
            var set = polled.map(\.fd)
            let n = poll(&set, nfds_t(set.count), Int32(left))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            for (k, p) in set.enumerated() where p.revents != 0 {
                let i = polled[k].index
                var buf = [UInt8](repeating: 0, count: 512)
                let got = buf.withUnsafeMutableBytes { recv(p.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if got > 0 { replies[i] += buf.prefix(got) }
                if got > 0, let nl = replies[i].firstIndex(of: 0x0a) {
                    if case .ok? = try? ControlReply.parse(Array(replies[i][..<nl])) { answered[i] = true }
                } else if got > 0 && replies[i].count < ControlReply.maxLine {
                    continue // more of the line to come
                } else if got < 0 && (errno == EAGAIN || errno == EINTR) {
                    continue
                }
                close(p.fd)
                fds[i] = -1
            }
        }
        return answered
    }
}
