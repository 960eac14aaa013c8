import BlockTracking
import Foundation
import Glibc
import SkiffControl

/// `skiff backup create`: a VM's disks to the backup server. Each disk is
/// read in chunks (Chunk.maxBytes); a chunk of zeroes is not stored, a chunk the
/// server holds for this host already is not sent. What is read depends on
/// the disk's changed-block map (`DISK.cbt`, kept by the VMM):
///
/// - incremental: the map continues the last backup's (same map, the next
///   generation, closed cleanly): only the chunks it marks are read;
/// - compare: there is a last backup but the map cannot say what changed
///   since (an unclean stop, a disk written outside Skiff, a new map):
///   every chunk is read and hashed, only those that differ are sent;
/// - full: no earlier backup of this VM.
///
/// A stopped VM's disks are read as they are (their maps locked, so no VMM
/// starts on them meanwhile); a running VM's through its control socket
/// (`LiveSession`), paused only for the moment its maps are taken.
public enum DiskBackup {
    public struct Options: Sendable {
        public var vm: String
        public var disks: [String]
        public var controlSocket: String?
        /// The running VM's vsock socket: its guest agent freezes the guest's
        /// filesystems for the moment the point in time is taken.
        public var agentSocket: String?
        public var key: BackupKey?
        public var config: String?
        /// Where a running VM's copy-before-write files go (default: beside the first disk).
        public var workDirectory: String?
        /// Chunks in flight at once. With one request per new chunk (the
        /// server's digest filter), 8 kept both cores busy where 4 left them
        /// a quarter idle: full backup of bench/backup's image, medians of 3
        /// alternating runs, 3.56 s with 8 against 4.32 s with 4; 12 and 16
        /// were no faster. Each costs a chunk's buffer (1 MiB).
        public static let defaultJobs = 8
        public var jobs = defaultJobs
        public init(vm: String, disks: [String]) { self.vm = vm; self.disks = disks }
    }

    public struct Report: Codable, Sendable {
        public var id: String
        public var vm: String
        public var mode: String
        public var modes: [String]
        public var consistency: String
        public var bytesRead: Int64
        public var bytesSent: Int64
        public var chunks: Int
        public var chunksRead: Int
        public var newChunks: Int
        public var seconds: Double
        public var pausedMs: Double?
        public var notes: [String]
    }

    struct Plan {
        let reader: DiskReader
        let mapFile: ChangedBlockMapFile?
        let map: ChangedBlockMap?
        let base: Manifest.Disk?
        let incremental: Bool
        var mode: String { incremental ? "incremental" : base == nil ? "full" : "compare" }
    }

    public static func run(_ o: Options, server: ServerConnection) async throws -> Report {
        let t0 = Date()
        if let p = Names.problem(o.vm, what: "VM name") { throw BackupError.invalid(p) }
        guard (1...Manifest.maxDisks).contains(o.disks.count) else { throw BackupError.invalid("give 1 to \(Manifest.maxDisks) disks") }
        var notes: [String] = []
        // The last backup of this VM, if it was made with the same key (or none).
        let last = try await server.list(vm: o.vm).last
        var base: Manifest?
        if let last {
            let m = try await server.manifest(last.id)
            if m.keyFingerprint == o.key?.fingerprint { base = m } else {
                notes.append("the last backup (\(last.id)) was made with \(m.keyFingerprint.map { "key \($0)" } ?? "no key"): not built on")
            }
        }
        var opened: [(fd: Int32, size: UInt64)] = []
        defer { for d in opened { close(d.fd) } }
        for path in o.disks { opened.append(try DiskReader.open(path)) }

        // The point in time, and each disk's map.
        var live: LiveSession?
        var frozen = false
        var maps: [(file: ChangedBlockMapFile?, map: ChangedBlockMap?, problem: String?)] = []
        if let socket = o.controlSocket {
            let work = o.workDirectory ?? (o.disks[0] as NSString).deletingLastPathComponent
            // Frozen (application-consistent) while the agent's connection is open.
            var agent: GuestAgent?
            if let path = o.agentSocket {
                do {
                    let a = try GuestAgent(vsockSocket: path)
                    let answer = try a.request(UInt8(ascii: "f"), expecting: UInt8(ascii: "F"))
                    if answer.hasPrefix("frozen "), answer != "frozen 0" { agent = a; frozen = true } else {
                        notes.append("the guest agent froze no filesystem (\(answer)): crash-consistent")
                    }
                } catch {
                    notes.append("the guest agent did not freeze the filesystems (\(error)): crash-consistent")
                }
            }
            let session = try LiveSession(socket: socket, sizes: opened.map(\.size), workDirectory: work)
            if let agent { try? agent.send(UInt8(ascii: "t")) } // thawed when it sees this (or the close)
            live = session
            maps = session.disks.map { (nil, $0.changed, $0.problem) }
        } else {
            for (path, d) in zip(o.disks, opened) {
                do {
                    let f = try ChangedBlockMapFile(path: path + ".cbt")
                    let (m, problem) = f.load(disk: d.fd, diskBytes: d.size)
                    maps.append((f, m, problem))
                } catch {
                    // A map in use: a VMM runs on this disk.
                    throw BackupError.conflict("\(error): give --control-socket for a running VM")
                }
            }
        }
        var plans: [Plan] = []
        for (i, (path, d)) in zip(o.disks, opened).enumerated() {
            let name = "disk\(i)"
            let b = base?.disks.first { $0.name == name && $0.bytes == d.size }
            let m = maps[i].map
            let incremental = b != nil && m != nil && maps[i].problem == nil && m!.reliable
                && b!.changeMap == m!.idText && b!.generation == m!.generation
            if let b, !incremental {
                let why = maps[i].problem ?? (b.changeMap == nil ? "the last backup recorded no changed-block map"
                                               : "its changed-block map does not continue the last backup's")
                notes.append("\(name) (\(path)): \(why): reading the whole disk and comparing hashes")
            }
            let liveDisk = live.map { s in (copies: s.disks[i].copies, flags: s.disks[i].flags) }
            plans.append(Plan(reader: DiskReader(path: path, fd: d.fd, size: d.size, live: liveDisk), mapFile: maps[i].file,
                              map: m, base: b, incremental: incremental))
        }

        let session: String, filter: DigestFilter?
        do { (session, filter) = try await server.begin(vm: o.vm, base: base?.id) } catch { live?.end(completed: false); throw error }
        var manifest = Manifest(vm: o.vm, consistency: live == nil ? "offline" : frozen ? "application-consistent" : "crash-consistent", disks: [])
        manifest.keyFingerprint = o.key?.fingerprint
        manifest.config = o.config
        let stats = Stats()
        do {
            let known = Known(base?.digests ?? [])
            for (i, plan) in plans.enumerated() {
                let digests = try await backUp(plan, jobs: o.jobs, key: o.key, session: session, server: server, known: known, filter: filter, stats: stats)
                let m = plan.map
                manifest.disks.append(Manifest.Disk(name: "disk\(i)", bytes: plan.reader.size, chunks: digests,
                                                    changeMap: m?.idText, generation: m.map { $0.generation &+ 1 }))
            }
            manifest = try await server.commit(manifest, session: session)
        } catch {
            await server.abort(session: session)
            live?.end(completed: false)
            throw error
        }
        // The maps move on to the generation the backup recorded.
        if let live { live.end(completed: true) } else {
            for (plan, d) in zip(plans, opened) {
                guard let f = plan.mapFile, var m = plan.map else { continue }
                _ = m.advance()
                m.diskModified = ChangedBlockMapFile.modified(d.fd)
                do { try f.save(m, clean: true) } catch { notes.append("\(error): the next backup compares hashes") }
            }
        }
        let modes = plans.map(\.mode)
        let s = await stats.values
        return Report(id: manifest.id, vm: o.vm, mode: modes.contains("full") ? "full" : modes.contains("compare") ? "compare" : "incremental",
                      modes: modes, consistency: manifest.consistency, bytesRead: s.read, bytesSent: s.sent,
                      chunks: manifest.disks.reduce(0) { $0 + $1.chunks.count }, chunksRead: s.chunksRead, newChunks: s.new,
                      seconds: Date().timeIntervalSince(t0), pausedMs: live.map { Double($0.pausedMicroseconds) / 1000 }, notes: notes)
    }

