/// Lays a kernel, its initrd, command line and the boot-time structures
/// (zero page or PVH start_info, e820 map, MP table, page tables, GDT) into
/// guest memory, and says how the boot vCPU must start.
public struct BootSetup: Sendable {
    public let entry: KernelImage.Entry
    /// Guest-physical address of the initrd, if any.
    public let initrdAddress: UInt64?

    public static func prepare(memory: GuestMemory, kernel: KernelImage, initrd: (path: String, bytes: [UInt8])?,
                               commandLine: String, cpus: Int) throws -> BootSetup {
        let cmdline = Array(commandLine.utf8)
        guard cmdline.count + 1 <= kernel.commandLineLimit else {
            throw BootError("command line is \(cmdline.count + 1) bytes with its NUL; kernel \(kernel.path) accepts at most \(kernel.commandLineLimit)")
        }
        guard !cmdline.contains(0) else { throw BootError("command line contains a NUL byte") }
        try kernel.load(into: memory)
        try memory.write(cmdline + [0], at: X86Layout.commandLine)

        var initrdAddress: UInt64?
        if let initrd {
            initrdAddress = try placeInitrd(initrd.bytes, path: initrd.path, kernel: kernel, memory: memory)
        }
        let initrdSize = UInt64(initrd?.bytes.count ?? 0)
        try memory.write(MPTable.build(cpus: cpus, at: X86Layout.mpTable), at: X86Layout.mpTable)
        let e820 = E820Entry.map(for: memory)

        switch kernel.entry {
        case .long64:
            try writeZeroPage(memory, kernel: kernel, e820: e820, commandLineSize: cmdline.count,
                              initrd: initrdAddress.map { ($0, initrdSize) })
            try writeLongModeStructures(memory)
        case .pvh32:
            try writePVHStartInfo(memory, e820: e820, initrd: initrdAddress.map { ($0, initrdSize) })
            try writeGDT(memory)
        }
        return BootSetup(entry: kernel.entry, initrdAddress: initrdAddress)
    }

    /// The initrd goes as high as it may: below the kernel's limit, the
    /// 32-bit hole and the end of RAM, page-aligned, above the kernel.
    static func placeInitrd(_ bytes: [UInt8], path: String, kernel: KernelImage, memory: GuestMemory) throws -> UInt64 {
        let size = UInt64(bytes.count)
        let top = min(kernel.initrdLimit, X86Layout.lowRAMEnd, memory.regions[0].guestEnd)
        let floor = (max(kernel.end, X86Layout.highMemory) + 0xfff) & ~0xfff
        guard size > 0 else { throw BootError("initrd \(path): empty file") }
        guard top > floor, size <= top - floor else {
            throw BootError("initrd \(path) (\(size >> 10) KiB) does not fit in guest memory (\(memory.totalSize >> 20) MiB) beside the kernel")
        }
        let address = (top - size) & ~0xfff
        try memory.write(bytes, at: address)
        return address
    }

    // MARK: Linux's zero page (struct boot_params)

    static func writeZeroPage(_ memory: GuestMemory, kernel: KernelImage, e820: [E820Entry], commandLineSize: Int,
                              initrd: (UInt64, UInt64)?) throws {
        let zp = X86Layout.zeroPage
        try memory.fill(0, at: zp, length: 4096)
        if let header = kernel.setupHeader {
            try memory.write(header, at: zp + 0x1f1)
        } else {
            // vmlinux has no setup header: write what the kernel reads of one.
            try memory.store(UInt16(0xaa55), at: zp + 0x1fe)
            try memory.write(Array("HdrS".utf8), at: zp + 0x202)
            try memory.store(UInt16(0x020f), at: zp + 0x206)
            try memory.store(UInt32(0x0100_0000), at: zp + 0x230) // kernel_alignment
        }
        try memory.store(UInt8(0xff), at: zp + 0x210)           // type_of_loader: undefined
        let loadflags: UInt8 = try memory.load(UInt8.self, at: zp + 0x211)
        try memory.store(loadflags | 0x80 | 0x01, at: zp + 0x211) // CAN_USE_HEAP, LOADED_HIGH
        try memory.store(UInt16(0xfe00), at: zp + 0x224)        // heap_end_ptr
        try memory.store(UInt32(X86Layout.commandLine), at: zp + 0x228)
        try memory.store(UInt32(commandLineSize), at: zp + 0x238)
        if let (address, size) = initrd {
            try memory.store(UInt32(truncatingIfNeeded: address), at: zp + 0x218)
            try memory.store(UInt32(truncatingIfNeeded: size), at: zp + 0x21c)
            try memory.store(UInt32(truncatingIfNeeded: address >> 32), at: zp + 0x0c0)
            try memory.store(UInt32(truncatingIfNeeded: size >> 32), at: zp + 0x0c4)
        }
        let entries = e820.prefix(128)
        try memory.store(UInt8(entries.count), at: zp + 0x1e8)
        for (i, e) in entries.enumerated() {
            let at = zp + 0x2d0 + UInt64(i * 20)
            try memory.store(e.address, at: at)
            try memory.store(e.size, at: at + 8)
            try memory.store(e.kind.rawValue, at: at + 16)
        }
    }

