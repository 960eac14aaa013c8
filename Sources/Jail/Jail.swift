import CJail
import Glibc

/// The jailer: runs the VMM as Firecracker's jailer does, in new mount,
/// PID, IPC, UTS and network namespaces, on an empty read-only root, in a
/// cgroup of its own, as an unprivileged uid/gid with no capabilities and
/// no-new-privileges, with only the file descriptors it was handed.
///
/// Process tree: the launcher (privileged: it opened the host resources
/// and set up host networking, and undoes it after) -> a keeper in the new
/// namespaces, which waits -> the VMM, PID 1 of its PID namespace. Both
/// die with their parent.
public struct Jail: Sendable {
    public var uid: uid_t = 65534
    public var gid: gid_t = 65534
    /// Host directories the VMM must still see, at the same paths (the
    /// vsock device connects to `<socket>_<port>` for the guest).
    public var binds: [String] = []
    /// Descriptors the VMM keeps besides 0, 1 and 2; all others are closed.
    public var keep: [Int32] = []

    /// Where the VMM's root is mounted (inside its own mount namespace, so
    /// every VM uses the same directory).
    public static let root = "/run/skiff/jail"

    public init() {}

    /// Starts the VMM: `prepare` runs in it before it loses the host's view
    /// (it returns more descriptors to keep), then `body`, which never
    /// returns. Returns once the VMM exists.
    public func spawn(name: String, prepare: () -> [Int32], body: () -> Never) throws(JailError) -> JailedVMM {
        guard makeDirectories(Self.root) else { throw JailError("jail: \(Self.root): \(String(cString: strerror(errno)))") }
        let cgroup = Cgroup.create(name: name)
        var report: [Int32] = [-1, -1]
        guard cjail_pipe(&report) == 0 else { throw JailError("jail: pipe: \(String(cString: strerror(errno)))") }
        let launcher = getpid()
        let cgroupFD = cgroup.map { open($0.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } ?? -1
        var joined: Int32 = 0
        let keeper = cjail_fork_into_cgroup(cgroupFD, &joined)
        guard keeper >= 0 else { throw JailError("jail: fork: \(String(cString: strerror(errno)))") }
        if keeper == 0 {
            close(report[0])
            keep(report[1], launcher: launcher, cgroup: joined != 0 ? nil : cgroup, prepare: prepare, body: body)
        }
        if cgroupFD >= 0 { close(cgroupFD) }
        close(report[1])
        // The keeper reports the VMM's pid (as this namespace sees it), or
        // nothing if it could not start one.
        var pid: pid_t = 0
        let n = withUnsafeMutableBytes(of: &pid) { read(report[0], $0.baseAddress, $0.count) }
        close(report[0])
        return JailedVMM(keeper: keeper, vmm: n == MemoryLayout<pid_t>.size ? pid : nil, cgroup: cgroup)
    }

    /// The keeper: joins the cgroup (unless born in it) and the new
    /// namespaces, forks the VMM,
    /// waits for it and exits as it did (128 + N if killed by signal N).
    private func keep(_ report: Int32, launcher: pid_t, cgroup: Cgroup?, prepare: () -> [Int32], body: () -> Never) -> Never {
        guard cjail_die_with_parent() == 0, getppid() == launcher else { _exit(1) }
        if let cgroup, !cgroup.join() { die("join cgroup \(cgroup.path)") }
        // The VMM gets its descriptors from here, so the keeper keeps them
        // until it has forked; it then holds only its report pipe.
        guard cjail_unshare_namespaces() == 0 else { die("unshare namespaces") }
        let vmm = fork()
        guard vmm >= 0 else { die("fork") }
        if vmm == 0 {
            close(report)
            enter(prepare: prepare, body: body)
        }
        var pid = vmm
        _ = withUnsafeBytes(of: &pid) { write(report, $0.baseAddress, $0.count) }
        close(report)
        _ = cjail_close_other_fds([], 0) // a VMM that is gone must not leave its sockets open here
        var status: Int32 = 0
        while waitpid(vmm, &status, 0) < 0 && errno == EINTR {}
        // The VMM's status as its own; a VMM killed by a signal, the same
        // signal (an exit status of 128 + N would read as the guest's).
        if status & 0x7f != 0 {
            let signo = status & 0x7f
            Glibc.signal(signo, SIG_DFL)
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, signo)
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
            kill(getpid(), signo)
            _exit(128 + signo)
        }
        _exit((status >> 8) & 0xff)
    }

    /// The VMM's side: the empty root, then no privileges, then the VM.
    private func enter(prepare: () -> [Int32], body: () -> Never) -> Never {
        guard cjail_die_with_parent() == 0 else { die("set the parent-death signal") }
        let more = prepare()
        var step: UnsafePointer<CChar>?
        var paths = binds.map { strdup($0) }
        defer { paths.forEach { free($0) } }
        let entered = paths.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: p.count) {
                cjail_enter_root(Self.root, $0, Int32(p.count), &step)
            }
        }
        guard entered == 0 else { die(step.map { String(cString: $0) } ?? "enter the jail's root") }
        let kept = Array(Set(keep + more)).sorted()
        guard cjail_close_other_fds(kept, Int32(kept.count)) == 0 else { die("close inherited file descriptors") }
        let keeper = getppid()
        guard cjail_drop_privileges(uid, gid, &step) == 0 else { die(step.map { String(cString: $0) } ?? "drop privileges") }
        // Changing credentials cleared the parent-death signal: again, and
        // make sure the keeper did not die in between.
        guard cjail_die_with_parent() == 0, getppid() == keeper else { _exit(1) }
        body()
    }

    private func die(_ what: String) -> Never {
        var line = Array("skiff: jail: \(what): \(String(cString: strerror(errno)))\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        _exit(1)
    }

    private func makeDirectories(_ path: String) -> Bool {
        var prefix = ""
        for part in path.utf8.split(separator: UInt8(ascii: "/")) {
            prefix += "/" + String(decoding: part, as: UTF8.self)
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { return false }
        }
        return true
    }
}

/// A jailed VMM as its launcher sees it.
public struct JailedVMM: Sendable {
    /// The keeper, the launcher's child: its exit status is the VMM's.
    public let keeper: pid_t
    /// The VMM itself (nil if the keeper could not start it).
    public let vmm: pid_t?
    let cgroup: Cgroup?

    /// Forwards a signal to the VMM.
    public func signal(_ signo: Int32) {
        if let vmm { kill(vmm, signo) }
    }

    /// Removes the VMM's cgroup once the keeper has been reaped.
    public func removeCgroup() { cgroup?.remove() }
}

public struct JailError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}
