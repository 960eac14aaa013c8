import CKVM
import Glibc
import KVM
import Machine

/// A snapshot on disk, read and checked: its state file's sections, the
/// VM configuration it was taken with, and its memory files (a diff
/// snapshot's parent chain first). Nothing is built from it until all of
/// this has been read and found consistent.
///
/// A snapshot directory holds `state` (StateFile) and `memory` (MemoryFile).
public struct SnapshotImage: Sendable {
    public static let stateName = "state", memoryName = "memory"
    /// Longest chain of diff snapshots followed.
    static let maxDepth = 64

    public let directory: String
    public let id: [UInt8]
    /// Whether this host sealed it (`SnapshotSeal`): only then are the
    /// host resources its state names trusted.
    public let sealed: Bool
    public var configuration: VMConfiguration
    let sections: [String: StateReader]
    /// The memory files under RAM, base first.
    public let layers: [MemoryLayer]

    /// `hostKey` is this host's snapshot key (nil: no snapshot is trusted).
    public static func load(_ directory: String, hostKey: [UInt8]?, depth: Int = 0) throws(SnapshotError) -> SnapshotImage {
        guard depth < maxDepth else { throw SnapshotError("\(directory): chain of diff snapshots longer than \(maxDepth)") }
        let statePath = directory + "/" + stateName
        var st = stat()
        guard stat(directory, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw SnapshotError("\(directory): \(errno == ENOENT ? "no such directory" : "not a snapshot directory")")
        }
        guard access(statePath, F_OK) == 0 else { throw SnapshotError("\(directory): not a snapshot (no state file)") }
        let stateBytes = try StateFile.readBytes(statePath)
        let sections = try StateFile.decode(stateBytes, path: statePath)
        var info = try section(sections, "snapshot", statePath)
        let id = try info.bytes(16)
        let parent = try info.string()
        let parentID = try info.bytes(16)
        try info.finish()
        var c = try section(sections, "config", statePath)
        let configuration = try VMConfiguration.load(&c)
        let sealed = hostKey.map { key in
            (try? StateFile.readBytes(directory + "/" + SnapshotSeal.fileName)).map {
                SnapshotSeal.verify($0, state: stateBytes, config: configuration, hostKey: key)
            } ?? false
        } ?? false
        let size = configuration.memoryMiB << 20
        let ranges = X86Layout.ramRanges(size: size)

        var layers: [MemoryLayer] = []
        var dirty: [PageBitmap]?
        if !parent.isEmpty {
            // The base is a host file the state names: followed only from
            // a sealed snapshot to a sealed base.
            guard sealed else {
                throw SnapshotError("\(directory): a diff snapshot this host did not seal: its base \(parent) is not opened (restore it where it was made)")
            }
            let base = try load(parent, hostKey: hostKey, depth: depth + 1)
            guard base.sealed else {
                base.close()
                throw SnapshotError("\(directory): its base snapshot \(parent) was not sealed by this host")
            }
            guard base.id == parentID else {
                base.close()
                throw SnapshotError("\(directory): its base snapshot \(parent) has been replaced (identifiers differ)")
            }
            guard base.configuration.memoryMiB == configuration.memoryMiB else {
                base.close()
                throw SnapshotError("\(directory): its base snapshot \(parent) has \(base.configuration.memoryMiB) MiB of RAM, it has \(configuration.memoryMiB)")
            }
            layers = base.layers
            var d = try section(sections, "dirty", statePath)
            var maps: [PageBitmap] = []
            for (_, length) in ranges {
                let pages = Int(length / GuestMemory.pageSize)
                let n = try d.count(limit: (pages + 63) / 64)
                var words: [UInt64] = []
                words.reserveCapacity(n)
                for _ in 0..<n { words.append(try d.u64()) }
                guard let map = PageBitmap(pages: pages, words: words) else {
                    layers.forEach { Glibc.close($0.fd) }
                    throw SnapshotError("\(statePath): dirty page map does not fit the VM's memory")
                }
                maps.append(map)
            }
            try d.finish()
            dirty = maps
        }
        let memoryPath = directory + "/" + memoryName
        let fd: Int32
        do throws(SnapshotError) { fd = try MemoryFile.open(memoryPath, id: id, size: size, ranges: ranges) } catch {
            layers.forEach { Glibc.close($0.fd) }
            throw error
        }
        layers.append(MemoryLayer(fd: fd, pages: dirty))
        return SnapshotImage(directory: directory, id: id, sealed: sealed, configuration: configuration, sections: sections, layers: layers)
    }

