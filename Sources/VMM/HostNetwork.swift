import Devices
import Glibc
import HostTools

/// The host side a `--net` asks for, done with iproute2 and nftables by
/// the launcher (never by a jailed VMM): the TAP up, an address on it (or
/// on its bridge), the bridge itself if it did not exist, a filter that
/// keeps the guest to its own MAC on the bridge, and masquerading NAT for
/// the address's subnet. Every step is recorded with its undo; `tearDown`
/// undoes them in reverse when the VM stops (a TAP Skiff created
/// disappears with its file descriptor).
///
/// Names reach `ip` and `nft` only after `Net.interfaceNameIsValid`, and nft
/// gets them quoted, so none is read as syntax; the tools are run by
/// absolute path, never found through PATH.
public final class HostNetwork: @unchecked Sendable {
    enum Undo {
        case run([String])
        /// Deletes a bridge Skiff made, once no other interface uses it
        /// (clones share one).
        case deleteBridgeIfUnused(String)
        /// Puts ip_forward back as it was, once no other Skiff NAT needs it.
        case restoreForwarding(String)
        /// Gives the address back (NetworkLease).
        case releaseLease(UInt32)
    }
    private var undo: [Undo] = []

    public init() {}

    /// Whether anything was set up (so something must run to undo it).
    public var isActive: Bool { !undo.isEmpty }

    static let toolDirectories = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    static func tool(_ name: String) -> String {
        toolDirectories.map { $0 + "/" + name }.first { access($0, X_OK) == 0 } ?? "/usr/sbin/" + name
    }
    static let forwarding = "/proc/sys/net/ipv4/ip_forward"

    public func setUp(_ o: Net.Options, interface tap: String) throws(NetError) {
        do {
            guard Net.interfaceNameIsValid(tap) else { throw NetError("--net tap=\(tap): not an interface name") }
            if o.shared {
                try joinShared(o, tap: tap)
                return
            }
            var device = tap
            if let bridge = o.bridge {
                guard Net.interfaceNameIsValid(bridge) else {
                    throw NetError("--net bridge=\(bridge): not an interface name (1-15 letters, digits, '-', '_', '.')")
                }
                // Under the network's lock, as the last VM's delete is:
                // without it a clone could find the bridge made but not yet
                // marked, never take on its removal, and leave it behind
                // when it was the last to go (or lose it between its look
                // and its `master`).
                try NetworkLease.withLock { () throws(NetError) in
                    do {
                        if !Self.linkExists(bridge) {
                            // Marked as Skiff's: the last VM on it removes it.
                            try ip(["link", "add", "name", bridge, "type", "bridge"])
                            try ip(["link", "set", "dev", bridge, "alias", Self.bridgeMark])
                        }
                        if Self.isSkiffBridge(bridge) { undo.append(.deleteBridgeIfUnused(bridge)) }
                        try ip(["link", "set", "dev", bridge, "up"])
                        try ip(["link", "set", "dev", tap, "master", bridge], undo: ["link", "set", "dev", tap, "nomaster"])
                    } catch let e as NetError { throw e } catch { throw NetError("--net bridge=\(bridge): \(error)") }
                }
                device = bridge
                try guardSourceMAC(o.mac, tap: tap)
            }
            try ip(["link", "set", "dev", tap, "up"])
            if let address = o.hostAddress {
                guard Self.subnet(address) != nil else { throw NetError("--net host=\(address): not an IPv4 ADDRESS/PREFIX") }
                try ip(["addr", "add", address, "dev", device], undo: ["addr", "del", address, "dev", device])
            }
            if o.nat {
                guard let address = o.hostAddress, let subnet = Self.subnet(address) else {
                    throw NetError("--net nat needs host=ADDRESS/PREFIX")
                }
                let table = "skiff-\(getpid())-\(tap)"
                try enableForwarding()
                try nft(["add", "table", "ip", table], undo: ["delete", "table", "ip", table])
                try nft(["add", "chain", "ip", table, "postrouting", "{ type nat hook postrouting priority 100 ; }"])
                try nft(["add", "rule", "ip", table, "postrouting", "ip", "saddr", subnet, "oifname", "!=", "\"\(device)\"", "masquerade"])
            }
        } catch let e as NetError {
            tearDown()
            throw e
        } catch {
            tearDown()
            throw NetError("--net tap=\(tap): host set-up failed: \(error)")
        }
    }

