import CKVM
import Devices
import Glibc
import KVM
import Machine
import SkiffControl
import Synchronization

/// One VM: guest memory, the in-kernel irqchip and PIT (or, deterministic,
/// Skiff's), legacy devices, vCPU threads; built from a configuration, run
/// until it stops.
public final class VirtualMachine: @unchecked Sendable {
    public let configuration: VMConfiguration
    let kvm: KVMSystem
    let vm: KVMVirtualMachine
    public let memory: GuestMemory
    let vcpus: [KVMVcpu]
    /// The CPUID table each vCPU was given (a snapshot saves it: on some
    /// backends KVM_GET_CPUID2 reports the host's bits, not these).
    let cpuidTables: [[kvm_cpuid_entry2]]
    let serial: Serial8250
    /// A deterministic machine's schedule (nil: KVM's irqchip and PIT).
    let determinism: Determinism?
    let i8042: I8042
    let cmos: CMOS
    let io: Bus
    let mmio: Bus
    /// The virtio devices, each behind its MMIO transport.
    public let virtio: [MMIOTransport]
    let stopping = StopFlag()
    private let stopReason = Mutex<StopReason?>(nil)
    private let mainThread = pthread_self()
    /// Pause, resume and snapshots (VirtualMachine+Control).
    let pauseGate = PauseGate()
    let control = Mutex(ControlState())
    /// The vCPU loops and their threads while `run` runs.
    let running = Mutex<[(VcpuLoop, HostThread)]>([])

