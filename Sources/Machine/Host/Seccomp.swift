import CSeccomp
import Glibc

/// seccomp-BPF filters per thread role (Sources/CSeccomp has the lists).
/// Off until `start`; from then on every new thread gets its role's filter
/// before it runs, and `lockMainThread` gives the calling thread its own.
public enum Seccomp {
    public enum Role: Int32, Sendable {
        case main = 0, vcpu, control, console, spawner, block, net, vsock, rng, balloon
        /// A deterministic machine's vCPU, which serves its disks and entropy at its exits.
        case vcpuDevices
    }

    nonisolated(unsafe) private(set) static var enabled = false
    /// A test hook (`--test-seccomp-violation ROLE`): the first thread of
    /// that role makes a forbidden call right after its filter is on.
    nonisolated(unsafe) public static var testViolation: Role?

    /// Installs the SIGSYS handler, sets no-new-privileges and starts the
    /// spawner. Call before starting any vCPU or device thread.
    public static func start() throws(SeccompError) {
        guard !enabled else { return }
        let r = skiff_seccomp_prepare()
        guard r == 0 else { throw SeccompError("seccomp: \(String(cString: strerror(-r)))") }
        do { ThreadSpawner.shared = try ThreadSpawner() } catch { throw SeccompError("seccomp: \(error)") }
        enabled = true
    }

    /// The main thread's own filter; `spawnProcesses` when it must still
    /// run host programs (undoing host networking of an unjailed VMM).
    public static func lockMainThread(spawnProcesses: Bool) throws(SeccompError) {
        guard enabled else { return }
        try install(.main, thread: "main", spawnProcesses: spawnProcesses)
    }

    /// The role of a thread by the name Skiff gives it, when seccomp is on.
    static func role(forThread name: String) -> Role? {
        guard enabled else { return nil }
        let u = name.utf8
        if u.starts(with: "vcpu".utf8) { return name.hasSuffix("-devices") ? .vcpuDevices : .vcpu }
        switch name {
        case "control": return .control
        case "console": return .console
        case "virtio-blk": return .block
        case "virtio-net": return .net
        case "virtio-vsock": return .vsock
        case "virtio-rng": return .rng
        case "virtio-balloon": return .balloon
        default: return .vcpu // unknown threads get the vCPU list, the narrowest that can run
        }
    }

    static func install(_ role: Role, thread: String, spawnProcesses: Bool = false) throws(SeccompError) {
        let r = skiff_seccomp_install(role.rawValue, thread, spawnProcesses ? 1 : 0)
        guard r == 0 else { throw SeccompError("seccomp: filter for thread \(thread): \(String(cString: strerror(-r)))") }
        if testViolation == role {
            testViolation = nil
            _ = skiff_seccomp_forbidden_call()
        }
    }

    /// A thread must not run without its filter: one line, exit 1.
    static func installOrDie(_ role: Role, thread: String) {
        do throws(SeccompError) { try install(role, thread: thread) } catch {
            var line = Array("skiff: \(error)\n".utf8)
            _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
            exit(1)
        }
    }
}

extension Seccomp.Role {
    /// A role by the name the command line uses.
    public init?(named text: String) {
        let names: [String: Seccomp.Role] = ["main": .main, "vcpu": .vcpu, "control": .control, "console": .console,
                                             "spawner": .spawner, "virtio-blk": .block, "virtio-net": .net,
                                             "virtio-vsock": .vsock, "virtio-rng": .rng, "virtio-balloon": .balloon, "vcpu-devices": .vcpuDevices]
        guard let role = names[text] else { return nil }
        self = role
    }
}

public struct SeccompError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}
