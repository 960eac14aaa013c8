/// Skiff's x86-64 guest-physical address map.
///
///     0x0000_0500  GDT            0x0000_6000  PVH start_info + memory map
///     0x0000_7000  zero page      0x0000_8ff0  initial stack (64-bit entry)
///     0x0000_9000  page tables    0x0002_0000  kernel command line
///     0x0009_fc00  end of base RAM;  0x000f_0000  MP table (the BIOS area)
///     0x0010_0000  kernel         ... RAM ...  up to 2 GiB
///     0x8000_0000  32-bit hole: device MMIO, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
///     0x1_0000_0000  the rest of RAM
///
/// The hole starts at 2 GiB, as QEMU's q35 does for larger guests, which
/// leaves room for 32-bit MMIO devices and puts the RAM of any guest over
/// 2 GiB on both sides of the hole.
public enum X86Layout {
    public static let gdtAddress: UInt64 = 0x500
    public static let idtAddress: UInt64 = 0x520
    public static let pvhStartInfo: UInt64 = 0x6000
    public static let pvhModules: UInt64 = 0x6040
    public static let pvhMemoryMap: UInt64 = 0x6080
    public static let pvhMemoryMapMax = 160
    public static let zeroPage: UInt64 = 0x7000
    public static let bootStack: UInt64 = 0x8ff0
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xa000
    /// Page directories for the identity map follow the PDPT.
    public static let pageDirectories: UInt64 = 0xb000
    /// 2 MiB pages: this many directories identity-map 16 GiB at boot.
    public static let maxPageDirectories: UInt64 = 16
    public static let commandLine: UInt64 = 0x20000
    public static let commandLineMax: UInt64 = 0x10000
    public static let ebdaStart: UInt64 = 0x9fc00
    /// MP floating pointer and table, in the BIOS area Linux scans.
    public static let mpTable: UInt64 = 0xf_0000
    public static let biosEnd: UInt64 = 0x10_0000
    public static let highMemory: UInt64 = 0x10_0000
    public static let lowRAMEnd: UInt64 = 0x8000_0000
    public static let fourGiB: UInt64 = 0x1_0000_0000
    public static let ioapicAddress: UInt64 = 0xfec0_0000
    public static let lapicAddress: UInt64 = 0xfee0_0000
    /// virtio-mmio devices: one 4 KiB window each from here, in the hole.
    public static let virtioMMIOBase: UInt64 = 0xd000_0000
    /// Their interrupt lines: the ISA IRQs nothing else uses, then 16-23.
    public static let virtioIRQs: [UInt32] = [5, 6, 7, 9, 10, 11, 12, 13, 14, 15] + Array(16...23)
    /// KVM's real-mode TSS (three pages) and identity-map page, just below the BIOS.
    public static let kvmTSS: UInt64 = 0xfffb_d000

    /// RAM ranges (guest base, length) for a guest of `size` bytes.
    public static func ramRanges(size: UInt64) -> [(UInt64, UInt64)] {
        if size <= lowRAMEnd { return [(0, size)] }
        return [(0, lowRAMEnd), (fourGiB, size - lowRAMEnd)]
    }
}
