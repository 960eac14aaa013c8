import Devices
import Glibc
import HostTools

/// The host side a `--net` asks for, done with iproute2 and nftables:
/// the TAP up, an address on it (or on its bridge), the bridge itself if
/// it did not exist, and masquerading NAT for the address's subnet. Every
/// step is recorded with its undo; `tearDown` undoes them in reverse when
/// the VM stops (a TAP Skiff created disappears with its file descriptor).
public final class HostNetwork: @unchecked Sendable {
    private var undo: [[String]] = []

    public init() {}

    /// Whether anything was set up (so something must run to undo it).
    public var isActive: Bool { !undo.isEmpty }

    public func setUp(_ o: Net.Options, interface tap: String) throws(NetError) {
        do {
            var device = tap
            if let bridge = o.bridge {
                if (try? Subprocess.run(["ip", "link", "show", "dev", bridge], capture: true, quiet: true)) == nil {
                    try run(["ip", "link", "add", "name", bridge, "type", "bridge"], undo: ["ip", "link", "del", "dev", bridge])
                }
                try run(["ip", "link", "set", "dev", bridge, "up"])
                try run(["ip", "link", "set", "dev", tap, "master", bridge], undo: ["ip", "link", "set", "dev", tap, "nomaster"])
                device = bridge
            }
            try run(["ip", "link", "set", "dev", tap, "up"])
            if let address = o.hostAddress {
                try run(["ip", "addr", "add", address, "dev", device], undo: ["ip", "addr", "del", address, "dev", device])
            }
            if o.nat {
                guard let address = o.hostAddress, let subnet = Self.subnet(address) else {
                    throw NetError("--net nat needs host=ADDRESS/PREFIX")
                }
                let table = "skiff-\(getpid())-\(tap)"
                let forward = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY)
                if forward >= 0 { _ = write(forward, "1", 1); close(forward) }
                try run(["nft", "add", "table", "ip", table], undo: ["nft", "delete", "table", "ip", table])
                try run(["nft", "add", "chain", "ip", table, "postrouting", "{ type nat hook postrouting priority 100 ; }"])
                try run(["nft", "add", "rule", "ip", table, "postrouting", "ip", "saddr", subnet, "oifname", "!=", device, "masquerade"])
            }
        } catch let e as NetError {
            tearDown()
            throw e
        } catch {
            tearDown()
            throw NetError("--net tap=\(tap): host set-up failed: \(error)")
        }
    }

    public func tearDown() {
        while let command = undo.popLast() { _ = try? Subprocess.run(command, capture: true) }
    }

    private func run(_ command: [String], undo reverse: [String]? = nil) throws {
        try Subprocess.run(command, capture: true)
        if let reverse { undo.append(reverse) }
    }

    /// "10.0.2.2/24" -> "10.0.2.0/24"
    static func subnet(_ cidr: String) -> String? {
        let parts = cidr.utf8.split(separator: UInt8(ascii: "/")).map { String(Substring($0)) }
        guard parts.count == 2, let prefix = UInt32(parts[1]), prefix <= 32 else { return nil }
        let octets = parts[0].utf8.split(separator: UInt8(ascii: ".")).compactMap { UInt32(String(Substring($0))) }
        guard octets.count == 4, octets.allSatisfy({ $0 < 256 }) else { return nil }
        let address = octets.reduce(0) { $0 << 8 | $1 }
        let network = prefix == 0 ? 0 : address & ~UInt32(0) << (32 - prefix)
        return "\(network >> 24).\(network >> 16 & 255).\(network >> 8 & 255).\(network & 255)/\(prefix)"
    }
}
