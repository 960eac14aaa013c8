import Machine

/// A deterministic machine's virtio (record and replay): a device's queues
/// are served on the vCPU's thread, at the guest's QueueNotify exit, not by
/// a device thread at a moment of its own; its interrupt is a line of
/// Skiff's PIC. So a completion lands in guest memory while the vCPU is
/// stopped at an exit the guest made, the same one on every run.
public final class InlineQueues: @unchecked Sendable {
    public let line: any InterruptLine
    /// The device's handler while it is active (set by `QueueWorker`).
    /// Touched only on the vCPU's thread: activation, notify and reset all
    /// come from the guest's register writes.
    var handle: ((Int) throws(QueueError) -> Void)?
    var broken = false

    public init(line: any InterruptLine) { self.line = line }

    /// The driver notified queue `q`: serve it now.
    func notify(_ q: Int, _ signals: VirtioSignals) {
        guard let handle, !broken else { return }
        do throws(QueueError) { try handle(q) } catch {
            broken = true
            signals.broken("\(error)")
        }
    }
}

/// What enters a deterministic guest through its devices, given or
/// checked by the recording (the VMM's Determinism): entropy is an input
/// (recorded, and on replay given back from the log); a disk's data is
/// checked by its CRC (a replay on a changed disk stops there).
public protocol GuestInputs: AnyObject, Sendable {
    /// Fills `count` bytes at `p`; returns how many.
    func entropy(into p: UnsafeMutableRawPointer, count: Int) -> Int
    /// A disk request served: its data's CRC-32C.
    func diskIO(disk: UInt8, write: Bool, sector: UInt64, length: UInt64, crc: UInt32)
}
