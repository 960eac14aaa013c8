import Foundation
import Glibc
import SkiffControl
import XCTest

/// Issue 12: backups of VM disks to a real backup server, with changed
/// blocks tracked by the real VMM (the blkwrite probe writes the disks).
final class BackupTests: XCTestCase {
    /// Full, then incremental after a change made through the VMM: only the
    /// chunks the change touched are read, and each restore is the disk
    /// byte for byte. Then a write from outside Skiff: the map is not
    /// trusted, every chunk is read and compared.
    func testFullThenIncrementalThenCompare() throws {
        let h = try BackupHarness("incr")
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 256)
        try BackupHarness.scribble(disk, seed: 1, extents: 64, permille: 300)
        XCTAssertTrue(FileManager.default.fileExists(atPath: disk + ".cbt"), "the map is made with the disk's first tracked run")

        let full = try h.create(vm: "web", disks: [disk])
        XCTAssertEqual(full["mode"] as? String, "full")
        let fullID = try XCTUnwrap(full["id"] as? String)
        XCTAssertGreaterThan(full["bytesSent"] as? Int ?? 0, 70 << 20, "the random data is sent")

        // A 1% change in 4 extents (of 1 MiB chunks, 1.7 or 2 each).
        let extents = try BackupHarness.scribble(disk, seed: 2, extents: 4, permille: 10)
        var touched = Set<UInt64>()
        for (start, length) in extents { for c in (start >> 20)...((start + length - 1) >> 20) { touched.insert(c) } }
        let incr = try h.create(vm: "web", disks: [disk])
        XCTAssertEqual(incr["mode"] as? String, "incremental", "\(incr)")
        XCTAssertEqual(incr["chunksRead"] as? Int, touched.count, "only the changed chunks are read: \(incr)")
        XCTAssertEqual(incr["bytesRead"] as? Int, touched.count << 20)
        XCTAssertEqual(incr["newChunks"] as? Int, touched.count)
        let incrID = try XCTUnwrap(incr["id"] as? String)

