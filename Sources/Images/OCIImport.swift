import Crypto
import Foundation

/// `skiff image import PATH`: an OCI image layout (a folder, or a tar of
/// one) or a `docker save` tarball turned into a Skiff image: its layers
/// applied in order into a work root (whiteouts honoured), written as an
/// erofs root into the store, its config's entrypoint, command,
/// environment, user and working directory as the manifest's.
///
/// Everything in it is hostile. Paths that are absolute or climb out
/// (`..`), that go through a symbolic link, hard links to anything outside
/// the root or not yet extracted, device nodes and FIFOs are refused, each
/// by name; setuid and setgid bits are dropped (and counted); blobs are
/// checked against their digests, JSON against its expected shape. Nothing
/// is written outside the import's own work folder until the image is
/// complete, so a refused import leaves the store as it was.
public struct OCIImporter {
    public let store: ImageStore
    public var progress: (String) -> Void

    public init(store: ImageStore, progress: @escaping (String) -> Void) {
        self.store = store
        self.progress = progress
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// The most an image's files may hold in all, and its JSON documents.
    static let maxTotal: Int64 = 16 << 30
    static let maxJSON = 4 << 20

    struct Layers {
        var files: [String]
        var config: [String: Any]
        var tags: [String]
    }

    public func importImage(_ source: String, tag: ImageReference?) throws -> (digest: String, manifest: ImageManifest) {
        let work = store.temporary + "/import-\(getpid())"
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: work) }

        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source, isDirectory: &isDirectory) else { throw Failure("\(source): no such file or folder") }
        var layout = source
        if !isDirectory.boolValue {
            layout = work + "/layout"
            progress("unpacking \(source)")
            try unpackArchive(source, into: layout)
        }
        let layers = try findLayers(layout)
        progress("\(layers.files.count) layer\(layers.files.count == 1 ? "" : "s")")

        let root = work + "/root"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        var applier = LayerApplier(root: root)
        for (i, layer) in layers.files.enumerated() {
            let tar = try decompressed(layer, work: work, index: i)
            try applier.apply(tar, name: "layer \(i + 1)")
        }
        if applier.strippedModes > 0 { progress("dropped setuid/setgid from \(applier.strippedModes) file(s)") }

        let image = work + "/rootfs.erofs"
        let digestOfLayers = ImageStore.hex(SHA256.hash(data: Data(layers.files.joined(separator: "\n").utf8)))
        progress("writing the erofs root (lz4hc)")
        let mk = try ApplianceBuilder.run("/usr/bin/mkfs.erofs", ["-zlz4hc", "-T", ApplianceBuilder.epoch, "-U", ApplianceBuilder.uuid(fromHex: digestOfLayers),
                                                                 "--quiet", image, root], log: work + "/mkfs.log")
        guard mk == 0 else { throw Failure("mkfs.erofs failed:\n" + ApplianceBuilder.explain(work + "/mkfs.log")) }

        let c = layers.config["config"] as? [String: Any] ?? [:]
        let entrypoint = c["Entrypoint"] as? [String] ?? []
        let cmd = c["Cmd"] as? [String] ?? []
        var environment: [String: String] = [:]
        for e in c["Env"] as? [String] ?? [] {
            guard let eq = e.firstIndex(of: "=") else { continue }
            environment[String(e[..<eq])] = String(e[e.index(after: eq)...])
        }
        let ports = (c["ExposedPorts"] as? [String: Any] ?? [:]).keys.compactMap { Int($0.split(separator: "/").first ?? "") }.sorted()
        var user = (c["User"] as? String ?? "").split(separator: ":").first.map(String.init) ?? ""
        if user.isEmpty { user = "root" }
        let workdir = (c["WorkingDir"] as? String).flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "/"
        let command = entrypoint + cmd
        guard !command.isEmpty else { throw Failure("the image's config has no Entrypoint or Cmd: nothing to run") }

        let (rootfs, bytes) = try store.add(file: image)
        let manifest = ImageManifest(rootfs: rootfs, rootfsBytes: bytes, command: command, user: user, environment: environment,
                                     workdir: workdir, ports: ports, health: nil, volumes: [], cpus: 1, memoryMiB: 256,
                                     source: "import \((source as NSString).lastPathComponent)", packages: [])
        let digest = try store.add(manifest: manifest)
        let ref = tag ?? layers.tags.lazy.compactMap(Self.reference).first ?? ImageReference(name: "imported", tag: String(digest.dropFirst(7).prefix(12)))
        try store.tag(ref, digest)
        progress("\(ref) \(digest) (\(bytes >> 10) KiB)")
        return (digest, manifest)
    }

    public static func reference(_ text: String) -> ImageReference? {
        let last = text.split(separator: "/").last.map(String.init) ?? text
        let parts = last.split(separator: ":", maxSplits: 1).map(String.init)
        let ref = ImageReference(name: parts[0].lowercased(), tag: parts.count == 2 ? parts[1] : "latest")
        return ImageReference.isName(ref.name) && ImageReference.isTag(ref.tag) ? ref : nil
    }

    /// The outer archive (docker save, or a tarred OCI layout): regular
    /// files and folders only, each path checked like a layer's.
    func unpackArchive(_ path: String, into dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let reader = try TarReader(path: path, name: (path as NSString).lastPathComponent)
        var total: Int64 = 0
        while let e = try reader.next() {
            let parts = try LayerApplier.components(e.path, entry: e.path)
            if parts.isEmpty { continue }
            let target = dir + "/" + parts.joined(separator: "/")
            try LayerApplier.makeParents(root: dir, parts, entry: e.path)
            switch e.type {
            case UInt8(ascii: "5"):
                if mkdir(target, 0o700) != 0 && errno != EEXIST { throw Failure("\(e.path): \(String(cString: strerror(errno)))") }
            case UInt8(ascii: "0"), UInt8(ascii: "7"):
                total += e.size
                guard total <= Self.maxTotal else { throw Failure("the archive holds more than \(Self.maxTotal >> 30) GiB") }
                let fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw Failure("\(e.path.prefix(200)): \(String(cString: strerror(errno)))") }
                defer { close(fd) }
                try reader.copyData(e, to: fd)
            case UInt8(ascii: "2"), UInt8(ascii: "1"):
                continue // docker save links layers between image ids; Skiff reads layers by the manifest's paths
            default:
                throw Failure("\(e.path.prefix(200)): an entry of type '\(Character(UnicodeScalar(e.type)))' in an image archive")
            }
        }
    }

    /// The layers, bottom first, and the image's config: OCI (index.json,
    /// blobs by digest, each checked) or docker save (manifest.json).
    func findLayers(_ layout: String) throws -> Layers {
        if FileManager.default.fileExists(atPath: layout + "/index.json") {
            let index = try json(layout + "/index.json", "index.json")
            guard let manifests = index["manifests"] as? [[String: Any]], let first = manifests.first, let digest = first["digest"] as? String else {
                throw Failure("index.json lists no manifest")
            }
            let manifest = try json(try blob(layout, digest), "manifest \(digest.prefix(19))")
            guard let layers = manifest["layers"] as? [[String: Any]], let configDigest = (manifest["config"] as? [String: Any])?["digest"] as? String else {
                throw Failure("manifest \(digest.prefix(19)): no layers or config")
            }
            let files = try layers.map { l -> String in
                guard let d = l["digest"] as? String else { throw Failure("manifest \(digest.prefix(19)): a layer without a digest") }
                return try blob(layout, d)
            }
            let tags = ((first["annotations"] as? [String: String])?["org.opencontainers.image.ref.name"]).map { [$0] } ?? []
            return Layers(files: files, config: try json(try blob(layout, configDigest), "config"), tags: tags)
        }
        guard FileManager.default.fileExists(atPath: layout + "/manifest.json") else {
            throw Failure("neither an OCI layout (index.json) nor a docker save archive (manifest.json)")
        }
        let data = try readJSONData(layout + "/manifest.json", "manifest.json")
        guard let list = try JSONSerialization.jsonObject(with: data) as? [[String: Any]], let first = list.first,
              let configPath = first["Config"] as? String, let layerPaths = first["Layers"] as? [String] else {
            throw Failure("manifest.json: not a docker save manifest (Config, Layers)")
        }
        let files = try layerPaths.map { try member(layout, $0) }
        return Layers(files: files, config: try json(try member(layout, configPath), configPath), tags: first["RepoTags"] as? [String] ?? [])
    }

    /// A blob of an OCI layout, present and matching its digest.
    func blob(_ layout: String, _ digest: String) throws -> String {
        let hex = digest.dropFirst(7)
        guard digest.hasPrefix("sha256:"), hex.count == 64, hex.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw Failure("'\(digest.prefix(80))' is not a sha256 digest")
        }
        let path = try member(layout, "blobs/sha256/" + hex)
        let (actual, _) = try ImageStore.sha256(file: path)
        guard actual == digest else { throw Failure("blob \(digest.prefix(19)) does not match its digest (\(actual.prefix(19)))") }
        return path
    }

    /// A file named inside the layout: no escape, no link, present.
    func member(_ layout: String, _ relative: String) throws -> String {
        let parts = try LayerApplier.components(relative, entry: relative)
        guard !parts.isEmpty else { throw Failure("'\(relative.prefix(80))' names no file") }
        var path = layout
        for p in parts {
            path += "/" + p
            var st = stat()
            guard lstat(path, &st) == 0 else { throw Failure("\(relative.prefix(200)): missing from the image (the manifest points at a blob that is not there)") }
            guard st.st_mode & S_IFMT != S_IFLNK else { throw Failure("\(relative.prefix(200)): a symbolic link") }
        }
        return path
    }

    func readJSONData(_ path: String, _ what: String) throws -> Data {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        guard (attributes[.size] as? Int ?? 0) <= Self.maxJSON else { throw Failure("\(what): larger than \(Self.maxJSON >> 20) MiB") }
        return try Data(contentsOf: URL(fileURLWithPath: path))
    }

    func json(_ path: String, _ what: String) throws -> [String: Any] {
        let data = try readJSONData(path, what)
        guard let o = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw Failure("\(what): not a JSON object") }
        return o
    }

    /// A layer as a plain tar: gzip and zstd are undone by the host's tools.
    func decompressed(_ path: String, work: String, index: Int) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure("layer \(index + 1): \(String(cString: strerror(errno)))") }
        var magic = [UInt8](repeating: 0, count: 4)
        let n = read(fd, &magic, 4)
        close(fd)
        let tool: String
        if n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b { tool = "/usr/bin/gzip" }
        else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] { tool = "/usr/bin/zstd" }
        else { return path }
        let out = work + "/layer-\(index).tar"
        let status = try ApplianceBuilder.run("/bin/sh", ["-c", "\"$0\" -dc < \"$1\" > \"$2\"", tool, path, out], log: work + "/decompress.log")
        guard status == 0 else { throw Failure("layer \(index + 1): does not decompress:\n" + ApplianceBuilder.explain(work + "/decompress.log")) }
        return out
    }
}

