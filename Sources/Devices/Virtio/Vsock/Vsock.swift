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

    public static func listen(_ path: String) throws(VsockError) -> Int32 {
        var st = stat()
        if lstat(path, &st) == 0 {
            // A socket left by an earlier run is replaced; anything else is not ours.
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw VsockError("vsock socket \(path): exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VsockError("vsock socket \(path): \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        guard unixAddress(path, &address) else { close(fd); throw VsockError("vsock socket \(path): path too long") }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0, Glibc.listen(fd, 64) == 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw VsockError("vsock socket \(path): \(e)")
        }
        return fd
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

/// Fills a sockaddr_un; false if the path does not fit.
public func unixAddress(_ path: String, _ address: inout sockaddr_un) -> Bool {
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { p in
        p.copyBytes(from: bytes)
        p[bytes.count] = 0
    }
    return true
}

public struct VsockError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

/// One stream between a guest port and a host Unix socket.
final class VsockConnection {
    let fd: Int32
    let localPort: UInt32   // the host side's port
    let peerPort: UInt32    // the guest's port
    var established: Bool
    var hostClosed = false
    var peerBufferAllocation: UInt32 = 0, peerForwardCount: UInt32 = 0
    var sentToGuest: UInt32 = 0       // payload bytes delivered to the guest
    var forwarded: UInt32 = 0         // payload bytes written to the host socket
    var reportedForward: UInt32 = 0
    var toHost: [UInt8] = []
    var toGuest: [UInt8] = []

    init(fd: Int32, localPort: UInt32, peerPort: UInt32, established: Bool) {
        self.fd = fd
        self.localPort = localPort
        self.peerPort = peerPort
        self.established = established
    }

    /// What the guest can still take: its buffer minus what is in flight.
    /// The counters wrap (virtio 1.2, 5.10.6.3); a guest whose numbers make
    /// no sense gets nothing more, which stalls only its own stream.
    var guestCredit: Int {
        let inFlight = sentToGuest &- peerForwardCount
        return inFlight > peerBufferAllocation ? 0 : Int(peerBufferAllocation - inFlight)
    }
}

/// The vsock device's thread: guest queues, the listening socket and every
/// connection's socket in one poll loop.
final class VsockLoop: @unchecked Sendable {
    enum Queue { static let rx = 0, tx = 1, event = 2 }
    let context: VirtioContext
    let options: Vsock.Options
    let listener: Int32
    let stop: EventFD
    private var thread: HostThread?
    private var connections: [UInt64: VsockConnection] = [:]   // (local << 32 | peer)
    private var pendingHosts: [Int32: [UInt8]] = [:]            // accepted, CONNECT line not complete
    private var control: [VsockHeader] = []
    private var nextLocalPort: UInt32 = 1 << 30
    private var broken = false

    private var announceReset: Bool

    init(context: VirtioContext, options: Vsock.Options, listener: Int32, announceReset: Bool) throws {
        self.context = context
        self.options = options
        self.listener = listener
        self.announceReset = announceReset
        stop = try EventFD()
        try startThread()
    }

    func startThread() throws {
        _ = stop.consume()
        thread = try HostThread(name: "virtio-vsock") { [self] in run() }
    }

    func stopThread() {
        stop.signal()
        thread?.join()
        thread = nil
    }

    func shutdown() {
        stopThread()
        for c in connections.values { close(c.fd) }
        for fd in pendingHosts.keys { close(fd) }
        connections = [:]
        pendingHosts = [:]
    }

    private func key(_ local: UInt32, _ peer: UInt32) -> UInt64 { UInt64(local) << 32 | UInt64(peer) }

    private func run() {
        if announceReset {
            announceReset = false
            do throws(QueueError) { try sendTransportReset() } catch {
                broken = true
                context.signals.broken("\(error)")
            }
        }
        while true {
            var fds = [stop.fd]
            if !broken {
                fds += context.notifiers.map(\.fd) + [listener] + Array(pendingHosts.keys)
                fds += connections.values.filter { $0.established && !$0.hostClosed && $0.toGuest.isEmpty && $0.guestCredit > 0 }.map(\.fd)
            }
            let waiting = connections.values.contains { !$0.toHost.isEmpty }
            let ready = Set(Poller.wait(fds, timeoutMs: waiting ? 10 : -1))
            if ready.contains(stop.fd) { return }
            if broken { continue }
            for n in context.notifiers where ready.contains(n.fd) { n.consume() }
            do throws(QueueError) {
                try serveTransmitQueue()
                if ready.contains(listener) { acceptHosts() }
                for fd in pendingHosts.keys where ready.contains(fd) { readConnectLine(fd) }
                for c in connections.values where ready.contains(c.fd) { readFromHost(c) }
                for c in connections.values where !c.toHost.isEmpty { flushToHost(c) }
                try deliverToGuest()
            } catch {
                broken = true
                context.signals.broken("\(error)")
            }
        }
    }

    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, if the guest
    /// gave it a buffer.
    private func sendTransportReset() throws(QueueError) {
        let events = context.queues[Queue.event]
        guard let chain = try events.pop() else { return }
        let written = ChainIO(memory: context.memory, buffers: chain.writable).write([0, 0, 0, 0], offset: 0)
        events.push(head: chain.head, written: UInt32(written))
        if events.needsInterrupt() { context.signals.usedBuffers() }
    }

    // MARK: guest -> host

    private func serveTransmitQueue() throws(QueueError) {
        let tx = context.queues[Queue.tx]
        var any = false
        while let chain = try tx.pop() {
            any = true
            let io = ChainIO(memory: context.memory, buffers: chain.readable)
            if let h = VsockHeader.parse(io.read(offset: 0, count: VsockHeader.size)) {
                let length = min(Int(h.length), Vsock.maxPayload, Int(io.length) - VsockHeader.size)
                handle(h, payload: { io.read(offset: UInt64(VsockHeader.size), count: max(0, length)) })
            }
            tx.push(head: chain.head, written: 0)
        }
        if any && tx.needsInterrupt() { context.signals.usedBuffers() }
    }

    private func handle(_ h: VsockHeader, payload: () -> [UInt8]) {
        guard h.sourceCID == options.cid, h.destinationCID == Vsock.hostCID, h.type == VsockHeader.streamType,
              let op = h.operation else {
            if h.operation != .reset { reply(to: h, .reset) }
            return
        }
        let k = key(h.destinationPort, h.sourcePort)
        if op == .request {
            guard connections[k] == nil, let fd = connectHost(port: h.destinationPort) else { reply(to: h, .reset); return }
            let c = VsockConnection(fd: fd, localPort: h.destinationPort, peerPort: h.sourcePort, established: true)
            c.peerBufferAllocation = h.bufferAllocation
            c.peerForwardCount = h.forwardCount
            connections[k] = c
            send(c, .response)
            return
        }
        guard let c = connections[k] else {
            if op != .reset { reply(to: h, .reset) }
            return
        }
        c.peerBufferAllocation = h.bufferAllocation
        c.peerForwardCount = h.forwardCount
        switch op {
        case .response:
            if !c.established {
                c.established = true
                writeAll(c.fd, Array("OK \(c.localPort)\n".utf8))
            }
        case .readWrite:
            guard c.established else { drop(c, notify: true); return }
            c.toHost += payload()
            if c.toHost.count > Vsock.overrunLimit { drop(c, notify: true) } // the guest ignored our credit
        case .creditRequest:
            send(c, .creditUpdate)
        case .shutdown:
            if h.flags & VsockHeader.shutdownSend != 0 { flushToHost(c); Glibc.shutdown(c.fd, Int32(SHUT_WR)) }
            if h.flags & (VsockHeader.shutdownSend | VsockHeader.shutdownReceive) == VsockHeader.shutdownSend | VsockHeader.shutdownReceive {
                drop(c, notify: true)
            }
        case .reset:
            drop(c, notify: false)
        case .creditUpdate, .request:
            break
        }
    }

    private func connectHost(port: UInt32) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_un()
        guard unixAddress("\(options.socketPath)_\(port)", &address),
              withUnsafePointer(to: &address, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                  connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }) == 0 else {
            close(fd)
            return nil
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    private func flushToHost(_ c: VsockConnection) {
        while !c.toHost.isEmpty {
            let n = c.toHost.withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                if errno != EAGAIN { drop(c, notify: true) }
                return
            }
            c.toHost.removeFirst(n)
            c.forwarded &+= UInt32(n)
        }
        if c.forwarded &- c.reportedForward >= Vsock.bufferAllocation / 4 { send(c, .creditUpdate) }
    }

    // MARK: host -> guest

    private func acceptHosts() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            pendingHosts[fd] = []
        }
    }

    /// "CONNECT <port>\n", at most 32 bytes; anything else closes the socket.
    private func readConnectLine(_ fd: Int32) {
        var buf = [UInt8](repeating: 0, count: 32)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 32 - (pendingHosts[fd]?.count ?? 0)) }
        guard n > 0, var line = pendingHosts[fd] else { if n == 0 || errno != EAGAIN { closePending(fd) }; return }
        line += buf[0..<n]
        guard let end = line.firstIndex(of: UInt8(ascii: "\n")) else {
            if line.count >= 32 { closePending(fd) } else { pendingHosts[fd] = line }
            return
        }
        pendingHosts[fd] = nil
        let text = String(decoding: line[..<end], as: UTF8.self)
        guard text.hasPrefix("CONNECT "), let port = UInt32(text.dropFirst(8)) else { close(fd); return }
        nextLocalPort = nextLocalPort == UInt32.max ? 1 << 30 : nextLocalPort + 1
        let c = VsockConnection(fd: fd, localPort: nextLocalPort, peerPort: port, established: false)
        connections[key(c.localPort, c.peerPort)] = c
        send(c, .request)
    }

    private func closePending(_ fd: Int32) {
        pendingHosts[fd] = nil
        close(fd)
    }

    private func readFromHost(_ c: VsockConnection) {
        let want = min(c.guestCredit, Vsock.maxPayload)
        guard want > 0 else { return }
        var buf = [UInt8](repeating: 0, count: want)
        let n = buf.withUnsafeMutableBytes { read(c.fd, $0.baseAddress, want) }
        if n > 0 { c.toGuest = Array(buf[0..<n]) }
        else if n == 0 || errno != EAGAIN {
            c.hostClosed = true
            send(c, .shutdown, flags: VsockHeader.shutdownReceive | VsockHeader.shutdownSend)
        }
    }

    /// Control packets first, then data, each into one rx chain.
    private func deliverToGuest() throws(QueueError) {
        let rx = context.queues[Queue.rx]
        var any = false
        while !control.isEmpty || connections.values.contains(where: { !$0.toGuest.isEmpty }) {
            guard rx.hasAvailable, let chain = try rx.pop() else { break }
            let io = ChainIO(memory: context.memory, buffers: chain.writable)
            guard io.length >= UInt64(VsockHeader.size) else { rx.push(head: chain.head, written: 0); any = true; continue }
            var written = VsockHeader.size
            if !control.isEmpty {
                io.write(control.removeFirst().bytes, offset: 0)
            } else if let c = connections.values.first(where: { !$0.toGuest.isEmpty }) {
                let n = min(c.toGuest.count, Int(io.length) - VsockHeader.size)
                var h = header(c, .readWrite)
                h.length = UInt32(n)
                io.write(h.bytes, offset: 0)
                io.write(Array(c.toGuest.prefix(n)), offset: UInt64(VsockHeader.size))
                c.toGuest.removeFirst(n)
                c.sentToGuest &+= UInt32(n)
                written += n
            }
            rx.push(head: chain.head, written: UInt32(written))
            any = true
        }
        if any && rx.needsInterrupt() { context.signals.usedBuffers() }
    }

    // MARK: packets

    private func header(_ c: VsockConnection, _ op: VsockHeader.Op, flags: UInt32 = 0) -> VsockHeader {
        c.reportedForward = c.forwarded
        return VsockHeader(sourceCID: Vsock.hostCID, destinationCID: options.cid, sourcePort: c.localPort,
                           destinationPort: c.peerPort, op: op, flags: flags,
                           bufferAllocation: Vsock.bufferAllocation, forwardCount: c.forwarded)
    }

    private func send(_ c: VsockConnection, _ op: VsockHeader.Op, flags: UInt32 = 0) {
        guard control.count < Vsock.maxQueuedControl else { return }
        control.append(header(c, op, flags: flags))
    }

    private func reply(to h: VsockHeader, _ op: VsockHeader.Op) {
        guard control.count < Vsock.maxQueuedControl else { return }
        control.append(VsockHeader(sourceCID: Vsock.hostCID, destinationCID: options.cid, sourcePort: h.destinationPort,
                                   destinationPort: h.sourcePort, op: op))
    }

    private func drop(_ c: VsockConnection, notify: Bool) {
        if notify { send(c, .reset) }
        close(c.fd)
        connections[key(c.localPort, c.peerPort)] = nil
    }
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return }
        done += n
    }
}
