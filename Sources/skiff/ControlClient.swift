import Devices
import Glibc
import Machine
import SkiffControl
import VMM

/// `skiff pause|resume|status SOCKET` and `skiff snapshot SOCKET DIR
/// [--diff]`: one request to a VM's control socket; its answer on stdout.
enum ControlClient {
    static func main(_ args: ArraySlice<String>) -> Never {
        let words = Array(args)
        let request: ControlRequest
        switch (words.first, words.count) {
        case ("snapshot", 3), ("snapshot", 4):
            guard words.count == 3 || words[3] == "--diff" else { usage() }
            request = .snapshot(directory: absolute(words[2]), diff: words.count == 4)
            do throws(ControlProtocolError) { _ = try ControlRequest.parse(Array(request.line.dropLast())) } catch {
                fail("\(words[2]): \(error.description.replacingPrefix("snapshot: ", with: ""))", status: 2)
            }
        case ("pause", 2): request = .pause
        case ("resume", 2): request = .resume
        case ("status", 2): request = .status
        default: usage()
        }
        let socket = connect(words[1])
        // The directory after the connection: a VM that is not there
        // leaves no directory behind.
        var target: SnapshotTarget?
        if case .snapshot(let path, _) = request { target = SnapshotTarget(path, shown: words[2]) }
        let answer = send(request, passing: target?.files ?? [], on: socket, path: words[1])
        if case .ok(let text) = answer {
            target?.complete(shown: words[2])
            print(text)
            exit(0)
        }
        target?.abandon() // a failed snapshot leaves nothing of ours behind
        if case .error(let text) = answer { fail(text, status: 1) }
        fail("unexpected answer", status: 1)
    }

    static func usage() -> Never {
        fail("usage: skiff pause|resume|status SOCKET, skiff snapshot SOCKET DIR [--diff]", status: 2)
    }

    /// The VM process has its own working directory: send it absolute paths.
    static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/") else { return path }
        guard let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        return String(cString: cwd) + "/" + path
    }

    /// Makes the snapshot directory (or takes an empty one) and opens it.
    static func prepare(_ path: String, shown: String) -> (fd: Int32, path: String, made: Bool) {
        var made = true
        if mkdir(path, 0o700) != 0 {
            let e = errno
            switch e {
            case EEXIST:
                var st = stat()
                guard lstat(path, &st) == 0 else { fail("\(shown): \(String(cString: strerror(errno)))", status: 2) }
                guard st.st_mode & S_IFMT == S_IFDIR else {
                    fail("\(shown): not a directory\(st.st_mode & S_IFMT == S_IFLNK ? " (a symbolic link)" : "")", status: 2)
                }
                made = false
            case ENOENT: fail("\(shown): parent directory does not exist", status: 2)
            default: fail("\(shown): \(String(cString: strerror(e)))", status: 2)
            }
        }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { fail("\(shown): \(String(cString: strerror(errno)))", status: 2) }
        if !made && !isEmpty(fd) { fail("\(shown): not empty (holds a snapshot?)", status: 2) }
        return (fd, path, made)
    }

    static func isEmpty(_ fd: Int32) -> Bool {
        guard let dir = fdopendir(dup(fd)) else { return false }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { return false }
        }
        return true
    }

    static func connect(_ path: String) -> Int32 {
        let fd = UnixSocket.connect(path)
        guard fd >= 0 else {
            if errno == ENAMETOOLONG { fail("\(path): path too long", status: 2) }
            fail("\(path): \(String(cString: strerror(errno))) (is a VM running with --control-socket \(path)?)", status: 2)
        }
        return fd
    }

    static func send(_ request: ControlRequest, passing descriptors: [Int32], on fd: Int32, path: String) -> ControlReply {
        // The whole line in one message, the descriptors with its first byte.
        let line = request.line
        var sent = UnixSocket.send(fd, line, passing: descriptors)
        while sent >= 0 && sent < line.count {
            let n = UnixSocket.send(fd, Array(line[sent...]), passing: [])
            guard n > 0 else { break }
            sent += n
        }
        guard sent == line.count else { fail("\(path): sending the request: \(String(cString: strerror(errno)))", status: 1) }
        defer { close(fd) }
        let reply: ControlReply?
        do { reply = try ControlReply.read(from: fd) } catch { fail("\(path): \(error.description)", status: 1) }
        guard let reply else {
            fail("\(path): the VM closed the connection without answering (is this user allowed to control it?)", status: 1)
        }
        return reply
    }
}

/// Where `skiff snapshot` puts a snapshot: this process makes the
/// directory and the files in it (O_EXCL, never following a link), so its
/// permissions decide where a snapshot may go, and the VMM, which sees no
/// host path when jailed, writes into the descriptors it is sent. After the
/// VMM's "ok" they are moved into place, the state file last: a snapshot
/// is complete once its state file is there.
struct SnapshotTarget {
    let directory: (fd: Int32, path: String, made: Bool)
    let files: [Int32]

    init(_ path: String, shown: String) {
        directory = ControlClient.prepare(path, shown: shown)
        var files: [Int32] = []
        for name in SnapshotFiles.names {
            let fd = openat(directory.fd, name + ".new", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                let e = errno
                files.forEach { _ = close($0) }
                for n in SnapshotFiles.names { unlinkat(directory.fd, n + ".new", 0) }
                if directory.made { rmdir(directory.path) }
                fail("\(shown)/\(name).new: \(String(cString: strerror(e)))", status: 2)
            }
            files.append(fd)
        }
        self.files = files
    }

    /// Moves the files into place (an unsealed snapshot has no seal).
    func complete(shown: String) {
        var st = stat()
        let sealed = fstat(files[2], &st) == 0 && st.st_size > 0
        files.forEach { _ = close($0) }
        if !sealed { unlinkat(directory.fd, SnapshotSeal.fileName + ".new", 0) }
        for name in [SnapshotImage.memoryName] + (sealed ? [SnapshotSeal.fileName] : []) + [SnapshotImage.stateName] {
            guard renameat(directory.fd, name + ".new", directory.fd, name) == 0 else {
                fail("\(shown)/\(name): \(String(cString: strerror(errno)))", status: 1)
            }
        }
        fsync(directory.fd)
    }

    func abandon() {
        files.forEach { _ = close($0) }
        for name in SnapshotFiles.names { unlinkat(directory.fd, name + ".new", 0) }
        if directory.made { rmdir(directory.path) }
    }
}

private extension String {
    func replacingPrefix(_ prefix: String, with other: String) -> String {
        hasPrefix(prefix) ? other + dropFirst(prefix.count) : self
    }
}
