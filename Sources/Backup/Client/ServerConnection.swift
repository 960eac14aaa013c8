import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// The client's side of the backup server's API (BackupServer). A server's
/// answers are checked like any input: sizes bounded, JSON decoded into
/// types, chunks verified by the caller.
public final class ServerConnection: Sendable {
    let base: String
    let token: String
    let http: HTTPClient

    public struct Options: Sendable {
        public var url: String
        public var token: String
        /// PEM file of the CA (or self-signed certificate) to trust for https.
        public var caCertificate: String?
        public init(url: String, token: String, caCertificate: String? = nil) { self.url = url; self.token = token; self.caCertificate = caCertificate }
    }

    public init(_ o: Options) throws {
        guard o.url.hasPrefix("http://") || o.url.hasPrefix("https://") else { throw BackupError.invalid("--server \(o.url): give http://HOST:PORT or https://HOST:PORT") }
        base = o.url.hasSuffix("/") ? String(o.url.dropLast()) : o.url
        token = o.token
        var c = HTTPClient.Configuration()
        if let ca = o.caCertificate {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(ca)
            c.tlsConfiguration = tls
        }
        c.timeout = .init(connect: .seconds(10), read: .seconds(300))
        c.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 8)
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    public func close() async { try? await http.shutdown() }

    /// One request; the body of a 2xx answer (at most `limit` bytes), or
    /// the problem document's detail as the error.
    func call(_ method: HTTPMethod, _ path: String, body: ByteBuffer? = nil, json: Bool = true, limit: Int = 1 << 26) async throws -> ByteBuffer {
        var r = HTTPClientRequest(url: base + path)
        r.method = method
        r.headers.add(name: "Authorization", value: "Bearer " + token)
        if let body {
            r.headers.add(name: "Content-Type", value: json ? "application/json" : "application/octet-stream")
            r.body = .bytes(body)
        }
        let response: HTTPClientResponse
        do { response = try await http.execute(r, timeout: .seconds(300)) } catch {
            throw BackupError.failed("backup server \(base): \(error)")
        }
        let data = try await response.body.collect(upTo: limit)
        guard (200..<300).contains(response.status.code) else {
            let detail = (try? JSONSerialization.jsonObject(with: Data(buffer: data)) as? [String: Any])?["detail"] as? String
            let text = detail ?? String(buffer: data).prefix(300).description
            switch response.status.code {
            case 400, 422: throw BackupError.invalid("backup server: \(text)")
            case 401, 403: throw BackupError.forbidden("backup server: \(text)")
            case 404: throw BackupError.notFound("backup server: \(text)")
            case 409: throw BackupError.conflict("backup server: \(text)")
            default: throw BackupError.failed("backup server: \(response.status.code) \(text)")
            }
        }
        return data
    }

    func get<T: Decodable>(_ t: T.Type, _ path: String) async throws -> T {
        try decode(t, try await call(.GET, path))
    }

    func post<T: Decodable, B: Encodable>(_ t: T.Type, _ path: String, _ body: B) async throws -> T {
        try decode(t, try await call(.POST, path, body: ByteBuffer(bytes: try JSONEncoder().encode(body))))
    }

    func decode<T: Decodable>(_ t: T.Type, _ b: ByteBuffer) throws -> T {
        do { return try JSONDecoder().decode(t, from: Data(buffer: b)) } catch {
            throw BackupError.failed("the backup server's answer is not what was expected: \(error)")
        }
    }

    // MARK: the API

    public func list(vm: String? = nil) async throws -> [BackupSummary] {
        try await get([BackupSummary].self, "/v1/backups" + (vm.map { "?vm=" + $0 } ?? ""))
    }

    public func manifest(_ id: String) async throws -> Manifest {
        if let p = Names.problem(id, what: "backup id") { throw BackupError.invalid(p) }
        return try decode(Manifest.self, try await call(.GET, "/v1/backups/" + id, limit: Manifest.maxJSONBytes))
    }

    public func delete(_ id: String) async throws {
        if let p = Names.problem(id, what: "backup id") { throw BackupError.invalid(p) }
        _ = try await call(.DELETE, "/v1/backups/" + id)
    }

    /// A new session, and the filter of the host's digests when the server
    /// sent a usable one (without, every new chunk is asked `have` first).
    func begin(vm: String, base: String?) async throws -> (session: String, filter: DigestFilter?) {
        struct B: Codable { var vm: String; var base: String? }
        struct S: Codable { var session: String; var filter: DigestFilter? }
        let s = try await post(S.self, "/v1/sessions", B(vm: vm, base: base))
        return (s.session, s.filter.flatMap { $0.problem == nil ? $0 : nil })
    }

    func have(_ digests: [ChunkDigest], session: String) async throws -> [Bool] {
        let r = try await post([Bool].self, "/v1/sessions/\(session)/have", digests)
        guard r.count == digests.count else { throw BackupError.failed("the backup server answered \(r.count) of \(digests.count) digests") }
        return r
    }

    func upload(_ d: ChunkDigest, _ blob: ByteBuffer, session: String) async throws {
        _ = try await call(.PUT, "/v1/sessions/\(session)/chunks/\(d.hex)", body: blob, json: false)
    }

    /// A chunk's blob, encoded straight into the buffer it is sent from (one copy of the contents).
    static func blob(_ contents: UnsafeRawBufferPointer, digest: ChunkDigest, key: BackupKey?) throws -> ByteBuffer {
        let (header, payload) = try Chunk.encodeParts(contents, digest: digest, key: key)
        var buffer = ByteBufferAllocator().buffer(capacity: header.count + (payload?.count ?? contents.count))
        buffer.writeBytes(header)
        if let payload { buffer.writeBytes(payload) } else { buffer.writeBytes(contents) }
        return buffer
    }

    func commit(_ m: Manifest, session: String) async throws -> Manifest {
        try await post(Manifest.self, "/v1/sessions/\(session)/commit", m)
    }

    func abort(session: String) async { _ = try? await call(.DELETE, "/v1/sessions/\(session)") }

    /// A chunk's blob (the caller decodes and so verifies it).
    func chunk(_ d: ChunkDigest) async throws -> ByteBuffer {
        try await call(.GET, "/v1/chunks/" + d.hex, limit: Chunk.maxBlobBytes)
    }

    public struct Pruned: Codable, Sendable { public var kept: [String]; public var removed: [String] }
    public func prune(vm: String?, keep: Retention, dryRun: Bool) async throws -> Pruned {
        struct P: Codable { var vm: String?; var keepLast, keepDaily, keepWeekly, keepMonthly: Int; var dryRun: Bool }
        return try await post(Pruned.self, "/v1/prune", P(vm: vm, keepLast: keep.last, keepDaily: keep.daily, keepWeekly: keep.weekly, keepMonthly: keep.monthly, dryRun: dryRun))
    }

    public struct Broken: Codable, Sendable { public var chunk: String; public var problem: String; public var backups: [String] }
    public struct Verified: Codable, Sendable { public var checked: Int; public var broken: [Broken] }
    public func verify() async throws -> Verified {
        try decode(Verified.self, try await call(.POST, "/v1/verify", body: ByteBuffer(string: "{}")))
    }

    public struct Collected: Codable, Sendable { public var kept: Int; public var removed: Int; public var freedBytes: Int64 }
    public func collect() async throws -> Collected {
        try decode(Collected.self, try await call(.POST, "/v1/gc", body: ByteBuffer(string: "{}")))
    }
}