    /// Signals the main thread waits for; blocked in every thread so that
    /// only its sigwait sees them.
    static let controlSignals: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGUSR2, SIGQUIT]

    /// The control socket's listener, if the VM has one, and its owner.
    let controlListener: Int32?
    let controlOwner: UInt32

    /// Builds a VM that boots `config`'s kernel, or, with `snapshot`, the
    /// VM the snapshot saved, in the state it saved, on the host resources
    /// opened for it (its kernel, disks, TAPs, sockets; all already checked).
    public init(_ config: VMConfiguration, resources: HostResources, restoring snapshot: SnapshotImage? = nil,
                consoleOutput: @escaping @Sendable (UInt8) -> Void) throws {
        configuration = config
        let memoryBytes = config.memoryMiB << 20
        let kernel = resources.kernel, initrd = resources.initrd
        controlListener = resources.controlListener
        controlOwner = resources.controlOwner

        kvm = try KVMSystem(fd: resources.kvm, path: config.kvmPath)
        guard config.cpus <= kvm.maxVcpus else {
            throw ConfigurationError("--cpus \(config.cpus): KVM on this host allows at most \(kvm.maxVcpus)")
        }
        vm = try kvm.createVM()
        if let snapshot {
            memory = try GuestMemory(size: memoryBytes, layers: snapshot.layers, trackDirty: config.trackDirtyPages)
        } else {
            memory = try GuestMemory(size: memoryBytes, trackDirty: config.trackDirtyPages)
        }
        for (slot, region) in memory.regions.enumerated() {
            try vm.setUserMemoryRegion(slot: UInt32(slot), guestPhysical: region.guestBase, size: region.size,
                                       host: region.host, logDirty: config.trackDirtyPages)
        }
        try? vm.setTSSAddress(X86Layout.kvmTSS) // VMX needs it; other backends may refuse
        if !config.deterministic {
            try vm.createIRQChip()
            try vm.createPIT()
        }

        // Devices. Each sits where a PC has it.
        var io = Bus()
        let schedule: Determinism?
        var portB: (any BusDevice)?
        if config.deterministic {
            // Skiff's PIC and PIT in place of KVM's; the CMOS clock stands
            // still at a fixed time (2026-01-01).
            let pic = PIC8259(), pit: PIT8254
            serial = Serial8250(irq: pic.line(4), sink: consoleOutput)
            pit = PIT8254(irq: pic.line(0))
            try io.attach(pic.ports(slave: false), at: 0x20, length: 2)
            try io.attach(pic.ports(slave: true), at: 0xa0, length: 2)
            try io.attach(pit, at: 0x40, length: 4)
            portB = pit.portB
            cmos = CMOS(clock: { 1_767_225_600 })
            // Linux's interrupt windows PVM reports late (Determinism.interruptWindows).
            schedule = Determinism(pic: pic, pit: pit, serial: serial, memory: memory,
                                   interruptWindows: !(kernel?.isLinux ?? false))
        } else {
            serial = Serial8250(irq: KVMInterruptLine(vm: vm, irq: 4), sink: consoleOutput)
            cmos = CMOS()
            schedule = nil
        }
        determinism = schedule
        try io.attach(serial, at: 0x3f8, length: 8)
        let stopHandle = StopHandle()
        i8042 = I8042(portB: portB, onReset: { stopHandle.stop(.reset("i8042")) })
        try io.attach(i8042, at: 0x60, length: 5)
        try io.attach(cmos, at: 0x70, length: 2)
        self.io = io

        // virtio devices: a 4 KiB MMIO window and an interrupt line each,
        // announced to Linux on its command line; assembled only when asked for.
        let announcements: [String]
        if config.hasVirtioDevices {
            (mmio, virtio, announcements) = try Self.assembleVirtio(config, resources: resources, vm: vm, memory: memory,
                                                                    determinism: schedule)
        } else {
            (mmio, virtio, announcements) = (Bus(), [], [])
        }

        let template = config.cpuTemplate ?? CPUTemplate.automatic()
        var boot: BootSetup?
        if let kernel {
            var templateWords = template.linuxCommandLine
            var deterministic = ""
            if config.deterministic {
                // Linux on a deterministic machine: the PIC and PIT only, time
                // in jiffies, no delay calibration (a loop waiting for a tick
                // that only exits would bring), and no TSC, RDRAND or RDSEED
                // (cleared from CPUID by the kernel itself, features 4, 158
                // and 306: on PVM hosts guest kernel mode sees the host's
                // CPUID; Linux reads one clearcpuid only).
                deterministic = "nolapic noapic notsc clocksource=jiffies lpj=1000000"
                let cleared = "4,158,306"
                let words = templateWords.split(separator: " ").map(String.init)
                if let i = words.firstIndex(where: { $0.hasPrefix("clearcpuid=") }) {
                    templateWords = (words[..<i] + [words[i] + "," + cleared] + words[(i + 1)...]).joined(separator: " ")
                } else {
                    deterministic += " clearcpuid=" + cleared
                }
            }
            let commandLine = ([config.commandLine, templateWords, deterministic] + announcements).filter { !$0.isEmpty }.joined(separator: " ")
            boot = try BootSetup.prepare(memory: memory, kernel: kernel, initrd: initrd,
                                          commandLine: commandLine, cpus: config.cpus)
        }


        // vCPUs: CPUID and MSRs for all; the boot CPU gets the entry state,
        // the others wait for INIT/SIPI from the guest. A restored vCPU
        // gets the CPUID it had; its state comes after.
        let supported = try kvm.supportedCPUID()
        var vcpus: [KVMVcpu] = []
        var cpuidTables: [[kvm_cpuid_entry2]] = []
        for id in 0..<UInt32(config.cpus) {
            let vcpu = try vm.createVcpu(id: id)
            var cpuid = try snapshot?.cpuid(vcpu: id, supported: supported) ?? template.apply(to: supported, vcpu: id, vcpus: config.cpus)
            if config.deterministic { cpuid = CPUTemplate.deterministic(cpuid) }
            try vcpu.setCPUID(cpuid)
            cpuidTables.append(cpuid)
            if snapshot == nil {
                try vcpu.setMSRs(VcpuBoot.bootMSRs)
                if !config.deterministic { try VcpuBoot.configureLocalInterrupts(vcpu) }
                if id == 0, let boot { try VcpuBoot.configure(vcpu, entry: boot.entry) }
            }
            vcpus.append(vcpu)
        }
        self.vcpus = vcpus
        self.cpuidTables = cpuidTables
        stopHandle.machine = self
        determinism?.pendingStop = { [unowned self] in self.stopReason.withLock { $0 } }
        if let snapshot {
            try restoreState(from: snapshot)
        }
    }

    /// Records why the VM stops (the first reason wins) and wakes the main thread.
    public func stop(_ reason: StopReason) {
        let first = stopReason.withLock { r -> Bool in
            guard r == nil else { return false }
            r = reason
            return true
        }
        if first {
            _ = try? transition(.stop)
            pthread_kill(mainThread, SIGUSR2)
        }
    }

    /// Runs the guest until it stops; must be called on the thread that
    /// created the VM. Host input is forwarded to the console meanwhile.
    /// Once seccomp is on (`Seccomp.start`, before the VM is built), this
    /// thread gets its filter too before it waits; `mainSpawnsProcesses`
    /// lets it still run host programs after.
    public func run(consoleInput: Int32? = STDIN_FILENO, startPaused: Bool = false,
                    mainSpawnsProcesses: Bool = false) throws -> StopReason {
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in Self.controlSignals + [SIGUSR1] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil) // threads inherit this mask
        _ = ckvm_install_kick_handler(SIGUSR1)
        signal(SIGPIPE, SIG_IGN)

        let loops = vcpus.map { vcpu in
            VcpuLoop(vcpu: vcpu, io: io, mmio: mmio, stopping: stopping, pauseGate: pauseGate,
                     completion: InstructionCompletion(vcpu: vcpu, memory: memory),
                     onStop: { [unowned self] in self.stop($0) })
        }
        let controlServer: ControlServer?
        do { controlServer = try controlListener.map { try ControlServer(listener: $0, machine: self, allowedUID: controlOwner) } } catch {
            for transport in virtio { transport.device.reset() }
            throw error
        }
        // A VM restored paused parks its vCPUs before they run.
        if startPaused {
            pauseGate.request()
            for t in virtio { t.quiesce() }
        }
        try transition(startPaused ? .startPaused : .start)
        let sampler = determinism == nil ? GuestSampler.fromEnvironment(vcpus: loops.count) : nil
        for loop in loops { loop.sampler = sampler; loop.schedule = determinism }
        var threads: [HostThread] = []
        for loop in loops {
            // A deterministic machine's vCPU serves its devices (Seccomp's vcpuDevices role).
            threads.append(try HostThread(name: "vcpu\(loop.vcpu.id)" + (determinism == nil ? "" : "-devices")) { loop.run() })
        }
        running.withLock { $0 = Array(zip(loops, threads)) }
        sampler?.start(loops, threads, stopping: stopping)
        // A recording's input goes to the guest at its exits; a replay's comes from the log alone.
        var receiver: any ConsoleReceiver = serial
        if let d = determinism {
            if case .replay = d.mode { receiver = HostInputQueue() } else { receiver = d.input } // typing into a replay changes nothing
        }
        let console = consoleInput.map { ConsoleInput(fd: $0, serial: receiver, onQuit: { [unowned self] in self.stop(.consoleQuit) }) }
        try console?.start()
        try Seccomp.lockMainThread(spawnProcesses: mainSpawnsProcesses)

        var control = sigset_t()
        sigemptyset(&control)
        for s in Self.controlSignals { sigaddset(&control, s) }
        while true {
            var received: Int32 = 0
            sigwait(&control, &received)
            if received == SIGUSR2 { break }
            if received == SIGQUIT { reportVcpus(loops, threads); continue }
            stop(.signal(received))
        }
        controlServer?.shutdown()
        _ = try? transition(.stop) // a stop the guest asked for passes here too
        stopping.set()
        pauseGate.release()
        // A deterministic machine's vCPU is let reach its next exit (up to
        // 2 s) and end there: a kick would stop it at a point no replay can
        // find again, after guest code that made no exit.
        if determinism != nil {
            for _ in 0..<2000 where !loops.allSatisfy(\.hasEnded) { usleep(1000) }
        }
        for (loop, thread) in zip(loops, threads) { loop.kick(thread) }
        for thread in threads { thread.join() }
        running.withLock { $0 = [] }
        for transport in virtio { transport.device.reset() } // stop device threads
        for transport in virtio { (transport.device as? Block)?.tracker?.close() } // maps saved clean
        console?.restoreTerminal()
        _ = try? transition(.end)
        return stopReason.withLock { $0 } ?? .kvmError("stopped without a reason")
    }
}