    // MARK: PVH (struct hvm_start_info)

    static let pvhMagic: UInt32 = 0x336e_c578

    static func writePVHStartInfo(_ memory: GuestMemory, e820: [E820Entry], initrd: (UInt64, UInt64)?) throws {
        let si = X86Layout.pvhStartInfo
        try memory.fill(0, at: si, length: X86Layout.pvhMemoryMap - si)
        try memory.store(pvhMagic, at: si)
        try memory.store(UInt32(1), at: si + 4)                  // version
        if let (address, size) = initrd {
            try memory.store(UInt32(1), at: si + 12)             // nr_modules
            try memory.store(X86Layout.pvhModules, at: si + 16)
            try memory.store(address, at: X86Layout.pvhModules)
            try memory.store(size, at: X86Layout.pvhModules + 8)
        }
        try memory.store(X86Layout.commandLine, at: si + 24)
        try memory.store(X86Layout.pvhMemoryMap, at: si + 40)
        let entries = e820.prefix(X86Layout.pvhMemoryMapMax)
        try memory.store(UInt32(entries.count), at: si + 48)
        for (i, e) in entries.enumerated() {
            let at = X86Layout.pvhMemoryMap + UInt64(i * 24)
            try memory.store(e.address, at: at)
            try memory.store(e.size, at: at + 8)
            try memory.store(e.kind.rawValue, at: at + 16)
            try memory.store(UInt32(0), at: at + 20)
        }
    }

    // MARK: Long mode: GDT and identity-mapped page tables

    /// Boot GDT. Linux's 64-bit boot protocol wants __BOOT_CS at 0x10 and
    /// __BOOT_DS at 0x18; PVH wants flat 32-bit segments; 0x20 is the TSS.
    public static let gdt: [UInt64] = [
        0,
        0,
        0x00af_9b00_0000_ffff, // 0x10: 64-bit code (L=1)
        0x00cf_9300_0000_ffff, // 0x18: flat data
        0x0080_8b00_0000_0000, // 0x20: TSS
        0x00cf_9b00_0000_ffff, // 0x28: flat 32-bit code (PVH)
    ]
    public static let codeSelector64: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20
    public static let codeSelector32: UInt16 = 0x28

    static func writeGDT(_ memory: GuestMemory) throws {
        for (i, d) in gdt.enumerated() { try memory.store(d, at: X86Layout.gdtAddress + UInt64(i * 8)) }
        try memory.fill(0, at: X86Layout.idtAddress, length: 8)
    }

    /// Identity map with 2 MiB pages of the first 4 GiB and of all RAM above,
    /// up to `maxPageDirectories` GiB.
    static func writeLongModeStructures(_ memory: GuestMemory) throws {
        try writeGDT(memory)
        let gib = UInt64(1) << 30
        let directories = min(max(4, (memory.end + gib - 1) / gib), X86Layout.maxPageDirectories)
        try memory.fill(0, at: X86Layout.pml4, length: 0x2000)
        try memory.store(X86Layout.pdpt | 0x3, at: X86Layout.pml4)
        for d in 0..<directories {
            let pd = X86Layout.pageDirectories + d * 0x1000
            try memory.store(pd | 0x3, at: X86Layout.pdpt + d * 8)
            for e in 0..<UInt64(512) {
                try memory.store((d * gib + e * (2 << 20)) | 0x83, at: pd + e * 8) // present, writable, 2 MiB
            }
        }
    }
}
