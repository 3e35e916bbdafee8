import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Two projects with a member each, made in the real Keystone (`scripts/servers`) through its
/// admin API under names of their own, plus Herald's service user that the servers created.
public struct KeystoneFixture: Sendable {
    public let url: String
    public let suffix: String
    /// name letter ("a", "b") -> project id / user id
    public let projects: [String: String]
    public let users: [String: String]
    public let adminProjectID: String
    public let serviceUser: String
    public let servicePassword: String
    public let serviceProject: String

    /// Creates the projects and users.
    public static func make() async throws -> KeystoneFixture {
        let url = try TestServers.value("HERALD_TEST_KEYSTONE_URL")
        let suffix = String(UUID().uuidString.prefix(8).lowercased())
        let admin = try await token(
            url: url, user: "admin", password: try TestServers.value("HERALD_TEST_KEYSTONE_ADMIN_PASSWORD"),
            project: "admin")
        let (_, roles, _) = try await request(url + "/v3/roles?name=member", .GET, token: admin)
        guard let member = (roles["roles"] as? [[String: Any]])?.first?["id"] as? String else {
            throw TestFailure("Keystone has no member role: \(roles)")
        }
        var projects: [String: String] = [:]
        var users: [String: String] = [:]
        for letter in ["a", "b"] {
            let (status, body, _) = try await request(
                url + "/v3/projects", .POST, token: admin,
                json: ["project": ["name": "ks-\(letter)-\(suffix)", "domain_id": "default"]])
            guard status == 201, let project = (body["project"] as? [String: Any])?["id"] as? String else {
                throw TestFailure("project \(letter): \(status) \(body)")
            }
            let name = "user-\(letter)-\(suffix)"
            let (created, user, _) = try await request(
                url + "/v3/users", .POST, token: admin,
                json: ["user": ["name": name, "password": "secret-\(name)", "domain_id": "default"]])
            guard created == 201, let id = (user["user"] as? [String: Any])?["id"] as? String else {
                throw TestFailure("user \(name): \(created) \(user)")
            }
            let (granted, _, _) = try await request(
                url + "/v3/projects/\(project)/users/\(id)/roles/\(member)", .PUT, token: admin)
            guard granted == 204 else { throw TestFailure("grant member to \(name): \(granted)") }
            projects[letter] = project
            users[letter] = id
        }
        let (_, adminProjects, _) = try await request(url + "/v3/projects?name=admin", .GET, token: admin)
        return KeystoneFixture(
            url: url, suffix: suffix, projects: projects, users: users,
            adminProjectID: (adminProjects["projects"] as? [[String: Any]])?.first?["id"] as? String ?? "",
            serviceUser: try TestServers.value("HERALD_TEST_KEYSTONE_SERVICE_USER"),
            servicePassword: try TestServers.value("HERALD_TEST_KEYSTONE_SERVICE_PASSWORD"),
            serviceProject: try TestServers.value("HERALD_TEST_KEYSTONE_SERVICE_PROJECT")
        )
    }