    actor Stats {
        var read: Int64 = 0, sent: Int64 = 0, new = 0, chunksRead = 0
        func add(read r: Int, sent s: Int, new n: Bool, chunkRead: Bool) {
            read += Int64(r); sent += Int64(s); if n { new += 1 }; if chunkRead { chunksRead += 1 }
        }
        var values: (read: Int64, sent: Int64, new: Int, chunksRead: Int) { (read, sent, new, chunksRead) }
    }

    /// Digests the server holds for this backup already (the base's, and
    /// those sent or found so far), so each is sent once.
    actor Known {
        var set: Set<ChunkDigest>
        init(_ s: Set<ChunkDigest>) { set = s }
        /// True if the digest was known; it is known from now on either way.
        func claim(_ d: ChunkDigest) -> Bool { !set.insert(d).inserted }
        func forget(_ d: ChunkDigest) { set.remove(d) }
    }

    /// One disk's chunk list: chunks read, hashed, compressed and sent,
    /// `jobs` at a time.
    static func backUp(_ plan: Plan, jobs: Int, key: BackupKey?, session: String, server: ServerConnection,
                       known: Known, filter: DigestFilter?, stats: Stats) async throws -> [ChunkDigest?] {
        let count = plan.reader.chunks
        var result = [ChunkDigest?](repeating: nil, count: count)
        var todo: [Int] = []
        for c in 0..<count {
            if plan.incremental, let b = plan.base, let m = plan.map, !m.isDirty(c) { result[c] = b.chunks[c] } else { todo.append(c) }
        }
        let reader = plan.reader, baseChunks = plan.base?.chunks
        try await withThrowingTaskGroup(of: (Int, ChunkDigest?).self) { group in
            var next = todo.makeIterator()
            func add() -> Bool {
                guard let c = next.next() else { return false }
                group.addTask {
                    var buffer: [UInt8] = []
                    let (read, zero) = try reader.read(c, into: &buffer)
                    guard !zero else { await stats.add(read: read, sent: 0, new: false, chunkRead: read > 0); return (c, nil) }
                    let d = buffer.withUnsafeBytes { Chunk.digest($0, key: key) }
                    let seen = baseChunks?[c] == d ? true : await known.claim(d)
                    if seen {
                        await stats.add(read: read, sent: 0, new: false, chunkRead: true)
                        return (c, d)
                    }
                    // One of this host's other backups may hold it (another VM of one image).
                    if filter?.mayHold(d) ?? true, try await server.have([d], session: session)[0] {
                        await stats.add(read: read, sent: 0, new: false, chunkRead: true)
                        return (c, d)
                    }
                    let blob = try buffer.withUnsafeBytes { try ServerConnection.blob($0, digest: d, key: key) }
                    do { try await server.upload(d, blob, session: session) } catch { await known.forget(d); throw error }
                    await stats.add(read: read, sent: blob.readableBytes, new: true, chunkRead: true)
                    return (c, d)
                }
                return true
            }
            for _ in 0..<max(1, jobs) where add() {}
            while let (c, d) = try await group.next() {
                result[c] = d
                _ = add()
            }
        }
        return result
    }
}
