import Foundation
import Glibc
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import HummingbirdWebSocket
import Logging
import NIOCore
import OpenAPIHummingbird
import OpenAPIRuntime
import ServiceLifecycle
import SkiffAPI
import SkiffControl

/// skiffd: the REST API on a Unix socket (root and the `skiff` group) and,
/// when configured, on TCP with a bearer token; the reconcile loop and the
/// meter beside it. VMs are not children skiffd waits on: they keep
/// running when it stops, and the next skiffd adopts them.
public struct Daemon: Sendable {
    public struct Options: Sendable {
        public var stateDirectory = "/var/lib/skiff"
        public var socket = "/run/skiff/skiffd.sock"
        public var skiff = "/usr/bin/skiff"
        /// `host:port` to listen on with bearer tokens, or nil.
        public var tcp: String?
        /// A file holding the bearer token TCP clients must send.
        public var tokenFile: String?
        /// PEM files: the certificate chain and private key TCP is served
        /// with. Without them TCP is allowed on a loopback address only
        /// (a token must not cross a network in the clear).
        public var tlsCertificate: String?
        public var tlsKey: String?
        /// Creates beyond this many VMs are refused (422).
        public var maxVMs = 1000
        /// Where `POST /vms/{name}/backups` and schedules send backups.
        public var backupTarget: BackupTarget?
        public init() {}
    }

    /// Request bodies larger than this are refused (413).
    public static let maxBody = 1 << 20

    public static func run(_ options: Options) async throws {
        var logger = Logger(label: "skiffd")
        logger.logLevel = .info
        // Each VM's control socket is <state>/vms/<16 hex>/control.sock: it must fit sun_path.
        let longest = options.stateDirectory.utf8.count + "/vms/0123456789abcdef/control.sock".utf8.count
        guard longest < 108 else {
            throw ManagerError.invalid("--state-dir \(options.stateDirectory): too long for a VM's control socket path (\(longest) of 107 bytes); pick a shorter one")
        }
        try makeDirectories(options.stateDirectory + "/vms", mode: 0o700)
        let socketDirectory = (options.socket as NSString).deletingLastPathComponent
        try makeDirectories(socketDirectory, mode: 0o750)
        if let g = getgrnam("skiff") { chown(socketDirectory, 0, g.pointee.gr_gid) }
        try claimSocket(options.socket)

        let store = try Store(path: options.stateDirectory + "/skiffd.sqlite")
        let manager = Manager(store: store, stateDirectory: options.stateDirectory, skiff: options.skiff,
                              maxVMs: options.maxVMs, backupTarget: options.backupTarget, logger: logger)
        let report = try await manager.recover()
        logger.info("skiffd \(Handler.version): state \(options.stateDirectory), \(report)")

        var services: [any Service] = [ReconcileService(manager: manager, logger: logger)]
        services.append(try application(manager, address: .unixDomainSocket(path: options.socket), token: nil, logger: logger,
                                        onRunning: { permitSocket(options.socket) }))
        if let tcp = options.tcp {
            guard let file = options.tokenFile, let token = try? String(contentsOfFile: file, encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines), token.utf8.count >= 16 else {
                throw ManagerError.invalid("--tcp needs --token-file with a token of at least 16 characters")
            }
            let parts = tcp.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw ManagerError.invalid("--tcp \(tcp): give HOST:PORT") }
            let host = String(parts[0])
            let tls = try tlsConfiguration(options)
            guard tls != nil || ["127.0.0.1", "localhost", "::1"].contains(host) else {
                throw ManagerError.invalid("--tcp \(tcp): TCP beyond this host needs TLS (--tls-cert FILE --tls-key FILE); plain TCP only on 127.0.0.1")
            }
            services.append(try application(manager, address: .hostname(host, port: port), token: token, tls: tls, logger: logger, onRunning: {}))
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        unlink(options.socket)
    }

