import Glibc
import HostTools

/// The default guest's root: busybox (as Debian ships it, statically
/// linked, unmodified) with a link per applet, and the guest agent
/// (guest/agent.c) as /init.
///
/// The agent, PID 1, mounts the usual filesystems, prints a banner and runs
/// what the kernel command line asks for (Linux hands unknown `name=value`
/// parameters to init as environment variables): `skiff_run="COMMAND"`, by
/// busybox's sh, after which it prints `skiff: exit N` and resets the VM;
/// an appliance image (`skiff_app`, ImageRun) the same way; otherwise a
/// shell on the console, resetting when the shell ends. It answers the host
/// on vsock. No shell runs before the command: each process costs most of
/// a second of emulated kernel mode on PVM hosts.
public enum Initramfs {
    public static func build(busybox: [UInt8], applets: [String], agent: [UInt8]) throws -> [UInt8] {
        var cpio = CpioWriter()
        for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc"] {
            cpio.directory(d)
        }
        cpio.characterDevice("dev/console", major: 5, minor: 1)
        cpio.characterDevice("dev/null", major: 1, minor: 3, permissions: 0o666)
        cpio.file("bin/busybox", busybox, permissions: 0o755)
        for applet in applets where applet != "busybox" {
            // busybox --list names applets only; put each in bin (sh finds all via PATH).
            cpio.symlink("bin/" + applet, to: "busybox")
        }
        cpio.file("init", agent, permissions: 0o755)
        cpio.file("etc/passwd", Array("root:x:0:0:root:/root:/bin/sh\n".utf8))
        return cpio.finish()
    }

    /// The applets the host's busybox offers.
    public static func applets(_ busybox: String) throws -> [String] {
        try Subprocess.run([busybox, "--list"], capture: true)
            .split(separator: "\n").map(String.init)
            .filter { !$0.isEmpty && !$0.contains("/") }
    }

    /// Whether `path` is a statically linked busybox (no program interpreter).
    public static func isStaticBusybox(_ path: String) -> Bool {
        guard let bytes = try? FileIO.read(path), bytes.starts(with: [0x7f, 0x45, 0x4c, 0x46]) else { return false }
        return !bytes.prefix(4096).withUnsafeBytes { raw in
            String(decoding: raw, as: UTF8.self).contains("ld-linux")
        }
    }

    /// FNV-1a, 64 bits: names the cached image by its content.
    public static func digest(_ bytes: [UInt8]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }
}

/// File helpers for the appliance builders.
public enum FileIO {
    public static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Subprocess.Failure(description: "\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw Subprocess.Failure(description: "\(path): \(String(cString: strerror(errno)))") }
            if n == 0 { return out }
            out += buf[0..<n]
        }
    }

    /// Writes atomically: a temporary file renamed into place.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let dir = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !dir.isEmpty { try Subprocess.run(["mkdir", "-p", dir]) }
        let tmp = path + ".tmp\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Subprocess.Failure(description: "\(tmp): \(String(cString: strerror(errno)))") }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { close(fd); unlink(tmp); throw Subprocess.Failure(description: "\(tmp): write failed") }
            done += n
        }
        close(fd)
        guard rename(tmp, path) == 0 else { throw Subprocess.Failure(description: "\(path): \(String(cString: strerror(errno)))") }
    }

    public static func progress(_ message: String) {
        var line = Array("[skiff] \(message)\n".utf8)
        _ = line.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
