import CKVM
import Glibc

/// One VM's KVM handle: memory slots, the in-kernel irqchip and PIT, vCPUs.
public final class KVMVirtualMachine: @unchecked Sendable {
    public let fd: Int32
    public let system: KVMSystem

    init(fd: Int32, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    deinit { close(fd) }

    public func setUserMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64, host: UnsafeMutableRawPointer) throws {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: 0, guest_phys_addr: guestPhysical,
            memory_size: size, userspace_addr: UInt64(UInt(bitPattern: host)))
        _ = try check("KVM_SET_USER_MEMORY_REGION slot \(slot)", ckvm_ioctl_ptr(fd, CKVM_SET_USER_MEMORY_REGION, &region))
    }

    /// Where KVM keeps the real-mode TSS (needed by VMX hosts; three pages).
    public func setTSSAddress(_ address: UInt64) throws {
        _ = try check("KVM_SET_TSS_ADDR", ckvm_ioctl_val(fd, CKVM_SET_TSS_ADDR, UInt(address)))
    }

    /// The in-kernel PIC, IOAPIC and LAPICs.
    public func createIRQChip() throws {
        _ = try check("KVM_CREATE_IRQCHIP", ckvm_ioctl_val(fd, CKVM_CREATE_IRQCHIP, 0))
    }

    /// The in-kernel i8254 PIT, with a dummy port 0x61 speaker.
    public func createPIT() throws {
        var config = kvm_pit_config()
        config.flags = CKVM_PIT_SPEAKER_DUMMY
        _ = try check("KVM_CREATE_PIT2", ckvm_ioctl_ptr(fd, CKVM_CREATE_PIT2, &config))
    }

    /// Sets an interrupt line of the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, high: Bool) throws {
        var level = kvm_irq_level()
        level.irq = irq
        level.level = high ? 1 : 0
        _ = try check("KVM_IRQ_LINE \(irq)", ckvm_ioctl_ptr(fd, CKVM_IRQ_LINE, &level))
    }

    /// Writes to `eventfd` raise interrupt line `gsi` (an edge) in the kernel.
    public func registerIRQFD(_ eventfd: Int32, gsi: UInt32) throws {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(bitPattern: eventfd)
        irqfd.gsi = gsi
        _ = try check("KVM_IRQFD gsi \(gsi)", ckvm_ioctl_ptr(fd, CKVM_IRQFD, &irqfd))
    }

    /// A guest write of `value` (4 bytes) to MMIO `address` signals `eventfd`
    /// inside the kernel, without an exit to Skiff.
    public func registerIOEventFD(_ eventfd: Int32, mmioAddress address: UInt64, value: UInt32) throws {
        var e = kvm_ioeventfd()
        e.datamatch = UInt64(value)
        e.addr = address
        e.len = 4
        e.fd = eventfd
        e.flags = CKVM_IOEVENTFD_FLAG_DATAMATCH
        _ = try check("KVM_IOEVENTFD 0x\(String(address, radix: 16))", ckvm_ioctl_ptr(fd, CKVM_IOEVENTFD, &e))
    }

    public func createVcpu(id: UInt32) throws -> KVMVcpu {
        let vfd = try check("KVM_CREATE_VCPU \(id)", ckvm_ioctl_val(fd, CKVM_CREATE_VCPU, UInt(id)))
        let size = try system.vcpuMmapSize
        guard size >= MemoryLayout<kvm_run>.size,
              let run = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vfd, 0), run != MAP_FAILED else {
            let error = SystemError("mmap kvm_run of vCPU \(id)")
            close(vfd)
            throw error
        }
        return KVMVcpu(id: id, fd: vfd, run: run, runSize: size)
    }
}
