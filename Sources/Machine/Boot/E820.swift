/// The guest's physical memory map, as e820 entries (zero page) and as the
/// PVH memory map: the same list in both.
public struct E820Entry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2 }
    public let address: UInt64
    public let size: UInt64
    public let kind: Kind

    /// RAM below the EBDA, the BIOS area as reserved (the MP table lives
    /// there), then RAM from 1 MiB on both sides of the 32-bit hole.
    public static func map(for memory: GuestMemory) -> [E820Entry] {
        var entries = [E820Entry(address: 0, size: X86Layout.ebdaStart, kind: .ram),
                       E820Entry(address: X86Layout.mpTable, size: X86Layout.biosEnd - X86Layout.mpTable, kind: .reserved)]
        for r in memory.regions {
            let start = max(r.guestBase, X86Layout.highMemory)
            if r.guestEnd > start { entries.append(.init(address: start, size: r.guestEnd - start, kind: .ram)) }
        }
        return entries
    }
}
