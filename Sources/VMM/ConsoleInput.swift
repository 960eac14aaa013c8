import Devices
import Glibc
import Machine

/// Forwards host input (stdin) to the guest's UART, on a thread of its own.
/// A terminal is put in raw mode, signals included, so that Ctrl-C and
/// Ctrl-Z reach the guest as they would on a serial line; as in QEMU,
/// Ctrl-A is the escape: Ctrl-A x stops the VM, Ctrl-A Ctrl-A sends one
/// Ctrl-A, Ctrl-A h lists these. The terminal is restored when the VM stops.
/// Input that is not a terminal is sent as it is, with no escape.
final class ConsoleInput: @unchecked Sendable {
    static let endOfFile: UInt8 = 0x04 // ^D
    static let escape: UInt8 = 0x01 // ^A
    let fd: Int32
    let serial: any ConsoleReceiver
    let onQuit: @Sendable () -> Void
    private var saved: termios?
    private var thread: HostThread?

    init(fd: Int32, serial: any ConsoleReceiver, onQuit: @escaping @Sendable () -> Void) {
        self.fd = fd
        self.serial = serial
        self.onQuit = onQuit
    }

    /// Ctrl-A handling on a terminal: the bytes to send to the guest, after
    /// acting on an escape; `afterEscape` carries a Ctrl-A across reads.
    static func unescape(_ bytes: ArraySlice<UInt8>, afterEscape: inout Bool, quit: () -> Void, help: () -> Void) -> [UInt8] {
        var out: [UInt8] = []
        for b in bytes {
            if afterEscape {
                afterEscape = false
                switch b {
                case UInt8(ascii: "x"), UInt8(ascii: "X"): quit(); return out
                case escape: out.append(escape)
                case UInt8(ascii: "h"), UInt8(ascii: "?"): help()
                default: out += [escape, b]
                }
            } else if b == escape {
                afterEscape = true
            } else {
                out.append(b)
            }
        }
        return out
    }

    func start() throws {
        var terminal = false
        if isatty(fd) != 0 {
            var t = termios()
            if tcgetattr(fd, &t) == 0 {
                saved = t
                terminal = true
                t.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
                t.c_iflag &= ~tcflag_t(ICRNL | IXON)
                // No banner: it would land in the middle of the guest's output.
                tcsetattr(fd, TCSANOW, &t)
            }
        }
        let fd = self.fd, serial = self.serial, onQuit = self.onQuit, escapes = terminal
        thread = try HostThread(name: "console") {
            var buffer = [UInt8](repeating: 0, count: 64)
            var afterEscape = false
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    // Host input ended. A serial line has no end-of-file, so
                    // the guest is sent one the way a terminal sends it: ^D,
                    // and again once its FIFO is empty after a driver turned
                    // the receiver on anew (a shell started later, a FIFO the
                    // driver cleared), or every 10 s (input a program
                    // flushed). `skiff run < /dev/null` then ends like a pipe.
                    // It was every 500 ms: an application that never reads
                    // its console took two a second, each an interrupt and
                    // tty work in the guest's (emulated) kernel mode.
                    var sentAt: UInt64?
                    var quietTicks = 0
                    while true {
                        let starts = serial.receiverStartCount
                        quietTicks += 1
                        if (sentAt != starts || quietTicks >= 100) && serial.receiveSpace == Serial8250.rxCapacity {
                            _ = serial.receive([Self.endOfFile])
                            sentAt = starts
                            quietTicks = 0
                        }
                        usleep(100_000)
                    }
                }
                var quit = false
                let input = escapes
                    ? Self.unescape(buffer[0..<n], afterEscape: &afterEscape, quit: { quit = true }, help: {
                        var text = Array("\r\n[skiff: Ctrl-A x  stop the VM | Ctrl-A Ctrl-A  send Ctrl-A]\r\n".utf8)
                        _ = text.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
                    })
                    : Array(buffer[0..<n])
                var pending = input[...]
                while !pending.isEmpty {
                    let taken = serial.receive(pending)
                    pending = pending.dropFirst(taken)
                    if !pending.isEmpty { usleep(1000) } // the guest has not drained its FIFO yet
                }
                if quit { onQuit(); return }
            }
        }
    }

    func restoreTerminal() {
        if var t = saved { tcsetattr(fd, TCSANOW, &t) }
    }
}

/// Where host input goes: the UART, or a deterministic machine's queue
/// (`HostInputQueue`), which hands it to the UART at the guest's exits.
protocol ConsoleReceiver: Sendable {
    /// Takes what fits; returns how many bytes.
    func receive(_ bytes: some Collection<UInt8>) -> Int
    /// Room right now (`Serial8250.rxCapacity` when empty).
    var receiveSpace: Int { get }
    var receiverStartCount: UInt64 { get }
}

extension Serial8250: ConsoleReceiver {}
