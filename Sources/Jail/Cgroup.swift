import CJail
import Glibc

/// The VMM's own cgroup v2 (`skiff/<name>` under the unified hierarchy),
/// so that what it uses can be read and limited apart from other VMs.
/// Hosts whose cgroup v2 hierarchy is missing run the VMM without one.
struct Cgroup: Sendable {
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
}
