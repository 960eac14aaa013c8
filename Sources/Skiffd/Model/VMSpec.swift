/// How to build one VM: the document skiffd stores (JSON) and turns into
/// a `skiff run` or `skiff restore` command line.
struct VMSpec: Codable, Sendable, Equatable {
    struct Disk: Codable, Sendable, Equatable {
        var path: String
        var readOnly: Bool
        /// A changed-block map (`PATH.cbt`) for incremental and live
        /// backups; nil (rows from before it) means the default, on for a
        /// writable disk.
        var changeTracking: Bool? = nil

        /// A live restore's filler (`skiff backup restore --live`), which
        /// serves the disk while it arrives. Kept after: once the disk is
        /// whole its flags file is gone, and the VMM takes it as a plain disk.
        var fill: String? = nil

        var tracked: Bool { !readOnly && changeTracking != false }
        /// `PATH[,ro|,cbt][,fill=SOCKET]` for `--disk`.
        var option: String { path + (readOnly ? ",ro" : tracked ? ",cbt" : "") + (fill.map { ",fill=" + $0 } ?? "") }
    }
    struct Resources: Codable, Sendable, Equatable {
        /// Relative CPU weight (cgroup v2 cpu.weight, v1 cpu.shares scaled); 100 is the default.
        var cpuShares: Int?
        /// At most this many host CPUs (cpu.max / cfs_quota).
        var cpuLimit: Double?
        /// Host CPUs set aside for this VM: admission only.
        var cpuReservation: Double?
        var memoryLimitMiB: Int64?
        /// RAM set aside: admission, and memory.min (v2) or the soft limit (v1).
        var memoryReservationMiB: Int64?
    }

    var kernel: String?
    var initrd: String?
    var cmdline: String?
    var cpus: Int
    var memoryMiB: Int64
    var disks: [Disk]
    /// Restore this snapshot directory instead of booting.
    var snapshot: String?
    /// A clone's number (`skiff restore --clone-index`): its own identity.
    var cloneIndex: Int?
    var resources: Resources

    /// The memory the host must hold for it at most: the limit, or what the guest was given plus the VMM's own.
    var memoryCeilingMiB: Int64 { resources.memoryLimitMiB ?? memoryMiB + 64 }

    /// `skiff run ...` or `skiff restore ...` for this VM, with the files skiffd keeps in `directory`.
    func arguments(directory: VMDirectory, cgroup: String?) -> [String] {
        var a: [String]
        if let snapshot {
            a = ["restore", snapshot]
            for d in disks { a += ["--disk", d.option] }
            if let cloneIndex { a += ["--clone-index", String(cloneIndex)] }
        } else {
            a = ["run", "--cpus", String(cpus), "--memory", String(memoryMiB)]
            if let kernel { a += ["--kernel", kernel] }
            if let initrd { a += ["--initrd", initrd] }
            if let cmdline { a += ["--cmdline", cmdline] }
            for d in disks { a += ["--disk", d.option] }
        }
        a += ["--control-socket", directory.controlSocket, "--exit-file", directory.exitFile]
        if let cgroup { a += ["--cgroup", cgroup] }
        return a
    }
}

/// The VM's lifecycle as skiffd observes it: created -> starting ->
/// running <-> paused -> stopping -> stopped; `exited` when the VM ended
/// without being asked to (the guest powered off, crashed or was killed).
enum VMState: String, Codable, Sendable, CaseIterable {
    case created, starting, running, paused, stopping, stopped, exited

    /// A process should exist.
    var isActive: Bool { self == .starting || self == .running || self == .paused || self == .stopping }
}

enum DesiredState: String, Codable, Sendable {
    case running, paused, stopped
}

enum RestartPolicy: String, Codable, Sendable {
    case no, onFailure = "on-failure", always
}

/// Where one VM's files live: `<state>/vms/<id>/`.
struct VMDirectory: Sendable {
    let path: String
    var controlSocket: String { path + "/control.sock" }
    /// A FIFO: the VM's console input (`attach` writes to it).
    var consoleInput: String { path + "/console.in" }
    var exitFile: String { path + "/exit" }
    var console: String { path + "/console.log" }
    var snapshots: String { path + "/snapshots" }
    /// Backup jobs' files, and a live backup's copy-before-write files.
    var backups: String { path + "/backups" }
    func snapshot(_ name: String) -> String { snapshots + "/" + name }
}
