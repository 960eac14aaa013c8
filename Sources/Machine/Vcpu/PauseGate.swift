import Glibc

/// Where vCPU threads wait while the VM is paused. A pause is requested,
/// every vCPU is kicked out of KVM_RUN, and the request returns once all
/// of them are parked here: from then on no guest code runs and every vCPU's
/// state can be read or written. Resume lets them go.
///
/// A vCPU parks only after a KVM_RUN that returned because of the kick
/// (with immediate_exit set): KVM has then finished the instruction of the
/// last I/O exit, so the registers a snapshot reads are complete (KVM API,
/// "immediate_exit").
public final class PauseGate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var requested = false
    private var released = false
    private var parked = 0

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        changed.deallocate()
    }

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Read by a vCPU after an interrupted KVM_RUN.
    public var isRequested: Bool { locked { requested } }

    /// A vCPU thread waits here until resumed (or released for good).
    /// `leaving` runs under the gate's lock as it leaves for the guest (it
    /// clears the kick): a pause requested after that kicks it again.
    public func park(leaving: () -> Void) {
        locked {
            guard requested, !released else { return }
            parked += 1
            pthread_cond_broadcast(changed)
            while requested && !released { pthread_cond_wait(changed, mutex) }
            parked -= 1
            if !released { leaving() }
            pthread_cond_broadcast(changed)
        }
    }

    /// Asks every vCPU to park; `kick` makes them leave the guest. Returns
    /// when `count` are parked, or false if the wait timed out or the VM
    /// is stopping (then nothing is paused).
    public func pause(count: Int, kick: () -> Void) -> Bool {
        locked { requested = true }
        kick()
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        deadline.tv_sec += 5
        return locked {
            while parked < count && !released {
                if pthread_cond_timedwait(changed, mutex, &deadline) == ETIMEDOUT { break }
            }
            if parked < count || released {
                requested = false
                pthread_cond_broadcast(changed)
                return false
            }
            return true
        }
    }

    /// Asks vCPUs to park before they first enter the guest (a VM that
    /// starts paused): they have not run, so nothing needs a kick.
    public func request() { locked { requested = true } }

    /// Lets parked vCPUs run again; returns when none is parked any more.
    public func resume() {
        locked {
            requested = false
            pthread_cond_broadcast(changed)
            while parked > 0 { pthread_cond_wait(changed, mutex) }
        }
    }

    /// The VM is stopping: nobody parks again, parked vCPUs leave.
    public func release() {
        locked {
            released = true
            pthread_cond_broadcast(changed)
        }
    }
}
