import Glibc

/// The host's side of the guest agent's protocol (guest/agent.c, which
/// says what each frame means): a connection through the VM's vsock
/// socket to the agent's port, and frames of a type byte, a little-endian
/// u32 length and at most 64 KiB of payload.
///
/// The guest is hostile: every frame's length is checked before anything
/// is read for it, and a frame the host did not expect ends the session
/// with an error, never a trap.
public final class GuestAgent {
    public static let port: UInt32 = 52
    public static let maxFrame = 65_536
    public let fd: Int32

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ d: String) { description = d }
    }

    /// Connects through the VM's vsock socket (Vsock.Options.socketPath):
    /// `CONNECT 52`, then the VMM's `OK <port>` line.
    public init(vsockSocket path: String, timeoutMs: Int32 = 10_000) throws(Failure) {
        let fd = UnixSocket.connect(path, timeoutMs: timeoutMs)
        guard fd >= 0 else { throw Failure("\(path): \(String(cString: strerror(errno))) (is the VM running?)") }
        self.fd = fd
        guard Self.writeAll(fd, Array("CONNECT \(Self.port)\n".utf8)) else { throw Failure("\(path): the VMM closed the connection") }
        var line: [UInt8] = []
        while line.count < 64 {
            var b: UInt8 = 0
            let n = read(fd, &b, 1)
            if n < 0 && errno == EINTR { continue }
            guard n == 1 else { throw Failure("the guest agent does not answer on vsock port \(Self.port) (the VM has no agent, or it has not started yet)") }
            if b == 0x0a { break }
            line.append(b)
        }
        guard line.starts(with: Array("OK ".utf8)) else { throw Failure("the VMM refused the connection to port \(Self.port)") }
        // Sessions (exec) may last: no timeout from here on.
        var tv = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    public func send(_ type: UInt8, _ payload: [UInt8] = []) throws(Failure) {
        guard payload.count <= Self.maxFrame else { throw Failure("frame of \(payload.count) bytes: at most \(Self.maxFrame)") }
        let n = UInt32(payload.count)
        let frame = [type, UInt8(n & 255), UInt8(n >> 8 & 255), UInt8(n >> 16 & 255), UInt8(n >> 24)] + payload
        guard Self.writeAll(fd, frame) else { throw Failure("the guest agent closed the connection") }
    }

    /// The next frame; nil when the agent closed the connection.
    public func receive() throws(Failure) -> (type: UInt8, payload: [UInt8])? {
        var header = [UInt8](repeating: 0, count: 5)
        guard try readAll(&header, allowEOF: true) else { return nil }
        let n = Int(header[1]) | Int(header[2]) << 8 | Int(header[3]) << 16 | Int(header[4]) << 24
        guard n <= Self.maxFrame else { throw Failure("the guest agent sent a frame of \(n) bytes: at most \(Self.maxFrame)") }
        var payload = [UInt8](repeating: 0, count: n)
        if n > 0 { _ = try readAll(&payload, allowEOF: false) }
        return (header[0], payload)
    }

    /// One request, one text reply (health, identity, freeze, shutdown).
    public func request(_ type: UInt8, _ payload: [UInt8] = [], expecting reply: UInt8) throws(Failure) -> String {
        try send(type, payload)
        guard let (t, p) = try receive() else { throw Failure("the guest agent closed the connection without an answer") }
        let text = String(decoding: p.prefix(512), as: UTF8.self)
        if t == UInt8(ascii: "E") { throw Failure("guest agent: \(text)") }
        guard t == reply else { throw Failure("the guest agent answered with a frame of type \(t)") }
        return text
    }

    /// An exec request's first frame: flags, then each argument NUL-terminated.
    public static func execPayload(_ argv: [String], tty: Bool) throws(Failure) -> [UInt8] {
        guard !argv.isEmpty, !argv[0].isEmpty else { throw Failure("exec: no command") }
        guard !argv.contains(where: { $0.utf8.contains(0) }) else { throw Failure("exec: an argument holds a NUL byte") }
        let payload: [UInt8] = [tty ? 1 : 0] + argv.flatMap { Array($0.utf8) + [0] }
        guard payload.count <= maxFrame else { throw Failure("exec: the command line is over \(maxFrame) bytes") }
        return payload
    }

    /// An exec's status frame: a little-endian i32.
    public static func status(_ payload: [UInt8]) -> Int32? {
        guard payload.count == 4 else { return nil }
        return Int32(bitPattern: UInt32(payload[0]) | UInt32(payload[1]) << 8 | UInt32(payload[2]) << 16 | UInt32(payload[3]) << 24)
    }

    private func readAll(_ buffer: inout [UInt8], allowEOF: Bool) throws(Failure) -> Bool {
        var done = 0
        while done < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n == 0 && done == 0 && allowEOF { return false }
            guard n > 0 else { throw Failure("the guest agent closed the connection in the middle of a frame") }
            done += n
        }
        return true
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
