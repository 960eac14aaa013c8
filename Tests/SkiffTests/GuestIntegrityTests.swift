import Foundation
import XCTest

/// Guest integrity (issue 9): a guest computes what the host computes.
/// On PVM hosts guest user mode sees the host's XCR0 (AVX, maybe AVX-512)
/// whatever the VMM sets, so the guest kernel must save and restore all
/// of that state on a context switch (XSAVE), not just the FXSAVE area.
/// Each test is one boot of a real kernel (tens of seconds here).
final class GuestIntegrityTests: XCTestCase {
    static let timeout: Double = 900
    static let rootCmdline = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw init=/init"

    struct ProcResult { let proc: Int, checks: Int, mismatches: Int, switched: Int, pkru: Int?, line: String }

    static func vectorResults(_ log: String) -> [ProcResult] {
        log.matches(of: /vector-check: proc (\d+): checks (\d+) mismatches (\d+) switched (\d+)[^\r\n]*/).map {
            let line = String($0.0)
            let pkru = line.firstMatch(of: /pkru-mismatches (\d+)/).flatMap { Int($0.1) }
            return ProcResult(proc: Int($0.1)!, checks: Int($0.2)!, mismatches: Int($0.3)!, switched: Int($0.4)!,
                              pkru: line.contains("(no pkru)") ? nil : pkru, line: line)
        }
    }

    static func lines(_ log: String, containing words: [String]) -> [Substring] {
        log.split(whereSeparator: \.isNewline).filter { line in words.contains { line.contains($0) } }
    }

    /// Boots Skiff's default kernel on an ext4 root whose /init runs
    /// `vector-check PROCS 1000` and reboots; checks every process's line.
    func vectorCheck(cpus: Int, procs: Int, minSwitched: Int) throws {
        let dir = try Harness.kernelDirectory()
        let image = try ext4Root("""
        #!/bin/sh
        /bin/busybox mount -t proc proc /proc
        echo "guest-cpus $(/bin/busybox nproc)"
        /vector-check \(procs) 1000
        echo "vector-check-exit $?"
        /bin/busybox reboot -f

        """, copies: ["vector-check": Harness.linuxProbe("vector-check")])
        let r = try Harness.skiff(["run", "--kernel", dir + "/vmlinux", "--cpus", "\(cpus)", "--disk", image,
                                   "--cmdline", Self.rootCmdline], timeout: Self.timeout)
        XCTAssertEqual(r.status, 0, r.stderr)
        let log = r.stdout
        XCTAssertTrue(log.contains("guest-cpus \(cpus)"), log.suffix(800).description)
        let results = Self.vectorResults(log)
        XCTAssertEqual(results.count, procs, "vector-check lines: \(log.suffix(1500))")
        for p in results {
            XCTAssertEqual(p.checks, 1000, p.line)
            XCTAssertEqual(p.mismatches, 0, "vector registers lost across context switches: \(p.line)")
            XCTAssertGreaterThanOrEqual(p.switched, minSwitched, "too few checks saw a context switch: \(p.line)")
            // PKRU is XSAVE state too, but the guest kernel cannot be told of
            // it here (KVM leaves PKU out, so it enables XCR0 0x7): reported,
            // not asserted (issue 9's note: an open finding).
            if let pkru = p.pkru, pkru > 0 { print("guest-integrity: PKRU not kept per process (\(pkru) of \(p.checks)): \(p.line)") }
        }
        XCTAssertTrue(log.contains("vector-check: total mismatches 0"), log.suffix(800).description)
        XCTAssertTrue(log.contains("vector-check-exit 0"), log.suffix(800).description)
        for line in Self.lines(log, containing: ["vector-check:", "x86/fpu"]) { print("guest-integrity (\(cpus) vCPU): \(line)") }
        // The guest kernel saves the whole extended state: XSAVE with AVX.
        XCTAssertTrue(log.contains("x86/fpu: Enabled xstate features"), "the guest kernel runs without XSAVE: "
                      + Self.lines(log, containing: ["x86/fpu"]).joined(separator: " | "))
        XCTAssertTrue(log.contains("Supporting XSAVE feature 0x004: 'AVX registers'"), "no AVX state in the guest's XSAVE")
    }

    // Measured before XSAVE (Skiff's kernel with `noxsave`), 1000 checks
    // each: 1 vCPU, 2 processes: 835 and 854 mismatches (ymm upper halves,
    // PKRU alike), 1000 and 999 checks switched; 2 vCPUs, 4 processes:
    // 830-896 mismatches, 943-997 switched. The bar of 500 switched checks
    // is well below what preemption gives here.

