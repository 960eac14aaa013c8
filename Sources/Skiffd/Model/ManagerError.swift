/// What an operation could not do, as the API reports it
/// (`application/problem+json`, the status from the case).
enum ManagerError: Error, CustomStringConvertible, Sendable {
    /// The request itself is wrong (400).
    case invalid(String)
    /// No such VM or snapshot (404).
    case notFound(String)
    /// Not in this state, or a name already taken (409).
    case conflict(String)
    /// The host cannot hold what is asked for (422: admission).
    case insufficient(String)
    /// skiffd or the host failed (500).
    case `internal`(String)

    var description: String {
        switch self {
        case .invalid(let s), .notFound(let s), .conflict(let s), .insufficient(let s), .internal(let s): return s
        }
    }

    var status: Int {
        switch self {
        case .invalid: return 400
        case .notFound: return 404
        case .conflict: return 409
        case .insufficient: return 422
        case .internal: return 500
        }
    }

    var title: String {
        switch self {
        case .invalid: return "Bad request"
        case .notFound: return "Not found"
        case .conflict: return "Conflict"
        case .insufficient: return "Not enough host resources"
        case .internal: return "Internal error"
        }
    }
}
