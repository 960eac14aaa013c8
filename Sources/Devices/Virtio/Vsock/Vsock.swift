import Glibc
import Machine
import Synchronization

/// virtio-vsock with Firecracker's hybrid host side: the host connects to
/// the Unix socket `socketPath` and writes `CONNECT <port>\n` to reach a
/// guest port (answered `OK <host port>\n`); a guest connection to the
/// host (CID 2) port P reaches the Unix socket `<socketPath>_<P>`. Stream
/// sockets, with virtio's credit flow control both ways: what Skiff buffers
/// for a connection is bounded by the credit it advertised.
public final class Vsock: VirtioDevice {
    public struct Options: Sendable {
        public var cid: UInt64
        public var socketPath: String
        public init(cid: UInt64, socketPath: String) { self.cid = cid; self.socketPath = socketPath }
    }

    public static let hostCID: UInt64 = 2
    static let bufferAllocation: UInt32 = 256 << 10
    static let maxPayload = 64 << 10
    /// Control packets waiting for rx buffers; past this a guest that sends
    /// without receiving gets no more (its RSTs and updates are dropped).
    static let maxQueuedControl = 1024
    /// A guest that writes this much past its credit is cut off.
    static let overrunLimit = Int(bufferAllocation) + (64 << 10)
    /// Open connections, both ways, plus host sockets still sending their
    /// CONNECT line; past this a guest REQUEST gets RST and a host client
    /// is closed at once. Each costs a host descriptor and up to
    /// `overrunLimit` of buffered data: 256 keeps a VMM well inside the
    /// usual 1024-descriptor limit and under 100 MiB of buffers however
    /// the guest behaves (Firecracker allows 1023).
    static let maxConnections = 256
    /// Guest connections waiting for a host listener's full backlog; each
    /// is retried every `retryMs`, so this bounds that work.
    static let maxConnecting = 16
    static let retryMs: Int32 = 10
    /// How long a handshake or a close may take: a host listener that
    /// stays full (Linux's own connect timeout is 2 s too), a guest that
    /// does not answer a host REQUEST or the SHUTDOWN sent when the host
    /// closed. Then the connection is reset: "if no RST response is
    /// received within an implementation-specific amount of time, a RST
    /// packet is sent to forcibly disconnect" (virtio 1.2, 5.10.6.6).
    static let handshakeTimeoutNs = 2_000_000_000
    /// How long a guest may take to answer a host REQUEST. Longer than a
    /// handshake: a guest whose kernel mode is emulated (PVM hosts), among
    /// 50 restored at once, took more than 2 s, and resetting its
    /// connections made each try the host's next one more work for it,
    /// so that some never took their identity. The host client still
    /// gives up when it likes; a guest that never answers holds only one
    /// of `maxConnections` meanwhile.
    static let requestTimeoutNs = 30_000_000_000
    /// A host client must finish its CONNECT line within this; longer than
    /// a handshake so that one typed by hand (socat) still makes it.
    static let connectLineTimeoutNs = 10_000_000_000
    /// accept(2) failing for want of descriptors leaves the listener
    /// readable: it is left out of the poll this long instead of spinning.
    static let acceptBackoffNs = 100_000_000

    public let type = VirtioDeviceType.vsock
    public let features: UInt64 = 0
    public let queueSizes: [UInt16] = [256, 256, 256]
    public let options: Options
    let listener: Int32
    private let loop = Mutex<VsockLoop?>(nil)

    public static func check(_ options: Options) throws(VsockError) {
        guard options.cid >= 3, options.cid < UInt64(UInt32.max) else {
            throw VsockError("--vsock cid=\(options.cid): guest CIDs start at 3")
        }
    }

    /// A device whose host side listens on `listener` (from `listen`, bound
    /// by whoever has the privilege; closed with the device). The socket
    /// file is removed by whoever bound it.
    public init(_ options: Options, listener: Int32) throws(VsockError) {
        try Self.check(options)
        self.options = options
        self.listener = listener
    }

    deinit { close(listener) }

    /// The listening socket at `path`, non-blocking. Static so that a
    /// privileged parent can make it and hand the descriptor in.
    public static func listen(_ path: String) throws(VsockError) -> Int32 {
        do { return try UnixListener.bind(path, backlog: 64) } catch {
            throw VsockError("vsock socket \(path): \(error.reason(inUse: "another process"))")
        }
    }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        let config = withUnsafeBytes(of: options.cid.littleEndian) { Array($0) }
        for i in data.indices { data[i] = offset >= 0 && offset + i < 8 ? config[offset + i] : 0 }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ context: VirtioContext) throws {
        let l = try VsockLoop(context: context, options: options, listener: listener,
                              announceReset: restored.exchange(false, ordering: .sequentiallyConsistent))
        loop.withLock { $0 = l }
    }

    public func reset() {
        let l = loop.withLock { l -> VsockLoop? in defer { l = nil }; return l }
        l?.shutdown()
    }

    /// Pausing keeps the connections; only the thread stops.
    public func quiesce() { loop.withLock { $0 }?.stopThread() }
    public func resume(_ context: VirtioContext) throws { try loop.withLock { $0 }?.startThread() }

    /// Connections live in host sockets, which a snapshot cannot carry: a
    /// restored device tells the guest its transport was reset (virtio
    /// 1.2, 5.10.6.7), so it drops them and new ones work.
    private let restored = Atomic<Bool>(false)
    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        restored.store(true, ordering: .sequentiallyConsistent)
    }
}

public struct VsockError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

