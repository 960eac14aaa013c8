import Foundation
import XCTest

/// Root filesystems for Linux guests: an ext4 image made by `mke2fs -d`
/// from a folder holding Debian's static busybox (/bin/busybox, /bin/sh),
/// `initScript` as /init, `files` (path inside the image: bytes), `copies`
/// (path inside the image: host file, mode kept) and `programs`: host
/// binaries copied to the same paths with every shared library `ldd`
/// names and the ELF interpreter, each at the path the binary asks for.
extension XCTestCase {
    func ext4Root(_ initScript: String, files: [String: Data] = [:], copies: [String: String] = [:],
                  programs: [String] = [], size: String = "64M") throws -> String {
        let fm = FileManager.default
        let root = fm.temporaryDirectory.appendingPathComponent("skiff-root-\(getpid())-\(name.hashValue & 0xffff)")
        try? fm.removeItem(at: root)
        for d in ["bin", "proc", "dev", "tmp"] {
            try fm.createDirectory(at: root.appendingPathComponent(d), withIntermediateDirectories: true)
        }
        func place(_ path: String) throws -> URL {
            let url = root.appendingPathComponent(path)
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            return url
        }
        /// Copies the file a path names (links followed), mode kept.
        func copy(_ host: String, to path: String) throws {
            let dest = try place(path)
            try? fm.removeItem(at: dest)
            let cp = try Harness.run("/bin/cp", ["-L", "--preserve=mode", host, dest.path])
            guard cp.status == 0 else { throw GuestRootError.copy(host, cp.stderr) }
        }
        try copy("/bin/busybox", to: "bin/busybox")
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("bin/sh").path, withDestinationPath: "busybox")
        for program in programs {
            try copy(program, to: program)
            for lib in try Self.sharedLibraries(of: program) { try copy(lib, to: lib) }
        }
        for (path, host) in copies { try copy(host, to: path) }
        for (path, data) in files { try data.write(to: try place(path)) }
        let initPath = root.appendingPathComponent("init").path
        try initScript.write(toFile: initPath, atomically: true, encoding: .utf8)
        XCTAssertEqual(chmod(initPath, 0o755), 0)
        let image = root.path + ".ext4"
        try? fm.removeItem(atPath: image)
        let mk = try Harness.run("/sbin/mke2fs", ["-q", "-t", "ext4", "-d", root.path, image, size])
        XCTAssertEqual(mk.status, 0, mk.stderr)
        try? fm.removeItem(at: root)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: image) }
        return image
    }

    /// The absolute paths `ldd` resolves for a dynamic binary: its
    /// libraries and its interpreter (none for a static one).
    static func sharedLibraries(of program: String) throws -> [String] {
        let r = try Harness.run("/usr/bin/ldd", [program])
        if r.stdout.contains("not a dynamic executable") || r.stderr.contains("not a dynamic executable") { return [] }
        guard r.status == 0 else { throw GuestRootError.ldd(program, r.stdout + r.stderr) }
        var paths: [String] = []
        for line in r.stdout.split(separator: "\n") {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if line.contains("not found") { throw GuestRootError.ldd(program, String(line)) }
            if let path = words.first(where: { $0.hasPrefix("/") }) { paths.append(String(path)) }
        }
        return paths
    }
}

enum GuestRootError: Error, CustomStringConvertible {
    case copy(String, String), ldd(String, String)
    var description: String {
        switch self {
        case let .copy(path, why): return "cannot copy \(path) into the guest root: \(why)"
        case let .ldd(path, why): return "ldd \(path): \(why)"
        }
    }
}
