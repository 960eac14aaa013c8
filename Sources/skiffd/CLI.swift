import ArgumentParser
import Foundation
import SkiffAPI
import SkiffControl

/// `skiff ps|create|start|...`: the manager's CLI, as Docker's users
/// expect it. `skiff` (the small per-VM binary) hands these commands to
/// this program; `skiff run` and the other per-VM commands stay its own.
struct SkiffCLI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "skiff",
        abstract: "Skiff's host manager client: VMs run by skiffd.",
        discussion: "`skiff run`, `restore`, `clone SNAPSHOT`, `kernel` and `initramfs` are the per-VM commands (see `skiff run --help`).",
        version: "skiff \(cliVersion)",
        subcommands: [PS.self, Create.self, Start.self, Stop.self, Kill.self, Pause.self, Resume.self, Remove.self, Logs.self,
                      Inspect.self, Snapshot.self, CloneVM.self, Usage.self, Events.self, AttachCommand.self,
                      ApplianceCommand.self, ImageCommand.self, BackupCommand.self, BackupServerCommand.self, RestoreBackup.self])
}

let cliVersion = "0.10.0"

struct Output: ParsableArguments {
    @Flag(help: "Print JSON instead of a table.") var json = false
}

func withClient<T>(_ body: (Client) async throws -> T) async throws -> T {
    let c = try Connection()
    do {
        let r = try await body(c.client)
        await c.close()
        return r
    } catch {
        await c.close()
        throw error
    }
}

func printJSON<T: Encodable>(_ v: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try e.encode(v), as: UTF8.self))
}

func table(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = [Int](repeating: 0, count: first.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in rows {
        print(r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) }.joined())
    }
}

func age(_ t: Int64?) -> String {
    guard let t else { return "-" }
    let s = Int64(Date().timeIntervalSince1970) - t
    if s < 120 { return "\(s)s" }
    if s < 7200 { return "\(s / 60)m" }
    if s < 172_800 { return "\(s / 3600)h" }
    return "\(s / 86400)d"
}

