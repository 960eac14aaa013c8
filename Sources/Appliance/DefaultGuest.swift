import Glibc
import HostTools

/// Skiff's default guest: its own kernel (Debian's linux-source-6.1 with
/// the config fragment and patches in `kernel/`) and a busybox initramfs.
/// Both are built on first use and cached.
public enum DefaultGuest {
    /// Where built artefacts live: $SKIFF_CACHE, else /var/cache/skiff.
    public static var cacheDirectory: String {
        if let c = getenv("SKIFF_CACHE") { return String(cString: c) }
        return "/var/cache/skiff"
    }

    /// The kernel's build inputs (the repository's `kernel/` folder):
    /// $SKIFF_KERNEL_DIR; else an installed package's, `../share/skiff/kernel`
    /// from this binary (/usr/bin/skiff: /usr/share/skiff/kernel); else the
    /// source tree this binary was built from.
    public static var kernelSourceDirectory: String {
        if let d = getenv("SKIFF_KERNEL_DIR") { return String(cString: d) }
        return sourceDirectory("kernel", holding: "build.sh")
    }

    /// A folder of the repository's (`kernel`, `guest`): an installed
    /// package's `../share/skiff/NAME` from this binary, else the source
    /// tree this binary was built from.
    static func sourceDirectory(_ name: String, holding file: String) -> String {
        if let bin = Executable.directory {
            let installed = bin + "/../share/skiff/" + name
            if access(installed + "/" + file, R_OK) == 0 { return installed }
        }
        let source = #filePath // .../Sources/Appliance/DefaultGuest.swift
        var parts = source.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/") + "/" + name
    }

    /// The guest agent (guest/agent.c, PID 1 of every default guest),
    /// compiled static on first use and cached by its source's digest.
    public static func agentBinary() throws -> [UInt8] {
        let source = sourceDirectory("guest", holding: "agent.c") + "/agent.c"
        let text = try FileIO.read(source)
        let path = cacheDirectory + "/skiff-agent-\(Initramfs.digest(text))"
        if access(path, R_OK) != 0 {
            FileIO.progress("compiling the guest agent \(path)")
            try Subprocess.run(["mkdir", "-p", cacheDirectory])
            // A temporary of this process's own: launchers may compile it at once.
            let tmp = path + ".tmp\(getpid())"
            try Subprocess.run(["cc", "-static", "-Os", "-s", "-Wall", "-o", tmp, source])
            guard rename(tmp, path) == 0 else { throw Subprocess.Failure(description: "\(path): \(String(cString: strerror(errno)))") }
        }
        return try FileIO.read(path)
    }

    /// The built kernel's folder (vmlinux, bzImage, .config), building it
    /// if it is missing. Progress goes to stderr.
    public static func kernelDirectory() throws -> String {
        let script = kernelSourceDirectory + "/build.sh"
        guard access(script, R_OK) == 0 else {
            throw Subprocess.Failure(description: "kernel build script \(script) not found (set SKIFF_KERNEL_DIR)")
        }
        let out = try Subprocess.run(["bash", script, cacheDirectory], capture: true)
        guard let dir = out.split(separator: "\n").last.map(String.init), !dir.isEmpty else {
            throw Subprocess.Failure(description: "kernel build printed no path")
        }
        return dir
    }

    public static func kernelPath() throws -> String { try kernelDirectory() + "/vmlinux" }

    /// The default initramfs, built from the host's busybox-static.
    public static func initramfsPath() throws -> String {
        let busybox = "/bin/busybox"
        if !Initramfs.isStaticBusybox(busybox) {
            FileIO.progress("installing busybox-static")
            try Subprocess.run(["sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2 || (apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2)"])
        }
        let binary = try FileIO.read(busybox)
        let image = try Initramfs.build(busybox: binary, applets: Initramfs.applets(busybox), agent: agentBinary())
        let path = cacheDirectory + "/initramfs-\(Initramfs.digest(image)).cpio"
        if access(path, R_OK) != 0 {
            FileIO.progress("writing initramfs \(path) (\(image.count >> 10) KiB)")
            try FileIO.write(image, to: path)
        }
        return path
    }
}
