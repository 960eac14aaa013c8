import CKVM
import Devices
import Glibc
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
        if words[0] == "snapshot" { snapshot(request, directory: words[2], socket: words[1]) }
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

    /// `skiff snapshot`: this process makes the directory and its files (so
    /// its permissions, not the VMM's, decide where a snapshot may go, and
    /// nothing planted there is followed), the VMM writes into them, and
    /// they are moved into place here, the state file last.
    static func snapshot(_ request: String, directory: String, socket: String) -> Never {
        let made = mkdir(directory, 0o700) == 0
        if !made {
            let e = errno
            switch e {
            case ENOENT: fail("\(directory): its parent directory does not exist", status: 2)
            case ENOTDIR: fail("\(directory): a parent is not a directory", status: 2)
            case EEXIST: break
            default: fail("\(directory): \(String(cString: strerror(e)))", status: 2)
            }
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dir >= 0 else {
            fail("\(directory): \(errno == ENOTDIR || errno == ELOOP ? "not a directory" : String(cString: strerror(errno)))", status: 2)
        }
        if !made && !isEmpty(directory: dir) { fail("\(directory): not empty (holds a snapshot?); give a new or empty directory", status: 2) }
        var files: [Int32] = []
        func abandon() {
            for name in SnapshotFiles.names { unlinkat(dir, name + ".new", 0) }
            if made { rmdir(directory) }
        }
        for name in SnapshotFiles.names {
            let fd = openat(dir, name + ".new", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { let e = errno; abandon(); fail("\(directory)/\(name).new: \(String(cString: strerror(e)))", status: 2) }
            files.append(fd)
        }
        let answer = send(request, to: socket, files: files)
        var st = stat()
        let sealed = fstat(files[2], &st) == 0 && st.st_size > 0
        files.forEach { _ = close($0) }
        guard answer.hasPrefix("ok") else {
            abandon()
            fail(answer.hasPrefix("error ") ? String(answer.dropFirst(6)) : "unexpected answer: \(answer)", status: 1)
        }
        if !sealed { unlinkat(dir, SnapshotFiles.names[2] + ".new", 0) }
        for name in [SnapshotImage.memoryName] + (sealed ? [SnapshotSeal.fileName] : []) + [SnapshotImage.stateName] {
            guard renameat(dir, name + ".new", dir, name) == 0 else { fail("\(directory)/\(name): \(String(cString: strerror(errno)))", status: 1) }
        }
        fsync(dir)
        print(String(answer.dropFirst(answer.count > 2 ? 3 : 2)))
        exit(0)
    }

    static func isEmpty(directory fd: Int32) -> Bool {
        let copy = dup(fd)
        guard copy >= 0, let d = fdopendir(copy) else { return false }
        defer { closedir(d) }
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name != [UInt8(ascii: ".")] && name != [UInt8(ascii: "."), UInt8(ascii: ".")] { return false }
        }
        return true
    }

    static func send(_ request: String, to path: String, files: [Int32] = []) -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { fail("socket: \(String(cString: strerror(errno)))", status: 1) }
        var address = sockaddr_un()
        guard unixAddress(path, &address) else { fail("\(path): path too long", status: 2) }
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard connected == 0 else { fail("\(path): \(String(cString: strerror(errno))) (is a VM running with --control-socket \(path)?)", status: 2) }
        let line = Array((request + "\n").utf8)
        let sent = line.withUnsafeBytes { b in files.withUnsafeBufferPointer { ckvm_send_with_fds(fd, b.baseAddress, UInt(b.count), $0.baseAddress, Int32($0.count)) } }
        guard sent == line.count else { fail("\(path): write failed", status: 1) }
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
