/// ELF64 x86-64 kernels: Linux's vmlinux or a probe guest. Entered at the
/// PVH 32-bit entry point when the image has Xen's PHYS32_ENTRY note,
/// otherwise at e_entry in 64-bit mode.
enum ElfKernel {
    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let xenElfNotePhys32Entry: UInt32 = 18
    /// Linux x86's COMMAND_LINE_SIZE: the limit when no header says otherwise.
    static let linuxCommandLineSize = 2048
    static let maxProgramHeaders = 64

    static func parse(_ bytes: [UInt8], path: String) throws -> KernelImage {
        let r = ByteReader(bytes: bytes, name: "kernel \(path)")
        guard bytes.count >= 64 else { throw BootError("kernel \(path): ELF header cut short (\(bytes.count) bytes)") }
        guard bytes[4] == 2 else { throw BootError("kernel \(path): 32-bit ELF; Skiff boots ELF64 kernels") }
        guard bytes[5] == 1 else { throw BootError("kernel \(path): big-endian ELF") }
        guard try r.u16(18) == 62 else { throw BootError("kernel \(path): ELF for machine \(try r.u16(18)), not x86-64") }
        let type = try r.u16(16)
        guard type == 2 || type == 3 else { throw BootError("kernel \(path): ELF type \(type) is not an executable") }

        let entry = try r.u64(24)
        let phoff = try r.u64(32)
        let phentsize = Int(try r.u16(54))
        let phnum = Int(try r.u16(56))
        guard phentsize == 56 else { throw BootError("kernel \(path): ELF program header size \(phentsize), expected 56") }
        guard phnum > 0, phnum <= maxProgramHeaders else { throw BootError("kernel \(path): ELF has \(phnum) program headers") }
        guard phoff < UInt64(bytes.count), UInt64(bytes.count) - phoff >= UInt64(phnum * phentsize) else {
            throw BootError("kernel \(path): ELF program headers lie past the end of the file (cut short?)")
        }

        var segments: [KernelImage.Segment] = []
        var pvhEntry: UInt32?
        var linux = false
        var end: UInt64 = 0
        for i in 0..<phnum {
            let h = Int(phoff) + i * phentsize
            let ptype = try r.u32(h)
            let offset = try r.u64(h + 8)
            let paddr = try r.u64(h + 24)
            let filesz = try r.u64(h + 32)
            let memsz = try r.u64(h + 40)
            guard offset <= UInt64(bytes.count), filesz <= UInt64(bytes.count) - offset else {
                throw BootError("kernel \(path): ELF segment \(i) lies past the end of the file (cut short?)")
            }
            if ptype == ptLoad {
                guard filesz <= memsz else { throw BootError("kernel \(path): ELF segment \(i) has file size above memory size") }
                guard memsz > 0 else { continue }
                let (segEnd, overflow) = paddr.addingReportingOverflow(memsz)
                guard !overflow, memsz < 1 << 40 else { throw BootError("kernel \(path): ELF segment \(i) at 0x\(String(paddr, radix: 16)) wraps the address space") }
                segments.append(.init(guestAddress: paddr, fileOffset: Int(offset), fileSize: Int(filesz), memorySize: memsz))
                end = max(end, segEnd)
            } else if ptype == ptNote {
                try walkNotes(r, offset: Int(offset), size: Int(filesz)) { name, type, desc, descsz in
                    if type == xenElfNotePhys32Entry, name.elementsEqual("Xen\0".utf8), descsz >= 4, pvhEntry == nil { pvhEntry = try r.u32(desc) }
                    if name.elementsEqual("Linux\0".utf8) { linux = true }
                }
            }
        }
        guard !segments.isEmpty else { throw BootError("kernel \(path): ELF has no loadable segment") }
        return KernelImage(
            path: path, bytes: bytes,
            entry: pvhEntry.map { .pvh32($0) } ?? .long64(entry),
            segments: segments, setupHeader: nil, isLinux: linux,
            commandLineLimit: linuxCommandLineSize,
            initrdLimit: X86Layout.lowRAMEnd, end: end)
    }

    /// Each note of an ELF note segment: its name (with its NUL), type, and
    /// its description's offset and size. Stops quietly at a note that
    /// does not fit (a hostile or cut image is parsed, never trusted).
    static func walkNotes(_ r: ByteReader, offset: Int, size: Int,
                          _ body: (ArraySlice<UInt8>, UInt32, Int, Int) throws -> Void) throws {
        var at = offset
        let limit = offset + size
        while at + 12 <= limit {
            let namesz = Int(try r.u32(at)), descsz = Int(try r.u32(at + 4)), type = try r.u32(at + 8)
            let name = at + 12
            guard namesz <= size, descsz <= size else { return }
            let desc = name + (namesz + 3) & ~3
            let next = desc + (descsz + 3) & ~3
            guard next <= limit else { return }
            try body(r.bytes[name..<name + namesz], type, desc, descsz)
            at = next
        }
    }
}
