import CJail
import Glibc

/// The VMM's own cgroup v2 (`skiff/<name>` under the unified hierarchy),
/// so that what it uses can be read and limited apart from other VMs.
/// Hosts whose cgroup v2 hierarchy is missing run the VMM without one.
public struct Cgroup: Sendable {
    /// Where cgroup v2 may be mounted: alone, or beside v1 (hybrid).
    static let mountPoints = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]

    let path: String

    static func create(name: String) -> Cgroup? {
        for mount in mountPoints {
            guard cjail_is_cgroup2(mount) != 0 else { continue }
            let parent = mount + "/skiff"
            guard mkdir(parent, 0o755) == 0 || errno == EEXIST else { return nil }
            let path = parent + "/" + name
            guard mkdir(path, 0o755) == 0 || errno == EEXIST else { return nil }
            return Cgroup(path: path)
        }
        return nil
    }

    /// Moves the calling process into it.
    func join() -> Bool {
        let fd = open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return write(fd, "0\n", 2) == 2
    }

    /// Removes it once every process in it has gone.
    func remove() { rmdir(path) }

    /// A name skiffd may give (`skiff run --cgroup NAME`): one path
    /// component, nothing a path could escape with.
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 128, bytes[0] != UInt8(ascii: ".") else { return false }
        return bytes.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == 0x2d || b == 0x5f || b == 0x2e
        }
    }

    /// cgroup v1 hierarchies (a hybrid host's controllers) whose
    /// `skiff/<name>` skiffd made: the caller joins each, so that the VM's
    /// every process is counted and limited there (v2 is the jail's own).
    public static let v1Controllers = ["cpu", "cpuacct", "memory", "blkio"]

    public static func joinV1(name: String) -> Bool {
        for controller in v1Controllers {
            let cgroup = Cgroup(path: "/sys/fs/cgroup/\(controller)/skiff/\(name)")
            var st = stat()
            guard stat(cgroup.path, &st) == 0 else { continue }
            guard cgroup.join() else { return false }
        }
        return true
    }
}