    static func section(_ sections: [String: StateReader], _ name: String, _ path: String) throws(SnapshotError) -> StateReader {
        guard let s = sections[name] else { throw SnapshotError("\(path): no \(name) section") }
        return s
    }

    func section(_ name: String) throws(SnapshotError) -> StateReader {
        try Self.section(sections, name, directory + "/" + Self.stateName)
    }

    /// Closes the memory files (once RAM is mapped, the mappings keep them).
    public func close() { layers.forEach { Glibc.close($0.fd) } }

    /// The CPUID table vCPU `id` had, after checking this host's CPU has
    /// every feature it shows the guest: a guest that found AVX-512 at boot
    /// must not wake up on a CPU without it.
    func cpuid(vcpu id: UInt32, supported: [kvm_cpuid_entry2]) throws(SnapshotError) -> [kvm_cpuid_entry2] {
        var r = try section("vcpu.\(id)")
        let n = try r.count(limit: 256)
        var entries: [kvm_cpuid_entry2] = []
        for _ in 0..<n {
            let bytes = try r.blob(limit: 4096)
            guard bytes.count == MemoryLayout<kvm_cpuid_entry2>.size else {
                throw SnapshotError("snapshot's CPUID entries are \(bytes.count) bytes, this KVM's are \(MemoryLayout<kvm_cpuid_entry2>.size)")
            }
            entries.append(bytes.withUnsafeBytes { $0.loadUnaligned(as: kvm_cpuid_entry2.self) })
        }
        try CPUCompatibility.check(saved: entries, supported: supported)
        return entries
    }
}

/// Whether a saved guest CPU can run on this host.
enum CPUCompatibility {
    /// Feature leaves compared bit by bit, with the bits KVM changes at run
    /// time (OSXSAVE, the APIC enable, OSPKE) and those Skiff sets itself (the
    /// hypervisor bit, HTT) left out.
    struct Register: Sendable { let name: String; let value: @Sendable (kvm_cpuid_entry2) -> UInt32; let mask: UInt32 }
    static let featureLeaves: [(function: UInt32, index: UInt32, registers: [Register])] = [
        (1, 0, [Register(name: "ecx", value: { $0.ecx }, mask: ~(1 << 27 | 1 << 31)), Register(name: "edx", value: { $0.edx }, mask: ~(1 << 9 | 1 << 28))]),
        (7, 0, [Register(name: "ebx", value: { $0.ebx }, mask: ~0), Register(name: "ecx", value: { $0.ecx }, mask: ~(1 << 22)),
                Register(name: "edx", value: { $0.edx }, mask: ~0)]),
        (0xd, 1, [Register(name: "eax", value: { $0.eax }, mask: ~0)]),
        (0x8000_0001, 0, [Register(name: "ecx", value: { $0.ecx }, mask: ~0), Register(name: "edx", value: { $0.edx }, mask: ~0)]),
    ]

    static func check(saved: [kvm_cpuid_entry2], supported: [kvm_cpuid_entry2]) throws(SnapshotError) {
        for leaf in featureLeaves {
            guard let s = saved.first(where: { $0.function == leaf.function && $0.index == leaf.index }) else { continue }
            let host = supported.first { $0.function == leaf.function && $0.index == leaf.index }
            for register in leaf.registers {
                let missing = register.value(s) & register.mask & ~(host.map(register.value) ?? 0)
                if missing != 0 {
                    throw SnapshotError("the snapshot's guest uses CPU features this host lacks (CPUID 0x\(String(leaf.function, radix: 16)).\(leaf.index) \(register.name) bits 0x\(String(missing, radix: 16)))")
                }
            }
        }
    }
}