    /// The server's TLS settings from --tls-cert and --tls-key (both or neither).
    static func tlsConfiguration(_ options: Options) throws -> TLSConfiguration? {
        switch (options.tlsCertificate, options.tlsKey) {
        case (nil, nil): return nil
        case (let cert?, let key?):
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(cert)
                guard !chain.isEmpty else { throw ManagerError.invalid("--tls-cert \(cert): no certificate in it") }
                let privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
                var c = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
                c.minimumTLSVersion = .tlsv12
                return c
            } catch let e as ManagerError { throw e } catch {
                throw ManagerError.invalid("--tls-cert \(cert) / --tls-key \(key): \(error)")
            }
        default: throw ManagerError.invalid("give both --tls-cert and --tls-key")
        }
    }

    static func application(_ manager: Manager, address: BindAddress, token: String?, tls: TLSConfiguration? = nil, logger: Logger,
                            onRunning: @escaping @Sendable () -> Void) throws -> some Service {
        let router = Router()
        router.add(middleware: ServerTimingMiddleware())
        router.add(middleware: ProblemMiddleware())
        if let token { router.add(middleware: BearerMiddleware(token: token)) }
        router.add(middleware: BodyLimitMiddleware())
        try Handler(manager: manager).registerHandlers(on: router, serverURL: URL(string: "/v1")!, middlewares: [AbsentBodyMiddleware()])
        router.get("/metrics") { _, _ in
            let text = try await manager.prometheusText()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        // attach is a WebSocket (Attach.router), which OpenAPI does not
        // describe; a plain GET of it is told so.
        router.get("/v1/vms/:name/attach") { _, context -> Response in
            let name = try context.parameters.require("name")
            _ = try await manager.console(name)
            throw HTTPError(.upgradeRequired, headers: [.upgrade: "websocket", .connection: "Upgrade"],
                            message: "attach is a WebSocket: send Upgrade: websocket (skiff attach \(name))")
        }
        // WebSocket upgrades (attach) go to their own router; everything else to the API's.
        let http: HTTPServerBuilder = .http1WebSocketUpgrade(webSocketRouter: Attach.router(manager, token: token))
        return Application(router: router, server: try tls.map { try .tls(http, tlsConfiguration: $0) } ?? http,
                           configuration: .init(address: address, serverName: "skiffd"),
                           onServerRunning: { _ in onRunning() }, logger: logger)
    }

    /// A socket file of a skiffd that is gone is replaced; one a live skiffd listens on is not.
    static func claimSocket(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw ManagerError.invalid("\(path) exists and is not a socket: move it away") }
        let probe = UnixSocket.connect(path)
        if probe >= 0 {
            close(probe)
            throw ManagerError.conflict("another skiffd is listening on \(path)")
        }
        unlink(path)
    }

    /// Root and the `skiff` group only (the directory is 0750 as well).
    static func permitSocket(_ path: String) {
        if let g = getgrnam("skiff") { chown(path, 0, g.pointee.gr_gid) }
        chmod(path, 0o660)
    }

    static func makeDirectories(_ path: String, mode: mode_t) throws {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            guard mkdir(prefix, 0o755) == 0 || errno == EEXIST else { throw ManagerError.internal("\(prefix): \(String(cString: strerror(errno)))") }
        }
        chmod(path, mode)
    }
}

/// The reconcile loop and the meter, as a service of the group.
struct ReconcileService: Service {
    let manager: Manager
    let logger: Logger
    func run() async throws {
        var metered = ContinuousClock.now - .seconds(10), checkpointed = ContinuousClock.now
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            var starting = false
            do { starting = try await manager.reconcile() } catch { logger.error("reconcile: \(error)") }
            // Metering every 5 s (and at every usage query): a reading costs a
            // control-socket round trip and a page-table walk (smaps_rollup) per VM.
            if ContinuousClock.now - metered >= .seconds(5) {
                metered = ContinuousClock.now
                do { try await manager.meterTick() } catch { logger.error("meter: \(error)") }
            }
            if ContinuousClock.now - checkpointed >= .seconds(2) {
                checkpointed = ContinuousClock.now
                let store = manager.store, logger = self.logger
                // On a thread of its own: it syncs files, the pool's two threads stay free.
                Thread.detachNewThread { do { try store.checkpoint() } catch { logger.warning("checkpoint: \(error)") } }
            }
            // A VM that is starting is looked at again soon: it runs once its VMM answers.
            try? await Task.sleep(nanoseconds: starting ? 40_000_000 : 200_000_000)
        }
    }
}
