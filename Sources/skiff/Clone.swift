import Devices
import Glibc
import Machine
import VMM

/// `skiff clone SNAPSHOT -n N [--output-dir DIR]`: N VMs restored from one
/// snapshot, each a `skiff restore --clone-index I` process. They share
/// the snapshot's memory file: a page stays shared until a clone writes it.
enum Clone {
    static let maxClones = 4096

    /// What must differ between clones: the MAC address (locally
    /// administered, the clone number in its last bytes), the TAP name, the
    /// vsock CID (the snapshot's plus 1 + I) and host socket. Fresh entropy
    /// comes from each clone's own virtio-rng (the host's getrandom).
    /// Writable disks cannot be shared: refused.
    static func identity(_ config: inout VMConfiguration, index: Int) throws(ConfigurationError) {
        guard index >= 0, index < 1 << 16 else { throw ConfigurationError("clone \(index): clone numbers go from 0 to 65535") }
        for d in config.disks where !d.readOnly {
            throw ConfigurationError("clone: the snapshot's VM has a writable disk (\(d.path)); clones would all write to it")
        }
        for i in config.nets.indices {
            var n = config.nets[i]
            guard n.mac.count == 6 else { throw ConfigurationError("clone: network device \(i) has a MAC address of \(n.mac.count) bytes") }
            n.tap = String(n.tap.utf8.prefix(9).map { Character(UnicodeScalar($0)) }) + "c\(index)"
            n.mac = [n.mac[0] | 0x02, n.mac[1], n.mac[2], UInt8(truncatingIfNeeded: index >> 8) ^ n.mac[3],
                     UInt8(truncatingIfNeeded: index), n.mac[5]]
            // Host-side addresses would clash: clones join a bridge or nothing.
            n.hostAddress = nil
            n.nat = false
            config.nets[i] = n
        }
        if var v = config.vsock {
            // The CID comes from the snapshot: checked, never trapped on.
            // Guest CIDs are 32-bit, U32_MAX is reserved.
            let (cid, overflow) = v.cid.addingReportingOverflow(UInt64(index) + 1)
            guard !overflow, cid < UInt64(UInt32.max) else {
                throw ConfigurationError("clone \(index): the snapshot's vsock CID \(v.cid) plus \(index + 1) is past the last guest CID (\(UInt32.max - 1))")
            }
            v.cid = cid
            v.socketPath += ".clone\(index)"
            config.vsock = v
        }
    }

    /// The signals a `skiff clone` passes on to its clones, so that stopping
    /// it stops them (instead of leaving them running, orphaned).
    static let forwarded = [SIGTERM, SIGINT, SIGHUP]

    static func main(_ args: ArraySlice<String>) -> Never {
        var rest = args
        guard let snapshot = rest.popFirst(), !snapshot.hasPrefix("-") else { usage() }
        var count: Int?, outputDir: String?
        while let arg = rest.popFirst() {
            switch arg {
            case "-n": count = rest.popFirst().flatMap { Int($0) }
            case "--output-dir": outputDir = rest.popFirst()
            default: usage()
            }
        }
        guard let count, count >= 1, count <= maxClones else { fail("clone: -n must be between 1 and \(maxClones)", status: 2) }
        // Check the snapshot and the clones' identities (the first and the
        // last: CIDs grow with the number) before starting any.
        do {
            let image = try SnapshotImage.load(snapshot, hostKey: SnapshotSeal.hostKey(create: false))
            var first = image.configuration, last = image.configuration
            image.close()
            try identity(&first, index: 0)
            try identity(&last, index: count - 1)
            guard image.sealed || first.hostResourceNames.isEmpty else {
                fail("clone: \(snapshot) was not sealed by this host, so the host resources it names are not opened (restore it with each given instead)", status: 2)
            }
        } catch let e as CustomStringConvertible { fail(e.description, status: 2) } catch { fail("\(error)", status: 2) }
        var logs: Int32?
        if let dir = outputDir {
            let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { fail("--output-dir \(dir): \(String(cString: strerror(errno)))", status: 2) }
            logs = fd
            // Each clone's log file is capped (ConsoleOutput), 16 MiB unless said otherwise.
            if getenv(ConsoleOutput.limitVariable) == nil { setenv(ConsoleOutput.limitVariable, String(ConsoleOutput.cloneLogLimit), 1) }
        }
        if let v = getenv(ConsoleOutput.limitVariable), UInt64(String(cString: v)) == nil {
            fail("\(ConsoleOutput.limitVariable)=\(String(cString: v)): not a number of bytes", status: 2)
        }

        // Signals wait, blocked, until the clones are started and can be
        // told; the clones themselves start with the mask we had.
        var original = sigset_t(), waited = sigset_t()
        sigemptyset(&waited)
        for s in forwarded + [SIGCHLD] { sigaddset(&waited, s) }
        pthread_sigmask(SIG_BLOCK, &waited, &original)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        posix_spawnattr_setsigmask(&attributes, &original)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))

        var children: [pid_t] = []
        /// Stops the clones already started, then exits.
        func abandon(_ message: String, status: Int32) -> Never {
            for pid in children { kill(pid, SIGTERM) }
            for pid in children { var st: Int32 = 0; while waitpid(pid, &st, 0) < 0 && errno == EINTR {} }
            fail(message, status: status)
        }
        for i in 0..<count {
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            var log: Int32 = -1
            defer { if log >= 0 { close(log) } }
            if let logs, let dir = outputDir {
                let name = "clone-\(i).console"
                log = openat(logs, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
                guard log >= 0 else { abandon("--output-dir \(dir): \(name): \(String(cString: strerror(errno)))", status: 2) }
                posix_spawn_file_actions_adddup2(&actions, log, 1)
            }
            let argv = ["/proc/self/exe", "restore", snapshot, "--clone-index", String(i)]
            var cArgs = argv.map { strdup($0) } + [nil]
            defer { for a in cArgs { free(a) } }
            var pid: pid_t = 0
            let r = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, &cArgs, environ)
            guard r == 0 else { abandon("clone \(i): \(String(cString: strerror(r)))", status: 1) }
            children.append(pid)
            print("clone \(i) pid \(pid)")
        }
        fflush(nil) // all streams: the clone lines above

        // Wait for every clone, passing on the signals that come meanwhile.
        var living = Set(children)
        var failed = 0
        var tick = timespec(tv_sec: 0, tv_nsec: 200_000_000)
        while !living.isEmpty {
            let s = sigtimedwait(&waited, nil, &tick)
            if s > 0 && forwarded.contains(s) { for pid in living { kill(pid, s) } }
            while true {
                var status: Int32 = 0
                let pid = waitpid(-1, &status, WNOHANG)
                guard pid > 0 else { break }
                if living.remove(pid) != nil && status != 0 { failed += 1 }
            }
        }
        if failed > 0 { fail("clone: \(failed) of \(count) clones failed", status: 1) }
        exit(0)
    }

    static func usage() -> Never { fail("usage: skiff clone SNAPSHOT -n N [--output-dir DIR]", status: 2) }
}
