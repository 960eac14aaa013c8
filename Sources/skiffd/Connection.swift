import AsyncHTTPClient
import Foundation
import OpenAPIAsyncHTTPClient
import OpenAPIRuntime
import SkiffAPI

/// The CLI's connection to skiffd: its Unix socket ($SKIFFD_SOCKET, default
/// /run/skiff/skiffd.sock) through AsyncHTTPClient, or TCP with a bearer
/// token ($SKIFFD_URL and $SKIFFD_TOKEN).
struct Connection {
    static var socket: String { ProcessInfo.processInfo.environment["SKIFFD_SOCKET"] ?? "/run/skiff/skiffd.sock" }

    let client: Client
    let http: HTTPClient

    init() throws {
        // Everything that can fail comes before the HTTP client exists (once made, it must be shut down).
        let env = ProcessInfo.processInfo.environment
        var middlewares: [any ClientMiddleware] = []
        let url: URL
        if let remote = env["SKIFFD_URL"] {
            guard let u = URL(string: remote + "/v1"), u.scheme == "http" || u.scheme == "https" else {
                throw CLIError("SKIFFD_URL \(remote): give http(s)://HOST:PORT")
            }
            url = u
            if let token = env["SKIFFD_TOKEN"] { middlewares.append(Bearer(token: token)) }
        } else {
            guard FileManager.default.fileExists(atPath: Self.socket) else {
                throw CLIError("skiffd is not running (no \(Self.socket)): start it with `systemctl start skiffd` or `skiffd &`")
            }
            let encoded = Self.socket.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? Self.socket
            guard let u = URL(string: "http+unix://\(encoded)/v1") else { throw CLIError("\(Self.socket): not a usable socket path") }
            url = u
        }
        http = HTTPClient(eventLoopGroupProvider: .singleton)
        client = Client(serverURL: url, transport: AsyncHTTPClientTransport(configuration: .init(client: http, timeout: .seconds(600))),
                        middlewares: middlewares)
    }

    func close() async { try? await http.shutdown() }
}

struct Bearer: ClientMiddleware {
    let token: String
    func intercept(_ request: HTTPTypes.HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
                   next: (HTTPTypes.HTTPRequest, HTTPBody?, URL) async throws -> (HTTPTypes.HTTPResponse, HTTPBody?)) async throws -> (HTTPTypes.HTTPResponse, HTTPBody?) {
        var r = request
        r.headerFields[.authorization] = "Bearer \(token)"
        return try await next(r, body, baseURL)
    }
}

import HTTPTypes

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A problem document as the CLI shows it.
func failure(_ status: Int, _ p: Components.Responses.Problem) -> CLIError {
    if case .applicationProblemJson(let doc) = p.body { return CLIError("\(doc.detail) (\(status) \(doc.title))") }
    return CLIError("skiffd answered \(status)")
}
