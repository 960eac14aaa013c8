import Crypto
import Foundation

/// `skiff appliance build SPEC`: Debian's packages resolved and installed
/// by mmdebstrap (apt with its own state in the work root, never the
/// host's), the root trimmed to what the application uses, written as a
/// compressed read-only erofs image into the store.
///
/// Reproducible: SOURCE_DATE_EPOCH is fixed (mmdebstrap then clamps every
/// time it writes), what holds build-time state (apt's and dpkg's
/// databases, logs, caches, machine-id) is trimmed, and mkfs.erofs gets a
/// fixed time and a UUID derived from the spec, so the same spec and
/// package versions give the same digest.
public struct ApplianceBuilder {
    public let store: ImageStore
    public var progress: (String) -> Void
    /// Debian suite and mirror (the host's when nil: mmdebstrap's default
    /// for a stable suite adds -updates and -security).
    public var suite = "bookworm"

    public init(store: ImageStore, progress: @escaping (String) -> Void) {
        self.store = store
        self.progress = progress
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// The fixed time of every build: 2023-06-10, bookworm's release.
    static let epoch = "1686355200"

    /// Builds and tags `name:version`; returns the manifest's digest.
    public func build(_ spec: ApplianceSpec, specText: String) throws -> (digest: String, manifest: ImageManifest) {
        let specDigest = ImageStore.hex(SHA256.hash(data: Data(specText.utf8)))
        let work = store.temporary + "/build-\(spec.name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer {
            // A failed mmdebstrap can leave its hooks' bind mounts (a local
            // .deb's) in the root: undone first, or the folder stays.
            Self.unmountAll(under: work)
            try? FileManager.default.removeItem(atPath: work)
        }
        let root = work + "/root"

        // 1. Packages. `essential` is dpkg's own minimum (coreutils, a
        // shell, libc); maintainer scripts run in the work root.
        progress("resolving and installing \(spec.packages.isEmpty ? "Debian's essential set" : spec.packages.joined(separator: " ")) (mmdebstrap, \(suite))")
        // Not --quiet: apt's reasons (a conflict, an unmet dependency, a
        // failing maintainer script) go to its standard output.
        var args = ["--variant=essential", "--mode=root", "--aptopt=Acquire::Check-Valid-Until \"false\"",
                    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*"]
        let names = spec.packages.filter { !ApplianceSpec.isLocalPackage($0) }, files = spec.packages.filter(ApplianceSpec.isLocalPackage)
        if !names.isEmpty { args.append("--include=" + names.joined(separator: ",")) }
        // A .deb file: its own --include (a path is not split), and mmdebstrap's
        // hook that makes it visible to dpkg inside the root.
        args += files.map { "--include=" + $0 }
        if !files.isEmpty { args.append("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount") }
        args += [suite, root]
        let log = work + "/mmdebstrap.log"
        let status = try Self.run("/usr/bin/mmdebstrap", args, log: log, environment: ["SOURCE_DATE_EPOCH": Self.epoch])
        guard status == 0 else {
            throw Failure("installing the packages failed (mmdebstrap exit \(status)):\n" + Self.explain(log))
        }

        // 2. What was installed, before the package manager goes.
        let packages = try Self.installedPackages(root)

        // 3. The spec's files, then the trimming.
        for (path, content) in spec.files.sorted(by: { $0.key < $1.key }) {
            let dest = root + path
            try Self.refuseEscape(root: root, path: path)
            try FileManager.default.createDirectory(atPath: (dest as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try? FileManager.default.removeItem(atPath: dest)
            try Data(content.utf8).write(to: URL(fileURLWithPath: dest))
        }
        let before = Self.treeBytes(root)
        for v in spec.volumes { try FileManager.default.createDirectory(atPath: root + v, withIntermediateDirectories: true) }
        // The traced run first: it needs the package manager's users and
        // alternatives links in place, and curl comes from the host.
        let traced = TracedTrim(root: root, work: work, spec: spec, progress: progress)
        let touched = try traced.trace()
        try Trim.packageManager(root, keep: spec.keep + spec.volumes)
        let afterPackages = Self.treeBytes(root)
        let (kept, removed) = try traced.apply(touched)
        for v in spec.volumes { try FileManager.default.createDirectory(atPath: root + v, withIntermediateDirectories: true) }
        progress("trimmed \(before >> 20) MiB to \(afterPackages >> 20) MiB (docs, locales, the package manager), then to \(Self.treeBytes(root) >> 20) MiB: "
                 + "\(kept) files kept (\(touched.count) paths the run touched, and what the spec keeps), \(removed) removed")

        // 4. The compressed read-only root.
        let image = work + "/rootfs.erofs"
        let uuid = Self.uuid(fromHex: specDigest)
        progress("writing the erofs root (lz4hc)")
        let mk = try Self.run("/usr/bin/mkfs.erofs", ["-zlz4hc", "-T", Self.epoch, "-U", uuid, "--quiet", image, root], log: work + "/mkfs.log")
        guard mk == 0 else { throw Failure("mkfs.erofs failed:\n" + Self.explain(work + "/mkfs.log")) }
        let (rootfs, bytes) = try store.add(file: image)

        let manifest = ImageManifest(rootfs: rootfs, rootfsBytes: bytes, command: spec.command, user: spec.user, environment: spec.environment,
                                     workdir: spec.workdir, ports: spec.ports, health: spec.health, volumes: spec.volumes.sorted(),
                                     cpus: spec.cpus, memoryMiB: spec.memory, source: "appliance sha256:\(specDigest)", packages: packages)
        let digest = try store.add(manifest: manifest)
        // name:VERSION, and name:latest for the newest build (`skiff run nginx`).
        try store.tag(ImageReference(name: spec.name, tag: spec.version), digest)
        if spec.version != "latest" { try store.tag(ImageReference(name: spec.name, tag: "latest"), digest) }
        progress("\(spec.name):\(spec.version) \(digest) (\(bytes >> 10) KiB)")
        return (digest, manifest)
    }

    static func installedPackages(_ root: String) throws -> [String] {
        guard let status = try? String(contentsOfFile: root + "/var/lib/dpkg/status", encoding: .utf8) else { return [] }
        var out: [String] = []
        for stanza in status.components(separatedBy: "\n\n") {
            var name: String?, version: String?, installed = false
            for line in stanza.split(separator: "\n") {
                if line.hasPrefix("Package: ") { name = String(line.dropFirst(9)) }
                if line.hasPrefix("Version: ") { version = String(line.dropFirst(9)) }
                if line.hasPrefix("Status: "), line.hasSuffix(" installed") { installed = true }
            }
            if let name, let version, installed { out.append("\(name)=\(version)") }
        }
        return out.sorted()
    }

    /// A spec's file may not land outside the root through a symlink the packages made.
    static func refuseEscape(root: String, path: String) throws {
        var current = root
        for part in path.split(separator: "/").dropLast() {
            current += "/" + part
            var st = stat()
            if lstat(current, &st) == 0, st.st_mode & S_IFMT == S_IFLNK {
                throw Failure("files \(path): \(current.dropFirst(root.count)) is a symbolic link in the image; name the real path")
            }
        }
    }

    static func treeBytes(_ root: String) -> Int64 {
        var total: Int64 = 0
        guard let e = FileManager.default.enumerator(atPath: root) else { return 0 }
        while let p = e.nextObject() as? String {
            var st = stat()
            if lstat(root + "/" + p, &st) == 0, st.st_mode & S_IFMT == S_IFREG { total += Int64(st.st_size) }
        }
        return total
    }

    /// A UUID (8-4-4-4-12) from the first 32 hex digits of a digest.
    static func uuid(fromHex h: String) -> String {
        let c = Array(h.prefix(32))
        return [String(c[0..<8]), String(c[8..<12]), String(c[12..<16]), String(c[16..<20]), String(c[20..<32])].joined(separator: "-")
    }

    /// The lines of a log that say what failed (apt's and dpkg's E: lines), else its end.
    /// Detaches every mount at or below `path`, deepest first.
    static func unmountAll(under path: String) {
        guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return }
        let points = table.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            // mountinfo escapes space, tab, newline and backslash as \ooo.
            var point = String(fields[4])
            for (code, c) in [("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")] { point = point.replacingOccurrences(of: code, with: c) }
            return point == path || point.hasPrefix(path + "/") ? point : nil
        }
        for point in points.sorted(by: { $0.count > $1.count }) { _ = umount2(point, Int32(MNT_DETACH)) }
    }

    static func explain(_ log: String) -> String {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let lines = text.split(separator: "\n")
        let errors = lines.filter { $0.hasPrefix("E:") || $0.contains("rror") || $0.contains("nable to locate") || $0.contains("onflicts") || $0.contains("Depends:") }
        return (errors.isEmpty ? lines.suffix(15) : errors.suffix(15)).joined(separator: "\n")
    }

    static func run(_ executable: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let out = FileHandle(forWritingAtPath: log)
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { throw Failure("\(executable): \(error) (scripts/deps installs mmdebstrap and erofs-utils)") }
        p.waitUntilExit()
        try? out?.close()
        return p.terminationStatus
    }
}

/// What an appliance does not need.
enum Trim {
    /// Docs, locales, the package manager and its state, caches and logs:
    /// nothing the application runs, and what would make two builds differ.
    static func packageManager(_ root: String, keep: [String]) throws {
        let paths = [
            "/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale", "/usr/share/lintian", "/usr/share/bash-completion",
            "/usr/share/bug", "/usr/share/common-licenses", "/usr/share/zsh", "/usr/share/menu", "/usr/share/pixmaps",
            "/var/lib/apt", "/var/cache", "/var/log", "/var/lib/dpkg", "/etc/apt", "/usr/lib/apt", "/usr/share/dpkg", "/etc/dpkg",
            "/usr/lib/dpkg", "/usr/share/debconf", "/var/lib/debconf", "/usr/share/perl5/Debconf", "/usr/share/perl5/Debian",
            "/etc/machine-id", "/var/lib/dbus/machine-id", "/var/lib/systemd",
            "/usr/bin/apt", "/usr/bin/apt-get", "/usr/bin/apt-cache", "/usr/bin/apt-config", "/usr/bin/apt-mark", "/usr/bin/apt-key",
            "/usr/bin/dpkg", "/usr/bin/dpkg-deb", "/usr/bin/dpkg-query", "/usr/bin/dpkg-split", "/usr/bin/dpkg-divert",
            "/usr/bin/dpkg-statoverride", "/usr/bin/dpkg-trigger", "/usr/bin/dpkg-maintscript-helper", "/usr/bin/dpkg-realpath",
        ]
        for p in paths where !keep.contains(where: { p == $0 || p.hasPrefix($0 + "/") || $0.hasPrefix(p + "/") }) {
            try? FileManager.default.removeItem(atPath: root + p)
        }
        for d in ["/var/cache", "/var/log", "/tmp", "/run"] {
            try? FileManager.default.createDirectory(atPath: root + d, withIntermediateDirectories: true)
        }
    }
}
