import Foundation
import XCTest

/// Issue 13, acceptance 2 (recorded at boot): Skiff's Linux kernel and its
/// busybox shell on the deterministic machine. A session typed while it
/// records (commands, entropy from virtio-rng, a `sleep`, a block written
/// to the virtio-blk disk and read back past the page cache, a power-off)
/// replays on a fresh copy of the disk: the same console output byte for
/// byte, every event and checkpoint (registers and all of RAM) matched,
/// the same disk at the end. Once here (40 s of CI); bench/replay replays
/// Linux sessions again, and ReplayTests replays the probe 20 times.
final class LinuxReplayTests: XCTestCase {
    func testLinuxSessionReplaysByteForByte() throws {
        _ = try Harness.kernelDirectory()
        let dir = NSTemporaryDirectory() + "/skiff-linux-replay-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pristine = dir + "/disk"
        try Data(count: 4 << 20).write(to: URL(fileURLWithPath: pristine))
        func copy(_ n: Int) throws -> String {
            let p = dir + "/disk.\(n)"
            try FileManager.default.copyItem(atPath: pristine, toPath: p)
            return p
        }
        let recordedDisk = try copy(0)
        let log = dir + "/rec"
        let s = try Session(Harness.skiff, ["record", log, "--rng", "--disk", recordedDisk])
        defer { s.signal(SIGKILL) }
        XCTAssertTrue(s.waitFor("/ # ", timeout: 180), s.stdout + s.stderr)
        // The shell asks the terminal where its cursor is (ESC [6n) and may
        // take the first line typed for the answer: a first command, until it runs.
        var ready = false
        for _ in 0..<5 where !ready {
            s.send("echo $((40+0))done\n")
            ready = s.waitFor("40done", timeout: 5)
        }
        XCTAssertTrue(ready, s.stdout.suffix(2000).debugDescription)
        // Each command's marker is printed by arithmetic, so the echo of what was typed cannot match it.
        let session: [(String, String)] = [
            ("echo hello; uname -r; echo $((40+1))done", "41done"),
            ("head -c 16 /dev/urandom | od -An -tx1; echo $((40+2))done", "42done"),
            ("sleep 1; echo $((40+3))done", "43done"),
            ("echo skiff-replay-data | dd of=/dev/vda conv=fsync 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches; "
             + "dd if=/dev/vda bs=17 count=1 2>/dev/null; echo; echo $((40+4))done", "44done"),
        ]
        for (command, marker) in session {
            s.send(command + "\n")
            XCTAssertTrue(s.waitFor(marker, timeout: 60), "\(command): \(s.stdout.suffix(2000))")
        }
        s.send("poweroff -f\n")
        let r = s.wait(timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("recorded "), r.stderr)
        XCTAssertTrue(r.stdout.contains("\nskiff-replay-data\r\n44done"), "the block came back from the disk: \(r.stdout.suffix(1500))")
        // Lines end in "\r\n", one Character: split on newlines, not on "\n".
        let entropy = r.stdout.split(whereSeparator: \.isNewline).filter { line in
            let words = line.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
            return words.count == 16 && words.allSatisfy { $0.count == 2 && UInt8($0, radix: 16) != nil }
        }
        XCTAssertEqual(entropy.count, 1, "16 bytes of entropy: \(r.stdout.suffix(1500).debugDescription)")
        let recordedBytes = FileManager.default.contents(atPath: recordedDisk)
        XCTAssertNotEqual(recordedBytes, FileManager.default.contents(atPath: pristine), "the guest wrote the disk")
        let disk = try copy(1)
        let p = try Harness.skiff(["replay", log, "--disk", disk], timeout: 600)
        XCTAssertEqual(p.status, 0, "replay: \(p.stderr)")
        XCTAssertTrue(p.stderr.contains("replay matched all"), p.stderr)
        XCTAssertEqual(p.stdout, r.stdout, "the replay printed what the recording printed")
        XCTAssertEqual(FileManager.default.contents(atPath: disk), recordedBytes, "the replay's disk")
    }
}
