/// One CPUID leaf as the VMM gave it to the vCPU.
public struct CPUIDLeaf: Equatable, Sendable {
    public var function: UInt32, index: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(function: UInt32, index: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        (self.function, self.index, self.eax, self.ebx, self.ecx, self.edx) = (function, index, eax, ebx, ecx, edx)
    }
}

/// What the emulator needs to know about the vCPU's CPU model: the XSAVE
/// layout (CPUID leaf 0xD) and a few feature bits.
public struct CPUFeatures: Equatable, Sendable {
    public struct Component: Equatable, Sendable {
        public var size: Int
        /// Offset in the standard (non-compacted) layout.
        public var offset: Int
        /// Starts on a 64-byte boundary in the compacted layout.
        public var aligned: Bool
        public var supervisor: Bool

        public init(size: Int, offset: Int, aligned: Bool, supervisor: Bool) {
            (self.size, self.offset, self.aligned, self.supervisor) = (size, offset, aligned, supervisor)
        }
    }

    /// XSAVE state components 2-62 the CPU describes.
    public var components: [Int: Component] = [:]
    /// XCR0 bits the CPU supports (leaf 0xD.0 EDX:EAX).
    public var supportedXCR0: UInt64 = 3
    public var xsaveopt = false, xsavec = false, xgetbv1 = false, xsaves = false
    public var physicalAddressBits = 36

    public init() {}

    public init(cpuid leaves: [CPUIDLeaf]) {
        for l in leaves {
            switch (l.function, l.index) {
            case (0xd, 0):
                supportedXCR0 = UInt64(l.eax) | UInt64(l.edx) << 32
            case (0xd, 1):
                xsaveopt = l.eax & 1 != 0
                xsavec = l.eax & 2 != 0
                xgetbv1 = l.eax & 4 != 0
                xsaves = l.eax & 8 != 0
            case (0xd, 2...62) where l.eax != 0:
                components[Int(l.index)] = Component(size: Int(l.eax), offset: Int(l.ebx), aligned: l.ecx & 2 != 0, supervisor: l.ecx & 1 != 0)
            case (0x8000_0008, _):
                let bits = Int(l.eax & 0xff)
                if bits >= 32 && bits <= 52 { physicalAddressBits = bits }
            default:
                break
            }
        }
    }
}
