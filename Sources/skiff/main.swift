// skiff: the command line. `skiff run` is the per-VM process: it links no
// Foundation and parses its few options by hand for that reason.
import Appliance
import Devices
import Glibc
import HostTools
import Jail
import KVM
import Machine
import VMM

let usage = """
usage: skiff run [--config FILE] [--kernel PATH] [--initrd PATH] [--cmdline TEXT] [--append TEXT]...
                 [--cpus N]
                 [--memory MIB] [--cpu-template host|pvm]
                 [--disk PATH[,ro][,id=NAME][,direct][,cbt][,fill=SOCKET]]... [--rng]
                 [--net tap=NAME[,mac=MAC][,host=ADDR/PREFIX][,bridge=BR][,nat]]...
                 [--vsock cid=N,socket=PATH]
                 [--balloon [size=MIB][,no-deflate-on-oom][,no-reporting]]
                 [--control-socket PATH] [--track-dirty-pages]
                 [--exit-file PATH] [--cgroup NAME]   (for skiffd)
       skiff run [OPTIONS] [--rm] [-p HOST:GUEST[/udp]]... [-e NAME=VALUE]...
                 [--network skiff|none] [--name NAME] [--cold] IMAGE [-- COMMAND ARGS...]
                                   an appliance image (skiff appliance build,
                                   skiff image ls; store: $SKIFF_IMAGES, else
                                   /var/lib/skiff/images) on the default guest;
                                   COMMAND replaces the image's. As root it is
                                   on Skiff's network (bridge skiff0,
                                   172.29.0.0/16, NAT; an address of its own,
                                   isolated from other VMs) and -p publishes
                                   a port on the host's addresses. An image
                                   with a health check is snapshotted once
                                   healthy; later runs restore that (--cold:
                                   boot anyway)
       skiff exec [-i] [-t] VM -- COMMAND [ARGS...]
                                   a command in a running image's VM (its name:
                                   --name, else IMAGE-PID) through its guest agent
       skiff cp VM:PATH HOST|-    skiff cp HOST|- VM:PATH
                                   a file out of or into it, the same way
       skiff restore SNAPSHOT [--control-socket PATH] [--paused] [--track-dirty-pages]
                 [--net ...]... [--vsock ...]   (these replace the saved ones)
       skiff clone SNAPSHOT -n N [--output-dir DIR]
                                   N VMs from one snapshot, each with its own
                                   MAC, vsock CID and socket, TAP name
       skiff run --deterministic ...  a machine that runs the same each time: one
                                   vCPU, Skiff's PIC and PIT on the guest's
                                   exits; disks and --rng served at the
                                   guest's exits
       skiff record DIR [run options]   a deterministic run, its inputs and
                                   state hashes logged in DIR/events
       skiff replay DIR [--disk PATH]...
                                   runs it again from the log alone, checking
                                   every event; exit 1 at the first difference
                                   (--disk: copies of the disks as they were)
       skiff pause|resume|status SOCKET
       skiff snapshot SOCKET DIR [--diff]
                                   through a VM's control socket
       skiff kernel build|path     build (if needed) and print the default kernel
       skiff initramfs path        build (if needed) and print the default initramfs

Environment: SKIFF_CACHE (default /var/cache/skiff) holds built images;
SKIFF_KVM_DEVICE (default /dev/kvm) names the KVM device.

`skiff run` with no --kernel boots the default guest (Skiff's kernel and a
busybox initramfs). --cmdline replaces the kernel command line, which is
by default:
  \(VMConfiguration.defaultCommandLine)
--append adds to the command line: `--append 'skiff_run="uname -a; exit 3"'`
makes the default guest run that command and power off.
--config FILE reads the VM from a JSON document in the shape of
Firecracker's --config-file (boot-source, machine-config, drives,
network-interfaces, vsock, balloon, entropy; see docs/config.md); flags
after it override what it says.

On a terminal, keys go to the guest (Ctrl-C too); Ctrl-A x stops the VM,
Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h lists these.

Exit status: the status of the command the default guest ran (skiff_run),
else 0 when the guest resets or powers off; 1 on a guest kernel panic, a
KVM error or an emulation failure (the reason on standard error); 2 when
what was given is wrong.
"""

func fail(_ message: String, status: Int32) -> Never {
    ExitFile.write("reason \(message)\nstatus \(status)\n")
    var line = Array("skiff: \(message)\n".utf8)
    _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    exit(status)
}