    /// Two processes on one vCPU keep ymm0-15 (and zmm0-31, k0-7 where the
    /// CPU has AVX-512) across preemption: 0 mismatches in 1000 checks each.
    func testVectorRegistersSurvivePreemptionOnOneVCPU() throws {
        try vectorCheck(cpus: 1, procs: 2, minSwitched: 500)
    }

    /// The same with 2 vCPUs and 4 processes (so migrations too).
    func testVectorRegistersSurvivePreemptionOnTwoVCPUs() throws {
        try vectorCheck(cpus: 2, procs: 4, minSwitched: 500)
    }

    /// 2 MiB, the same every run: lines of words (compressible) and runs
    /// of pseudo-random bytes.
    static func input() -> Data {
        var x: UInt64 = 0x5_1ff_2026
        func next() -> UInt64 {
            x &+= 0x9e37_79b9_7f4a_7c15
            var z = x
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        let words = ["skiff", "guest", "vector", "register", "kernel", "xsave", "context", "switch", "page", "queue",
                     "virtio", "the", "of", "and", "a", "zstd", "openssl", "ymm", "zmm", "opmask", "host", "byte"]
        let size = 2 << 20
        var out = [UInt8]()
        out.reserveCapacity(size + 4096)
        while out.count < size {
            if next() % 4 == 0 {
                for _ in 0..<(next() % 128 + 1) { withUnsafeBytes(of: next()) { out.append(contentsOf: $0) } }
            } else {
                for i in 0..<Int(next() % 200 + 20) {
                    out.append(contentsOf: words[Int(next() % UInt64(words.count))].utf8)
                    out.append(i % 12 == 11 ? 10 : 32)
                }
            }
        }
        return Data(out.prefix(size))
    }

    static let aesKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    static let aesIV = "f0e0d0c0b0a090807060504030201000"

    /// Debian's zstd and openssl, with their shared libraries, on an ext4
    /// root: four jobs at once (zstd -3 twice, AES-256-CTR twice) on two
    /// vCPUs; each output's sha256 must equal the host's.
    func testDebianProgramsMatchTheHost() throws {
        let dir = try Harness.kernelDirectory()
        let data = Self.input()
        let inputFile = try Harness.temporaryFile("integrity-input", [UInt8](data))
        let zstdArgs = "-q -3 -T1 -c"
        let encArgs = "enc -aes-256-ctr -K \(Self.aesKey) -iv \(Self.aesIV)"
        // The host's own outputs.
        let hostZstd = inputFile + ".zst", hostEnc = inputFile + ".enc"
        let z = try Harness.run("/bin/sh", ["-c", "/usr/bin/zstd \(zstdArgs) \(inputFile) > \(hostZstd)"])
        XCTAssertEqual(z.status, 0, z.stderr)
        let e = try Harness.run("/usr/bin/openssl", encArgs.split(separator: " ").map(String.init) + ["-in", inputFile, "-out", hostEnc])
        XCTAssertEqual(e.status, 0, e.stderr)
        func sha(_ path: String) throws -> String { String(try Harness.run("/usr/bin/sha256sum", [path]).stdout.prefix(64)) }
        let want = ["zstd": try sha(hostZstd), "enc": try sha(hostEnc), "input": try sha(inputFile)]
        defer { for f in [inputFile, hostZstd, hostEnc] { unlink(f) } }

        let image = try ext4Root("""
        #!/bin/sh
        export PATH=/usr/bin:/bin
        /bin/busybox mount -t proc proc /proc
        /bin/busybox mkdir -p /out
        echo "programs-start"
        /usr/bin/zstd \(zstdArgs) /input > /out/zstd1 & z1=$!
        /usr/bin/openssl \(encArgs) -in /input -out /out/enc1 & e1=$!
        /usr/bin/zstd \(zstdArgs) /input > /out/zstd2 & z2=$!
        /usr/bin/openssl \(encArgs) -in /input -out /out/enc2 & e2=$!
        wait $z1; echo "job zstd1 exit $?"
        wait $e1; echo "job enc1 exit $?"
        wait $z2; echo "job zstd2 exit $?"
        wait $e2; echo "job enc2 exit $?"
        /bin/busybox sha256sum /input /out/zstd1 /out/zstd2 /out/enc1 /out/enc2
        echo "programs-done"
        /bin/busybox sync
        /bin/busybox reboot -f

        """, files: ["input": data], programs: ["/usr/bin/zstd", "/usr/bin/openssl"], size: "96M")
        let r = try Harness.skiff(["run", "--kernel", dir + "/vmlinux", "--cpus", "2", "--memory", "512", "--disk", image,
                                   "--cmdline", Self.rootCmdline], timeout: Self.timeout)
        XCTAssertEqual(r.status, 0, r.stderr)
        let log = r.stdout
        XCTAssertTrue(log.contains("programs-done"), log.suffix(1500).description)
        var differ: [String] = []
        for (job, kind) in [("zstd1", "zstd"), ("zstd2", "zstd"), ("enc1", "enc"), ("enc2", "enc")] {
            XCTAssertTrue(log.contains("job \(job) exit 0"), "\(job) failed: \(log.suffix(1500))")
            let got = log.firstMatch(of: try Regex("([0-9a-f]{64})  /out/\(job)"))?.output[1].substring.map(String.init)
            if got != want[kind] { differ.append(job) }
            XCTAssertEqual(got, want[kind], "\(job): the guest's output differs from the host's")
        }
        XCTAssertTrue(log.contains("\(want["input"]!)  /input"), "the input itself differs in the guest")
        print("guest-integrity: programs: \(differ.count) of 4 outputs differ from the host's \(differ)")
    }

    /// Debian's cloud kernel (not built by Skiff: int3 self-test, XSAVE,
    /// POPCNT ... as Debian ships them) boots under `skiff run` to init,
    /// with Skiff's default initramfs. Its user space cannot make system
    /// calls on PVM hosts (init then dies, the kernel panics and resets);
    /// reaching init is the bar. Guest kernel mode is emulated here, so two
    /// pieces of work that only check the kernel itself are left out:
    /// ftrace's check for weak functions (a kworker that looks up every one
    /// of 37,697 mcount sites in kallsyms: about 20 minutes, and it blocks
    /// init) and the crypto self-tests (`cryptomgr.notests`: RSA private-key
    /// test vectors in multi-precision arithmetic, found by sampling the
    /// vCPU's RIP from snapshots of a boot that ran silently for 20 minutes
    /// after its last line). Four more initcalls are skipped for time alone:
    /// `initcall_debug` measured them at 94 s (init_kprobe_trace), 66 s
    /// (cubictcp_register, which parses the kernel's BTF), 35 s
    /// (slab_sysfs_init) and 11 s (blake2s_mod_init, a self-test) of the
    /// 502 s a whole boot took here, and that boot ran each to completion
    /// without an emulation failure. (param_sysfs_init, 17 s, must stay:
    /// without it registering a driver dereferences NULL.)
    static let cloudCmdline = "console=ttyS0 reboot=k panic=-1 cryptomgr.notests initcall_blacklist="
        + "ftrace_check_for_weak_functions,init_kprobe_trace,cubictcp_register,slab_sysfs_init,blake2s_mod_init"

    /// The whole boot to init takes 500 to 900 s of emulated kernel mode
    /// here (884 s on CI's machine), a third of CI's budget: by default the
    /// test stops once the kernel is past its int3 self-test (the SMP
    /// alternatives are freed right after it) with XSAVE on, about a minute
    /// in; `SKIFF_LONG_TESTS=1` waits for `Run /init`.
    func testDebianCloudKernelBootsToInit() throws {
        let fetch = try Harness.run("/bin/bash", [Harness.root.appendingPathComponent("kernel/debian-cloud.sh").path], timeout: 900)
        guard fetch.status == 0 else { throw XCTSkip("Debian's cloud kernel unavailable: \(fetch.stderr.suffix(500))") }
        let vmlinux = fetch.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let initramfs = try Harness.skiff(["initramfs", "path"], timeout: 600).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let s = try Session(Harness.skiff, ["run", "--kernel", vmlinux, "--initrd", initramfs, "--cmdline", Self.cloudCmdline])
        defer { if s.isRunning { s.signal(SIGKILL); _ = s.wait(timeout: 10) } }
        let long = ProcessInfo.processInfo.environment["SKIFF_LONG_TESTS"] == "1"
        let goal = long ? "Run /init as init process" : "Freeing SMP alternatives memory"
        let t0 = Date()
        let reached = s.waitFor(goal, timeout: long ? 1800 : 600)
        let seconds = Date().timeIntervalSince(t0)
        XCTAssertTrue(reached, "Debian's cloud kernel did not reach '\(goal)' in \(Int(seconds)) s: \(s.stdout.suffix(1500)) \(s.stderr)")
        XCTAssertTrue(s.stdout.contains("x86/fpu: Enabled xstate features"), "XSAVE off in the cloud kernel")
        if long { XCTAssertTrue(s.stdout.contains("rtc_cmos rtc_cmos: setting system clock to"), "the RTC was not read") }
        XCTAssertFalse(s.stderr.contains("emulation failure"), s.stderr)
        print("guest-integrity: Debian cloud kernel: '\(goal)' after \(Int(seconds)) s")
        for line in Self.lines(s.stdout, containing: ["x86/fpu: Enabled", "Linux version", "alternatives", "rtc_cmos", "Run /init", "W+X"]) { print("guest-integrity: cloud: \(line)") }
        s.signal(SIGTERM)
        _ = s.wait(timeout: 10)
    }
}