    /// Joins a network many VMs share (NetworkLease): under the network's
    /// lock, the bridge, its address, route_localnet (published ports answer
    /// on 127.0.0.1 too, as Docker's do) and one NAT table are made if
    /// missing, and go with the bridge when its last VM leaves. The TAP is
    /// an isolated port: VMs on the network reach the host and the outside,
    /// never one another. Then this VM's published ports.
    private func joinShared(_ o: Net.Options, tap: String) throws {
        guard let bridge = o.bridge, Net.interfaceNameIsValid(bridge), let address = o.hostAddress,
              let subnet = Self.subnet(address) else { throw NetError("a shared network needs a bridge and its address") }
        if let n = o.lease { undo.append(.releaseLease(n)) }
        try NetworkLease.withLock { () throws(NetError) in
            do {
                // Under the lock too: a leaving launcher restores the old
                // value only when no VM's table is left, and must not do it
                // between this launcher's look and its tables.
                try enableForwarding()
                if !Self.linkExists(bridge) {
                    // A fixed MAC (the gateway's lease number, 1): a VM restored
                    // from a ready snapshot still has the gateway's MAC in its
                    // ARP cache, and a bridge made anew must answer to it.
                    try ip(["link", "add", "name", bridge, "address", NetworkLease(number: 1).macText, "type", "bridge"])
                    try ip(["link", "set", "dev", bridge, "alias", Self.bridgeMark])
                }
                if Self.isSkiffBridge(bridge) { undo.append(.deleteBridgeIfUnused(bridge)) }
                let addresses = try Subprocess.run([Self.tool("ip"), "-o", "-4", "addr", "show", "dev", bridge], capture: true, quiet: true)
                if !addresses.contains(" \(address) ") { try ip(["addr", "add", address, "dev", bridge]) }
                try ip(["link", "set", "dev", bridge, "up"])
                _ = Self.writeSysctl("/proc/sys/net/ipv4/conf/\(bridge)/route_localnet", "1")
                let table = Self.sharedTable(bridge)
                if (try? Subprocess.run([Self.tool("nft"), "list", "table", "ip", table], capture: true, quiet: true)) == nil {
                    try nft(batch: [["add", "table", "ip", table],
                                    ["add", "chain", "ip", table, "postrouting", "{ type nat hook postrouting priority 100 ; }"],
                                    ["add", "rule", "ip", table, "postrouting", "ip", "saddr", subnet, "oifname", "!=", "\"\(bridge)\"", "masquerade"],
                                    // A published port reached at 127.0.0.1: the guest answers the bridge's address.
                                    ["add", "rule", "ip", table, "postrouting", "ip", "saddr", "127.0.0.0/8", "oifname", "\"\(bridge)\"", "masquerade"]])
                }
                try ip(["link", "set", "dev", tap, "master", bridge], undo: ["link", "set", "dev", tap, "nomaster"])
                // No broadcast or multicast from the host reaches the guest,
                // and the host never asks for the guest's MAC: it is known
                // (the lease's), so the host's neighbour entry and the
                // bridge's forwarding entry are set, not learnt. With 20
                // VMs restored at once, the host's ARP requests for each
                // address went to every guest, each costing milliseconds of
                // emulated kernel mode there, faster than the guests could
                // take their identities and answer: none ever did.
                try Subprocess.run([Self.tool("bridge"), "link", "set", "dev", tap, "isolated", "on", "bcast_flood", "off", "mcast_flood", "off"],
                                   capture: true)
                try Subprocess.run([Self.tool("bridge"), "fdb", "replace", Net.macText(o.mac), "dev", tap, "master", "static"], capture: true)
                if let guest = o.guestAddress {
                    try ip(["neigh", "replace", guest, "lladdr", Net.macText(o.mac), "dev", bridge, "nud", "permanent"],
                           undo: ["neigh", "del", guest, "dev", bridge])
                }
                try guardSourceMAC(o.mac, tap: tap)
                try ip(["link", "set", "dev", tap, "up"])
                try publish(o, tap: tap)
            } catch let e as NetError { throw e } catch { throw NetError("network \(bridge): \(error)") }
        }
    }

    static func sharedTable(_ bridge: String) -> String { "skiff-net-\(bridge)" }

    /// DNAT of each published host port to the guest's, for packets from
    /// outside (prerouting) and from the host itself (output), to any of
    /// the host's own addresses. A port another VM publishes is refused.
    private func publish(_ o: Net.Options, tap: String) throws {
        guard !o.published.isEmpty else { return }
        guard let guest = o.guestAddress, Self.subnet(guest + "/32") != nil else { throw NetError("published ports need the guest's address") }
        let ruleset = (try? Subprocess.run([Self.tool("nft"), "list", "ruleset", "ip"], capture: true, quiet: true)) ?? ""
        for p in o.published where ruleset.contains("\(p.proto.rawValue) dport \(p.host) dnat") {
            throw NetError("-p \(p.host):\(p.guest): host port \(p.host)/\(p.proto.rawValue) is published by another VM")
        }
        let table = "skiff-\(getpid())-\(tap)-ports"
        var commands = [["add", "table", "ip", table],
                        ["add", "chain", "ip", table, "outside", "{ type nat hook prerouting priority -100 ; }"],
                        ["add", "chain", "ip", table, "host", "{ type nat hook output priority -100 ; }"]]
        for p in o.published {
            for chain in ["outside", "host"] {
                commands.append(["add", "rule", "ip", table, chain, "fib", "daddr", "type", "local", p.proto.rawValue, "dport", "\(p.host)",
                                 "dnat", "to", "\(guest):\(p.guest)"])
            }
        }
        try nft(batch: commands, undo: ["delete", "table", "ip", table])
    }