struct RunOptions {
    var kernel: String?
    var initrd: String?
    var cmdline: String?
    /// `--append TEXT`: more parameters after the command line (the
    /// default one unless --cmdline replaced it).
    var append: [String] = []
    var cpus = 1
    var memoryMiB: UInt64 = 128
    var template: CPUTemplate?
    var disks: [Block.Options] = []
    var rng = false
    var vsock: Vsock.Options?
    var nets: [Net.Options] = []
    var balloon: Balloon.Options?
    var controlSocket: String?
    var trackDirtyPages = false
    var paused = false
    var cloneIndex: Int?
    /// nil: jailed when run as root (the default), else not.
    var jail: Bool?
    var jailUID: uid_t = 65534
    var jailGID: gid_t = 65534
    var seccomp = true
    var seccompViolation: Seccomp.Role?
    /// Where the stop reason and exit status are written when the VM ends
    /// (for skiffd, which may not be this process's parent by then).
    var exitFile: String?
    /// The VM's cgroup under `skiff/`, made and configured by skiffd.
    var cgroup: String?
    /// Every option given, by name (restore accepts only some).
    var given: [String] = []
    /// `skiff run IMAGE [-- COMMAND...]`: an appliance image (ImageRun.swift).
    var image: String?
    var imageArguments: [String] = []
    /// `-p HOST:GUEST`: ports an image's VM publishes on the host.
    var published: [PublishedPort] = []
    /// `-e NAME=VALUE`: more environment for an image's command.
    var environment: [(String, String)] = []
    /// `--network none`: an image's VM gets no network (else Skiff's, as root).
    var network = "skiff"
    /// `--name N`: an image's VM's name (`skiff exec N`); else IMAGE-PID.
    var name: String?
    /// `--cold`: boot an image even if it has a ready snapshot (ReadySnapshot).
    var cold = false
    /// `--deterministic`: a machine that runs the same each time (Determinism; `skiff record`).
    var deterministic = false

