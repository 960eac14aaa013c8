/// A kernel image parsed and checked, ready to be copied into guest memory.
public struct KernelImage: Sendable {
    public enum Entry: Equatable, Sendable {
        /// 64-bit long mode at this address, RSI pointing at the zero page
        /// (Linux's 64-bit boot protocol; ELF vmlinux and bzImage).
        case long64(UInt64)
        /// 32-bit protected mode, paging off, EBX pointing at the PVH
        /// start_info (Xen's PVH boot ABI, as QEMU and Firecracker use it).
        case pvh32(UInt32)
    }

    /// A piece of the file to place at a guest-physical address; the bytes
    /// from `fileSize` to `memorySize` are zero (an ELF segment's .bss).
    public struct Segment: Sendable {
        public let guestAddress: UInt64
        public let fileOffset: Int
        public let fileSize: Int
        public let memorySize: UInt64
    }

    public let path: String
    public let bytes: [UInt8]
    public let entry: Entry
    public let segments: [Segment]
    /// For a bzImage: its setup header, to copy into the zero page.
    public let setupHeader: [UInt8]?
    /// Linux (a bzImage, or an ELF with a "Linux" note), not a probe guest.
    public let isLinux: Bool
    /// The longest command line the kernel accepts, including the NUL.
    public let commandLineLimit: Int
    /// The highest address an initrd may end at (protocol's initrd_addr_max + 1).
    public let initrdLimit: UInt64
    /// The end of what the kernel needs in memory (for decompression too).
    public let end: UInt64

    /// Recognises an ELF or a bzImage by its magic and parses it.
    public static func parse(_ bytes: [UInt8], path: String) throws -> KernelImage {
        if bytes.isEmpty { throw BootError("kernel \(path): empty file") }
        if bytes.starts(with: [0x7f, 0x45, 0x4c, 0x46]) { return try ElfKernel.parse(bytes, path: path) }
        if bytes.count > 0x206, bytes[0x202..<0x206].elementsEqual("HdrS".utf8) {
            return try BzImage.parse(bytes, path: path)
        }
        let magic = bytes.prefix(4).map { String($0, radix: 16) }.joined(separator: " ")
        throw BootError("kernel \(path): not an ELF or bzImage (bad magic \(magic))")
    }

    /// Copies the segments into guest memory after checking each fits in RAM
    /// and stays clear of the boot structures below `reservedBelow`.
    public func load(into memory: GuestMemory, reservedBelow: UInt64 = X86Layout.commandLine + X86Layout.commandLineMax) throws {
        for (i, s) in segments.enumerated() {
            let hex = "0x" + String(s.guestAddress, radix: 16)
            guard s.guestAddress >= reservedBelow else {
                throw BootError("kernel \(path): segment \(i) at \(hex) overlaps Skiff's boot area (below 0x\(String(reservedBelow, radix: 16)))")
            }
            let region: UnsafeMutableRawPointer
            do { region = try memory.pointer(at: s.guestAddress, length: s.memorySize) } catch {
                throw BootError("kernel \(path): segment \(i) at \(hex) (\(s.memorySize) bytes) lies outside guest memory (\(memory.totalSize >> 20) MiB)")
            }
            bytes.withUnsafeBytes { src in
                region.copyMemory(from: src.baseAddress! + s.fileOffset, byteCount: s.fileSize)
            }
            (region + s.fileSize).initializeMemory(as: UInt8.self, repeating: 0, count: Int(s.memorySize) - s.fileSize)
        }
        guard memory.contains(X86Layout.highMemory, length: max(end, X86Layout.highMemory) - X86Layout.highMemory) else {
            throw BootError("kernel \(path): needs memory up to 0x\(String(end, radix: 16)), more than the guest's \(memory.totalSize >> 20) MiB")
        }
    }
}
