import Foundation
import Yams

/// An appliance: one application and the parts of Debian it needs, as a
/// YAML document (`appliances/*.yaml`). Every field is checked before a
/// build starts; unknown fields are refused (a typo must not silently
/// build something else).
///
///     name: nginx
///     version: "1"
///     packages: [nginx-light]          # or a .deb's path: /x.deb, ./x.deb (from the spec's folder)
///     files: {/etc/nginx/sites-enabled/default: "server { listen 80; root /srv; }\n"}
///     command: [nginx, -g, "daemon off;"]
///     user: root
///     environment: {LANG: C.UTF-8}
///     workdir: /
///     ports: [80]
///     health: {http: {port: 80, path: /, status: 200}}
///     volumes: [/var/lib/nginx]
///     keep: [/etc/nginx]
///     cpus: 1
///     memory: 128
public struct ApplianceSpec: Codable, Sendable, Equatable {
    public var name: String
    public var version: String
    public var packages: [String]
    /// Path in the image: its content (text).
    public var files: [String: String]
    public var command: [String]
    public var user: String
    public var environment: [String: String]
    public var workdir: String
    public var ports: [Int]
    public var health: Health?
    /// Writable paths (the rest of the root is read-only).
    public var volumes: [String]
    /// Paths the trimming keeps whatever a traced run opened.
    public var keep: [String]
    public var cpus: Int
    /// MiB.
    public var memory: Int

    public enum Health: Codable, Sendable, Equatable {
        case tcp(port: Int)
        case http(port: Int, path: String, status: Int)
        case command([String])
    }

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    static let fields: Set<String> = ["name", "version", "packages", "files", "command", "user", "environment", "workdir", "ports",
                                      "health", "volumes", "keep", "cpus", "memory"]

