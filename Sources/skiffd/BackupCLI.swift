import ArgumentParser
import Backup
import Foundation

/// `skiff backup-server`: the chunk store (its own process; `Backup.BackupServer`).
struct BackupServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup-server",
        abstract: "Serve a backup store: deduplicated chunks shared by hosts, each host seeing only its own backups.",
        discussion: "TOKENS has one `HOST TOKEN` line per host. Without TLS the server listens on loopback only.")

    @Option(help: "The store's directory.") var dir = "/var/lib/skiff/backup"
    @Option(help: "HOST:PORT to listen on.") var listen = "127.0.0.1:8420"
    @Option(help: "The tokens file (`HOST TOKEN` per line).") var tokens: String
    @Option(help: "TLS: the server's certificate chain (PEM).") var tlsCert: String?
    @Option(help: "TLS: the server's private key (PEM).") var tlsKey: String?

    func run() async throws {
        Allocator.keepLargeBuffers()
        var o = BackupServer.Options()
        o.directory = URL(fileURLWithPath: dir).path
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen \(listen): give HOST:PORT")
        }
        o.host = String(listen[..<colon])
        o.port = port
        o.tokenFile = tokens
        o.tlsCertificate = tlsCert
        o.tlsKey = tlsKey
        do { try await BackupServer.run(o) } catch { throw CLIError("\(error)") }
    }
}

/// Where the backup server is, and this host's token.
struct BackupServerOptions: ParsableArguments {
    @Option(help: "The backup server, http(s)://HOST:PORT (default: $SKIFF_BACKUP_SERVER).") var server: String?
    @Option(help: "A file holding this host's token (default: $SKIFF_BACKUP_TOKEN_FILE).") var tokenFile: String?
    @Option(help: "For https: the CA certificate (PEM) to trust.") var caCert: String?

    func connect() throws -> ServerConnection {
        let env = ProcessInfo.processInfo.environment
        guard let url = server ?? env["SKIFF_BACKUP_SERVER"] else { throw CLIError("give --server URL (or set SKIFF_BACKUP_SERVER)") }
        guard let file = tokenFile ?? env["SKIFF_BACKUP_TOKEN_FILE"] else { throw CLIError("give --token-file FILE (or set SKIFF_BACKUP_TOKEN_FILE)") }
        guard let token = try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty else {
            throw CLIError("--token-file \(file): cannot read a token from it")
        }
        do { return try ServerConnection(.init(url: url, token: token, caCertificate: caCert)) } catch { throw CLIError("\(error)") }
    }
}

