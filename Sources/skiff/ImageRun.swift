import Glibc
import VMM

/// `skiff run [OPTIONS] IMAGE [-- COMMAND ARGS...]`: an appliance image
/// from the store (`skiff appliance build`, `skiff image ls`), booted on
/// the default kernel and initramfs. The image's erofs root is the first
/// disk, read-only; the initramfs's /init mounts it under a tmpfs overlay
/// (the writable layer), and runs the image's command (or the one after
/// `--`) with its environment, working directory and user; the command's
/// exit status is skiff's (`skiff: exit N`, GuestReport).
///
/// The store is read without Foundation: refs.json and the manifest are
/// JSON (JSONValue, bounded), and both may have been written by anyone who
/// could write the store, so each member is checked before it is used.
struct ApplianceRun {
    var rootfs: String
    var command: [String]
    var environment: [(String, String)]
    var workdir: String
    var user: String
    var cpus: Int
    var memoryMiB: Int
    /// The manifest's digest (names the image's ready snapshot).
    var digest: String
    /// How the host tells the application is up (ReadySnapshot); a
    /// command check runs in the guest and is not used for that yet.
    var health: Health?

    enum Health: Equatable {
        case tcp(port: Int)
        case http(port: Int, path: String, status: Int)
    }

    /// $SKIFF_IMAGES, else /var/lib/skiff/images (the skiffd CLI's default too).
    static var storeRoot: String { getenv("SKIFF_IMAGES").map { String(cString: $0) } ?? "/var/lib/skiff/images" }

    static func load(_ reference: String) throws(ConfigurationError) -> ApplianceRun {
        let store = storeRoot
        let digest: String
        if reference.hasPrefix("sha256:") {
            digest = reference
        } else {
            let parts = reference.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let ref = parts.count == 2 ? reference : reference + ":latest"
            guard access(store + "/refs.json", R_OK) == 0 else {
                throw ConfigurationError("no image \(reference): the store \(store) has none (skiff appliance build SPEC makes one)")
            }
            let refs = try Document(try JSONValue.parse(try HostFiles.read(store + "/refs.json", what: "image store", limit: UInt64(JSONValue.maxBytes))), "refs.json")
            guard let d = try refs.string(ref) else {
                throw ConfigurationError("no image \(reference.prefix(80)) in \(store) (skiff image ls lists them)")
            }
            digest = d
        }
        let manifestPath = try blobPath(store, digest)
        let manifest = try Document(try JSONValue.parse(try HostFiles.read(manifestPath, what: "image manifest", limit: UInt64(JSONValue.maxBytes))), "manifest \(digest.prefix(19))")
        guard let rootfsDigest = try manifest.string("rootfs") else { throw ConfigurationError("manifest \(digest): no rootfs") }
        let rootfs = try blobPath(store, rootfsDigest)
        guard let command = try manifest.strings("command"), !command.isEmpty else { throw ConfigurationError("manifest \(digest): no command") }
        var environment: [(String, String)] = []
        if let env = try manifest.object("environment") {
            for (k, v) in env.members {
                guard case .string(let s) = v, isEnvironmentName(k), !s.utf8.contains(0), !s.utf8.contains(0x0a) else {
                    throw ConfigurationError("manifest \(digest): environment \(k.prefix(40)) is not NAME: one-line string")
                }
                environment.append((k, s))
            }
        }
        let workdir = try manifest.string("workdir") ?? "/"
        guard workdir.hasPrefix("/"), !workdir.utf8.contains(where: { $0 < 0x20 }) else { throw ConfigurationError("manifest \(digest): workdir is not an absolute path") }
        let user = try manifest.string("user") ?? "root"
        guard !user.isEmpty, user.utf8.count <= 32, user.utf8.allSatisfy({ (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f || $0 == 0x2d }) else {
            throw ConfigurationError("manifest \(digest): user is not a user name")
        }
        let cpus = try manifest.integer("cpus") ?? 1
        let memory = try manifest.integer("memoryMiB") ?? 128
        guard (1...64).contains(cpus), (16...65536).contains(memory) else { throw ConfigurationError("manifest \(digest): cpus or memoryMiB out of range") }
        var health: Health?
        if let h = try manifest.object("health") {
            func port(_ d: Document) throws(ConfigurationError) -> Int {
                guard let p = try d.integer("port"), (1...65535).contains(p) else { throw ConfigurationError("manifest \(digest): health port out of range") }
                return p
            }
            if let t = try h.object("tcp") {
                health = .tcp(port: try port(t))
            } else if let t = try h.object("http") {
                let path = try t.string("path") ?? "/"
                guard path.hasPrefix("/"), path.utf8.count <= 1024, path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                    throw ConfigurationError("manifest \(digest): health path is not an absolute URL path")
                }
                health = .http(port: try port(t), path: path, status: try t.integer("status") ?? 200)
            }
        }
        return ApplianceRun(rootfs: rootfs, command: command, environment: environment, workdir: workdir, user: user, cpus: cpus, memoryMiB: memory,
                            digest: digest, health: health)
    }

