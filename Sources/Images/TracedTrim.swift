import Foundation

/// The second trimming: the application is run once in the work root
/// (chroot, its own network, mount and pid namespaces, as the spec's user)
/// under strace until its health check passes, or until it exits for a
/// one-shot; every file it or the health check did not touch goes, unless
/// the spec keeps it. What a run touches: each path given to a file system
/// call (open, exec, stat, readlink, ...), with its parent directories and
/// the targets of the symbolic links on the way.
struct TracedTrim {
    let root: String
    let work: String
    let spec: ApplianceSpec
    let progress: (String) -> Void

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Runs the traced application; returns the paths (inside the root) it touched.
    func trace() throws -> Set<String> {
        let traceFile = work + "/trace"
        let log = work + "/trace.log"
        let (uid, gid) = try Self.ids(root: root, user: spec.user)
        let env = spec.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let runner = work + "/trace.sh"
        let merged = work + "/merged"
        func quote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        let command = spec.command.map(quote).joined(separator: " ")
        let health: String
        switch spec.health {
        case .http(let port, let path, let status)?:
            health = "[ \"$(curl -s -o /dev/null -m 1 -w '%{http_code}' http://127.0.0.1:\(port)\(path))\" = \(status) ]"
        case .tcp(let port)?:
            health = "(exec 3<>/dev/tcp/127.0.0.1/\(port)) 2>/dev/null"
        case .command(let c)?:
            health = "strace -f -qq -s 4096 -e trace=%file,%process -o \(quote(traceFile)).health chroot --userspec=\(uid):\(gid) \(quote(merged)) /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin " +
                env.map(quote).joined(separator: " ") + " " + c.map(quote).joined(separator: " ") + " >/dev/null 2>&1"
        case nil:
            health = ""
        }
        // One-shots (no health check) run to their end, stdin empty, at most 60 s.
        let script = """
        set -u
        ip link set lo up
        # On an overlay: what the run writes (pid files, logs, caches) is not the image's.
        mkdir -p \(quote(work + "/upper")) \(quote(work + "/overlay-work")) \(quote(merged))
        mount -t overlay overlay -o lowerdir=\(quote(root)),upperdir=\(quote(work + "/upper")),workdir=\(quote(work + "/overlay-work")) \(quote(merged))
        mount -t proc proc \(quote(merged + "/proc"))
        mount --rbind /dev \(quote(merged + "/dev"))
        mount -t tmpfs tmpfs \(quote(merged + "/tmp"))
        cd /
        strace -f -qq -s 4096 -e trace=%file,%process -o \(quote(traceFile)) chroot --userspec=\(uid):\(gid) \(quote(merged)) \\
          /bin/sh -c 'cd "$0" && exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"' \(quote(spec.workdir)) \(env.map(quote).joined(separator: " ")) \(command) </dev/null &
        app=$!
        \(health.isEmpty ? "timeout 60 tail --pid=$app -f /dev/null; status=0" : """
        status=1
        for _ in $(seq 300); do
          if \(health); then status=0; break; fi
          kill -0 $app 2>/dev/null || break
          sleep 0.1
        done
        """)
        kill $app 2>/dev/null; sleep 0.2; kill -9 $app 2>/dev/null
        wait
        exit $status
        """
        try script.write(toFile: runner, atomically: true, encoding: .utf8)
        progress("tracing a run of \(spec.command.joined(separator: " "))\(spec.health == nil ? "" : " until its health check passes")")
        let status = try ApplianceBuilder.run("/usr/bin/unshare", ["--net", "--mount", "--pid", "--fork", "--propagation", "private", "/bin/bash", runner], log: log)
        guard status == 0 else {
            throw Failure(description: "the traced run's health check never passed (or the program failed to start):\n" + ApplianceBuilder.explain(log))
        }
        var touched: Set<String> = []
        for file in [traceFile, traceFile + ".health"] {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") { Self.paths(in: line).forEach { touched.insert($0) } }
        }
        return touched
    }

