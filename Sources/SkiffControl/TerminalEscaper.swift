/// Makes a byte stream safe to show on a terminal, keeping UTF-8 text as
/// it is. A multi-byte character is held until complete, then shown if it
/// is not a C1 control. The VMM's console and `skiff attach` both show a
/// guest's bytes on the host's terminal through it.
public struct TerminalEscaper {
    public init() {}
    private var pending: [UInt8] = []
    private var needed = 0

    public mutating func render(_ byte: UInt8) -> [UInt8] {
        var out: [UInt8] = []
        if needed > 0 {
            if byte & 0xc0 == 0x80 {
                pending.append(byte)
                needed -= 1
                guard needed == 0 else { return [] }
                defer { pending = [] }
                // U+0080...U+009F: the C1 controls, CSI among them.
                if pending.count == 2 && pending[0] == 0xc2 && pending[1] < 0xa0 { return pending.flatMap(Self.hex) }
                return pending
            }
            out = pending.flatMap(Self.hex) // cut short: not UTF-8
            pending = []
            needed = 0
        }
        switch byte {
        case 0x0a, 0x0d, 0x09, 0x08, 0x20..<0x7f: out.append(byte)
        case 0x00..<0x20: out += [UInt8(ascii: "^"), byte + 0x40]
        case 0x7f: out += Array("^?".utf8)
        case 0xc2...0xdf: pending = [byte]; needed = 1
        case 0xe0...0xef: pending = [byte]; needed = 2
        case 0xf0...0xf4: pending = [byte]; needed = 3
        default: out += Self.hex(byte) // a lone continuation byte (0x9b among them) or never UTF-8
        }
        return out
    }

    static func hex(_ b: UInt8) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return [UInt8(ascii: "\\"), UInt8(ascii: "x"), digits[Int(b >> 4)], digits[Int(b & 0xf)]]
    }
}
