import Foundation
import Glibc

/// The backup server's state: which host owns which backups, the backups
/// being written, and the chunk store they share. A host (named by its
/// token) sees, reads and deletes only its own backups, and reads only
/// chunks its own backups or sessions hold: the same chunk stored for two
/// hosts is one file, but one host cannot learn from the server that
/// another holds it (a chunk a host's backups lack is uploaded again and
/// checked, then stored once). One actor: every change of state and every
/// decision about a chunk's life (commit, collection) is serialised here;
/// the reading, hashing and writing of chunks is done outside it.
public actor Repository {
    public let store: ChunkStore
    let hostsDirectory: String
    /// host -> backup id -> manifest.
    var manifests: [String: [String: Manifest]] = [:]
    /// host -> digest -> how many of its backups hold it.
    var references: [String: [ChunkDigest: Int]] = [:]
    var sessions: [String: Session] = [:]
    var collecting = false
    /// What loading found wrong (damaged manifests are skipped, not fatal).
    public private(set) var loadProblems: [String] = []

    struct Session {
        let host: String
        let vm: String
        let started: Int
        /// Its start in milliseconds, for its ID.
        let startedMs: Int
        /// Its last request: one idle for `sessionIdleSeconds` is dropped.
        var lastUsed: Int
        /// Chunks of the backup it builds on (touched when it began) and those uploaded since.
        var held: Set<ChunkDigest>
    }

    public init(root: String) throws {
        store = try ChunkStore(root: root)
        hostsDirectory = root + "/hosts"
        store.removeTemporaries(olderThan: 0)
        var problems: [String] = []
        for host in (try? FileManager.default.contentsOfDirectory(atPath: hostsDirectory)) ?? [] where Names.problem(host) == nil {
            for file in (try? FileManager.default.contentsOfDirectory(atPath: hostsDirectory + "/" + host)) ?? [] {
                let path = hostsDirectory + "/" + host + "/" + file
                if file.hasSuffix(".tmp") { unlink(path); continue }
                guard file.hasSuffix(".json") else { continue }
                do {
                    let m = try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
                    try m.validate()
                    guard m.id + ".json" == file, m.host == host else { throw BackupError.invalid("its id or host does not match its place") }
                    manifests[host, default: [:]][m.id] = m
                    for d in m.digests { references[host, default: [:]][d, default: 0] += 1 }
                } catch {
                    problems.append("\(path): skipped: \(error)")
                }
            }
        }
        loadProblems = problems
    }

    static func now() -> Int { time(nil) }
    static func nowMs() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }

    // MARK: a backup

    /// Begins a backup of `vm` for `host`, on `base` (one of its backups,
    /// whose chunks the client will not send again): they are touched now,
    /// so no collection can remove them while this backup runs.
    public func begin(host: String, vm: String, base: String?) throws -> (session: String, base: Manifest?, filter: DigestFilter) {
        if let p = Names.problem(vm, what: "VM name") { throw BackupError.invalid(p) }
        dropIdleSessions()
        guard sessions.values.filter({ $0.host == host }).count < 64 else { throw BackupError.conflict("\(host) has 64 backups open: finish or abort some") }
        var held: Set<ChunkDigest> = []
        var b: Manifest?
        if let base {
            guard let m = manifests[host]?[base] else { throw BackupError.notFound("no backup \(base) of this host to build on") }
            for d in m.digests where store.touch(d) { held.insert(d) }
            b = m
        }
        let id = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        sessions[id] = Session(host: host, vm: vm, started: Self.now(), startedMs: Self.nowMs(), lastUsed: Self.now(), held: held)
        let owned = references[host] ?? [:]
        return (id, b, DigestFilter(owned.keys, count: owned.count))
    }

    /// A backup whose client has said nothing for an hour was killed or
    /// lost: its session goes, so that it no longer holds collections back
    /// (their cutoff is the oldest open session's start). A client that
    /// comes back is told to begin again; nothing it committed is lost.
    static let sessionIdleSeconds = 3600

    func dropIdleSessions() {
        let limit = Self.now() - Self.sessionIdleSeconds
        sessions = sessions.filter { $0.value.lastUsed >= limit }
    }

    func session(_ id: String, host: String) throws -> Session {
        guard var s = sessions[id], s.host == host else { throw BackupError.notFound("no open backup \(id.prefix(40)) of this host (it was finished, aborted, idle for an hour, or the server restarted: begin again)") }
        s.lastUsed = Self.now()
        sessions[id] = s
        return s
    }

    /// A chunk the client sent (staged): put in place (`ChunkStore.place`),
    /// held by the session. False if a copy came meanwhile and this one was
    /// not put in its place (the caller asks again how the chunk stands).
    public func received(_ d: ChunkDigest, staged: String, replacing: Bool, session id: String, host: String) throws -> Bool {
        var s: Session
        do { s = try session(id, host: host) } catch { unlink(staged); throw error }
        guard try store.place(d, staged: staged, replacing: replacing) else { return false }
        s.held.insert(d)
        sessions[id] = s
        return true
    }

    /// A chunk the client sent that is stored already, checked (for this
    /// host or another): touched and held, no second copy written. False
    /// if it is not stored (the caller stages and sends it to `received`).
    public func adopt(_ d: ChunkDigest, session id: String, host: String) throws -> Bool {
        var s = try session(id, host: host)
        guard store.touch(d) else { return false }
        s.held.insert(d)
        sessions[id] = s
        return true
    }

    /// Whether the session holds the chunk already (the client need not send it).
    public func holds(_ d: ChunkDigest, session id: String, host: String) throws -> Bool {
        var s = try session(id, host: host)
        if s.held.contains(d) { return store.touch(d) }
        // One of the host's own backups has it: held from now on.
        if references[host]?[d] != nil, store.touch(d) { s.held.insert(d); sessions[id] = s; return true }
        return false
    }

    /// Writes the backup's manifest once every chunk it names is stored and
    /// on disk (syncfs first); returns it with its id and time.
    public func commit(_ manifest: Manifest, session id: String, host: String) throws -> Manifest {
        let s = try session(id, host: host)
        var m = manifest
        try m.validate()
        guard m.vm == s.vm else { throw BackupError.invalid("this backup was begun for \(s.vm), not \(m.vm)") }
        for d in m.digests {
            guard s.held.contains(d) || references[host]?[d] != nil else {
                throw BackupError.invalid("the manifest names chunk \(d.hex), which this backup did not send")
            }
            // Touched here, in the actor: a collection decides in the actor too.
            guard store.touch(d) else { throw BackupError.conflict("chunk \(d.hex) is no longer stored (removed by a prune and collection meanwhile): run the backup again") }
        }
        try store.sync()
        m.host = host
        m.createdAt = Int64(s.started)
        m.id = Self.backupID(ms: s.startedMs) { id in manifests.values.contains { $0[id] != nil } }
        let dir = hostsDirectory + "/" + host
        try ChunkStore.makeDirectory(dir)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        try Self.writeDurably(try e.encode(m), to: dir + "/" + m.id + ".json")
        manifests[host, default: [:]][m.id] = m
        for d in m.digests { references[host, default: [:]][d, default: 0] += 1 }
        sessions[id] = nil
        return m
    }

    public func abort(session id: String, host: String) throws {
        _ = try session(id, host: host)
        sessions[id] = nil
    }

    /// `20261203T184500.123Z`, with `-2`, `-3`... in the rare case that some
    /// backup on the server has that millisecond: unique on the whole server
    /// (a per-host second gave two hosts one ID), in the order backups began,
    /// and what it tells a host of another's backups is only that one began
    /// in the same millisecond.
    static func backupID(ms: Int, taken: (String) -> Bool) -> String {
        var tm = Glibc.tm()
        var tt = time_t(ms / 1000)
        gmtime_r(&tt, &tm)
        let base = String(format: "%04d%02d%02dT%02d%02d%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms % 1000)
        var id = base, n = 1
        while taken(id) { n += 1; id = "\(base)-\(n)" }
        return id
    }

    /// tmp, fsync, rename, fsync of the directory.
    static func writeDurably(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BackupError.failed("\(tmp): \(String(cString: strerror(errno)))") }
        let ok = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) == $0.count } && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, path) == 0 else { unlink(tmp); throw BackupError.failed("\(path): \(String(cString: strerror(errno)))") }
        let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    // MARK: reading

    public func list(host: String, vm: String?) -> [BackupSummary] {
        (manifests[host] ?? [:]).values.filter { vm == nil || $0.vm == vm }
            .sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }.map(BackupSummary.init)
    }

    public func manifest(host: String, id: String) throws -> Manifest {
        guard let m = manifests[host]?[id] else { throw BackupError.notFound("no backup \(id.prefix(80)) of this host (skiff backup ls)") }
        return m
    }

    /// Whether `host` may read the chunk: one of its backups or open sessions holds it.
    public func mayRead(_ d: ChunkDigest, host: String) -> Bool {
        references[host]?[d] != nil || sessions.values.contains { $0.host == host && $0.held.contains(d) }
    }

    // MARK: removing

    public func delete(host: String, id: String) throws {
        guard let m = manifests[host]?[id] else { throw BackupError.notFound("no backup \(id.prefix(80)) of this host (skiff backup ls)") }
        guard unlink(hostsDirectory + "/" + host + "/" + id + ".json") == 0 || errno == ENOENT else {
            throw BackupError.failed("removing backup \(id): \(String(cString: strerror(errno)))")
        }
        manifests[host]?[id] = nil
        for d in m.digests {
            let n = (references[host]?[d] ?? 1) - 1
            references[host]?[d] = n > 0 ? n : nil
        }
    }

    /// Removes the host's backups (of `vm`, or of each of its VMs) that the
    /// policy does not keep. Their chunks stay until a collection.
    public func prune(host: String, vm: String?, keep: Retention, dryRun: Bool) throws -> (kept: [String], removed: [String]) {
        try keep.validate()
        let all = (manifests[host] ?? [:]).values.filter { vm == nil || $0.vm == vm }
        var kept: [String] = [], removed: [String] = []
        for group in Dictionary(grouping: all, by: \.vm).values {
            let keepIDs = keep.keep(group.map { ($0.id, $0.createdAt) })
            for m in group.sorted(by: { $0.id < $1.id }) {
                if keepIDs.contains(m.id) { kept.append(m.id) } else { removed.append(m.id) }
            }
        }
        if !dryRun { for id in removed { try delete(host: host, id: id) } }
        return (kept.sorted(), removed.sorted())
    }

    // MARK: collection

    /// A collection's first step: every chunk any backup of any host holds
    /// (to be touched), and the cutoff: chunks not touched since are removed.
    /// Backups open now began after the cutoff, so what they hold is newer.
    public func collectionBegin() throws -> (cutoff: Int, needed: Set<ChunkDigest>) {
        guard !collecting else { throw BackupError.conflict("a garbage collection is running already") }
        collecting = true
        dropIdleSessions()
        let oldest = sessions.values.map(\.started).min() ?? Int.max
        let cutoff = min(Self.now(), oldest) - 2
        var needed: Set<ChunkDigest> = []
        for host in references.values { needed.formUnion(host.keys) }
        return (cutoff, needed)
    }

    /// Removes those of `candidates` still untouched since `cutoff` (each
    /// looked at again here: a commit touches in this actor too). Returns
    /// the bytes freed.
    public func collectionSweep(_ candidates: [ChunkDigest], cutoff: Int) -> Int64 {
        var freed: Int64 = 0
        for d in candidates {
            var st = stat()
            guard lstat(store.path(d), &st) == 0, st.st_mtim.tv_sec < cutoff else { continue }
            if unlink(store.path(d)) == 0 { freed += Int64(st.st_blocks) * 512 }
        }
        return freed
    }

    public func collectionEnd() { collecting = false }

    // MARK: verification

    /// The host's backups' chunks, each with the backups that hold it.
    public func chunkOwners(host: String) -> [ChunkDigest: [String]] {
        var owners: [ChunkDigest: [String]] = [:]
        for m in (manifests[host] ?? [:]).values { for d in m.digests { owners[d, default: []].append(m.id) } }
        return owners
    }
}