    init(_ args: ArraySlice<String>) throws(ConfigurationError) {
        var rest = args
        func value(_ flag: String) throws(ConfigurationError) -> String {
            guard let v = rest.popFirst() else { throw ConfigurationError("\(flag) needs a value") }
            return v
        }
        while let arg = rest.popFirst() {
            given.append(String(arg.prefix { $0 != "=" }))
            if arg == "--help" || arg == "-h" { print(usage); exit(0) }
            if arg == "--" {
                guard image != nil else { throw ConfigurationError("'--' comes after an image: skiff run IMAGE -- COMMAND ARGS...") }
                imageArguments = Array(rest); rest = []
                continue
            }
            if !arg.hasPrefix("-") {
                guard image == nil else { throw ConfigurationError("\(arg): one image only (a command for it goes after '--')") }
                image = arg
                continue
            }
            // Docker's habit; a `skiff run` VM keeps nothing after it ends anyway.
            if arg == "--rm" { continue }
            if arg == "--rng" { rng = true; continue }
            if arg == "--cold" { cold = true; continue }
            if arg == "--deterministic" { deterministic = true; continue }
            if arg == "--track-dirty-pages" { trackDirtyPages = true; continue }
            if arg == "--paused" { paused = true; continue }
            if arg == "--no-jail" { jail = false; continue }
            if arg == "--no-seccomp" { seccomp = false; continue }
            if arg == "--balloon" { // its options are optional
                if let next = rest.first, !next.hasPrefix("--") { balloon = try Self.balloon(value(arg)) } else { balloon = Balloon.Options() }
                continue
            }
            var flag = arg, inline: String?
            if let eq = arg.firstIndex(of: "="), arg.hasPrefix("--") {
                flag = String(arg[..<eq]); inline = String(arg[arg.index(after: eq)...])
            }
            let v: () throws(ConfigurationError) -> String = { () throws(ConfigurationError) -> String in
                if let inline { return inline }
                return try value(flag)
            }
            switch flag {
            case "--kernel": kernel = try v()
            case "--initrd": initrd = try v()
            case "--config": try apply(configFile: try v())
            case "--cmdline": cmdline = try v()
            case "--append": append.append(try v())
            case "--cpus":
                let s = try v()
                guard let n = Int(s) else { throw ConfigurationError("--cpus \(s): not a number") }
                cpus = n
            case "--memory":
                let s = try v()
                guard let n = UInt64(s) else { throw ConfigurationError("--memory \(s): not a number of MiB") }
                memoryMiB = n
            case "--cpu-template":
                let s = try v()
                guard let t = CPUTemplate(rawValue: s) else {
                    throw ConfigurationError("--cpu-template \(s): unknown (known: \(CPUTemplate.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                template = t
            case "-p", "--publish":
                let s = try v()
                guard let p = PublishedPort(parsing: s) else { throw ConfigurationError("-p \(s.prefix(40)): not HOST:GUEST[/tcp|/udp] (ports 1-65535)") }
                published.append(p)
            case "-e", "--env":
                let s = try v()
                guard let eq = s.firstIndex(of: "="), ApplianceRun.isEnvironmentName(String(s[..<eq])),
                      !s.utf8.contains(0), !s.utf8.contains(0x0a) else { throw ConfigurationError("-e \(s.prefix(40)): not NAME=VALUE on one line") }
                environment.append((String(s[..<eq]), String(s[s.index(after: eq)...])))
            case "--name": name = try v()
            case "--network":
                let s = try v()
                guard s == "skiff" || s == "none" else { throw ConfigurationError("--network \(s.prefix(40)): skiff (the default) or none") }
                network = s
            case "--disk": disks.append(try Self.disk(try v()))
            case "--vsock": vsock = try Self.vsock(try v())
            case "--net": nets.append(try Self.net(try v(), index: nets.count))
            case "--balloon": balloon = try Self.balloon(try v())
            case "--control-socket": controlSocket = try v()
            case "--exit-file": exitFile = try v()
            case "--cgroup":
                let s = try v()
                guard Cgroup.isValidName(s) else { throw ConfigurationError("--cgroup \(s): a name of letters, digits, '-', '_' and '.', not starting with '.'") }
                cgroup = s
            case "--jail-uid", "--jail-gid":
                let s = try v()
                guard let n = UInt32(s), n != 0, n != UInt32.max else { throw ConfigurationError("\(flag) \(s): not an unprivileged id") }
                if flag == "--jail-uid" { jailUID = n } else { jailGID = n }
            case "--test-seccomp-violation": // for the tests: a thread of this role makes a forbidden call
                let s = try v()
                guard let role = Seccomp.Role(named: s) else { throw ConfigurationError("--test-seccomp-violation \(s): no such thread role") }
                seccompViolation = role
            case "--clone-index":
                let s = try v()
                guard let n = Int(s), n >= 0, n < 1 << 16 else { throw ConfigurationError("--clone-index \(s): not a clone number") }
                cloneIndex = n
            default: throw ConfigurationError("unknown option \(arg) (see skiff --help)")
            }
        }
    }
}

extension RunOptions {
    /// PATH[,ro][,id=NAME][,direct][,cbt][,fill=SOCKET]
    static func disk(_ spec: String) throws(ConfigurationError) -> Block.Options {
        let parts = spec.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false).map { String(Substring($0)) }
        guard let path = parts.first, !path.isEmpty else { throw ConfigurationError("--disk \(spec): no path") }
        var options = Block.Options(path: path)
        for p in parts.dropFirst() {
            if p == "ro" { options.readOnly = true }
            else if p == "direct" { options.direct = true }
            else if p == "cbt" { options.changeTracking = true }
            else if p.hasPrefix("id=") { options.id = String(p.dropFirst(3)) }
            else if p.hasPrefix("fill=") && p.count > 5 { options.fillSocket = String(p.dropFirst(5)) }
            else { throw ConfigurationError("--disk \(spec): unknown option '\(p)' (ro, id=NAME, direct, cbt, fill=SOCKET)") }
        }
        return options
    }
}

extension RunOptions {
    /// [size=MIB][,no-deflate-on-oom][,no-reporting]
    static func balloon(_ spec: String) throws(ConfigurationError) -> Balloon.Options {
        var o = Balloon.Options()
        for p in spec.utf8.split(separator: UInt8(ascii: ",")).map({ String(Substring($0)) }) {
            if p.hasPrefix("size=") {
                guard let n = UInt32(p.dropFirst(5)) else { throw ConfigurationError("--balloon \(spec): size is not a number of MiB") }
                o.targetMiB = n
            } else if p == "no-deflate-on-oom" { o.deflateOnOOM = false }
            else if p == "no-reporting" { o.freePageReporting = false }
            else { throw ConfigurationError("--balloon \(spec): unknown option '\(p)' (size=MIB, no-deflate-on-oom, no-reporting)") }
        }
        return o
    }

