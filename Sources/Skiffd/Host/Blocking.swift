import Foundation

/// Runs a blocking call (a control-socket round trip, a helper process)
/// on a thread of its own and awaits it. The manager's actor, and the
/// cooperative pool under it (two threads on this host's two cores), stay
/// free to answer the API meanwhile.
enum Blocking {
    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            Thread.detachNewThread { c.resume(returning: body()) }
        }
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await run { () -> Result<T, Error> in Result { try body() } }.get()
    }
}
