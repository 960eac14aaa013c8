import Machine
import Synchronization

/// The i8042 keyboard controller, as far as a microVM needs it: its reset
/// line. Writing 0xFE (pulse the reset line) to the command port stops the
/// VM as a reset, which is how Linux reboots with `reboot=k`.
public final class I8042: BusDevice {
    static let commandPort: UInt64 = 4 // 0x64, attached at 0x60
    static let pulseReset: UInt8 = 0xfe
    static let readConfig: UInt8 = 0x20, writeConfig: UInt8 = 0x60

    struct Registers { var config: UInt8 = 0; var pending: UInt8?; var expectConfig = false }
    let state = Mutex(Registers())
    private let onReset: @Sendable () -> Void
    /// Port 0x61 (system control port B), between the data and command
    /// ports: KVM's PIT takes it; a deterministic machine's PIT here.
    private let portB: (any BusDevice)?

    public init(portB: (any BusDevice)? = nil, onReset: @escaping @Sendable () -> Void) {
        self.portB = portB
        self.onReset = onReset
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        if offset == 1, let portB { portB.read(offset: 0, into: data); return }
        data[0] = state.withLock { s in
            if offset == Self.commandPort { return s.pending == nil ? 0 : 1 } // status: output buffer full?
            defer { s.pending = nil }
            return s.pending ?? 0
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        if offset == 1, let portB { portB.write(offset: 0, data: data); return }
        let v = data[0]
        let reset = state.withLock { s -> Bool in
            if offset == Self.commandPort {
                switch v {
                case Self.pulseReset: return true
                case Self.readConfig: s.pending = s.config
                case Self.writeConfig: s.expectConfig = true
                default: break
                }
            } else if s.expectConfig {
                s.config = v
                s.expectConfig = false
            }
            return false
        }
        if reset { onReset() }
    }
}

extension I8042 {
    public func saveState(_ w: inout StateWriter) {
        let s = state.withLock { $0 }
        w.u8(s.config)
        w.bool(s.pending != nil)
        w.u8(s.pending ?? 0)
        w.bool(s.expectConfig)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        var s = Registers()
        s.config = try r.u8()
        let hasPending = try r.bool()
        let pending = try r.u8()
        s.pending = hasPending ? pending : nil
        s.expectConfig = try r.bool()
        state.withLock { $0 = s }
    }
}