    /// One request to Keystone: status, JSON body, headers.
    public static func request(
        _ url: String, _ method: HTTPMethod, token: String?, json: [String: Any]? = nil, subject: String? = nil
    ) async throws -> (Int, [String: Any], HTTPHeaders) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let token { request.headers.add(name: "X-Auth-Token", value: token) }
        if let subject { request.headers.add(name: "X-Subject-Token", value: subject) }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 4 << 20)
        let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
        return (Int(response.status.code), object, response.headers)
    }

    /// A token for `user` scoped to `project` (names, domain Default), or to a trust.
    public static func token(
        url: String, user: String, password: String, project: String? = nil, trust: String? = nil
    ) async throws -> String {
        var auth: [String: Any] = [
            "identity": [
                "methods": ["password"],
                "password": ["user": ["name": user, "domain": ["id": "default"], "password": password]],
            ]
        ]
        if let project { auth["scope"] = ["project": ["name": project, "domain": ["id": "default"]]] }
        if let trust { auth["scope"] = ["OS-TRUST:trust": ["id": trust]] }
        let (status, body, headers) = try await request(
            url + "/v3/auth/tokens", .POST, token: nil, json: ["auth": auth])
        guard status == 201, let token = headers.first(name: "X-Subject-Token") else {
            throw TestFailure("token for \(user): \(status) \(body)")
        }
        return token
    }

    public func adminToken() async throws -> String {
        try await Self.token(
            url: url, user: "admin", password: try TestServers.value("HERALD_TEST_KEYSTONE_ADMIN_PASSWORD"),
            project: "admin")
    }

    /// A token of user `letter` scoped to their project.
    public func userToken(_ letter: String) async throws -> String {
        try await Self.token(
            url: url, user: "user-\(letter)-\(suffix)", password: "secret-user-\(letter)-\(suffix)",
            project: "ks-\(letter)-\(suffix)")
    }

    /// Password of user `letter`.
    public func password(_ letter: String) -> String { "secret-user-\(letter)-\(suffix)" }

    /// The trusts user `letter` has given (ids), as the admin sees them.
    public func trusts(of letter: String) async throws -> [String] {
        let (status, body, _) = try await Self.request(
            url + "/v3/OS-TRUST/trusts?trustor_user_id=\(users[letter]!)", .GET, token: try await adminToken())
        guard status == 200 else { throw TestFailure("listing trusts: \(status) \(body)") }
        return (body["trusts"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
    }

    /// A trust from user `letter` to Herald's service user on their project (member role,
    /// impersonation), as a subscription gets one: its id.
    public func trustToHerald(_ letter: String) async throws -> String {
        let admin = try await adminToken()
        let (_, found, _) = try await Self.request(url + "/v3/users?name=\(serviceUser)", .GET, token: admin)
        guard let herald = (found["users"] as? [[String: Any]])?.first?["id"] as? String else {
            throw TestFailure("no user \(serviceUser): \(found)")
        }
        return try await trust(from: letter, to: herald)
    }

    /// A trust from user `letter` to the user `trustee` (an id) on their project (member role,
    /// impersonation): its id.
    public func trust(from letter: String, to trustee: String) async throws -> String {
        let (status, body, _) = try await Self.request(
            url + "/v3/OS-TRUST/trusts", .POST, token: try await userToken(letter),
            json: [
                "trust": [
                    "trustor_user_id": users[letter]!, "trustee_user_id": trustee, "project_id": projects[letter]!,
                    "impersonation": true, "roles": [["name": "member"]],
                ]
            ])
        guard status == 201, let trust = (body["trust"] as? [String: Any])?["id"] as? String else {
            throw TestFailure("trust to \(trustee): \(status) \(body)")
        }
        return trust
    }

    /// A token of user `letter` that expires within `seconds`: scoped through a short trust from
    /// user `letter` to the other user (Keystone ends such a token with its trust).
    public func shortLivedToken(_ letter: String, seconds: Int) async throws -> String {
        let other = letter == "a" ? "b" : "a"
        let formatter = ISO8601DateFormatter()
        let expires = formatter.string(from: Date().addingTimeInterval(Double(seconds))).replacingOccurrences(
            of: "Z", with: ".000000Z")
        let (status, body, _) = try await Self.request(
            url + "/v3/OS-TRUST/trusts", .POST, token: try await userToken(letter),
            json: [
                "trust": [
                    "trustor_user_id": users[letter]!, "trustee_user_id": users[other]!,
                    "project_id": projects[letter]!,
                    "impersonation": true, "roles": [["name": "member"]], "expires_at": expires,
                ]
            ])
        guard status == 201, let trust = (body["trust"] as? [String: Any])?["id"] as? String else {
            throw TestFailure("short trust: \(status) \(body)")
        }
        return try await Self.token(url: url, user: "user-\(other)-\(suffix)", password: password(other), trust: trust)
    }

    // MARK: Personas

    /// A new user of the default domain holding `role` (by name) on project `letter`'s project.
    /// - Returns: the user's id and a token of theirs scoped to that project.
    public func user(_ name: String, role: String, on letter: String) async throws -> (id: String, token: String) {
        let admin = try await adminToken()
        let userName = "\(name)-\(suffix)"
        let (created, user, _) = try await Self.request(
            url + "/v3/users", .POST, token: admin,
            json: ["user": ["name": userName, "password": "secret-\(userName)", "domain_id": "default"]])
        guard created == 201, let id = (user["user"] as? [String: Any])?["id"] as? String else {
            throw TestFailure("user \(userName): \(created) \(user)")
        }
        let (_, roles, _) = try await Self.request(url + "/v3/roles?name=\(role)", .GET, token: admin)
        guard let roleID = (roles["roles"] as? [[String: Any]])?.first?["id"] as? String else {
            throw TestFailure("Keystone has no role \(role)")
        }
        let (granted, _, _) = try await Self.request(
            url + "/v3/projects/\(projects[letter]!)/users/\(id)/roles/\(roleID)", .PUT, token: admin)
        guard granted == 204 else { throw TestFailure("grant \(role) to \(userName): \(granted)") }
        let token = try await Self.token(
            url: url, user: userName, password: "secret-\(userName)", project: "ks-\(letter)-\(suffix)")
        return (id, token)
    }

    /// A system-scoped token of the bootstrap admin (Keystone's bootstrap gives it the admin
    /// role on the system).
    public func systemAdminToken() async throws -> String {
        let auth: [String: Any] = [
            "identity": [
                "methods": ["password"],
                "password": [
                    "user": [
                        "name": "admin", "domain": ["id": "default"],
                        "password": try TestServers.value("HERALD_TEST_KEYSTONE_ADMIN_PASSWORD"),
                    ]
                ],
            ],
            "scope": ["system": ["all": true]],
        ]
        let (status, body, headers) = try await Self.request(
            url + "/v3/auth/tokens", .POST, token: nil, json: ["auth": auth])
        guard status == 201, let token = headers.first(name: "X-Subject-Token") else {
            throw TestFailure("system-scoped token: \(status) \(body)")
        }
        return token
    }

    /// A token of an application credential that user `letter` makes with these access rules
    /// (`service`, `path`, `method` each).
    public func applicationCredentialToken(_ letter: String, accessRules: [[String: String]]) async throws -> String {
        let (status, body, _) = try await Self.request(
            url + "/v3/users/\(users[letter]!)/application_credentials", .POST, token: try await userToken(letter),
            json: [
                "application_credential": [
                    "name": "herald-test-\(UUID().uuidString.prefix(8))", "access_rules": accessRules,
                ]
            ])
        guard status == 201, let credential = body["application_credential"] as? [String: Any],
            let id = credential["id"] as? String,
            let secret = credential["secret"] as? String
        else { throw TestFailure("application credential: \(status) \(body)") }
        let auth: [String: Any] = [
            "identity": [
                "methods": ["application_credential"], "application_credential": ["id": id, "secret": secret],
            ]
        ]
        let (made, answer, headers) = try await Self.request(
            url + "/v3/auth/tokens", .POST, token: nil, json: ["auth": auth])
        guard made == 201, let token = headers.first(name: "X-Subject-Token") else {
            throw TestFailure("application credential token: \(made) \(answer)")
        }
        return token
    }
}
