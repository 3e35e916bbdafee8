import Foundation
import HTTPTypes
import Hummingbird

/// Who is calling: the project the request acts for, and whether it may act across projects.
struct Caller: Sendable, Equatable {
    var project: String
    var isAdmin: Bool
    /// With Keystone: the user and the token itself, which can delegate through a trust.
    var userID: String?
    var token: String?

    init(project: String, isAdmin: Bool, userID: String? = nil, token: String? = nil) {
        self.project = project
        self.isAdmin = isAdmin
        self.userID = userID
        self.token = token
    }
}

/// The request context of Herald's API: Hummingbird's core plus the caller, once known.
struct APIContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    var caller: Caller?

    init(source: Source) {
        coreContext = .init(source: source)
    }

    /// The caller, or 401 when the authenticator did not run for this route.
    func requireCaller() throws -> Caller {
        guard let caller else { throw HTTPError(.unauthorized, message: "this request carries no identity") }
        return caller
    }
}

extension HTTPField.Name {
    static let projectID = Self("X-Project-Id")!
    static let roles = Self("X-Roles")!
}

/// Development mode (HERALD_API_AUTH=trusted-header): the caller is whoever the
/// `X-Project-Id` header says, admin when `X-Roles` lists `admin`. Never for production:
/// anyone who reaches the port may claim any project.
struct TrustedHeaderAuthenticator: RouterMiddleware {
    typealias Context = APIContext

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        guard let project = request.headers[.projectID]?.trimmingCharacters(in: .whitespaces), !project.isEmpty else {
            throw HTTPError(.unauthorized, message: "missing X-Project-Id header (this node trusts it: HERALD_API_AUTH=trusted-header)")
        }
        guard project.count <= 255 else {
            throw HTTPError(.badRequest, message: "X-Project-Id: longer than 255 characters")
        }
        let roles = (request.headers[.roles] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        var context = context
        context.caller = Caller(project: project, isAdmin: roles.contains("admin"))
        return try await next(request, context)
    }
}
