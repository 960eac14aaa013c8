import Machine
import Synchronization

/// The PC's two 8259A interrupt controllers (master at 0x20, slave at 0xa0
/// on its IRQ 2), emulated for a deterministic machine, which has no
/// in-kernel irqchip: the VMM asks `pendingVector` at the guest's exits
/// and injects what it says. Edge-triggered, fully nested; what Linux and
/// the probes use: ICW1-4, OCW1 (mask), OCW2 (non-specific and specific
/// EOI), OCW3 (read IRR or ISR), auto-EOI. Not emulated: special mask,
/// rotation, poll mode, level-triggered mode (the ELCR).
public final class PIC8259: Sendable {
    struct Chip: Equatable {
        var irr: UInt8 = 0, isr: UInt8 = 0, imr: UInt8 = 0xff
        var base: UInt8 = 0
        /// The next initialization word expected (2...4), 0: none.
        var expecting = 0
        var needsICW4 = false, single = false, autoEOI = false, readISR = false

        /// The highest-priority request not masked and not below one in service.
        var pending: Int? {
            let requests = irr & ~imr
            for n in 0..<8 {
                if isr & (1 << n) != 0 { return nil }
                if requests & (1 << n) != 0 { return n }
            }
            return nil
        }

        mutating func command(_ v: UInt8) {
            if v & 0x10 != 0 { // ICW1
                self = Chip(imr: 0, expecting: 2, needsICW4: v & 1 != 0, single: v & 2 != 0)
            } else if v & 0x08 != 0 { // OCW3
                if v & 0x02 != 0 { readISR = v & 1 != 0 }
            } else if v & 0x20 != 0 { // OCW2: an EOI
                if v & 0x40 != 0 { isr &= ~(1 << (v & 7)) } // specific
                else if let n = (0..<8).first(where: { isr & (1 << $0) != 0 }) { isr &= ~(1 << n) }
            }
        }

        mutating func data(_ v: UInt8) {
            switch expecting {
            case 2: base = v & 0xf8; expecting = single ? (needsICW4 ? 4 : 0) : 3
            case 3: expecting = needsICW4 ? 4 : 0 // cascade wiring: fixed here
            case 4: autoEOI = v & 0x02 != 0; expecting = 0
            default: imr = v // OCW1
            }
        }
    }

    struct State: Equatable { var master = Chip(), slave = Chip() }
    let state = Mutex(State())

    public init() {}

    /// An edge on ISA line `irq` (0-15).
    public func raise(_ irq: Int) {
        guard (0..<16).contains(irq) else { return }
        state.withLock { s in
            if irq < 8 { s.master.irr |= 1 << irq } else { s.slave.irr |= 1 << (irq - 8) }
        }
    }

    /// The vector the guest would take now, if any.
    public var pendingVector: UInt8? { state.withLock { Self.resolve($0)?.1 } }

    /// Takes the pending interrupt (the CPU's INTA): in service until its EOI.
    public func acknowledge() -> UInt8? {
        state.withLock { s in
            guard let (n, vector) = Self.resolve(s) else { return nil }
            s.master.irr &= ~(1 << n)
            if !s.master.autoEOI { s.master.isr |= 1 << n }
            if n == 2, let m = s.slave.pending {
                s.slave.irr &= ~(1 << m)
                if !s.slave.autoEOI { s.slave.isr |= 1 << m }
            }
            return vector
        }
    }

    /// The master's line and the vector; the slave's requests reach the master on line 2.
    static func resolve(_ s: State) -> (Int, UInt8)? {
        var master = s.master
        if s.slave.pending != nil { master.irr |= 1 << 2 }
        guard let n = master.pending else { return nil }
        if n == 2, let m = s.slave.pending { return (2, s.slave.base | UInt8(m)) }
        if n == 2 { return nil }
        return (n, master.base | UInt8(n))
    }

    /// A line of this controller, for devices that raise an interrupt.
    public func line(_ irq: Int) -> any InterruptLine { Line(pic: self, irq: irq) }

    struct Line: InterruptLine {
        let pic: PIC8259
        let irq: Int
        func pulse() { pic.raise(irq) }
    }

    /// The ports of one chip: 0x20-0x21 (master) or 0xa0-0xa1 (slave).
    public func ports(slave: Bool) -> any BusDevice { Ports(pic: self, slave: slave) }

    final class Ports: BusDevice {
        let pic: PIC8259
        let slave: Bool
        init(pic: PIC8259, slave: Bool) { self.pic = pic; self.slave = slave }

        func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
            guard data.count >= 1 else { return }
            data[0] = pic.state.withLock { s in
                let c = slave ? s.slave : s.master
                return offset == 0 ? (c.readISR ? c.isr : c.irr) : c.imr
            }
            for i in data.indices.dropFirst() { data[i] = 0 }
        }

        func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            guard data.count >= 1 else { return }
            pic.state.withLock { s in
                if slave {
                    if offset == 0 { s.slave.command(data[0]) } else { s.slave.data(data[0]) }
                } else {
                    if offset == 0 { s.master.command(data[0]) } else { s.master.data(data[0]) }
                }
            }
        }
    }
}
