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
        if let bin = Executable.directory {
            let installed = bin + "/../share/skiff/kernel"
            if access(installed + "/build.sh", R_OK) == 0 { return installed }
        }
        let file = #filePath // .../Sources/Appliance/DefaultGuest.swift
        var parts = file.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/") + "/kernel"
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
        let image = try Initramfs.build(busybox: binary, applets: Initramfs.applets(busybox))
        let path = cacheDirectory + "/initramfs-\(Initramfs.digest(image)).cpio"
        if access(path, R_OK) != 0 {
            FileIO.progress("writing initramfs \(path) (\(image.count >> 10) KiB)")
            try FileIO.write(image, to: path)
        }
        return path
    }
}
