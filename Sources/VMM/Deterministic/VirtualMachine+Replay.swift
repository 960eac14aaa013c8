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

    public init(configuration: VMConfiguration, kernel: [UInt8], initrd: [UInt8]?) {
        self.configuration = configuration
        kernelBytes = UInt64(kernel.count)
        kernelCRC = Self.crc(kernel)
        initrdBytes = UInt64(initrd?.count ?? 0)
        initrdCRC = initrd.map(Self.crc) ?? 0
        ticksPerExit = Determinism.ticksPerExit
        checkpointEvery = Determinism.defaultCheckpointEvery
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