    /// Deletes every file and link outside `keep` (paths, and what is under kept directories).
    func apply(_ touched: Set<String>) throws -> (kept: Int, removed: Int) {
        var keep: Set<String> = ["/"]
        /// Keeps a path, its parents and, at each symbolic link on the way,
        /// the link and the same path resolved through its target.
        func add(_ path: String, depth: Int = 0) {
            guard depth < 40, path.hasPrefix("/") else { return }
            let parts = Self.normalize(path).split(separator: "/")
            var prefix = ""
            for (i, part) in parts.enumerated() {
                prefix += "/" + part
                keep.insert(prefix)
                var st = stat()
                if lstat(root + prefix, &st) == 0, st.st_mode & S_IFMT == S_IFLNK,
                   let target = try? FileManager.default.destinationOfSymbolicLink(atPath: root + prefix) {
                    let base = target.hasPrefix("/") ? target : (prefix as NSString).deletingLastPathComponent + "/" + target
                    let rest = parts[(i + 1)...].joined(separator: "/")
                    add(rest.isEmpty ? base : base + "/" + rest, depth: depth + 1)
                    return
                }
            }
        }
        for p in touched { add(p) }
        // The dynamic loader: the kernel opens it for an exec, with no system call strace sees.
        for p in ["/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/ld.so.cache",
                  "/lib64/ld-linux-x86-64.so.2"] { add(p) }
        // The usual skeleton, touched or not: whether a run happened to touch
        // /tmp or /var/tmp is timing, and the same spec must give the same image.
        for p in ["/dev", "/proc", "/sys", "/run", "/tmp", "/var/tmp", "/root"] { add(p) }
        for p in spec.files.keys { add(p) }
        let subtrees = spec.keep + spec.volumes
        for p in subtrees { add(p) }
        var kept = 0, removed = 0
        guard let walker = FileManager.default.enumerator(atPath: root) else { return (0, 0) }
        var doomed: [String] = []
        while let rel = walker.nextObject() as? String {
            let path = "/" + rel
            if path == "/proc" || path == "/dev" || path == "/sys" || path == "/tmp" || path == "/run" { walker.skipDescendants(); continue }
            if subtrees.contains(where: { path == $0 || path.hasPrefix($0 + "/") }) { kept += 1; continue }
            var st = stat()
            guard lstat(root + path, &st) == 0 else { continue }
            if st.st_mode & S_IFMT == S_IFDIR { continue } // kept if anything under it is; emptied ones go below
            if keep.contains(path) { kept += 1 } else { doomed.append(path) }
        }
        for p in doomed { if unlink(root + p) == 0 { removed += 1 } }
        // Directories left empty and never touched.
        let dirs = (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).map { "/" + $0 }.sorted { $0.count > $1.count }
        for d in dirs where !keep.contains(d) && !subtrees.contains(where: { d == $0 || d.hasPrefix($0 + "/") }) {
            rmdir(root + d) // fails while not empty
        }
        return (kept, removed)
    }

    /// The quoted path arguments of one strace line: `openat(AT_FDCWD, "/etc/x", ...)`, `execve("/bin/sh", ...)`.
    static func paths(in line: Substring) -> [String] {
        var out: [String] = []
        var rest = line[...]
        while let q = rest.firstIndex(of: "\"") {
            let after = rest[rest.index(after: q)...]
            guard let end = after.firstIndex(of: "\"") else { break }
            let s = String(after[..<end])
            if s.hasPrefix("/") && !s.contains("\\") { out.append(s) }
            rest = after[after.index(after: end)...]
        }
        return out
    }

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for p in path.split(separator: "/") {
            if p == "." { continue }
            if p == ".." { _ = parts.popLast(); continue }
            parts.append(p)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// The spec's user by the image's own /etc/passwd (a name, or a number).
    static func ids(root: String, user: String) throws -> (uid: Int, gid: Int) {
        if let n = Int(user) { return (n, n) }
        let passwd = (try? String(contentsOfFile: root + "/etc/passwd", encoding: .utf8)) ?? ""
        for line in passwd.split(separator: "\n") {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            if f.count >= 4, f[0] == user, let uid = Int(f[2]), let gid = Int(f[3]) { return (uid, gid) }
        }
        throw Failure(description: "user \(user) is not in the image's /etc/passwd (a package creates it, or give a number)")
    }
}
