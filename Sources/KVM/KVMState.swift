import CKVM
import Glibc

/// A piece of KVM state as KVM's own structure, kept as bytes: snapshots
/// store it as is, and its size (checked on restore) is what ties a
/// snapshot to the KVM ABI that made it.
public struct KVMStateBlob: Equatable, Sendable {
    public let name: String
    public let bytes: [UInt8]
    public init(name: String, bytes: [UInt8]) { self.name = name; self.bytes = bytes }
}

/// The ioctl pairs that read and write one structure, with its size.
public struct KVMStateKind: Sendable {
    public let name: String
    let get: UInt
    let set: UInt
    public let size: Int

    init<T>(_ name: String, _ type: T.Type, get: UInt, set: UInt) {
        self.name = name
        self.get = get
        self.set = set
        self.size = MemoryLayout<T>.size
    }
}

extension KVMStateKind {
    // vCPU state, in the order it must be restored: special registers
    // before the LAPIC (APIC base), events last (they may inject).
    public static let mpState = KVMStateKind("mp_state", kvm_mp_state.self, get: CKVM_GET_MP_STATE, set: CKVM_SET_MP_STATE)
    public static let registers = KVMStateKind("regs", kvm_regs.self, get: CKVM_GET_REGS, set: CKVM_SET_REGS)
    public static let specialRegisters = KVMStateKind("sregs", kvm_sregs.self, get: CKVM_GET_SREGS, set: CKVM_SET_SREGS)
    public static let xsave = KVMStateKind("xsave", kvm_xsave.self, get: CKVM_GET_XSAVE, set: CKVM_SET_XSAVE)
    public static let xcrs = KVMStateKind("xcrs", kvm_xcrs.self, get: CKVM_GET_XCRS, set: CKVM_SET_XCRS)
    public static let debugRegisters = KVMStateKind("debugregs", kvm_debugregs.self, get: CKVM_GET_DEBUGREGS, set: CKVM_SET_DEBUGREGS)
    public static let lapic = KVMStateKind("lapic", kvm_lapic_state.self, get: CKVM_GET_LAPIC, set: CKVM_SET_LAPIC)
    public static let events = KVMStateKind("events", kvm_vcpu_events.self, get: CKVM_GET_VCPU_EVENTS, set: CKVM_SET_VCPU_EVENTS)
    // VM-wide state.
    public static let pit = KVMStateKind("pit2", kvm_pit_state2.self, get: CKVM_GET_PIT2, set: CKVM_SET_PIT2)
    public static let clock = KVMStateKind("clock", kvm_clock_data.self, get: CKVM_GET_CLOCK, set: CKVM_SET_CLOCK)
    public static let irqchip = KVMStateKind("irqchip", kvm_irqchip.self, get: CKVM_GET_IRQCHIP, set: CKVM_SET_IRQCHIP)
}

/// Reads and writes state structures through an fd (a vCPU's or the VM's).
protocol KVMStateHolder {
    var fd: Int32 { get }
    var stateOwner: String { get }
}

extension KVMStateHolder {
    /// Reads `kind`; `prepare` may fill the structure's input fields first
    /// (the irqchip's chip_id).
    func readState(_ kind: KVMStateKind, prepare: (UnsafeMutableRawPointer) -> Void = { _ in }) throws -> KVMStateBlob {
        var bytes = [UInt8](repeating: 0, count: kind.size)
        let r = bytes.withUnsafeMutableBytes { p -> Int32 in
            prepare(p.baseAddress!)
            return ckvm_ioctl_ptr(fd, kind.get, p.baseAddress)
        }
        _ = try check("reading \(kind.name) of \(stateOwner)", r)
        return KVMStateBlob(name: kind.name, bytes: bytes)
    }

    /// Writes `blob` back; its size must be this KVM's size of the structure.
    func writeState(_ kind: KVMStateKind, _ blob: KVMStateBlob) throws {
        guard blob.bytes.count == kind.size else {
            throw SystemError("restoring \(kind.name) of \(stateOwner): \(blob.bytes.count) bytes saved, this KVM's structure has \(kind.size)", errno: EINVAL)
        }
        var bytes = blob.bytes
        let r = bytes.withUnsafeMutableBytes { ckvm_ioctl_ptr(fd, kind.set, $0.baseAddress) }
        _ = try check("restoring \(kind.name) of \(stateOwner)", r)
    }
}

