import Devices
import Glibc
import Machine
import SkiffControl

/// The VM process's control socket: a Unix stream socket taking one
/// request per line and answering each with one line (the grammar is
/// SkiffControl's). Only root and `allowedUID` may talk to it; other peers
/// are closed unanswered.
///
/// Several clients are served from one poll loop on the server's own
/// thread, every socket non-blocking: a client that sends without reading
/// fills its bounded output buffer and is dropped, one that says nothing
/// is dropped after a while, so none can hold up the others or the VM's
/// shutdown. Bad input gets an error line and changes nothing.
final class ControlServer: @unchecked Sendable {
    static let maxClients = 8
    static let idleTimeoutMs: Int64 = 30_000
    /// Replies not yet read by their client, at most: then it is dropped.
    static let maxOutput = 64 << 10

    private let listener: Int32
    private let stop: EventFD
    private var thread: HostThread?

    /// Serves a listening socket bound by whoever had the privilege to
    /// (`bindListener`, in the launcher, which also removes the file at
    /// the end): for root and `allowedUID`, the launcher's user.
    init(listener: Int32, machine: VirtualMachine, allowedUID: UInt32) throws {
        self.listener = listener
        let flags = fcntl(listener, F_GETFL)
        guard flags >= 0, fcntl(listener, F_SETFL, flags | O_NONBLOCK) == 0 else { throw ConfigurationError("control socket: \(String(cString: strerror(errno)))") }
        stop = try EventFD()
        let stop = stop
        thread = try HostThread(name: "control") { [weak machine] in
            var loop = ServeLoop(listener: listener, stop: stop, allowedUID: allowedUID)
            loop.run { machine }
        }
    }

    func shutdown() {
        stop.signal()
        thread?.join()
        thread = nil
        close(listener)
    }

    /// A listening socket at `path`, mode 0600 whatever the umask. A socket
    /// some process still listens on is refused (another VM's); a stale one
    /// (nobody listening) is replaced; anything else there is refused.
    static func bindListener(path: String) throws -> Int32 {
        do { return try UnixListener.bind(path, backlog: 16, mode: 0o600) } catch {
            throw ConfigurationError("control socket \(path): \(error.reason(inUse: "another VM"))")
        }
    }
}

/// One control connection's buffers.
private struct Connection {
    let fd: Int32
    var input: [UInt8] = []
    var output: [UInt8] = []
    /// Files passed with snapshot requests (SCM_RIGHTS), oldest first.
    var descriptors: [Int32] = []
    var lastActive: Int64
    /// Answered something final (an overlong line): closed once flushed.
    var closing = false
}

private struct ServeLoop {
    let listener: Int32
    let stop: EventFD
    let allowedUID: UInt32
    var clients: [Connection] = []
    var buffer = [UInt8](repeating: 0, count: 4096)

    init(listener: Int32, stop: EventFD, allowedUID: UInt32) {
        self.listener = listener; self.stop = stop; self.allowedUID = allowedUID
    }