/// Applies layers to a root, refusing what could write outside it.
struct LayerApplier {
    let root: String
    var strippedModes = 0
    var total: Int64 = 0

    typealias Failure = OCIImporter.Failure

    /// A path's components, relative to the root: absolute paths and `..`
    /// are refused (no layer of a well-made image has them).
    static func components(_ path: String, entry: String) throws -> [String] {
        guard !path.hasPrefix("/") else { throw Failure("\(entry.prefix(200)): an absolute path in the image") }
        let parts = path.split(separator: "/").map(String.init).filter { $0 != "." }
        guard !parts.contains("..") else { throw Failure("\(entry.prefix(200)): a path that climbs out of the root (..)") }
        return parts
    }

    /// Every folder above an entry: made if missing, never a symbolic link
    /// (that would carry the write elsewhere) nor anything but a folder.
    static func makeParents(root: String, _ parts: [String], entry: String) throws {
        var path = root
        for p in parts.dropLast() {
            path += "/" + p
            var st = stat()
            if lstat(path, &st) != 0 {
                guard mkdir(path, 0o755) == 0 else { throw Failure("\(entry.prefix(200)): \(String(cString: strerror(errno)))") }
                continue
            }
            switch st.st_mode & S_IFMT {
            case S_IFDIR: continue
            case S_IFLNK: throw Failure("\(entry.prefix(200)): a path through a symbolic link (\(path.dropFirst(root.count + 1)))")
            default: throw Failure("\(entry.prefix(200)): \(path.dropFirst(root.count + 1)) is not a folder")
            }
        }
    }

