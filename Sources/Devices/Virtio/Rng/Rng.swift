import CKVM
import Glibc
import Machine
import Synchronization

/// virtio-rng (entropy device): fills each device-writable buffer from the
/// host's getrandom(2), at most 64 KiB a request.
public final class Rng: VirtioDevice {
    public let type = VirtioDeviceType.rng
    public let features: UInt64 = 0
    public let queueSizes: [UInt16] = [256]
    static let maxPerRequest = 1 << 16
    private let worker = WorkerSlot()
    /// A deterministic machine's entropy (recorded, or replayed), in place of getrandom(2).
    let inputs: (any GuestInputs)?

    public init(inputs: (any GuestInputs)? = nil) { self.inputs = inputs }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) { for i in data.indices { data[i] = 0 } }
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ context: VirtioContext) throws {
        let queue = context.queues[0], inputs = self.inputs
        worker.set(try QueueWorker(name: "virtio-rng", context: context) { _, _ throws(QueueError) in
            try queue.drain(context.signals) { chain in
                let io = ChainIO(memory: context.memory, buffers: chain.writable)
                var written = 0
                io.visit(offset: 0, count: min(io.length, UInt64(Self.maxPerRequest))) { p, n in
                    written += inputs?.entropy(into: p, count: n) ?? Self.hostEntropy(into: p, count: n)
                }
                return UInt32(written)
            }
        })
    }

    public func reset() { worker.stop() }

    /// Up to `count` bytes from getrandom(2); how many it gave.
    public static func hostEntropy(into p: UnsafeMutableRawPointer, count: Int) -> Int {
        var done = 0
        while done < count {
            let r = getrandom(p + done, count - done, 0)
            if r < 0 { if errno == EINTR { continue }; break }
            done += r
        }
        return done
    }
}