extension VirtualMachine {
    /// The virtio devices the configuration asks for, each on its MMIO
    /// window with its interrupt, and the command-line words announcing them.
    static func assembleVirtio(_ config: VMConfiguration, resources: HostResources, vm: KVMVirtualMachine,
                               memory: GuestMemory, determinism: Determinism?) throws -> (Bus, [MMIOTransport], [String]) {
        // Queue notifications reach each device's thread through an ioeventfd
        // and interrupts leave it through an irqfd: neither needs a vCPU to
        // come out to Skiff. A deterministic machine's instead exit, are
        // served on the vCPU's thread there, and interrupt through its PIC.
        var mmio = Bus()
        var transports: [MMIOTransport] = []
        var devices: [(any VirtioDevice, String)] = []
        for (i, (disk, fd)) in zip(config.disks, resources.disks).enumerated() {
            devices.append((try Block(disk, fd: fd, changeMap: resources.changeMaps[i], fill: resources.fills[i], inputs: determinism, diskNumber: UInt8(i)),
                            "virtio-blk \(disk.path) (vd\(Character(UnicodeScalar(UInt8(97 + i)))))"))
        }
        for (n, tap) in zip(config.nets, resources.taps) {
            devices.append((Net(n, tap: tap.fd, interfaceName: tap.name), "virtio-net tap \(tap.name)"))
        }
        if config.rng { devices.append((Rng(inputs: determinism), "virtio-rng")) }
        if let b = config.balloon { devices.append((try Balloon(b), "virtio-balloon")) }
        if let v = config.vsock, let listener = resources.vsockListener {
            devices.append((try Vsock(v, listener: listener), "virtio-vsock cid \(v.cid)"))
        }
        var announcements: [String] = []
        for (i, (device, name)) in devices.enumerated() {
            let base = X86Layout.virtioMMIOBase + UInt64(i) * MMIOTransport.windowSize
            let gsi = X86Layout.virtioIRQs[i]
            let irq = try EventFD()
            let inline = determinism.map { InlineQueues(line: $0.pic.line(Int(gsi))) }
            if inline == nil { try vm.registerIRQFD(irq.fd, gsi: gsi) }
            let transport = try MMIOTransport(device: device, memory: memory, irq: irq, name: name, inline: inline)
            for (q, notifier) in transport.notifiers.enumerated() where inline == nil {
                try vm.registerIOEventFD(notifier.fd, mmioAddress: base + 0x50, value: UInt32(q))
            }
            try mmio.attach(transport, at: base, length: MMIOTransport.windowSize)
            transports.append(transport)
            announcements.append("virtio_mmio.device=4K@0x\(String(base, radix: 16)):\(gsi)")
        }
        return (mmio, transports, announcements)
    }