    static func remove(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR { try? FileManager.default.removeItem(atPath: path) } else { unlink(path) }
    }

    mutating func apply(_ tar: String, name: String) throws {
        let reader: TarReader
        do { reader = try TarReader(path: tar, name: name) } catch { throw Failure("\(error)") }
        while let e = try reader.next() {
            let parts = try Self.components(e.path, entry: e.path)
            if parts.isEmpty { continue } // the root itself
            try Self.makeParents(root: root, parts, entry: e.path)
            let parent = root + "/" + parts.dropLast().joined(separator: "/")
            let base = parts.last!
            let target = parent + "/" + base
            // Whiteouts (OCI image spec, layer changesets).
            if base == ".wh..wh..opq" {
                for child in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] { Self.remove(parent + "/" + child) }
                continue
            }
            if base.hasPrefix(".wh.") {
                let hidden = String(base.dropFirst(4))
                guard !hidden.isEmpty, hidden != "..", hidden != "." else { throw Failure("\(e.path.prefix(200)): a whiteout of nothing") }
                Self.remove(parent + "/" + hidden)
                continue
            }
            var mode = e.mode & 0o1777
            if e.mode & 0o6000 != 0 { strippedModes += 1 } // setuid/setgid: neutralised
            switch e.type {
            case UInt8(ascii: "5"):
                var st = stat()
                if lstat(target, &st) == 0 && st.st_mode & S_IFMT != S_IFDIR { Self.remove(target) }
                if lstat(target, &st) != 0 && mkdir(target, 0o700) != 0 { throw Failure("\(e.path.prefix(200)): \(String(cString: strerror(errno)))") }
                if mode == 0 { mode = 0o755 }
                chmod(target, mode_t(mode))
                lchown(target, e.uid, e.gid)
            case UInt8(ascii: "0"), UInt8(ascii: "7"):
                total += e.size
                guard total <= OCIImporter.maxTotal else { throw Failure("the image's files hold more than \(OCIImporter.maxTotal >> 30) GiB") }
                Self.remove(target)
                let fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw Failure("\(e.path.prefix(200)): \(String(cString: strerror(errno)))") }
                defer { close(fd) }
                try reader.copyData(e, to: fd)
                fchown(fd, e.uid, e.gid)
                fchmod(fd, mode_t(mode & 0o777))
            case UInt8(ascii: "2"):
                // The target is the guest's business: nothing here follows it.
                guard !e.link.isEmpty else { throw Failure("\(e.path.prefix(200)): a symbolic link to nothing") }
                Self.remove(target)
                guard symlink(e.link, target) == 0 else { throw Failure("\(e.path.prefix(200)): \(String(cString: strerror(errno)))") }
                lchown(target, e.uid, e.gid)
            case UInt8(ascii: "1"):
                let linkParts = try Self.components(e.link, entry: e.path + " (its hard link's target)")
                guard !linkParts.isEmpty else { throw Failure("\(e.path.prefix(200)): a hard link to the root") }
                try Self.makeParents(root: root, linkParts, entry: e.path + " (its hard link's target)")
                let source = root + "/" + linkParts.joined(separator: "/")
                var st = stat()
                guard lstat(source, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
                    throw Failure("\(e.path.prefix(200)): a hard link to \(e.link.prefix(200)), which is not a file already in the image")
                }
                Self.remove(target)
                guard link(source, target) == 0 else { throw Failure("\(e.path.prefix(200)): \(String(cString: strerror(errno)))") }
            case UInt8(ascii: "3"), UInt8(ascii: "4"):
                throw Failure("\(e.path.prefix(200)): a device node (images get /dev from the guest's kernel)")
            case UInt8(ascii: "6"):
                throw Failure("\(e.path.prefix(200)): a FIFO")
            default:
                throw Failure("\(e.path.prefix(200)): an entry of type '\(Character(UnicodeScalar(e.type)))' Skiff does not take")
            }
        }
    }
}
