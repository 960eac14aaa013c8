import Glibc
import SkiffControl

/// `skiff cp VM:PATH HOST` and `skiff cp HOST VM:PATH`: one file out of or
/// into a running `skiff run IMAGE` VM, through its guest agent's file
/// frames ('r' and 'w', guest/agent.c), PATH in the application's root. `-`
/// as HOST is standard output or input. A PATH or HOST ending in `/` (or a
/// host folder) takes the file's own name, as `docker cp` does. Files
/// only: a folder is refused (no tar stream yet).
///
/// The guest may lie: a copy out is written to a temporary file beside
/// HOST and renamed only once the agent said the file ended, so a guest
/// that stops halfway or sends an error leaves HOST as it was.
enum Copy {
    static let usage = "usage: skiff cp VM:PATH HOST|-   or   skiff cp HOST|- VM:PATH"

    /// `VM:PATH` split, if `arg` names a VM (a valid name before the colon).
    static func guestPath(_ arg: String) -> (vm: String, path: String)? {
        guard let colon = arg.firstIndex(of: ":") else { return nil }
        let vm = String(arg[..<colon]), path = String(arg[arg.index(after: colon)...])
        guard VMName.isValid(vm), path.hasPrefix("/") else { return nil }
        return (vm, path)
    }

    static func baseName(_ path: String) -> String { String(path.split(separator: "/").last ?? "") }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
    }

    static func main(_ args: ArraySlice<String>) -> Never {
        let a = Array(args)
        if a.first == "--help" || a.first == "-h" { print(usage); exit(0) }
        guard a.count == 2 else { fail(usage, status: 2) }
        switch (guestPath(a[0]), guestPath(a[1])) {
        case (let from?, nil): copyOut(vm: from.vm, path: from.path, to: a[1])
        case (nil, let to?): copyIn(from: a[0], vm: to.vm, path: to.path)
        default: fail("skiff cp: one of the two must be VM:/PATH (a running VM's name, an absolute path in it)\n" + usage, status: 2)
        }
    }

    static func agent(_ vm: String) -> GuestAgent {
        do { return try GuestAgent(vsockSocket: VMName.vsockPath(vm)) } catch { fail("skiff cp: \(vm): \(error.description)", status: 1) }
    }

    static func copyOut(vm: String, path: String, to host: String) -> Never {
        guard !path.hasSuffix("/") else { fail("skiff cp: \(path): a folder; only files are copied", status: 2) }
        let target = host != "-" && (host.hasSuffix("/") || isDirectory(host)) ? host + (host.hasSuffix("/") ? "" : "/") + baseName(path) : host
        let agent = agent(vm)
        var fd: Int32 = 1, tmp = ""
        if target != "-" {
            tmp = target + ".skiff-cp-\(getpid())"
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { fail("skiff cp: \(tmp): \(String(cString: strerror(errno)))", status: 1) }
        }
        func abandon(_ why: String) -> Never {
            if !tmp.isEmpty { close(fd); unlink(tmp) }
            fail("skiff cp: \(vm):\(path): \(why)", status: 1)
        }
        do throws(GuestAgent.Failure) {
            try agent.send(UInt8(ascii: "r"), Array(path.utf8))
            while true {
                guard let (type, payload) = try agent.receive() else { abandon("the guest agent closed the connection before the file ended") }
                switch type {
                case UInt8(ascii: "d"):
                    if payload.isEmpty {
                        if !tmp.isEmpty {
                            guard fsync(fd) == 0, close(fd) == 0, rename(tmp, target) == 0 else {
                                unlink(tmp)
                                fail("skiff cp: \(target): \(String(cString: strerror(errno)))", status: 1)
                            }
                        }
                        exit(0)
                    }
                    guard Descriptor.writeAll(fd, payload) else { abandon("writing \(target): \(String(cString: strerror(errno)))") }
                case UInt8(ascii: "E"): abandon(String(decoding: payload.prefix(300), as: UTF8.self))
                default: abandon("the guest agent sent a frame of type \(type)")
                }
            }
        } catch {
            abandon(error.description)
        }
    }

    static func copyIn(from host: String, vm: String, path: String) -> Never {
        var fd: Int32 = 0, mode: mode_t = 0o644
        if host != "-" {
            fd = open(host, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { fail("skiff cp: \(host): \(String(cString: strerror(errno)))", status: 1) }
            var st = stat()
            guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { fail("skiff cp: \(host): not a file; only files are copied", status: 2) }
            mode = st.st_mode & 0o7777 & ~0o6000 // no setuid or setgid in the guest from a copy
        }
        let target = path.hasSuffix("/") ? path + (host == "-" ? "stdin" : baseName(host)) : path
        let agent = agent(vm)
        do throws(GuestAgent.Failure) {
            try agent.send(UInt8(ascii: "w"), Array(target.utf8) + [0] + Array(String(mode, radix: 8).utf8) + [0])
            var buffer = [UInt8](repeating: 0, count: GuestAgent.maxFrame)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { fail("skiff cp: \(host): \(String(cString: strerror(errno)))", status: 1) }
                try agent.send(UInt8(ascii: "d"), Array(buffer[0..<n]))
                if n == 0 { break }
            }
            guard let (type, payload) = try agent.receive() else { throw GuestAgent.Failure("the guest agent closed the connection without an answer") }
            if type == UInt8(ascii: "E") { throw GuestAgent.Failure(String(decoding: payload.prefix(300), as: UTF8.self)) }
            guard type == UInt8(ascii: "W") else { throw GuestAgent.Failure("the guest agent answered with a frame of type \(type)") }
        } catch {
            fail("skiff cp: \(vm):\(target): \(error.description)", status: 1)
        }
        exit(0)
    }
}