    /// SIGQUIT: one line per vCPU on stderr (where is the guest?). Each vCPU
    /// is kicked out of KVM_RUN long enough for its registers to be read.
    func reportVcpus(_ loops: [VcpuLoop], _ threads: [HostThread]) {
        for (loop, thread) in zip(loops, threads) {
            loop.kick(thread)
            let line: String
            if let r = try? loop.vcpu.registers(), let s = try? loop.vcpu.specialRegisters() {
                let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
                line = "vCPU \(loop.vcpu.id): rip \(hex(r.rip)) rsp \(hex(r.rsp)) rflags \(hex(r.rflags)) cr3 \(hex(s.cr3)) exits \(loop.exits)\n"
            } else {
                line = "vCPU \(loop.vcpu.id): registers unavailable\n"
            }
            loop.vcpu.setImmediateExit(false)
            var bytes = Array(line.utf8)
            _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        }
        for case let balloon as Balloon in virtio.map(\.device) {
            let s = balloon.snapshot
            let stats = s.stats.sorted { $0.key < $1.key }.map { "\(Balloon.statNames[$0.key] ?? "tag\($0.key)")=\($0.value)" }
            var bytes = Array("balloon: actual \(s.actualPages) pages, inflated \(s.inflatedPages), reported \(s.reportedPages); \(stats.joined(separator: " "))\n".utf8)
            _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
            balloon.requestStatistics() // fresh numbers for the next report
        }
    }
}

/// Lets devices built before the VM exists stop it later.
final class StopHandle: @unchecked Sendable {
    weak var machine: VirtualMachine?
    func stop(_ reason: StopReason) { machine?.stop(reason) }
}

/// An ISA interrupt of the in-kernel PIC/IOAPIC, raised as an edge.
struct KVMInterruptLine: InterruptLine {
    let vm: KVMVirtualMachine
    let irq: UInt32
    func pulse() {
        try? vm.setIRQLine(irq, high: true)
        try? vm.setIRQLine(irq, high: false)
    }
}

extension VirtualMachine {
    /// The devices' I/O counters, summed by kind (the control socket's `stats`).
    public func ioStats() -> ControlStats {
        var s = ControlStats()
        for t in virtio {
            if let b = t.device as? Block {
                s.diskReadBytes &+= b.counters.readBytes.load(ordering: .relaxed)
                s.diskWriteBytes &+= b.counters.writeBytes.load(ordering: .relaxed)
                s.diskReadOps &+= b.counters.readOps.load(ordering: .relaxed)
                s.diskWriteOps &+= b.counters.writeOps.load(ordering: .relaxed)
            } else if let n = t.device as? Net {
                s.netRxBytes &+= n.counters.readBytes.load(ordering: .relaxed)
                s.netTxBytes &+= n.counters.writeBytes.load(ordering: .relaxed)
                s.netRxPackets &+= n.counters.readOps.load(ordering: .relaxed)
                s.netTxPackets &+= n.counters.writeOps.load(ordering: .relaxed)
            }
        }
        return s
    }
}
