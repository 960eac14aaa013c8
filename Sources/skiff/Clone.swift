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
        for d in config.disks where !d.readOnly {
            throw ConfigurationError("clone: the snapshot's VM has a writable disk (\(d.path)); clones would all write to it")
        }
        for i in config.nets.indices {
            var n = config.nets[i]
            n.tap = String(n.tap.utf8.prefix(9).map { Character(UnicodeScalar($0)) }) + "c\(index)"
            n.mac = [n.mac[0] | 0x02, n.mac[1], n.mac[2], UInt8(truncatingIfNeeded: index >> 8) ^ n.mac[3],
                     UInt8(truncatingIfNeeded: index), n.mac[5]]
            // Host-side addresses would clash: clones join a bridge or nothing.
            n.hostAddress = nil
            n.nat = false
            config.nets[i] = n
        }
        if var v = config.vsock {
            v.cid += UInt64(index) + 1
            v.socketPath += ".clone\(index)"
            config.vsock = v
        }
    }

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
        // Check the snapshot and the clones' identities before starting any.
        do {
            let image = try SnapshotImage.load(snapshot, hostKey: SnapshotSeal.hostKey(create: false))
            var config = image.configuration
            image.close()
            guard image.sealed || config.hostResourceNames.isEmpty else {
                fail("clone: \(snapshot) was not sealed by this host, so the host resources it names are not opened (restore it with each given instead)", status: 2)
            }
            try identity(&config, index: 0)
        } catch let e as CustomStringConvertible { fail(e.description, status: 2) } catch { fail("\(error)", status: 2) }

        var children: [pid_t] = []
        for i in 0..<count {
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            if let dir = outputDir {
                posix_spawn_file_actions_addopen(&actions, 1, "\(dir)/clone-\(i).console", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            }
            let argv = ["/proc/self/exe", "restore", snapshot, "--clone-index", String(i)]
            var cArgs = argv.map { strdup($0) } + [nil]
            defer { for a in cArgs { free(a) } }
            var pid: pid_t = 0
            let r = posix_spawn(&pid, "/proc/self/exe", &actions, nil, &cArgs, environ)
            guard r == 0 else { fail("clone \(i): \(String(cString: strerror(r)))", status: 1) }
            children.append(pid)
            print("clone \(i) pid \(pid)")
        }
        fflush(nil) // all streams: the clone lines above
        var failed = 0
        for pid in children {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            if status != 0 { failed += 1 }
        }
        if failed > 0 { fail("clone: \(failed) of \(count) clones failed", status: 1) }
        exit(0)
    }

    static func usage() -> Never { fail("usage: skiff clone SNAPSHOT -n N [--output-dir DIR]", status: 2) }
}