    /// tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,host=ADDR/PREFIX][,bridge=BR][,nat];
    /// the MAC defaults to 52:54:00:12:34:5N.
    static func net(_ spec: String, index: Int) throws(ConfigurationError) -> Net.Options {
        var tap: String?, mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, UInt8(truncatingIfNeeded: 0x56 &+ index)] // index: any count of --net (validated later)
        var host: String?, bridge: String?, nat = false
        for p in spec.utf8.split(separator: UInt8(ascii: ",")).map({ String(Substring($0)) }) {
            if p.hasPrefix("tap=") { tap = String(p.dropFirst(4)) }
            else if p.hasPrefix("mac=") {
                guard let m = Net.parseMAC(String(p.dropFirst(4))) else { throw ConfigurationError("--net \(spec): bad unicast MAC address") }
                mac = m
            } else if p.hasPrefix("host=") { host = String(p.dropFirst(5)) }
            else if p.hasPrefix("bridge=") { bridge = String(p.dropFirst(7)) }
            else if p == "nat" { nat = true }
            else { throw ConfigurationError("--net \(spec): unknown option '\(p)' (tap=NAME, mac=ADDRESS, host=ADDR/PREFIX, bridge=BR, nat)") }
        }
        guard let tap, !tap.isEmpty else { throw ConfigurationError("--net \(spec): needs tap=NAME") }
        var o = Net.Options(tap: tap, mac: mac)
        o.hostAddress = host
        o.bridge = bridge
        o.nat = nat
        return o
    }

    /// cid=N,socket=PATH
    static func vsock(_ spec: String) throws(ConfigurationError) -> Vsock.Options {
        var cid: UInt64?, socket: String?
        for p in spec.utf8.split(separator: UInt8(ascii: ",")).map({ String(Substring($0)) }) {
            if p.hasPrefix("cid=") {
                guard let n = UInt64(p.dropFirst(4)) else { throw ConfigurationError("--vsock \(spec): cid is not a number") }
                cid = n
            } else if p.hasPrefix("socket=") { socket = String(p.dropFirst(7)) }
            else { throw ConfigurationError("--vsock \(spec): unknown option '\(p)' (cid=N, socket=PATH)") }
        }
        guard let cid, let socket, !socket.isEmpty else { throw ConfigurationError("--vsock \(spec): needs cid=N and socket=PATH") }
        return Vsock.Options(cid: cid, socketPath: socket)
    }
}

/// Errors in what the user gave (files, numbers, devices): exit status 2.
protocol UserInputError: Error, CustomStringConvertible {}
extension ConfigurationError: UserInputError {}
extension BootError: UserInputError {}
extension KVMUnavailable: UserInputError {}
extension BlockError: UserInputError {}
extension VsockError: UserInputError {}
extension NetError: UserInputError {}
extension SnapshotError: UserInputError {}
extension ReplayError: UserInputError {}