extension KVMVcpu: KVMStateHolder {
    var stateOwner: String { "vCPU \(id)" }

    public func state(_ kind: KVMStateKind) throws -> KVMStateBlob { try readState(kind) }
    public func setState(_ kind: KVMStateKind, _ blob: KVMStateBlob) throws { try writeState(kind, blob) }

    /// The values of `indices`; MSRs KVM refuses to read are left out.
    public func readMSRs(_ indices: [UInt32]) -> [(index: UInt32, value: UInt64)] {
        var result: [(index: UInt32, value: UInt64)] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let batch = Array(rest)
            var values = [UInt64](repeating: 0, count: batch.count)
            let n = Int(ckvm_get_msrs(fd, batch, &values, UInt32(batch.count)))
            guard n >= 0 else { break }
            for i in 0..<min(n, batch.count) { result.append((batch[i], values[i])) }
            rest = rest.dropFirst(n + 1) // KVM stopped at the one it refused: skip it
        }
        return result
    }

    /// Writes MSRs in order; throws naming the first KVM refused.
    public func writeMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws {
        let n = ckvm_set_msrs(fd, msrs.map(\.index), msrs.map(\.value), UInt32(msrs.count))
        _ = try check("restoring MSRs of vCPU \(id)", n)
        if Int(n) < msrs.count {
            throw SystemError("restoring MSR 0x\(String(msrs[Int(n)].index, radix: 16)) of vCPU \(id): refused by KVM", errno: EINVAL)
        }
    }
}

extension KVMVirtualMachine: KVMStateHolder {
    var stateOwner: String { "the VM" }

    public func state(_ kind: KVMStateKind) throws -> KVMStateBlob { try readState(kind) }
    public func setState(_ kind: KVMStateKind, _ blob: KVMStateBlob) throws { try writeState(kind, blob) }

    /// The in-kernel irqchip's three chips: PIC master (0), slave (1), IOAPIC (2).
    public func irqchip(_ chip: UInt32) throws -> KVMStateBlob {
        try readState(.irqchip) { $0.storeBytes(of: chip, as: UInt32.self) }
    }

    /// kvmclock as the guest sees it (set on restore so guest time goes on
    /// from where it stopped).
    public func setClock(_ blob: KVMStateBlob) throws {
        guard blob.bytes.count == KVMStateKind.clock.size else { return try writeState(.clock, blob) }
        var clock = blob.bytes.withUnsafeBytes { $0.loadUnaligned(as: kvm_clock_data.self) }
        clock.flags = 0 // only the value is ours to set; the rest is the host's
        try writeState(.clock, KVMStateBlob(name: blob.name, bytes: withUnsafeBytes(of: &clock) { Array($0) }))
    }

    /// Turns dirty-page logging of a memory slot on or off.
    public func setUserMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64, host: UnsafeMutableRawPointer, logDirty: Bool) throws {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: logDirty ? CKVM_MEM_LOG_DIRTY_PAGES : 0, guest_phys_addr: guestPhysical,
            memory_size: size, userspace_addr: UInt64(UInt(bitPattern: host)))
        _ = try check("KVM_SET_USER_MEMORY_REGION slot \(slot)", ckvm_ioctl_ptr(fd, CKVM_SET_USER_MEMORY_REGION, &region))
    }

    /// The pages of `slot` the guest wrote since the last call (one bit per
    /// 4 KiB page; KVM clears its log as it hands it over).
    public func dirtyLog(slot: UInt32, into bitmap: UnsafeMutablePointer<UInt64>) throws {
        var log = kvm_dirty_log()
        log.slot = slot
        log.dirty_bitmap = UnsafeMutableRawPointer(bitmap)
        _ = try check("KVM_GET_DIRTY_LOG slot \(slot)", ckvm_ioctl_ptr(fd, CKVM_GET_DIRTY_LOG, &log))
    }
}

extension KVMSystem {
    /// The MSRs KVM can save and restore for a vCPU on this host.
    public func msrIndexList() throws -> [UInt32] {
        var capacity: UInt32 = 512
        while true {
            var indices = [UInt32](repeating: 0, count: Int(capacity))
            let n = ckvm_msr_index_list(fd, &indices, capacity)
            _ = try check("KVM_GET_MSR_INDEX_LIST", n)
            if UInt32(n) <= capacity { return Array(indices.prefix(Int(n))) }
            capacity = UInt32(n)
        }
    }
}
