import Glibc
import Machine

/// The vsock device's thread: guest queues, the listening socket and every
/// connection's socket in one poll loop. Nothing here blocks: host sockets
/// are non-blocking, and every wait (a full host backlog, a peer that does
/// not answer) has a deadline, so reset, pause and stop are never held up.
final class VsockLoop: @unchecked Sendable {
    enum Queue { static let rx = 0, tx = 1, event = 2 }
    /// An accepted host socket whose CONNECT line is not complete.
    struct PendingHost { var line: [UInt8]; let deadline: Int }

    let context: VirtioContext
    let options: Vsock.Options
    let listener: Int32
    let stop: EventFD
    private var thread: HostThread?
    private var connections: [UInt64: VsockConnection] = [:]   // (local << 32 | peer)
    private var pendingHosts: [Int32: PendingHost] = [:]
    private var control: [VsockHeader] = []
    private var nextLocalPort: UInt32 = 1 << 30
    /// Until when the listener is left out of the poll (out of descriptors).
    private var acceptResumes = 0
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
        for c in connections.values { c.close() }
        for fd in pendingHosts.keys { close(fd) }
        connections = [:]
        pendingHosts = [:]
    }

    private func key(_ local: UInt32, _ peer: UInt32) -> UInt64 { UInt64(local) << 32 | UInt64(peer) }
    private var now: Int { QueueWorker.monotonicNanoseconds() }
    private var openCount: Int { connections.count + pendingHosts.count }

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
                fds += context.notifiers.map(\.fd) + Array(pendingHosts.keys)
                if now >= acceptResumes { fds.append(listener) }
                fds += connections.values.filter(\.wantsHostData).map(\.fd)
            }
            let ready = Set(Poller.wait(fds, timeoutMs: broken ? -1 : pollTimeout()))
            if ready.contains(stop.fd) { return }
            if broken { continue }
            for n in context.notifiers where ready.contains(n.fd) { n.consume() }
            do throws(QueueError) {
                try serveTransmitQueue()
                if ready.contains(listener) { acceptHosts() }
                for fd in pendingHosts.keys where ready.contains(fd) { readConnectLine(fd) }
                for c in connections.values where c.wantsHostData && ready.contains(c.fd) { readFromHost(c) }
                for c in connections.values where !c.toHost.isEmpty { _ = flushToHost(c) }
                advanceWaits()
                try deliverToGuest()
            } catch {
                broken = true
                context.signals.broken("\(error)")
            }
        }
    }

    /// Until the next deadline; every `retryMs` while a host socket is not
    /// draining or a host backlog is full; else until something happens.
    private func pollTimeout() -> Int32 {
        if connections.values.contains(where: { !$0.toHost.isEmpty || $0.state == .connecting }) { return Vsock.retryMs }
        var next = Int.max
        for c in connections.values where c.state != .established { next = min(next, c.deadline) }
        for p in pendingHosts.values { next = min(next, p.deadline) }
        if acceptResumes > now { next = min(next, acceptResumes) }
        guard next != Int.max else { return -1 }
        let ms = (next - now) / 1_000_000 + 1
        return Int32(clamping: max(0, ms))
    }

    /// Retries connects to full host backlogs; resets what ran out of time.
    private func advanceWaits() {
        let t = now
        for c in connections.values {
            switch c.state {
            case .connecting:
                switch HostSocket.connect(c.fd, to: hostPath(c.localPort)) {
                case .connected:
                    c.state = .established
                    send(c, .response)
                case .busy where t < c.deadline:
                    break
                case .busy, .refused:
                    drop(c, notify: true)
                }
            case .awaitingGuest, .closing:
                if t >= c.deadline { drop(c, notify: true) }
            case .established:
                break
            }
        }
        for (fd, p) in pendingHosts where t >= p.deadline { closePending(fd) }
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
            connectGuest(h, key: k)
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
            if c.state == .awaitingGuest {
                c.state = .established
                writeAll(c.fd, Array("OK \(c.localPort)\n".utf8))
            }
        case .readWrite:
            guard c.carriesData else { drop(c, notify: true); return }
            c.toHost += payload()
            if c.toHost.count > Vsock.overrunLimit { drop(c, notify: true) } // the guest ignored our credit
        case .creditRequest:
            send(c, .creditUpdate)
        case .shutdown:
            guard c.carriesData else { drop(c, notify: true); return }
            let both = VsockHeader.shutdownSend | VsockHeader.shutdownReceive
            if h.flags & both == both {
                if flushToHost(c) { drop(c, notify: true) }
            } else if h.flags & VsockHeader.shutdownSend != 0, flushToHost(c) {
                Glibc.shutdown(c.fd, Int32(SHUT_WR))
            }
        case .reset:
            drop(c, notify: false)
        case .creditUpdate, .request:
            break
        }
    }

    /// A guest REQUEST to host port P: a connection to `<socket>_P`, at
    /// once (RESPONSE), after the listener's backlog frees up, or never (RST).
    private func connectGuest(_ h: VsockHeader, key k: UInt64) {
        guard connections[k] == nil, openCount < Vsock.maxConnections, let fd = HostSocket.stream() else {
            reply(to: h, .reset)
            return
        }
        let c = VsockConnection(fd: fd, localPort: h.destinationPort, peerPort: h.sourcePort, state: .connecting)
        c.peerBufferAllocation = h.bufferAllocation
        c.peerForwardCount = h.forwardCount
        switch HostSocket.connect(fd, to: hostPath(h.destinationPort)) {
        case .connected:
            c.state = .established
            connections[k] = c
            send(c, .response)
        case .busy where connections.values.count(where: { $0.state == .connecting }) < Vsock.maxConnecting:
            c.deadline = now + Vsock.handshakeTimeoutNs
            connections[k] = c
        case .busy, .refused:
            c.close()
            reply(to: h, .reset)
        }
    }

    private func hostPath(_ port: UInt32) -> String { "\(options.socketPath)_\(port)" }

    /// Writes what the guest sent; false if that ended the connection.
    @discardableResult
    private func flushToHost(_ c: VsockConnection) -> Bool {
        while !c.toHost.isEmpty {
            let n = c.toHost.withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                if errno == EAGAIN { return true }
                drop(c, notify: true)
                return false
            }
            c.toHost.removeFirst(n)
            c.forwarded &+= UInt32(n)
        }
        if c.forwarded &- c.reportedForward >= Vsock.bufferAllocation / 4 { send(c, .creditUpdate) }
        return true
    }

    // MARK: host -> guest

    private func acceptHosts() {
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                    acceptResumes = now + Vsock.acceptBackoffNs
                }
                return
            }
            // Over the cap the client is closed at once: it sees the end of
            // the stream, as for a port nobody listens on.
            guard openCount < Vsock.maxConnections else { close(fd); continue }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            pendingHosts[fd] = PendingHost(line: [], deadline: now + Vsock.connectLineTimeoutNs)
        }
    }

    /// "CONNECT <port>\n", at most 32 bytes; anything else closes the socket.
    private func readConnectLine(_ fd: Int32) {
        guard var pending = pendingHosts[fd] else { return }
        var buf = [UInt8](repeating: 0, count: 32)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 32 - pending.line.count) }
        guard n > 0 else { if n == 0 || errno != EAGAIN { closePending(fd) }; return }
        pending.line += buf[0..<n]
        guard let end = pending.line.firstIndex(of: UInt8(ascii: "\n")) else {
            if pending.line.count >= 32 { closePending(fd) } else { pendingHosts[fd] = pending }
            return
        }
        let text = String(decoding: pending.line[..<end], as: UTF8.self)
        guard text.hasPrefix("CONNECT "), let port = UInt32(text.dropFirst(8)) else { closePending(fd); return }
        pendingHosts[fd] = nil
        // A free local port: after wrapping, one still in use is skipped
        // (the cap leaves plenty free).
        repeat {
            nextLocalPort = nextLocalPort == UInt32.max ? 1 << 30 : nextLocalPort + 1
        } while connections[key(nextLocalPort, port)] != nil
        let c = VsockConnection(fd: fd, localPort: nextLocalPort, peerPort: port, state: .awaitingGuest)
        c.deadline = now + Vsock.requestTimeoutNs
        connections[key(c.localPort, c.peerPort)] = c
        send(c, .request)
    }

    private func closePending(_ fd: Int32) {
        guard pendingHosts.removeValue(forKey: fd) != nil else { return }
        close(fd)
    }

    private func readFromHost(_ c: VsockConnection) {
        let want = min(c.guestCredit, Vsock.maxPayload)
        guard want > 0 else { return }
        var buf = [UInt8](repeating: 0, count: want)
        let n = buf.withUnsafeMutableBytes { read(c.fd, $0.baseAddress, want) }
        if n > 0 { c.toGuest = Array(buf[0..<n]) }
        else if n == 0 || errno != EAGAIN {
            // The host closed: the guest is told, and has a while to reset.
            c.state = .closing
            c.deadline = now + Vsock.handshakeTimeoutNs
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

    /// Ends a connection: out of the table, its socket closed. A second
    /// call for the same connection does nothing.
    private func drop(_ c: VsockConnection, notify: Bool) {
        guard c.isOpen else { return }
        if notify { send(c, .reset) }
        c.close()
        let k = key(c.localPort, c.peerPort)
        if connections[k] === c { connections[k] = nil }
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
