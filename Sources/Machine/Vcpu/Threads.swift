import Glibc

/// A pthread running a Swift closure. vCPUs block in KVM_RUN for long
/// stretches, so they get real threads, never Swift concurrency's pool.
///
/// Once seccomp is on (`Seccomp.start`), every thread is created by the
/// spawner thread and installs its role's filter (named by `name`) before
/// it runs anything else.
public final class HostThread: @unchecked Sendable {
    public private(set) var handle: pthread_t = 0

    final class Box {
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }

    public init(name: String, _ body: @escaping @Sendable () -> Void) throws {
        var run = body
        if let role = Seccomp.role(forThread: name) {
            run = {
                Seccomp.installOrDie(role, thread: name)
                body()
            }
        }
        let (handle, r) = ThreadSpawner.shared?.create(Box(run)) ?? Self.create(Box(run))
        guard r == 0 else { throw ThreadError(name: name, code: r) }
        self.handle = handle
    }

    /// pthread_create, on whichever thread calls it.
    static func create(_ box: Box) -> (pthread_t, Int32) {
        var handle: pthread_t = 0
        let arg = Unmanaged.passRetained(box).toOpaque()
        let r = pthread_create(&handle, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, arg)
        if r != 0 { Unmanaged<Box>.fromOpaque(arg).release() }
        return (handle, r)
    }

    public func join() { pthread_join(handle, nil) }

    public func signal(_ signo: Int32) { pthread_kill(handle, signo) }
}

public struct ThreadError: Error, CustomStringConvertible {
    public let name: String
    public let code: Int32
    public var description: String { "cannot start thread \(name): \(String(cString: strerror(code)))" }
}
