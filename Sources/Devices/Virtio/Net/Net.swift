import CKVM
import Glibc
import Machine
import Synchronization

/// virtio-net over a host TAP interface. Frames go through unchanged: no
/// offloads are offered, so the 12-byte virtio-net header is always zero
/// on receive and ignored on transmit (virtio 1.2, 5.1.6).
public final class Net: VirtioDevice {
    /// Frames the guest received (read) and sent (written), in bytes.
    public let counters = IOCounters()
    public struct Options: Sendable {
        public var tap: String
        public var mac: [UInt8]
        /// Host-side set-up Skiff does for this TAP and undoes at the end
        /// (VMM/HostNetwork): an address for the host end, a bridge to
        /// join, NAT for the host end's subnet.
        public var hostAddress: String?
        public var bridge: String?
        public var nat = false
        /// The bridge is a network many VMs share (Skiff's appliance
        /// network, VMM/NetworkLease): its address and NAT are made once
        /// and stay while any VM is on it, and this TAP is an isolated
        /// port (it reaches the host and the outside, not the other VMs).
        public var shared = false
        /// The guest's address on the bridge: where published ports go.
        public var guestAddress: String?
        /// Host ports forwarded (nftables DNAT) to the guest's.
        public var published: [PublishedPort] = []
        /// The network lease (VMM/NetworkLease) that holds the address,
        /// given back when the VM stops.
        public var lease: UInt32?
        public init(tap: String, mac: [UInt8]) { self.tap = tap; self.mac = mac }
    }
    static let featureMAC: UInt64 = 1 << 5
    static let headerSize = 12
    static let maxFrame = 65_550

    public let type = VirtioDeviceType.net
    public let features = Net.featureMAC
    public let queueSizes: [UInt16] = [256, 256]
    public let options: Options
    let tap: Int32
    public let interfaceName: String
    private let loop = Mutex<NetLoop?>(nil)

    /// Opens (creating if need be) the TAP `options` names, for whoever has
    /// the privilege; returns its fd and the interface's name.
    public static func openTap(_ options: Options) throws(NetError) -> (fd: Int32, name: String) {
        guard options.mac.count == 6 else { throw NetError("--net mac: needs six bytes") }
        guard interfaceNameIsValid(options.tap) else {
            throw NetError("--net tap=\(options.tap): not an interface name (1-15 letters, digits, '-', '_', '.')")
        }
        var name = [CChar](repeating: 0, count: 16)
        let fd = ckvm_open_tap(options.tap, &name)
        guard fd >= 0 else { throw NetError("tap \(options.tap): \(String(cString: strerror(errno)))") }
        return (fd, String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// Interface names Skiff passes to the kernel and to `ip`/`nft`: plain
    /// words only, so no tool re-reads one as syntax.
    public static func interfaceNameIsValid(_ name: String) -> Bool {
        let u = name.utf8
        return !u.isEmpty && u.count < 16 && u.first != UInt8(ascii: "-") && u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7a) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
        }
    }

    /// A device on an open TAP (from `openTap`; closed with the device).
    public init(_ options: Options, tap fd: Int32, interfaceName: String) {
        tap = fd
        self.interfaceName = interfaceName
        self.options = options
    }

    deinit { close(tap) }

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = offset >= 0 && offset + i < 6 ? options.mac[offset + i] : 0 }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ context: VirtioContext) throws {
        let l = try NetLoop(context: context, tap: tap, counters: counters)
        loop.withLock { $0 = l }
    }

    public func reset() {
        let l = loop.withLock { l -> NetLoop? in defer { l = nil }; return l }
        l?.shutdown()
    }

    /// "52:54:00:12:34:56"
    /// "02:73:6b:00:00:05": what parseMAC reads, as ip and nft write it.
    public static func macText(_ mac: [UInt8]) -> String {
        mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    public static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.utf8.split(separator: UInt8(ascii: ":")).map { UInt8(String(Substring($0)), radix: 16) }
        guard parts.count == 6, parts.allSatisfy({ $0 != nil }) else { return nil }
        let mac = parts.map { $0! }
        return mac[0] & 1 == 0 ? mac : nil // not a multicast address
    }
}

public struct NetError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

final class NetLoop: @unchecked Sendable {
    let context: VirtioContext
    let tap: Int32
    let stop: EventFD
    let counters: IOCounters
    private var thread: HostThread?
    private var frame = [UInt8](repeating: 0, count: Net.maxFrame)

    init(context: VirtioContext, tap: Int32, counters: IOCounters) throws {
        self.context = context
        self.tap = tap
        self.counters = counters
        stop = try EventFD()
        thread = try HostThread(name: "virtio-net") { [self] in run() }
    }

    func shutdown() {
        stop.signal()
        thread?.join()
        thread = nil
    }

    private func run() {
        let rx = context.queues[0], tx = context.queues[1]
        var broken = false
        while true {
            // The TAP is watched only while the guest has buffers to receive
            // into; the rx notification says when it adds more.
            var fds = [stop.fd]
            if !broken { fds += context.notifiers.map(\.fd) + (rx.hasAvailable ? [tap] : []) }
            let ready = Poller.wait(fds)
            if ready.contains(stop.fd) { return }
            if broken { continue }
            for n in context.notifiers where ready.contains(n.fd) { n.consume() }
            do throws(QueueError) {
                var sent = false
                while let chain = try tx.pop() {
                    let io = ChainIO(memory: context.memory, buffers: chain.readable)
                    let length = Int(min(io.length, UInt64(Net.maxFrame + Net.headerSize)))
                    if length > Net.headerSize {
                        let bytes = io.read(offset: UInt64(Net.headerSize), count: length - Net.headerSize)
                        let sentBytes = bytes.withUnsafeBytes { write(tap, $0.baseAddress, $0.count) } // a full TAP drops, as a wire would
                        if sentBytes > 0 { counters.wrote(UInt64(sentBytes)) }
                    }
                    tx.push(head: chain.head, written: 0)
                    sent = true
                }
                if sent && tx.needsInterrupt() { context.signals.usedBuffers() }
                try receive(rx)
            } catch {
                broken = true
                context.signals.broken("\(error)")
            }
        }
    }

    private func receive(_ rx: VirtQueue) throws(QueueError) {
        var delivered = false
        while rx.hasAvailable {
            let n = frame.withUnsafeMutableBytes { read(tap, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            guard let chain = try rx.pop() else { break }
            let io = ChainIO(memory: context.memory, buffers: chain.writable)
            guard io.length >= UInt64(Net.headerSize) else { rx.push(head: chain.head, written: 0); continue }
            var header = [UInt8](repeating: 0, count: Net.headerSize)
            header[10] = 1 // num_buffers
            io.write(header, offset: 0)
            let copied = io.write(Array(frame[0..<n]), offset: UInt64(Net.headerSize)) // a frame larger than the buffer is cut
            counters.read(UInt64(copied))
            rx.push(head: chain.head, written: UInt32(Net.headerSize + copied))
            delivered = true
        }
        if delivered && rx.needsInterrupt() { context.signals.usedBuffers() }
    }
}