func withServer<T>(_ o: BackupServerOptions, _ body: (ServerConnection) async throws -> T) async throws -> T {
    Allocator.keepLargeBuffers()
    let c = try o.connect()
    do {
        let r = try await body(c)
        await c.close()
        return r
    } catch {
        await c.close()
        if error is CLIError || error is ExitCode { throw error }
        throw CLIError("\(error)")
    }
}

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back VMs up to a backup server: incremental (changed-block maps), deduplicated, optionally encrypted.",
        discussion: """
            `skiff backup VM` backs up a VM of skiffd's, through skiffd (its --backup-server), and waits for the job; \
            `skiff backup schedule VM` sets when that happens by itself. The other commands talk to the backup server \
            directly: `create` backs up image files (or a VM you run yourself, through its control socket).
            """,
        subcommands: [BackupVM.self, Schedule.self, Jobs.self, Create.self, Restore.self, Show.self, List.self, Files.self, Verify.self,
                      Prune.self, Remove.self, Collect.self, Key.self],
        defaultSubcommand: BackupVM.self)

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Back up a VM's disks.",
            discussion: """
            A stopped VM's disks are read as they are; a running one's through --control-socket, which pauses it for the \
            moment its disks' changed-block maps are taken (crash-consistent) while the backup reads a frozen view. \
            Disks tracked with `--disk PATH,cbt` (or backed up once) are backed up incrementally.
            """)
        @OptionGroup var server: BackupServerOptions
        @Option(help: "The VM's name (backups are grouped by it).") var vm: String
        @Option(help: "A disk image (repeat for each, in the VM's order).") var disk: [String]
        @Option(help: "The running VM's control socket.") var controlSocket: String?
        @Option(help: "With --control-socket: the VM's vsock socket, whose guest agent freezes the filesystems for the moment (application-consistent).") var vsockSocket: String?
        @Option(help: "Encrypt chunks with this key (skiff backup key FILE).") var keyFile: String?
        @Option(help: "Where a running VM's copy-before-write files go (default: beside the first disk).") var workDir: String?
        @Option(help: "A document kept with the backup (skiffd keeps the VM's configuration there).") var configFile: String?
        @Option(help: "Chunks read, hashed and sent at once.") var jobs = DiskBackup.Options.defaultJobs
        @Flag(help: "Print the report as JSON.") var json = false

        func run() async throws {
            guard !disk.isEmpty else { throw ValidationError("give at least one --disk") }
            var config: String?
            if let f = configFile {
                guard let data = FileManager.default.contents(atPath: f), data.count <= 1 << 20 else { throw CLIError("--config-file \(f): cannot read it, or over 1 MiB") }
                config = String(decoding: data, as: UTF8.self)
            }
            var o = DiskBackup.Options(vm: vm, disks: disk.map { URL(fileURLWithPath: $0).path })
            o.controlSocket = controlSocket
            o.agentSocket = vsockSocket
            o.workDirectory = workDir
            guard (1...64).contains(jobs) else { throw ValidationError("--jobs \(jobs): between 1 and 64") }
            o.jobs = jobs
            o.config = config
            o.key = try keyFile.map { f in do { return try BackupKey.load(f) } catch { throw CLIError("\(error)") } }
            let r = try await withServer(server) { try await DiskBackup.run(o, server: $0) }
            if json { try printJSON(r); return }
            for n in r.notes { FileHandle.standardError.write(Data("skiff: \(n)\n".utf8)) }
            print("backup \(r.id) of \(r.vm): \(r.mode), \(r.consistency)\(r.pausedMs.map { String(format: ", paused %.1f ms", $0) } ?? "")")
            print(String(format: "read %.1f MiB in %d chunks, sent %.1f MiB in %d new chunks, %.2f s", Double(r.bytesRead) / 1048576, r.chunksRead,
                         Double(r.bytesSent) / 1048576, r.newChunks, r.seconds))
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Restore a backup's disks to image files.")
        @OptionGroup var server: BackupServerOptions
        @Argument(help: "The backup's id (skiff backup ls).") var id: String
        @Option(help: "Where each disk goes (repeat for each, in order).") var diskOutput: [String]
        @Option(help: "The key the backup was encrypted with.") var keyFile: String?
        @Flag(help: "Replace output files that exist.") var force = false
        @Option(help: ArgumentHelp("Live: serve each disk on this socket while it is restored (one per --disk-output); start the VM at once with --disk OUTPUT,fill=SOCKET.",
                                   valueName: "socket")) var live: [String] = []
        @Flag(help: "Print the report as JSON.") var json = false

        func run() async throws {
            let key = try keyFile.map { f in do { return try BackupKey.load(f) } catch { throw CLIError("\(error)") } }
            if !live.isEmpty {
                guard live.count == diskOutput.count else { throw ValidationError("give one --live socket for each --disk-output") }
                let outputs = diskOutput.map { URL(fileURLWithPath: $0).path }, sockets = live.map { URL(fileURLWithPath: $0).path }
                let (id, force) = (self.id, self.force)
                let reports = try await withServer(server) { s in
                    try await withThrowingTaskGroup(of: LiveRestore.Report.self) { group in
                        for (i, (output, socket)) in zip(outputs, sockets).enumerated() {
                            group.addTask {
                                try await LiveRestore.run(id: id, index: i, output: output, socket: socket, key: key, overwrite: force, server: s) {
                                    FileHandle.standardError.write(Data("skiff: \(output) is ready: start the VM with --disk \(output),fill=\(socket)\n".utf8))
                                }
                            }
                        }
                        var all: [LiveRestore.Report] = []
                        for try await r in group { all.append(r) }
                        return all.sorted { $0.disk < $1.disk }
                    }
                }
                if json { try printJSON(reports); return }
                for r in reports {
                    print(String(format: "restored %@ to %@ live: %.1f MiB written, %.1f MiB fetched, %d chunks asked for by the VM first, %.2f s",
                                 r.id, r.disk, Double(r.bytesWritten) / 1048576, Double(r.bytesFetched) / 1048576, r.askedFor, r.seconds))
                }
                return
            }
            let r = try await withServer(server) {
                try await DiskRestore.run(id: id, outputs: diskOutput.map { URL(fileURLWithPath: $0).path }, key: key, overwrite: force, server: $0)
            }
            if json { try printJSON(r); return }
            print(String(format: "restored %@ to %@: %.1f MiB written, %.1f MiB fetched, %.2f s", r.id, r.disks.joined(separator: ", "),
                         Double(r.bytesWritten) / 1048576, Double(r.bytesFetched) / 1048576, r.seconds))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One backup: its disks, how it was made, and the configuration kept with it.")
        @OptionGroup var server: BackupServerOptions
        @Argument(help: "The backup's id.") var id: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let m = try await withServer(server) { try await $0.manifest(id) }
            do { try m.validate() } catch { throw CLIError("backup \(id): \(error)") }
            struct Disk: Encodable { var name: String; var bytes: UInt64; var chunks: Int; var stored: Int }
            struct Shown: Encodable {
                var id: String, vm: String, createdAt: Int64, consistency: String, encrypted: Bool, disks: [Disk], config: String?
            }
            let shown = Shown(id: m.id, vm: m.vm, createdAt: m.createdAt, consistency: m.consistency, encrypted: m.keyFingerprint != nil,
                              disks: m.disks.map { Disk(name: $0.name, bytes: $0.bytes, chunks: $0.chunks.count, stored: $0.chunks.compactMap { $0 }.count) },
                              config: m.config)
            if json { try printJSON(shown); return }
            print("backup \(m.id) of \(m.vm), \(age(m.createdAt)) ago, \(m.consistency)\(m.keyFingerprint.map { ", encrypted (key \($0))" } ?? "")")
            for d in shown.disks { print(String(format: "  %@: %.1f GiB, %d of %d chunks stored (the rest zero)", d.name, Double(d.bytes) / 1073741824, d.stored, d.chunks)) }
            if let c = m.config { print("configuration: \(c.prefix(2000))") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List this host's backups.")
        @OptionGroup var server: BackupServerOptions
        @Option(help: "Only this VM's.") var vm: String?
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let list = try await withServer(server) { try await $0.list(vm: vm) }
            if json { try printJSON(list); return }
            table([["ID", "VM", "CREATED", "DISKS", "SIZE", "CHUNKS", "CONSISTENCY", "ENCRYPTED"]] + list.map { b in
                [b.id, b.vm, age(b.createdAt), "\(b.disks)", String(format: "%.1f GiB", Double(b.bytes) / 1073741824), "\(b.chunks)",
                 b.consistency, b.encrypted ? "yes" : "no"]
            })
        }
    }

    struct Files: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a directory of a backed-up ext4 disk, or copy a file out of it, without booting or restoring it.",
            discussion: "Only the chunks the filesystem's structures and the file need are fetched (and checked).")
        @OptionGroup var server: BackupServerOptions
        @Argument(help: "The backup's id.") var id: String
        @Argument(help: "An absolute path in the disk's filesystem.") var path = "/"
        @Option(help: "Which disk of the backup (0 is the first).") var disk = 0
        @Option(help: "Copy the file here (- for standard output) instead of listing.") var output: String?
        @Option(help: "The key the backup was encrypted with.") var keyFile: String?
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let key = try keyFile.map { f in do { return try BackupKey.load(f) } catch { throw CLIError("\(error)") } }
            try await withServer(server) { s in
                let m = try await s.manifest(id)
                try m.validate()
                guard m.disks.indices.contains(disk) else { throw CLIError("backup \(id) has \(m.disks.count) disks; --disk \(disk)") }
                guard m.keyFingerprint == key?.fingerprint else { throw CLIError(m.keyFingerprint == nil ? "backup \(id) is not encrypted: leave out --key-file" : "backup \(id) is encrypted: give its --key-file") }
                let source = ChunkedDisk(m.disks[disk], key: key, server: s)
                let fs = try await Ext4.open(size: m.disks[disk].bytes) { offset, count in try await source.read(offset, count) }
                if let output {
                    let bytes = try await fs.file(path)
                    if output == "-" { FileHandle.standardOutput.write(Data(bytes)) } else {
                        guard FileManager.default.createFile(atPath: output, contents: Data(bytes)) else { throw CLIError("\(output): cannot write it") }
                        FileHandle.standardError.write(Data("skiff: \(path): \(bytes.count) bytes to \(output) (\(await source.fetched) chunks fetched)\n".utf8))
                    }
                    return
                }
                let entries = try await fs.list(path)
                if json {
                    struct E: Encodable { var name: String; var kind: String; var size: UInt64; var mode: String }
                    try printJSON(entries.map { E(name: $0.name, kind: $0.kind.rawValue, size: $0.size, mode: String($0.mode & 0o7777, radix: 8)) })
                } else {
                    for e in entries {
                        let k = e.kind == .directory ? "d" : e.kind == .symlink ? "l" : e.kind == .file ? "-" : "?"
                        print("\(k)\(String(e.mode & 0o7777, radix: 8).leftPadded(4, "0"))  \(String(e.size).leftPadded(12, " "))  \(e.name)")
                    }
                }
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check every chunk of this host's backups; name the damaged ones and the backups they break (exit 1).")
        @OptionGroup var server: BackupServerOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let r = try await withServer(server) { try await $0.verify() }
            if json { try printJSON(r) } else {
                for b in r.broken { print("chunk \(b.chunk): \(b.problem); breaks \(b.backups.joined(separator: ", "))") }
                print("\(r.checked) chunks checked, \(r.broken.count) damaged")
            }
            if !r.broken.isEmpty { throw ExitCode(1) }
        }
    }

    struct Prune: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove backups a retention policy does not keep (their chunks go at the next gc).")
        @OptionGroup var server: BackupServerOptions
        @Option(help: "Only this VM's backups.") var vm: String?
        @Option var keepLast = 0
        @Option var keepDaily = 0
        @Option var keepWeekly = 0
        @Option var keepMonthly = 0
        @Flag(help: "Say what would go, remove nothing.") var dryRun = false
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let keep = Retention(last: keepLast, daily: keepDaily, weekly: keepWeekly, monthly: keepMonthly)
            let r = try await withServer(server) { try await $0.prune(vm: vm, keep: keep, dryRun: dryRun) }
            if json { try printJSON(r); return }
            for id in r.removed { print("\(dryRun ? "would remove" : "removed") \(id)") }
            print("kept \(r.kept.count), \(dryRun ? "would remove" : "removed") \(r.removed.count)")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove backups (their chunks go at the next gc).")
        @OptionGroup var server: BackupServerOptions
        @Argument var ids: [String]
        func run() async throws {
            try await withServer(server) { s in for id in ids { try await s.delete(id); print("removed \(id)") } }
        }
    }

    struct Collect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "gc", abstract: "Remove chunks no backup holds (safe while backups run).")
        @OptionGroup var server: BackupServerOptions
        func run() async throws {
            let r = try await withServer(server) { try await $0.collect() }
            print(String(format: "%d chunks kept, %d removed, %.1f MiB freed", r.kept, r.removed, Double(r.freedBytes) / 1048576))
        }
    }

    struct Key: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a new random backup key (keep a copy: without it the backups cannot be read).")
        @Argument(help: "The key file to create (mode 0600).") var file: String
        func run() async throws {
            do { try BackupKey.create(file) } catch { throw CLIError("\(error)") }
            print("key \(try BackupKey.load(file).fingerprint) in \(file)")
        }
    }
}

extension String {
    func leftPadded(_ n: Int, _ pad: Character) -> String { count >= n ? self : String(repeating: pad, count: n - count) + self }
}
