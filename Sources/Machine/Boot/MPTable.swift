/// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI
/// finds its CPUs, the IOAPIC and how ISA IRQs are wired. Linux scans the
/// BIOS area (0xf0000-0xfffff) for the floating pointer.
public enum MPTable {
    public static let ioapicVersion: UInt8 = 0x11
    public static let lapicVersion: UInt8 = 0x14
    /// Every IOAPIC pin is listed, as Firecracker does: virtio-mmio devices use 5-23.
    public static let ioapicPins = 24

    /// Bytes to place at `address`: floating pointer, then the table.
    public static func build(cpus: Int, at address: UInt64) -> [UInt8] {
        var table: [UInt8] = []
        var entries = 0
        for cpu in 0..<cpus {
            table += [0, UInt8(cpu), lapicVersion, cpu == 0 ? 3 : 1]  // enabled, BSP
            table += le32(0x600) + le32(0x201) + [UInt8](repeating: 0, count: 8) // signature, FPU|APIC
            entries += 1
        }
        table += [1, 0] + Array("ISA   ".utf8); entries += 1
        let ioapicID = UInt8(cpus)
        table += [2, ioapicID, ioapicVersion, 1] + le32(UInt32(X86Layout.ioapicAddress)); entries += 1
        for irq in 0..<ioapicPins {
            table += [3, 0 /* INT */, 0, 0, 0 /* bus */, UInt8(irq), ioapicID, UInt8(irq)]; entries += 1
        }
        table += [4, 3 /* ExtINT */, 0, 0, 0, 0, 0xff, 0]; entries += 1
        table += [4, 1 /* NMI */, 0, 0, 0, 0, 0xff, 1]; entries += 1

        var header: [UInt8] = Array("PCMP".utf8) + le16(UInt16(44 + table.count)) + [4, 0]
        header += Array("SKIFF   ".utf8) + Array("MICROVM     ".utf8)
        header += le32(0) + le16(0) + le16(UInt16(entries)) + le32(UInt32(X86Layout.lapicAddress))
        header += le16(0) + [0, 0]
        var config = header + table
        config[7] = checksum(config)

        var floating: [UInt8] = Array("_MP_".utf8) + le32(UInt32(address + 16)) + [1, 4, 0, 0, 0, 0, 0, 0]
        floating[10] = checksum(floating)
        return floating + config
    }

    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }
}

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> ($0 * 8)) & 0xff) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> ($0 * 8)) & 0xff) } }
