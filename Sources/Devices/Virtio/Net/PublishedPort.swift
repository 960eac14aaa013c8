/// A host port forwarded to a guest's (`skiff run -p 8080:80`), as Docker
/// writes it: `HOST:GUEST` or `HOST:GUEST/udp`, TCP unless said.
public struct PublishedPort: Sendable, Equatable, CustomStringConvertible {
    public enum Proto: String, Sendable { case tcp, udp }
    public var host: UInt16
    public var guest: UInt16
    public var proto: Proto

    public init(host: UInt16, guest: UInt16, proto: Proto = .tcp) {
        self.host = host; self.guest = guest; self.proto = proto
    }

    /// nil for anything but two ports 1-65535 and an optional /tcp or /udp.
    public init?(parsing text: String) {
        var body = Substring(text), proto = Proto.tcp
        if let slash = body.firstIndex(of: "/") {
            guard let p = Proto(rawValue: String(body[body.index(after: slash)...])) else { return nil }
            proto = p
            body = body[..<slash]
        }
        let parts = body.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.count <= 5 && $0.utf8.allSatisfy { (0x30...0x39).contains($0) } }),
              let h = UInt16(parts[0]), let g = UInt16(parts[1]), h > 0, g > 0 else { return nil }
        self.init(host: h, guest: g, proto: proto)
    }

    public var description: String { "\(host):\(guest)/\(proto.rawValue)" }
}
