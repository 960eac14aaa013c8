import Foundation
import Glibc
import XCTest

/// Issue 12 through skiffd: `skiff backup VM` of a running VM (a real
/// skiffd, a real backup server, the blkbench probe writing its disk),
/// schedules with pruning, a skiffd killed while its backup runs, and
/// `skiff restore-backup` to a new VM.
final class ManagedBackupTests: XCTestCase {
    /// Waits for a job to end; returns it.
    func waitJob(_ m: ManagerHarness, _ id: Int, timeout: Double = 120) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try m.api("GET", "/backup-jobs/\(id)").object
            if let s = last["state"] as? String, s != "running" { return last }
            usleep(100_000)
        }
        XCTFail("job \(id) still running after \(timeout) s: \(last)")
        return last
    }

    /// Waits until the VM's console shows `text` `count` times.
    func waitConsole(_ m: ManagerHarness, _ vm: String, _ text: String, count: Int = 1, timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var log = ""
        while Date() < deadline {
            log = try m.api("GET", "/vms/\(vm)/logs").body
            if log.components(separatedBy: text).count - 1 >= count { return }
            usleep(100_000)
        }
        XCTFail("\(vm)'s console has not shown \(text) \(count) times: \(log.suffix(500))")
    }

    /// A backup server, a skiffd backing up to it (its CLI's environment),
    /// and its VM "w": the blkwrite probe on a disk of `mib` MiB of seeded
    /// data, which writes its 8 extents (the same each start), then idles.
    func writer(_ name: String, mib: Int, data: Int, writes: Int) throws -> (BackupHarness, ManagerHarness, [String: String], String) {
        let b = try BackupHarness(name)
        try b.start()
        let m = try ManagerHarness("m" + name)
        try m.start(extra: ["--backup-server", b.url, "--backup-token-file", b.tokenFiles["h1"]!])
        let disk = m.root + "/disk.img"
        try BackupHarness.image(disk, mib: mib)
        try BackupHarness.scribble(disk, seed: data, permille: mib > 64 ? 500 : 200, cbt: false)
        let probe: [String: Any] = ["name": "w", "kernel": Harness.probe("blkwrite"), "memoryMiB": 128, "disks": [["path": disk]],
                                    "cmdline": "seed=\(writes) extents=8 permille=20 stay"]
        XCTAssertEqual(try m.create(probe).status, 201)
        try m.waitFor("w", "running")
        try waitConsole(m, "w", "BLKWRITE done")
        return (b, m, ["SKIFFD_SOCKET": m.socket, "SKIFFD_BIN": ManagerHarness.skiffd], disk)
    }

    func testBackupScheduleKillAndRestoreThroughSkiffd() throws {
        let (b, m, cli, disk) = try writer("managed", mib: 64, data: 3, writes: 4)
        defer { b.tearDown(); m.tearDown() }
        XCTAssertTrue(FileManager.default.fileExists(atPath: disk + ".cbt"), "a writable disk of skiffd's is tracked by default")

        // A live backup through the CLI, which waits for the job.
        var r = try Harness.skiff(["backup", "w", "--json"], timeout: 120, environment: cli)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let first = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual(first["state"] as? String, "succeeded", "\(first)")
        XCTAssertEqual(first["mode"] as? String, "full")
        XCTAssertEqual(first["consistency"] as? String, "crash-consistent")
        XCTAssertGreaterThan(first["bytesRead"] as? Int ?? 0, 10 << 20)
        // Nothing written since: the next reads nothing.
        var reply = try m.api("POST", "/vms/w/backups")
        XCTAssertEqual(reply.status, 202, reply.body)
        let second = try waitJob(m, try XCTUnwrap(reply.object["id"] as? Int))
        XCTAssertEqual(second["state"] as? String, "succeeded", "\(second)")
        XCTAssertEqual(second["mode"] as? String, "incremental", "\(second)")
        XCTAssertEqual(second["bytesRead"] as? Int, 0, "\(second)")
        // Restarted, the guest writes its 8 extents again: only their chunks are read.
        XCTAssertEqual(try m.api("POST", "/vms/w/stop", #"{"timeoutSeconds": 2}"#).status, 200)
        try m.waitFor("w", "stopped")
        XCTAssertEqual(try m.api("POST", "/vms/w/start").status, 200)
        try m.waitFor("w", "running")
        try waitConsole(m, "w", "BLKWRITE done", count: 2)

        // skiffd killed while a backup runs: the job is a process of its
        // own, it goes on, and the next skiffd finds how it ended.
        reply = try m.api("POST", "/vms/w/backups")
        XCTAssertEqual(reply.status, 202, reply.body)
        let killedDuring = try XCTUnwrap(reply.object["id"] as? Int)
        m.crash()
        try m.start(extra: ["--backup-server", b.url, "--backup-token-file", b.tokenFiles["h1"]!])
        let third = try waitJob(m, killedDuring)
        XCTAssertEqual(third["state"] as? String, "succeeded", "\(third)")
        XCTAssertEqual(third["mode"] as? String, "incremental", "\(third)")
        let read = third["bytesRead"] as? Int ?? 0
        XCTAssertGreaterThan(read, 0, "\(third)")
        XCTAssertLessThanOrEqual(read, 16 << 20, "8 extents touch at most 16 chunks of 1 MiB: \(third)")
        XCTAssertEqual(try m.vm("w")["observed"] as? String, "running", "the VM ran on")
        XCTAssertEqual(try b.backup(["verify"]).status, 0)

        // Bad requests change nothing.
        XCTAssertEqual(try m.api("POST", "/vms/nosuch/backups").status, 404)
        XCTAssertEqual(try m.api("GET", "/backup-jobs/999999").status, 404)
        XCTAssertEqual(try m.api("PUT", "/vms/w/backup-policy", #"{"intervalSeconds": 1}"#).status, 400)
        XCTAssertEqual(try m.api("PUT", "/vms/w/backup-policy", #"{"intervalSeconds": 60, "keepLast": -1}"#).status, 400)
        XCTAssertEqual(try m.api("GET", "/vms/w/backup-policy").status, 404)
        XCTAssertEqual(try m.api("POST", "/backups/19700101T000000.000Z/restore", #"{"name": "x"}"#).status, 404)
        XCTAssertEqual(try m.api("POST", "/backups/-x/restore", #"{"name": "x"}"#).status, 400)
        XCTAssertEqual(try m.create(["name": "nodisk", "kernel": Harness.probe("echo"), "start": false]).status, 201)
        reply = try m.api("POST", "/vms/nodisk/backups")
        XCTAssertEqual(reply.status, 400, reply.body)
        XCTAssertTrue(reply.detail.contains("no writable disk"), reply.detail)

        // A schedule: every 5 s, the last 2 kept.
        reply = try m.api("PUT", "/vms/w/backup-policy", #"{"intervalSeconds": 5, "keepLast": 2}"#)
        XCTAssertEqual(reply.status, 200, reply.body)
        let deadline = Date().addingTimeInterval(60)
        var scheduled: [[String: Any]] = []
        while Date() < deadline {
            let jobs = try m.api("GET", "/vms/w/backups").object["items"] as? [[String: Any]] ?? []
            scheduled = jobs.filter { $0["trigger"] as? String == "schedule" && $0["state"] as? String == "succeeded" }
            if scheduled.count >= 2 { break }
            usleep(500_000)
        }
        XCTAssertGreaterThanOrEqual(scheduled.count, 2, "two scheduled backups in 60 s")
        XCTAssertEqual(try m.api("DELETE", "/vms/w/backup-policy").status, 204)
        // Pruned after each: the last 2 remain (the prune of the last may still be on its way).
        var kept = try b.ids().count
        for _ in 0..<50 where kept != 2 { usleep(200_000); kept = try b.ids().count }
        XCTAssertEqual(kept, 2, "keep-last 2")

        // Stopped, backed up offline, restored to a new VM: its disk is w's.
        XCTAssertEqual(try m.api("POST", "/vms/w/stop", #"{"timeoutSeconds": 5}"#).status, 200)
        try m.waitFor("w", "stopped")
        r = try Harness.skiff(["backup", "w", "--json"], timeout: 120, environment: cli)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let offline = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(offline["consistency"] as? String, "offline", "\(offline)")
        let id = try XCTUnwrap(offline["backup"] as? String)
        r = try Harness.skiff(["restore-backup", id, "--name", "w2", "--no-start"], timeout: 120, environment: cli)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let w2 = try m.vm("w2")
        XCTAssertEqual(w2["observed"] as? String, "created")
        let restored = try XCTUnwrap(((w2["disks"] as? [[String: Any]])?.first?["path"]) as? String)
        XCTAssertTrue(restored.hasPrefix(m.state + "/vms/"), restored)
        XCTAssertTrue(try BackupHarness.same(disk, restored), "the restored VM's disk is the backed-up one")
        XCTAssertEqual(try m.api("POST", "/vms/w2/start").status, 200)
        try m.waitFor("w2", "running")
        // A name that is taken: refused, nothing made.
        reply = try m.api("POST", "/backups/\(id)/restore", #"{"name": "w"}"#)
        XCTAssertEqual(reply.status, 409, reply.body)
        XCTAssertEqual(try m.vms().count, 3)
    }

    /// Acceptance 3 for skiffd: killed with SIGKILL 20 times at random
    /// points of a backup (while the request is taken, while the job runs,
    /// as it ends). After each restart the VM has run on in the same
    /// process, every job ends (succeeded, failed or interrupted, none left
    /// running), no copy-before-write directory or job process is left;
    /// at the end `verify` passes, the next backup succeeds, no backup
    /// that succeeded is lost, and the last restores to the VM's disk.
    func testSkiffdKilledTwentyTimesDuringBackups() throws {
        let b = try BackupHarness("kills")
        defer { b.tearDown() }
        try b.start()
        let m = try ManagerHarness("mkills")
        defer { m.tearDown() }
        let options = ["--backup-server", b.url, "--backup-token-file", b.tokenFiles["h1"]!]
        try m.start(extra: options)

        let disk = m.root + "/disk.img"
        try BackupHarness.image(disk, mib: 64)
        try BackupHarness.scribble(disk, seed: 5, permille: 300, cbt: false)
        let probe: [String: Any] = ["name": "w", "kernel": Harness.probe("blkwrite"), "memoryMiB": 128, "disks": [["path": disk]],
                                    "cmdline": "seed=6 extents=8 permille=20 stay"]
        XCTAssertEqual(try m.create(probe).status, 201)
        try m.waitFor("w", "running")
        try waitConsole(m, "w", "BLKWRITE done")
        let vm = try m.vm("w")
        let pid = try XCTUnwrap(vm["pid"] as? Int)
        let backups = m.state + "/vms/" + (try XCTUnwrap(vm["id"] as? String)) + "/backups"

        var rng = SystemRandomNumberGenerator()
        var kept: Set<String> = []
        var outcomes: [String: Int] = [:]
        for round in 0..<20 {
            if round % 2 == 0 {
                // Killed while the request may still be on its way.
                let posted = Thread { _ = try? m.api("POST", "/vms/w/backups") }
                posted.start()
                usleep(UInt32.random(in: 0...40_000, using: &rng))
            } else {
                let reply = try m.api("POST", "/vms/w/backups")
                XCTAssertEqual(reply.status, 202, "round \(round): \(reply.body)")
                usleep(UInt32.random(in: 0...900_000, using: &rng))
            }
            m.crash()
            try m.start(extra: options)
            // Every job ends; none stays running for ever.
            let deadline = Date().addingTimeInterval(120)
            var jobs: [[String: Any]] = []
            repeat {
                jobs = try m.api("GET", "/vms/w/backups").object["items"] as? [[String: Any]] ?? []
                if !jobs.contains(where: { $0["state"] as? String == "running" }) { break }
                usleep(100_000)
            } while Date() < deadline
            XCTAssertFalse(jobs.contains(where: { $0["state"] as? String == "running" }), "round \(round): a job still runs: \(jobs.prefix(3))")
            for j in jobs {
                if let id = j["backup"] as? String, j["state"] as? String == "succeeded" { kept.insert(id) }
            }
            if let last = jobs.first, let state = last["state"] as? String { outcomes[state, default: 0] += 1 }
            let after = try m.vm("w")
            XCTAssertEqual(after["observed"] as? String, "running", "round \(round): the VM ran on")
            XCTAssertEqual(after["pid"] as? Int, pid, "round \(round): in the same process")
            let left = ((try? FileManager.default.contentsOfDirectory(atPath: backups)) ?? []).filter { $0.hasPrefix(".skiff-backup-") || $0.hasPrefix("job-") }
            XCTAssertEqual(left, [], "round \(round): left in \(backups)")
            // A job's shell may still be exiting just after its status file appeared.
            var processes = Self.jobProcesses(backups)
            for _ in 0..<20 where !processes.isEmpty { usleep(100_000); processes = Self.jobProcesses(backups) }
            XCTAssertEqual(processes, [], "round \(round): a job process is left")
        }
        print("skiffd killed 20 times during backups: last job of each round \(outcomes.sorted { $0.key < $1.key }), \(kept.count) backups succeeded")

        XCTAssertEqual(try b.backup(["verify"]).status, 0, "verify after 20 kills")
        let reply = try m.api("POST", "/vms/w/backups")
        XCTAssertEqual(reply.status, 202, reply.body)
        let final = try waitJob(m, try XCTUnwrap(reply.object["id"] as? Int))
        XCTAssertEqual(final["state"] as? String, "succeeded", "the next backup: \(final)")
        let ids = Set(try b.ids())
        XCTAssertTrue(kept.isSubset(of: ids), "lost: \(kept.subtracting(ids))")
        let last = try XCTUnwrap(final["backup"] as? String)
        let out = m.root + "/restored.img"
        let r = try b.backup(["restore", last, "--disk-output", out])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(try BackupHarness.same(disk, out), "the last backup restores to the VM's disk")
    }

    /// `skiff restore-backup ID --live`: the new VM starts while the job
    /// still fills its disk (its start is an event before the job's end),
    /// the job succeeds, and the disk is then whole (no flags file) and
    /// the backed-up one, with the same writes of the same guest on it.
    func testLiveRestoreThroughSkiffd() throws {
        // blkwrite writes the same 8 extents at each start: a restored VM's writes leave its disk the backed-up one.
        let (b, m, cli, disk) = try writer("live", mib: 256, data: 8, writes: 9)
        defer { b.tearDown(); m.tearDown() }
        XCTAssertEqual(try m.api("POST", "/vms/w/stop", #"{"timeoutSeconds": 5}"#).status, 200)
        try m.waitFor("w", "stopped")
        var r = try Harness.skiff(["backup", "w", "--json"], timeout: 120, environment: cli)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["backup"] as? String)

        // Refused: live without a start.
        let refused = try m.api("POST", "/backups/\(id)/restore", #"{"name": "x", "start": false, "live": true}"#)
        XCTAssertEqual(refused.status, 400, refused.body)
        XCTAssertNil(try m.vms().first { $0["name"] as? String == "x" })

        r = try Harness.skiff(["restore-backup", id, "--name", "w3", "--live", "--json"], timeout: 120, environment: cli)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let job = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(job["state"] as? String, "succeeded", "\(job)")
        try m.waitFor("w3", "running")
        let events = (try m.api("GET", "/events").object["items"] as? [[String: Any]] ?? []).filter { $0["vm"] as? String == "w3" }
        let kinds = events.map { $0["kind"] as? String ?? "" }
        let started = try XCTUnwrap(kinds.firstIndex(of: "live restore"), "\(kinds)")
        let ended = try XCTUnwrap(kinds.firstIndex(of: "restore succeeded"), "\(kinds)")
        XCTAssertLessThan(started, ended, "the VM started before its restore ended: \(kinds)")
        XCTAssertEqual(kinds.filter { $0 == "started" }.count, 1, "started once: \(kinds)")
        try waitConsole(m, "w3", "BLKWRITE done")
        let w3 = try m.vm("w3")
        let restored = try XCTUnwrap(((w3["disks"] as? [[String: Any]])?.first?["path"]) as? String)
        XCTAssertFalse(FileManager.default.fileExists(atPath: restored + ".fill"), "the disk is whole")
        XCTAssertTrue(try BackupHarness.same(disk, restored), "the live-restored disk is the backed-up one")
    }

    /// `skiffd --client backup` processes whose command line names a job file under `directory`.
    static func jobProcesses(_ directory: String) -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = pid_t(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return args.contains(where: { $0.hasPrefix(directory + "/job-") }) ? pid : nil
        }
    }
}
