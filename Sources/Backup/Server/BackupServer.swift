import Foundation
import Glibc
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// `skiff backup-server`: the chunk store over HTTP (TLS when given a
/// certificate), one bearer token per host. The API (all under /v1, JSON
/// unless a chunk):
///
///     POST   /sessions                 {vm, base?}        -> {session}
///     POST   /sessions/S/have          [digest...]        -> [bool...]
///     PUT    /sessions/S/chunks/D      chunk blob         -> 204
///     POST   /sessions/S/commit        manifest           -> manifest (id, time)
///     DELETE /sessions/S
///     GET    /backups[?vm=NAME]                           -> [summary]
///     GET    /backups/ID                                  -> manifest
///     DELETE /backups/ID
///     GET    /chunks/D                                    -> chunk blob
///     POST   /prune   {vm?, keepLast, keepDaily, keepWeekly, keepMonthly, dryRun}
///     POST   /verify                                      -> {checked, broken}
///     POST   /gc                                          -> {removed, freedBytes}
///
/// Errors are problem documents (`application/problem+json`).
public enum BackupServer {
    public struct Options: Sendable {
        public var directory = "/var/lib/skiff/backup"
        public var host = "127.0.0.1"
        public var port = 8420
        public var tokenFile = ""
        public var tlsCertificate: String?
        public var tlsKey: String?
        public init() {}
    }

    public static func run(_ o: Options) async throws {
        var logger = Logger(label: "skiff-backup-server")
        logger.logLevel = .info
        let tokens = try Tokens.load(o.tokenFile)
        try ChunkStore.makeDirectory(o.directory)
        let lock = open(o.directory + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0, flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            throw BackupError.conflict("\(o.directory): another backup server uses it")
        }
        let repo = try Repository(root: o.directory)
        for p in await repo.loadProblems { logger.warning("\(p)") }
        var tls: TLSConfiguration?
        switch (o.tlsCertificate, o.tlsKey) {
        case (nil, nil): guard ["127.0.0.1", "localhost", "::1"].contains(o.host) else {
            throw BackupError.invalid("--listen \(o.host): beyond this host the server needs TLS (--tls-cert FILE --tls-key FILE): tokens must not cross a network in the clear")
        }
        case (let cert?, let key?):
            let chain = try NIOSSLCertificate.fromPEMFile(cert)
            var c = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            c.minimumTLSVersion = .tlsv12
            tls = c
        default: throw BackupError.invalid("give both --tls-cert and --tls-key")
        }
        let router = Router()
        router.add(middleware: BackupProblemMiddleware())
        Routes(repo: repo, tokens: tokens).register(router)
        let http: HTTPServerBuilder = .http1()
        let log = logger
        let app = Application(router: router, server: try tls.map { try .tls(http, tlsConfiguration: $0) } ?? http,
                              configuration: .init(address: .hostname(o.host, port: o.port), serverName: "skiff-backup"),
                              onServerRunning: { c in log.info("listening on \(o.host):\(c.localAddress?.port ?? o.port), store \(o.directory)") },
                              logger: logger)
        try await app.runService(gracefulShutdownSignals: [.sigterm, .sigint])
        close(lock)
    }
}

/// The server's tokens file: `HOST TOKEN` per line (`#` comments).
public struct Tokens: Sendable {
    let byToken: [(token: [UInt8], host: String)]

    public static func load(_ path: String) throws -> Tokens {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw BackupError.invalid("--tokens \(path): cannot read it") }
        var out: [([UInt8], String)] = []
        for (n, line) in text.split(separator: "\n").enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            let w = t.split(separator: " ", omittingEmptySubsequences: true)
            guard w.count == 2, Names.problem(String(w[0])) == nil, w[1].utf8.count >= 16 else {
                throw BackupError.invalid("--tokens \(path) line \(n + 1): give `HOST TOKEN` (a host name, a token of 16 characters or more)")
            }
            guard !out.contains(where: { $0.0 == Array(w[1].utf8) }) else { throw BackupError.invalid("--tokens \(path) line \(n + 1): a token given twice") }
            out.append((Array(w[1].utf8), String(w[0])))
        }
        guard !out.isEmpty else { throw BackupError.invalid("--tokens \(path): no `HOST TOKEN` line") }
        return Tokens(byToken: out)
    }

    /// The host a request's `Authorization: Bearer` names (every token
    /// compared in full, in time that does not depend on where they differ).
    func host(_ header: String?) -> String? {
        guard let header, header.hasPrefix("Bearer ") else { return nil }
        let given = Array(header.utf8.dropFirst(7))
        var found: String?
        for (token, host) in byToken {
            var diff = UInt8(token.count == given.count ? 0 : 1)
            for i in 0..<token.count { diff |= token[i] ^ (i < given.count ? given[i] : 0) }
            if diff == 0 { found = host }
        }
        return found
    }
}

