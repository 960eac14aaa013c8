import Appliance
import CKVM
import Glibc
import HostTools
import Machine
import SkiffControl
import VMM

/// Ready snapshots: an appliance that says how to tell it is up (its
/// health check) is booted once, and the moment the check first passes it
/// is snapshotted, running, into `<store>/ready/<manifest digest>/`. Every
/// later `skiff run` of that image restores the snapshot instead of
/// booting, then gives the restored VM its own identity through its agent
/// (address, MAC, hostname, fresh entropy): the application answers
/// milliseconds after it is asked for, as a clone, not a copy, of the first.
///
/// The launcher does this from a thread of its own while the VM runs (it
/// is never under the VMM's seccomp filter); failures are reported and the
/// VM runs on as it would have without.
enum ReadySnapshot {
    static func directory(store: String, manifest digest: String) -> String {
        store + "/ready/" + digest.dropFirst(7)
    }

    /// What an appliance's kernel gets beyond the default command line.
    /// - quiet: the application's output, not the kernel's, on the
    ///   console (each byte on the emulated serial port costs an exit).
    /// - clocksource=kvm-clock: Linux picks the TSC here, and this host's
    ///   PVM gives a restored guest the host's TSC, not the snapshot's, so
    ///   its clocks leapt by the snapshot's age and it spent its first
    ///   second catching up (second_overflow once per second of the leap,
    ///   measured with SKIFF_GUEST_PROFILE). kvm-clock goes on from the
    ///   snapshot's moment (KVM_SET_CLOCK); the agent then sets the wall
    ///   clock (`time=` in the identity).
    /// - ipv6.disable=1: Skiff's network is IPv4; IPv6 only added link-local
    ///   addresses, neighbour discovery and multicast to each guest's work.
    static let applianceKernelWords = "quiet clocksource=kvm-clock ipv6.disable=1"

    /// Names how the ready snapshots this Skiff takes were booted
    /// (`<dir>/profile`); one of another profile (an older Skiff's, booted
    /// without the words above) is removed and taken again.
    static let profile = "2 " + applianceKernelWords
    static let profileName = "profile"

    /// The image's ready snapshot, if this run would restore it: an image
    /// with a health check, its own command, no extra disks, the default
    /// kernel, Skiff's network (root), and a complete snapshot there.
    static func usable(_ appliance: ApplianceRun, _ options: RunOptions) -> String? {
        guard appliance.health != nil, options.imageArguments.isEmpty, !options.cold, options.disks.isEmpty, options.kernel == nil,
              options.network == "skiff", geteuid() == 0 else { return nil }
        let ready = directory(store: ApplianceRun.storeRoot, manifest: appliance.digest)
        guard access(ready + "/" + SnapshotImage.stateName, R_OK) == 0 else { return nil }
        let written = (try? FileIO.read(ready + "/" + profileName)).map { String(decoding: $0, as: UTF8.self) }
        guard written == profile else {
            // A run already restoring it keeps its open files.
            FileIO.progress("\(ready): a ready snapshot of an older profile; removed, a new one is taken once healthy")
            _ = try? Subprocess.run(["rm", "-rf", ready], quiet: true)
            return nil
        }
        return ready
    }

    /// First run: waits for health, then `skiff snapshot CONTROL DIR.tmp`
    /// (its own process: its failures end it, not the VM) and renames the
    /// folder into place whole, so a half-made ready snapshot is never used.
    static func takeWhenHealthy(_ health: ApplianceRun.Health, address: String, control: String, into target: String) {
        let start = MonotonicClock.ms
        _ = try? HostThread(name: "ready-snapshot") {
            guard waitHealthy(health, address: address, timeoutMs: 600_000) else {
                FileIO.progress("\(target): the health check never passed; no ready snapshot")
                return
            }
            let ready = MonotonicClock.ms - start
            let parent = String(target[..<(target.lastIndex(of: "/") ?? target.endIndex)])
            let tmp = target + ".tmp\(getpid())"
            // /proc/self/exe: this very binary, even if an upgrade replaced the file meanwhile.
            guard (try? Subprocess.run(["mkdir", "-p", "-m", "0700", parent], quiet: true)) != nil,
                  (try? Subprocess.run(["/proc/self/exe", "snapshot", control, tmp], capture: true)) != nil,
                  (try? FileIO.write(Array(profile.utf8), to: tmp + "/" + profileName)) != nil else {
                FileIO.progress("the ready snapshot was not taken")
                _ = try? Subprocess.run(["rm", "-rf", tmp], quiet: true)
                return
            }
            if rename(tmp, target) != 0 { _ = try? Subprocess.run(["rm", "-rf", tmp], quiet: true) } // another run made one first
            FileIO.progress("healthy after \(ready) ms; ready snapshot \(target) taken in \(MonotonicClock.ms - start - ready) ms")
        }
    }