    /// On a bridge the guest could send with any source MAC and take over
    /// another machine's traffic: frames from its TAP must carry its own.
    private func guardSourceMAC(_ mac: [UInt8], tap: String) throws {
        let hex = Net.macText(mac)
        let table = "skiff-\(getpid())-\(tap)-mac"
        try nft(batch: [["add", "table", "bridge", table],
                        ["add", "chain", "bridge", table, "guest", "{ type filter hook prerouting priority -200 ; }"],
                        ["add", "rule", "bridge", table, "guest", "iifname", "\"\(tap)\"", "ether", "saddr", "!=", hex, "drop"]],
                undo: ["delete", "table", "bridge", table])
    }

    private func enableForwarding() throws {
        let before = Self.readForwarding()
        if before != "1" {
            guard Self.writeForwarding("1") else { throw NetError("--net nat: cannot enable \(Self.forwarding)") }
            undo.append(.restoreForwarding(before ?? "0"))
        }
    }

    public func tearDown() {
        while let step = undo.popLast() {
            switch step {
            case .run(let command):
                _ = try? Subprocess.run(command, capture: true, quiet: true)
            case .deleteBridgeIfUnused(let bridge):
                // Under the network's lock: no VM joins between the look and the delete.
                _ = try? NetworkLease.withLock { () throws(NetError) in
                    let ports = (try? Subprocess.run([Self.tool("ip"), "-o", "link", "show", "master", bridge], capture: true, quiet: true)) ?? "x"
                    guard ports.isEmpty else { return }
                    _ = try? Subprocess.run([Self.tool("ip"), "link", "del", "dev", bridge], capture: true, quiet: true)
                    _ = try? Subprocess.run([Self.tool("nft"), "delete", "table", "ip", Self.sharedTable(bridge)], capture: true, quiet: true)
                }
            case .releaseLease(let number):
                NetworkLease(number: number).release()
            case .restoreForwarding(let value):
                _ = try? NetworkLease.withLock { () throws(NetError) in
                    let tables = (try? Subprocess.run([Self.tool("nft"), "list", "tables", "ip"], capture: true, quiet: true)) ?? "skiff-"
                    if !tables.contains("skiff-") { _ = Self.writeForwarding(value) }
                }
            }
        }
    }

    private func ip(_ args: [String], undo reverse: [String]? = nil) throws {
        try Subprocess.run([Self.tool("ip")] + args, capture: true)
        if let reverse { undo.append(.run([Self.tool("ip")] + reverse)) }
    }

    /// Several nft commands in one run (one transaction; each run costs
    /// tens of milliseconds): nft takes `;` between commands.
    private func nft(batch commands: [[String]], undo reverse: [String]? = nil) throws {
        try nft(Array(commands.map { $0 }.joined(separator: [";"])), undo: reverse)
    }

    private func nft(_ args: [String], undo reverse: [String]? = nil) throws {
        try Subprocess.run([Self.tool("nft")] + args, capture: true)
        if let reverse { undo.append(.run([Self.tool("nft")] + reverse)) }
    }

    static let bridgeMark = "made-by-skiff"
    static func isSkiffBridge(_ name: String) -> Bool {
        let fd = open("/sys/class/net/\(name)/ifalias", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: 64)
        let n = b.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return n > 0 && String(decoding: b.prefix(n), as: UTF8.self).hasPrefix(bridgeMark)
    }

    /// In this process's network namespace (an ioctl, not `ip link show`).
    static func linkExists(_ name: String) -> Bool {
        if_nametoindex(name) != 0
    }

    static func readForwarding() -> String? {
        let fd = open(forwarding, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var b: UInt8 = 0
        return read(fd, &b, 1) == 1 ? String(UnicodeScalar(b)) : nil
    }

    static func writeForwarding(_ value: String) -> Bool { writeSysctl(forwarding, value) }

    static func writeSysctl(_ path: String, _ value: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return write(fd, value, 1) == 1
    }

    /// "10.0.2.2/24" -> "10.0.2.0/24"
    static func subnet(_ cidr: String) -> String? {
        let parts = cidr.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { String(Substring($0)) }
        guard parts.count == 2, let prefix = UInt32(parts[1]), prefix <= 32 else { return nil }
        let octets = parts[0].utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).map { UInt32(String(Substring($0))) }
        guard octets.count == 4, octets.allSatisfy({ $0 != nil && $0! < 256 }) else { return nil }
        let address = octets.reduce(0) { $0 << 8 | $1! }
        let network = prefix == 0 ? 0 : address & ~UInt32(0) << (32 - prefix)
        return "\(network >> 24).\(network >> 16 & 255).\(network >> 8 & 255).\(network & 255)/\(prefix)"
    }
}
