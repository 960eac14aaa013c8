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
        let t = Self.utc(clock())
        let v: Int
        switch index {
        case 0x00: v = t.second
        case 0x02: v = t.minute
        case 0x04: v = t.hour
        case 0x06: v = t.weekday + 1
        case 0x07: v = t.day
        case 0x08: v = t.month
        case 0x09: v = t.year % 100
        case 0x32: v = t.year / 100
        default: return nil
        }
        return UInt8((v / 10 % 10) << 4 | (v % 10))
    }

    /// The UTC calendar date of `seconds` since 1970, by arithmetic alone
    /// (Hinnant's civil_from_days). Not gmtime_r: glibc loads the time zone
    /// on its first call, opening /etc/localtime from a vCPU thread, which
    /// its seccomp filter (rightly) forbids; Debian's kernel reads the RTC.
    static func utc(_ seconds: Int) -> (year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, weekday: Int) {
        let t = max(0, min(seconds, 253_402_300_799)) // 1970 ... 9999
        let days = t / 86400, rest = t % 86400
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day, rest / 3600, rest % 3600 / 60, rest % 60, (days + 4) % 7)
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
