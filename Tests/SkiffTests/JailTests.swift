import Foundation
import XCTest

/// The jail (the default as root) and the seccomp filters, inspected from
/// the host while a probe guest runs.
final class JailTests: XCTestCase {
    override func setUpWithError() throws {
        guard geteuid() == 0 else { throw XCTSkip("the jail needs root") }
    }

    private func status(_ pid: pid_t) throws -> [String: String] {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    /// Everything under a directory tree, as paths relative to it (find(1):
    /// Foundation's enumerator does not walk /proc/PID/root).
    private func tree(_ root: String) throws -> [String] {
        let r = try Harness.run("/usr/bin/find", [root + "/", "-mindepth", "1"])
        return r.stdout.split(separator: "\n").map { String($0.dropFirst(root.count + 1)) }.sorted()
    }

    func testJailedVMMHasNoPrivilegesAndOnlyItsResources() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("skiff-jail-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        let control = dir + "/control.sock", vsock = dir + "/v.sock"
        let s = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("wait"), "--disk", disk, "--rng",
                                            "--vsock", "cid=3,socket=\(vsock)", "--control-socket", control])
        defer { s.signal(SIGKILL) }
        XCTAssertTrue(s.waitFor("WAITING", timeout: 10), s.stderr)
        let vmm = s.vmmPID()
        XCTAssertNotEqual(vmm, s.pid, "the VMM runs in a child of the launcher")
        let st = try status(vmm)
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            XCTAssertEqual(st[cap], "0000000000000000", "\(cap) of the VMM")
        }
        XCTAssertEqual(st["Uid"]?.split(separator: "\t").map(String.init), ["65534", "65534", "65534", "65534"])
        XCTAssertEqual(st["Gid"]?.split(separator: "\t").map(String.init), ["65534", "65534", "65534", "65534"])
        XCTAssertEqual(st["Groups"], "")
        XCTAssertEqual(st["NoNewPrivs"], "1")
        XCTAssertEqual(st["Seccomp"], "2")
        XCTAssertEqual(st["NSpid"]?.split(separator: "\t").last, "1", "PID 1 of its own PID namespace")
        for ns in ["mnt", "pid", "ipc", "uts", "net"] {
            let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(ns)")
            let its = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(vmm)/ns/\(ns)")
            XCTAssertNotEqual(mine, its, "\(ns) namespace")
        }
        // Its root: nothing but the vsock socket's directory (bound for the
        // guest's connections to <socket>_<port>), which holds this test's files.
        let components = dir.split(separator: "/").map(String.init)
        let expected = (1...components.count).map { components.prefix($0).joined(separator: "/") }
        let visible = try tree("/proc/\(vmm)/root").filter { !$0.hasPrefix(String(dir.dropFirst()) + "/") }
        XCTAssertEqual(visible, expected, "the VMM's root holds only the socket directory")
        // Its descriptors: stdio, KVM's, its disk, eventfds, its two listeners, its pagemap.
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(vmm)/fd")
        var kinds: [String] = []
        for fd in fds {
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(vmm)/fd/\(fd)")) ?? "?"
            if Int(fd)! <= 2 { continue }
            if target == "/dev/kvm" || target.hasPrefix("anon_inode:kvm-vm") || target.hasPrefix("anon_inode:kvm-vcpu")
                || target == "anon_inode:[eventfd]" || target == disk || target.hasPrefix("socket:")
                || target.hasSuffix("/pagemap") {
                kinds.append(target.hasPrefix("socket:") ? "socket" : target)
                continue
            }
            XCTFail("the VMM holds an unexpected descriptor \(fd) -> \(target)")
        }
        XCTAssertEqual(kinds.filter { $0 == "socket" }.count, 2, "the vsock and control listeners")
        XCTAssertTrue(kinds.contains(disk))
        let cgroup = try String(contentsOfFile: "/proc/\(vmm)/cgroup", encoding: .utf8)
        if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/unified/cgroup.procs") || FileManager.default.fileExists(atPath: "/sys/fs/cgroup/cgroup.procs") {
            XCTAssertTrue(cgroup.contains("/skiff/vm-\(s.pid)"), cgroup)
        }

        // The guest still works through it: the control socket answers.
        let r = try Harness.skiff(["status", control])
        XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "running", r.stderr)

        s.signal(SIGTERM)
        let done = s.wait(timeout: 5)
        XCTAssertEqual(done.status, 0, done.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: control), "control socket removed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: vsock), "vsock socket removed")
        for parent in ["/sys/fs/cgroup/unified/skiff", "/sys/fs/cgroup/skiff"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: parent + "/vm-\(s.pid)"), "cgroup removed")
        }
    }

    /// Under the filter, a thread that makes a call outside its role's list
    /// ends the VMM with one line naming the call and the thread; another VM
    /// running beside it is untouched.
    func testForbiddenSystemCallEndsTheVMMWithOneLine() throws {
        let bystander = try Session(Harness.skiff, ["run", "--kernel", Harness.probe("wait")])
        defer { bystander.signal(SIGKILL) }
        XCTAssertTrue(bystander.waitFor("WAITING", timeout: 10))
        for (role, extra) in [("vcpu", [String]()), ("main", []), ("virtio-rng", ["--rng"])] {
            for jail in [true, false] {
                let kernel = Harness.probe(role == "virtio-rng" ? "rng" : "wait")
                let r = try Harness.skiff(["run", "--kernel", kernel, "--test-seccomp-violation", role] + extra + (jail ? [] : ["--no-jail"]),
                                          timeout: 20)
                XCTAssertEqual(r.status, 1, "\(role) jail=\(jail): \(r.stderr)")
                XCTAssertEqual(r.stderrLines, ["skiff: seccomp: thread \(role == "vcpu" ? "vcpu0" : role) made a forbidden system call: ptrace"],
                               "\(role) jail=\(jail)")
            }
        }
        XCTAssertTrue(bystander.isRunning)
        bystander.signal(SIGTERM)
        XCTAssertEqual(bystander.wait(timeout: 5).status, 0)
    }

    /// Without the test hook no thread trips its filter on the probe
    /// guests' paths (the Linux tiers cover the rest).
    func testFilteredVMMRunsEveryDevice() throws {
        let disk = try Harness.temporaryFile("jail-blk.img", [UInt8](repeating: 0, count: 1 << 20))
        let r = try Harness.skiff(["run", "--kernel", Harness.probe("blk"), "--disk", disk], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(r.stderr.contains("seccomp"), r.stderr)
    }
}
