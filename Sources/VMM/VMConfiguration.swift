import Devices
import Machine

/// Everything `skiff run` needs to build one VM. Checked by `validate`
/// before any resource is taken, so a bad value changes nothing.
public struct VMConfiguration: Sendable {
    public var kernelPath: String
    public var initrdPath: String?
    public var commandLine: String
    public var cpus: Int = 1
    public var memoryMiB: UInt64 = 128
    /// nil: chosen from the host (`CPUTemplate.automatic`).
    public var cpuTemplate: CPUTemplate?
    public var kvmPath = "/dev/kvm"
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    public var disks: [Block.Options] = []
    /// A virtio-rng entropy device.
    public var rng = false
    /// virtio-net devices, each on a host TAP interface.
    public var nets: [Net.Options] = []
    /// A virtio-balloon device.
    public var balloon: Balloon.Options?
    /// A virtio-vsock device with its host side on Unix sockets.
    public var vsock: Vsock.Options?
    /// KVM's dirty log and Skiff's own record of device writes, so that
    /// diff snapshots can save only what changed.
    public var trackDirtyPages = false
    /// A deterministic machine (one vCPU, Skiff's PIC and PIT on the
    /// guest's exits: `Determinism`), as recording and replay need.
    public var deterministic = false
    /// The key this VM's snapshots are sealed with (`SnapshotSeal`), given
    /// by the launcher; nil: they are not sealed. Never saved.
    public var sealKey: [UInt8]?

    public var hasVirtioDevices: Bool { !disks.isEmpty || !nets.isEmpty || rng || vsock != nil || balloon != nil }

    public static let maxCpus = 254 // APIC IDs 0..253, the IOAPIC takes the next
    public static let minimumMemoryMiB: UInt64 = 2
    public static let defaultCommandLine = "console=ttyS0 reboot=k panic=-1 io_delay=none"

    public init(kernelPath: String, initrdPath: String? = nil, commandLine: String = VMConfiguration.defaultCommandLine) {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.commandLine = commandLine
    }

    public func validate(hostMemoryMiB: UInt64) throws(ConfigurationError) {
        guard cpus >= 1, cpus <= Self.maxCpus else {
            throw ConfigurationError("--cpus \(cpus): must be between 1 and \(Self.maxCpus)")
        }
        guard memoryMiB >= Self.minimumMemoryMiB else {
            throw ConfigurationError("--memory \(memoryMiB): must be at least \(Self.minimumMemoryMiB) MiB")
        }
        guard disks.count + nets.count + (rng ? 1 : 0) + (vsock == nil ? 0 : 1) + (balloon == nil ? 0 : 1) <= X86Layout.virtioIRQs.count else {
            throw ConfigurationError("too many virtio devices: at most \(X86Layout.virtioIRQs.count)")
        }
        if let b = balloon, UInt64(b.targetMiB) >= memoryMiB {
            throw ConfigurationError("--balloon size=\(b.targetMiB): must be below the guest's memory (\(memoryMiB) MiB)")
        }
        if deterministic {
            guard cpus == 1 else { throw ConfigurationError("--deterministic: one vCPU only (--cpus 1)") }
            guard nets.isEmpty, vsock == nil, balloon == nil else {
                throw ConfigurationError("--deterministic: disks and --rng only (no --net, --vsock or --balloon yet: their host sides are not on the recorded path)")
            }
            if let d = disks.first(where: { $0.fillSocket != nil }) {
                throw ConfigurationError("--deterministic: disk \(d.path) is still being restored (fill=): its arrival is not on the recorded path")
            }
            guard !trackDirtyPages else { throw ConfigurationError("--deterministic: no --track-dirty-pages (no snapshots of a deterministic machine yet)") }
        }
        guard memoryMiB <= hostMemoryMiB else {
            throw ConfigurationError("--memory \(memoryMiB): more than this host has (\(hostMemoryMiB) MiB)")
        }
    }
}

/// A configuration value the user gave is wrong: exit status 2.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
