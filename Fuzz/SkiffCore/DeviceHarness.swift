// Drives a whole virtio device through its MMIO transport as a hostile
// driver would: the fuzzer chooses guest RAM (rings, descriptors, request
// bytes) and a sequence of register writes and reads, queue notifies, RAM
// pokes and device-specific host-side events. The device runs on its own
// thread as in a VM; after each notify the harness waits (bounded) until
// that thread is back asleep. A Swift trap anywhere is a crash.
import Devices
import Glibc
import Machine
import Synchronization

public final class DeviceHarness: @unchecked Sendable {
    /// Guest RAM; an input sets its first `imageSize` bytes (the rest is
    /// zeroed before each input: devices write there too).
    public static let ramSize: UInt64 = 1 << 20
    public static let imageSize = 64 << 10
    /// Queue q of the ordinary layout: its table at 0x100 + 0x300 q, its
    /// available ring 0x100 and its used ring 0x180 bytes on. Right for
    /// 16-entry queues and compact, so seeds stay small; larger queues
    /// overlap their neighbours, as a hostile driver's may anyway.
    public static func queueBase(_ q: Int) -> UInt64 { 0x100 + 0x300 * UInt64(q) }

    public let memory: GuestMemory
    public let transport: MMIOTransport
    let irq: EventFD

    public init(device: any VirtioDevice) {
        signal(SIGPIPE, SIG_IGN) // as skiff does: a closed peer is an error, not a death
        memory = try! GuestMemory(size: Self.ramSize)
        irq = try! EventFD()
        transport = try! MMIOTransport(device: device, memory: memory, irq: irq, name: "fuzz")
    }

    /// Input layout (little endian): u16 image length, the image, then ops
    /// until the input ends, each an opcode byte (mod 8) and its operands:
    ///   0 off:u8 value:u32   register write at 4 off (0x100 on: config space)
    ///   1 off:u8             register read at 4 off
    ///   2 q:u8               QueueNotify q, then wait for the device
    ///   3 addr:u16 n:u8 n bytes   RAM written at addr (a driver updating its rings)
    ///   4 lo:u32 hi:u8       ACKNOWLEDGE, DRIVER, features VERSION_1 | hi:lo, FEATURES_OK
    ///   5 q:u8 size:u8       queue q at the ordinary layout, size 2^(size % 9), ready
    ///   6                    DRIVER_OK (status 0xf)
    ///   7 arg:u8             `event(arg)`: the target's host-side event, then wait
    /// Every input ends with a reset (status 0), which stops the device's thread.
    /// `finish` runs before that reset (a target's host side lets go of
    /// what could hold the device's thread).
    public func run(_ data: UnsafePointer<UInt8>, _ size: Int, event: (UInt8) -> Void = { _ in }, finish: () -> Void = {}) {
        var input = Input(UnsafeBufferPointer(start: data, count: size))
        for n in transport.notifiers { n.consume() } // nothing left from the last input
        try! memory.fill(0, at: 0, length: Self.ramSize)
        let imageLength = min(Int(input.u16()), Self.imageSize)
        let image = input.bytes(imageLength)
        try! memory.write(image, at: 0)
        while !input.atEnd {
            switch input.u8() % 8 {
            case 0: let off = input.u8(); write(UInt64(off) * 4, input.u32())
            case 1: _ = read(UInt64(input.u8()) * 4)
            case 2: write(0x50, UInt32(input.u8())); settle()
            case 3:
                let address = UInt64(input.u16()), n = Int(input.u8())
                let bytes = input.bytes(n)
                try? memory.write(bytes, at: address)
            case 4:
                let features = UInt64(input.u32()) | UInt64(input.u8()) << 32 | VirtioFeature.version1
                write(0x70, 1 | 2)
                write(0x24, 0); write(0x20, UInt32(truncatingIfNeeded: features))
                write(0x24, 1); write(0x20, UInt32(features >> 32))
                write(0x70, 1 | 2 | 8)
            case 5:
                let q = input.u8(), size = UInt32(1) << (input.u8() % 9)
                let base = Self.queueBase(Int(q % 8))
                write(0x30, UInt32(q))
                write(0x38, size)
                write(0x80, UInt32(base)); write(0x84, 0)
                write(0x90, UInt32(base + 0x100)); write(0x94, 0)
                write(0xa0, UInt32(base + 0x180)); write(0xa4, 0)
                write(0x44, 1)
            case 6: write(0x70, 0xf)
            default: event(input.u8()); settle()
            }
        }
        finish()
        write(0x70, 0)
        _ = irq.consume()
    }

    public func write(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: offset, data: $0) }
    }

    public func read(_ offset: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { transport.read(offset: offset, into: $0) }
        return v
    }

    /// Waits (at most 200 ms) until the device's thread has taken every
    /// notify and is back in poll. A device not started, or broken
    /// (NEEDS_RESET), takes none.
    public func settle() {
        let deadline = Self.now() + 200_000_000
        while Self.now() < deadline {
            let active = transport.isActivated && read(0x70) & MMIOTransport.Status.needsReset == 0
            let pending = active && transport.notifiers.contains { Self.readable($0.fd) }
            if !pending && Poller.sleepers.load(ordering: .sequentiallyConsistent) >= (transport.isActivated ? 1 : 0) { return }
            sched_yield()
        }
    }

    static func readable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1
    }

    static func now() -> Int {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return t.tv_sec * 1_000_000_000 + t.tv_nsec
    }

    /// A private scratch directory for a target's files and sockets.
    public static func scratchDirectory(_ name: String) -> String {
        var template = Array("/tmp/skiff-\(name)-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { fatalError("mkdtemp: \(String(cString: strerror(errno)))") }
        return String(cString: p)
    }
}

/// The fuzzer's bytes, read front to back; past the end everything is 0.
public struct Input {
    let data: UnsafeBufferPointer<UInt8>
    var position = 0

    public init(_ data: UnsafeBufferPointer<UInt8>) { self.data = data }

    public var atEnd: Bool { position >= data.count }

    public mutating func u8() -> UInt8 {
        guard position < data.count else { return 0 }
        defer { position += 1 }
        return data[position]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }

    public mutating func bytes(_ n: Int) -> [UInt8] {
        let k = min(n, data.count - position)
        defer { position += k }
        return Array(data[position..<position + k])
    }
}