struct Routes: Sendable {
    let repo: Repository
    let tokens: Tokens
    static let maxJSON = 1 << 20

    func host(_ r: Request) throws -> String {
        guard let h = tokens.host(r.headers[.authorization]) else {
            throw HTTPError(.unauthorized, headers: [.wwwAuthenticate: "Bearer"],
                            message: r.headers[.authorization] == nil ? "send Authorization: Bearer <this host's token>" : "the bearer token is not one of this server's")
        }
        return h
    }

    func digest(_ context: BasicRequestContext, _ name: String = "digest") throws -> ChunkDigest {
        let s = try context.parameters.require(name)
        guard let d = ChunkDigest(hex: s) else { throw BackupError.invalid("\(s.prefix(80).debugDescription) is not a chunk digest (64 lowercase hex digits)") }
        return d
    }

    func decode<T: Decodable>(_ t: T.Type, _ r: Request, limit: Int = Self.maxJSON) async throws -> T {
        let body = try await r.body.collect(upTo: limit)
        do { return try JSONDecoder().decode(t, from: Data(buffer: body)) } catch let e as DecodingError {
            throw BackupError.invalid("the body is not what this request takes: \(e.shortDescription)")
        }
    }

    func json<T: Encodable>(_ v: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try e.encode(v))))
    }

    struct Begin: Codable { var vm: String; var base: String? }
    /// The session, and a filter of the digests the host's backups hold
    /// (a chunk it does not hold is uploaded without asking `have`).
    struct Began: Codable { var session: String; var filter: DigestFilter }
    struct Prune: Codable {
        var vm: String?
        var keepLast: Int?, keepDaily: Int?, keepWeekly: Int?, keepMonthly: Int?
        var dryRun: Bool?
    }
    struct Pruned: Codable { var kept: [String]; var removed: [String] }
    struct Broken: Codable { var chunk: String; var problem: String; var backups: [String] }
    struct Verified: Codable { var checked: Int; var broken: [Broken] }
    struct Collected: Codable { var kept: Int; var removed: Int; var freedBytes: Int64 }

    func register(_ router: Router<BasicRequestContext>) {
        router.post("/v1/sessions") { r, _ in
            let h = try host(r)
            let b = try await decode(Begin.self, r)
            let begun = try await repo.begin(host: h, vm: b.vm, base: b.base)
            return try json(Began(session: begun.session, filter: begun.filter), status: .created)
        }
        router.post("/v1/sessions/:session/have") { r, c in
            let h = try host(r)
            let s = try c.parameters.require("session")
            let list = try await decode([ChunkDigest].self, r)
            guard list.count <= 65536 else { throw BackupError.invalid("at most 65536 digests per request") }
            var out: [Bool] = []
            for d in list { out.append(try await repo.holds(d, session: s, host: h)) }
            return try json(out)
        }
        router.put("/v1/sessions/:session/chunks/:digest") { r, c in
            let h = try host(r)
            let s = try c.parameters.require("session")
            let d = try digest(c)
            let blob = try await r.body.collect(upTo: Chunk.maxBlobBytes)
            let store = repo.store
            // A chunk is shared by every host that has its contents, so a
            // copy one host's backup relies on must not be another's wrong
            // one; but a copy only its senders rely on is theirs to get
            // right (ChunkStore.Standing). Three tries: a collection or
            // another upload of it may come between the look and the act.
            var checked = false
            func stage() async throws -> String {
                try await ChunkStore.disk.runIfActive { [checked] in try blob.withUnsafeReadableBytes { b in try store.stage(d, b, checked: checked) } }
            }
            for _ in 0..<3 {
                switch store.standing(d) {
                case .checked:
                    // This host relies on the stored copy from now on, not on what it sent.
                    if try await repo.adopt(d, session: s, host: h) { return Response(status: .noContent) }
                case .unchecked:
                    if !checked { _ = try blob.withUnsafeReadableBytes { b in try Chunk.verify(b, digest: d) }; checked = true }
                    if try await repo.received(d, staged: try await stage(), replacing: true, session: s, host: h) { return Response(status: .noContent) }
                case .absent:
                    if !checked { _ = try blob.withUnsafeReadableBytes { b in try Chunk.checkHeader(b, digest: d) } }
                    if try await repo.received(d, staged: try await stage(), replacing: false, session: s, host: h) { return Response(status: .noContent) }
                }
            }
            throw BackupError.conflict("chunk \(d.hex) kept changing while it was stored: send it again")
        }
        router.post("/v1/sessions/:session/commit") { r, c in
            let h = try host(r)
            let s = try c.parameters.require("session")
            let m = try await decode(Manifest.self, r, limit: Manifest.maxJSONBytes)
            return try json(try await repo.commit(m, session: s, host: h), status: .created)
        }
        router.delete("/v1/sessions/:session") { r, c in
            try await repo.abort(session: try c.parameters.require("session"), host: try host(r))
            return Response(status: .noContent)
        }
        router.get("/v1/backups") { r, _ in
            let h = try host(r)
            let vm = r.uri.queryParameters.get("vm")
            return try json(await repo.list(host: h, vm: vm))
        }
        router.get("/v1/backups/:id") { r, c in
            try json(try await repo.manifest(host: try host(r), id: try c.parameters.require("id")))
        }
        router.delete("/v1/backups/:id") { r, c in
            try await repo.delete(host: try host(r), id: try c.parameters.require("id"))
            return Response(status: .noContent)
        }
        router.get("/v1/chunks/:digest") { r, c in
            let h = try host(r)
            let d = try digest(c)
            guard await repo.mayRead(d, host: h) else { throw BackupError.notFound("no backup of this host holds chunk \(d.hex)") }
            let store = repo.store
            let blob = try await ChunkStore.disk.runIfActive { try store.read(d) }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: .init(byteBuffer: blob))
        }
        router.post("/v1/prune") { r, _ in
            let h = try host(r)
            let p = try await decode(Prune.self, r)
            let keep = Retention(last: p.keepLast ?? 0, daily: p.keepDaily ?? 0, weekly: p.keepWeekly ?? 0, monthly: p.keepMonthly ?? 0)
            let (kept, removed) = try await repo.prune(host: h, vm: p.vm, keep: keep, dryRun: p.dryRun ?? false)
            return try json(Pruned(kept: kept, removed: removed))
        }
        router.post("/v1/verify") { r, _ in
            let h = try host(r)
            let owners = await repo.chunkOwners(host: h)
            let store = repo.store
            // Each chunk read and checked off the actor, two at a time.
            let broken = await withTaskGroup(of: Broken?.self) { g -> [Broken] in
                var out: [Broken] = []
                var pending = owners.makeIterator()
                func add() -> Bool {
                    guard let (d, ids) = pending.next() else { return false }
                    g.addTask {
                        do {
                            let blob = try await ChunkStore.disk.runIfActive { try store.read(d) }
                            _ = try blob.withUnsafeReadableBytes { try Chunk.verify($0, digest: d) }
                            store.markChecked(d)
                            return nil
                        } catch {
                            return Broken(chunk: d.hex, problem: "\(error)", backups: ids.sorted())
                        }
                    }
                    return true
                }
                for _ in 0..<2 where add() {}
                while let r = await g.next() {
                    if let r { out.append(r) }
                    _ = add()
                }
                return out.sorted { $0.chunk < $1.chunk }
            }
            return try json(Verified(checked: owners.count, broken: broken))
        }
        router.post("/v1/gc") { r, _ in
            _ = try host(r)
            let (cutoff, needed) = try await repo.collectionBegin()
            let store = repo.store
            for d in needed { store.touch(d) }
            let old = store.all().filter { $0.mtime < cutoff && !needed.contains($0.digest) }.map(\.digest)
            var freed: Int64 = 0
            for batch in stride(from: 0, to: old.count, by: 256) {
                freed += await repo.collectionSweep(Array(old[batch..<min(old.count, batch + 256)]), cutoff: cutoff)
            }
            store.removeTemporaries(olderThan: 3600)
            await repo.collectionEnd()
            return try json(Collected(kept: needed.count, removed: old.count, freedBytes: freed))
        }
    }
}

