import Glibc
import HostTools

/// The default guest's root: busybox (as Debian ships it, statically
/// linked, unmodified) with a link per applet, and an /init script.
///
/// /init mounts the usual filesystems and prints a banner, then execs the
/// guest agent (guest/agent.c) as PID 1 with what to run: if the kernel
/// command line set `skiff_run="COMMAND"` (Linux hands unknown `name=value`
/// parameters to init as environment variables), that command, after which
/// the agent prints `skiff: exit N` and reboots; an appliance image's
/// command (`skiff_app`) the same way; otherwise a shell on the console,
/// rebooting when the shell ends. The agent answers the host on vsock.
public enum Initramfs {
    public static let initScript = """
    #!/bin/sh
    # An appliance image (skiff run IMAGE): its erofs root on /dev/vda under
    # a tmpfs overlay, the command `skiff_app` names run in it as its user,
    # with busybox bound in at /.skiff/sh and /.skiff/busybox for the last steps.
    run_image() {
        echo "$skiff_app" | base64 -d > /app.sh || { echo "skiff: exit 125"; return; }
        unset skiff_app
        . /app.sh
        mkdir -p /image /rw /newroot
        if ! mount -t erofs -o ro /dev/vda /image; then echo "skiff: the image's root (/dev/vda) does not mount"; echo "skiff: exit 125"; return; fi
        mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work
        mount -t overlay overlay -o lowerdir=/image,upperdir=/rw/upper,workdir=/rw/work /newroot
        for d in proc sys dev tmp .skiff; do mkdir -p /newroot/$d; done
        mount -t proc proc /newroot/proc
        mount -t sysfs sysfs /newroot/sys
        mount -t devtmpfs devtmpfs /newroot/dev
        mount -t tmpfs tmpfs /newroot/tmp
        for b in sh busybox; do touch /newroot/.skiff/$b && mount --bind /bin/busybox /newroot/.skiff/$b; done
        ip link set lo up 2>/dev/null
        # Skiff's network (skiff run as root): the address, route and name
        # servers the launcher leased for this VM.
        if [ -n "$skiff_ip" ]; then
            { ip link set eth0 up && ip addr add "$skiff_ip" dev eth0 && ip route add default via "$skiff_gw"; } \
                || echo "skiff: eth0 did not take $skiff_ip"
            rm -f /newroot/etc/resolv.conf
            for s in $skiff_dns; do echo "nameserver $s"; done > /newroot/etc/resolv.conf
        fi
        case "$skiff_user" in
            *[!0-9]*) name=$skiff_user ;;
            *) name=$(awk -F: -v u="$skiff_user" '$3 == u { print $1; exit }' /newroot/etc/passwd) ;;
        esac
        if ! grep -q "^$name:" /newroot/etc/passwd 2>/dev/null; then echo "skiff: user $skiff_user is not in the image's /etc/passwd"; echo "skiff: exit 125"; return; fi
        export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/
        run='cd "$0" || exit 125; exec "$@"'
        # The agent (PID 1 from here) runs the command and answers the host.
        if [ "$name" = root ]; then
            exec /bin/skiff-agent /newroot /bin/busybox chroot /newroot /.skiff/sh -c "$run" "$skiff_workdir" "$@"
        else
            # busybox's su as the user (environment kept: -p), its shell the
            # bound busybox; after --, the command's own options are not su's.
            exec /bin/skiff-agent /newroot /bin/busybox chroot /newroot /.skiff/busybox su -p -s /.skiff/sh -c "$run" -- "$name" "$skiff_workdir" "$@"
        fi
    }
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mount -t tmpfs tmpfs /tmp
    read -r _ _ kernel _ < /proc/version
    echo "skiff guest: Linux $kernel, $(grep -c ^processor /proc/cpuinfo) CPU(s), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
    if [ -n "$skiff_app" ]; then
        run_image
    elif [ -n "$skiff_run" ]; then
        exec /bin/skiff-agent / /bin/sh -c "$skiff_run"
    else
        exec /bin/skiff-agent --quiet / /bin/busybox setsid cttyhack sh
    fi
    reboot -f

    """

    public static func build(busybox: [UInt8], applets: [String], agent: [UInt8]) throws -> [UInt8] {
        var cpio = CpioWriter()
        for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc"] {
            cpio.directory(d)
        }
        cpio.characterDevice("dev/console", major: 5, minor: 1)
        cpio.characterDevice("dev/null", major: 1, minor: 3, permissions: 0o666)
        cpio.file("bin/busybox", busybox, permissions: 0o755)
        cpio.file("bin/skiff-agent", agent, permissions: 0o755)
        for applet in applets where applet != "busybox" {
            // busybox --list names applets only; put each in bin (sh finds all via PATH).
            cpio.symlink("bin/" + applet, to: "busybox")
        }
        cpio.file("init", Array(initScript.utf8), permissions: 0o755)
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
