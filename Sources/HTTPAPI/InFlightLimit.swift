import HTTPTypes
import Hummingbird
import Synchronization

/// The API requests a node serves at once, per project and in all. A tenant's parallel requests
/// (a thousand `GET /v1/dead-letters?limit=100` at once: each answer is built in memory) can take
/// neither the node's memory nor every other tenant's turn: past its share a project gets 429,
/// past the node's bound everyone 503, both with `Retry-After`, before anything is read.
package final class InFlightLimit: Sendable {
    /// Requests of one project at once (HERALD_API_PROJECT_REQUESTS_IN_FLIGHT).
    let perProject: Int
    /// Requests at once, every project together (HERALD_API_REQUESTS_IN_FLIGHT).
    let total: Int
    private let state = Mutex<(total: Int, projects: [String: Int])>((0, [:]))

    package init(perProject: Int, total: Int) {
        self.perProject = perProject
        self.total = total
    }

    /// Takes a place for `project`, or says why none is left.
    func enter(_ project: String) throws(HTTPError) {
        let refusal = state.withLock { state -> HTTPError? in
            if state.projects[project, default: 0] >= perProject {
                return Self.refusal(
                    .tooManyRequests,
                    "this project has \(perProject) requests under way on this node (HERALD_API_PROJECT_REQUESTS_IN_FLIGHT); wait for them"
                )
            }
            if state.total >= total {
                return Self.refusal(
                    .serviceUnavailable,
                    "this node serves \(total) requests already (HERALD_API_REQUESTS_IN_FLIGHT); try again shortly")
            }
            state.total += 1
            state.projects[project, default: 0] += 1
            return nil
        }
        if let refusal { throw refusal }
    }

    /// Gives the place back.
    func leave(_ project: String) {
        state.withLock { state in
            state.total -= 1
            if let count = state.projects[project], count > 1 {
                state.projects[project] = count - 1
            } else {
                state.projects[project] = nil
            }
        }
    }

    /// Requests under way (tests).
    var inFlight: (total: Int, projects: Int) { state.withLock { ($0.total, $0.projects.count) } }

    private static func refusal(_ status: HTTPResponse.Status, _ message: String) -> HTTPError {
        var headers = HTTPFields()
        headers[.retryAfter] = "1"
        return HTTPError(status, headers: headers, message: message)
    }
}

/// Holds a place of `InFlightLimit` for each request of a known caller, while it is served.
struct InFlightMiddleware: RouterMiddleware {
    typealias Context = APIContext
    let limit: InFlightLimit

    func handle(
        _ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response
    ) async throws -> Response {
        guard let project = context.caller?.project else { return try await next(request, context) }
        try limit.enter(project)
        defer { limit.leave(project) }
        return try await next(request, context)
    }
}