    /// eth0's set-up, done by /init before the command starts.
    struct GuestNetwork {
        var address: String // ADDRESS/PREFIX
        var gateway: String
        var nameservers: [String]
    }

    static func blobPath(_ store: String, _ digest: String) throws(ConfigurationError) -> String {
        let hex = digest.utf8.dropFirst(7)
        guard digest.hasPrefix("sha256:"), hex.count == 64, hex.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw ConfigurationError("'\(digest.prefix(80))' is not a sha256 digest")
        }
        return store + "/blobs/sha256/" + String(decoding: hex, as: UTF8.self)
    }

    static func isEnvironmentName(_ k: String) -> Bool {
        guard let f = k.utf8.first, !(0x30...0x39).contains(f), k.utf8.count <= 128 else { return false }
        return k.utf8.allSatisfy { (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f }
    }

    /// The kernel parameter that tells the agent (/init, guest/agent.c)
    /// to run this image: `skiff_app=` base64 of NUL-terminated entries, a
    /// letter and a value each (w workdir, u user, i address, g gateway, n a
    /// name server, e NAME=VALUE, a one argument of the command). Values go
    /// through no shell; one with a NUL is refused.
    func kernelParameters(arguments: [String], network: GuestNetwork? = nil) throws(ConfigurationError) -> String {
        var entries: [(Character, String)] = [("w", workdir), ("u", user)]
        if let network {
            entries += [("i", network.address), ("g", network.gateway)] + network.nameservers.map { ("n", $0) }
        }
        entries += environment.map { ("e", $0.0 + "=" + $0.1) }
        entries += (arguments.isEmpty ? command : arguments).map { ("a", $0) }
        var record: [UInt8] = []
        for (letter, value) in entries {
            guard !value.utf8.contains(0) else { throw ConfigurationError("'\(value.prefix(80))' holds a NUL byte") }
            record += Array(String(letter).utf8) + Array(value.utf8) + [0]
        }
        let encoded = Base64.encode(record)
        // x86's COMMAND_LINE_SIZE is 2048, and the default line takes some.
        guard encoded.utf8.count <= 1700 else {
            throw ConfigurationError("the command and environment take \(encoded.utf8.count) bytes on the kernel command line; at most 1700")
        }
        return "skiff_app=" + encoded
    }
}

/// RFC 4648 base64 (the agent decodes it).
enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let b0 = UInt32(bytes[i]), b1 = n > 1 ? UInt32(bytes[i + 1]) : 0, b2 = n > 2 ? UInt32(bytes[i + 2]) : 0
            let v = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(v >> 18 & 63)])
            out.append(alphabet[Int(v >> 12 & 63)])
            out.append(n > 1 ? alphabet[Int(v >> 6 & 63)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(v & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