struct PS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ps", abstract: "List VMs.")
    @Option(help: "Only VMs with this label (key=value).") var label: String?
    @OptionGroup var output: Output
    func run() async throws {
        let list: Components.Schemas.VMList = try await withClient { c in
            switch try await c.listVMs(query: .init(label: label)) {
            case .ok(let r): return try r.body.json
            case .default(let s, let p): throw failure(s, p)
            }
        }
        if output.json { return try printJSON(list.items) }
        var rows = [["NAME", "STATE", "DESIRED", "PID", "CPUS", "MEMORY", "RESTARTS", "CREATED", "STATUS"]]
        for vm in list.items {
            let status = vm.observed == .exited || vm.observed == .stopped ? "\(vm.stopReason ?? "") (\(vm.exitStatus.map(String.init) ?? "?"))" : "up \(age(vm.startedAt))"
            rows.append([vm.name, vm.observed.rawValue, vm.desired.rawValue, vm.pid.map(String.init) ?? "-", String(vm.cpus), "\(vm.memoryMiB)M",
                         String(vm.restarts), age(vm.createdAt) + " ago", status])
        }
        table(rows)
    }
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a VM (and start it, unless --no-start).")
    @Argument(help: "The VM's name.") var name: String
    @Option(help: "Kernel on the host (default: Skiff's).") var kernel: String?
    @Option(help: "Initramfs on the host.") var initrd: String?
    @Option(help: "Kernel command line.") var cmdline: String?
    @Option(help: "Restore this snapshot directory instead of booting.") var snapshot: String?
    @Option(help: "vCPUs.") var cpus: Int?
    @Option(help: "Guest memory in MiB.") var memory: Int64?
    @Option(help: "A disk: PATH[,ro][,nocbt] (repeatable). A writable one gets a changed-block map (PATH.cbt) for backups unless nocbt.") var disk: [String] = []
    @Option(help: "A label key=value (repeatable).") var label: [String] = []
    @Option(help: "Restart policy: no, on-failure, always.") var restart: Components.Schemas.RestartPolicy?
    @Option(help: "CPU shares (relative weight, default 100).") var cpuShares: Int?
    @Option(help: "At most this many host CPUs.") var cpuLimit: Double?
    @Option(help: "Host CPUs reserved for it.") var cpuReservation: Double?
    @Option(help: "Memory limit in MiB.") var memoryLimit: Int64?
    @Option(help: "Memory reserved for it, in MiB.") var memoryReservation: Int64?
    @Flag(help: "Create only; start later with `skiff start`.") var noStart = false
    @OptionGroup var output: Output

    func run() async throws {
        var labels: [String: String] = [:]
        for l in label {
            guard let eq = l.firstIndex(of: "=") else { throw CLIError("--label \(l): give key=value") }
            labels[String(l[..<eq])] = String(l[l.index(after: eq)...])
        }
        let disks = try disk.map { d -> Components.Schemas.Disk in
            var parts = d.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            let path = parts.removeFirst()
            guard !path.isEmpty, parts.allSatisfy({ $0 == "ro" || $0 == "nocbt" }) else { throw CLIError("--disk \(d): give PATH[,ro][,nocbt]") }
            return .init(path: URL(fileURLWithPath: path).path, readOnly: parts.contains("ro"), changeTracking: parts.contains("nocbt") ? false : nil)
        }
        let abs = { (p: String?) in p.map { URL(fileURLWithPath: $0).path } }
        let resources = Components.Schemas.Resources(cpuShares: cpuShares, cpuLimit: cpuLimit, cpuReservation: cpuReservation,
                                                      memoryLimitMiB: memoryLimit, memoryReservationMiB: memoryReservation)
        let body = Components.Schemas.VMCreate(name: name, labels: .init(additionalProperties: labels), kernel: abs(kernel), initrd: abs(initrd),
                                               cmdline: cmdline, cpus: cpus, memoryMiB: memory, disks: disks.isEmpty ? nil : disks,
                                               snapshot: abs(snapshot), restartPolicy: restart, resources: resources, start: !noStart)
        let vm: Components.Schemas.Vm = try await withClient { c in
            switch try await c.createVM(body: .json(body)) {
            case .created(let r): return try r.body.json
            case .default(let s, let p): throw failure(s, p)
            }
        }
        if output.json { try printJSON(vm) } else { print(vm.name) }
    }
}

extension Components.Schemas.RestartPolicy: ExpressibleByArgument {}

/// start, stop, kill, pause, resume: one VM each, printing its state after.
protocol VMAction: AsyncParsableCommand {
    var names: [String] { get }
    func act(_ c: Client, _ name: String) async throws -> Components.Schemas.Vm
}

extension VMAction {
    func run() async throws {
        var failed = false
        try await withClient { c in
            for n in names {
                do { let vm = try await act(c, n); print("\(vm.name) \(vm.observed.rawValue)") } catch {
                    FileHandle.standardError.write(Data("skiff: \(n): \(error)\n".utf8))
                    failed = true
                }
            }
        }
        if failed { throw ExitCode(1) }
    }
}

