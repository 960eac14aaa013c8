import Hummingbird
import HummingbirdWebSocket
import NIOCore

/// `attach`: `GET /v1/vms/{name}/attach` upgraded to a WebSocket. The
/// server sends the VM's console (the last 4 KiB, then all that follows)
/// as binary messages; what the client sends, text or binary, goes to the
/// guest's serial input. The socket closes when the VM's process ends;
/// the VM does not notice a client leaving. Any number may attach at once
/// (each sees all output; their input interleaves), as with `docker attach`.
/// On TCP the bearer token is asked for as on every other path.
enum Attach {
    /// Output is polled this often while someone is attached (an echo should feel immediate).
    static let period: UInt64 = 30_000_000
    static let maxMessage = 64 << 10

    static func router(_ manager: Manager, token: String?) -> Router<BasicWebSocketRequestContext> {
        let router = Router(context: BasicWebSocketRequestContext.self)
        router.add(middleware: ProblemMiddleware())
        if let token { router.add(middleware: BearerMiddleware(token: token)) }
        router.ws("/v1/vms/:name/attach", shouldUpgrade: { _, context in
            _ = try await manager.console(try context.parameters.require("name"))
            return .upgrade([:])
        }, onUpgrade: { inbound, outbound, context in
            let name = try context.requestContext.parameters.require("name")
            let console = try await manager.console(name)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { // the guest's output, until its process ends
                    let first = Console.read(console.log, tail: 4096)
                    for await chunk in followLog(manager: manager, name: name, path: console.log, first: first, period: period) {
                        try await outbound.write(.binary(ByteBuffer(bytes: chunk)))
                    }
                    try await outbound.close(.normalClosure, reason: "the VM's process ended")
                }
                group.addTask { // the client's keys, until it goes
                    for try await message in inbound.messages(maxSize: maxMessage) {
                        let bytes: [UInt8]
                        switch message {
                        case .text(let s): bytes = Array(s.utf8)
                        case .binary(let b): bytes = Array(buffer: b)
                        }
                        guard await Blocking.run({ Console.send(bytes, to: console.input) }) else { break }
                    }
                }
                try await group.next()
                group.cancelAll()
            }
        })
        return router
    }
}

extension Manager {
    /// The console of a VM whose process runs: its log and its input FIFO.
    func console(_ name: String) throws -> (log: String, input: String) {
        let vm = try existing(name)
        guard VMState(rawValue: vm.observed)?.isActive == true else {
            throw ManagerError.conflict("\(name) is \(vm.observed): start it first (its console log is at GET /v1/vms/\(name)/logs)")
        }
        let dir = directory(vm)
        return (dir.console, dir.consoleInput)
    }
}