    /// A restored VM: its identity through the agent, then (for the user
    /// and the benchmark) how long from start to healthy.
    static func adopt(identity: String, vsock: String, health: ApplianceRun.Health, address: String, name: String) {
        let start = MonotonicClock.ms
        _ = try? HostThread(name: "ready-identity") {
            var lastError = ""
            // Generous: 20 VMs restored at once on these 2 cores took 20-60 s
            // to answer, and a VM that gave up here kept the snapshot's
            // MAC and address (its frames dropped, nothing answering).
            // An attempt that ran out of time is followed by one twice as
            // patient: each abandoned connection is still work for the
            // guest's agent.
            var patienceMs: Int32 = 2_000
            while MonotonicClock.ms - start < 180_000 {
                let attempt = MonotonicClock.ms
                do throws(GuestAgent.Failure) {
                    let agent = try GuestAgent(vsockSocket: vsock, timeoutMs: patienceMs)
                    // The wall clock as of now: the guest's clocks go on from
                    // the snapshot's moment (kvm-clock: applianceKernelWords).
                    var now = timespec()
                    clock_gettime(CLOCK_REALTIME, &now)
                    let text = identity + " time=\(now.tv_sec).\(now.tv_nsec)"
                    _ = try agent.request(UInt8(ascii: "n"), Array(text.utf8), expecting: UInt8(ascii: "N"))
                    lastError = ""
                    break
                } catch {
                    lastError = error.description
                    if MonotonicClock.ms - attempt >= Int(patienceMs) * 9 / 10 { patienceMs = min(patienceMs * 2, 30_000) }
                    usleep(5_000)
                }
            }
            guard lastError.isEmpty else {
                FileIO.progress("\(name): the restored VM did not take its identity: \(lastError)")
                return
            }
            let identified = MonotonicClock.ms - start
            if waitHealthy(health, address: address, timeoutMs: 300_000) {
                FileIO.progress("\(name) restored from its ready snapshot: identity in \(identified) ms, healthy in \(MonotonicClock.ms - start) ms")
            } else {
                FileIO.progress("\(name) restored from its ready snapshot and took its identity in \(identified) ms, but its health check has not passed in 300 s")
            }
        }
    }

    /// The identity a restored VM is given: its lease's, and 32 fresh bytes
    /// of entropy (a restored pool would otherwise repeat the first VM's).
    static func identity(_ lease: NetworkLease, hostname: String, network: Bool = true) -> String {
        var seed = [UInt8](repeating: 0, count: 32)
        _ = seed.withUnsafeMutableBytes { getrandom($0.baseAddress, $0.count, 0) }
        let hex = seed.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let address = network ? "ip=\(lease.cidr) gw=\(NetworkLease.gateway) mac=\(lease.macText) " : ""
        return address + "hostname=\(hostname.lowercased()) seed=\(hex)"
    }

    /// Runs the health check every 20 ms until it passes or time runs out.
    /// A check that ran out of time is followed by one twice as patient
    /// (200 ms to connect and 5 s for the answer at first, up to 10 s and
    /// 60 s): one that gave up and asked again at the same pace left the
    /// guest with connections nobody waited for, faster than its emulated
    /// kernel mode drained them (a VM polled so never became healthy), and
    /// a guest among many restored at once can take longer than any fixed
    /// limit chosen for one alone.
    static func waitHealthy(_ health: ApplianceRun.Health, address: String, timeoutMs: Int) -> Bool {
        let start = MonotonicClock.ms
        var patience = Patience()
        while MonotonicClock.ms - start < timeoutMs {
            switch check(health, address: address, patience) {
            case .passed: return true
            case .outOfTime: patience.double()
            case .failed: break
            }
            usleep(20_000)
        }
        return false
    }

    struct Patience {
        var connectMs = 200, replyMs = 5_000
        mutating func double() {
            connectMs = min(connectMs * 2, 10_000)
            replyMs = min(replyMs * 2, 60_000)
        }
    }

    enum Outcome { case passed, failed, outOfTime }

    static func check(_ health: ApplianceRun.Health, address: String, _ patience: Patience) -> Outcome {
        let port: Int
        switch health {
        case .tcp(let p): port = p
        case .http(let p, _, _): port = p
        }
        let fd = connectTCP(address, port, connectTimeoutMs: patience.connectMs, replyTimeoutMs: patience.replyMs)
        guard fd >= 0 else { return errno == EINPROGRESS || errno == EAGAIN ? .outOfTime : .failed }
        defer { close(fd) }
        guard case .http(_, let path, let status) = health else { return .passed }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(address)\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return .failed }
        var reply = [UInt8](repeating: 0, count: 64)
        var got = 0
        while got < 12 {
            let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
            guard n > 0 else { return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? .outOfTime : .failed }
            got += n
        }
        // "HTTP/1.x NNN"
        let line = String(decoding: reply.prefix(got), as: UTF8.self)
        return line.hasPrefix("HTTP/1.") && line.dropFirst(9).prefix(3) == Substring(String(status)) ? .passed : .failed
    }

    /// A TCP connection to address:port within `connectTimeoutMs`, whose
    /// reads wait up to `replyTimeoutMs`; -1 if none (errno says why:
    /// EINPROGRESS when the connect ran out of time).
    static func connectTCP(_ address: String, _ port: Int, connectTimeoutMs: Int = 200, replyTimeoutMs: Int = 200) -> Int32 {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, address, &sa.sin_addr) == 1 else { return -1 }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var tv = timeval(tv_sec: connectTimeoutMs / 1000, tv_usec: (connectTimeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let ok = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0 else {
            let e = errno
            close(fd)
            errno = e
            return -1
        }
        var reply = timeval(tv_sec: replyTimeoutMs / 1000, tv_usec: (replyTimeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &reply, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }
}
