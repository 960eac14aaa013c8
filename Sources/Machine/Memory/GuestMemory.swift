import CKVM
import Glibc

/// Why a guest-physical access was refused.
public struct GuestMemoryError: Error, CustomStringConvertible, Equatable, Sendable {
    public let address: UInt64
    public let length: UInt64
    public var description: String {
        "guest range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) is not guest RAM"
    }
}

/// Guest RAM: host mappings at guest-physical addresses, split around the
/// 32-bit hole. Every access is checked to lie wholly within one region:
/// guest-supplied addresses and lengths can never reach past it.
///
/// RAM is anonymous memory for a booted guest, or private mappings of
/// snapshot memory files for a restored one (pages are read on first
/// touch, and a write copies the page: the file never changes).
public final class GuestMemory: @unchecked Sendable {
    public static let pageSize: UInt64 = 4096

    public struct Region: @unchecked Sendable {
        public let guestBase: UInt64
        public let size: UInt64
        public let host: UnsafeMutableRawPointer
        public var guestEnd: UInt64 { guestBase + size }
        public var pages: Int { Int(size / GuestMemory.pageSize) }
    }

    public let regions: [Region]
    public let totalSize: UInt64
    /// Snapshot memory files under a restored guest's RAM, base first.
    public let layers: [MemoryLayer]
    /// With dirty tracking on: a bit per page of each region, set by every
    /// write Skiff's devices make (KVM's dirty log has the guest's own).
    let deviceDirty: [UnsafeMutablePointer<UInt64>]?

    /// Maps `size` bytes of RAM with `layout`'s hole. Pages are reserved
    /// lazily (MAP_NORESERVE): only what the guest touches costs host memory.
    public convenience init(size: UInt64, layout: X86Layout.Type = X86Layout.self, trackDirty: Bool = false) throws {
        try self.init(ranges: layout.ramRanges(size: size), size: size, layers: [], trackDirty: trackDirty)
    }

    /// Maps RAM from snapshot memory files: the first layer whole, each
    /// later one (a diff) over it where it has pages.
    public convenience init(size: UInt64, layers: [MemoryLayer], layout: X86Layout.Type = X86Layout.self, trackDirty: Bool = false) throws {
        try self.init(ranges: layout.ramRanges(size: size), size: size, layers: layers, trackDirty: trackDirty)
    }

    init(ranges: [(UInt64, UInt64)], size: UInt64, layers: [MemoryLayer], trackDirty: Bool) throws {
        var regions: [Region] = []
        var fileOffset = MemoryFile.dataOffset
        func unmapAll() { for r in regions { munmap(r.host, Int(r.size)) } }
        for (base, length) in ranges {
            let p: UnsafeMutableRawPointer?
            if let first = layers.first {
                p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, first.fd, off_t(fileOffset))
            } else {
                p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            }
            guard let p, p != MAP_FAILED else {
                unmapAll()
                throw GuestMemoryError(address: base, length: length)
            }
            let region = Region(guestBase: base, size: length, host: p)
            regions.append(region)
            // Diff layers: their pages over the base, as private mappings too.
            for layer in layers.dropFirst() {
                guard let pages = layer.pages, regions.count - 1 < pages.count else { continue }
                for run in pages[regions.count - 1].runs {
                    let at = p + run.lowerBound * Int(Self.pageSize)
                    let offset = off_t(fileOffset + UInt64(run.lowerBound) * Self.pageSize)
                    let m = mmap(at, run.count * Int(Self.pageSize), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, layer.fd, offset)
                    guard m == at else {
                        unmapAll()
                        throw GuestMemoryError(address: base + UInt64(run.lowerBound) * Self.pageSize, length: UInt64(run.count) * Self.pageSize)
                    }
                }
            }
            fileOffset += length
        }
        self.regions = regions
        self.totalSize = size
        self.layers = layers
        if trackDirty {
            deviceDirty = regions.map { r in
                let words = (r.pages + 63) / 64
                let b = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
                b.initialize(repeating: 0, count: words)
                return b
            }
        } else {
            deviceDirty = nil
        }
    }

    deinit {
        for r in regions { munmap(r.host, Int(r.size)) }
        deviceDirty?.forEach { $0.deallocate() }
    }

    public var tracksDirtyPages: Bool { deviceDirty != nil }

    /// The highest guest-physical address of RAM, plus one.
    public var end: UInt64 { regions.last?.guestEnd ?? 0 }

    /// Host pointer to `length` bytes at `address`, or an error if any byte
    /// falls outside RAM. Overflow-safe for any 64-bit inputs.
    public func pointer(at address: UInt64, length: UInt64) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        for r in regions where address >= r.guestBase && address < r.guestEnd {
            let offset = address - r.guestBase
            guard length <= r.size - offset else { break }
            return r.host + Int(offset)
        }
        throw GuestMemoryError(address: address, length: length)
    }

    /// Records that Skiff (not the guest) wrote [address, address+length):
    /// a diff snapshot must carry those pages too. Free when tracking is off.
    @inline(__always)
    public func markDirty(_ address: UInt64, length: UInt64) {
        guard let bitmaps = deviceDirty, length > 0 else { return }
        for (i, r) in regions.enumerated() where address >= r.guestBase && address < r.guestEnd {
            let first = Int((address - r.guestBase) / Self.pageSize)
            let last = Int((min(address + length, r.guestEnd) - 1 - r.guestBase) / Self.pageSize)
            for page in first...last { ckvm_atomic_or_u64(bitmaps[i] + page / 64, 1 << UInt64(page % 64)) }
        }
    }

    /// Takes (and clears) the device-written pages of region `index`,
    /// OR-ing them into `bitmap`.
    public func takeDeviceDirty(region index: Int, into bitmap: UnsafeMutablePointer<UInt64>) {
        guard let bitmaps = deviceDirty else { return }
        for w in 0..<(regions[index].pages + 63) / 64 { bitmap[w] |= ckvm_atomic_exchange_u64(bitmaps[index] + w, 0) }
    }

    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        (try? pointer(at: address, length: length)) != nil
    }

    public func write(_ bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(at: address, length: UInt64(bytes.count))
        markDirty(address, length: UInt64(bytes.count))
        var i = 0
        for b in bytes { p.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        let p = try pointer(at: address, length: UInt64(bytes.count))
        markDirty(address, length: UInt64(bytes.count))
        p.copyMemory(from: src, byteCount: bytes.count)
    }

    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let p = try pointer(at: address, length: UInt64(count))
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    public func fill(_ byte: UInt8, at address: UInt64, length: UInt64) throws(GuestMemoryError) {
        let p = try pointer(at: address, length: length)
        markDirty(address, length: length)
        memset(p, Int32(byte), Int(length))
    }

    /// Loads a trivial value; unaligned addresses are fine on x86.
    public func load<T: BitwiseCopyable>(_ type: T.Type, at address: UInt64) throws(GuestMemoryError) -> T {
        try pointer(at: address, length: UInt64(MemoryLayout<T>.size)).loadUnaligned(as: T.self)
    }

    public func store<T: BitwiseCopyable>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(at: address, length: UInt64(MemoryLayout<T>.size))
        markDirty(address, length: UInt64(MemoryLayout<T>.size))
        p.storeBytes(of: value, as: T.self)
    }
}
