import Foundation

/// Who is calling: the project the request acts for, and whether it may act across projects.
package struct Caller: Sendable, Equatable {
    package var project: String
    /// The token's roles with the ones they imply (Keystone's defaults: admin implies member,
    /// member implies reader), lower-cased.
    package var roles: Set<String>
    /// The caller's project is the cloud's admin project (HERALD_ADMIN_PROJECT, else Keystone's
    /// `is_admin_project`): with the admin role, an admin across projects (policy `cloud_admin`).
    var isAdminProject: Bool
    /// With Keystone: the user and the token itself, which can delegate through a trust.
    package var userID: String?
    package var token: String?
    /// `all` for a system-scoped token: `project` is then the one the request names
    /// (`?project_id=`), and the policy's `project_id` checks do not hold for it.
    package var systemScope: String?
    /// An application credential's access rules; nil: the token is not restricted by any.
    package var accessRules: [AccessRule]?

    package init(
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

    package var credentials: PolicyCredentials {
        PolicyCredentials(
            roles: roles, projectID: systemScope == nil ? project : nil, userID: userID, systemScope: systemScope,
            isAdminProject: isAdminProject)
    }
}
