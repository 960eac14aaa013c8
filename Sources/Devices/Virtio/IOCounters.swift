import Synchronization

/// What a device moved for the guest, counted on the device's thread and
/// read from any other (the control socket's `stats`, which skiffd meters):
/// bytes and requests the guest asked for and got, not what the host's
/// page cache made of them.
public final class IOCounters: Sendable {
    public let readBytes = Atomic<UInt64>(0)
    public let writeBytes = Atomic<UInt64>(0)
    public let readOps = Atomic<UInt64>(0)
    public let writeOps = Atomic<UInt64>(0)

    public init() {}

    func read(_ bytes: UInt64) {
        readBytes.wrappingAdd(bytes, ordering: .relaxed)
        readOps.wrappingAdd(1, ordering: .relaxed)
    }

    func wrote(_ bytes: UInt64) {
        writeBytes.wrappingAdd(bytes, ordering: .relaxed)
        writeOps.wrappingAdd(1, ordering: .relaxed)
    }
}
