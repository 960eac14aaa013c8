import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import OpenAPIRuntime

/// Every error that reaches the router (an unknown path, a body that does
/// not decode or match the schema, a missing token, a body too large)
/// becomes a problem document with a 4xx status; only a fault of skiffd's
/// own is a 500.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do { return try await next(request, context) } catch let e as HTTPError {
            let detail: String
            switch e.status {
            case .notFound where KnownPaths.allowed(request.uri.path) != nil:
                let allow = KnownPaths.allowed(request.uri.path)!
                return Self.problem(.methodNotAllowed, "\(request.method) is not allowed on \(request.uri.path) (\(allow))", headers: [.allow: allow])
            case .notFound: detail = "no such path: \(request.uri.path) (the API is under /v1; see openapi.yaml)"
            case .methodNotAllowed: detail = "\(request.method) is not allowed on \(request.uri.path)"
            case .contentTooLarge: detail = "the request body is over \(Daemon.maxBody) bytes"
            default: detail = e.body ?? e.status.reasonPhrase
            }
            return Self.problem(e.status, detail, headers: e.headers)
        } catch let e as ServerError {
            // The request did not match the document: bad JSON, an unknown
            // field, a wrong type, a missing parameter or content type.
            var cause = "\(e.underlyingError)"
            if let d = e.underlyingError as? DecodingError { cause = Self.describe(d) }
            return Self.problem(.badRequest, "\(e.causeDescription): \(cause)".prefix(2000).description)
        } catch let e as ManagerError {
            return Self.problem(.init(code: e.status), e.description)
        } catch {
            return Self.problem(.internalServerError, "\(error)")
        }
    }

    static func problem(_ status: HTTPResponse.Status, _ detail: String, headers: HTTPFields = [:]) -> Response {
        let doc: [String: Any] = ["type": "about:blank", "title": status.reasonPhrase, "status": status.code, "detail": detail]
        let data = (try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys])) ?? Data()
        var fields = headers
        fields[.contentType] = "application/problem+json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func describe(_ e: DecodingError) -> String {
        func path(_ c: DecodingError.Context) -> String {
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return p.isEmpty ? "the body" : String(p.drop { $0 == "." })
        }
        switch e {
        case .typeMismatch(let t, let c): return "\(path(c)): expected \(t): \(c.debugDescription)"
        case .valueNotFound(let t, let c): return "\(path(c)): missing \(t)"
        case .keyNotFound(let k, let c): return "\(path(c)): missing field '\(k.stringValue)'"
        case .dataCorrupted(let c): return "\(path(c)): \(c.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}

/// TCP clients must send `Authorization: Bearer <token>` (compared in
/// constant time); the Unix socket's permissions stand in for it there.
struct BearerMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let given = request.headers[.authorization] ?? ""
        let expected = "Bearer " + token
        var diff = UInt8(given.utf8.count == expected.utf8.count ? 0 : 1)
        for (a, b) in zip(given.utf8, expected.utf8) { diff |= a ^ b }
        guard diff == 0 else {
            throw HTTPError(.unauthorized, headers: [.wwwAuthenticate: "Bearer"],
                            message: given.isEmpty ? "send Authorization: Bearer <token> (skiffd --token-file)" : "the bearer token is wrong")
        }
        return try await next(request, context)
    }
}

/// Bodies are collected up to `Daemon.maxBody` before anything reads them.
struct BodyLimitMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var request = request
        let length = request.headers[.contentLength].flatMap(Int.init)
        if let length, length > Daemon.maxBody { throw HTTPError(.contentTooLarge) }
        // No body at all (an optional one left out) stays absent.
        guard (length ?? 0) > 0 || request.headers[.transferEncoding] != nil else { return try await next(request, context) }
        _ = try await request.collectBody(upTo: Daemon.maxBody)
        return try await next(request, context)
    }
}

/// A request without a body reaches the generated code as an empty body,
/// which it then tries to decode; an optional body left out (`stop` with
/// no timeout) must be no body at all.
struct AbsentBodyMiddleware: ServerMiddleware {
    func intercept(_ request: HTTPTypes.HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
                   next: @Sendable (HTTPTypes.HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPTypes.HTTPResponse, HTTPBody?))
        async throws -> (HTTPTypes.HTTPResponse, HTTPBody?) {
        let length = request.headerFields[.contentLength].flatMap(Int.init)
        let absent = (length == 0 || length == nil) && request.headerFields[.transferEncoding] == nil
        return try await next(request, absent ? nil : body, metadata)
    }
}

/// The document's paths ({name} is one segment) and their methods: another
/// method on one of them is 405 with `Allow`, not 404.
enum KnownPaths {
    static let templates: [([Substring], String)] = [
        ("/v1/version", "GET"), ("/v1/host", "GET"), ("/v1/vms", "GET, POST"), ("/v1/vms/*", "GET, DELETE"),
        ("/v1/vms/*/start", "POST"), ("/v1/vms/*/stop", "POST"), ("/v1/vms/*/kill", "POST"), ("/v1/vms/*/pause", "POST"),
        ("/v1/vms/*/resume", "POST"), ("/v1/vms/*/snapshots", "GET, POST"), ("/v1/vms/*/clone", "POST"), ("/v1/vms/*/logs", "GET"),
        ("/v1/events", "GET"), ("/v1/usage", "GET"), ("/metrics", "GET"),
    ].map { ($0.0.split(separator: "/"), $0.1) }

    /// The methods allowed on `path`, if it is one of the document's.
    static func allowed(_ path: String) -> String? {
        let parts = path.split(separator: "/")
        return templates.first { k, _ in k.count == parts.count && zip(k, parts).allSatisfy { $0 == "*" || $0 == $1 } }?.1
    }
}

/// `Server-Timing: app;dur=MS` on every answer: how long skiffd took with
/// the request, from the router's first look to the answer's headers (the
/// W3C header browsers and curl show). A client's own latency minus this
/// is time in its socket, its scheduler and itself: bench/manager prints
/// both, to tell skiffd's tail from the host's.
struct ServerTimingMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        var response = try await next(request, context)
        let d = ContinuousClock.now - start
        let ms = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
        if let name = HTTPField.Name("Server-Timing") {
            response.headers[name] = "app;dur=" + String(format: "%.2f", ms)
        }
        return response
    }
}