/// Errors as problem documents: 4xx for what the client can mend, 500 only for the server's own faults.
struct BackupProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do { return try await next(request, context) } catch let e as HTTPError {
            let detail: String
            switch e.status {
            case .notFound: detail = e.body ?? "no such path: \(request.uri.path) (the API is under /v1)"
            case .contentTooLarge: detail = "the request body is too large"
            default: detail = e.body ?? e.status.reasonPhrase
            }
            return Self.problem(e.status, detail, headers: e.headers)
        } catch let e as BackupError {
            let status: HTTPResponse.Status
            switch e {
            case .invalid: status = .badRequest
            case .notFound: status = .notFound
            case .forbidden: status = .forbidden
            case .conflict: status = .conflict
            case .failed: status = .internalServerError
            }
            return Self.problem(status, e.description)
        } catch let e as ChunkError {
            return Self.problem(.unprocessableContent, e.description)
        } catch {
            return Self.problem(.internalServerError, "\(error)")
        }
    }

    static func problem(_ status: HTTPResponse.Status, _ detail: String, headers: HTTPFields = [:]) -> Response {
        let doc: [String: Any] = ["type": "about:blank", "title": status.reasonPhrase, "status": status.code, "detail": detail]
        let data = (try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])) ?? Data()
        var fields = headers
        fields[.contentType] = "application/problem+json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

extension DecodingError {
    var shortDescription: String {
        switch self {
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c):
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return (p.isEmpty ? "" : p + ": ") + c.debugDescription
        case .keyNotFound(let k, _): return "missing field '\(k.stringValue)'"
        @unknown default: return "\(self)"
        }
    }
}
