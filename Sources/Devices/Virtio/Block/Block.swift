import BlockTracking
import CKVM
import Glibc
import Machine
import Synchronization

/// virtio-blk over a raw image file: read, write, flush, get-ID, discard
/// and write-zeroes; read-only or read-write; optionally O_DIRECT. Requests
/// are served on the device's own thread, never on a vCPU.
public final class Block: VirtioDevice {
    /// Reads and writes the guest completed (read: disk to guest).
    public let counters = IOCounters()
    public struct Options: Sendable {
        public var path: String
        public var readOnly = false
        public var id: String?
        public var direct = false
        /// Track changed blocks in `path.cbt` (created if missing). A disk
        /// whose map file exists is tracked whether or not this is set, so a
        /// later run or restore cannot change it unseen.
        public var changeTracking = false
        /// A live restore's filler (`DiskFill`): its socket; its flags file is `path.fill`.
        public var fillSocket: String?
        public init(path: String) { self.path = path }
        public var changeMapPath: String { path + ".cbt" }
        public var fillFlagsPath: String { path + ".fill" }
    }

    enum Feature {
        static let sizeMax: UInt64 = 1 << 1, segMax: UInt64 = 1 << 2, readOnly: UInt64 = 1 << 5
        static let blockSize: UInt64 = 1 << 6, flush: UInt64 = 1 << 9
        static let discard: UInt64 = 1 << 13, writeZeroes: UInt64 = 1 << 14
    }
    public static let queueSize: UInt16 = 256
    static let maxDiscardSectors: UInt32 = 1 << 22
    /// Where fallocate cannot zero a range, the zeroes are written by hand,
    /// and reset and pause wait for the request: so a request zeroes at
    /// most 1 MiB (what a write carries per segment). Linux splits larger
    /// ranges into requests of this size.
    static let maxWriteZeroesSectors: UInt32 = 2048

    public let type = VirtioDeviceType.block
    public let options: Options
    public let capacitySectors: UInt64
    let fd: Int32
    let config: [UInt8]
    private let worker = WorkerSlot()
    /// Changed-block tracking (a read-write disk with a map, `DISK.cbt`).
    public let tracker: ChangeTracker?
    /// A disk still arriving (a live restore): chunks are waited for before they are touched.
    public let fill: DiskFill?

