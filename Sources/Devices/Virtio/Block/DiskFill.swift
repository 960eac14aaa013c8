import BlockTracking
import Glibc
import Synchronization

/// A disk that is still arriving: a live restore (`skiff backup restore
/// --live`) writes the backup's chunks into the image while the VM runs
/// on it. Its filler marks each 1 MiB chunk present in a flags file
/// (`DISK.fill`, one byte per chunk, shared by mapping) once the chunk is
/// whole in the image; the VMM touches a chunk only once it is present,
/// and asks for one that is not over a socket, waiting for the answer. So
/// the filler never writes a chunk the guest may have changed, and the
/// guest never sees one half there.
///
/// The wire: the VMM sends a chunk number (4 bytes, little-endian); the
/// filler answers with the same number once the chunk is present, or with
/// its top bit set if it cannot fetch it (the request then fails with an
/// I/O error, as a disk's bad sector would). The filler is a host process,
/// but its answers are checked all the same: a wrong number, a short read,
/// silence for `timeoutMs` or a chunk still absent after a yes fail the
/// request, never the VMM.
public final class DiskFill: @unchecked Sendable {
    public static let chunkShift = ChangedBlockMap.chunkShift
    let socket: Int32
    let flagsFd: Int32
    let flags: UnsafePointer<UInt8>
    let chunks: Int
    let timeoutMs: Int32
    /// Set once every chunk has been seen present: no more looking.
    private let complete = Atomic<Bool>(false)
    /// Chunks below this are all present (the filler goes in order, mostly).
    private var presentBelow = 0

    /// Over `flagsFd` (the flags file, at least one byte per chunk) and a
    /// socket connected to the filler; both are closed with it.
    public init(flagsFd: Int32, socket: Int32, diskBytes: UInt64, timeoutMs: Int32 = 120_000) throws(BlockError) {
        chunks = ChangedBlockMap.chunkCount(diskBytes)
        var st = stat()
        guard fstat(flagsFd, &st) == 0, st.st_size >= off_t(chunks) else {
            close(flagsFd); close(socket)
            throw BlockError("live restore: the flags file has \(st.st_size) bytes, the disk's \(chunks) chunks need one each")
        }
        guard let p = mmap(nil, max(chunks, 1), PROT_READ, MAP_SHARED, flagsFd, 0), p != MAP_FAILED else {
            close(flagsFd); close(socket)
            throw BlockError("live restore: mapping the flags file: \(String(cString: strerror(errno)))")
        }
        flags = UnsafePointer(p.assumingMemoryBound(to: UInt8.self))
        self.flagsFd = flagsFd
        self.socket = socket
        self.timeoutMs = timeoutMs
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: flags), max(chunks, 1))
        close(flagsFd)
        close(socket)
    }

    public var isComplete: Bool { complete.load(ordering: .acquiring) }

    /// Waits until every chunk of `[offset, offset + length)` is present;
    /// false if one cannot be had. Called by the device's one thread.
    public func ensure(offset: UInt64, length: UInt64) -> Bool {
        guard !isComplete, length > 0 else { return true }
        let first = Int(offset >> UInt64(Self.chunkShift))
        let last = Int((offset + length - 1) >> UInt64(Self.chunkShift))
        guard first >= 0, last < chunks else { return false }
        for c in first...last where !present(c) {
            guard ask(c), present(c) else { return false }
        }
        while presentBelow < chunks && present(presentBelow) { presentBelow += 1 }
        if presentBelow == chunks { complete.store(true, ordering: .releasing) }
        return true
    }

    @inline(__always)
    func present(_ c: Int) -> Bool { UnsafeAtomicLoad.byte(flags + c) != 0 }

    /// One request and its answer.
    func ask(_ c: Int) -> Bool {
        var request = UInt32(c).littleEndian
        guard withUnsafeBytes(of: &request, { write(socket, $0.baseAddress, 4) }) == 4 else { return false }
        var reply: UInt32 = 0
        var got = 0
        while got < 4 {
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, timeoutMs)
            if r < 0 && errno == EINTR { continue }
            guard r == 1 else { return false }
            let n = withUnsafeMutableBytes(of: &reply) { read(socket, $0.baseAddress! + got, 4 - got) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            got += n
        }
        return UInt32(littleEndian: reply) == UInt32(c)
    }
}

/// A plain load of a byte that another process changes, which the
/// optimiser must not keep in a register across calls.
enum UnsafeAtomicLoad {
    @inline(never)
    static func byte(_ p: UnsafePointer<UInt8>) -> UInt8 { p.pointee }
}
