import CKVM
import Devices
import Glibc
import Machine

/// The VM process's control socket: a Unix stream socket taking one
/// request per line and answering each with one line, `ok ...` or
/// `error ...`. Requests:
///
///     status                 -> ok running | ok paused
///     pause | resume         -> ok paused | ok running
///     snapshot DIR [diff]    -> ok full|diff snapshot DIR: ... (DIR absolute)
///     stop                   -> ok stopping
///
/// Requests are served one at a time on the server's own thread. Bad input
/// (an unknown word, an overlong line) gets an error line and changes nothing.
final class ControlServer: @unchecked Sendable {
    static let maxLine = 4096
    static let idleTimeoutMs: Int32 = 30_000
    private let listener: Int32
    private let stop: EventFD
    private var thread: HostThread?

    /// Serves `listener` (bound by `listen`, by whoever has the privilege).
    init(listener: Int32, machine: VirtualMachine) throws {
        self.listener = listener
        stop = try EventFD()
        let listener = listener, stop = stop
        thread = try HostThread(name: "control") { [weak machine] in
            while true {
                let ready = Poller.wait([stop.fd, listener])
                if ready.contains(stop.fd) { return }
                let client = accept(listener, nil, nil)
                guard client >= 0, let machine else { continue }
                Self.serve(client, machine: machine, stop: stop)
                close(client)
            }
        }
    }

    func shutdown() {
        stop.signal()
        thread?.join()
        thread = nil
        close(listener)
    }

    static func listen(_ path: String) throws -> Int32 {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw ConfigurationError("--control-socket \(path): exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConfigurationError("--control-socket \(path): \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        guard unixAddress(path, &address) else { close(fd); throw ConfigurationError("--control-socket \(path): path too long") }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0, Glibc.listen(fd, 16) == 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw ConfigurationError("--control-socket \(path): \(e)")
        }
        return fd
    }

    /// Reads request lines from one client until it hangs up. Descriptors
    /// sent with a request (a snapshot's files) go with the line they came in.
    static func serve(_ client: Int32, machine: VirtualMachine, stop: EventFD) {
        var pending: [UInt8] = []
        var files: [Int32] = []
        defer { files.forEach { _ = close($0) } }
        var buffer = [UInt8](repeating: 0, count: 1024)
        while true {
            // A client that says nothing for a while is let go: requests
            // are served one at a time, and it would hold up the others.
            let ready = Poller.wait([stop.fd, client], timeoutMs: idleTimeoutMs)
            if ready.isEmpty || ready.contains(stop.fd) { return }
            var received = [Int32](repeating: -1, count: SnapshotFiles.count)
            var count: Int32 = 0
            let n = buffer.withUnsafeMutableBytes { b in
                ckvm_recv_with_fds(client, b.baseAddress, UInt(b.count), &received, Int32(received.count), &count)
            }
            files += received.prefix(Int(count))
            guard n > 0 else { return }
            pending += buffer.prefix(n)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<newline])
                pending.removeSubrange(...newline)
                let answer = handle(line, machine, files: files)
                files.forEach { _ = close($0) }
                files = []
                guard reply(client, answer) else { return }
            }
            if pending.count > maxLine {
                _ = reply(client, "error request longer than \(maxLine) bytes")
                return
            }
        }
    }

    static func handle(_ line: [UInt8], _ machine: VirtualMachine, files: [Int32]) -> String {
        let words = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
        do throws(ControlError) {
            switch words.first {
            case "status" where words.count == 1:
                return "ok \(machine.isPaused ? "paused" : "running")"
            case "pause" where words.count == 1:
                try machine.pause()
                return "ok paused"
            case "resume" where words.count == 1:
                try machine.resume()
                return "ok running"
            case "snapshot" where words.count == 2 || (words.count == 3 && words[2] == "diff"):
                guard words[1].utf8.first == UInt8(ascii: "/") else { return "error snapshot: the directory must be an absolute path" }
                guard files.count == SnapshotFiles.count else {
                    return "error snapshot: the request must carry the snapshot's \(SnapshotFiles.count) files (skiff snapshot opens them)"
                }
                let target = SnapshotFiles(memory: files[0], state: files[1], seal: files[2])
                return "ok " + (try machine.snapshot(to: words[1], files: target, diff: words.count == 3))
            case "stop" where words.count == 1:
                machine.stop(.signal(SIGTERM))
                return "ok stopping"
            default:
                return "error unknown request (status, pause, resume, snapshot DIR [diff], stop)"
            }
        } catch {
            return "error \(error.description)"
        }
    }

    static func reply(_ client: Int32, _ text: String) -> Bool {
        var bytes = Array((text + "\n").utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { write(client, $0.baseAddress! + done, $0.count - done) }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
