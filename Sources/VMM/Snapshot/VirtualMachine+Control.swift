import CKVM
import Devices
import Glibc
import SkiffControl
import KVM
import Machine
import Synchronization

/// What the control socket changes: whether the VM is paused, and the last
/// snapshot taken or restored (a diff snapshot is relative to it).
struct ControlState {
    var lifecycle = Lifecycle.created
    var lastSnapshot: (directory: String, id: [UInt8])?
}

/// A control request that cannot be done now.
public struct ControlError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

extension VirtualMachine {
    /// Where the VM is in its lifecycle (SkiffControl's `Lifecycle`).
    public var lifecycle: Lifecycle { control.withLock { $0.lifecycle } }
    public var isPaused: Bool { lifecycle == .paused }

    /// Moves the lifecycle on by `event`, or says why it cannot.
    @discardableResult
    func transition(_ event: Lifecycle.Event) throws(ControlError) -> Lifecycle {
        let result: Result<Lifecycle, LifecycleError> = control.withLock { c in
            guard let next = c.lifecycle.after(event) else { return .failure(LifecycleError(state: c.lifecycle, event: event)) }
            c.lifecycle = next
            return .success(next)
        }
        switch result {
        case .success(let s): return s
        case .failure(let e): throw ControlError(e.description)
        }
    }

    func check(_ event: Lifecycle.Event) throws(ControlError) {
        let state = lifecycle
        guard state.after(event) != nil else { throw ControlError(LifecycleError(state: state, event: event).description) }
    }

    /// Stops every vCPU between two instructions and every virtio device
    /// between two requests. Idempotent.
    public func pause() throws(ControlError) {
        guard lifecycle != .paused else { return }
        try check(.pause)
        try park()
        // A stop that came meanwhile wins (it releases the parked vCPUs).
        try transition(.pause)
    }

    public func resume() throws(ControlError) {
        guard lifecycle != .running else { return }
        try check(.resume)
        try resumeDevices()
        try transition(.resume)
        pauseGate.resume()
    }

    private func park() throws(ControlError) {
        let loops = running.withLock { $0 }
        guard !loops.isEmpty, !stopping.isSet else { throw ControlError("the VM is not running") }
        guard pauseGate.pause(count: loops.count, kick: { for (loop, thread) in loops { loop.kick(thread) } }) else {
            throw ControlError("the vCPUs did not stop within 5 s")
        }
        for t in virtio { t.quiesce() }
    }

    private func resumeDevices() throws(ControlError) {
        for t in virtio {
            do { try t.resume() } catch { throw ControlError("resuming a virtio device: \(error)") }
        }
    }

    /// The disks whose changes are tracked, in the configuration's order.
    public var changeTrackers: [ChangeTracker] { virtio.compactMap { ($0.device as? Block)?.tracker } }

    /// A backup's point in time: the VM is paused (vCPUs between two
    /// instructions, devices between two requests) while each tracked
    /// disk's map is taken and its copy-before-write begins, then runs on.
    /// All disks are taken at one moment, so together they are
    /// crash-consistent. Returns the reply's text.
    public func beginBackup(_ files: [ChangeTracker.BackupFiles]) throws(ControlError) -> String {
        let trackers = changeTrackers
        guard files.count == trackers.count else { throw ControlError("backup-begin: \(trackers.count) tracked disks, \(files.count) sets of files") }
        guard case .snapshotting(let resumeAfter) = try transition(.snapshot) else { throw ControlError("not snapshotting") }
        let t0 = MonotonicClock.ns
        if resumeAfter {
            do { try park() } catch { _ = try? transition(.snapshotDone); throw error }
        }
        var paused: UInt64 = 0
        defer {
            if (try? transition(.snapshotDone)) == .running {
                try? resumeDevices()
                pauseGate.resume()
            }
        }
        var words: [String] = []
        for (i, (tracker, f)) in zip(trackers, files).enumerated() {
            do { words.append("disk\(i):" + (try tracker.beginBackup(f))) } catch {
                for t in trackers.prefix(i) { _ = t.endBackup(completed: false) }
                throw ControlError("\(error)")
            }
        }
        paused = UInt64(MonotonicClock.ns - t0) / 1000
        return "backup disks=\(trackers.count) paused_us=\(paused) " + words.joined(separator: " ")
    }

