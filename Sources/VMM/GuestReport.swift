import Synchronization

/// What the guest said about how it ended, read from its console as the
/// bytes go by: the default guest's /init prints `skiff: exit N` after the
/// command it ran (`skiff_run=`), and Linux prints `Kernel panic - not
/// syncing: REASON` before a panic resets the machine. `skiff run` then
/// exits with the command's status, or fails with the panic's reason,
/// instead of 0 for every reset.
///
/// The guest is the only one these lines speak for: whatever it prints
/// changes only its own VM's exit status. Lines are cut at 256 bytes, a
/// status must be 0...255, and the last `skiff: exit` before the stop wins
/// (a program that prints one is followed by /init's own).
public final class GuestReport: Sendable {
    public struct Ending: Equatable, Sendable {
        public var exitStatus: Int32?
        public var panic: String?
    }

    private struct State {
        var line: [UInt8] = []
        var ending = Ending()
    }
    private let state = Mutex(State())
    static let maxLine = 256
    static let exitPrefix = Array("skiff: exit ".utf8)
    static let panicPrefix = Array("Kernel panic - not syncing: ".utf8)

    public init() {}

    public var ending: Ending { state.withLock { $0.ending } }

    /// One console byte (any vCPU thread).
    public func feed(_ byte: UInt8) {
        state.withLock { s in
            if byte == 0x0a || byte == 0x0d {
                if !s.line.isEmpty { Self.judge(s.line, &s.ending) }
                s.line.removeAll(keepingCapacity: true)
            } else if s.line.count < Self.maxLine {
                s.line.append(byte)
            }
        }
    }

    static func judge(_ line: [UInt8], _ ending: inout Ending) {
        // The kernel's printk may put a timestamp ("[    1.234] ") first.
        var text = line[...]
        if text.first == UInt8(ascii: "["), let close = text.firstIndex(of: UInt8(ascii: "]")) {
            text = text[text.index(after: close)...].drop { $0 == 0x20 }
        }
        if text.starts(with: exitPrefix) {
            let digits = text.dropFirst(exitPrefix.count)
            guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return }
            let n = digits.reduce(Int32(0)) { $0 * 10 + Int32($1 - 0x30) }
            if n <= 255 { ending.exitStatus = n }
        } else if text.starts(with: panicPrefix), ending.panic == nil {
            let reason = text.dropFirst(panicPrefix.count).map { $0 < 0x20 || $0 == 0x7f ? UInt8(ascii: "?") : $0 }
            ending.panic = String(decoding: reason, as: UTF8.self)
        }
    }
}
