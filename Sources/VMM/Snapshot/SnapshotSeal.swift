import CCrypto
import CKVM
import Devices
import Glibc
import Machine

/// Which snapshots may name host resources. A snapshot's state file names
/// the disks, TAPs, bridges and sockets its VM used; restoring one opens
/// them as root. One that came from elsewhere (another host, a backup, a
/// download), or that a compromised VMM wrote, must not make restore open
/// anything the person restoring did not name.
///
/// So each snapshot taken here is sealed: `seal` = HMAC(K, state file),
/// where K = HMAC(host key, the VM's host resources), computed by the
/// launcher from the resources *it* opened and handed to the VMM. A VMM
/// knows only its own K, so even a compromised one can seal only
/// snapshots naming the resources it was given. The host key (32 random
/// bytes, 0600, in the state directory) never enters a VMM.
///
/// Restore trusts the saved resources only when the seal holds under this
/// host's key for the resources the state names; otherwise each must be
/// given again on the command line.
public enum SnapshotSeal {
    public static let fileName = "seal"
    static let keyLength = 32

    /// The state directory: $SKIFF_STATE_DIR, else /var/lib/skiff for root
    /// and ~/.local/state/skiff for others.
    static var stateDirectory: String {
        if let d = getenv("SKIFF_STATE_DIR") { return String(cString: d) }
        if geteuid() == 0 { return "/var/lib/skiff" }
        return (getenv("HOME").map { String(cString: $0) } ?? "/tmp") + "/.local/state/skiff"
    }

    /// This host's key, made on first use; nil if it cannot be had (the
    /// snapshots of such a launcher are simply not sealed).
    public static func hostKey(create: Bool) -> [UInt8]? {
        let dir = stateDirectory, path = dir + "/host.key"
        var fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 && errno == ENOENT && create {
            var prefix = ""
            for part in dir.utf8.split(separator: UInt8(ascii: "/")) {
                prefix += "/" + String(decoding: part, as: UTF8.self)
                _ = mkdir(prefix, 0o700)
            }
            var key = [UInt8](repeating: 0, count: keyLength)
            guard key.withUnsafeMutableBytes({ getrandom($0.baseAddress, keyLength, 0) }) == keyLength else { return nil }
            // Written aside and linked into place: two launchers racing
            // agree on whichever key got there first.
            let temporary = path + ".\(getpid())"
            let w = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard w >= 0 else { return nil }
            let ok = key.withUnsafeBytes { write(w, $0.baseAddress, keyLength) } == keyLength && fsync(w) == 0
            close(w)
            if ok { _ = link(temporary, path) }
            unlink(temporary)
            fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        // Only a key no one else could have written or read is a key.
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_uid == geteuid(), st.st_mode & 0o077 == 0,
              st.st_size == keyLength else { return nil }
        var key = [UInt8](repeating: 0, count: keyLength)
        guard key.withUnsafeMutableBytes({ read(fd, $0.baseAddress, keyLength) }) == keyLength else { return nil }
        return key
    }

    /// K for a VM with `config`'s host resources.
    public static func resourceKey(_ config: VMConfiguration, hostKey: [UInt8]) -> [UInt8] {
        var w = StateWriter()
        w.string("skiff snapshot resources 1")
        config.saveHostResources(&w)
        return hmac(key: hostKey, w.bytes)
    }

    public static func seal(_ state: [UInt8], key: [UInt8]) -> [UInt8] { hmac(key: key, state) }

    /// Whether `seal` holds for `state` whose VM had `config`'s resources.
    public static func verify(_ seal: [UInt8], state: [UInt8], config: VMConfiguration, hostKey: [UInt8]) -> Bool {
        let expected = Self.seal(state, key: resourceKey(config, hostKey: hostKey))
        guard seal.count == expected.count else { return false }
        return zip(seal, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0 // constant time
    }

    static func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                out.withUnsafeMutableBufferPointer { ccrypto_hmac_sha256(k.baseAddress, k.count, d.baseAddress, d.count, $0.baseAddress) }
            }
        }
        return out
    }
}

extension VMConfiguration {
    /// The host objects restoring this configuration opens, in one order.
    func saveHostResources(_ w: inout StateWriter) {
        w.u32(UInt32(disks.count))
        for d in disks { w.string(d.path); w.bool(d.readOnly); w.bool(d.direct) }
        w.u32(UInt32(nets.count))
        for n in nets { w.string(n.tap); w.string(n.hostAddress ?? ""); w.string(n.bridge ?? ""); w.bool(n.nat) }
        w.bool(vsock != nil)
        w.string(vsock?.socketPath ?? "")
    }

    /// Each host resource, for messages: "disk /x", "TAP t0 (bridge br0)", ...
    public var hostResourceNames: [String] {
        disks.map { "disk \($0.path)" }
            + nets.map { "TAP \($0.tap)" + ($0.bridge.map { " (bridge \($0))" } ?? "") }
            + (vsock.map { ["vsock socket \($0.socketPath)"] } ?? [])
    }
}