        let out = h.root + "/restored.img"
        var r = try h.backup(["restore", incrID, "--disk-output", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try BackupHarness.same(disk, out), "the incremental backup restores to the disk")
        // The full one is still the disk as it was (not the same as now).
        r = try h.backup(["restore", fullID, "--disk-output", out, "--force"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(try BackupHarness.same(disk, out))

        // Written outside Skiff: the next backup reads everything, says so, and is right.
        let fd = open(disk, O_WRONLY)
        var bytes = Array("written by the host".utf8)
        XCTAssertEqual(pwrite(fd, &bytes, bytes.count, 100 << 20), bytes.count)
        close(fd)
        let cmp = try h.backup(["create", "--vm", "web", "--disk", disk])
        XCTAssertEqual(cmp.status, 0, cmp.stderr)
        XCTAssertTrue(cmp.stdout.contains("compare"), cmp.stdout)
        XCTAssertTrue(cmp.stderr.contains("written by something other than Skiff"), cmp.stderr)
        let last = try XCTUnwrap(try h.ids().last)
        r = try h.backup(["restore", last, "--disk-output", out, "--force"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try BackupHarness.same(disk, out))
        // And the one after that is incremental again, reading nothing.
        let again = try h.create(vm: "web", disks: [disk])
        XCTAssertEqual(again["mode"] as? String, "incremental")
        XCTAssertEqual(again["chunksRead"] as? Int, 0)
    }

    /// A VMM killed while tracking leaves its map marked unclean: the next
    /// backup compares hashes, and is right.
    func testVMMKilledMapIsNotTrusted() throws {
        let h = try BackupHarness("unclean")
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 64)
        try BackupHarness.scribble(disk, seed: 1, permille: 100)
        _ = try h.create(vm: "a", disks: [disk])
        // blkbench writes forever; killed, it never closes the map.
        let s = try Session(Harness.skiff, ["run", "--no-jail", "--kernel", Harness.probe("blkbench"), "--memory", "128", "--disk", disk + ",cbt",
                                           "--cmdline", "write rand bs=4096 qd=1 every=100"])
        XCTAssertTrue(s.waitFor(".", timeout: 30), s.stdout + s.stderr)
        s.signal(SIGKILL)
        _ = s.wait(timeout: 10)
        let r = try h.backup(["create", "--vm", "a", "--disk", disk])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("not closed cleanly"), r.stderr)
        let out = h.root + "/out.img"
        XCTAssertEqual(try h.backup(["restore", try XCTUnwrap(h.ids().last), "--disk-output", out]).status, 0)
        XCTAssertTrue(try BackupHarness.same(disk, out))
    }

    /// A flipped byte in a stored chunk: verify names the chunk and the
    /// backups it breaks (exit 1); a restore that needs it fails with that
    /// message and leaves no file.
    func testFlippedByteIsFound() throws {
        let h = try BackupHarness("flip")
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 32)
        try BackupHarness.scribble(disk, seed: 5, permille: 200)
        let id = try XCTUnwrap(try h.create(vm: "a", disks: [disk])["id"] as? String)
        XCTAssertEqual(try h.backup(["verify"]).status, 0)
        let victim = try XCTUnwrap(h.chunkFiles().sorted().first)
        let fd = open(victim, O_RDWR)
        var b: UInt8 = 0
        XCTAssertEqual(pread(fd, &b, 1, 4000), 1)
        b ^= 0x10
        XCTAssertEqual(pwrite(fd, &b, 1, 4000), 1)
        close(fd)
        let name = (victim as NSString).lastPathComponent
        let v = try h.backup(["verify"])
        XCTAssertEqual(v.status, 1)
        XCTAssertTrue(v.stdout.contains(name) && v.stdout.contains(id), v.stdout)
        let out = h.root + "/out.img"
        let r = try h.backup(["restore", id, "--disk-output", out])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains(name), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".partial"))
    }

    /// A chunk is stored on its sender's word (its header checked, not its
    /// hash), but never becomes another host's: h1 sends a forged chunk
    /// under the name of real data, then h2 backs that data up. h2's upload
    /// is checked and takes the forged copy's place, h2's restore is the
    /// data, and a second forgery, against the checked copy, changes
    /// nothing. A forgery whose header does not even claim its name is
    /// refused at once.
    func testAForgedChunkHarmsNoOtherHost() throws {
        let h = try BackupHarness("forge", hosts: ["h1", "h2"])
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 2)
        let data = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255) }
        let fd = open(disk, O_WRONLY)
        XCTAssertEqual(pwrite(fd, data, data.count, 0), data.count)
        close(fd)
        let chunk0 = h.root + "/chunk0"
        try Data(data).write(to: URL(fileURLWithPath: chunk0))
        let digest = String(try Harness.run("/usr/bin/sha256sum", [chunk0]).stdout.prefix(64))
        let digestBytes = stride(from: 0, to: 64, by: 2).map { i -> UInt8 in
            UInt8(digest[digest.index(digest.startIndex, offsetBy: i)..<digest.index(digest.startIndex, offsetBy: i + 2)], radix: 16)!
        }
        func curl(_ host: String, _ args: [String]) throws -> (code: String, body: String) {
            let token = try String(contentsOfFile: h.tokenFiles[host]!, encoding: .utf8)
            let out = h.root + "/curl.out"
            let r = try Harness.run("/usr/bin/curl", ["-s", "-o", out, "-w", "%{http_code}", "-H", "Authorization: Bearer " + token] + args)
            return (r.stdout, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
        }
        func forge(claimingName: Bool) throws -> String {
            let begun = try curl("h1", ["-X", "POST", "-H", "Content-Type: application/json", "--data", #"{"vm":"forger"}"#, h.url + "/v1/sessions"])
            XCTAssertEqual(begun.code, "201", begun.body)
            let session = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(begun.body.utf8)) as? [String: Any])?["session"] as? String)
            // Stored as it is: the header's payload hash is the name, the payload other bytes.
            var blob = Array("SKFCHNK1".utf8) + [0, 0, 0, 0]
            withUnsafeBytes(of: UInt32(data.count).littleEndian) { blob += $0 }
            blob += claimingName ? digestBytes : [UInt8](repeating: 0xee, count: 32)
            blob += [UInt8](repeating: 0x5a, count: data.count)
            let file = h.root + "/forged"
            try Data(blob).write(to: URL(fileURLWithPath: file))
            return try curl("h1", ["-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary", "@" + file,
                                   h.url + "/v1/sessions/\(session)/chunks/\(digest)"]).code
        }
        XCTAssertEqual(try forge(claimingName: false), "422", "a header that does not claim the name")
        XCTAssertEqual(try forge(claimingName: true), "204", "stored on its sender's word")
        let stored = h.store + "/chunks/" + digest.prefix(2) + "/" + digest
        var st = stat()
        XCTAssertEqual(lstat(stored, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o400, "unchecked")
        let id = try XCTUnwrap(try h.create(vm: "real", disks: [disk], host: "h2")["id"] as? String)
        XCTAssertEqual(lstat(stored, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600, "h2's checked upload took the forged copy's place")
        let out = h.root + "/out.img"
        var r = try h.backup(["restore", id, "--disk-output", out], host: "h2")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try BackupHarness.same(disk, out))
        XCTAssertEqual(try forge(claimingName: true), "204", "against a checked copy, what is sent is not stored")
        try? FileManager.default.removeItem(atPath: out)
        r = try h.backup(["restore", id, "--disk-output", out], host: "h2")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try BackupHarness.same(disk, out))
        XCTAssertEqual(try h.backup(["verify"], host: "h2").status, 0)
    }

    /// Live restore: a VM runs on the disk while it is still arriving. What
    /// the guest writes meanwhile is never overwritten by the restore, and
    /// the disk ends whole: byte for byte a full restore with the same
    /// writes made on it after. Its flags file is gone at the end.
    func testLiveRestoreRunsTheVMAtOnceAndKeepsItsWrites() throws {
        let h = try BackupHarness("liverest")
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 256)
        try BackupHarness.scribble(disk, seed: 21, extents: 64, permille: 500, cbt: false)
        let id = try XCTUnwrap(try h.create(vm: "a", disks: [disk])["id"] as? String)
        let writes = "seed=22 extents=24 permille=40"
        let expected = h.root + "/expected.img"
        XCTAssertEqual(try h.backup(["restore", id, "--disk-output", expected]).status, 0)
        var r = try Harness.skiff(["run", "--kernel", Harness.probe("blkwrite"), "--memory", "128", "--disk", expected, "--cmdline", writes], timeout: 120)
        XCTAssertTrue(r.stdout.contains("BLKWRITE done"), r.stdout + r.stderr)

        let out = h.root + "/live.img", socket = h.root + "/live.sock"
        let filler = try Session(Harness.skiff, ["backup", "restore", id, "--disk-output", out, "--live", socket, "--json",
                                                 "--server", h.url, "--token-file", h.tokenFiles["h1"]!], environment: BackupHarness.environment)
        let deadline = Date().addingTimeInterval(30)
        while access(socket, F_OK) != 0 && Date() < deadline && filler.isRunning { usleep(5_000) }
        XCTAssertEqual(access(out + ".fill", F_OK), 0, "the flags file is there while the disk arrives")
        r = try Harness.skiff(["run", "--kernel", Harness.probe("blkwrite"), "--memory", "128", "--disk", out + ",fill=" + socket, "--cmdline", writes], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("BLKWRITE done"), r.stdout + r.stderr)
        let f = filler.wait(timeout: 120)
        XCTAssertEqual(f.status, 0, f.stdout + f.stderr)
        let report = (try? JSONSerialization.jsonObject(with: Data(f.stdout.utf8)) as? [[String: Any]])?.first ?? [:]
        print("live restore: \(report)")
        let shown = try h.backup(["show", id, "--json"])
        let stored = (((try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8))) as? [String: Any])?["disks"] as? [[String: Any]])?.first?["stored"] as? Int
        XCTAssertEqual(report["bytesWritten"] as? Int, try XCTUnwrap(stored, shown.stdout + shown.stderr) << 20, "every stored chunk written once: \(report)")
        XCTAssertTrue(try BackupHarness.same(expected, out), "the live-restored disk is the backup with the guest's writes")
        XCTAssertNotEqual(access(out + ".fill", F_OK), 0, "complete: the flags file is gone")
        // A disk whose restore finished runs as a plain one, fill= or not.
        r = try Harness.skiff(["run", "--kernel", Harness.probe("blkwrite"), "--memory", "128", "--disk", out + ",fill=" + socket, "--cmdline", "seed=23 extents=1 permille=1"], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }

    /// A filler that lies (wrong chunk numbers, a yes for a chunk it did
    /// not write, silence, a hang-up): the guest's requests fail with an
    /// I/O error, the VMM goes on and ends normally.
    func testLyingFillerFailsRequestsNotTheVMM() throws {
        let root = "/var/tmp/skb-liar-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let disk = root + "/disk.img"
        try BackupHarness.image(disk, mib: 16)
        FileManager.default.createFile(atPath: disk + ".fill", contents: Data(count: 16))
        for lie in ["wrong", "yes", "hangup"] {
            let socket = root + "/\(lie).sock"
            let listener = try XCTUnwrap(Self.listen(socket))
            let liar = Thread {
                let c = accept(listener, nil, nil)
                guard c >= 0 else { return }
                var req: UInt32 = 0
                while read(c, &req, 4) == 4 {
                    if lie == "hangup" { break }
                    var reply = lie == "wrong" ? req &+ 1 : req // "yes": the chunk's flag stays 0
                    _ = write(c, &reply, 4)
                }
                close(c)
            }
            liar.start()
            let r = try Harness.skiff(["run", "--kernel", Harness.probe("blkwrite"), "--memory", "128", "--disk", disk + ",fill=" + socket,
                                       "--cmdline", "seed=1 extents=2 permille=10"], timeout: 120)
            close(listener)
            XCTAssertTrue(r.stdout.contains("BLKWRITE error"), "\(lie): the guest saw its request fail: \(r.stdout) \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("Fatal error"), "\(lie): \(r.stderr)")
        }
    }

    static func listen(_ path: String) -> Int32? {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in let b = Array(path.utf8); p.copyBytes(from: b); p[b.count] = 0 }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        unlink(path)
        let ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0
        guard ok, Glibc.listen(fd, 4) == 0 else { close(fd); return nil }
        return fd
    }

    /// The client or the server SIGKILLed at random points of a backup, 20
    /// times: afterwards verify passes, the next backup completes, and every
    /// earlier backup is still there and restores to what it was.
    func testKilledMidBackup() throws {
        let h = try BackupHarness("kill")
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 64)
        try BackupHarness.scribble(disk, seed: 1, permille: 400)
        let first = try XCTUnwrap(try h.create(vm: "a", disks: [disk])["id"] as? String)
        let firstCopy = h.root + "/first.img"
        XCTAssertEqual(try Harness.run("/bin/cp", ["--sparse=always", disk, firstCopy]).status, 0)
        var completed = [first]
        let rounds = Int(ProcessInfo.processInfo.environment["SKIFF_BACKUP_KILL_ROUNDS"] ?? "20") ?? 20
        for round in 0..<rounds {
            try BackupHarness.scribble(disk, seed: 100 + round, extents: 8, permille: 30)
            let client = try Session(Harness.skiff, ["backup", "create", "--vm", "a", "--disk", disk, "--json", "--server", h.url,
                                                     "--token-file", h.tokenFiles["h1"]!], environment: BackupHarness.environment)
            usleep(useconds_t.random(in: 20_000...400_000))
            if round % 2 == 0 { client.signal(SIGKILL) } else { h.kill() }
            let r = client.wait(timeout: 60)
            if r.status == 0, let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], let id = o["id"] as? String {
                completed.append(id) // finished before the kill
            }
            if h.server == nil { try h.start() }
        }
        let ids = try h.ids()
        for id in completed { XCTAssertTrue(ids.contains(id), "backup \(id) was lost") }
        XCTAssertEqual(try h.backup(["verify"]).status, 0)
        let next = try h.create(vm: "a", disks: [disk])
        let out = h.root + "/out.img"
        XCTAssertEqual(try h.backup(["restore", try XCTUnwrap(next["id"] as? String), "--disk-output", out]).status, 0)
        XCTAssertTrue(try BackupHarness.same(disk, out))
        XCTAssertEqual(try h.backup(["restore", first, "--disk-output", out, "--force"]).status, 0)
        XCTAssertTrue(try BackupHarness.same(firstCopy, out), "the first backup still restores to what it was")
        // Prune and collect: what is left still verifies and restores.
        XCTAssertEqual(try h.backup(["prune", "--keep-last", "2"]).status, 0)
        XCTAssertEqual(try h.backup(["gc"]).status, 0)
        XCTAssertEqual(try h.ids().count, 2)
        XCTAssertEqual(try h.backup(["verify"]).status, 0)
        XCTAssertEqual(try h.backup(["restore", try XCTUnwrap(next["id"] as? String), "--disk-output", out, "--force"]).status, 0)
        XCTAssertTrue(try BackupHarness.same(disk, out))
    }

    /// Two hosts in network namespaces, over TLS: one host's token cannot
    /// list, read or delete the other's backups, nor read its chunks; the
    /// chunks the two share are stored once.
    func testHostsAreIsolated() throws {
        guard geteuid() == 0 else { throw XCTSkip("network namespaces need root") }
        let h = try BackupHarness("iso", hosts: ["h1", "h2"], listen: "0.0.0.0")
        defer { h.tearDown() }
        let cert = h.root + "/cert.pem", key = h.root + "/key.pem"
        let ssl = try Harness.run("/usr/bin/openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                                                       "-subj", "/CN=backup", "-addext", "subjectAltName=IP:10.77.1.1,IP:10.77.2.1,IP:127.0.0.1",
                                                       "-keyout", key, "-out", cert])
        XCTAssertEqual(ssl.status, 0, ssl.stderr)
        h.tls = (cert, key)
        try h.start()
        var namespaces: [String] = []
        defer { for n in namespaces { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", n]); _ = try? Harness.run("/usr/sbin/ip", ["link", "del", "skb-\(n.suffix(2))"]) } }
        for (i, host) in ["h1", "h2"].enumerated() {
            let ns = "skbns-\(getpid())-\(host)"
            let veth = "skb-\(host)", peer = "skbp-\(host)"
            for cmd in [["netns", "add", ns], ["link", "add", veth, "type", "veth", "peer", "name", peer], ["link", "set", peer, "netns", ns],
                        ["addr", "add", "10.77.\(i + 1).1/24", "dev", veth], ["link", "set", veth, "up"],
                        ["-n", ns, "addr", "add", "10.77.\(i + 1).2/24", "dev", peer], ["-n", ns, "link", "set", peer, "up"], ["-n", ns, "link", "set", "lo", "up"]] {
                let r = try Harness.run("/usr/sbin/ip", cmd)
                XCTAssertEqual(r.status, 0, "ip \(cmd): \(r.stderr)")
            }
            namespaces.append(ns)
        }
        func from(_ host: String) -> (prefix: [String], url: String) {
            let i = host == "h1" ? 1 : 2
            return (["/usr/sbin/ip", "netns", "exec", "skbns-\(getpid())-\(host)"], "https://10.77.\(i).1:\(h.port)")
        }
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 32)
        try BackupHarness.scribble(disk, seed: 9, permille: 300)
        for host in ["h1", "h2"] {
            let (p, u) = from(host)
            let r = try h.backup(["create", "--vm", "shared", "--disk", disk], host: host, prefix: p, url: u)
            XCTAssertEqual(r.status, 0, "\(host): \(r.stderr)")
        }
        let chunks = h.chunkFiles().count
        XCTAssertGreaterThan(chunks, 0)
        let (p1, u1) = from("h1"), (p2, u2) = from("h2")
        let ls1 = try h.backup(["ls", "--json"], host: "h1", prefix: p1, url: u1)
        let id1 = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(ls1.stdout.utf8)) as? [[String: Any]])?.first?["id"] as? String)
        let ls2 = try h.backup(["ls", "--json"], host: "h2", prefix: p2, url: u2)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(ls2.stdout.utf8)) as? [[String: Any]])?.count, 1, "each sees its own only")
        // The chunks of the two identical disks are stored once.
        XCTAssertEqual(chunks, h.chunkFiles().count)
        // A backup only h1 has: h2 cannot list, restore or delete it, nor read its chunks.
        let before = Set(h.chunkFiles())
        let other = h.root + "/other.img"
        try BackupHarness.image(other, mib: 8)
        try BackupHarness.scribble(other, seed: 11, permille: 500)
        var r = try h.backup(["create", "--vm", "private", "--disk", other], host: "h1", prefix: p1, url: u1)
        XCTAssertEqual(r.status, 0, r.stderr)
        let privateChunks = Set(h.chunkFiles()).subtracting(before).map { ($0 as NSString).lastPathComponent }
        XCTAssertFalse(privateChunks.isEmpty)
        let h1private = try XCTUnwrap(try h.ids(host: "h1").last)
        XCTAssertFalse(try h.ids(host: "h2").contains(h1private))
        r = try h.backup(["ls", "--vm", "private"], host: "h2", prefix: p2, url: u2)
        XCTAssertEqual(r.status, 0)
        XCTAssertFalse(r.stdout.contains("private"), "h2 cannot list h1's VM: \(r.stdout)")
        let wrong = h.root + "/wrong.img"
        r = try h.backup(["restore", h1private, "--disk-output", wrong], host: "h2", prefix: p2, url: u2)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("no backup"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: wrong))
        r = try h.backup(["rm", h1private], host: "h2", prefix: p2, url: u2)
        XCTAssertNotEqual(r.status, 0, "h2 cannot delete h1's backup")
        XCTAssertTrue(try h.ids(host: "h1").contains(h1private))
        func fetch(_ chunk: String, as host: String) throws -> String {
            let token = try String(contentsOfFile: h.tokenFiles[host]!, encoding: .utf8)
            return try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", cert, "-H", "Authorization: Bearer " + token,
                                                     "https://127.0.0.1:\(h.port)/v1/chunks/\(chunk)"]).stdout
        }
        for c in privateChunks.prefix(3) {
            XCTAssertEqual(try fetch(c, as: "h1"), "200")
            XCTAssertEqual(try fetch(c, as: "h2"), "404", "h2 reads none of h1's chunks")
        }
        _ = id1
        // No token, a wrong one: 401.
        for auth in [[], ["-H", "Authorization: Bearer not-a-token-of-this-server"]] {
            let c = try Harness.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", cert] + auth + ["https://127.0.0.1:\(h.port)/v1/backups"])
            XCTAssertEqual(c.stdout, "401")
        }
    }

    /// Acceptance 1: a running Linux guest writing files in a loop is backed
    /// up through its control socket (its agent freezes the filesystem and
    /// the VM is paused for the moment its map is taken); the backup
    /// restored to a new disk is clean by `e2fsck -fn` as it is and after a
    /// boot on it, and its files are the guest's at the backup's point in
    /// time: every file synced before the backup began is there and whole,
    /// none begun after it ended.
    func testLiveBackupOfARunningLinuxGuest() throws {
        _ = try Harness.kernelDirectory()
        let h = try BackupHarness("live")
        defer { h.tearDown() }
        try h.start()
        let disk = h.root + "/data.img"
        try BackupHarness.image(disk, mib: 128)
        XCTAssertEqual(try Harness.run("/sbin/mkfs.ext4", ["-q", "-F", disk]).status, 0)
        let socket = h.root + "/ctl", vsock = h.root + "/vsock"
        let loop = "mkdir -p /mnt; mount /dev/vda /mnt || exit 1; i=0; while [ $i -lt 100000 ]; do echo file-$i > /mnt/f$i; sync; echo synced-$i; i=$((i+1)); done"
        let s = try Session(Harness.skiff, ["run", "--memory", "256", "--disk", disk + ",cbt", "--control-socket", socket,
                                            "--vsock", "cid=\(100 + getpid() % 1000),socket=\(vsock)", "--append", "quiet skiff_run=\"\(loop)\""])
        defer { s.signal(SIGKILL); _ = s.wait(timeout: 10) }
        XCTAssertTrue(s.waitFor("synced-3\r", timeout: 300), s.stdout.suffix(500) + s.stderr)
        func lastSynced() -> Int { s.stdout.matches(of: /synced-(\d+)\s/).compactMap { Int($0.1) }.max() ?? -1 }
        let before = lastSynced()
        let report = try h.create(vm: "linux", disks: [disk], extra: ["--control-socket", socket, "--vsock-socket", vsock])
        let after = lastSynced()
        XCTAssertEqual(report["consistency"] as? String, "application-consistent", "\(report)")
        let paused = try XCTUnwrap(report["pausedMs"] as? Double)
        XCTAssertLessThan(paused, 1000, "the VM is paused for the moment, not the backup")
        print("live backup: \(report["bytesRead"] ?? 0) bytes read in \(report["seconds"] ?? 0) s, paused \(paused) ms; files \(before)...\(after) synced around it")
        // The guest ran on: it writes after the backup.
        XCTAssertTrue(s.waitFor("synced-\(after + 2)\r", timeout: 120), s.stdout.suffix(300).description)
        s.signal(SIGKILL)
        _ = s.wait(timeout: 10)

        let out = h.root + "/restored.img"
        let r = try h.backup(["restore", try XCTUnwrap(report["id"] as? String), "--disk-output", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let frozen = try Harness.run("/sbin/e2fsck", ["-fn", out])
        XCTAssertEqual(frozen.status, 0, "frozen, the filesystem needs no recovery: \(frozen.stdout) \(frozen.stderr)")
        let boot = try Harness.skiff(["run", "--memory", "256", "--disk", out, "--append",
                                      #"quiet skiff_run="mkdir -p /mnt && mount /dev/vda /mnt && ls /mnt | wc -l && umount /mnt && echo unmounted-clean""#], timeout: 300)
        XCTAssertEqual(boot.status, 0, boot.stderr)
        XCTAssertTrue(boot.stdout.contains("unmounted-clean"), boot.stdout.suffix(500).description)
        let fsck = try Harness.run("/sbin/e2fsck", ["-fn", out])
        XCTAssertEqual(fsck.status, 0, "e2fsck: \(fsck.stdout) \(fsck.stderr)")
        let names = try Harness.run("/sbin/debugfs", ["-R", "ls -p /", out]).stdout
        let present = Set(names.matches(of: /\/f(\d+)\//).compactMap { Int($0.1) })
        XCTAssertGreaterThanOrEqual(before, 3)
        for n in 0...max(0, before) {
            XCTAssertTrue(present.contains(n), "f\(n) was synced before the backup began, and is missing")
            XCTAssertEqual(try Harness.run("/sbin/debugfs", ["-R", "cat /f\(n)", out]).stdout, "file-\(n)\n", "f\(n)")
        }
        XCTAssertTrue(present.allSatisfy { $0 <= after + 1 }, "files begun after the backup: \(present.filter { $0 > after + 1 }.sorted())")
    }

    /// File-level restore: `/etc` of a backed-up 4 GiB ext4 disk is listed and
    /// a file copied out, without booting or restoring it, in under 5 s.
    func testFilesOfABackedUpDisk() throws {
        let h = try BackupHarness("files")
        defer { h.tearDown() }
        try h.start()
        let tree = h.root + "/tree"
        try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
        XCTAssertEqual(try Harness.run("/bin/cp", ["-a", "/etc/.", tree + "/etc/"]).status, 0)
        let big = Data((0..<(3 << 20)).map { _ in UInt8.random(in: 0...255) })
        try big.write(to: URL(fileURLWithPath: tree + "/etc/skiff-random"))
        let disk = h.root + "/disk.img"
        try BackupHarness.image(disk, mib: 4096)
        let mkfs = try Harness.run("/sbin/mkfs.ext4", ["-q", "-F", "-d", tree, disk], timeout: 300)
        XCTAssertEqual(mkfs.status, 0, mkfs.stderr)
        let id = try XCTUnwrap(try h.create(vm: "files", disks: [disk])["id"] as? String)
        let t0 = Date()
        let ls = try h.backup(["files", id, "/etc"])
        let out = h.root + "/extracted"
        let cp = try h.backup(["files", id, "/etc/skiff-random", "--output", out])
        let seconds = Date().timeIntervalSince(t0)
        XCTAssertEqual(ls.status, 0, ls.stderr)
        XCTAssertEqual(cp.status, 0, cp.stderr)
        let expected = try FileManager.default.contentsOfDirectory(atPath: "/etc").filter { !$0.hasPrefix(".") }
        for name in expected.prefix(50) { XCTAssertTrue(ls.stdout.contains("  " + name + "\n"), "/etc/\(name) not listed") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), big)
        XCTAssertEqual(try h.backup(["files", id, "/etc/passwd", "--output", "-"]).stdout, try String(contentsOfFile: "/etc/passwd", encoding: .utf8))
        print("file-level restore: /etc listed and a 3 MiB file extracted in \(String(format: "%.2f", seconds)) s (\(cp.stderr.trimmingCharacters(in: .whitespacesAndNewlines)))")
        XCTAssertLessThan(seconds, 5)
        // A path that is not there, and one under a file: clear errors.
        let missing = try h.backup(["files", id, "/etc/no-such-file"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("no no-such-file"), missing.stderr)
    }

    /// The control socket's backup requests refuse what is wrong with a
    /// clear answer and change nothing: no files, files that are not new
    /// and empty, an end with no backup open, a VM with no tracked disk.
    func testBackupRequestsRefuseBadInput() throws {
        let dir = "/var/tmp/skb-bad-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img", plain = dir + "/plain.img"
        try BackupHarness.image(disk, mib: 16)
        try BackupHarness.image(plain, mib: 16)
        func ask(_ socket: String, _ line: String, _ fds: [Int32] = []) -> String {
            let fd = SkiffControl.UnixSocket.connect(socket, timeoutMs: 10_000)
            guard fd >= 0 else { return "no connection" }
            defer { close(fd) }
            _ = SkiffControl.UnixSocket.send(fd, Array((line + "\n").utf8), passing: fds)
            switch try? ControlReply.read(from: fd) {
            case .ok(let t)?: return "ok " + t
            case .error(let t)?: return "error " + t
            case nil: return "no answer"
            }
        }
        for (image, tracked) in [(disk, true), (plain, false)] {
            let socket = dir + "/ctl-\(tracked)"
            let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("blkbench"), "--memory", "128", "--disk", image + (tracked ? ",cbt" : ""),
                                                "--control-socket", socket, "--cmdline", "write rand bs=4096 qd=1 every=100"])
            defer { s.signal(SIGKILL); _ = s.wait(timeout: 10) }
            XCTAssertTrue(s.waitFor(".", timeout: 30), s.stdout + s.stderr)
            if !tracked {
                XCTAssertTrue(ask(socket, "backup-begin").contains("no disk of this VM is tracked"))
                continue
            }
            XCTAssertTrue(ask(socket, "backup-begin").contains("need 3 files"), ask(socket, "backup-begin"))
            let full = open(dir + "/full", O_RDWR | O_CREAT, 0o600)
            _ = write(full, "x", 1)
            let a = open(dir + "/a", O_RDWR | O_CREAT, 0o600), b = open(dir + "/b", O_RDWR | O_CREAT, 0o600)
            XCTAssertTrue(ask(socket, "backup-begin", [a, b, full]).contains("not new empty files"))
            let d = open("/tmp", O_RDONLY | O_DIRECTORY)
            XCTAssertTrue(ask(socket, "backup-begin", [a, b, d]).contains("not new empty files"))
            for fd in [full, a, b, d] { close(fd) }
            XCTAssertTrue(ask(socket, "backup-end ok").contains("no backup is open"))
            XCTAssertTrue(ask(socket, "backup-end maybe").hasPrefix("error"))
            XCTAssertEqual(ask(socket, "status"), "ok running", "the VM runs on")
        }
    }
}
