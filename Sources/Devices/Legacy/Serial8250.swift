import Machine
import Synchronization

/// A 16550A UART: the guest's console. Transmitted bytes go straight to the
/// host sink (no baud-rate pacing); received bytes wait in a bounded FIFO.
/// Register state is plain data so a snapshot can save it later.
public final class Serial8250: BusDevice {
    public struct Registers: Equatable, Sendable {
        var ier: UInt8 = 0, lcr: UInt8 = 0, mcr: UInt8 = 0x08, scr: UInt8 = 0
        var dll: UInt8 = 0x0c, dlm: UInt8 = 0, fcr: UInt8 = 0
        var thrEmptyPending = false
        var rx: [UInt8] = []
    }

    public static let rxCapacity = 64
    // Register bits (16550 data sheet).
    static let ierRDA: UInt8 = 0x01, ierTHRE: UInt8 = 0x02
    static let lcrDLAB: UInt8 = 0x80
    static let mcrLoop: UInt8 = 0x10
    static let lsrDR: UInt8 = 0x01, lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40

    let state = Mutex(Registers())
    /// Times the guest turned the receive interrupt on (a driver starting
    /// up, which clears the FIFO first): host input ended is re-sent only
    /// then, not to a guest that already took it (ConsoleInput).
    private let receiverStarts = Atomic<UInt64>(0)
    private let irq: any InterruptLine
    private let sink: @Sendable (UInt8) -> Void

    public init(irq: any InterruptLine, sink: @escaping @Sendable (UInt8) -> Void) {
        self.irq = irq
        self.sink = sink
    }

    /// Host input for the guest; returns how many bytes fit.
    @discardableResult
    public func receive(_ bytes: some Collection<UInt8>) -> Int {
        let (taken, interrupt) = state.withLock { s -> (Int, Bool) in
            let n = min(bytes.count, Self.rxCapacity - s.rx.count)
            s.rx.append(contentsOf: bytes.prefix(n))
            return (n, n > 0 && s.ier & Self.ierRDA != 0)
        }
        if interrupt { irq.pulse() }
        return taken
    }

    /// Room for host input right now.
    public var receiveSpace: Int { state.withLock { Self.rxCapacity - $0.rx.count } }

    /// How often the receive interrupt was turned on (see receiverStarts).
    public var receiverStartCount: UInt64 { receiverStarts.load(ordering: .acquiring) }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        data[0] = state.withLock { s in readRegister(&s, offset) }
        for i in data.indices.dropFirst() { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        var out: UInt8?
        let interrupt = state.withLock { s in writeRegister(&s, offset, data[0], output: &out) }
        if let out { sink(out) }
        if interrupt { irq.pulse() }
    }

    private func readRegister(_ s: inout Registers, _ offset: UInt64) -> UInt8 {
        let dlab = s.lcr & Self.lcrDLAB != 0
        switch offset {
        case 0 where dlab: return s.dll
        case 0: return s.rx.isEmpty ? 0 : s.rx.removeFirst()
        case 1 where dlab: return s.dlm
        case 1: return s.ier
        case 2:
            let fifo: UInt8 = s.fcr & 1 != 0 ? 0xc0 : 0
            if s.ier & Self.ierRDA != 0 && !s.rx.isEmpty { return fifo | 0x04 }
            if s.ier & Self.ierTHRE != 0 && s.thrEmptyPending {
                s.thrEmptyPending = false // reading IIR acknowledges THRE
                return fifo | 0x02
            }
            return fifo | 0x01
        case 3: return s.lcr
        case 4: return s.mcr
        case 5: return Self.lsrTHRE | Self.lsrTEMT | (s.rx.isEmpty ? 0 : Self.lsrDR)
        case 6:
            if s.mcr & Self.mcrLoop != 0 {
                // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                let m = s.mcr
                return ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            }
            return 0xb0 // DCD, DSR, CTS: a terminal is always there
        case 7: return s.scr
        default: return 0xff
        }
    }

    /// Returns whether to raise the interrupt.
    private func writeRegister(_ s: inout Registers, _ offset: UInt64, _ v: UInt8, output: inout UInt8?) -> Bool {
        let dlab = s.lcr & Self.lcrDLAB != 0
        switch offset {
        case 0 where dlab: s.dll = v
        case 0:
            if s.mcr & Self.mcrLoop != 0 {
                if s.rx.count < Self.rxCapacity { s.rx.append(v) }
                return s.ier & Self.ierRDA != 0
            }
            output = v
            s.thrEmptyPending = true // sent at once: the holding register is empty again
            return s.ier & Self.ierTHRE != 0
        case 1 where dlab: s.dlm = v
        case 1:
            let enablingTHRE = v & Self.ierTHRE != 0 && s.ier & Self.ierTHRE == 0
            if v & Self.ierRDA != 0 && s.ier & Self.ierRDA == 0 { receiverStarts.add(1, ordering: .releasing) }
            s.ier = v & 0x0f
            if enablingTHRE { s.thrEmptyPending = true; return true }
            return s.ier & Self.ierRDA != 0 && !s.rx.isEmpty
        case 2:
            s.fcr = v & 0xc9
            if v & 0x02 != 0 { s.rx.removeAll() }
        case 3: s.lcr = v
        case 4: s.mcr = v & 0x1f
        case 7: s.scr = v
        default: break
        }
        return false
    }
}

extension Serial8250 {
    public func saveState(_ w: inout StateWriter) {
        let s = state.withLock { $0 }
        for v in [s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm, s.fcr] { w.u8(v) }
        w.bool(s.thrEmptyPending)
        w.blob(s.rx)
    }

    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        var s = Registers()
        s.ier = try r.u8() & 0x0f; s.lcr = try r.u8(); s.mcr = try r.u8() & 0x1f; s.scr = try r.u8()
        s.dll = try r.u8(); s.dlm = try r.u8(); s.fcr = try r.u8() & 0xc9
        s.thrEmptyPending = try r.bool()
        s.rx = try r.blob(limit: Self.rxCapacity)
        state.withLock { $0 = s }
    }
}
