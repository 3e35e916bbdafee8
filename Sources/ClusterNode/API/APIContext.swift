import Foundation
import HTTPTypes
import Hummingbird

/// Who is calling: the project the request acts for, and whether it may act across projects.
struct Caller: Sendable, Equatable {
    var project: String
    /// The token's roles with the ones they imply (Keystone's defaults: admin implies member,
    /// member implies reader), lower-cased.
    var roles: Set<String>
    /// The caller's project is the cloud's admin project (HERALD_ADMIN_PROJECT, else Keystone's
    /// `is_admin_project`): with the admin role, an admin across projects (policy `cloud_admin`).
    var isAdminProject: Bool
    /// With Keystone: the user and the token itself, which can delegate through a trust.
    var userID: String?
    var token: String?
    /// `all` for a system-scoped token: `project` is then the one the request names
    /// (`?project_id=`), and the policy's `project_id` checks do not hold for it.
    var systemScope: String?
    /// An application credential's access rules; nil: the token is not restricted by any.
    var accessRules: [AccessRule]?

    init(
        project: String, roles: [String], isAdminProject: Bool, userID: String? = nil, token: String? = nil,
        systemScope: String? = nil, accessRules: [AccessRule]? = nil
    ) {
        self.project = project
        self.roles = Self.implied(roles)
        self.isAdminProject = isAdminProject
        self.userID = userID
        self.token = token
        self.systemScope = systemScope
        self.accessRules = accessRules
    }

    /// Keystone's default role implications.
    static func implied(_ roles: [String]) -> Set<String> {
        var all = Set(roles.map { $0.lowercased() })
        if all.contains("admin") { all.insert("member") }
        if all.contains("member") { all.insert("reader") }
        return all
    }

    var credentials: PolicyCredentials {
        PolicyCredentials(
            roles: roles, projectID: systemScope == nil ? project : nil, userID: userID, systemScope: systemScope,
            isAdminProject: isAdminProject)
    }
}

/// The request context of Herald's API: Hummingbird's core plus the caller, once known.
struct APIContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    var caller: Caller?
    /// The peer's address (the ingress's, behind one), for per-source limits.
    let source: String

    init(source: Source) {
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
    static let projectID = Self("X-Project-Id")!
    static let roles = Self("X-Roles")!
    static let userID = Self("X-User-Id")!
}

/// Development mode (HERALD_API_AUTH=trusted-header): the caller is whoever the
/// `X-Project-Id` header says, with the roles of `X-Roles` (a member when it is absent; `admin`
/// counts as the cloud's admin here) and the user of `X-User-Id`. Never for production:
/// anyone who reaches the port may claim any project.
struct TrustedHeaderAuthenticator: RouterMiddleware {
    typealias Context = APIContext

    func handle(
        _ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response
    ) async throws -> Response {
        guard let project = request.headers[.projectID]?.trimmingCharacters(in: .whitespaces), !project.isEmpty else {
            throw HTTPError(
                .unauthorized,
                message: "missing X-Project-Id header (this node trusts it: HERALD_API_AUTH=trusted-header)")
        }
        guard project.count <= 255 else {
            throw HTTPError(.badRequest, message: "X-Project-Id: longer than 255 characters")
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
