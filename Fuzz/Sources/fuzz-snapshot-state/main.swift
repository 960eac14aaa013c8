// Snapshot state as an attacker would write it: the state file's framing,
// the memory file's header, and the device sections a restore reads
// (past the checksum, which a forger can recompute). Each input gets an
// error or a restored device, never a trap.
import SkiffCore

let memory = try! GuestMemory(size: 4 << 20)
let irq = try! EventFD()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? StateFile.decode(bytes, path: "fuzz")
    _ = try? MemoryFile.Header.decode(bytes + [UInt8](repeating: 0, count: max(0, 4096 - bytes.count)), path: "fuzz")
    guard let selector = bytes.first else { return 0 }
    var r = StateReader(bytes.dropFirst(), what: "fuzz")
    switch selector % 4 {
    case 0: try? Serial8250(irq: NoInterrupt(), sink: { _ in }).restoreState(&r)
    case 1: try? I8042(onReset: {}).restoreState(&r)
    case 2: try? CMOS().restoreState(&r)
    default:
        // A virtio transport restored from forged registers and queue
        // positions; if it comes up active, its device runs, then resets.
        let transport = try! MMIOTransport(device: Rng(), memory: memory, irq: irq, name: "fuzz")
        if (try? transport.restoreState(&r)) != nil {
            var zero: UInt32 = 0
            withUnsafeBytes(of: &zero) { transport.write(offset: 0x70, data: $0) } // status 0: reset
        }
    }
    return 0
}

struct NoInterrupt: InterruptLine { func pulse() {} }
