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

    /// The image's ready snapshot, if this run would restore it: an image
    /// with a health check, its own command, no extra disks, the default
    /// kernel, Skiff's network (root), and a complete snapshot there.
    static func usable(_ appliance: ApplianceRun, _ options: RunOptions) -> String? {
        guard appliance.health != nil, options.imageArguments.isEmpty, !options.cold, options.disks.isEmpty, options.kernel == nil,
              options.network == "skiff", geteuid() == 0 else { return nil }
        let ready = directory(store: ApplianceRun.storeRoot, manifest: appliance.digest)
        return access(ready + "/" + SnapshotImage.stateName, R_OK) == 0 ? ready : nil
    }

    /// First run: waits for health, then `skiff snapshot CONTROL DIR.tmp`
    /// (its own process: its failures end it, not the VM) and renames the
    /// folder into place whole, so a half-made ready snapshot is never used.
    static func takeWhenHealthy(_ health: ApplianceRun.Health, address: String, control: String, into target: String) {
        let start = monotonicMs()
        _ = try? HostThread(name: "ready-snapshot") {
            guard waitHealthy(health, address: address, timeoutMs: 600_000) else {
                FileIO.progress("\(target): the health check never passed; no ready snapshot")
                return
            }
            let ready = monotonicMs() - start
            let parent = String(target[..<(target.lastIndex(of: "/") ?? target.endIndex)])
            let tmp = target + ".tmp\(getpid())"
            // /proc/self/exe: this very binary, even if an upgrade replaced the file meanwhile.
            guard (try? Subprocess.run(["mkdir", "-p", "-m", "0700", parent], quiet: true)) != nil,
                  (try? Subprocess.run(["/proc/self/exe", "snapshot", control, tmp], capture: true)) != nil else {
                FileIO.progress("the ready snapshot was not taken")
                _ = try? Subprocess.run(["rm", "-rf", tmp], quiet: true)
                return
            }
            if rename(tmp, target) != 0 { _ = try? Subprocess.run(["rm", "-rf", tmp], quiet: true) } // another run made one first
            FileIO.progress("healthy after \(ready) ms; ready snapshot \(target) taken in \(monotonicMs() - start - ready) ms")
        }
    }

    /// A restored VM: its identity through the agent, then (for the user
    /// and the benchmark) how long from start to healthy.
    static func adopt(identity: String, vsock: String, health: ApplianceRun.Health, address: String, name: String) {
        let start = monotonicMs()
        _ = try? HostThread(name: "ready-identity") {
            var lastError = ""
            // Generous: 20 VMs restored at once on these 2 cores took 20-60 s
            // to answer, and a VM that gave up here kept the snapshot's
            // MAC and address (its frames dropped, nothing answering).
            while monotonicMs() - start < 180_000 {
                do throws(GuestAgent.Failure) {
                    let agent = try GuestAgent(vsockSocket: vsock, timeoutMs: 2_000)
                    _ = try agent.request(UInt8(ascii: "n"), Array(identity.utf8), expecting: UInt8(ascii: "N"))
                    lastError = ""
                    break
                } catch {
                    lastError = error.description
                    usleep(5_000)
                }
            }
            guard lastError.isEmpty else {
                FileIO.progress("\(name): the restored VM did not take its identity: \(lastError)")
                return
            }
            let identified = monotonicMs() - start
            if waitHealthy(health, address: address, timeoutMs: 60_000) {
                FileIO.progress("\(name) restored from its ready snapshot: identity in \(identified) ms, healthy in \(monotonicMs() - start) ms")
            } else {
                FileIO.progress("\(name) restored from its ready snapshot and took its identity in \(identified) ms, but its health check has not passed in 60 s")
            }
        }
    }

    /// The identity a restored VM is given: its lease's, and 32 fresh bytes
    /// of entropy (a restored pool would otherwise repeat the first VM's).
    static func identity(_ lease: NetworkLease, hostname: String) -> String {
        var seed = [UInt8](repeating: 0, count: 32)
        _ = seed.withUnsafeMutableBytes { getrandom($0.baseAddress, $0.count, 0) }
        let hex = seed.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        return "ip=\(lease.cidr) gw=\(NetworkLease.gateway) mac=\(lease.macText) hostname=\(hostname.lowercased()) seed=\(hex)"
    }

    /// Polls the health check every 20 ms until it passes or time runs out.
    static func waitHealthy(_ health: ApplianceRun.Health, address: String, timeoutMs: Int) -> Bool {
        let start = monotonicMs()
        while monotonicMs() - start < timeoutMs {
            if healthy(health, address: address) { return true }
            usleep(20_000)
        }
        return false
    }

    static func healthy(_ health: ApplianceRun.Health, address: String) -> Bool {
        switch health {
        case .tcp(let port):
            let fd = connectTCP(address, port)
            if fd >= 0 { close(fd) }
            return fd >= 0
        case .http(let port, let path, let status):
            // Up to 5 s for the answer: the first requests after a boot
            // or a restore can take longer than a connect here, and a
            // check that gave up after 200 ms and asked again kept nginx
            // busy with abandoned connections (never healthy while it ran).
            let fd = connectTCP(address, port, replyTimeoutMs: 5_000)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            let request = Array("GET \(path) HTTP/1.0\r\nHost: \(address)\r\n\r\n".utf8)
            guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return false }
            var reply = [UInt8](repeating: 0, count: 64)
            var got = 0
            while got < 12 {
                let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
                guard n > 0 else { return false }
                got += n
            }
            // "HTTP/1.x NNN"
            let line = String(decoding: reply.prefix(got), as: UTF8.self)
            return line.hasPrefix("HTTP/1.") && line.dropFirst(9).prefix(3) == Substring(String(status))
        }
    }

    /// A TCP connection to address:port within 200 ms, whose reads wait
    /// up to `replyTimeoutMs`; -1 if none.
    static func connectTCP(_ address: String, _ port: Int, replyTimeoutMs: Int = 200) -> Int32 {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, address, &sa.sin_addr) == 1 else { return -1 }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let ok = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0 else { close(fd); return -1 }
        var reply = timeval(tv_sec: replyTimeoutMs / 1000, tv_usec: (replyTimeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &reply, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func monotonicMs() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }
}