func run(_ args: ArraySlice<String>) -> Never {
    var options: RunOptions
    do { options = try RunOptions(args) } catch { fail(error.description, status: 2) }
    guard !options.paused, options.cloneIndex == nil else { fail("--paused and --clone-index are for skiff restore", status: 2) }

    var config: VMConfiguration
    var appliance: ApplianceRun?
    do {
        if let image = options.image { appliance = try ApplianceRun.load(image) }
        if let kernel = options.kernel {
            config = VMConfiguration(kernelPath: kernel, initrdPath: options.initrd)
        } else if let appliance, ReadySnapshot.usable(appliance, options) != nil {
            // Restored, not booted: the default guest is not looked for (its
            // kernel's build check alone takes 0.4 s).
            config = VMConfiguration(kernelPath: "", initrdPath: nil)
        } else {
            config = VMConfiguration(kernelPath: try DefaultGuest.kernelPath(),
                                     initrdPath: try options.initrd ?? DefaultGuest.initramfsPath())
        }
    } catch let e as ConfigurationError { fail(e.description, status: 2) } catch { fail("default guest: \(error)", status: 1) }
    if let c = options.cmdline { config.commandLine = c }
    if !options.append.isEmpty { config.commandLine = ([config.commandLine] + options.append).joined(separator: " ") }
    config.cpus = options.cpus
    config.deterministic = options.deterministic
    config.memoryMiB = options.memoryMiB
    config.cpuTemplate = options.template
    config.disks = options.disks
    config.rng = options.rng
    config.nets = options.nets
    var vsock = options.vsock
    if !options.published.isEmpty || !options.environment.isEmpty || options.given.contains("--network") || options.name != nil {
        guard appliance != nil else { fail("-p, -e, --name and --network are for an image: skiff run [OPTIONS] IMAGE", status: 2) }
    }
    if var appliance {
        // The image's root is the first disk (/dev/vda); its CPUs and memory unless given.
        var root = Block.Options(path: appliance.rootfs)
        root.readOnly = true
        root.id = "image"
        config.disks = [root] + options.disks
        if !options.given.contains("--cpus") { config.cpus = appliance.cpus }
        if !options.given.contains("--memory") { config.memoryMiB = UInt64(appliance.memoryMiB) }
        // An application sees its own output, not the kernel's (each byte on
        // the emulated serial port costs an exit); and entropy at once:
        // Python's start blocks in getrandom until the kernel's pool is ready
        // (45 s here without a virtio-rng).
        config.rng = true
        if options.cmdline == nil { config.commandLine += " " + ReadySnapshot.applianceKernelWords }
        appliance.environment += options.environment
        var network: ApplianceRun.GuestNetwork?
        var lease: NetworkLease?
        if options.network == "skiff" && geteuid() == 0 {
            do {
                let l = try NetworkLease.acquire()
                config.nets = [l.options(publishing: options.published)] + options.nets
                network = .init(address: l.cidr, gateway: NetworkLease.gateway, nameservers: NetworkLease.nameservers())
                lease = l
            } catch { fail(error.description, status: 1) }
        } else if !options.published.isEmpty {
            fail(options.network == "none" ? "-p needs a network (not --network none)" : "-p needs root: a TAP on the skiff0 bridge and nftables rules", status: 2)
        }
        do { config.commandLine += " " + (try appliance.kernelParameters(arguments: options.imageArguments, network: network)) } catch { fail(error.description, status: 2) }
        // Its name, and the vsock its guest agent answers on (skiff exec NAME).
        let base = String(options.image!.prefix { $0 != ":" && $0 != "@" }.split(separator: "/").last ?? "vm")
        let name = options.name ?? "\(VMName.isValid(base) ? base : "vm")-\(getpid())"
        // Without a name given, a VM that cannot be registered (no run
        // folder for this user) runs anyway, without `skiff exec`.
        var dir: String?
        do { dir = try VMName.claim(name) } catch { if options.name != nil { fail(error.description, status: 2) } }
        if options.vsock == nil, let dir { vsock = Vsock.Options(cid: 3, socketPath: dir + "/vsock") }
        // Its ready snapshot: restored if there is one, else taken once healthy.
        if let health = appliance.health, let lease, let v = vsock, options.imageArguments.isEmpty, !options.cold, options.disks.isEmpty, options.kernel == nil {
            let ready = ReadySnapshot.directory(store: ApplianceRun.storeRoot, manifest: appliance.digest)
            if ReadySnapshot.usable(appliance, options) != nil {
                let image: SnapshotImage
                do { image = try SnapshotImage.load(ready, hostKey: SnapshotSeal.hostKey(create: false)) } catch { fail("ready snapshot: \(error)", status: 1) }
                var restored = image.configuration
                guard restored.disks.count == 1, restored.nets.count == 1, restored.vsock != nil else {
                    fail("ready snapshot \(ready): not an appliance's (remove it: a new one is taken at the next run)", status: 1)
                }
                restored.disks = config.disks
                restored.nets = config.nets
                restored.vsock = v
                // The snapshot's own MAC and address, if this lease has them,
                // are not given again: changing them to themselves is still
                // emulated kernel work in the guest. A lease's MAC holds its
                // number, and so names its address too.
                let same = image.configuration.nets.first?.mac == lease.mac
                ReadySnapshot.adopt(identity: ReadySnapshot.identity(lease, hostname: name, network: !same), vsock: v.socketPath, health: health,
                                    address: lease.address, name: name)
                launch(restored, snapshot: image, options: options)
            }
            if let dir {
                options.controlSocket = options.controlSocket ?? dir + "/control"
                ReadySnapshot.takeWhenHealthy(health, address: lease.address, control: options.controlSocket!, into: ready)
            }
        }
    }
    config.vsock = vsock
    config.balloon = options.balloon
    launch(config, snapshot: nil, options: options)
}

