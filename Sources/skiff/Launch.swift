import Glibc
import Jail
import Machine
import VMM

/// Starts one VM (booting or restoring) and exits with its status.
///
/// This process is the privileged side: it opens every host resource the
/// configuration names (kernel, disks, TAPs, sockets, /dev/kvm) and sets
/// up host networking. As root the VMM then runs jailed in a child
/// (`Jail`), holding only those descriptors, and this process waits, passes
/// signals on, and undoes the host side when it ends. Otherwise (or with
/// --no-jail) the VMM runs here. Either way every VMM thread runs under its
/// seccomp filter.
func launch(_ base: VMConfiguration, snapshot: SnapshotImage?, options: RunOptions) -> Never {
    var config = base
    config.trackDirtyPages = options.trackDirtyPages
    if let device = getenv("SKIFF_KVM_DEVICE") { config.kvmPath = String(cString: device) }
    // Decided here: a jailed VMM cannot read /sys.
    if config.cpuTemplate == nil && snapshot == nil { config.cpuTemplate = CPUTemplate.automatic() }
    Seccomp.testViolation = options.seccompViolation
    if var v = config.vsock { // the VMM connects to `<socket>_<port>` from another working directory
        v.socketPath = absolute(v.socketPath)
        config.vsock = v
    }
    if let name = options.cgroup, !Cgroup.joinV1(name: name) {
        fail("--cgroup \(name): cannot join its cgroup v1 hierarchies: \(String(cString: strerror(errno)))", status: 1)
    }
    // The stop reason (written by the VMM, jailed or not) and then the
    // exit status (by this process) go here, for a manager that may not be
    // this process's parent by the time the VM ends.
    let exitFile: Int32 = options.exitFile.map { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600) } ?? -1
    if let path = options.exitFile, exitFile < 0 { fail("--exit-file \(path): \(String(cString: strerror(errno)))", status: 2) }
    ExitFile.fd = exitFile
    if Recording.fd >= 0 { Recording.describe(config) }
    let resources: HostResources
    let network = HostNetwork()
    // The VM's snapshots are sealed for exactly the resources opened here.
    config.sealKey = SnapshotSeal.hostKey(create: true).map { SnapshotSeal.resourceKey(config, hostKey: $0) }
    do {
        try config.validate(hostMemoryMiB: HostFiles.hostMemoryMiB())
        resources = try HostResources(config, booting: snapshot == nil, controlSocket: options.controlSocket)
        do {
            for (n, tap) in zip(config.nets, resources.taps) { try network.setUp(n, interface: tap.name) }
        } catch {
            network.tearDown()
            resources.closeDescriptors()
            resources.removeSockets()
            throw error
        }
    } catch let e as UserInputError {
        fail(e.description, status: 2)
    } catch {
        fail("\(error)", status: 1)
    }
    let status: Int32
    if options.jail ?? (geteuid() == 0) {
        status = runJailed(config, resources: resources, snapshot: snapshot, options: options)
    } else {
        status = runMachine(config, resources: resources, snapshot: snapshot, options: options,
                            mainSpawnsProcesses: network.isActive)
    }
    network.tearDown()
    resources.removeSockets()
    ExitFile.write("status \(status)\n")
    exit(status)
}

