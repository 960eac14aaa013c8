import Devices
import Machine

/// The VM's configuration in a snapshot: a restore rebuilds the same
/// machine (memory size, vCPUs, devices in the same order) before it puts
/// the saved state into it.
extension VMConfiguration {
    func save(_ w: inout StateWriter) {
        w.string(kernelPath)
        w.string(commandLine)
        w.u32(UInt32(cpus))
        w.u64(memoryMiB)
        w.string(cpuTemplate?.rawValue ?? "")
        w.u32(UInt32(disks.count))
        for d in disks {
            w.string(d.path); w.bool(d.readOnly); w.string(d.id ?? ""); w.bool(d.id != nil); w.bool(d.direct)
        }
        w.bool(rng)
        w.u32(UInt32(nets.count))
        for n in nets {
            w.string(n.tap); w.blob(n.mac)
            w.string(n.hostAddress ?? ""); w.string(n.bridge ?? ""); w.bool(n.nat)
        }
        w.bool(balloon != nil)
        let b = balloon ?? Balloon.Options()
        w.u32(b.targetMiB); w.bool(b.deflateOnOOM); w.bool(b.freePageReporting)
        w.bool(vsock != nil)
        w.u64(vsock?.cid ?? 0); w.string(vsock?.socketPath ?? "")
    }

    static func load(_ r: inout StateReader) throws(SnapshotError) -> VMConfiguration {
        var c = VMConfiguration(kernelPath: try r.string())
        c.commandLine = try r.string()
        c.cpus = Int(try r.u32())
        c.memoryMiB = try r.u64()
        let template = try r.string()
        if !template.isEmpty {
            guard let t = CPUTemplate(rawValue: template) else { throw SnapshotError("snapshot names an unknown CPU template \(template)") }
            c.cpuTemplate = t
        }
        for _ in 0..<(try r.count(limit: X86Layout.virtioIRQs.count)) {
            var d = Block.Options(path: try r.string())
            d.readOnly = try r.bool()
            let id = try r.string()
            d.id = try r.bool() ? id : nil
            d.direct = try r.bool()
            c.disks.append(d)
        }
        c.rng = try r.bool()
        for _ in 0..<(try r.count(limit: X86Layout.virtioIRQs.count)) {
            let tap = try r.string()
            let mac = try r.blob(limit: 6)
            guard mac.count == 6 else { throw SnapshotError("snapshot has a MAC address of \(mac.count) bytes") }
            var n = Net.Options(tap: tap, mac: mac)
            let host = try r.string(), bridge = try r.string()
            n.hostAddress = host.isEmpty ? nil : host
            n.bridge = bridge.isEmpty ? nil : bridge
            n.nat = try r.bool()
            c.nets.append(n)
        }
        let hasBalloon = try r.bool()
        var b = Balloon.Options()
        b.targetMiB = try r.u32(); b.deflateOnOOM = try r.bool(); b.freePageReporting = try r.bool()
        c.balloon = hasBalloon ? b : nil
        let hasVsock = try r.bool()
        let cid = try r.u64(), socket = try r.string()
        c.vsock = hasVsock ? Vsock.Options(cid: cid, socketPath: socket) : nil
        try r.finish()
        return c
    }
}
