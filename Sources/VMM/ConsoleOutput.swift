import Glibc
import SkiffControl
import Synchronization

/// Where the guest's serial output goes: the VMM's standard output.
///
/// The guest is not trusted with the host's terminal: when the output is a
/// terminal, bytes that could make up a control sequence (ESC, the other
/// C0 controls but \n \r \t \b, DEL, C1 controls raw or UTF-8-encoded,
/// bytes that are not UTF-8) are shown escaped, `^[` or `\x9b`. Anything
/// else (a pipe, a file) gets the guest's bytes unchanged.
///
/// With a limit (SKIFF_CONSOLE_LOG_MAX bytes; `skiff clone --output-dir`
/// sets 16 MiB for its clones' log files) output stops there, after one
/// line saying so, and the file is never larger than the limit.
public final class ConsoleOutput: Sendable {
    public static let limitVariable = "SKIFF_CONSOLE_LOG_MAX"
    public static let cloneLogLimit: UInt64 = 16 << 20

    let fd: Int32
    let escapes: Bool
    let limit: UInt64?
    private let state = Mutex(State())

    struct State {
        var written: UInt64 = 0
        var stopped = false
        var escaper = TerminalEscaper()
    }

    public init(fd: Int32, escapes: Bool, limit: UInt64?) {
        self.fd = fd; self.escapes = escapes; self.limit = limit
    }

    /// Standard output: escaped if it is a terminal, limited if
    /// SKIFF_CONSOLE_LOG_MAX says so.
    public static func standardOutput() throws(ConfigurationError) -> ConsoleOutput {
        var limit: UInt64?
        if let v = getenv(limitVariable) {
            let text = String(cString: v)
            guard let n = UInt64(text) else { throw ConfigurationError("\(limitVariable)=\(text): not a number of bytes") }
            limit = n
        }
        return ConsoleOutput(fd: STDOUT_FILENO, escapes: isatty(STDOUT_FILENO) == 1, limit: limit)
    }

    /// One byte from the guest (any vCPU thread).
    public func write(_ byte: UInt8) {
        state.withLock { s in
            guard !s.stopped else { return }
            var out = escapes ? s.escaper.render(byte) : [byte]
            guard !out.isEmpty else { return }
            if let limit {
                let notice = Array("\n[skiff: console output stopped at \(limit) bytes (\(Self.limitVariable))]\n".utf8)
                let left = limit - s.written // written never exceeds limit
                if UInt64(out.count) + UInt64(notice.count) > left {
                    s.stopped = true
                    guard UInt64(notice.count) <= left else { return }
                    out = notice
                }
            }
            var done = 0
            defer { s.written += UInt64(done) }
            while done < out.count {
                let n = out.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return } // output gone (a closed pipe): the guest goes on
                done += n
            }
        }
    }
}