    /// Writes a snapshot into `files`, which the client made in `directory`
    /// (a jailed VMM can open no host path; the client's permissions decide
    /// where a snapshot may go, and it moves them into place): the full
    /// memory, or with `diff` only the pages written since the last
    /// snapshot this process took or restored. A running VM is paused for
    /// the time it takes and resumed after. Returns a one-line summary.
    public func snapshot(to directory: String, files: SnapshotFiles, diff: Bool) throws(ControlError) -> String {
        guard case .snapshotting(let resumeAfter) = try transition(.snapshot) else { throw ControlError("not snapshotting") }
        if resumeAfter {
            do { try park() } catch { _ = try? transition(.snapshotDone); throw error }
        }
        defer {
            // Back to running (or paused) unless a stop came meanwhile.
            if (try? transition(.snapshotDone)) == .running {
                try? resumeDevices()
                pauseGate.resume()
            }
        }
        do {
            return try writeSnapshot(to: directory, files: files, diff: diff)
        } catch {
            throw ControlError("\(error)")
        }
    }

    private func writeSnapshot(to directory: String, files: SnapshotFiles, diff: Bool) throws -> String {
        let parent = control.withLock { $0.lastSnapshot }
        if diff {
            guard memory.tracksDirtyPages else { throw ControlError("diff snapshots need a VM started with --track-dirty-pages") }
            guard parent != nil else { throw ControlError("a diff snapshot needs an earlier snapshot of this VM (take a full one first)") }
        }
        var id = [UInt8](repeating: 0, count: 16)
        _ = id.withUnsafeMutableBytes { getrandom($0.baseAddress, 16, 0) }

        // Pages written since the last snapshot: the guest's (KVM's log,
        // which this read also clears) and Skiff's devices'.
        var dirty: [PageBitmap]?
        if memory.tracksDirtyPages {
            var maps: [PageBitmap] = []
            for (slot, region) in memory.regions.enumerated() {
                var map = PageBitmap(pages: region.pages)
                try map.withWords { words in
                    try vm.dirtyLog(slot: UInt32(slot), into: words)
                    memory.takeDeviceDirty(region: slot, into: words)
                }
                maps.append(map)
            }
            dirty = maps
        }

        // The client renames them into place, the state file last: a
        // snapshot is complete when its state file is there.
        let memoryPath = directory + "/" + SnapshotImage.memoryName
        let pages = try MemoryFile.write(memory, fd: files.memory, name: memoryPath, id: id, dirty: diff ? dirty : nil)
        var sections: [(String, StateWriter)] = []
        var info = StateWriter()
        info.bytes += id
        info.string(parent.map { diff ? $0.directory : "" } ?? "")
        info.bytes += parent.map { diff ? $0.id : [UInt8](repeating: 0, count: 16) } ?? [UInt8](repeating: 0, count: 16)
        sections.append(("snapshot", info))
        var config = StateWriter()
        configuration.save(&config)
        sections.append(("config", config))
        if diff, let dirty {
            var d = StateWriter()
            for map in dirty { d.u32(UInt32(map.words.count)); for w in map.words { d.u64(w) } }
            sections.append(("dirty", d))
        }
        sections.append(("vm", try saveMachineState()))
        let msrIndices = try kvm.msrIndexList()
        for vcpu in vcpus { sections.append(("vcpu.\(vcpu.id)", try saveVcpuState(vcpu, msrIndices: msrIndices))) }
        sections.append(("devices", saveDeviceState()))
        let state = StateFile.encode(sections)
        try writeWhole(files.state, state, name: directory + "/" + SnapshotImage.stateName)
        // The seal (SnapshotSeal) lets this host trust the resources it
        // names; an unsealed snapshot leaves its seal file empty.
        if let key = configuration.sealKey {
            try writeWhole(files.seal, SnapshotSeal.seal(state, key: key), name: directory + "/" + SnapshotSeal.fileName)
        }
        control.withLock { $0.lastSnapshot = (directory, id) }
        return "\(diff ? "diff" : "full") snapshot \(directory): \(pages) pages of memory, \(vcpus.count) vCPUs, \(virtio.count) virtio devices"
    }

    // MARK: state of KVM's parts

    func saveMachineState() throws -> StateWriter {
        var w = StateWriter()
        let blobs = [try vm.state(.pit), try vm.irqchip(0), try vm.irqchip(1), try vm.irqchip(2), try vm.state(.clock)]
        for b in blobs { w.string(b.name); w.blob(b.bytes) }
        return w
    }

    func restoreMachineState(_ r: inout StateReader) throws {
        let kinds: [KVMStateKind] = [.pit, .irqchip, .irqchip, .irqchip, .clock]
        for kind in kinds {
            let name = try r.string()
            guard name == kind.name else { throw SnapshotError("VM state: found \(name) where \(kind.name) belongs") }
            let blob = KVMStateBlob(name: name, bytes: try r.blob())
            if kind.name == KVMStateKind.clock.name { try vm.setClock(blob) } else { try vm.setState(kind, blob) }
        }
        try r.finish()
    }

