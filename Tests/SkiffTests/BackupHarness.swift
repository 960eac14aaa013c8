import Foundation
import Glibc
import XCTest

/// A real backup server (`skiff backup-server`, which is skiffd's) on a
/// store of its own, and the real `skiff backup` client against it.
final class BackupHarness: @unchecked Sendable {
    let root: String
    var store: String { root + "/store" }
    let port: Int
    private(set) var server: Session?
    /// host name -> token file
    private(set) var tokenFiles: [String: String] = [:]
    var listen: String
    var tls: (cert: String, key: String)?

    static var environment: [String: String] { ["SKIFFD_BIN": ManagerHarness.skiffd] }

    init(_ name: String, hosts: [String] = ["h1"], listen: String = "127.0.0.1") throws {
        root = "/var/tmp/skb-\(name.prefix(16))-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        port = 20000 + Int(getpid() % 20000) + Int.random(in: 0..<500)
        self.listen = listen
        var lines: [String] = []
        for h in hosts {
            let token = (0..<32).map { _ in String(UInt8.random(in: 0...15), radix: 16) }.joined()
            lines.append("\(h) \(token)")
            let f = root + "/\(h).token"
            try token.write(toFile: f, atomically: true, encoding: .utf8)
            tokenFiles[h] = f
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: root + "/tokens", atomically: true, encoding: .utf8)
    }

    var url: String { (tls == nil ? "http://" : "https://") + "\(listen == "0.0.0.0" ? "127.0.0.1" : listen):\(port)" }

    func start() throws {
        var args = ["backup-server", "--dir", store, "--listen", "\(listen):\(port)", "--tokens", root + "/tokens"]
        if let tls { args += ["--tls-cert", tls.cert, "--tls-key", tls.key] }
        let s = try Session(Harness.skiff, args, environment: Self.environment)
        server = s
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && s.isRunning && !(s.stdout + s.stderr).contains("listening on") { usleep(20_000) }
        guard s.isRunning else { throw XCTSkip("backup server did not start: \(s.stdout) \(s.stderr)") }
    }

    func kill() {
        guard let s = server else { return }
        Glibc.kill(s.pid, SIGKILL)
        _ = s.wait(timeout: 10)
        server = nil
    }

    func stop() {
        guard let s = server else { return }
        Glibc.kill(s.pid, SIGTERM)
        _ = s.wait(timeout: 20)
        server = nil
    }

    func tearDown() {
        stop()
        try? FileManager.default.removeItem(atPath: root)
    }

    /// `skiff backup ARGS --server URL --token-file F` as `host`.
    func backup(_ args: [String], host: String = "h1", prefix: [String] = [], url: String? = nil, timeout: Double = 120) throws -> Harness.Result {
        let all = args + ["--server", url ?? self.url, "--token-file", tokenFiles[host]!] + (tls.map { ["--ca-cert", $0.cert] } ?? [])
        if prefix.isEmpty { return try Harness.run(Harness.skiff, ["backup"] + all, timeout: timeout, environment: Self.environment) }
        return try Harness.run(prefix[0], Array(prefix.dropFirst()) + [Harness.skiff, "backup"] + all, timeout: timeout, environment: Self.environment)
    }

    /// `backup create --json`'s report.
    func create(vm: String, disks: [String], extra: [String] = [], host: String = "h1") throws -> [String: Any] {
        let r = try backup(["create", "--vm", vm, "--json"] + disks.flatMap { ["--disk", $0] } + extra, host: host)
        guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            XCTFail("backup create: \(r.status) \(r.stdout) \(r.stderr)")
            throw XCTSkip("backup failed")
        }
        return o
    }

    func ids(host: String = "h1") throws -> [String] {
        let r = try backup(["ls", "--json"], host: host)
        XCTAssertEqual(r.status, 0, r.stderr)
        let list = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]) ?? []
        return list.compactMap { $0["id"] as? String }
    }

    /// Every chunk file of the store.
    func chunkFiles() -> [String] {
        var out: [String] = []
        let e = FileManager.default.enumerator(atPath: store + "/chunks")
        while let p = e?.nextObject() as? String { if p.count > 60 { out.append(store + "/chunks/" + p) } }
        return out
    }

    /// A sparse file of `mib` MiB.
    static func image(_ path: String, mib: Int) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0, ftruncate(fd, off_t(mib) << 20) == 0 else { throw POSIXError(.EIO) }
        close(fd)
    }

    /// The blkwrite probe changes `disk` (seeded); returns the extents it wrote (start, length).
    @discardableResult
    static func scribble(_ disk: String, seed: Int, extents: Int = 36, permille: Int = 10, cbt: Bool = true) throws -> [(UInt64, UInt64)] {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("blkwrite"), "--memory", "128", "--disk", disk + (cbt ? ",cbt" : ""),
                                   "--cmdline", "seed=\(seed) extents=\(extents) permille=\(permille) list"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("BLKWRITE done"), r.stdout + r.stderr)
        return r.stdout.split(separator: "\n").compactMap { line in
            let w = line.split(separator: " ")
            guard w.count == 4, w[1] == "extent", let a = UInt64(w[2]), let b = UInt64(w[3]) else { return nil }
            return (a, b)
        }
    }

    static func same(_ a: String, _ b: String) throws -> Bool {
        try Harness.run("/usr/bin/cmp", ["-s", a, b], timeout: 120).status == 0
    }
}
