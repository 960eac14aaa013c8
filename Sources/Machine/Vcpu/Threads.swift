import Glibc

/// A pthread running a Swift closure. vCPUs block in KVM_RUN for long
/// stretches, so they get real threads, never Swift concurrency's pool.
public final class HostThread: @unchecked Sendable {
    public private(set) var handle: pthread_t = 0

    private final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }

    public init(name: String, _ body: @escaping @Sendable () -> Void) throws {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let r = pthread_create(&handle, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if r != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw ThreadError(name: name, code: r)
        }
    }

    public func join() { pthread_join(handle, nil) }

    public func signal(_ signo: Int32) { pthread_kill(handle, signo) }
}

public struct ThreadError: Error, CustomStringConvertible {
    public let name: String
    public let code: Int32
    public var description: String { "cannot start thread \(name): \(String(cString: strerror(code)))" }
}
