import Crypto
import Foundation

/// `name:tag`, as Docker writes it (the tag defaults to `latest`).
public struct ImageReference: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let tag: String
    public var description: String { "\(name):\(tag)" }

    public init(name: String, tag: String) { self.name = name; self.tag = tag }

    public init?(_ text: String) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let tag = parts.count == 2 ? parts[1] : "latest"
        guard Self.isName(parts[0]), Self.isTag(tag) else { return nil }
        name = parts[0]; self.tag = tag
    }

    static func isName(_ s: String) -> Bool {
        guard let f = s.utf8.first, s.utf8.count <= 64, (0x61...0x7a).contains(f) || (0x30...0x39).contains(f) else { return false }
        return s.utf8.allSatisfy { (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || "._-".utf8.contains($0) }
    }

    static func isTag(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy { (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || "._-".utf8.contains($0) }
    }
}

/// What an image is: its root filesystem (an erofs blob) and how to run it.
/// Stored as JSON by the digest of those bytes; the image's digest is the
/// manifest's, so the same root and configuration give the same digest.
public struct ImageManifest: Codable, Sendable, Equatable {
    public var schemaVersion: Int = 1
    /// sha256:HEX of the erofs root.
    public var rootfs: String
    public var rootfsBytes: Int64
    public var command: [String]
    public var user: String
    public var environment: [String: String]
    public var workdir: String
    public var ports: [Int]
    public var health: ApplianceSpec.Health?
    public var volumes: [String]
    public var cpus: Int
    public var memoryMiB: Int
    /// Where it came from: "appliance SPEC-DIGEST" or "oci ...".
    public var source: String
    /// The Debian packages in the image, "name=version", sorted.
    public var packages: [String]
}

/// The content-addressed image store: `blobs/sha256/HEX` (roots and
/// manifests), `refs.json` (name:tag to a manifest digest). Written by
/// rename, so a crash leaves the old state or the new, never half of one;
/// blobs no reference reaches are what `gc` removes.
public struct ImageStore: Sendable {
    public let root: String

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// $SKIFF_IMAGES, else /var/lib/skiff/images.
    public static var defaultRoot: String { ProcessInfo.processInfo.environment["SKIFF_IMAGES"] ?? "/var/lib/skiff/images" }

    public init(root: String = ImageStore.defaultRoot) throws {
        self.root = root
        for d in [root, root + "/blobs", root + "/blobs/sha256", root + "/tmp"] {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
    }

    public var temporary: String { root + "/tmp" }

    public func blobPath(_ digest: String) throws -> String {
        guard digest.hasPrefix("sha256:"), digest.utf8.count == 71,
              digest.utf8.dropFirst(7).allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw Failure("'\(digest.prefix(80))' is not a sha256:HEX digest")
        }
        return root + "/blobs/sha256/" + digest.dropFirst(7)
    }

    /// Moves a finished file into the store under its digest (computed here).
    public func add(file: String) throws -> (digest: String, bytes: Int64) {
        let (digest, bytes) = try Self.sha256(file: file)
        let dest = try blobPath(digest)
        if FileManager.default.fileExists(atPath: dest) {
            try? FileManager.default.removeItem(atPath: file)
        } else {
            chmod(file, 0o444)
            guard rename(file, dest) == 0 else { throw Failure("\(dest): \(String(cString: strerror(errno)))") }
        }
        return (digest, bytes)
    }

    public func add(manifest: ImageManifest) throws -> String {
        let data = try Self.encoder.encode(manifest)
        let tmp = temporary + "/manifest-\(UUID().uuidString)"
        try data.write(to: URL(fileURLWithPath: tmp))
        return try add(file: tmp).digest
    }

    public func manifest(_ digest: String) throws -> ImageManifest {
        let path = try blobPath(digest)
        guard let data = FileManager.default.contents(atPath: path) else { throw Failure("no blob \(digest)") }
        guard data.count <= 1 << 20 else { throw Failure("manifest \(digest): over 1 MiB") }
        return try JSONDecoder().decode(ImageManifest.self, from: data)
    }

    public func references() throws -> [String: String] {
        let path = root + "/refs.json"
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        return try JSONDecoder().decode([String: String].self, from: data)
    }

    func writeReferences(_ refs: [String: String]) throws {
        let tmp = temporary + "/refs-\(UUID().uuidString)"
        try Self.encoder.encode(refs).write(to: URL(fileURLWithPath: tmp))
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
        guard rename(tmp, root + "/refs.json") == 0 else { throw Failure("refs.json: \(String(cString: strerror(errno)))") }
    }

    public func tag(_ ref: ImageReference, _ digest: String) throws {
        var refs = try references()
        refs[ref.description] = digest
        try writeReferences(refs)
    }

    /// A reference (`name`, `name:tag`) or a digest (`sha256:...`, or a unique prefix of its hex).
    public func resolve(_ text: String) throws -> String {
        if text.hasPrefix("sha256:") { _ = try manifest(text); return text }
        if let ref = ImageReference(text), let d = try references()[ref.description] { return d }
        if text.utf8.count >= 6, text.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) {
            let matches = Set(try references().values.filter { $0.dropFirst(7).hasPrefix(text) })
            if matches.count == 1 { return matches.first! }
            if matches.count > 1 { throw Failure("\(text) names more than one image") }
        }
        throw Failure("no image \(text.prefix(80)) (skiff image ls lists them; skiff appliance build SPEC makes one)")
    }

    /// Removes a reference; the blobs go at the next `gc`.
    public func remove(_ text: String) throws -> String {
        var refs = try references()
        if let ref = ImageReference(text), refs[ref.description] != nil {
            refs[ref.description] = nil
            try writeReferences(refs)
            return ref.description
        }
        let digest = try resolve(text)
        let names = refs.filter { $0.value == digest }.map(\.key)
        for n in names { refs[n] = nil }
        try writeReferences(refs)
        return names.sorted().joined(separator: ", ")
    }

    /// Deletes blobs and ready snapshots that no reference reaches.
    public func collectGarbage() throws -> (blobs: Int, bytes: Int64) {
        var live: Set<String> = []
        for digest in Set(try references().values) {
            live.insert(digest)
            if let m = try? manifest(digest) { live.insert(m.rootfs) }
        }
        var removed = 0, bytes: Int64 = 0
        let dir = root + "/blobs/sha256"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where !live.contains("sha256:" + name) {
            let path = dir + "/" + name
            bytes += ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int64) ?? 0
            try FileManager.default.removeItem(atPath: path)
            removed += 1
        }
        // Ready snapshots (`skiff run`'s, named by manifest digest) of
        // images no reference reaches, and half-made ones a killed run left.
        let ready = root + "/ready"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: ready)) ?? [] where !live.contains("sha256:" + name) {
            let path = ready + "/" + name
            if let e = FileManager.default.enumerator(atPath: path) {
                while let f = e.nextObject() as? String { bytes += ((try? FileManager.default.attributesOfItem(atPath: path + "/" + f)[.size]) as? Int64) ?? 0 }
            }
            try FileManager.default.removeItem(atPath: path)
            removed += 1
        }
        return (removed, bytes)
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        return e
    }()

    /// Lower-case hex of a digest's bytes.
    static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    public static func sha256(file: String) throws -> (String, Int64) {
        guard let h = FileHandle(forReadingAtPath: file) else { throw Failure("\(file): cannot read") }
        defer { try? h.close() }
        var hasher = SHA256()
        var total: Int64 = 0
        while true {
            let chunk = h.readData(ofLength: 1 << 20)
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
            total += Int64(chunk.count)
        }
        return ("sha256:" + hex(hasher.finalize()), total)
    }
}
