/// A JSON document (RFC 8259), parsed without Foundation for the per-VM
/// process: `skiff run --config FILE`. The file may come from anywhere,
/// so the parser is bounded (64 KiB of text, 32 levels of nesting) and
/// reports where it stopped instead of trapping.
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    /// Members in document order; a repeated key is an error.
    case object([(String, JSONValue)])

    public static let maxBytes = 64 << 10
    static let maxDepth = 32

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.number(let x), .number(let y)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    public static func parse(_ bytes: [UInt8]) throws(ConfigurationError) -> JSONValue {
        guard bytes.count <= maxBytes else { throw ConfigurationError("the document is \(bytes.count) bytes; at most \(maxBytes)") }
        var p = Parser(bytes: bytes)
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == bytes.count else { throw p.error("text after the document") }
        return v
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        func error(_ what: String) -> ConfigurationError {
            var line = 1, column = 1
            for b in bytes.prefix(i) { if b == 0x0a { line += 1; column = 1 } else { column += 1 } }
            return ConfigurationError("JSON, line \(line) column \(column): \(what)")
        }

        mutating func skipSpace() {
            while i < bytes.count, [0x20, 0x09, 0x0a, 0x0d].contains(bytes[i]) { i += 1 }
        }

        mutating func literal(_ word: String, _ v: JSONValue) throws(ConfigurationError) -> JSONValue {
            let w = Array(word.utf8)
            guard bytes.count - i >= w.count, Array(bytes[i..<i + w.count]) == w else { throw error("expected a value") }
            i += w.count
            return v
        }

        mutating func value(depth: Int) throws(ConfigurationError) -> JSONValue {
            guard depth < JSONValue.maxDepth else { throw error("nested more than \(JSONValue.maxDepth) deep") }
            skipSpace()
            guard i < bytes.count else { throw error("the document ends where a value should be") }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                i += 1
                var members: [(String, JSONValue)] = []
                var seen: Set<String> = [] // a hostile file may hold thousands of keys
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                while true {
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a member name in quotes") }
                    let key = try string()
                    guard seen.insert(key).inserted else { throw error("\"\(key)\" given twice") }
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':' after \"\(key)\"") }
                    i += 1
                    members.append((key, try value(depth: depth + 1)))
                    skipSpace()
                    guard i < bytes.count else { throw error("the document ends inside an object") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    guard bytes[i] == UInt8(ascii: "}") else { throw error("expected ',' or '}'") }
                    i += 1
                    return .object(members)
                }
            case UInt8(ascii: "["):
                i += 1
                var items: [JSONValue] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                while true {
                    items.append(try value(depth: depth + 1))
                    skipSpace()
                    guard i < bytes.count else { throw error("the document ends inside an array") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    guard bytes[i] == UInt8(ascii: "]") else { throw error("expected ',' or ']'") }
                    i += 1
                    return .array(items)
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .null)
            default: return try number()
            }
        }

        mutating func number() throws(ConfigurationError) -> JSONValue {
            let start = i
            if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
            func digits(_ p: inout Parser) -> Int {
                let s = p.i
                while p.i < p.bytes.count, p.bytes[p.i] >= 0x30, p.bytes[p.i] <= 0x39 { p.i += 1 }
                return p.i - s
            }
            let intStart = i
            guard digits(&self) > 0 else { throw error("expected a value") }
            guard !(bytes[intStart] == 0x30 && i - intStart > 1) else { throw error("a number with a leading zero") }
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                i += 1
                guard digits(&self) > 0 else { throw error("a number with no digits after '.'") }
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
                guard digits(&self) > 0 else { throw error("a number with no digits in its exponent") }
            }
            guard let d = Double(String(decoding: bytes[start..<i], as: UTF8.self)), d.isFinite else { throw error("a number out of range") }
            return .number(d)
        }

        mutating func string() throws(ConfigurationError) -> String {
            i += 1 // the opening quote
            var out: [UInt8] = []
            while true {
                guard i < bytes.count else { throw error("the document ends inside a string") }
                let b = bytes[i]
                i += 1
                switch b {
                case UInt8(ascii: "\""):
                    // Decoding repairs bad UTF-8; refuse it instead (a path must be exact).
                    let s = String(decoding: out, as: UTF8.self)
                    guard Array(s.utf8) == out else { throw error("a string that is not UTF-8") }
                    return s
                case UInt8(ascii: "\\"):
                    guard i < bytes.count else { throw error("the document ends inside a string") }
                    let e = bytes[i]
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0c)
                    case UInt8(ascii: "n"): out.append(0x0a)
                    case UInt8(ascii: "r"): out.append(0x0d)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xd800..<0xdc00).contains(scalar) {
                            guard bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else { throw error("a lone surrogate in \\u escapes") }
                            i += 2
                            let low = try hex4()
                            guard (0xdc00..<0xe000).contains(low) else { throw error("a lone surrogate in \\u escapes") }
                            scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
                        }
                        guard let u = Unicode.Scalar(scalar) else { throw error("a lone surrogate in \\u escapes") }
                        out += Array(String(Character(u)).utf8)
                    default: throw error("an unknown escape \\\(Character(Unicode.Scalar(e)))")
                    }
                default:
                    guard b >= 0x20 else { throw error("a control character in a string (escape it)") }
                    out.append(b)
                }
            }
        }

        mutating func hex4() throws(ConfigurationError) -> UInt32 {
            guard bytes.count - i >= 4 else { throw error("a short \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[i]
                i += 1
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw error("a bad \\u escape")
                }
                v = v << 4 | d
            }
            return v
        }
    }
}
