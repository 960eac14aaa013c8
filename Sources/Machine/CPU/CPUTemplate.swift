import CKVM
import Glibc

/// What CPUID tells the guest: KVM's supported set, shaped by a named
/// template, with each vCPU's topology filled in.
///
/// On KVM's PVM backend only the bits inside KVM's supported set are
/// KVM's to hide: the guest sees the host CPU's own bits for the rest
/// (XSAVE, POPCNT, SMAP among them, measured with a probe guest). So the
/// `pvm` template also asks Linux, on its command line, to leave those alone.
public enum CPUTemplate: String, CaseIterable, Sendable {
    /// Everything KVM supports on this host.
    case host
    /// Hides what KVM's PVM backend cannot emulate in guest kernel mode
    /// (PLATFORM.md): XSAVE and AVX with it, CMPXCHG16B, POPCNT, SMAP,
    /// FSGSBASE; advertises XSAVEERPTR so Linux skips an x87 workaround.
    case pvm

    /// `pvm` on a host whose KVM is the PVM backend, else `host`.
    public static func automatic(sysModule: String = "/sys/module") -> CPUTemplate {
        access(sysModule + "/kvm_pvm", F_OK) == 0 ? .pvm : .host
    }

    /// Words a Linux guest needs on its command line under this template.
    /// Bit numbers, not names: names need CONFIG_X86_FEATURE_NAMES.
    public var linuxCommandLine: String {
        switch self {
        case .host: ""
        // 151 = X86_FEATURE_POPCNT (word 4, bit 23), 308 = X86_FEATURE_SMAP (word 9, bit 20)
        case .pvm: "noxsave nofsgsbase clearcpuid=151,308"
        }
    }

    public func apply(to supported: [kvm_cpuid_entry2], vcpu: UInt32, vcpus: Int) -> [kvm_cpuid_entry2] {
        var entries = supported
        if self == .pvm {
            entries.removeAll { $0.function == 0xd } // XSAVE state enumeration
        }
        for i in entries.indices {
            var e = entries[i]
            switch e.function {
            case 1:
                // Initial APIC ID, logical processor count; hypervisor present.
                e.ebx = (e.ebx & 0x0000_ffff) | (vcpu << 24) | (UInt32(min(vcpus, 255)) << 16)
                e.ecx |= 1 << 31
                if vcpus > 1 { e.edx |= 1 << 28 } // HTT: the count above is valid
                if self == .pvm {
                    e.ecx &= ~(Bit.xsave | Bit.osxsave | Bit.avx | Bit.cx16 | Bit.popcnt | Bit.fma | Bit.f16c)
                }
            case 7 where e.index == 0:
                if self == .pvm {
                    e.ebx &= ~(Bit.fsgsbase | Bit.smap | Bit.avx2 | Bit.avx512Mask)
                    e.ecx &= ~Bit.avx512ecxMask
                    e.edx &= ~Bit.avx512edxMask
                }
            case 0xb, 0x1f:
                e.edx = vcpu // x2APIC ID
            case 0x4000_0001 where self == .pvm:
                // KVM paravirtual features that work through hypercalls,
                // which spin on PVM hosts: PV unhalt (kick), PV send-IPI,
                // PV sched-yield.
                e.eax &= ~(Bit.kvmPVUnhalt | Bit.kvmPVSendIPI | Bit.kvmPVSchedYield)
            case 0x8000_0008:
                if self == .pvm { e.ebx |= Bit.xsaveErrPtr }
            default:
                break
            }
            entries[i] = e
        }
        return entries
    }

    enum Bit {
        static let fma: UInt32 = 1 << 12, cx16: UInt32 = 1 << 13, popcnt: UInt32 = 1 << 23
        static let xsave: UInt32 = 1 << 26, osxsave: UInt32 = 1 << 27, avx: UInt32 = 1 << 28, f16c: UInt32 = 1 << 29
        static let fsgsbase: UInt32 = 1 << 0, avx2: UInt32 = 1 << 5, smap: UInt32 = 1 << 20
        // AVX-512 needs XSAVE: F, DQ, IFMA, PF, ER, CD, BW, VL
        static let avx512Mask: UInt32 = (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31)
        // VBMI, VBMI2, GFNI-with-AVX users, VNNI, BITALG, VPOPCNTDQ, VAES, VPCLMULQDQ
        static let avx512ecxMask: UInt32 = (1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14)
        static let avx512edxMask: UInt32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23)
        static let xsaveErrPtr: UInt32 = 1 << 2
        static let kvmPVUnhalt: UInt32 = 1 << 7, kvmPVSendIPI: UInt32 = 1 << 11, kvmPVSchedYield: UInt32 = 1 << 13
    }
}