/// `--exit-file`: `reason TEXT` (from the VMM) and `status N` lines.
enum ExitFile {
    nonisolated(unsafe) static var fd: Int32 = -1
    static func write(_ line: String) {
        guard fd >= 0 else { return }
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}

/// Runs the VMM in a jail and waits for it; its exit status.
func runJailed(_ config: VMConfiguration, resources: HostResources, snapshot: SnapshotImage?, options: RunOptions) -> Int32 {
    var jail = Jail()
    jail.uid = options.jailUID
    jail.gid = options.jailGID
    jail.keep = resources.descriptors + (snapshot?.layers.map(\.fd) ?? []) + (ExitFile.fd >= 0 ? [ExitFile.fd] : [])
        + (Recording.fd >= 0 ? [Recording.fd] : [])
    if let v = config.vsock { jail.binds = [directory(of: v.socketPath)] }
    // Signals for the VMM are taken here (blocked before the fork, so none
    // is lost in between) and passed on.
    let forwarded: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT]
    var signals = sigset_t()
    sigemptyset(&signals)
    for s in forwarded + [SIGCHLD] { sigaddset(&signals, s) }
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    let terminal = TerminalState(fd: STDIN_FILENO)
    let vmm: JailedVMM
    do {
        vmm = try jail.spawn(name: options.cgroup ?? "vm-\(getpid())", prepare: {
            // The VMM's own pagemap, while it can still see /proc.
            MemoryFile.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
            return MemoryFile.pagemap >= 0 ? [MemoryFile.pagemap] : []
        }, body: {
            exit(runMachine(config, resources: resources, snapshot: snapshot, options: options, mainSpawnsProcesses: false))
        })
    } catch {
        resources.closeDescriptors()
        var line = Array("skiff: \(error)\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        return 1
    }
    resources.closeDescriptors() // the VMM has them now
    snapshot?.close()
    var status: Int32?
    var killedBy: Int32?
    while status == nil {
        var received: Int32 = 0
        sigwait(&signals, &received)
        if received == SIGCHLD {
            var raw: Int32 = 0
            if waitpid(vmm.keeper, &raw, WNOHANG) == vmm.keeper {
                // Reaped here: wait() would find nothing; decode as it does.
                // The keeper passes on the VMM's status, or dies of its signal.
                if raw & 0x7f == 0 { status = (raw >> 8) & 0xff } else { killedBy = raw & 0x7f; status = 128 + killedBy! }
                vmm.removeCgroup()
            }
        } else {
            vmm.signal(received)
        }
    }
    terminal.restore()
    let code = status ?? 1
    if let signal = killedBy {
        ExitFile.write("reason the VMM was killed by signal \(signal)\n")
        var line = Array("skiff: the VMM was killed by signal \(signal)\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        return 1
    }
    return code
}

/// Builds and runs the VM in this process; returns the exit status after
/// printing the stop reason, as `skiff run` reports it.
func runMachine(_ config: VMConfiguration, resources: HostResources, snapshot: SnapshotImage?, options: RunOptions,
                mainSpawnsProcesses: Bool) -> Int32 {
    do {
        // Before the VM is built: a restored VM starts its device threads
        // at once, and every thread must run under its filter.
        if options.seccomp { try Seccomp.start() }
        let output = try ConsoleOutput.standardOutput(), guest = GuestReport()
        let machine = try VirtualMachine(config, resources: resources, restoring: snapshot,
                                         consoleOutput: { guest.feed($0); output.write($0) })
        try Recording.attach(machine)
        let reason = try machine.run(consoleInput: Recording.events == nil ? STDIN_FILENO : nil, startPaused: options.paused,
                                     mainSpawnsProcesses: mainSpawnsProcesses)
        return try Recording.finish(machine) ?? exitStatus(reason, guest.ending)
    } catch let e as UserInputError {
        report(e.description)
        ExitFile.write("reason \(e.description)\n")
        return 2
    } catch {
        report("\(error)")
        ExitFile.write("reason \(error)\n")
        return 1
    }
}

/// `skiff run`'s status for a VM that stopped: like `docker run`, the
/// status of the command the guest ran (`skiff: exit N` on its console),
/// or 1 with the reason for a guest kernel panic or a VMM failure; 0 for
/// any other orderly stop. The reason goes to the exit file either way.
func exitStatus(_ reason: StopReason, _ guest: GuestReport.Ending) -> Int32 {
    let guestEnded: Bool
    switch reason {
    case .reset, .powerOff, .tripleFault: guestEnded = true
    default: guestEnded = false
    }
    if guestEnded, let panic = guest.panic {
        let text = "guest kernel panic: \(panic)"
        ExitFile.write("reason \(text)\n")
        report(text)
        return 1
    }
    ExitFile.write("reason \(reason.description)\n")
    if reason.exitStatus != 0 { report(reason.description); return reason.exitStatus }
    if case .reset = reason {} else { report(reason.description) }
    if guestEnded, let status = guest.exitStatus { return status }
    return 0
}

func report(_ message: String) {
    var line = Array("skiff: \(message)\n".utf8)
    _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

/// "/a/b/c" -> "/a/b".
func directory(of path: String) -> String {
    let p = absolute(path)
    guard let slash = p.utf8.lastIndex(of: UInt8(ascii: "/")) else { return "/" }
    let d = String(p[..<slash])
    return d.isEmpty ? "/" : d
}

func absolute(_ path: String) -> String {
    path.utf8.first == UInt8(ascii: "/") ? path : currentDirectory() + "/" + path
}

func currentDirectory() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
    guard getcwd(&buffer, buffer.count) != nil else { return "/" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The terminal's settings, put back if the VMM could not (it was killed).
struct TerminalState {
    let fd: Int32
    let saved: termios?
    init(fd: Int32) {
        self.fd = fd
        var t = termios()
        saved = isatty(fd) != 0 && tcgetattr(fd, &t) == 0 ? t : nil
    }
    func restore() {
        if var t = saved { tcsetattr(fd, TCSANOW, &t) }
    }
}