/// `skiff restore SNAPSHOT`: the snapshot's VM, as it was, with the
/// identity options given (or a clone's) in place of the saved ones.
func restore(_ args: ArraySlice<String>) -> Never {
    guard let directory = args.first, !directory.hasPrefix("-") else { fail("usage: skiff restore SNAPSHOT [options]", status: 2) }
    let options: RunOptions
    do { options = try RunOptions(args.dropFirst()) } catch { fail(error.description, status: 2) }
    let restoreOptions = ["--disk", "--net", "--vsock", "--control-socket", "--paused", "--track-dirty-pages", "--clone-index", "--exit-file", "--cgroup",
                          "--no-jail", "--jail-uid", "--jail-gid", "--no-seccomp", "--test-seccomp-violation"]
    guard options.given.allSatisfy(restoreOptions.contains) else {
        fail("skiff restore: the snapshot fixes the kernel, memory, CPUs and devices; only --disk, --net, --vsock, --control-socket, --paused and --track-dirty-pages may be given", status: 2)
    }
    let image: SnapshotImage
    do { image = try SnapshotImage.load(directory, hostKey: SnapshotSeal.hostKey(create: false)) } catch { fail(error.description, status: 2) }
    var config = image.configuration
    // Host resources given here replace the saved ones, all of a kind at
    // once. Those of a snapshot this host did not seal are never used: each
    // must be given (see SnapshotSeal).
    func replace<T>(_ given: [T], _ saved: inout [T], _ what: String, _ option: String) {
        if given.isEmpty {
            guard image.sealed || saved.isEmpty else {
                fail("skiff restore: \(directory) was not sealed by this host, so the \(what) it names (\(image.configuration.hostResourceNames.joined(separator: ", "))) are not opened: give \(option) for each of its \(saved.count)", status: 2)
            }
            return
        }
        guard given.count == saved.count else {
            fail("skiff restore: the snapshot's VM has \(saved.isEmpty ? "no" : "\(saved.count)") \(what), \(given.count) \(option) given", status: 2)
        }
        saved = given
    }
    replace(options.disks, &config.disks, "disks", "--disk")
    replace(options.nets, &config.nets, "network devices", "--net")
    var vsocks = config.vsock.map { [$0] } ?? []
    replace(options.vsock.map { [$0] } ?? [], &vsocks, "vsock devices", "--vsock")
    config.vsock = vsocks.first
    if let i = options.cloneIndex {
        do { try Clone.identity(&config, index: i) } catch { fail(error.description, status: 2) }
    }
    launch(config, snapshot: image, options: options)
}

let args = CommandLine.arguments.dropFirst()
/// `skiff pause SOCKET` (a VM's control socket: a path, or a socket file
/// here) or `skiff pause NAME` (skiffd's VM; names never hold a '/').
func isSocketPath(_ args: ArraySlice<String>) -> Bool {
    guard let first = args.dropFirst().first else { return false }
    var st = stat()
    return first.contains("/") || (lstat(first, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK)
}
switch args.first {
case "run":
    run(args.dropFirst())
case "restore":
    restore(args.dropFirst())
case "record":
    Recording.record(args.dropFirst())
case "replay":
    Recording.replay(args.dropFirst())
case "cp":
    Copy.main(args.dropFirst())
case "exec":
    Exec.main(args.dropFirst())
case "clone" where args.dropFirst().first.map(Manager.isDirectory) == false:
    Manager.handOver(args) // a VM of skiffd's, by name
case "clone":
    Clone.main(args.dropFirst())
case "status",
     "pause" where isSocketPath(args),
     "resume" where isSocketPath(args),
     "snapshot" where isSocketPath(args):
    ControlClient.main(args) // a VM's control socket, by path
case "ps", "create", "start", "stop", "kill", "pause", "resume", "rm", "logs", "inspect", "snapshot", "usage", "events", "attach",
     "appliance", "image", "backup", "backup-server", "restore-backup":
    Manager.handOver(args)

case "kernel":
    switch args.dropFirst().first {
    case "build", "path":
        do { print(try args.dropFirst().first == "build" ? DefaultGuest.kernelDirectory() : DefaultGuest.kernelPath()) }
        catch { fail("\(error)", status: 1) }
    default: fail("usage: skiff kernel build|path", status: 2)
    }
case "initramfs":
    guard args.dropFirst().first == "path" else { fail("usage: skiff initramfs path", status: 2) }
    do { print(try DefaultGuest.initramfsPath()) } catch { fail("\(error)", status: 1) }
case "-h", "--help", "help":
    print(usage + Manager.usage)
case "--version", "version":
    print("skiff \(Manager.version)")
case nil:
    fail("no command given\n" + usage, status: 2)
default:
    fail("unknown command \(args.first!) (see skiff --help)", status: 2)
}
