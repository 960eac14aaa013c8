import CKVM
import Devices
import Machine

extension VirtualMachine {
    /// Records this deterministic VM's run into `writer` (before `run`).
    public func record(into writer: EventLogWriter) throws(ConfigurationError) {
        guard let determinism else { throw ConfigurationError("recording needs a deterministic machine (--deterministic)") }
        determinism.mode = .record(writer)
    }

    /// Replays `events` (a recording's, `EventLog.read`) on this VM (before `run`).
    public func replay(_ events: [ReplayEvent]) throws(ConfigurationError) {
        guard let determinism else { throw ConfigurationError("a replay needs a deterministic machine") }
        determinism.mode = .replay(events)
    }

    public struct ReplayOutcome: Sendable {
        /// Every event matched, the end included.
        public let matched: Bool
        public let events: Int
        public let checkpoints: Int
        public let exits: UInt64
        /// The first difference, if the replay found one at its end.
        public let divergence: String?
    }

    /// After `run`: how far a replay (or recording) went.
    public var replayOutcome: ReplayOutcome? {
        determinism.map { ReplayOutcome(matched: $0.matched, events: $0.cursor, checkpoints: $0.checkpoints, exits: $0.exits, divergence: $0.divergence) }
    }
}

/// What a recording's log header holds: the machine (the configuration a
/// snapshot saves, and the initrd's path) and the identity of the kernel
/// and initrd it booted, which a replay checks before it starts.
public struct RecordingHeader: Sendable {
    public var configuration: VMConfiguration
    public var kernelBytes: UInt64, kernelCRC: UInt32
    public var initrdBytes: UInt64, initrdCRC: UInt32
    public var ticksPerExit: UInt64
    public var checkpointEvery: UInt64
    /// The recording host's CPUID (`hostCPUIDLeaves`). On PVM hosts the
    /// guest reads the host's CPUID in user and kernel mode alike, whatever
    /// the VMM's table says, so a replay on a host whose CPU differs would
    /// run another program. Empty in recordings made before it was kept.
    public var hostCPUID: [CPUIDValue]

    public struct CPUIDValue: Equatable, Sendable {
        public var leaf: UInt32, subleaf: UInt32, registers: [UInt32]
    }

    /// The leaves compared: vendor and limits, features, XSAVE sizes, the
    /// extended range, extended features (leaf 7 last). Leaf 1's EBX loses
    /// its APIC ID (bits 31-24): which core the recorder ran on.
    static let hostCPUIDLeaves: [(UInt32, UInt32)] = [(0, 0), (1, 0), (0xd, 0), (0xd, 1), (0x8000_0000, 0), (0x8000_0001, 0),
                                                       (0x8000_0007, 0), (0x8000_0008, 0), (7, 1), (7, 0)]

    public static func currentHostCPUID() -> [CPUIDValue] {
        hostCPUIDLeaves.map { leaf, sub in
            var out = [UInt32](repeating: 0, count: 4)
            out.withUnsafeMutableBufferPointer { ckvm_host_cpuid(leaf, sub, $0.baseAddress!) }
            if leaf == 1 { out[1] &= 0x00ff_ffff }
            return CPUIDValue(leaf: leaf, subleaf: sub, registers: out)
        }
    }

    /// The first leaf where this host differs from the recording's, said
    /// as a replay's divergence; nil if none (or none was recorded).
    public func hostCPUIDDifference() -> String? {
        let now = Self.currentHostCPUID()
        for r in hostCPUID {
            guard let n = now.first(where: { $0.leaf == r.leaf && $0.subleaf == r.subleaf }) else { continue }
            for (i, name) in ["EAX", "EBX", "ECX", "EDX"].enumerated() where n.registers[i] != r.registers[i] {
                return "before event 1: this host's CPUID leaf 0x\(String(r.leaf, radix: 16)).\(r.subleaf) \(name) is 0x\(String(n.registers[i], radix: 16)), "
                    + "the recording host's 0x\(String(r.registers[i], radix: 16)) (bits 0x\(String(n.registers[i] ^ r.registers[i], radix: 16)) differ); "
                    + "the guest reads the host's CPUID here, so the replay would not run the recorded program"
            }
        }
        return nil
    }

    public init(configuration: VMConfiguration, kernel: [UInt8], initrd: [UInt8]?) {
        self.configuration = configuration
        kernelBytes = UInt64(kernel.count)
        kernelCRC = Self.crc(kernel)
        initrdBytes = UInt64(initrd?.count ?? 0)
        initrdCRC = initrd.map(Self.crc) ?? 0
        ticksPerExit = Determinism.ticksPerExit
        checkpointEvery = Determinism.defaultCheckpointEvery
        hostCPUID = Self.currentHostCPUID()
    }

    public static func crc(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { ckvm_crc32c(0, $0.baseAddress, $0.count) } }

    public func encode() -> [UInt8] {
        var c = StateWriter()
        configuration.save(&c)
        var w = StateWriter()
        w.blob(c.bytes)
        w.string(configuration.initrdPath ?? "")
        w.u64(kernelBytes); w.u32(kernelCRC)
        w.u64(initrdBytes); w.u32(initrdCRC)
        w.u64(ticksPerExit); w.u64(checkpointEvery)
        // Last, so that the recordings made before it was kept still read.
        w.u32(UInt32(hostCPUID.count))
        for v in hostCPUID { w.u32(v.leaf); w.u32(v.subleaf); for x in v.registers { w.u32(x) } }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8], path: String) throws(ReplayError) -> RecordingHeader {
        do {
            var r = StateReader(bytes[...], what: "\(path) header")
            var c = StateReader(try r.blob()[...], what: "\(path) header")
            var config = try VMConfiguration.load(&c)
            let initrd = try r.string()
            config.initrdPath = initrd.isEmpty ? nil : initrd
            config.deterministic = true
            var h = RecordingHeader(configuration: config, kernel: [], initrd: nil)
            h.kernelBytes = try r.u64(); h.kernelCRC = try r.u32()
            h.initrdBytes = try r.u64(); h.initrdCRC = try r.u32()
            h.ticksPerExit = try r.u64(); h.checkpointEvery = try r.u64()
            h.hostCPUID = []
            if r.remaining > 0 {
                let n = try r.u32()
                guard n <= 64 else { throw ReplayError("\(path): its header lists \(n) CPUID leaves (at most 64)") }
                for _ in 0..<n {
                    let leaf = try r.u32(), sub = try r.u32()
                    h.hostCPUID.append(CPUIDValue(leaf: leaf, subleaf: sub, registers: [try r.u32(), try r.u32(), try r.u32(), try r.u32()]))
                }
            }
            try r.finish()
            guard h.ticksPerExit == Determinism.ticksPerExit, h.checkpointEvery == Determinism.defaultCheckpointEvery else {
                throw ReplayError("\(path): recorded with \(h.ticksPerExit) ticks per exit and a checkpoint every \(h.checkpointEvery) exits; this Skiff runs \(Determinism.ticksPerExit) and \(Determinism.defaultCheckpointEvery)")
            }
            return h
        } catch let e as ReplayError {
            throw e
        } catch {
            throw ReplayError("\(path): its header does not describe a machine: \(error)")
        }
    }
}
