import Foundation
import XCTest

/// Tiers 2 and 3 (PLATFORM.md): Skiff's default kernel, booted from its
/// ELF through the PVH entry, with the busybox initramfs Skiff builds; and
/// Debian's own busybox running in guest user space. Guest kernel code is
/// emulated on PVM hosts, so each boot takes tens of seconds here: every
/// check that can share a boot does.
final class LinuxGuestTests: XCTestCase {
    static let bootTimeout: Double = 300

    func testSMPGuestWith512MiBRunsUserSpaceAndIdlesCheaply() throws {
        _ = try Harness.kernelDirectory()
        let s = try Session(Harness.skiff, ["run", "--cpus", "2", "--memory", "512"])
        defer { if s.process.isRunning { s.signal(SIGKILL) } }
        let t0 = Date()
        XCTAssertTrue(s.waitFor("Run /init as init process", timeout: Self.bootTimeout), "no /init: \(s.stdout.suffix(500)) \(s.stderr)")
        let toInit = Date().timeIntervalSince(t0)
        XCTAssertTrue(s.waitFor("skiff guest:", timeout: 120), s.stdout.suffix(500).description)
        let log = s.stdout

        // Memory: the kernel's own count of what the e820 map gave it.
        let total = try XCTUnwrap(log.firstMatch(of: /Memory: \d+K\/(\d+)K available/)?.1).description
        let kib = try XCTUnwrap(Int(total))
        XCTAssertTrue((500 * 1024)...(512 * 1024) ~= kib, "kernel sees \(kib) KiB of 512 MiB")
        XCTAssertTrue(log.contains("smp: Brought up 1 node, 2 CPUs"), "SMP bring-up line missing")
        XCTAssertTrue(log.contains("2 CPU(s)"), log.suffix(300).description)

        // Idle: the shell waits on the console; Skiff must not spin.
        XCTAssertTrue(s.waitFor("/ # ", timeout: 60), s.stdout.suffix(300).description)
        sleep(3)
        let c0 = s.cpuSeconds(), w0 = Date()
        sleep(10)
        let idle = (s.cpuSeconds() - c0) / Date().timeIntervalSince(w0)
        XCTAssertLessThan(idle, 0.05, "idle guest costs \(Int(idle * 100))% of a CPU")

        // User space: unmodified Debian busybox runs commands and answers.
        // The arithmetic and the end marker are computed in the guest, so
        // the terminal's echo of the command line cannot satisfy them.
        s.send("echo $((6*7)) user-space-ok; nproc; uname -r; echo end-$((1+1))\n")
        XCTAssertTrue(s.waitFor("end-2", timeout: 60), s.stdout.suffix(300).description)
        XCTAssertTrue(s.stdout.contains("42 user-space-ok\r\n2\r\n6.1.192-skiff\r\nend-2"), s.stdout.suffix(300).description)

        s.send("reboot -f\n")
        let r = s.wait(timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        print("linux-guest: /init after \(Int(toInit)) s; idle CPU \(String(format: "%.1f", idle * 100))%; total \(Int(r.seconds)) s")
    }

    func testCommandFromTheKernelCommandLineOnOneCPU() throws {
        _ = try Harness.kernelDirectory()
        let cmdline = #"console=ttyS0 reboot=k panic=-1 quiet skiff_run="grep -c ^processor /proc/cpuinfo; ls /bin/busybox""#
        let r = try Harness.skiff(["run", "--cmdline", cmdline], timeout: Self.bootTimeout)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("skiff guest: Linux 6.1.192-skiff, 1 CPU(s)"), r.stdout.suffix(500).description)
        XCTAssertTrue(r.stdout.contains("1\r\n/bin/busybox\r\nskiff: exit 0"), r.stdout.suffix(500).description)
    }

    /// The bzImage path: boot protocol header, zero page, 64-bit entry; the
    /// kernel's own decompressor then runs (about two minutes of emulated
    /// CPL0 code on PVM hosts) and hands over to the kernel proper.
    func testBzImageBootsThroughItsDecompressor() throws {
        let dir = try Harness.kernelDirectory()
        let s = try Session(Harness.skiff, ["run", "--kernel", dir + "/bzImage",
                                           "--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1"])
        defer { if s.process.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("Decompressing Linux", timeout: 30), s.stdout.suffix(300).description + s.stderr)
        XCTAssertTrue(s.waitFor("Linux version 6.1.192-skiff", timeout: Self.bootTimeout), s.stdout.suffix(300).description + s.stderr)
        XCTAssertTrue(s.waitFor("BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable", timeout: 30), "e820 from the zero page")
        s.signal(SIGTERM)
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
    }
}
