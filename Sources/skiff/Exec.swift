import Appliance
import Glibc
import HostTools
import SkiffControl
import VMM

/// A `skiff run IMAGE` VM's name and where the host reaches it:
/// `/run/skiff/vms/NAME/` ($SKIFF_RUN_DIR/vms) holds the launcher's `pid`
/// and the VM's `vsock` socket, which `skiff exec NAME` connects to. A
/// name whose launcher is gone (killed before it could clean up) is free.
enum VMName {
    /// $SKIFF_RUN_DIR/vms; else /run/skiff/vms for root, and
    /// $XDG_RUNTIME_DIR/skiff/vms for anyone else.
    static var directory: String {
        if let d = getenv("SKIFF_RUN_DIR") { return String(cString: d) + "/vms" }
        if geteuid() != 0, let x = getenv("XDG_RUNTIME_DIR") { return String(cString: x) + "/skiff/vms" }
        return "/run/skiff/vms"
    }

    static func isValid(_ name: String) -> Bool {
        guard let f = name.utf8.first, name.utf8.count <= 63, f != UInt8(ascii: "."), f != UInt8(ascii: "-") else { return false }
        return name.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }
    }

    static func vsockPath(_ name: String) -> String { directory + "/" + name + "/vsock" }

    nonisolated(unsafe) static var claimed: String?
    nonisolated(unsafe) static var claimant: pid_t = 0

    /// Takes `name` for this process; its folder goes when the process exits.
    static func claim(_ name: String) throws(ConfigurationError) -> String {
        guard isValid(name) else { throw ConfigurationError("--name \(name.prefix(70)): 1-63 letters, digits, '-', '_', '.', not starting with '.' or '-'") }
        let dir = directory + "/" + name
        _ = try? Subprocess.run(["mkdir", "-p", "-m", "0700", directory])
        if mkdir(dir, 0o700) != 0 {
            guard errno == EEXIST else { throw ConfigurationError("\(dir): \(String(cString: strerror(errno)))") }
            if let bytes = try? HostFiles.read(dir + "/pid", what: "pid", limit: 32),
               let pid = Int32(String(decoding: bytes, as: UTF8.self).trimmingSpaces()), pid > 0, kill(pid, 0) == 0 || errno != ESRCH {
                throw ConfigurationError("a VM named \(name) is running (pid \(pid)); give another --name")
            }
            unlink(dir + "/vsock")
        }
        do { try FileIO.write(Array("\(getpid())\n".utf8), to: dir + "/pid") } catch { throw ConfigurationError("\(dir)/pid: \(error)") }
        claimed = dir
        claimant = getpid()
        atexit {
            // Only here: a jailed VMM forked from this process exits under
            // its seccomp filter, which has no unlink or rmdir.
            guard let dir = VMName.claimed, getpid() == VMName.claimant else { return }
            unlink(dir + "/vsock"); unlink(dir + "/pid"); rmdir(dir)
        }
        return dir
    }
}

/// `skiff exec [-i] [-t] VM -- COMMAND ARGS...`: runs a command in a
/// running VM through its guest agent (vsock), standard input, output and
/// error streamed, and exits with the command's status (128 + N for a
/// signal, as a shell reports it). VM is a `skiff run` VM's name or the
/// path of a VM's vsock socket. Without -i the command reads an empty
/// standard input; with -t it gets a terminal, and this one is raw.
enum Exec {
    static func main(_ args: ArraySlice<String>) -> Never {
        var interactive = false, tty = false, target: String?
        var rest = args
        while let a = rest.popFirst() {
            if a == "--" { break }
            if a == "--help" || a == "-h" { print("usage: skiff exec [-i] [-t] VM -- COMMAND [ARGS...]"); exit(0) }
            if a.hasPrefix("-") && target == nil && a.count > 1 && a.dropFirst().allSatisfy({ $0 == "i" || $0 == "t" }) {
                if a.contains("i") { interactive = true }
                if a.contains("t") { tty = true }
                continue
            }
            guard target == nil, !a.hasPrefix("-") else { fail("skiff exec: \(a.prefix(40)): usage: skiff exec [-i] [-t] VM -- COMMAND [ARGS...]", status: 2) }
            target = a
        }
        let argv = Array(rest)
        guard let target, !argv.isEmpty else { fail("usage: skiff exec [-i] [-t] VM -- COMMAND [ARGS...]", status: 2) }
        let path = target.contains("/") ? target : VMName.vsockPath(target)
        if !target.contains("/") && !VMName.isValid(target) { fail("skiff exec: \(target.prefix(70)) is not a VM name", status: 2) }
        do {
            let agent = try GuestAgent(vsockSocket: path)
            try agent.send(UInt8(ascii: "x"), GuestAgent.execPayload(argv, tty: tty))
            let terminal = Terminal(raw: tty && isatty(0) != 0)
            defer { terminal.restore() }
            if tty, let size = Terminal.size(1) {
                try agent.send(UInt8(ascii: "z"), [UInt8(size.rows & 255), UInt8(size.rows >> 8), UInt8(size.cols & 255), UInt8(size.cols >> 8)])
            }
            var stdinOpen = interactive
            if !interactive { try agent.send(UInt8(ascii: "i")) } // EOF at once
            var buffer = [UInt8](repeating: 0, count: 32 << 10)
            while true {
                var fds = [pollfd(fd: agent.fd, events: Int16(POLLIN), revents: 0)]
                if stdinOpen { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
                if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue }; break }
                if stdinOpen && fds[1].revents != 0 {
                    let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { stdinOpen = false; try agent.send(UInt8(ascii: "i")) } else { try agent.send(UInt8(ascii: "i"), Array(buffer[0..<n])) }
                }
                guard fds[0].revents != 0 else { continue }
                guard let (type, payload) = try agent.receive() else {
                    terminal.restore()
                    fail("skiff exec: the guest agent closed the session before the command's status", status: 1)
                }
                switch type {
                case UInt8(ascii: "o"): Descriptor.writeAll(1, payload)
                case UInt8(ascii: "e"): Descriptor.writeAll(2, payload)
                case UInt8(ascii: "X"):
                    guard let status = GuestAgent.status(payload), (0...255).contains(status) else {
                        terminal.restore()
                        fail("skiff exec: the guest agent sent a malformed status", status: 1)
                    }
                    terminal.restore()
                    exit(status)
                case UInt8(ascii: "E"):
                    terminal.restore()
                    fail("skiff exec: \(String(decoding: payload.prefix(300), as: UTF8.self))", status: 1)
                default:
                    terminal.restore()
                    fail("skiff exec: the guest agent sent a frame of type \(type)", status: 1)
                }
            }
            fail("skiff exec: poll failed", status: 1)
        } catch {
            fail("skiff exec: \(error.description)", status: 1)
        }
    }
}

/// Standard input in raw mode for `exec -t` (the remote terminal does the
/// echo and line editing), put back as it was on every way out.
final class Terminal {
    private var saved: termios?
    init(raw: Bool) {
        guard raw else { return }
        var t = termios()
        guard tcgetattr(0, &t) == 0 else { return }
        saved = t
        cfmakeraw(&t)
        tcsetattr(0, TCSANOW, &t)
    }
    func restore() {
        if var t = saved { tcsetattr(0, TCSANOW, &t); saved = nil }
    }
    static func size(_ fd: Int32) -> (rows: Int, cols: Int)? {
        var ws = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_row > 0 else { return nil }
        return (Int(ws.ws_row), Int(ws.ws_col))
    }
}
