import Glibc
import KVM
import Synchronization

/// A sampling profiler of the guest, for finding where guest time goes
/// (no perf in a PVM guest, whose kernel mode is emulated): with
/// `SKIFF_GUEST_PROFILE=US` (and --no-seccomp: its thread is not in any
/// filter's role), a thread kicks every vCPU out of KVM_RUN every US
/// microseconds; the kicked vCPU records its RIP and privilege level
/// itself (no register ioctl from another thread), and every 200 ms one
/// line per vCPU goes to stderr:
///
///     guest-profile +T_MS vcpu0 samples=N user=U exits=E RIP=COUNT ...
///
/// with every kernel RIP the window saw; `scripts/guest-profile`
/// names them from the kernel's symbols (nm vmlinux). A diagnostic, off by default.
public final class GuestSampler: @unchecked Sendable {
    struct Window {
        var kernel: [UInt64: Int] = [:]
        var samples = 0, user = 0
    }
    let intervalUs: UInt32
    private let windows: Mutex<[Window]>
    let vcpuCount: Int

    /// The sampler the environment asks for, if any.
    public static func fromEnvironment(vcpus: Int) -> GuestSampler? {
        guard let text = getenv("SKIFF_GUEST_PROFILE").map({ String(cString: $0) }), let us = UInt32(text), us >= 100 else { return nil }
        guard !Seccomp.enabled else {
            var line = Array("skiff: SKIFF_GUEST_PROFILE needs --no-seccomp; not sampling\n".utf8)
            _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
            return nil
        }
        return GuestSampler(intervalUs: us, vcpus: vcpus)
    }

    init(intervalUs: UInt32, vcpus: Int) {
        self.intervalUs = intervalUs
        windows = Mutex(Array(repeating: Window(), count: vcpus))
        vcpuCount = vcpus
    }

    /// On the vCPU's own thread, after a KVM_RUN a kick ended.
    func record(_ vcpu: KVMVcpu) {
        guard Int(vcpu.id) < vcpuCount, let r = try? vcpu.registers(), let s = try? vcpu.specialRegisters() else { return }
        let user = s.cs.selector & 3 == 3
        windows.withLock { all in
            all[Int(vcpu.id)].samples += 1
            if user { all[Int(vcpu.id)].user += 1 } else { all[Int(vcpu.id)].kernel[r.rip, default: 0] += 1 }
        }
    }

    /// Kicks `threads` until `stopping`, reporting every 200 ms. A sampler
    /// that cannot start says so; the VM runs on without it.
    public func start(_ loops: [VcpuLoop], _ threads: [HostThread], stopping: StopFlag) {
        let start = MonotonicClock.ms
        var first = Array("guest-profile start \(start) (CLOCK_MONOTONIC ms)\n".utf8)
        _ = first.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        let thread = try? HostThread(name: "guest-sampler") { [self] in
            var lastReport = start
            var exitsBefore = loops.map(\.exits)
            while !stopping.isSet {
                usleep(intervalUs)
                for thread in threads { thread.signal(SIGUSR1) }
                let now = MonotonicClock.ms
                guard now - lastReport >= 200 else { continue }
                lastReport = now
                let taken = windows.withLock { all in defer { all = Array(repeating: Window(), count: all.count) }; return all }
                for (i, loop) in loops.enumerated() where i < taken.count {
                    let w = taken[i]
                    let top = w.kernel.sorted { $0.value > $1.value }
                        .map { "\(String($0.key, radix: 16))=\($0.value)" }.joined(separator: " ")
                    let exits = loop.exits &- exitsBefore[i]
                    exitsBefore[i] = loop.exits
                    var line = Array("guest-profile +\(now - start) vcpu\(i) samples=\(w.samples) user=\(w.user) exits=\(exits) \(top)\n".utf8)
                    _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
                }
            }
        }
        if thread == nil {
            var line = Array("skiff: SKIFF_GUEST_PROFILE: the sampler thread did not start; not sampling\n".utf8)
            _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        }
    }
}
