import CKVM
import Glibc

/// What CPUID tells the guest: KVM's supported set, shaped by a named
/// template, with each vCPU's topology filled in.
///
/// On KVM's PVM backend only the bits inside KVM's supported set are
/// KVM's to hide: guest user mode sees the host CPU's own bits and XCR0
/// (AVX and AVX-512 among them, measured with a probe guest). So the guest
/// kernel must be told of the whole XSAVE state user mode can use, or it
/// will not save it across context switches (issue 9). KVM's emulator
/// lacks XSAVE/XRSTOR; Skiff completes them (`InstructionCompletion`).
public enum CPUTemplate: String, CaseIterable, Sendable {
    /// Everything KVM supports on this host.
    case host
    /// For KVM's PVM backend: XSAVE, AVX and leaf 0xD left as KVM reports
    /// them (the guest kernel sees the host's XSAVE bits there anyway, and
    /// Skiff completes XSAVE/XRSTOR); CMPXCHG16B, POPCNT, SMAP and FSGSBASE hidden
    /// (Skiff would complete them too, but each costs an exit to user space
    /// where Linux has a cheaper path); XSAVEERPTR advertised so Linux skips
    /// an x87 workaround (FNCLEX on every return to user mode).
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
        // 137 = X86_FEATURE_SSSE3 (word 4, bit 9): kernels with SIMD crypto
        // built in (Debian's blake2s for the RNG) would run SSSE3 in kernel
        // mode, which neither KVM's emulator nor Skiff completes; user mode
        // still has it (its CPUID is the host's). 151 = X86_FEATURE_POPCNT
        // (word 4, bit 23), 308 = X86_FEATURE_SMAP (word 9, bit 20).
        // Linux takes the last clearcpuid= only: this one must hold them all.
        case .pvm: "nofsgsbase clearcpuid=137,151,308"
        }
    }

    public func apply(to supported: [kvm_cpuid_entry2], vcpu: UInt32, vcpus: Int) -> [kvm_cpuid_entry2] {
        var entries = supported
        for i in entries.indices {
            var e = entries[i]
            switch e.function {
            case 1:
                // Initial APIC ID, logical processor count; hypervisor present.
                e.ebx = (e.ebx & 0x0000_ffff) | (vcpu << 24) | (UInt32(min(vcpus, 255)) << 16)
                e.ecx |= 1 << 31
                if vcpus > 1 { e.edx |= 1 << 28 } // HTT: the count above is valid
                if self == .pvm {
                    e.ecx &= ~(Bit.cx16 | Bit.popcnt)
                }
            case 7 where e.index == 0:
                if self == .pvm {
                    e.ebx &= ~(Bit.fsgsbase | Bit.smap)
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

    /// A deterministic machine's CPUID (on top of a template's): nothing
    /// that gives the guest a value or a time from outside its exits. No
    /// RDRAND or RDSEED, no TSC, no TSC deadline, no local APIC
    /// (the machine has only a PIC), and no KVM leaves (no kvmclock). On
    /// PVM hosts guest user mode still sees the host's CPUID and runs RDTSC
    /// and RDRAND natively: what a replay there cannot make the same.
    public static func deterministic(_ entries: [kvm_cpuid_entry2]) -> [kvm_cpuid_entry2] {
        entries.compactMap { entry in
            var e = entry
            switch e.function {
            case 1:
                e.ecx &= ~(1 << 30 | 1 << 24 | 1 << 21) // RDRAND, TSC deadline, x2APIC
                e.edx &= ~(1 << 9 | 1 << 4) // APIC, TSC (Skiff's kernel then never reads it: kernel/patches/0002)
            case 7 where e.index == 0:
                e.ebx &= ~(1 << 18) // RDSEED
            case 0x8000_0007:
                e.edx &= ~(1 << 8) // invariant TSC
            case 0x4000_0000...0x4000_00ff:
                return nil
            default:
                break
            }
            return e
        }
    }

    enum Bit {
        static let cx16: UInt32 = 1 << 13, popcnt: UInt32 = 1 << 23
        static let fsgsbase: UInt32 = 1 << 0, smap: UInt32 = 1 << 20
        static let xsaveErrPtr: UInt32 = 1 << 2
        static let kvmPVUnhalt: UInt32 = 1 << 7, kvmPVSendIPI: UInt32 = 1 << 11, kvmPVSchedYield: UInt32 = 1 << 13
    }
}
