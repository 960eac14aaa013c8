import CKVM
import Glibc
import KVM
import Synchronization

/// A Linux eventfd: a counter one side signals and the other waits on.
/// Virtio queue notifications (ioeventfd) and interrupts (irqfd) use them.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init() throws {
        fd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK)) // consume() never blocks
        if fd < 0 { throw SystemError("eventfd") }
    }

    deinit { close(fd) }

    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Clears the counter; returns how many signals it held.
    @discardableResult
    public func consume() -> UInt64 {
        var n: UInt64 = 0
        return read(fd, &n, 8) == 8 ? n : 0
    }
}

/// Waits on several file descriptors at once (poll(2)).
public enum Poller {
    /// How many threads are in `wait` now. The device fuzz targets use it
    /// to tell a device thread is back asleep, done with what woke it; two
    /// atomic adds per wake-up are nothing beside the poll itself.
    public static let sleepers = Atomic<Int>(0)

    /// Blocks until one of `fds` is readable (or `timeoutMs` passes; -1:
    /// forever). Returns the readable ones.
    public static func wait(_ fds: [Int32], timeoutMs: Int32 = -1) -> [Int32] {
        var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        sleepers.add(1, ordering: .sequentiallyConsistent)
        let n = poll(&pfds, nfds_t(pfds.count), timeoutMs)
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
        guard n > 0 else { return [] }
        return pfds.filter { $0.revents != 0 }.map(\.fd)
    }
}
