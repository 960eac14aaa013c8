import Machine

/// Pause and snapshot of a virtio device: the transport saves its
/// registers and each active queue's configuration and positions, then
/// the device's own state. The rings themselves are in guest memory.
extension MMIOTransport {
    /// Finishes the device's current work and stops it taking more.
    public func quiesce() {
        guard isRunning else { return }
        device.quiesce()
    }

    /// Starts a quiesced device again.
    public func resume() throws {
        guard isRunning, let context else { return }
        try device.resume(context)
    }

    /// Active and not broken: has a thread doing work.
    var isRunning: Bool {
        state.withLock { $0.active } && !signals.needsReset.load(ordering: .sequentiallyConsistent) && context != nil
    }

    public func saveState(_ w: inout StateWriter) {
        let r = state.withLock { $0 }
        w.u32(device.type.rawValue)
        w.u32(r.status)
        w.u32(r.deviceFeaturesSelect)
        w.u32(r.driverFeaturesSelect)
        w.u64(r.driverFeatures)
        w.u32(r.queueSelect)
        w.bool(r.active)
        w.u32(r.configGeneration)
        w.u32(signals.interruptStatus.load(ordering: .sequentiallyConsistent))
        w.bool(signals.needsReset.load(ordering: .sequentiallyConsistent))
        w.u32(UInt32(r.queues.count))
        let live = context?.queues ?? []
        for (i, q) in r.queues.enumerated() {
            w.u16(q.size)
            w.bool(q.ready)
            w.u64(q.descriptorTable)
            w.u64(q.availableRing)
            w.u64(q.usedRing)
            let p = i < live.count ? live[i].positions : VirtQueue.Positions(nextAvailable: 0, nextUsed: 0, usedAtLastSignal: 0)
            w.u16(p.nextAvailable)
            w.u16(p.nextUsed)
            w.u16(p.usedAtLastSignal)
        }
        var device = StateWriter()
        self.device.saveState(&device)
        w.blob(device.bytes)
    }

    /// Restores what `saveState` wrote into this (new, inactive) transport
    /// and starts the device if it was running. Queues are checked as when
    /// a driver sets them up: a snapshot cannot point a device outside RAM.
    public func restoreState(_ r: inout StateReader) throws(SnapshotError) {
        let type = try r.u32()
        guard type == device.type.rawValue else {
            throw SnapshotError("the snapshot has a virtio device of type \(type) where this VM has \(device.type)")
        }
        var regs = Registers(queues: [])
        regs.status = try r.u32()
        regs.deviceFeaturesSelect = try r.u32()
        regs.driverFeaturesSelect = try r.u32()
        regs.driverFeatures = try r.u64()
        regs.queueSelect = try r.u32()
        regs.active = try r.bool()
        regs.configGeneration = try r.u32()
        let interrupts = try r.u32()
        let broken = try r.bool()
        let n = try r.count(limit: 64)
        guard n == device.queueSizes.count else {
            throw SnapshotError("the snapshot's \(device.type) device has \(n) queues, this one \(device.queueSizes.count)")
        }
        var positions: [VirtQueue.Positions] = []
        for _ in 0..<n {
            var q = QueueConfiguration()
            q.size = try r.u16()
            q.ready = try r.bool()
            q.descriptorTable = try r.u64()
            q.availableRing = try r.u64()
            q.usedRing = try r.u64()
            regs.queues.append(q)
            positions.append(VirtQueue.Positions(nextAvailable: try r.u16(), nextUsed: try r.u16(), usedAtLastSignal: try r.u16()))
        }
        guard regs.driverFeatures & ~offeredFeatures == 0 else {
            throw SnapshotError("the snapshot's \(device.type) device uses features this one does not offer")
        }
        var deviceState = StateReader(try r.blob()[...], what: "\(device.type) device state")
        try device.restoreState(&deviceState)
        try deviceState.finish()

        signals.interruptStatus.store(interrupts, ordering: .sequentiallyConsistent)
        signals.needsReset.store(broken, ordering: .sequentiallyConsistent)
        let active = regs.active
        state.withLock { $0 = regs }
        guard active, !broken else { return }
        // The same rule as when a driver sets DRIVER_OK: the enabled queues
        // are a prefix of the device's, at least as long as it requires.
        let enabled = regs.queues.prefix { $0.ready }
        guard enabled.count >= device.requiredQueues, !regs.queues.dropFirst(enabled.count).contains(where: \.ready) else {
            state.withLock { $0 = Registers(queues: device.queueSizes.map { _ in QueueConfiguration() }) }
            throw SnapshotError("the snapshot's \(device.type) device is active with queues \(regs.queues.indices.filter { regs.queues[$0].ready }) enabled")
        }
        do {
            var queues: [VirtQueue] = []
            for (i, config) in enabled.enumerated() {
                let q = try VirtQueue(config, maxSize: device.queueSizes[i], memory: memory,
                                      eventIndex: regs.driverFeatures & VirtioFeature.eventIndex != 0,
                                      indirect: regs.driverFeatures & VirtioFeature.indirectDescriptors != 0)
                q.positions = positions[i]
                queues.append(q)
            }
            let context = VirtioContext(memory: memory, queues: queues, notifiers: notifiers,
                                        signals: signals, features: regs.driverFeatures)
            activeContext.withLock { $0 = context }
            try device.activate(context)
            device.didRestore()
            // Whatever the driver queued while the snapshot was taken is
            // served now, as if it had just notified.
            for n in notifiers { n.signal() }
        } catch {
            throw SnapshotError("restoring the \(device.type) device: \(error)")
        }
    }
}
