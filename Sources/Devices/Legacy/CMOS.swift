import Glibc
import Machine
import Synchronization

/// The CMOS RTC and its 128 bytes of RAM (ports 0x70 index, 0x71 data).
/// Time is read from a clock the VMM supplies (the host's by default), in
/// BCD and 24-hour mode, as a PC BIOS leaves it.
public final class CMOS: BusDevice {
    struct Registers { var index: UInt8 = 0; var ram = [UInt8](repeating: 0, count: 128) }
    let state: Mutex<Registers>
    private let clock: @Sendable () -> Int

    public static let hostClock: @Sendable () -> Int = { Int(time(nil)) }

    public init(clock: @escaping @Sendable () -> Int = CMOS.hostClock) {
        self.clock = clock
        var r = Registers()
        r.ram[0x0a] = 0x26 // 32.768 kHz base, 1024 Hz rate; update not in progress
        r.ram[0x0b] = 0x02 // 24-hour, BCD
        r.ram[0x0d] = 0x80 // RAM and time valid
        state = Mutex(r)
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        data[0] = state.withLock { s in
            if offset == 0 { return s.index }
            return timeRegister(s.index) ?? s.ram[Int(s.index & 0x7f)]
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        state.withLock { s in
            if offset == 0 { s.index = data[0] & 0x7f } // bit 7 masks NMIs
            else if timeRegister(s.index) == nil { s.ram[Int(s.index)] = data[0] }
        }
    }

    private func timeRegister(_ index: UInt8) -> UInt8? {
        let fields: [UInt8: (tm) -> Int32] = [
            0x00: { $0.tm_sec }, 0x02: { $0.tm_min }, 0x04: { $0.tm_hour }, 0x06: { $0.tm_wday + 1 },
            0x07: { $0.tm_mday }, 0x08: { $0.tm_mon + 1 }, 0x09: { $0.tm_year % 100 }, 0x32: { 19 + $0.tm_year / 100 },
        ]
        guard let field = fields[index] else { return nil }
        var t = time_t(clock())
        var parts = tm()
        gmtime_r(&t, &parts)
        let v = Int(field(parts))
        return UInt8((v / 10) << 4 | (v % 10))
    }
}

extension CMOS {
    /// The RAM and index; the time is the host's, read when the guest asks.
    public func saveState(_ w: inout StateWriter) {
        let s = state.withLock { $0 }
        w.u8(s.index)
        w.blob(s.ram)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        let index = try r.u8() & 0x7f
        let ram = try r.blob(limit: 128)
        guard ram.count == 128 else { throw SnapshotError("CMOS state: \(ram.count) bytes of RAM, expected 128") }
        state.withLock { $0.index = index; $0.ram = ram }
    }
}