    static func now() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Int64(t.tv_sec) * 1000 + Int64(t.tv_nsec) / 1_000_000
    }

    mutating func run(_ machine: () -> VirtualMachine?) {
        defer { for c in clients { drop(c) }; clients = [] }
        while true {
            var fds = [pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for c in clients {
                fds.append(pollfd(fd: c.fd, events: Int16(c.closing ? 0 : POLLIN) | Int16(c.output.isEmpty ? 0 : POLLOUT), revents: 0))
            }
            let now = Self.now()
            let nextIdle = clients.map { $0.lastActive + ControlServer.idleTimeoutMs - now }.min()
            let timeout = nextIdle.map { Int32(clamping: max(0, $0)) } ?? -1
            guard poll(&fds, nfds_t(fds.count), timeout) >= 0 || errno == EINTR else { return }
            if fds[0].revents != 0 { return }
            guard let machine = machine() else { return }

            var kept: [Connection] = []
            for (i, var c) in clients.enumerated() {
                let events = fds[i + 2].revents
                if events & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !c.closing {
                    guard read(&c, machine) else { drop(c); continue }
                } else if events & Int16(POLLHUP | POLLERR) != 0 {
                    drop(c); continue
                }
                guard flush(&c), !(c.closing && c.output.isEmpty), Self.now() - c.lastActive < ControlServer.idleTimeoutMs else {
                    drop(c); continue
                }
                kept.append(c)
            }
            clients = kept
            if fds[1].revents & Int16(POLLIN) != 0 { accept() }
        }
    }

    /// Takes every waiting connection: peers other than root and the
    /// allowed uid are closed unanswered, those beyond the cap told so.
    mutating func accept() {
        while true {
            let fd = UnixSocket.acceptNonBlocking(listener)
            guard fd >= 0 else { return }
            guard let uid = UnixSocket.peerUID(fd), uid == 0 || uid == allowedUID else { close(fd); continue }
            guard clients.count < ControlServer.maxClients else {
                _ = UnixSocket.send(fd, ControlReply.error("too many control clients (\(ControlServer.maxClients))").line, passing: [])
                close(fd)
                continue
            }
            clients.append(Connection(fd: fd, lastActive: Self.now()))
        }
    }

    /// Reads what the client sent and answers each complete line; false
    /// when the client is gone or must go.
    mutating func read(_ c: inout Connection, _ machine: VirtualMachine) -> Bool {
        let n = UnixSocket.receive(c.fd, into: &buffer, descriptors: &c.descriptors)
        if n < 0 { return errno == EAGAIN || errno == EINTR }
        if n == 0 { return false }
        c.lastActive = Self.now()
        c.input += buffer.prefix(n)
        var start = 0
        while let newline = c.input[start...].firstIndex(of: 0x0a) {
            let line = Array(c.input[start..<newline])
            start = newline + 1
            c.output += reply(to: line, &c, machine).line
            guard c.output.count <= ControlServer.maxOutput else { return false } // it does not read its answers
        }
        c.input.removeFirst(start)
        if c.input.count > ControlRequest.maxLine {
            c.output += ControlReply.error("request longer than \(ControlRequest.maxLine) bytes").line
            c.input = []
            c.closing = true
        }
        return true
    }

    func reply(to line: [UInt8], _ c: inout Connection, _ machine: VirtualMachine) -> ControlReply {
        do {
            switch try ControlRequest.parse(line) {
            case .status: return .ok(machine.lifecycle.description)
            case .pause: try machine.pause(); return .ok("paused")
            case .resume: try machine.resume(); return .ok("running")
            case .stop: machine.stop(.requested); return .ok("stopping")
            case .stats: return .ok(machine.ioStats().text)
            case .version: return .ok("skiff-control \(ControlRequest.protocolVersion)")
            case .snapshot(let directory, let diff):
                // The files the client made for it (the VMM opens no path).
                let n = SnapshotFiles.count
                guard c.descriptors.count >= n else {
                    return .error("snapshot \(directory): its \(n) files did not come with the request (use skiff snapshot)")
                }
                let fds = Self.take(n, from: &c)
                defer { fds.forEach { _ = close($0) } }
                guard Self.newEmptyFiles(fds) else { return .error("snapshot \(directory): the files sent are not new empty files") }
                return .ok(try machine.snapshot(to: directory, files: SnapshotFiles(memory: fds[0], state: fds[1], seal: fds[2]), diff: diff))
            case .backupBegin:
                // Three files per tracked disk, made by the client (as for a snapshot).
                let n = 3 * machine.changeTrackers.count
                guard n > 0 else { return .error("backup-begin: no disk of this VM is tracked (--disk PATH,cbt)") }
                guard c.descriptors.count >= n else {
                    return .error("backup-begin: \(machine.changeTrackers.count) tracked disks need \(n) files with the request, \(c.descriptors.count) came")
                }
                let fds = Self.take(n, from: &c)
                defer { fds.forEach { _ = close($0) } }
                guard Self.newEmptyFiles(fds) else { return .error("backup-begin: the files sent are not new empty files") }
                let files = stride(from: 0, to: n, by: 3).map { ChangeTracker.BackupFiles(copies: fds[$0], copied: fds[$0 + 1], changed: fds[$0 + 2]) }
                return .ok(try machine.beginBackup(files))
            case .backupEnd(let completed):
                let ended = machine.changeTrackers.map { $0.endBackup(completed: completed) }
                guard ended.contains(true) else { return .error("backup-end: no backup is open") }
                return .ok("backup ended")
            }
        } catch let e as ControlProtocolError {
            return .error(e.description)
        } catch {
            return .error("\(error)")
        }
    }

    /// The oldest `n` files the client passed (SCM_RIGHTS), for a request that needs them.
    static func take(_ n: Int, from c: inout Connection) -> [Int32] {
        let fds = Array(c.descriptors.prefix(n))
        c.descriptors.removeFirst(n)
        return fds
    }

    /// Files a client made for the VMM to write (a jailed VMM opens no path): regular and empty.
    static func newEmptyFiles(_ fds: [Int32]) -> Bool {
        fds.allSatisfy { fd in
            var st = stat()
            return fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFREG && st.st_size == 0
        }
    }

    /// Writes what it can without blocking; false on a broken connection.
    func flush(_ c: inout Connection) -> Bool {
        while !c.output.isEmpty {
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
            if n < 0 { return errno == EAGAIN || errno == EINTR }
            c.output.removeFirst(n)
            c.lastActive = Self.now()
        }
        return true
    }

    func drop(_ c: Connection) {
        close(c.fd)
        for d in c.descriptors { close(d) }
    }
}