    /// Opens the disk as `options` asks, for whoever has the privilege
    /// (a jailed VMM gets the file descriptor).
    public static func open(_ options: Options) throws(BlockError) -> Int32 {
        var flags = (options.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if options.direct { flags |= ckvm_o_direct() }
        let fd = Glibc.open(options.path, flags)
        guard fd >= 0 else { throw BlockError("disk \(options.path): \(String(cString: strerror(errno)))") }
        return fd
    }

    /// The disk's changed-block map, opened (and locked) if it is tracked:
    /// read-write, and asked for or already there.
    public static func openChangeMap(_ options: Options) throws(BlockError) -> ChangedBlockMapFile? {
        guard !options.readOnly, options.changeTracking || access(options.changeMapPath, F_OK) == 0 else { return nil }
        do { return try ChangedBlockMapFile(path: options.changeMapPath) } catch { throw BlockError("disk \(options.path): \(error.description)") }
    }

    /// A disk on `fd` (from `open`; closed with the device), its writes
    /// tracked in `changeMap` if one is given, its chunks waited for
    /// through `fill` (a flags file and the filler's socket) if it is still
    /// being restored.
    /// A deterministic machine's check of each request's data, and this disk's number there.
    let inputs: (any GuestInputs)?
    let diskNumber: UInt8

    public init(_ options: Options, fd: Int32, changeMap: ChangedBlockMapFile? = nil, fill: (flags: Int32, socket: Int32)? = nil,
                inputs: (any GuestInputs)? = nil, diskNumber: UInt8 = 0) throws(BlockError) {
        self.options = options
        self.inputs = inputs
        self.diskNumber = diskNumber
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG || st.st_mode & S_IFMT == S_IFBLK else {
            close(fd)
            throw BlockError("disk \(options.path): not a regular file or block device")
        }
        // A block device's size is where its end is; lseek's -1 would
        // otherwise become a huge disk (or a trap).
        let end = st.st_mode & S_IFMT == S_IFBLK ? lseek(fd, 0, SEEK_END) : st.st_size
        guard end >= 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw BlockError("disk \(options.path): cannot find its size: \(e)")
        }
        let size = UInt64(end)
        self.fd = fd
        capacitySectors = size / BlockRequest.sectorSize
        do {
            tracker = try changeMap.map { m throws(BlockError) in try ChangeTracker(file: m, disk: fd, diskBytes: size) }
            self.fill = try fill.map { f throws(BlockError) in try DiskFill(flagsFd: f.flags, socket: f.socket, diskBytes: size) }
        } catch {
            close(fd)
            throw error
        }
        if let id = options.id, id.utf8.count > BlockRequest.idLength {
            close(fd)
            throw BlockError("disk \(options.path): id '\(id)' is longer than \(BlockRequest.idLength) bytes")
        }
        var c = [UInt8](repeating: 0, count: 0x3c)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { c[at + i] = b } } }
        put(capacitySectors, 0x00)
        put(UInt32(1 << 20), 0x08)                     // size_max
        put(UInt32(Self.queueSize - 2), 0x0c)          // seg_max
        put(UInt32(512), 0x14)                         // blk_size
        put(Self.maxDiscardSectors, 0x24)              // max_discard_sectors
        put(UInt32(1), 0x28)                           // max_discard_seg
        put(UInt32(1), 0x2c)                           // discard_sector_alignment
        put(Self.maxWriteZeroesSectors, 0x30)          // max_write_zeroes_sectors
        put(UInt32(1), 0x34)                           // max_write_zeroes_seg
        c[0x38] = 1                                    // write_zeroes_may_unmap
        config = c
    }

    deinit { close(fd) }

    /// The guest knows the disk's size (and caches its blocks): a restore
    /// onto a disk of another size is refused. The contents are the user's
    /// to keep as they were.
    public func saveState(_ w: inout StateWriter) { w.u64(capacitySectors) }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        let saved = try r.u64()
        guard saved == capacitySectors else {
            throw SnapshotError("disk \(options.path): \(capacitySectors) sectors, the snapshot's guest had \(saved): not the disk it was taken with")
        }
    }

    public var features: UInt64 {
        var f = Feature.sizeMax | Feature.segMax | Feature.blockSize | Feature.flush
        f |= options.readOnly ? Feature.readOnly : Feature.discard | Feature.writeZeroes
        return f
    }

    public var queueSizes: [UInt16] { [Self.queueSize] }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = offset + i < config.count && offset >= 0 ? config[offset + i] : 0 }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {} // nothing writable

    public func activate(_ context: VirtioContext) throws {
        let queue = context.queues[0]
        worker.set(try QueueWorker(name: "virtio-blk", context: context, pollQueue: context.inline == nil ? 0 : nil) { [self] _, _ throws(QueueError) in
            try queue.drain(context.signals) { serve($0, memory: context.memory) }
        })
    }

    public func reset() { worker.stop() }

    /// Serves one request; returns the bytes written to the chain.
    func serve(_ chain: DescriptorChain, memory: GuestMemory) -> UInt32 {
        let readable = ChainIO(memory: memory, buffers: chain.readable)
        let writable = ChainIO(memory: memory, buffers: chain.writable)
        let request: BlockRequest
        do {
            request = try BlockRequest.parse(header: readable.read(offset: 0, count: Int(BlockRequest.headerSize)),
                                             readableLength: readable.length, writableLength: writable.length)
        } catch {
            // No status byte to report in, or no header: return the chain unused.
            return 0
        }
        var written: UInt64 = 0
        let status = perform(request, readable: readable, writable: writable, written: &written)
        writable.write([status.rawValue], offset: writable.length - 1)
        return UInt32(truncatingIfNeeded: written + 1)
    }

    func perform(_ r: BlockRequest, readable: ChainIO, writable: ChainIO, written: inout UInt64) -> BlockRequest.Status {
        guard let kind = r.kind else { return .unsupported }
        switch kind {
        case .read:
            guard r.fits(capacitySectors: capacitySectors) else { return .ioError }
            guard arrived(r.sector * BlockRequest.sectorSize, r.dataLength) else { return .ioError }
            var position = off_t(r.sector * BlockRequest.sectorSize)
            var ok = true
            writable.visit(offset: 0, count: r.dataLength) { p, n in
                guard ok else { return }
                ok = fullIO(n) { done in pread(fd, p + done, n - done, position + off_t(done)) }
                position += off_t(n)
            }
            if ok { written = r.dataLength; counters.read(r.dataLength) }
            if ok, let inputs { inputs.diskIO(disk: diskNumber, write: false, sector: r.sector, length: r.dataLength, crc: Self.crc(writable, 0, r.dataLength)) }
            return ok ? .ok : .ioError
        case .write:
            guard !options.readOnly else { return .ioError }
            guard r.fits(capacitySectors: capacitySectors) else { return .ioError }
            guard arrived(r.sector * BlockRequest.sectorSize, r.dataLength) else { return .ioError }
            let ok = tracked(r.sector * BlockRequest.sectorSize, r.dataLength) {
                var position = off_t(r.sector * BlockRequest.sectorSize)
                var ok = true
                readable.visit(offset: BlockRequest.headerSize, count: r.dataLength) { p, n in
                    guard ok else { return }
                    ok = fullIO(n) { done in pwrite(fd, p + done, n - done, position + off_t(done)) }
                    position += off_t(n)
                }
                return ok
            }
            if ok { counters.wrote(r.dataLength) }
            if ok, let inputs {
                inputs.diskIO(disk: diskNumber, write: true, sector: r.sector, length: r.dataLength, crc: Self.crc(readable, BlockRequest.headerSize, r.dataLength))
            }
            return ok ? .ok : .ioError
        case .flush:
            return fdatasync(fd) == 0 ? .ok : .ioError
        case .getID:
            var id = Array((options.id ?? "").utf8.prefix(BlockRequest.idLength))
            id += [UInt8](repeating: 0, count: BlockRequest.idLength - id.count)
            written = UInt64(writable.write(Array(id.prefix(Int(min(r.dataLength, UInt64(BlockRequest.idLength))))), offset: 0))
            return .ok
        case .discard, .writeZeroes:
            guard !options.readOnly else { return .ioError }
            // Exactly one segment, as max_discard_seg and max_write_zeroes_seg
            // say: more would let one request work through many (possibly
            // overlapping) ranges while reset and pause wait.
            guard r.dataLength == BlockRequest.segmentSize,
                  let s = BlockRequest.segments(readable.read(offset: BlockRequest.headerSize, count: Int(BlockRequest.segmentSize))).first
            else { return .ioError }
            let limit = kind == .discard ? Self.maxDiscardSectors : Self.maxWriteZeroesSectors
            guard s.sector <= capacitySectors, UInt64(s.count) <= capacitySectors - s.sector, s.count <= limit else { return .ioError }
            let start = off_t(s.sector * BlockRequest.sectorSize), length = off_t(UInt64(s.count) * BlockRequest.sectorSize)
            guard arrived(UInt64(start), UInt64(length)) else { return .ioError }
            let mode = kind == .discard || s.flags & 1 != 0 ? CKVM_FALLOC_PUNCH_HOLE | CKVM_FALLOC_KEEP_SIZE : CKVM_FALLOC_ZERO_RANGE
            let ok = tracked(UInt64(start), UInt64(length)) {
                guard ckvm_fallocate(fd, mode, start, length) != 0 else { return true }
                // Discard is advisory; write-zeroes must zero, by hand if
                // need be (at most maxWriteZeroesSectors, checked above).
                return kind == .discard || writeZeroes(at: start, length: length)
            }
            return ok ? .ok : .ioError
        }
    }

    /// The CRC-32C of `count` bytes of a chain from `offset` (a deterministic machine's check).
    static func crc(_ io: ChainIO, _ offset: UInt64, _ count: UInt64) -> UInt32 {
        var crc: UInt32 = 0
        io.visit(offset: offset, count: count) { p, n in crc = ckvm_crc32c(crc, p, n) }
        return crc
    }

    /// The range is all there (a disk still being restored waits for it).
    @inline(__always)
    func arrived(_ offset: UInt64, _ length: UInt64) -> Bool {
        guard let fill else { return true }
        return fill.ensure(offset: offset, length: length)
    }

    /// A change to the disk, marked in its map if it has one.
    @inline(__always)
    func tracked(_ offset: UInt64, _ length: UInt64, _ change: () -> Bool) -> Bool {
        guard let tracker else { return change() }
        return tracker.writing(offset: offset, length: length, change)
    }

    func writeZeroes(at start: off_t, length: off_t) -> Bool {
        let zeros = [UInt8](repeating: 0, count: 1 << 16)
        var done: off_t = 0
        while done < length {
            let n = Int(min(off_t(zeros.count), length - done))
            guard zeros.withUnsafeBytes({ z in fullIO(n) { d in pwrite(fd, z.baseAddress! + d, n - d, start + done + off_t(d)) } }) else { return false }
            done += off_t(n)
        }
        return true
    }
}

/// Repeats a read or write until `count` bytes are done; false on an error or end of file.
@inline(__always)
func fullIO(_ count: Int, _ op: (Int) -> Int) -> Bool {
    var done = 0
    while done < count {
        let n = op(done)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        done += n
    }
    return true
}

public struct BlockError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
