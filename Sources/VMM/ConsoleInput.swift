import Devices
import Glibc
import Machine

/// Forwards host input (stdin) to the guest's UART, on a thread of its own.
/// A terminal is put in raw mode, with signals kept so Ctrl-C still stops
/// Skiff, and restored when the VM stops.
final class ConsoleInput: @unchecked Sendable {
    static let endOfFile: UInt8 = 0x04 // ^D
    let fd: Int32
    let serial: Serial8250
    private var saved: termios?
    private var thread: HostThread?

    init(fd: Int32, serial: Serial8250) {
        self.fd = fd
        self.serial = serial
    }

    func start() throws {
        if isatty(fd) != 0 {
            var t = termios()
            if tcgetattr(fd, &t) == 0 {
                saved = t
                t.c_lflag &= ~tcflag_t(ICANON | ECHO)
                t.c_iflag &= ~tcflag_t(ICRNL)
                tcsetattr(fd, TCSANOW, &t)
            }
        }
        let fd = self.fd, serial = self.serial
        thread = try HostThread(name: "console") {
            var buffer = [UInt8](repeating: 0, count: 64)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    // Host input ended. A serial line has no end-of-file, so
                    // the guest is sent one the way a terminal sends it: ^D,
                    // again whenever its receive FIFO is empty, so that a
                    // shell started later (or a FIFO the driver cleared) gets
                    // it too. `skiff run < /dev/null` then ends like a pipe.
                    while true {
                        if serial.receiveSpace == Serial8250.rxCapacity { serial.receive([Self.endOfFile]) }
                        usleep(500_000)
                    }
                }
                var pending = buffer[0..<n]
                while !pending.isEmpty {
                    let taken = serial.receive(pending)
                    pending = pending.dropFirst(taken)
                    if !pending.isEmpty { usleep(1000) } // the guest has not drained its FIFO yet
                }
            }
        }
    }

    func restoreTerminal() {
        if var t = saved { tcsetattr(fd, TCSANOW, &t) }
    }
}
