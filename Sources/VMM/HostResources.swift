import BlockTracking
import Devices
import Glibc
import KVM
import Machine
import SkiffControl

/// Everything of the host a VM uses, opened by whoever has the privilege
/// (the launcher, before it jails the VMM) and handed to the VMM as file
/// descriptors and bytes: a jailed VMM has no host paths to open. What a
/// resource is, is in the configuration; this binds it to the host object.
public final class HostResources: @unchecked Sendable {
    public let kvm: Int32
    /// The kernel and initrd of a booting VM (a restored one has its RAM).
    public let kernel: KernelImage?
    public let initrd: (path: String, bytes: [UInt8])?
    /// One fd per configured disk, TAP, and the listening sockets.
    public let disks: [Int32]
    /// Each disk's changed-block map, if it is tracked.
    public let changeMaps: [ChangedBlockMapFile?]
    /// Each disk's live-restore filler, while it is still arriving: its
    /// flags file and a socket connected to the filler.
    public let fills: [(flags: Int32, socket: Int32)?]
    public let taps: [(fd: Int32, name: String)]
    public let vsockListener: Int32?
    public let controlListener: Int32?
    /// Who may use the control socket besides root: the launcher's user.
    public let controlOwner = getuid()
    /// Socket files bound here (with their device and inode), removed when
    /// the VM is gone: only if still the ones bound, not one another
    /// process has put there since.
    public let socketPaths: [(path: String, file: (UInt64, UInt64)?)]

    /// Opens what `config` names. A failure closes what was opened and
    /// throws the user-facing error.
    public init(_ config: VMConfiguration, booting: Bool, controlSocket: String?) throws {
        var opened: [Int32] = []
        var bound: [String] = []
        var done = false
        defer {
            if !done {
                opened.forEach { _ = close($0) }
                bound.forEach { _ = unlink($0) }
            }
        }
        let memoryBytes = config.memoryMiB << 20
        if booting {
            let bytes = try HostFiles.read(config.kernelPath, what: "kernel", limit: memoryBytes)
            kernel = try KernelImage.parse(bytes, path: config.kernelPath)
            initrd = try config.initrdPath.map { (path: $0, bytes: try HostFiles.read($0, what: "initrd", limit: memoryBytes)) }
        } else {
            kernel = nil
            initrd = nil
        }
        kvm = try KVMSystem.open(config.kvmPath)
        opened.append(kvm)
        var disks: [Int32] = []
        var maps: [ChangedBlockMapFile?] = []
        var fills: [(flags: Int32, socket: Int32)?] = []
        for d in config.disks {
            let fd = try Block.open(d)
            opened.append(fd)
            disks.append(fd)
            maps.append(try Block.openChangeMap(d))
            let fill = try Self.openFill(d)
            if let fill { opened += [fill.flags, fill.socket] }
            fills.append(fill)
        }
        var taps: [(fd: Int32, name: String)] = []
        for n in config.nets {
            let tap = try Net.openTap(n)
            opened.append(tap.fd)
            taps.append(tap)
        }
        var vsockListener: Int32?
        if let v = config.vsock {
            try Vsock.check(v)
            let fd = try Vsock.listen(v.socketPath)
            opened.append(fd)
            bound.append(v.socketPath)
            vsockListener = fd
        }
        var controlListener: Int32?
        if let path = controlSocket {
            let fd = try ControlServer.bindListener(path: path)
            opened.append(fd)
            bound.append(path)
            controlListener = fd
        }
        self.disks = disks
        self.changeMaps = maps
        self.fills = fills
        self.taps = taps
        self.vsockListener = vsockListener
        self.controlListener = controlListener
        socketPaths = bound.map { ($0, Self.identity($0)) }
        done = true
    }

    /// The descriptors a jailed VMM keeps.
    public var descriptors: [Int32] {
        [kvm] + disks + changeMaps.compactMap { $0?.fd } + fills.flatMap { $0.map { [$0.flags, $0.socket] } ?? [] } + taps.map(\.fd)
            + [vsockListener, controlListener].compactMap { $0 }
    }

    /// A disk given `fill=SOCKET`: its flags file and the filler, connected.
    /// No flags file means the restore has finished: a plain disk.
    static func openFill(_ d: Block.Options) throws -> (flags: Int32, socket: Int32)? {
        guard let socket = d.fillSocket else { return nil }
        let flags = open(d.fillFlagsPath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if flags < 0 && errno == ENOENT { return nil }
        guard flags >= 0 else { throw BlockError("disk \(d.path): its live restore's flags \(d.fillFlagsPath): \(String(cString: strerror(errno)))") }
        let fd = UnixSocket.connect(socket, timeoutMs: 5000)
        guard fd >= 0 else {
            let e = String(cString: strerror(errno))
            close(flags)
            throw BlockError("disk \(d.path): its live restore's filler \(socket): \(e) (is `skiff backup restore --live` running?)")
        }
        return (flags, fd)
    }

    /// Closes this process's copies (a launcher, once the VMM has them).
    public func closeDescriptors() { descriptors.forEach { _ = close($0) } }

    /// Removes the socket files bound for this VM (once it has stopped).
    public func removeSockets() {
        for (path, file) in socketPaths where file != nil && Self.identity(path).map({ $0 == file! }) == true { unlink(path) }
    }

    private static func identity(_ path: String) -> (UInt64, UInt64)? {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }
}
