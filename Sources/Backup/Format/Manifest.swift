import Foundation

/// One backup of one VM: its disks as lists of chunk digests (nil for a
/// chunk of zeroes, which is not stored), and what the next incremental
/// backup needs to know (each disk's changed-block map and generation).
/// The server writes it once every chunk it names is stored; a client
/// may send anything, so `validate` checks every field.
public struct Manifest: Codable, Sendable, Equatable {
    public static let version = 1

    public var version: Int = Self.version
    /// Given by the server when the backup is committed.
    public var id: String = ""
    public var host: String = ""
    public var vm: String
    /// Seconds since the epoch, the backup's point in time (server-set).
    public var createdAt: Int64 = 0
    /// The key's fingerprint when the chunks are encrypted.
    public var keyFingerprint: String?
    /// The VM's configuration as the client describes it (opaque here).
    public var config: String?
    /// How the point in time was taken: "offline" (a stopped VM's disks),
    /// "crash-consistent" (the VM paused for it).
    public var consistency: String
    public var disks: [Disk]

    public struct Disk: Codable, Sendable, Equatable {
        public var name: String
        public var bytes: UInt64
        public var chunkBytes: Int = Chunk.maxBytes
        public var chunks: [ChunkDigest?]
        /// The changed-block map this backup leaves the disk at: the next
        /// backup is incremental if the disk's map still has this id and
        /// generation (and is reliable).
        public var changeMap: String?
        public var generation: UInt64?

        public init(name: String, bytes: UInt64, chunks: [ChunkDigest?], changeMap: String? = nil, generation: UInt64? = nil) {
            self.name = name; self.bytes = bytes; self.chunks = chunks; self.changeMap = changeMap; self.generation = generation
        }
    }

    public init(vm: String, consistency: String, disks: [Disk]) {
        self.vm = vm; self.consistency = consistency; self.disks = disks
    }

    /// Every digest the backup needs (each once).
    public var digests: Set<ChunkDigest> { Set(disks.flatMap { $0.chunks.compactMap { $0 } }) }

    /// Bounds on what a client may describe.
    public static let maxDisks = 16
    /// 1 TiB: a manifest of 1 MiB chunks then lists a million digests (about 70 MB of JSON).
    public static let maxDiskBytes: UInt64 = 1 << 40
    public static let maxJSONBytes = 96 << 20

    public func validate() throws {
        guard version == Self.version else { throw BackupError.invalid("manifest version \(version): this server reads \(Self.version)") }
        if let p = Names.problem(vm, what: "VM name") { throw BackupError.invalid(p) }
        guard ["offline", "crash-consistent", "application-consistent"].contains(consistency) else {
            throw BackupError.invalid("consistency \(consistency.prefix(40).debugDescription): offline, crash-consistent or application-consistent")
        }
        guard (1...Self.maxDisks).contains(disks.count) else { throw BackupError.invalid("\(disks.count) disks: between 1 and \(Self.maxDisks)") }
        if let f = keyFingerprint, !(f.utf8.count == 16 && f.utf8.allSatisfy({ ChunkDigest.nibble($0) != nil })) {
            throw BackupError.invalid("keyFingerprint: 16 hex digits")
        }
        guard (config?.utf8.count ?? 0) <= 256 << 10 else { throw BackupError.invalid("config: at most 256 KiB") }
        for d in disks {
            if let p = Names.problem(d.name, what: "disk name") { throw BackupError.invalid(p) }
            guard d.chunkBytes == Chunk.maxBytes else { throw BackupError.invalid("disk \(d.name): chunkBytes \(d.chunkBytes), this server stores \(Chunk.maxBytes)") }
            guard d.bytes > 0, d.bytes <= Self.maxDiskBytes, d.bytes % 512 == 0 else {
                throw BackupError.invalid("disk \(d.name): \(d.bytes) bytes: a multiple of 512 up to 1 TiB")
            }
            let expected = Int((d.bytes + UInt64(d.chunkBytes) - 1) / UInt64(d.chunkBytes))
            guard d.chunks.count == expected else { throw BackupError.invalid("disk \(d.name): \(d.chunks.count) chunks listed, its size needs \(expected)") }
            if let m = d.changeMap, !(m.utf8.count == 32 && m.utf8.allSatisfy({ ChunkDigest.nibble($0) != nil })) {
                throw BackupError.invalid("disk \(d.name): changeMap: 32 hex digits")
            }
        }
        guard Set(disks.map(\.name)).count == disks.count else { throw BackupError.invalid("two disks have one name") }
    }
}

/// Names of hosts, VMs, disks and backups: they become file names on the
/// server, so a short safe alphabet.
public enum Names {
    public static func problem(_ name: String, what: String = "name") -> String? {
        let u = name.utf8
        guard !u.isEmpty, u.count <= 64 else { return "\(what) \(name.prefix(80).debugDescription): 1 to 64 characters" }
        guard u.first != UInt8(ascii: "."), u.first != UInt8(ascii: "-"),
              u.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d })
        else { return "\(what) \(name.prefix(80).debugDescription): letters, digits, '.', '_' and '-', not starting with '.' or '-'" }
        return nil
    }
}

/// A backup in a listing.
public struct BackupSummary: Codable, Sendable, Equatable {
    public var id: String
    public var vm: String
    public var createdAt: Int64
    public var disks: Int
    public var bytes: UInt64
    public var chunks: Int
    public var encrypted: Bool
    public var consistency: String

    public init(_ m: Manifest) {
        id = m.id; vm = m.vm; createdAt = m.createdAt; disks = m.disks.count
        bytes = m.disks.reduce(0) { $0 + $1.bytes }; chunks = m.digests.count
        encrypted = m.keyFingerprint != nil; consistency = m.consistency
    }
}
