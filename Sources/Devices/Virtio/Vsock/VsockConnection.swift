import Glibc

/// One stream between a guest port and a host Unix socket. The connection
/// owns its socket: `close()` is the only place it is closed, and only once
/// (a second close could hit a descriptor another thread has been given
/// since).
final class VsockConnection {
    enum State: Equatable {
        /// Guest-initiated; the host listener's backlog was full, so its
        /// `connect` is retried until `deadline`.
        case connecting
        /// Host-initiated; REQUEST sent, the guest's RESPONSE is due by `deadline`.
        case awaitingGuest
        case established
        /// The host side closed; SHUTDOWN sent, the guest's RST is due by `deadline`.
        case closing
    }

    private(set) var fd: Int32
    let localPort: UInt32   // the host side's port
    let peerPort: UInt32    // the guest's port
    var state: State
    /// Monotonic nanoseconds by which a state other than `.established` ends.
    var deadline = 0
    var peerBufferAllocation: UInt32 = 0, peerForwardCount: UInt32 = 0
    var sentToGuest: UInt32 = 0       // payload bytes delivered to the guest
    var forwarded: UInt32 = 0         // payload bytes written to the host socket
    var reportedForward: UInt32 = 0
    var toHost: [UInt8] = []
    var toGuest: [UInt8] = []

    init(fd: Int32, localPort: UInt32, peerPort: UInt32, state: State) {
        self.fd = fd
        self.localPort = localPort
        self.peerPort = peerPort
        self.state = state
    }

    var isOpen: Bool { fd >= 0 }

    /// Data flows guest -> host once connected, also after the host closed
    /// (a host that only shut its sending side may still read).
    var carriesData: Bool { isOpen && (state == .established || state == .closing) }

    /// Worth reading from the host socket: connected and the guest can take more.
    var wantsHostData: Bool { isOpen && state == .established && toGuest.isEmpty && guestCredit > 0 }

    func close() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
        toHost = []
        toGuest = []
    }

    /// What the guest can still take: its buffer minus what is in flight.
    /// The counters wrap (virtio 1.2, 5.10.6.3); a guest whose numbers make
    /// no sense gets nothing more, which stalls only its own stream.
    var guestCredit: Int {
        let inFlight = sentToGuest &- peerForwardCount
        return inFlight > peerBufferAllocation ? 0 : Int(peerBufferAllocation - inFlight)
    }
}
