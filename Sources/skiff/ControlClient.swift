import Glibc
import Devices
import VMM

/// `skiff pause|resume|status SOCKET` and `skiff snapshot SOCKET DIR
/// [--diff]`: one request to a VM's control socket; its answer on stdout.
enum ControlClient {
    static func main(_ args: ArraySlice<String>) -> Never {
        let words = Array(args)
        let request: String
        switch (words.first, words.count) {
        case ("snapshot", 3): request = "snapshot \(absolute(words[2]))"
        case ("snapshot", 4) where words[3] == "--diff": request = "snapshot \(absolute(words[2])) diff"
        case ("pause", 2), ("resume", 2), ("status", 2): request = words[0]
        default: fail("usage: skiff pause|resume|status SOCKET, skiff snapshot SOCKET DIR [--diff]", status: 2)
        }
        let answer = send(request, to: words[1])
        if answer.hasPrefix("ok") {
            print(String(answer.dropFirst(answer.count > 2 ? 3 : 2)))
            exit(0)
        }
        fail(answer.hasPrefix("error ") ? String(answer.dropFirst(6)) : "unexpected answer: \(answer)", status: 1)
    }

    /// The VM process has its own working directory: send it absolute paths.
    static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/") else { return path }
        guard let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return String(cString: cwd) + "/" + path
    }

    static func send(_ request: String, to path: String) -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { fail("socket: \(String(cString: strerror(errno)))", status: 1) }
        var address = sockaddr_un()
        guard unixAddress(path, &address) else { fail("\(path): path too long", status: 2) }
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard connected == 0 else { fail("\(path): \(String(cString: strerror(errno))) (is a VM running with --control-socket \(path)?)", status: 2) }
        var line = Array((request + "\n").utf8)
        guard line.withUnsafeMutableBytes({ write(fd, $0.baseAddress, $0.count) }) == line.count else { fail("\(path): write failed", status: 1) }
        var answer: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !answer.contains(UInt8(ascii: "\n")) {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            answer += buf.prefix(n)
        }
        close(fd)
        return String(decoding: answer.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }
}
