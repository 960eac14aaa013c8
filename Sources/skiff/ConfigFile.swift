import Devices
import Glibc
import Machine
import VMM

/// `skiff run --config FILE`: one JSON document describing the VM, in the
/// shape of Firecracker's `--config-file` (boot-source, machine-config,
/// drives, network-interfaces, vsock, balloon, entropy), so that a
/// Firecracker user's file runs here as it is; Skiff's own settings go in
/// a "skiff" object. Applied where --config stands among the flags: flags
/// after it override its values, and their disks and NICs come after its.
///
/// Unknown members are refused, not ignored (a misspelt "is_read_only"
/// must not give the guest a writable disk), and so are Firecracker's
/// features Skiff does not have (rate limiters, MMDS, a logger), unless null.
extension RunOptions {
    mutating func apply(configFile path: String) throws(ConfigurationError) {
        // A pipe or /dev/zero is read only until it passes the limit.
        let bytes = try HostFiles.read(path, what: "--config", limit: UInt64(JSONValue.maxBytes), regularOnly: false,
                                       tooLarge: { _ in "larger than \(JSONValue.maxBytes) bytes" })
        do { try apply(config: try JSONValue.parse(bytes)) } catch { throw ConfigurationError("--config \(path): \(error.description)") }
    }

    mutating func apply(config: JSONValue) throws(ConfigurationError) {
        let top = try Document(config, "the document")
        try top.only(["boot-source", "machine-config", "drives", "network-interfaces", "vsock", "balloon", "entropy", "skiff"],
                     unsupported: ["logger", "metrics", "mmds-config", "cpu-config", "serial"])
        if let boot = try top.object("boot-source") {
            try boot.only(["kernel_image_path", "initrd_path", "boot_args"])
            kernel = try boot.string("kernel_image_path") ?? kernel
            initrd = try boot.string("initrd_path") ?? initrd
            cmdline = try boot.string("boot_args") ?? cmdline
        }
        if let m = try top.object("machine-config") {
            try m.only(["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "cpu_template"], unsupported: ["huge_pages"])
            if let n = try m.integer("vcpu_count") { cpus = n }
            if let n = try m.integer("mem_size_mib") {
                guard n >= 0 else { throw ConfigurationError("machine-config.mem_size_mib \(n): not a size") }
                memoryMiB = UInt64(n)
            }
            if try m.bool("smt") == true { throw ConfigurationError("machine-config.smt: Skiff's vCPUs have no SMT siblings; give false") }
            if let t = try m.bool("track_dirty_pages") { trackDirtyPages = t }
            if let name = try m.string("cpu_template"), name != "None" {
                guard let t = CPUTemplate(rawValue: name) else {
                    throw ConfigurationError("machine-config.cpu_template \(name): unknown (Skiff's: \(CPUTemplate.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                template = t
            }
        }
        var rootDevice: (index: Int, readOnly: Bool)?
        for (i, d) in try top.objects("drives").enumerated() {
            try d.only(["drive_id", "path_on_host", "is_root_device", "is_read_only", "cache_type", "io_engine"],
                       unsupported: ["partuuid", "rate_limiter", "socket"])
            guard let path = try d.string("path_on_host") else { throw ConfigurationError("drives[\(i)]: needs path_on_host") }
            var o = Block.Options(path: path)
            o.id = try d.string("drive_id")
            o.readOnly = try d.bool("is_read_only") ?? false
            if let c = try d.string("cache_type"), c != "Unsafe", c != "Writeback" {
                throw ConfigurationError("drives[\(i)].cache_type \(c): Unsafe or Writeback")
            }
            if let e = try d.string("io_engine"), e != "Sync" { throw ConfigurationError("drives[\(i)].io_engine \(e): Skiff has Sync") }
            if try d.bool("is_root_device") == true {
                guard rootDevice == nil else { throw ConfigurationError("drives: more than one is_root_device") }
                rootDevice = (disks.count, o.readOnly)
            }
            disks.append(o)
        }
        for (i, n) in try top.objects("network-interfaces").enumerated() {
            try n.only(["iface_id", "host_dev_name", "guest_mac"], unsupported: ["rx_rate_limiter", "tx_rate_limiter"])
            guard let tap = try n.string("host_dev_name"), !tap.isEmpty else { throw ConfigurationError("network-interfaces[\(i)]: needs host_dev_name") }
            var spec = "tap=" + tap
            if let mac = try n.string("guest_mac") { spec += ",mac=" + mac }
            guard !tap.contains(",") else { throw ConfigurationError("network-interfaces[\(i)].host_dev_name: a ',' in an interface name") }
            nets.append(try Self.net(spec, index: nets.count))
        }
        if let v = try top.object("vsock") {
            try v.only(["guest_cid", "uds_path", "vsock_id"])
            guard let cid = try v.integer("guest_cid"), cid >= 0, let socket = try v.string("uds_path") else {
                throw ConfigurationError("vsock: needs guest_cid and uds_path")
            }
            vsock = Vsock.Options(cid: UInt64(cid), socketPath: socket)
        }
        if let b = try top.object("balloon") {
            try b.only(["amount_mib", "deflate_on_oom", "stats_polling_interval_s", "free_page_reporting"])
            var o = Balloon.Options()
            if let n = try b.integer("amount_mib") {
                guard let m = UInt32(exactly: n) else { throw ConfigurationError("balloon.amount_mib \(n): not a size") }
                o.targetMiB = m
            }
            o.deflateOnOOM = try b.bool("deflate_on_oom") ?? o.deflateOnOOM
            o.freePageReporting = try b.bool("free_page_reporting") ?? o.freePageReporting
            balloon = o
        }
        if let e = try top.object("entropy") {
            try e.only([], unsupported: ["rate_limiter"])
            rng = true
        }
        if let s = try top.object("skiff") {
            try s.only(["control_socket", "exit_file", "append"])
            controlSocket = try s.string("control_socket") ?? controlSocket
            exitFile = try s.string("exit_file") ?? exitFile
            if let a = try s.string("append") { append.append(a) }
        }
        if let root = rootDevice {
            // As Firecracker does: the root device named on the command line.
            guard root.index < 26 else { throw ConfigurationError("drives: the root device must be one of the first 26") }
            let letter = Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(root.index)))
            append.append("root=/dev/vd\(letter) \(root.readOnly ? "ro" : "rw")")
        }
    }
}

/// One JSON object (of the config file, of an image's manifest), with typed, checked members.
struct Document {
    let members: [(String, JSONValue)]
    let at: String

    init(_ v: JSONValue, _ at: String) throws(ConfigurationError) {
        guard case .object(let m) = v else { throw ConfigurationError("\(at): expected an object") }
        members = m; self.at = at
    }

    func value(_ key: String) -> JSONValue? {
        guard let v = members.first(where: { $0.0 == key })?.1, v != .null else { return nil }
        return v
    }

    func only(_ known: Set<String>, unsupported: Set<String> = []) throws(ConfigurationError) {
        for (k, v) in members where !known.contains(k) {
            if unsupported.contains(k) {
                guard v == .null else { throw ConfigurationError("\(at): \"\(k)\" is not supported by Skiff (remove it or give null)") }
                continue
            }
            throw ConfigurationError("\(at): unknown member \"\(k.prefix(80))\" (known: \(known.sorted().joined(separator: ", ")))")
        }
    }

    func object(_ key: String) throws(ConfigurationError) -> Document? {
        guard let v = value(key) else { return nil }
        return try Document(v, "\(at == "the document" ? "" : at + ".")\(key)")
    }

    func objects(_ key: String) throws(ConfigurationError) -> [Document] {
        guard let v = value(key) else { return [] }
        guard case .array(let items) = v else { throw ConfigurationError("\(key): expected an array") }
        var out: [Document] = []
        for (i, item) in items.enumerated() { out.append(try Document(item, "\(key)[\(i)]")) }
        return out
    }

    func string(_ key: String) throws(ConfigurationError) -> String? {
        guard let v = value(key) else { return nil }
        guard case .string(let s) = v else { throw ConfigurationError("\(at).\(key): expected a string") }
        guard !s.utf8.contains(0) else { throw ConfigurationError("\(at).\(key): a NUL byte") }
        return s
    }

    func integer(_ key: String) throws(ConfigurationError) -> Int? {
        guard let v = value(key) else { return nil }
        guard case .number(let d) = v, let n = Int(exactly: d) else { throw ConfigurationError("\(at).\(key): expected a whole number") }
        return n
    }

    func strings(_ key: String) throws(ConfigurationError) -> [String]? {
        guard let v = value(key) else { return nil }
        guard case .array(let items) = v else { throw ConfigurationError("\(at).\(key): expected an array of strings") }
        var out: [String] = []
        for item in items {
            guard case .string(let s) = item, !s.utf8.contains(0) else { throw ConfigurationError("\(at).\(key): expected strings without NUL bytes") }
            out.append(s)
        }
        return out
    }

    func bool(_ key: String) throws(ConfigurationError) -> Bool? {
        guard let v = value(key) else { return nil }
        guard case .bool(let b) = v else { throw ConfigurationError("\(at).\(key): expected true or false") }
        return b
    }
}
