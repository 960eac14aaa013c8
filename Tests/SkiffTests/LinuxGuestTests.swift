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
        defer { if s.isRunning { s.signal(SIGKILL) } }
        let t0 = Date()
        XCTAssertTrue(s.waitFor("Run /init as init process", timeout: Self.bootTimeout), "no /init: \(s.stdout.suffix(500)) \(s.stderr)")
        let toInit = Date().timeIntervalSince(t0)
        // The whole banner line: output arrives in pieces.
        XCTAssertTrue(s.waitFor("CPU(s)", timeout: 120), s.stdout.suffix(500).description)
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

        // Host input ends: Skiff sends the guest ^D, the shell exits, /init reboots.
        s.closeInput()
        let r = s.wait(timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        print("linux-guest: /init after \(Int(toInit)) s; idle CPU \(String(format: "%.1f", idle * 100))%; total \(Int(r.seconds)) s")
    }

    /// A command from the kernel command line (appended to the default
    /// one), its exit status skiff's own, on one CPU, with a 64 MiB
    /// balloon (without deflate-on-OOM Linux takes the ballooned pages out
    /// of MemTotal) and virtio-rng feeding the kernel's entropy pool.
    func testCommandLineRunWithBalloonAndEntropy() throws {
        _ = try Harness.kernelDirectory()
        // --append: after the default command line. The command's status is skiff's.
        // The balloon inflates after its driver probes, which on a loaded
        // host can be after the command starts: it waits (up to 60 s) for
        // MemTotal to leave the 200000s kB before reading it.
        let command = #"quiet skiff_run="grep -c ^processor /proc/cpuinfo; ls /bin/busybox; i=0; while grep -q 'MemTotal: *2[0-9][0-9][0-9][0-9][0-9] kB' /proc/meminfo && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; grep MemTotal /proc/meminfo; cat /sys/class/misc/hw_random/rng_current; exit 3""#
        let r = try Harness.skiff(["run", "--memory", "256", "--balloon", "size=64,no-deflate-on-oom", "--rng", "--append", command],
                                  timeout: Self.bootTimeout)
        XCTAssertEqual(r.status, 3, r.stderr)
        XCTAssertTrue(r.stdout.contains("skiff guest: Linux 6.1.192-skiff, 1 CPU(s)"), r.stdout.suffix(500).description)
        XCTAssertTrue(r.stdout.contains("1\r\n/bin/busybox\r\n"), r.stdout.suffix(500).description)
        XCTAssertTrue(r.stdout.contains("virtio_rng"), "hw_random is not virtio: \(r.stdout.suffix(300))")
        XCTAssertTrue(r.stdout.contains("skiff: exit 3"), r.stdout.suffix(500).description)
        let kib = try XCTUnwrap(r.stdout.firstMatch(of: /MemTotal:\s+(\d+) kB/).flatMap { Int($0.1) })
        // 256 MiB less the kernel's own (about 15 MiB) and the balloon's 64.
        XCTAssertTrue((150 * 1024)...(200 * 1024) ~= kib, "MemTotal \(kib) kB: the balloon did not inflate")
    }

    /// The bzImage path: boot protocol header, zero page, 64-bit entry; the
    /// kernel's own decompressor then runs (about two minutes of emulated
    /// CPL0 code on PVM hosts) and hands over to the kernel proper.
    func testBzImageBootsThroughItsDecompressor() throws {
        let dir = try Harness.kernelDirectory()
        let s = try Session(Harness.skiff, ["run", "--kernel", dir + "/bzImage",
                                           "--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1"])
        defer { if s.isRunning { s.signal(SIGKILL) } }
        XCTAssertTrue(s.waitFor("Decompressing Linux", timeout: 30), s.stdout.suffix(300).description + s.stderr)
        XCTAssertTrue(s.waitFor("Linux version 6.1.192-skiff", timeout: Self.bootTimeout), s.stdout.suffix(300).description + s.stderr)
        XCTAssertTrue(s.waitFor("BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable", timeout: 30), "e820 from the zero page")
        s.signal(SIGTERM)
        let r = s.wait(timeout: 10)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// Skiff's kernel mounts an ext4 root (made by mke2fs from a folder)
    /// from virtio-blk read-write, runs busybox from it, writes a file and
    /// reboots; the host then sees the file, the mount counted, and a clean
    /// filesystem.
    func testExt4RootOnVirtioBlock() throws {
        let dir = try Harness.kernelDirectory()
        let image = try ext4Root("""
        #!/bin/sh
        /bin/busybox mount -t proc proc /proc
        echo "root-init: $(/bin/busybox grep ' / ' /proc/mounts)"
        echo written-by-guest > /hello
        /bin/busybox sync
        /bin/busybox reboot -f

        """)

        let r = try Harness.skiff(["run", "--kernel", dir + "/vmlinux", "--disk", image,
                                   "--cmdline", "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init"], timeout: Self.bootTimeout)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("virtio_blk virtio0: [vda] 131072 512-byte logical blocks"), r.stdout.suffix(800).description)
        XCTAssertTrue(r.stdout.contains("root-init: /dev/root / ext4 rw"), r.stdout.suffix(800).description)

        let cat = try Harness.run("/sbin/debugfs", ["-R", "cat /hello", image])
        XCTAssertEqual(cat.stdout, "written-by-guest\n", cat.stderr)
        let header = try Harness.run("/sbin/dumpe2fs", ["-h", image])
        XCTAssertTrue(header.stdout.contains("Mount count:              1\n"), "the guest's mount was not recorded")
        let fsck = try Harness.run("/sbin/e2fsck", ["-fn", image])
        XCTAssertEqual(fsck.status, 0, "e2fsck: \(fsck.stdout) \(fsck.stderr)")
    }

    /// virtio-net on a TAP in a network namespace made for the test, with
    /// dnsmasq serving DHCP on the host end: the kernel configures eth0
    /// itself (ip=dhcp), then busybox pings the host end.
    func testKernelDHCPOverVirtioNet() throws {
        _ = try Harness.kernelDirectory()
        let ns = "skiff-test-\(getpid())"
        func ip(_ args: [String]) throws {
            let r = try Harness.run("/usr/sbin/ip", args)
            XCTAssertEqual(r.status, 0, "ip \(args): \(r.stderr)")
        }
        try ip(["netns", "add", ns])
        defer { _ = try? Harness.run("/usr/sbin/ip", ["netns", "del", ns]) }
        try ip(["netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        try ip(["netns", "exec", ns, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap"])
        try ip(["netns", "exec", ns, "ip", "addr", "add", "10.0.2.2/24", "dev", "tap0"])
        try ip(["netns", "exec", ns, "ip", "link", "set", "tap0", "up"])
        let dnsmasq = try Session("/usr/sbin/ip", ["netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                                                   "--port=0", "--interface=tap0", "--bind-interfaces", "--log-dhcp",
                                                   "--dhcp-range=10.0.2.15,10.0.2.15,255.255.255.0", "--pid-file=",
                                                   "--log-facility=-", "--dhcp-leasefile=/tmp/\(ns).leases"])
        defer { dnsmasq.signal(SIGTERM); _ = dnsmasq.wait(timeout: 5); unlink("/tmp/\(ns).leases") }

        let cmdline = #"console=ttyS0 reboot=k panic=-1 ip=dhcp skiff_run="ping -c 2 10.0.2.2""#
        let r = try Harness.run("/usr/sbin/ip", ["netns", "exec", ns, Harness.skiff, "run", "--net", "tap=tap0,mac=52:54:00:ab:cd:ef",
                                                 "--cmdline", cmdline], timeout: Self.bootTimeout)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("IP-Config: Got DHCP answer from 10.0.2.2, my address is 10.0.2.15"), r.stdout.suffix(1500).description)
        XCTAssertTrue(r.stdout.contains("IP-Config: Complete:"), r.stdout.suffix(1500).description)
        XCTAssertTrue(r.stdout.contains("hwaddr=52:54:00:ab:cd:ef"), r.stdout.suffix(1500).description)
        XCTAssertTrue(r.stdout.contains("2 packets transmitted, 2 packets received"), r.stdout.suffix(800).description)
    }

    /// Tier 2 snapshot: Skiff's kernel booted to a shell on an ext4 root
    /// (dirty pages tracked), snapshotted; then a 4 MiB file is read through
    /// virtio-blk (the device writes those pages, not the guest) and a diff
    /// snapshot taken, and the VM killed. The guest restored from the diff
    /// over its base answers at once, finds the same bytes in its page
    /// cache, writes a file, remounts read-only and reboots; the host's
    /// e2fsck is clean and sees the file.
    func testSnapshotOfABootedKernelRestoresWithItsDisk() throws {
        let dir = try Harness.kernelDirectory()
        let data = Data((0..<(4 << 20)).map { _ in UInt8.random(in: 0...255) })
        let dataFile = try Harness.temporaryFile("lsnap-data", [UInt8](data))
        let md5 = try Harness.run("/usr/bin/md5sum", [dataFile]).stdout.prefix(32)
        let image = try ext4Root("""
        #!/bin/sh
        /bin/busybox mount -t proc proc /proc
        echo "root-ready $(/bin/busybox grep ' / ' /proc/mounts)"
        exec /bin/sh

        """, files: ["data": data])
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-lsnap-\(getpid())").path
        try? FileManager.default.removeItem(atPath: scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let socket = scratch + "/ctl", base = scratch + "/base", diff = scratch + "/diff"
        let s = try Session(Harness.skiff, ["run", "--kernel", dir + "/vmlinux", "--disk", image, "--control-socket", socket,
                                            "--track-dirty-pages", "--cmdline", "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init"])
        XCTAssertTrue(s.waitFor("root-ready /dev/root / ext4 rw", timeout: Self.bootTimeout), s.stdout.suffix(500) + s.stderr)
        s.send("echo before-$((40+2))\n")
        XCTAssertTrue(s.waitFor("before-42", timeout: 60), s.stdout.suffix(300).description)
        XCTAssertEqual(try Harness.skiff(["snapshot", socket, base], timeout: 60).status, 0)
        s.send("/bin/busybox md5sum /data; echo read-$((5*5))\n")
        XCTAssertTrue(s.waitFor("read-25", timeout: 60), s.stdout.suffix(300).description)
        XCTAssertTrue(s.stdout.contains(md5 + "  /data"), s.stdout.suffix(300).description)
        let snapshot = try Harness.skiff(["snapshot", socket, diff, "--diff"], timeout: 60)
        XCTAssertEqual(snapshot.status, 0, snapshot.stderr)
        print("Linux guest: \(snapshot.stdout)")
        s.signal(SIGKILL)
        _ = s.wait(timeout: 10)

        let started = Date()
        let r = try Session(Harness.skiff, ["restore", diff])
        r.send("echo after-$((6*7))\n")
        XCTAssertTrue(r.waitFor("after-42", timeout: 30), r.stdout.suffix(300) + r.stderr)
        let answered = Date().timeIntervalSince(started)
        XCTAssertLessThan(answered, 10, "the restored guest took \(answered) s to answer")
        print("restored guest answered in \(String(format: "%.2f", answered)) s")
        r.send("/bin/busybox md5sum /data; echo again-$((6*6))\n")
        XCTAssertTrue(r.waitFor("again-36", timeout: 60), r.stdout.suffix(300).description)
        XCTAssertTrue(r.stdout.contains(md5 + "  /data"), "page cache filled by the device differs after restore: \(r.stdout.suffix(300))")
        r.send("echo written-after-restore > /hello; /bin/busybox mount -o remount,ro /; /bin/busybox sync; /bin/busybox reboot -f\n")
        let done = r.wait(timeout: 120)
        XCTAssertEqual(done.status, 0, done.stderr)

        let cat = try Harness.run("/sbin/debugfs", ["-R", "cat /hello", image])
        XCTAssertEqual(cat.stdout, "written-after-restore\n", cat.stderr)
        let fsck = try Harness.run("/sbin/e2fsck", ["-fn", image])
        XCTAssertEqual(fsck.status, 0, "e2fsck: \(fsck.stdout) \(fsck.stderr)")
    }
}
