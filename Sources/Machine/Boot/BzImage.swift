/// Linux's bzImage (x86 boot protocol 2.10 and later), entered at its
/// 64-bit entry point (protected-mode code + 0x200) in long mode.
enum BzImage {
    static let minimumProtocol: UInt16 = 0x020a
    static let loadAddress = X86Layout.highMemory
    static let xlfKernel64: UInt16 = 1
    static let loadedHigh: UInt8 = 1

    static func parse(_ bytes: [UInt8], path: String) throws -> KernelImage {
        let r = ByteReader(bytes: bytes, name: "kernel \(path)")
        guard try r.u16(0x1fe) == 0xaa55 else { throw BootError("kernel \(path): bzImage boot flag is not 0xAA55") }
        let version = try r.u16(0x206)
        guard version >= minimumProtocol else {
            throw BootError("kernel \(path): boot protocol \(version >> 8).\(String(format2: version & 0xff)) is older than 2.10")
        }
        guard try r.u8(0x211) & loadedHigh != 0 else { throw BootError("kernel \(path): zImage (not loaded high); Skiff boots bzImage") }
        guard try r.u16(0x236) & xlfKernel64 != 0 else { throw BootError("kernel \(path): bzImage has no 64-bit entry point") }

        var setupSectors = Int(try r.u8(0x1f1))
        if setupSectors == 0 { setupSectors = 4 }
        let kernelOffset = (setupSectors + 1) * 512
        guard kernelOffset < bytes.count else { throw BootError("kernel \(path): bzImage cut short (setup is \(kernelOffset) bytes, file \(bytes.count))") }
        let headerEnd = 0x202 + Int(try r.u8(0x201))
        guard headerEnd <= kernelOffset, headerEnd <= bytes.count else { throw BootError("kernel \(path): bzImage setup header overruns its setup code") }

        let cmdlineSize = Int(try r.u32(0x238))
        let initrdMax = UInt64(try r.u32(0x22c))
        let initSize = UInt64(try r.u32(0x260))
        // The payload is checked against its own length field, so a bzImage
        // cut short is caught here rather than as a guest crash.
        let syssize = Int(try r.u32(0x1f4)) * 16
        guard syssize <= bytes.count - kernelOffset else {
            throw BootError("kernel \(path): bzImage cut short (payload needs \(syssize) bytes, file has \(bytes.count - kernelOffset))")
        }
        let payload = bytes.count - kernelOffset
        return KernelImage(
            path: path, bytes: bytes, entry: .long64(loadAddress + 0x200),
            segments: [.init(guestAddress: loadAddress, fileOffset: kernelOffset, fileSize: payload, memorySize: UInt64(payload))],
            setupHeader: Array(bytes[0x1f1..<headerEnd]), isLinux: true,
            commandLineLimit: cmdlineSize > 0 ? cmdlineSize + 1 : 256,
            initrdLimit: initrdMax + 1,
            end: loadAddress + max(initSize, UInt64(payload)))
    }
}

extension String {
    init(format2 v: UInt16) { self = v < 10 ? "0\(v)" : "\(v)" }
}
