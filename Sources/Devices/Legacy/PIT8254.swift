import Machine
import Synchronization

/// The PC's 8254 timer (ports 0x40-0x43), emulated for a deterministic
/// machine on a clock the VMM advances (`advance(to:)`, in the PIT's ticks
/// of 1/1193182 s) with the guest's own exits, not the host's time: the
/// same run sees the same counts and the same interrupts. Channel 0 drives
/// IRQ 0 in modes 0 (one shot), 2 and 3 (periodic). Channels 1 and 2
/// have always run out (they read 0, and port 0x61, `portB`, says OUT2 is
/// high): Linux's calibrations of the TSC against them then fail at once,
/// the same way every run, and it never uses the TSC (which the guest
/// reads from the host, outside any log). Read-back and BCD are not emulated.
public final class PIT8254: BusDevice {
    public static let hz: UInt64 = 1_193_182

    struct Channel: Equatable {
        var reload: UInt32 = 0x10000
        var mode: UInt8 = 0
        var access: UInt8 = 3
        /// The low byte of a lo/hi write or read, waiting for its high byte.
        var writeHigh = false, readHigh = false
        var latched: UInt16?
        /// When counting began (the clock's tick), nil until a count is written.
        var start: UInt64?
        /// Interrupts raised so far in this count (mode 0: at most one).
        var fired: UInt64 = 0
        var partial: UInt16 = 0

        func count(at now: UInt64) -> UInt16 {
            guard let start else { return 0 }
            let elapsed = now &- start
            if mode == 0 { return elapsed >= reload ? 0 : UInt16(truncatingIfNeeded: UInt64(reload) - elapsed) }
            return UInt16(truncatingIfNeeded: UInt64(reload) - elapsed % UInt64(reload))
        }
    }

    struct State: Equatable { var channels = [Channel](repeating: Channel(), count: 3); var now: UInt64 = 0 }
    let state = Mutex(State())
    let irq: any InterruptLine

    public init(irq: any InterruptLine) { self.irq = irq }

    /// Moves the clock to `now` (never back); IRQ 0 is raised if channel 0
    /// ran out since (once: interrupts missed while the guest did not
    /// exit are one, as a PIC holds one request per line).
    public func advance(to now: UInt64) {
        let raise = state.withLock { s -> Bool in
            guard now > s.now else { return false }
            s.now = now
            var c = s.channels[0]
            guard let start = c.start else { return false }
            let due = c.mode == 0 ? (now &- start >= c.reload ? 1 : 0) : (now &- start) / UInt64(c.reload)
            guard due > c.fired else { return false }
            c.fired = due
            s.channels[0] = c
            return true
        }
        if raise { irq.pulse() }
    }

    /// The clock's tick at which channel 0 next runs out (a halted guest
    /// skips to it), nil if it will not.
    public var nextDeadline: UInt64? {
        state.withLock { s in
            let c = s.channels[0]
            guard let start = c.start else { return nil }
            if c.mode == 0 { return c.fired == 0 ? start + UInt64(c.reload) : nil }
            return start + (c.fired + 1) * UInt64(c.reload)
        }
    }

    /// Port 0x61: the gate and speaker bits as written, OUT2 (bit 5) high.
    public let portB = PortB()

    public final class PortB: BusDevice {
        let bits = Mutex<UInt8>(0)
        public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
            guard data.count >= 1 else { return }
            data[0] = bits.withLock { $0 & 0x03 } | 0x20
            for i in data.indices.dropFirst() { data[i] = 0 }
        }
        public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            guard data.count >= 1 else { return }
            bits.withLock { $0 = data[0] }
        }
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        data[0] = state.withLock { s -> UInt8 in
            guard offset < 3 else { return 0xff }
            var c = s.channels[Int(offset)]
            let value = c.latched ?? (offset == 0 ? c.count(at: s.now) : 0)
            let byte: UInt8
            switch c.access {
            case 1: byte = UInt8(value & 0xff); c.latched = nil
            case 2: byte = UInt8(value >> 8); c.latched = nil
            default:
                byte = c.readHigh ? UInt8(value >> 8) : UInt8(value & 0xff)
                if c.readHigh { c.latched = nil }
                c.readHigh.toggle()
            }
            s.channels[Int(offset)] = c
            return byte
        }
        for i in data.indices.dropFirst() { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let v = data[0]
        state.withLock { s in
            if offset == 3 {
                let n = Int(v >> 6)
                guard n < 3 else { return } // read-back: not emulated
                let access = (v >> 4) & 3
                if access == 0 { s.channels[n].latched = n == 0 ? s.channels[n].count(at: s.now) : 0; return }
                var mode = (v >> 1) & 7
                if mode > 5 { mode -= 4 } // 6 and 7 are 2 and 3
                s.channels[n] = Channel(mode: mode, access: access)
                return
            }
            guard offset < 3 else { return }
            var c = s.channels[Int(offset)]
            var complete = true
            switch c.access {
            case 1: c.partial = UInt16(v)
            case 2: c.partial = UInt16(v) << 8
            default:
                if c.writeHigh { c.partial |= UInt16(v) << 8 } else { c.partial = UInt16(v); complete = false }
                c.writeHigh.toggle()
            }
            if complete {
                c.reload = c.partial == 0 ? 0x10000 : UInt32(c.partial)
                c.start = s.now
                c.fired = 0
            }
            s.channels[Int(offset)] = c
        }
    }
}
