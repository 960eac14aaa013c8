// skiffd: the host manager (`skiffd [options]`), and the manager's CLI
// when `skiff` hands it a command (`skiffd --client ps ...`): one binary,
// so the generated API types are linked once.
import ArgumentParser
import Foundation
import Skiffd

struct SkiffdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "skiffd",
        abstract: "Skiff's host manager: a REST API (openapi.yaml) that runs many VMs and meters them.",
        discussion: "VMs keep running when skiffd stops; the next skiffd adopts them. The CLI is `skiff ps`, `skiff create`, ...",
        version: "skiffd \(cliVersion)")

    @Option(help: "State: the database and each VM's files.") var stateDir = "/var/lib/skiff"
    @Option(help: "The Unix socket (root and the skiff group).") var socket = "/run/skiff/skiffd.sock"
    @Option(help: "The skiff binary that runs each VM (default: the one beside skiffd).") var skiff: String?
    @Option(help: "Also listen on HOST:PORT (bearer token required).") var tcp: String?
    @Option(help: "A file with the bearer token for --tcp.") var tokenFile: String?
    @Option(help: "TLS for --tcp: the server's certificate chain (PEM).") var tlsCert: String?
    @Option(help: "TLS for --tcp: the server's private key (PEM).") var tlsKey: String?
    @Option(help: "At most this many VMs on this host (created ones count, running or not).") var maxVms = 1000
    @Option(help: "Back VMs up to this backup server, http(s)://HOST:PORT (`skiff backup VM`, schedules).") var backupServer: String?
    @Option(help: "With --backup-server: a file holding this host's token.") var backupTokenFile: String?
    @Option(help: "With --backup-server over https: the CA certificate (PEM) to trust.") var backupCaCert: String?
    @Option(help: "With --backup-server: encrypt backups with this key (skiff backup key FILE).") var backupKeyFile: String?

    func run() async throws {
        var o = Daemon.Options()
        o.stateDirectory = URL(fileURLWithPath: stateDir).path
        o.socket = URL(fileURLWithPath: socket).path
        o.skiff = skiff.map { URL(fileURLWithPath: $0).path }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("skiff").path
        o.tcp = tcp
        o.tokenFile = tokenFile
        o.tlsCertificate = tlsCert
        o.tlsKey = tlsKey
        o.maxVMs = maxVms
        if let server = backupServer {
            guard let token = backupTokenFile else { throw ValidationError("--backup-server needs --backup-token-file") }
            let abs = { (p: String?) in p.map { URL(fileURLWithPath: $0).path } }
            o.backupTarget = BackupTarget(server: server, tokenFile: URL(fileURLWithPath: token).path, caCertificate: abs(backupCaCert), keyFile: abs(backupKeyFile))
        } else if backupTokenFile != nil || backupCaCert != nil || backupKeyFile != nil {
            throw ValidationError("--backup-token-file, --backup-ca-cert and --backup-key-file go with --backup-server")
        }
        do { try await Daemon.run(o) } catch {
            FileHandle.standardError.write(Data("skiffd: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// The async entry point (the more specific overload, which the plain
/// call does not pick at top level).
func runAsync<C: AsyncParsableCommand>(_: C.Type, _ arguments: [String]) async { await C.main(arguments) }

var arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--client" {
    await runAsync(SkiffCLI.self, Array(arguments.dropFirst()))
} else {
    await runAsync(SkiffdCommand.self, arguments)
}
