import Foundation
import HTTPTypes
import Hummingbird
import Identity

/// The request context of Herald's API: Hummingbird's core plus the caller, once known.
package struct APIContext: RequestContext {
    package var coreContext: CoreRequestContextStorage
    var caller: Caller?
    /// The peer's address (the ingress's, behind one), for per-source limits.
    let source: String

    package init(source: Source) {
        coreContext = .init(source: source)
        self.source = source.channel.remoteAddress?.ipAddress ?? "-"
    }

    /// The caller, or 401 when the authenticator did not run for this route.
    func requireCaller() throws -> Caller {
        guard let caller else { throw HTTPError(.unauthorized, message: "this request carries no identity") }
        return caller
    }
}

extension HTTPField.Name {
    package static let projectID = Self("X-Project-Id")!
    package static let roles = Self("X-Roles")!
    package static let userID = Self("X-User-Id")!
}

/// Development mode (HERALD_API_AUTH=trusted-header): the caller is whoever the
/// `X-Project-Id` header says, with the roles of `X-Roles` (a member when it is absent; `admin`
/// counts as the cloud's admin here) and the user of `X-User-Id`. Never for production:
/// anyone who reaches the port may claim any project.
package struct TrustedHeaderAuthenticator: RouterMiddleware {
    package init() {}

    package typealias Context = APIContext

    package func handle(
        _ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response
    ) async throws -> Response {
        guard let project = request.headers[.projectID]?.trimmingCharacters(in: .whitespaces), !project.isEmpty else {
            throw HTTPError(
                .unauthorized,
                message: "missing X-Project-Id header (this node trusts it: HERALD_API_AUTH=trusted-header)")
        }
        guard project.utf8.count <= 255 else {
            throw HTTPError(.badRequest, message: "X-Project-Id: longer than 255 bytes")
        }
        let listed = request.headers[.roles].map {
            $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty }
        }
        let roles = listed ?? ["member"]
        var context = context
        context.caller = Caller(
            project: project, roles: roles, isAdminProject: roles.contains("admin"),
            userID: request.headers[.userID].flatMap { $0.isEmpty ? nil : String($0.prefix(255)) })
        return try await next(request, context)
    }
}
