import Foundation
import XCTest

/// Tier 1 (PLATFORM.md): tiny guests that run natively here, in milliseconds.
final class ProbeGuestTests: XCTestCase {
    func testNullProbePrintsMarkerAndResets() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("null")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "SKIFF-PROBE-OK\n")
        XCTAssertEqual(r.stderr, "")
    }

    func testRAMAtTheTopOfA3GiBGuestAcrossTheHole() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("memtop"), "--memory", "3072"])
        XCTAssertEqual(r.status, 0, r.stderr)
        // 2 GiB below the hole, 1 GiB above 4 GiB: RAM ends at 5 GiB.
        XCTAssertEqual(r.stdout, "MEMTOP 0000000140000000 OK\n")
    }

    func testFourVcpusStartAndReportTheirAPICIDs() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("smp"), "--cpus", "4"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let ids = Set(r.stdout.split(separator: "\n").filter { $0.hasPrefix("apic-id ") })
        XCTAssertEqual(ids, ["apic-id 00", "apic-id 01", "apic-id 02", "apic-id 03"], r.stdout)
        XCTAssertTrue(r.stdout.hasSuffix("cpus-up 04\n"), r.stdout)
    }

    func testEmulationFailureStopsWithOneLineAndStatus1() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("emulation-failure"), "--cpu-template", "pvm"])
        guard FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") else {
            // On VMX/SVM hosts crc32 simply runs and the probe resets.
            XCTAssertEqual(r.status, 0, r.stderr); return
        }
        XCTAssertEqual(r.status, 1)
        XCTAssertFalse(r.signaled)
        XCTAssertEqual(r.stderrLines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("emulation failure on vCPU 0"), r.stderr)
        XCTAssertTrue(r.stderr.contains("(bytes f2 0f 38 f1 c0 "), r.stderr)
        XCTAssertEqual(r.stdout, "BEFORE-CRC32\n")
    }

    /// int3, a 32-bit iret, popcnt, lsl, stac and clac at CPL0: on PVM hosts
    /// KVM's emulator lacks them and Skiff completes them; the guest sees
    /// what hardware gives (#BP with the address after the int3 pushed).
    func testInstructionsKVMsEmulatorLacksComputeWhatHardwareDoes() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("emulated"), "--cpu-template", "pvm"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 7, r.stdout)
        guard lines.count == 7 else { return }
        let bp = try XCTUnwrap(lines[1].wholeMatch(of: /bp ret=([0-9A-F]{8}) want=([0-9A-F]{8})/), lines[1])
        XCTAssertEqual(bp.1, bp.2, "#BP pushed the wrong return address")
        XCTAssertEqual(Array(lines[2...]), ["back", "popcnt=00000009", "lsl=FFFFFFFF", "ac=00040000", "end"])
    }

    func testTripleFaultStopsTheVM() throws {
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("triple-fault")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "BEFORE-TRIPLE-FAULT\n")
        XCTAssertTrue(r.stderr.contains("triple-faulted"), r.stderr)
    }
}

/// A guest is an attacker from its first instruction.
final class HostileGuestTests: XCTestCase {
    /// SIGTERM stops a running Skiff within 2 s, cleanly.
    func stopWithSIGTERM(_ s: Session, file: StaticString = #filePath, line: UInt = #line) -> Harness.Result {
        let t0 = Date()
        s.signal(SIGTERM)
        let r = s.wait(timeout: 5)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 2, file: file, line: line)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertFalse(r.signaled, file: file, line: line)
        return r
    }

    func testGarbageToEveryPortAndMMIOLeavesSkiffAlive() throws {
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("hostile-io")])
        XCTAssertTrue(s.waitFor("HOSTILE-DONE", timeout: 120), "probe did not finish: \(s.stdout.suffix(200))")
        XCTAssertTrue(s.isRunning, "skiff died: \(s.stderr)")
        let r = stopWithSIGTERM(s)
        XCTAssertTrue(r.stderr.contains("SIGTERM"), r.stderr)
    }

    func testExitStormFor10SecondsLeavesSkiffServing() throws {
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("exit-storm")])
        sleep(8)
        let before = s.stdout.count
        sleep(2)
        let after = s.stdout.count
        XCTAssertTrue(s.isRunning, "skiff died: \(s.stderr)")
        XCTAssertGreaterThan(after, before, "no progress in the last 2 s: the guest's exits are not being served")
        _ = stopWithSIGTERM(s)
    }
}
