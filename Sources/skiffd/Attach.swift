import ArgumentParser
import Foundation
import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import SkiffAPI
import SkiffControl

/// `skiff attach VM`: the VM's console, interactive, through skiffd's
/// WebSocket (`GET /v1/vms/{name}/attach`), on its Unix socket or on
/// $SKIFFD_URL with TLS and $SKIFFD_TOKEN. A terminal is put in raw mode
/// (Ctrl-C goes to the guest); Ctrl-] detaches, as in telnet, and the VM
/// runs on. The guest's bytes are escaped on a terminal, as `skiff run`
/// does: the guest is not trusted with the host's terminal.
struct AttachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Attach to a running VM's console (Ctrl-] detaches).",
        discussion: "Input from a pipe is sent as it is; output goes on until the VM stops or Ctrl-] (or SIGINT when input is not a terminal).")
    @Argument(help: "The VM's name.") var name: String

    static let detachKey: UInt8 = 0x1d // Ctrl-]

    enum Upgrade: Sendable {
        case websocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>)
        case refused
    }

    func run() async throws {
        // The REST API first: a VM that is not there or not running gets skiffd's own words.
        let vm: Components.Schemas.Vm = try await withClient { c in
            switch try await c.getVM(path: .init(name: name)) { case .ok(let r): return try r.body.json; case .default(let s, let p): throw failure(s, p) }
        }
        guard ["starting", "running", "paused", "stopping"].contains(vm.observed.rawValue) else {
            throw CLIError("\(name) is \(vm.observed.rawValue): start it first (skiff start \(name))")
        }
        let channel = try await Self.connect(path: "/v1/vms/\(name)/attach")
        let terminal = RawTerminal()
        defer { terminal.restore() }
        if terminal.isRaw { FileHandle.standardError.write(Data("[attached to \(name); Ctrl-] detaches]\r\n".utf8)) }
        let escapes = isatty(STDOUT_FILENO) == 1
        try await channel.executeThenClose { inbound, outbound in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { // the console
                    var escaper = TerminalEscaper()
                    for try await frame in inbound {
                        switch frame.opcode {
                        case .binary, .text, .continuation:
                            var data = frame.unmaskedData
                            let bytes = data.readBytes(length: data.readableBytes) ?? []
                            let out = escapes ? bytes.flatMap { escaper.render($0) } : bytes
                            Descriptor.writeAll(STDOUT_FILENO, out)
                        case .ping:
                            try await outbound.write(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData))
                        case .connectionClose:
                            return
                        default: break
                        }
                    }
                }
                group.addTask { // the keyboard, read on a thread of its own (a blocking read)
                    let keys = Self.keys(detachOnKey: terminal.isRaw)
                    for await chunk in keys {
                        var buffer = ByteBuffer()
                        buffer.writeBytes(chunk)
                        try await outbound.write(WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: buffer))
                    }
                    // Detached (or input ended on a terminal): say goodbye.
                    if terminal.isRaw {
                        try? await outbound.write(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: ByteBuffer(bytes: [0x03, 0xe8])))
                        throw Detached()
                    }
                    try await Task.sleep(nanoseconds: .max) // a pipe ended: output goes on
                }
                do { try await group.next() } catch is Detached {}
                group.cancelAll()
            }
        }
        if terminal.isRaw { FileHandle.standardError.write(Data("\r\n[detached from \(name)]\r\n".utf8)) }
    }

    struct Detached: Error {}

    /// Standard input in chunks until it ends or (on a terminal) Ctrl-].
    static func keys(detachOnKey: Bool) -> AsyncStream<[UInt8]> {
        AsyncStream { continuation in
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let n = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { break }
                    var chunk = Array(buffer[..<n])
                    if detachOnKey, let k = chunk.firstIndex(of: detachKey) {
                        chunk = Array(chunk[..<k])
                        if !chunk.isEmpty { continuation.yield(chunk) }
                        break
                    }
                    continuation.yield(chunk)
                }
                continuation.finish()
            }
        }
    }

    /// The WebSocket to skiffd: its Unix socket, or $SKIFFD_URL (TLS for https) with $SKIFFD_TOKEN.
    static func connect(path: String) async throws -> NIOAsyncChannel<WebSocketFrame, WebSocketFrame> {
        let env = ProcessInfo.processInfo.environment
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "skiffd")
        if let token = env["SKIFFD_TOKEN"] { headers.add(name: "Authorization", value: "Bearer \(token)") }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        var tls: NIOSSLContext?
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        let initializer: @Sendable (Channel) -> EventLoopFuture<EventLoopFuture<Upgrade>>
        let remote = env["SKIFFD_URL"].flatMap { URL(string: $0) }
        if let remote, remote.scheme == "https" {
            tls = try NIOSSLContext(configuration: .makeClientConfiguration())
        }
        let host = remote?.host ?? "localhost"
        initializer = { [tls] channel in
            channel.eventLoop.makeCompletedFuture {
                if let tls { try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: host)) }
                let upgrader = NIOTypedWebSocketClientUpgrader<Upgrade>(maxFrameSize: 1 << 20) { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        .websocket(try NIOAsyncChannel<WebSocketFrame, WebSocketFrame>(wrappingChannelSynchronously: channel))
                    }
                }
                let configuration = NIOTypedHTTPClientUpgradeConfiguration<Upgrade>(
                    upgradeRequestHead: head, upgraders: [upgrader],
                    notUpgradingCompletionHandler: { $0.eventLoop.makeSucceededFuture(.refused) })
                var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
                // The console's first bytes may come in the same read as the 101: keep them.
                pipeline.leftOverBytesStrategy = .forwardBytes
                return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipeline)
            }
        }
        let upgrade: EventLoopFuture<Upgrade>
        if let remote {
            guard let h = remote.host, let port = remote.port ?? (remote.scheme == "https" ? 443 : 80) as Int? else {
                throw CLIError("SKIFFD_URL \(remote): give http(s)://HOST:PORT")
            }
            upgrade = try await bootstrap.connect(host: h, port: port, channelInitializer: initializer)
        } else {
            guard FileManager.default.fileExists(atPath: Connection.socket) else {
                throw CLIError("skiffd is not running (no \(Connection.socket)): start it with `systemctl start skiffd` or `skiffd &`")
            }
            upgrade = try await bootstrap.connect(unixDomainSocketPath: Connection.socket, channelInitializer: initializer)
        }
        switch try await upgrade.get() {
        case .websocket(let c): return c
        case .refused: throw CLIError("skiffd did not attach to the console (is the VM still running? skiff ps)")
        }
    }
}

/// The terminal in raw mode while attached (no echo, no line editing, no
/// signals: Ctrl-C goes to the guest), restored after. Nothing when input
/// is not a terminal.
final class RawTerminal: @unchecked Sendable {
    private var saved: termios?
    var isRaw: Bool { saved != nil }

    init() {
        guard isatty(STDIN_FILENO) == 1 else { return }
        var t = termios()
        guard tcgetattr(STDIN_FILENO, &t) == 0 else { return }
        saved = t
        cfmakeraw(&t)
        tcsetattr(STDIN_FILENO, TCSANOW, &t)
    }

    func restore() {
        if var t = saved { tcsetattr(STDIN_FILENO, TCSANOW, &t) }
    }
}