struct Start: VMAction {
    static let configuration = CommandConfiguration(abstract: "Start stopped VMs.")
    @Argument(help: "VM names.") var names: [String]
    func act(_ c: Client, _ n: String) async throws -> Components.Schemas.Vm {
        switch try await c.startVM(path: .init(name: n)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
    }
}

struct Stop: VMAction {
    static let configuration = CommandConfiguration(abstract: "Stop VMs cleanly, killing each after the timeout.")
    @Argument(help: "VM names.") var names: [String]
    @Option(name: .shortAndLong, help: "Seconds before the VM is killed.") var time: Int = 10
    func act(_ c: Client, _ n: String) async throws -> Components.Schemas.Vm {
        switch try await c.stopVM(path: .init(name: n), body: .json(.init(timeoutSeconds: time))) {
        case .ok(let r): return try r.body.json
        case .default(let s, let p): throw failure(s, p)
        }
    }
}

struct Kill: VMAction {
    static let configuration = CommandConfiguration(abstract: "Kill VMs at once.")
    @Argument(help: "VM names.") var names: [String]
    func act(_ c: Client, _ n: String) async throws -> Components.Schemas.Vm {
        switch try await c.killVM(path: .init(name: n)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
    }
}

struct Pause: VMAction {
    static let configuration = CommandConfiguration(abstract: "Pause running VMs.")
    @Argument(help: "VM names.") var names: [String]
    func act(_ c: Client, _ n: String) async throws -> Components.Schemas.Vm {
        switch try await c.pauseVM(path: .init(name: n)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
    }
}

struct Resume: VMAction {
    static let configuration = CommandConfiguration(abstract: "Resume paused VMs.")
    @Argument(help: "VM names.") var names: [String]
    func act(_ c: Client, _ n: String) async throws -> Components.Schemas.Vm {
        switch try await c.resumeVM(path: .init(name: n)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
    }
}

struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete VMs (stopped ones, or any with --force).")
    @Argument(help: "VM names.") var names: [String]
    @Flag(name: .shortAndLong, help: "Kill a running VM first.") var force = false
    func run() async throws {
        try await withClient { c in
            for n in names {
                switch try await c.deleteVM(path: .init(name: n), query: .init(force: force)) {
                case .noContent: print(n)
                case .default(let s, let p): throw failure(s, p)
                }
            }
        }
    }
}

/// The CLI's streamed output (logs, events). A reader that went away
/// (`| grep -q`, `| head`) ends the command quietly, as it ends cat:
/// Foundation's FileHandle.write would trap on the EPIPE.
func writeStandardOutput(_ bytes: [UInt8]) {
    guard Descriptor.writeAll(STDOUT_FILENO, bytes) else { exit(errno == EPIPE ? 0 : 1) }
}

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a VM's console output.")
    @Argument(help: "The VM's name.") var name: String
    @Flag(name: .shortAndLong, help: "Keep printing new output until the VM stops.") var follow = false
    @Option(help: "At most this many bytes from the end.") var tail: Int?
    func run() async throws {
        try await withClient { c in
            switch try await c.getLogs(path: .init(name: name), query: .init(tail: tail, follow: follow)) {
            case .ok(let r):
                for try await chunk in try r.body.plainText { writeStandardOutput(Array(chunk)) }
            case .default(let s, let p): throw failure(s, p)
            }
        }
    }
}

struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a VM in full (JSON).")
    @Argument(help: "VM names.") var names: [String]
    func run() async throws {
        let vms: [Components.Schemas.Vm] = try await withClient { c in
            var all: [Components.Schemas.Vm] = []
            for n in names {
                switch try await c.getVM(path: .init(name: n)) { case .ok(let r): all.append(try r.body.json); case .default(let s, let p): throw failure(s, p) }
            }
            return all
        }
        try printJSON(vms)
    }
}

struct Snapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Snapshot a running VM (or list its snapshots with --list).")
    @Argument(help: "The VM's name.") var vm: String
    @Argument(help: "The snapshot's name (default: snap-<ms>).") var name: String?
    @Flag(help: "List the VM's snapshots.") var list = false
    @OptionGroup var output: Output
    func run() async throws {
        if list {
            let l: Components.Schemas.SnapshotList = try await withClient { c in
                switch try await c.listSnapshots(path: .init(name: vm)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
            }
            if output.json { return try printJSON(l.items) }
            table([["NAME", "BYTES", "CREATED", "PATH"]] + l.items.map { [$0.name, String($0.bytes), age($0.createdAt) + " ago", $0.path] })
            return
        }
        let s: Components.Schemas.Snapshot = try await withClient { c in
            switch try await c.snapshotVM(path: .init(name: vm), body: .json(.init(name: name))) {
            case .created(let r): return try r.body.json
            case .default(let s, let p): throw failure(s, p)
            }
        }
        if output.json { try printJSON(s) } else { print("\(s.vm)/\(s.name) \(s.bytes) bytes \(s.path)") }
    }
}

struct CloneVM: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clone", abstract: "Start N VMs from a VM's snapshot.")
    @Argument(help: "The VM whose snapshot to clone.") var vm: String
    @Option(name: .shortAndLong, help: "How many.") var count: Int = 1
    @Option(help: "Which snapshot (default: its newest).") var snapshot: String?
    @Option(help: "Clones are named PREFIX-N (default: VM-clone).") var prefix: String?
    func run() async throws {
        let l: Components.Schemas.VMList = try await withClient { c in
            switch try await c.cloneVM(path: .init(name: vm), body: .json(.init(count: count, snapshot: snapshot, namePrefix: prefix))) {
            case .created(let r): return try r.body.json
            case .default(let s, let p): throw failure(s, p)
            }
        }
        for v in l.items { print(v.name) }
    }
}

