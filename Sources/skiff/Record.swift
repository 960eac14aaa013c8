import Glibc
import Machine
import VMM

/// `skiff record DIR [run options]` and `skiff replay DIR [--disk PATH]...`: a deterministic
/// run written to `DIR/events` (its machine, the inputs that entered the
/// guest, and hashes of its state), and that run again from the log
/// alone, every event compared (`Determinism`). A log that is cut short,
/// corrupt, foreign or of another format is refused with one line and
/// exit status 2; a replay that differs stops at the first difference
/// with exit status 1.
enum Recording {
    /// The log being recorded (kept through the jail), or -1.
    nonisolated(unsafe) static var fd: Int32 = -1
    nonisolated(unsafe) static var path = ""
    /// The recording's header, made before the VMM is jailed (it reads the kernel).
    nonisolated(unsafe) static var header: [UInt8] = []
    nonisolated(unsafe) static var writer: EventLogWriter?
    /// A replay's events (nil: not a replay).
    nonisolated(unsafe) static var events: [ReplayEvent]?

    static func record(_ args: ArraySlice<String>) -> Never {
        guard let dir = args.first, !dir.hasPrefix("-") else { fail("usage: skiff record DIR [run options] (DIR must not exist)", status: 2) }
        guard mkdir(dir, 0o700) == 0 else { fail("skiff record: \(dir): \(String(cString: strerror(errno))) (give a directory that does not exist yet)", status: 2) }
        path = dir + "/events"
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { fail("skiff record: \(path): \(String(cString: strerror(errno)))", status: 2) }
        run(ArraySlice(["--deterministic"] + args.dropFirst()))
    }

    /// The header for `config` (the final one, as the VMM gets it).
    static func describe(_ config: VMConfiguration) {
        do {
            let kernel = try HostFiles.read(config.kernelPath, what: "kernel", limit: 1 << 30)
            let initrd = try config.initrdPath.map { try HostFiles.read($0, what: "initrd", limit: 1 << 30) }
            header = RecordingHeader(configuration: config, kernel: kernel, initrd: initrd).encode()
        } catch { fail("\(error)", status: 2) }
    }

    static func replay(_ args: ArraySlice<String>) -> Never {
        guard let dir = args.first, !dir.hasPrefix("-") else { fail("usage: skiff replay DIR", status: 2) }
        let options: RunOptions
        do { options = try RunOptions(args.dropFirst()) } catch { fail(error.description, status: 2) }
        let allowed = ["--disk", "--no-jail", "--jail-uid", "--jail-gid", "--no-seccomp", "--exit-file"]
        guard options.given.allSatisfy(allowed.contains) else {
            fail("skiff replay: the recording fixes the machine and its inputs; only \(allowed.joined(separator: ", ")) may be given", status: 2)
        }
        let file = dir + "/events"
        var config: VMConfiguration
        do {
            let (bytes, log) = try EventLog.read(file)
            let h = try RecordingHeader.decode(bytes, path: file)
            try same(h.configuration.kernelPath, "kernel", h.kernelBytes, h.kernelCRC)
            if let initrd = h.configuration.initrdPath { try same(initrd, "initrd", h.initrdBytes, h.initrdCRC) }
            config = h.configuration
            // A CPU that differs in what the guest reads: the replay's first difference, found before it runs.
            if let d = h.hostCPUIDDifference() { fail("replay diverged: \(d)", status: 1) }
            // A disk the recording wrote to is replayed on a copy of it as it was at the start.
            if !options.disks.isEmpty {
                guard options.disks.count == config.disks.count else {
                    throw ReplayError("the recording had \(config.disks.count) disk\(config.disks.count == 1 ? "" : "s"); \(options.disks.count) --disk given")
                }
                config.disks = options.disks
            }
            events = log
        } catch { fail("\(error)", status: 2) }
        launch(config, snapshot: nil, options: options)
    }

    /// The file a recording booted must be the same now.
    static func same(_ path: String, _ what: String, _ bytes: UInt64, _ crc: UInt32) throws(ReplayError) {
        let now: [UInt8]
        do { now = try HostFiles.read(path, what: what, limit: 1 << 30) } catch { throw ReplayError("\(error) (the recording booted it)") }
        guard UInt64(now.count) == bytes, RecordingHeader.crc(now) == crc else {
            throw ReplayError("\(what) \(path) is not the one recorded (\(bytes) bytes, crc \(String(crc, radix: 16)); now \(now.count) bytes, crc \(String(RecordingHeader.crc(now), radix: 16)))")
        }
    }

    /// Before the VM runs: its log, or the events it replays.
    static func attach(_ machine: VirtualMachine) throws {
        if fd >= 0 {
            let w = try EventLogWriter(fd: fd, path: path, header: header)
            try machine.record(into: w)
            writer = w
        }
        if let events { try machine.replay(events) }
    }

    /// After it ran: the log finished, or the replay's verdict. A status
    /// that overrides the stop's, or nil.
    static func finish(_ machine: VirtualMachine) throws -> Int32? {
        if let writer {
            try writer.finish()
            report("recorded \(writer.count) events (\(writer.bytesWritten) bytes) in \(path)")
            return nil
        }
        guard events != nil, let o = machine.replayOutcome else { return nil }
        if o.matched {
            report("replay matched all \(o.events) events (\(o.checkpoints) checkpoints) through exit \(o.exits)")
            return nil
        }
        report("replay diverged: \(o.divergence ?? "it ended before its recording did")")
        ExitFile.write("reason replay diverged\n")
        return 1
    }
}
