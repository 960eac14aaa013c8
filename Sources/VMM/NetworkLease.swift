import Devices
import Glibc
import HostTools

/// Skiff's appliance network: one bridge per host (`skiff0`, 172.29.0.1/16)
/// with NAT to the outside, and an address for each VM on it, leased
/// without a server: the lease for host number N is the file
/// `/run/skiff/net/N`, made with O_EXCL under a lock and holding the
/// launcher's pid. A lease whose pid is gone (a launcher killed before it
/// could clean up) is taken over, and what the dead launcher left in
/// nftables is removed first, so an address, its TAP name and its ports
/// are never used twice at once and never lost.
///
/// The MAC and the TAP's name follow from the number, so they are as
/// unique as the address: a restored or cloned VM gets its own by taking
/// its own lease.
public struct NetworkLease: Sendable {
    public static let bridge = "skiff0"
    /// 172.29.0.0/16: the gateway is .0.1, guests are 2 ... 65534.
    static let network: UInt32 = 0xAC1D_0000
    static let prefix = 16
    static let hosts: ClosedRange<UInt32> = 2...0xFFFE
    public static let gateway = "172.29.0.1"
    public static var directory: String { getenv("SKIFF_NET_DIR").map { String(cString: $0) } ?? "/run/skiff/net" }

    public let number: UInt32
    public init(number: UInt32) { self.number = number }
    public var address: String { Self.dotted(Self.network | number) }
    public var cidr: String { address + "/\(Self.prefix)" }
    /// Locally administered, unicast: 02:73:6b ("sk") then the host number.
    public var mac: [UInt8] { [0x02, 0x73, 0x6b, 0x00, UInt8(number >> 8), UInt8(number & 0xFF)] }
    public var macText: String { Net.macText(mac) }
    public var tap: String { "skt\(number)" }
    var path: String { Self.directory + "/\(number)" }

    static func dotted(_ a: UInt32) -> String { "\(a >> 24).\(a >> 16 & 255).\(a >> 8 & 255).\(a & 255)" }

    /// The first free (or abandoned) host number.
    public static func acquire() throws(NetError) -> NetworkLease {
        try withLock { () throws(NetError) -> NetworkLease in
            reclaimAbandoned()
            for n in hosts {
                let lease = NetworkLease(number: n)
                // Its TAP is there (a launcher with another lease folder, in this namespace): not free.
                if access("/sys/class/net/\(lease.tap)", F_OK) == 0 { continue }
                let fd = open(lease.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
                if fd < 0 {
                    guard errno == EEXIST else { throw NetError("network lease \(lease.path): \(String(cString: strerror(errno)))") }
                    continue // held (abandoned ones were reclaimed above)
                }
                close(fd)
                unlink(lease.path)
                return try acquireFree(lease)
            }
            throw NetError("the appliance network \(bridge) has no free address (\(hosts.count) leases in \(directory))")
        }
    }

    /// Every lease whose launcher is gone: its nftables tables (a published
    /// port among them, which would refuse the next VM that asks for it)
    /// and then the lease itself. Called under the lock.
    static func reclaimAbandoned() {
        guard let dir = opendir(directory) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let n = UInt32(name), hosts.contains(n) else { continue }
            let lease = NetworkLease(number: n)
            guard let owner = lease.owner(), kill(owner, 0) != 0, errno == ESRCH else { continue }
            lease.removeLeftovers(of: owner)
            unlink(lease.path)
        }
    }

    /// Writes this process's pid into a lease known to be free.
    private static func acquireFree(_ lease: NetworkLease) throws(NetError) -> NetworkLease {
        let fd = open(lease.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw NetError("network lease \(lease.path): \(String(cString: strerror(errno)))") }
        let text = Array("\(getpid())\n".utf8)
        let n = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard n == text.count else { unlink(lease.path); throw NetError("network lease \(lease.path): write failed") }
        return lease
    }

    public func release() { _ = try? Self.withLock { () throws(NetError) in unlink(path) } }

    /// The pid in the lease file; nil if it cannot be read (then the lease
    /// is left alone: only a lease known to be abandoned is taken over).
    func owner() -> pid_t? {
        guard let bytes = try? HostFiles.read(path, what: "network lease", limit: 32),
              let pid = Int32(String(decoding: bytes, as: UTF8.self).trimmingSpaces()), pid > 0 else { return nil }
        return pid
    }

    /// The nftables tables a launcher of this lease made (HostNetwork names
    /// them by pid and TAP); its TAP went with its file descriptor.
    func removeLeftovers(of pid: pid_t) {
        let nft = HostNetwork.tool("nft")
        _ = try? Subprocess.run([nft, "delete", "table", "ip", "skiff-\(pid)-\(tap)-ports"], capture: true, quiet: true)
        _ = try? Subprocess.run([nft, "delete", "table", "bridge", "skiff-\(pid)-\(tap)-mac"], capture: true, quiet: true)
    }

    /// Serialises leases and the network's shared set-up (bridge, address,
    /// NAT) across launchers: an exclusive flock on `directory/lock`.
    public static func withLock<T>(_ body: () throws(NetError) -> T) throws(NetError) -> T {
        // A process only the first time (each costs a few ms on every run).
        if access(directory, F_OK) != 0 {
            do { try Subprocess.run(["mkdir", "-p", "-m", "0700", directory]) } catch { throw NetError("\(directory): \(error)") }
        }
        let fd = open(directory + "/lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw NetError("\(directory)/lock: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw NetError("\(directory)/lock: \(String(cString: strerror(errno)))") }
        }
        return try body()
    }

    /// The host's name servers a guest can reach: /etc/resolv.conf's, or
    /// systemd-resolved's upstream ones when the host uses its local stub.
    public static func nameservers() -> [String] {
        for file in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
            guard let bytes = try? HostFiles.read(file, what: "resolv.conf", limit: 1 << 16, regularOnly: false) else { continue }
            let servers = String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { line -> String? in
                let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard words.count >= 2, words[0] == "nameserver", !words[1].hasPrefix("127."), words[1] != "::1",
                      words[1].utf8.allSatisfy({ (0x30...0x39).contains($0) || $0 == 0x2e }) else { return nil }
                return String(words[1])
            }
            if !servers.isEmpty { return Array(servers.prefix(3)) }
        }
        return []
    }

    /// The Net.Options that put a VM on this lease's address.
    public func options(publishing ports: [PublishedPort]) -> Net.Options {
        var o = Net.Options(tap: tap, mac: mac)
        o.bridge = Self.bridge
        o.hostAddress = Self.gateway + "/\(Self.prefix)"
        o.nat = true
        o.shared = true
        o.guestAddress = address
        o.published = ports
        o.lease = number
        return o
    }
}

extension String {
    /// Without leading and trailing spaces, tabs and newlines.
    public func trimmingSpaces() -> String {
        var u = Substring(self)
        while let f = u.first, f == " " || f == "\n" || f == "\t" { u.removeFirst() }
        while let l = u.last, l == " " || l == "\n" || l == "\t" { u.removeLast() }
        return String(u)
    }
}
