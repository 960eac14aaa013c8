/// Names of VMs and snapshots, as Docker allows them: they become file
/// names and appear in URLs, so nothing that could leave a directory or
/// confuse a path (`/`, `..`, NUL, a leading dot) gets in.
enum Names {
    static let maxLength = 63

    /// nil when valid, else why not.
    static func problem(_ name: String, what: String = "name") -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { return "the \(what) is empty" }
        guard bytes.count <= maxLength else { return "the \(what) has \(bytes.count) bytes; at most \(maxLength)" }
        func alnum(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) }
        guard alnum(bytes[0]) else { return "the \(what) must start with a letter or digit" }
        for b in bytes where !(alnum(b) || b == 0x5f || b == 0x2e || b == 0x2d) {
            let shown = b < 0x20 || b >= 0x7f ? String(format: b) : "'\(Character(UnicodeScalar(b)))'"
            return "the \(what) has \(shown); only letters, digits, '_', '.' and '-' are allowed"
        }
        return nil
    }

    private static func String(format b: UInt8) -> Swift.String {
        let hex = Array("0123456789abcdef")
        return "byte 0x" + Swift.String(hex[Int(b >> 4)]) + Swift.String(hex[Int(b & 15)])
    }
}
