import Foundation
import XCTest
@testable import Machine

/// `skiff record` and `skiff replay` on the replay probe (probes/replay.c:
/// PIT and UART interrupts at CPL3, spin loops that make no exits, input
/// typed while it records, virtio-blk and virtio-rng): a recording replays
/// with the same console output and the same state hashes, again and
/// again with the host busy; a changed input or disk is found at its
/// event; bad logs are refused.
final class ReplayTests: XCTestCase {
    func directory(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "/skiff-replay-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: d)
        return d
    }

    /// A 1 MiB disk of random bytes: the one every run starts from.
    func pristineDisk(_ dir: String) throws -> String {
        let path = dir + ".disk"
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: (i &* 2654435761) >> 13) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// A fresh copy of the pristine disk.
    func copy(_ pristine: String, _ n: Int) throws -> String {
        let path = pristine + ".\(n)"
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: pristine, toPath: path)
        return path
    }

    /// Records the probe (with a disk and virtio-rng when `disk` is given),
    /// typing `input` once it is READY; its stdout.
    func record(_ dir: String, input: String = "hello q", disk: String? = nil) throws -> String {
        let devices = disk.map { ["--disk", $0, "--rng"] } ?? []
        let s = try Session(Harness.skiff, ["record", dir, "--kernel", Harness.probe("replay"), "--memory", "16"] + devices)
        XCTAssertTrue(s.waitFor("READY", timeout: 60), s.stdout + s.stderr)
        // Typed in two goes, a while apart: where each lands is the recording's to keep.
        s.send(String(input.prefix(3)))
        usleep(200_000)
        s.send(String(input.dropFirst(3)))
        let r = s.wait(timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("REPLAY-DONE"), r.stdout)
        XCTAssertTrue(r.stderr.contains("recorded "), r.stderr)
        return r.stdout
    }

    func counts(_ out: String) -> (irq0: Int, irq4: Int) {
        let done = out.split(separator: "\n").first { $0.hasPrefix("REPLAY-DONE") } ?? ""
        func value(_ key: String) -> Int {
            guard let r = done.range(of: key + "=") else { return -1 }
            return Int(done[r.upperBound...].prefix { $0.isNumber }) ?? -1
        }
        return (value("irq0"), value("irq4"))
    }

    /// Timer and UART interrupts, spin loops, console input typed in two
    /// goes, a disk read, written and read back, entropy: 20 replays, each
    /// on a fresh copy of the disk, print the same and end with the same
    /// state and the same disk.
    func testRecordOnceReplayTwentyTimesWithTheHostBusy() throws {
        let dir = directory("twenty")
        let pristine = try pristineDisk(dir)
        defer { for p in [dir, pristine, pristine + ".0"] + (1...20).map({ pristine + ".\($0)" }) { try? FileManager.default.removeItem(atPath: p) } }
        let recordedDisk = try copy(pristine, 0)
        let recorded = try record(dir, disk: recordedDisk)
        let (irq0, irq4) = counts(recorded)
        XCTAssertGreaterThan(irq0, 10, "the timer ticked: \(recorded)")
        XCTAssertGreaterThan(irq4, 0, "input came by interrupt: \(recorded)")
        XCTAssertTrue(recorded.contains("blk read=0 write=0 readback=0") && recorded.contains("rng 64 "), recorded)
        let (_, events) = try EventLog.read(dir + "/events")
        XCTAssertTrue(events.contains { if case .entropy = $0 { return true } else { return false } }, "entropy is in the log")
        XCTAssertEqual(events.filter { if case .block = $0 { return true } else { return false } }.count, 3, "three disk requests checked")
        // Other load on the host meanwhile: two busy processes.
        let burners = try (0..<2).map { _ in try Session("/bin/sh", ["-c", "while :; do :; done"]) }
        defer { for b in burners { kill(b.pid, SIGKILL); _ = b.wait(timeout: 5) } }
        for i in 1...20 {
            let disk = try copy(pristine, i)
            let r = try Harness.skiff(["replay", dir, "--disk", disk], timeout: 120)
            XCTAssertEqual(r.status, 0, "replay \(i): \(r.stderr)")
            XCTAssertEqual(r.stdout, recorded, "replay \(i) printed what the recording printed")
            XCTAssertTrue(r.stderr.contains("replay matched all"), "replay \(i): \(r.stderr)")
            XCTAssertEqual(FileManager.default.contents(atPath: disk), FileManager.default.contents(atPath: recordedDisk), "replay \(i)'s disk")
            try? FileManager.default.removeItem(atPath: disk)
        }
    }

    /// A disk changed between record and replay: the replay stops at the
    /// read of the changed sector, saying its data differs.
    func testChangedDiskStopsAtItsRead() throws {
        let dir = directory("disk")
        let pristine = try pristineDisk(dir)
        defer { for p in [dir, pristine, pristine + ".0", pristine + ".1"] { try? FileManager.default.removeItem(atPath: p) } }
        _ = try record(dir, input: "q", disk: try copy(pristine, 0))
        let changed = try copy(pristine, 1)
        let fd = open(changed, O_WRONLY)
        var b: UInt8 = 0x5a
        XCTAssertEqual(pwrite(fd, &b, 1, 3 * 512 + 7), 1)
        close(fd)
        let r = try Harness.skiff(["replay", dir, "--disk", changed], timeout: 60)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("virtio-blk read of disk 0, sector 0, 4096 bytes") && r.stderr.contains("data crc"), r.stderr)
        XCTAssertFalse(r.stdout.contains("blk read="), "it stopped at the read, before the guest printed it")
        // And a wrong number of disks is refused before the guest runs.
        XCTAssertEqual(try Harness.skiff(["replay", dir, "--disk", changed, "--disk", changed], timeout: 60).status, 2)
    }

    /// One input byte changed (the log rewritten with its checksums made
    /// right): the replay stops at the first event after it that differs,
    /// exit 1, naming the event and the vCPU's place.
    func testChangedInputStopsAtTheFirstDivergentEvent() throws {
        let dir = directory("changed")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try record(dir)
        let path = dir + "/events"
        let (header, events) = try EventLog.read(path)
        guard let i = events.firstIndex(where: { if case .consoleInput = $0 { return true } else { return false } }),
              case .consoleInput(let exit, var bytes) = events[i] else { return XCTFail("no input recorded") }
        bytes[0] ^= 0x01
        var changed = events
        changed[i] = .consoleInput(exit: exit, bytes: bytes)
        var (out, crc) = EventLog.encodeHeader(header)
        for e in changed { let (b, c) = EventLog.encode(e, previous: crc); out += b; crc = c }
        try Data(out).write(to: URL(fileURLWithPath: path))
        let r = try Harness.skiff(["replay", dir], timeout: 120)
        XCTAssertEqual(r.status, 1, r.stderr)
        let line = r.stderrLines.first { $0.contains("replay diverged") } ?? ""
        XCTAssertTrue(line.contains("event ") && line.contains("rip 0x"), r.stderr)
        // Never later than the first event after the input that depends on it.
        let number = Int(line.split(separator: "event ").dropFirst().first?.prefix { $0.isNumber } ?? "") ?? -1
        XCTAssertGreaterThan(number, i + 1, r.stderr)
        XCTAssertLessThanOrEqual(number, changed.count, r.stderr)
    }

    /// Truncated, corrupt, foreign and other-format logs, and a changed
    /// kernel: exit 2, one line, and the guest never runs.
    func testBadLogsAreRefused() throws {
        let dir = directory("bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try record(dir, input: "q")
        let path = dir + "/events"
        let good = try Data(contentsOf: URL(fileURLWithPath: path))
        var cases: [(String, Data)] = [
            ("truncated", good.prefix(good.count - 3)),
            ("cut at a record", good.prefix(good.count / 2)),
            ("empty", Data()),
            ("foreign", Data("SKIFFSTA and then something else".utf8)),
        ]
        var flipped = good; flipped[good.count / 2] ^= 0x08
        cases.append(("corrupt", flipped))
        var other = good; other[8] = 7
        cases.append(("another format", other))
        for (what, bytes) in cases {
            try bytes.write(to: URL(fileURLWithPath: path))
            let r = try Harness.skiff(["replay", dir], timeout: 60)
            XCTAssertEqual(r.status, 2, "\(what): \(r.stderr)")
            XCTAssertEqual(r.stderrLines.count, 1, "\(what): \(r.stderr)")
            XCTAssertFalse(r.stdout.contains("REPLAY-START"), what)
        }
        XCTAssertEqual(try Harness.skiff(["replay", dir + "/nothing"], timeout: 60).status, 2)
    }

    /// A host whose CPU differs in a bit the guest reads (on PVM hosts the
    /// guest reads the host's CPUID natively): the recording keeps its
    /// host's CPUID, and a replay elsewhere stops before its first event,
    /// naming the leaf, the register and the bits. The other host is the
    /// recorded CPUID with one bit of leaf 7's EDX flipped.
    func testAHostWhoseCPUDiffersStopsBeforeTheFirstEvent() throws {
        let dir = directory("cpu")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try record(dir, input: "q")
        let path = dir + "/events"
        let (header, events) = try EventLog.read(path)
        var other = header
        other[other.count - 1] ^= 0x01 // the last leaf is 7.0: its EDX's top byte, bit 24
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let w = try EventLogWriter(fd: fd, path: path, header: other)
        for e in events { try w.append(e) }
        try w.finish()
        close(fd)
        let r = try Harness.skiff(["replay", dir], timeout: 60)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("replay diverged: before event 1: this host's CPUID leaf 0x7.0 EDX"), r.stderr)
        XCTAssertTrue(r.stderr.contains("bits 0x1000000 differ"), r.stderr)
        XCTAssertFalse(r.stdout.contains("REPLAY-START"), "it stopped before the guest ran")
    }

    /// `skiff run --deterministic` without input: the same output each time.
    func testDeterministicRunsAreTheSame() throws {
        let outs = try (0..<3).map { _ in
            try Harness.skiff(["run", "--deterministic", "--kernel", Harness.probe("replay"), "--memory", "16", "--cmdline", "noinput"], timeout: 60)
        }
        for r in outs { XCTAssertEqual(r.status, 0, r.stderr) }
        XCTAssertTrue(outs[0].stdout.contains("REPLAY-DONE"), outs[0].stdout)
        XCTAssertEqual(Set(outs.map(\.stdout)).count, 1, outs.map(\.stdout).joined(separator: "\n---\n"))
        let r = try Harness.skiff(["run", "--deterministic", "--cpus", "2", "--kernel", Harness.probe("replay")], timeout: 60)
        XCTAssertEqual(r.status, 2, r.stderr)
    }
}