    /// The order KVM needs them back in (Firecracker's): special registers
    /// before the LAPIC, MSRs after both, pending events last.
    static let vcpuStateKinds: [KVMStateKind] = [.mpState, .registers, .specialRegisters, .xsave, .xcrs, .debugRegisters, .lapic]

    func saveVcpuState(_ vcpu: KVMVcpu, msrIndices: [UInt32]) throws -> StateWriter {
        var w = StateWriter()
        let cpuid = cpuidTables[Int(vcpu.id)]
        w.u32(UInt32(cpuid.count))
        for var e in cpuid { w.blob(withUnsafeBytes(of: &e) { Array($0) }) }
        for kind in Self.vcpuStateKinds {
            let b = try vcpu.state(kind)
            w.string(b.name); w.blob(b.bytes)
        }
        // The TSC deadline only means something once the TSC is set.
        let deadline: UInt32 = 0x6e0
        let msrs = vcpu.readMSRs(msrIndices.filter { $0 != deadline } + (msrIndices.contains(deadline) ? [deadline] : []))
        w.u32(UInt32(msrs.count))
        for m in msrs { w.u32(m.index); w.u64(m.value) }
        let events = try vcpu.state(.events)
        w.string(events.name); w.blob(events.bytes)
        return w
    }

    func restoreVcpuState(_ vcpu: KVMVcpu, _ r: inout StateReader) throws {
        for _ in 0..<(try r.count(limit: 256)) { _ = try r.blob(limit: 4096) } // CPUID: set when the vCPU was made
        func next(_ kind: KVMStateKind) throws {
            let name = try r.string()
            guard name == kind.name else { throw SnapshotError("vCPU \(vcpu.id) state: found \(name) where \(kind.name) belongs") }
            try vcpu.setState(kind, KVMStateBlob(name: name, bytes: try r.blob()))
        }
        for kind in Self.vcpuStateKinds { try next(kind) }
        var msrs: [(index: UInt32, value: UInt64)] = []
        for _ in 0..<(try r.count(limit: 4096)) { msrs.append((try r.u32(), try r.u64())) }
        try vcpu.writeMSRs(msrs)
        try next(.events)
        try r.finish()
    }

    func saveDeviceState() -> StateWriter {
        var w = StateWriter()
        var part = StateWriter()
        serial.saveState(&part); w.blob(part.bytes)
        part = StateWriter(); i8042.saveState(&part); w.blob(part.bytes)
        part = StateWriter(); cmos.saveState(&part); w.blob(part.bytes)
        w.u32(UInt32(virtio.count))
        for t in virtio { part = StateWriter(); t.saveState(&part); w.blob(part.bytes) }
        return w
    }

    func restoreDeviceState(_ r: inout StateReader) throws {
        func part(_ what: String) throws -> StateReader { StateReader(try r.blob()[...], what: what) }
        var s = try part("serial state"); try serial.restoreState(&s); try s.finish()
        s = try part("i8042 state"); try i8042.restoreState(&s); try s.finish()
        s = try part("CMOS state"); try cmos.restoreState(&s); try s.finish()
        let n = try r.count(limit: 64)
        guard n == virtio.count else { throw SnapshotError("the snapshot has \(n) virtio devices, this VM \(virtio.count)") }
        for t in virtio { s = try part("virtio device state"); try t.restoreState(&s); try s.finish() }
        try r.finish()
    }

    /// Puts a snapshot's state into this newly built VM, before any vCPU runs.
    func restoreState(from snapshot: SnapshotImage) throws {
        var machine = try snapshot.section("vm")
        try restoreMachineState(&machine)
        for vcpu in vcpus {
            var v = try snapshot.section("vcpu.\(vcpu.id)")
            try restoreVcpuState(vcpu, &v)
        }
        var devices = try snapshot.section("devices")
        try restoreDeviceState(&devices)
        control.withLock { $0.lastSnapshot = (snapshot.directory, snapshot.id) }
    }
}

/// The files a snapshot is written into, opened by the client (in this
/// order on the control socket).
public struct SnapshotFiles: Sendable {
    public static let count = 3
    public static let names = [SnapshotImage.memoryName, SnapshotImage.stateName, SnapshotSeal.fileName]
    public let memory: Int32, state: Int32, seal: Int32
}
