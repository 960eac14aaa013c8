import CKVM
import Glibc

/// The KVM device cannot be opened: missing, not permitted, or busy.
public struct KVMUnavailable: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let errno: Int32
    public var description: String {
        let hint = errno == ENOENT ? " (is KVM enabled on this host?)" : errno == EACCES ? " (run as root or join the kvm group)" : ""
        return "\(path): \(String(cString: strerror(errno)))\(hint)"
    }
}

/// `/dev/kvm`: the system-wide KVM handle.
public final class KVMSystem: @unchecked Sendable {
    public let fd: Int32
    public let path: String

    /// Opens the KVM device; the error says whether it is missing or not permitted.
    public convenience init(path: String = "/dev/kvm") throws {
        try self.init(fd: try Self.open(path), path: path)
    }

    /// Opens the KVM device, for a VMM that gets it as a file descriptor
    /// (a jailed one has no /dev).
    public static func open(_ path: String) throws(KVMUnavailable) -> Int32 {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw KVMUnavailable(path: path, errno: errno) }
        return fd
    }

    /// Takes `fd`, an open KVM device (closed with this object).
    public init(fd: Int32, path: String) throws {
        self.fd = fd
        self.path = path
        let version = ckvm_ioctl_val(fd, CKVM_GET_API_VERSION, 0)
        guard version == 12 else {
            close(fd)
            throw SystemError("\(path): KVM API version \(version), expected 12", errno: EINVAL)
        }
    }

    deinit { close(fd) }

    public func capability(_ cap: Int32) -> Int32 {
        max(0, ckvm_ioctl_val(fd, CKVM_CHECK_EXTENSION, UInt(cap)))
    }

    public var vcpuMmapSize: Int {
        get throws { Int(try check("KVM_GET_VCPU_MMAP_SIZE", ckvm_ioctl_val(fd, CKVM_GET_VCPU_MMAP_SIZE, 0))) }
    }

    /// The most vCPUs one VM may have on this host.
    public var maxVcpus: Int {
        let maxv = self.capability(CKVM_CAP_MAX_VCPUS)
        return Int(maxv > 0 ? maxv : max(4, self.capability(CKVM_CAP_NR_VCPUS)))
    }

    /// The CPUID leaves KVM can present to a guest on this host.
    public func supportedCPUID() throws -> [kvm_cpuid_entry2] {
        var capacity = 128
        while true {
            let list = CPUIDList(capacity: capacity)
            let r = ckvm_ioctl_ptr(fd, CKVM_GET_SUPPORTED_CPUID, list.raw)
            if r == 0 { return list.entries }
            if errno == E2BIG && capacity < 4096 { capacity *= 2; continue }
            throw SystemError("KVM_GET_SUPPORTED_CPUID")
        }
    }

    public func createVM() throws -> KVMVirtualMachine {
        let vmfd = try check("KVM_CREATE_VM", ckvm_ioctl_val(fd, CKVM_CREATE_VM, 0))
        return KVMVirtualMachine(fd: vmfd, system: self)
    }
}

/// A `struct kvm_cpuid2` with its flexible array of entries: Swift cannot
/// import the flexible array, so the header (8 bytes) is stepped over by hand.
final class CPUIDList {
    let raw: UnsafeMutableRawPointer
    let capacity: Int
    static let headerSize = 8

    init(capacity: Int) {
        self.capacity = capacity
        let size = Self.headerSize + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
        raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        raw.storeBytes(of: UInt32(capacity), as: UInt32.self) // nent
    }

    convenience init(_ entries: [kvm_cpuid_entry2]) {
        self.init(capacity: entries.count)
        let base = raw + Self.headerSize
        for (i, e) in entries.enumerated() {
            base.storeBytes(of: e, toByteOffset: i * MemoryLayout<kvm_cpuid_entry2>.stride, as: kvm_cpuid_entry2.self)
        }
    }

    deinit { raw.deallocate() }

    var entries: [kvm_cpuid_entry2] {
        let n = min(Int(raw.load(as: UInt32.self)), capacity)
        let base = raw + Self.headerSize
        return (0..<n).map { base.load(fromByteOffset: $0 * MemoryLayout<kvm_cpuid_entry2>.stride, as: kvm_cpuid_entry2.self) }
    }
}