    /// Parses and checks a spec; a bad one gets one message that says what to change.
    public static func parse(_ text: String, source: String = "spec") throws -> ApplianceSpec {
        guard text.utf8.count <= 1 << 20 else { throw Invalid("\(source): over 1 MiB") }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw Invalid("\(source): not YAML: \(String(describing: error).prefix(300))")
        }
        guard let map = node?.mapping else { throw Invalid("\(source): the document must be a mapping (name: ..., packages: [...])") }
        var keys: Set<String> = []
        for key in map.keys {
            guard let k = key.string else { throw Invalid("\(source): a key that is not a string") }
            guard fields.contains(k) else {
                throw Invalid("\(source): unknown field '\(k.prefix(60))' (known: \(fields.sorted().joined(separator: ", ")))")
            }
            keys.insert(k)
        }
        for required in ["name", "command"] where !keys.contains(required) { throw Invalid("\(source): '\(required)' is missing") }
        func string(_ k: String, default d: String) throws -> String {
            guard let n = map[k] else { return d }
            guard let s = n.scalar?.string else { throw Invalid("\(source): '\(k)' must be a string") }
            return s
        }
        func strings(_ k: String) throws -> [String] {
            guard let n = map[k] else { return [] }
            guard let seq = n.sequence else { throw Invalid("\(source): '\(k)' must be a list") }
            return try seq.map { guard let s = $0.scalar?.string else { throw Invalid("\(source): '\(k)' must list strings") }; return s }
        }
        func table(_ k: String) throws -> [String: String] {
            guard let n = map[k] else { return [:] }
            guard let m = n.mapping else { throw Invalid("\(source): '\(k)' must be a mapping") }
            var out: [String: String] = [:]
            for (key, value) in m {
                guard let ks = key.scalar?.string, let vs = value.scalar?.string else { throw Invalid("\(source): '\(k)' must map strings to strings") }
                guard out[ks] == nil else { throw Invalid("\(source): '\(k)' names \(ks) twice") }
                out[ks] = vs
            }
            return out
        }
        func int(_ k: String, default d: Int) throws -> Int {
            guard let n = map[k] else { return d }
            guard let s = n.scalar?.string, let v = Int(s) else { throw Invalid("\(source): '\(k)' must be a whole number") }
            return v
        }
        var spec = ApplianceSpec(
            name: try string("name", default: ""), version: try string("version", default: "latest"),
            packages: try strings("packages"), files: try table("files"), command: try strings("command"),
            user: try string("user", default: "root"), environment: try table("environment"), workdir: try string("workdir", default: "/"),
            ports: [], health: nil, volumes: try strings("volumes"), keep: try strings("keep"),
            cpus: try int("cpus", default: 1), memory: try int("memory", default: 128))
        if let p = map["ports"] {
            guard let seq = p.sequence else { throw Invalid("\(source): 'ports' must be a list of port numbers") }
            spec.ports = try seq.map { guard let s = $0.scalar?.string, let v = Int(s) else { throw Invalid("\(source): 'ports' must list port numbers") }; return v }
        }
        if let h = map["health"] { spec.health = try health(h, source) }
        try spec.check(source)
        return spec
    }

    static func health(_ n: Node, _ source: String) throws -> Health {
        guard let m = n.mapping, m.count == 1, let kind = m.keys.first?.string, let body = m.values.first else {
            throw Invalid("\(source): 'health' is one of {tcp: PORT}, {http: {port: P, path: /, status: 200}}, {command: [...]}")
        }
        switch kind {
        case "tcp":
            guard let s = body.scalar?.string, let port = Int(s) else { throw Invalid("\(source): health.tcp must be a port number") }
            return .tcp(port: port)
        case "http":
            guard let hm = body.mapping else { throw Invalid("\(source): health.http must be a mapping (port, path, status)") }
            for k in hm.keys where !["port", "path", "status"].contains(k.string ?? "") {
                throw Invalid("\(source): health.http: unknown field '\(k.string ?? "?")'")
            }
            guard let ps = hm["port"]?.scalar?.string, let port = Int(ps) else { throw Invalid("\(source): health.http.port must be a port number") }
            let path = hm["path"]?.scalar?.string ?? "/"
            guard let status = Int(hm["status"]?.scalar?.string ?? "200") else { throw Invalid("\(source): health.http.status must be a number") }
            return .http(port: port, path: path, status: status)
        case "command":
            guard let seq = body.sequence else { throw Invalid("\(source): health.command must be a list") }
            return .command(try seq.map { guard let s = $0.scalar?.string else { throw Invalid("\(source): health.command must list strings") }; return s })
        default:
            throw Invalid("\(source): health '\(kind.prefix(40))': tcp, http or command")
        }
    }

    /// A package given as a path to a .deb file (`/x.deb`, `./x.deb`).
    public static func isLocalPackage(_ p: String) -> Bool { p.hasPrefix("/") || p.hasPrefix("./") }

    func check(_ source: String) throws {
        func fail(_ s: String) -> Invalid { Invalid("\(source): \(s)") }
        guard ImageReference.isName(name) else { throw fail("name '\(name.prefix(80))': 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit") }
        guard ImageReference.isTag(version) else { throw fail("version '\(version.prefix(80))': 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'") }
        guard packages.count <= 500 else { throw fail("at most 500 packages") }
        for p in packages {
            if Self.isLocalPackage(p) {
                // A .deb of the user's own: absolute, or ./ from the spec's folder.
                guard p.utf8.count <= 4096, p.hasSuffix(".deb"), p.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x2c && $0 != 0x7f }) else {
                    throw fail("package '\(p.prefix(80))': a local package is a path to a .deb, without spaces or commas")
                }
                continue
            }
            // Debian's package name syntax (Policy 5.6.1), optionally =VERSION.
            let parts = p.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let pkg = parts[0]
            guard pkg.count >= 2, pkg.count <= 100, let first = pkg.utf8.first, (0x61...0x7a).contains(first) || (0x30...0x39).contains(first),
                  pkg.utf8.allSatisfy({ (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || "+-.".utf8.contains($0) }) else {
                throw fail("package '\(p.prefix(80))' is not a Debian package name (lower-case letters, digits, '+', '-', '.')")
            }
            if parts.count == 2 {
                guard !parts[1].isEmpty, parts[1].count <= 100,
                      parts[1].utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && !"/ '\"\\".utf8.contains($0) }) else { throw fail("package '\(p.prefix(80))': a bad version") }
            }
        }
        guard !command.isEmpty, command.count <= 256, command.allSatisfy({ !$0.utf8.contains(0) }) else {
            throw fail("'command' must be a non-empty list of arguments (the program first)")
        }
        for (path, content) in files {
            try Self.checkPath(path, "files", source)
            guard content.utf8.count <= 256 << 10 else { throw fail("files \(path): over 256 KiB") }
        }
        for p in volumes { try Self.checkPath(p, "volumes", source) }
        for p in keep { try Self.checkPath(p, "keep", source) }
        try Self.checkPath(workdir, "workdir", source, allowRoot: true)
        guard user.utf8.count <= 32, !user.isEmpty, user.utf8.allSatisfy({ (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || "_-".utf8.contains($0) }) else {
            throw fail("user '\(user.prefix(40))': a user name (a-z, 0-9, '_', '-') or a number")
        }
        for (k, v) in environment {
            guard !k.isEmpty, k.utf8.count <= 128, k.utf8.allSatisfy({ (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f }),
                  !(0x30...0x39).contains(k.utf8.first!) else { throw fail("environment '\(k.prefix(40))': letters, digits and '_', not starting with a digit") }
            guard v.utf8.count <= 4096, !v.utf8.contains(0), !v.utf8.contains(0x0a) else { throw fail("environment \(k): a value of at most 4096 bytes on one line") }
        }
        for p in ports { guard (1...65535).contains(p) else { throw fail("port \(p): between 1 and 65535") } }
        guard Set(ports).count == ports.count else { throw fail("a port is listed twice") }
        switch health {
        case .tcp(let p), .http(let p, _, _): guard (1...65535).contains(p) else { throw fail("health port \(p): between 1 and 65535") }
        case .command(let c): guard !c.isEmpty else { throw fail("health.command is empty") }
        case nil: break
        }
        if case .http(_, let path, let status) = health {
            guard path.hasPrefix("/"), path.utf8.count <= 1024, path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else { throw fail("health.http.path '\(path.prefix(80))': an absolute URL path") }
            guard (100...599).contains(status) else { throw fail("health.http.status \(status): an HTTP status") }
        }
        guard (1...64).contains(cpus) else { throw fail("cpus \(cpus): between 1 and 64") }
        guard (16...65536).contains(memory) else { throw fail("memory \(memory): MiB, between 16 and 65536") }
    }

    /// An absolute path in the image, with no '..', '.', '//' or control characters.
    static func checkPath(_ path: String, _ what: String, _ source: String, allowRoot: Bool = false) throws {
        if allowRoot && path == "/" { return }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard path.hasPrefix("/"), path.utf8.count <= 1024, !parts.isEmpty,
              !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }),
              !path.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) else {
            throw Invalid("\(source): \(what) '\(path.prefix(120))': an absolute path without '.', '..', '//' or control characters")
        }
    }
}
