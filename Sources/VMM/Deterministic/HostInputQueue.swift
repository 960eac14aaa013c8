import Devices
import Synchronization

/// A recording's console input: the console thread puts what the host
/// types here, and the deterministic machine moves it into the UART at one
/// of the guest's exits, which the log names, so a replay gives it to the
/// guest at the same point. As big as the UART's FIFO, so the console
/// thread waits (as it does for the UART) while the guest is not reading.
final class HostInputQueue: ConsoleReceiver {
    private let bytes = Mutex<[UInt8]>([])

    func receive(_ input: some Collection<UInt8>) -> Int {
        bytes.withLock { b in
            let n = min(input.count, Serial8250.rxCapacity - b.count)
            b += input.prefix(n)
            return n
        }
    }

    var receiveSpace: Int { bytes.withLock { Serial8250.rxCapacity - $0.count } }
    /// The console's end-of-file repeats on a timer alone here.
    var receiverStartCount: UInt64 { 0 }

    /// Up to `limit` bytes, oldest first.
    func take(_ limit: Int) -> [UInt8] {
        bytes.withLock { b in
            let n = min(limit, b.count)
            defer { b.removeFirst(n) }
            return Array(b.prefix(n))
        }
    }
}