struct Usage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "What each VM used (metered per minute).")
    @Option(help: "From (Unix seconds).") var from: Int64?
    @Option(help: "To (Unix seconds).") var to: Int64?
    @Option(help: "table, csv or json.") var format: String = "table"
    func run() async throws {
        let u: Components.Schemas.Usage = try await withClient { c in
            switch try await c.getUsage(query: .init(from: from, to: to)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
        }
        let head = ["VM", "VCPU_S", "MEM_GIB_S", "RUNNING_S", "PAUSED_S", "DISK_R", "DISK_W", "NET_RX", "NET_TX", "SNAPSHOT_BYTES"]
        let rows = u.items.map { i in
            [i.vm, String(format: "%.3f", i.vcpuSeconds), String(format: "%.4f", i.memoryGiBSeconds), String(format: "%.1f", i.secondsRunning),
             String(format: "%.1f", i.secondsPaused), String(i.diskReadBytes), String(i.diskWriteBytes), String(i.netRxBytes), String(i.netTxBytes),
             String(i.snapshotBytes)]
        }
        switch format {
        case "json": try printJSON(u)
        case "csv": for r in [head] + rows { print(r.joined(separator: ",")) }
        case "table": table([head] + rows)
        default: throw CLIError("--format \(format): table, csv or json")
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Lifecycle events.")
    @Option(help: "After this sequence number.") var since: Int64 = 0
    @Flag(name: .shortAndLong, help: "Keep printing new events as they happen (a stream from skiffd; ends when it stops).") var follow = false
    @Flag(help: "One JSON object per event.") var json = false
    func run() async throws {
        try await withClient { c in
            let reply = try await c.getEvents(query: .init(since: since, follow: follow ? true : nil),
                                              headers: .init(accept: [.init(contentType: follow ? .applicationXNdjson : .json)]))
            switch reply {
            case .ok(let r):
                switch r.body {
                case .json(let list): for e in list.items { try show(e) }
                case .applicationXNdjson(let body):
                    var pending: [UInt8] = []
                    for try await chunk in body {
                        pending += chunk
                        while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                            let line = pending[..<nl]
                            pending.removeSubrange(...nl)
                            try show(JSONDecoder().decode(Components.Schemas.Event.self, from: Data(line)))
                        }
                    }
                }
            case .default(let s, let p): throw failure(s, p)
            }
        }
    }

    /// One line per event, written at once (a follower's reader sees it as it comes, even through a pipe).
    private func show(_ e: Components.Schemas.Event) throws {
        var line: Data
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            line = try encoder.encode(e)
        } else {
            line = Data("\(e.seq) \(Date(timeIntervalSince1970: Double(e.time) / 1000)) \(e.vm) \(e.kind)\(e.detail.map { " " + $0 } ?? "")".utf8)
        }
        line.append(UInt8(ascii: "\n"))
        writeStandardOutput(Array(line))
    }
}
