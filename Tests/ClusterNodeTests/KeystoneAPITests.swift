@testable import ClusterNode
import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Testing
import TestSupport

/// Projects, users and a service user made in the real Keystone through its admin API.
struct KeystoneFixture: Sendable {
    let url: String
    let suffix = String(UUID().uuidString.prefix(8).lowercased())
    let serviceUser: String
    let servicePassword = "herald-service-secret"
    var projects: [String: String] = [:]  // name -> id
    var adminProjectID = ""

    init() throws {
        url = try TestServers.value("HERALD_TEST_KEYSTONE_URL")
        serviceUser = "herald-\(suffix)"
    }

    static func request(_ url: String, _ method: HTTPMethod, token: String?, json: [String: Any]? = nil, subject: String? = nil) async throws -> (Int, [String: Any], HTTPHeaders) {
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

    /// A token for `user` scoped to `project` (names, domain Default).
    func token(user: String, password: String, project: String) async throws -> String {
        let (status, body, headers) = try await Self.request(url + "/v3/auth/tokens", .POST, token: nil, json: ["auth": [
            "identity": ["methods": ["password"], "password": ["user": ["name": user, "domain": ["id": "default"], "password": password]]],
            "scope": ["project": ["name": project, "domain": ["id": "default"]]],
        ]])
        guard status == 201, let token = headers.first(name: "X-Subject-Token") else { throw TestFailure("token for \(user): \(status) \(body)") }
        return token
    }

    func adminToken() async throws -> String {
        try await token(user: "admin", password: try TestServers.value("HERALD_TEST_KEYSTONE_ADMIN_PASSWORD"), project: "admin")
    }

    /// Creates (or finds) a role by name; returns its id.
    func role(_ name: String, admin: String) async throws -> String {
        let (_, listed, _) = try await Self.request(url + "/v3/roles?name=\(name)", .GET, token: admin)
        if let id = (listed["roles"] as? [[String: Any]])?.first?["id"] as? String { return id }
        let (status, created, _) = try await Self.request(url + "/v3/roles", .POST, token: admin, json: ["role": ["name": name]])
        guard status == 201, let id = (created["role"] as? [String: Any])?["id"] as? String else { throw TestFailure("role \(name): \(status) \(created)") }
        return id
    }

    /// Two projects with a member each, and Herald's service user with the service role.
    mutating func setUp() async throws {
        let admin = try await adminToken()
        let member = try await role("member", admin: admin)
        let service = try await role("service", admin: admin)
        for name in ["ks-a-\(suffix)", "ks-b-\(suffix)", "service-\(suffix)"] {
            let (status, body, _) = try await Self.request(url + "/v3/projects", .POST, token: admin, json: ["project": ["name": name, "domain_id": "default"]])
            guard status == 201, let id = (body["project"] as? [String: Any])?["id"] as? String else { throw TestFailure("project \(name): \(status) \(body)") }
            projects[name] = id
        }
        let users: [(String, String, String)] = [
            ("user-a-\(suffix)", "ks-a-\(suffix)", member), ("user-b-\(suffix)", "ks-b-\(suffix)", member), (serviceUser, "service-\(suffix)", service),
        ]
        for (user, project, role) in users {
            let password = user == serviceUser ? servicePassword : "secret-\(user)"
            let (status, body, _) = try await Self.request(url + "/v3/users", .POST, token: admin, json: ["user": ["name": user, "password": password, "domain_id": "default"]])
            guard status == 201, let id = (body["user"] as? [String: Any])?["id"] as? String else { throw TestFailure("user \(user): \(status) \(body)") }
            let (granted, _, _) = try await Self.request(url + "/v3/projects/\(projects[project]!)/users/\(id)/roles/\(role)", .PUT, token: admin)
            guard granted == 204 else { throw TestFailure("grant \(user) on \(project): \(granted)") }
        }
        let (_, projectsBody, _) = try await Self.request(url + "/v3/projects?name=admin", .GET, token: admin)
        adminProjectID = (projectsBody["projects"] as? [[String: Any]])?.first?["id"] as? String ?? ""
    }

    func userToken(_ letter: String) async throws -> String {
        try await token(user: "user-\(letter)-\(suffix)", password: "secret-user-\(letter)-\(suffix)", project: "ks-\(letter)-\(suffix)")
    }

    var configuration: KeystoneConfiguration {
        KeystoneConfiguration(url: url + "/v3", username: serviceUser, password: servicePassword, project: "service-\(suffix)",
                              userDomain: "Default", projectDomain: "Default", cacheTTL: .seconds(60))
    }
}

extension APISuites {
    @Suite("The API with Keystone tokens (a real Keystone)")
    struct KeystoneAPITests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        func call(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, token: String?, json: [String: Any]? = nil) async throws -> APIHarness.Reply {
            var headers = HTTPFields()
            if let token { headers[.authToken] = token }
            var body: ByteBuffer?
            if let json {
                body = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json))
                headers[.contentType] = "application/json"
            }
            let response = try await client.execute(uri: uri, method: method, headers: headers, body: body)
            return APIHarness.Reply(status: response.status, headers: response.headers, data: Data(buffer: response.body))
        }

        @Test("no token, a bad token, a revoked token: 401; another project's subscription: 404; all projects: admin only")
        func keystoneAuth() async throws {
            var keystone = try KeystoneFixture()
            try await keystone.setUp()
            let validator = KeystoneValidator(configuration: keystone.configuration, logger: Logger(label: "test"))
            let application = Application(router: harness.api.router(authenticator: KeystoneAuthenticator(validator: validator)))
            let tokenA = try await keystone.userToken("a")
            let tokenB = try await keystone.userToken("b")
            let revoked = try await keystone.userToken("a")
            let admin = try await keystone.adminToken()
            let (revokedStatus, _, _) = try await KeystoneFixture.request(keystone.url + "/v3/auth/tokens", .DELETE, token: admin, subject: revoked)
            #expect(revokedStatus == 204)
            let projectA = try #require(keystone.projects["ks-a-\(keystone.suffix)"])
            let adminProject = keystone.adminProjectID

            try await application.test(.router) { client in
                let none = try await call(client, .get, "/v1/subscriptions", token: nil)
                #expect(none.status == .unauthorized)
                #expect(none.message.contains("X-Auth-Token"))
                let bad = try await call(client, .get, "/v1/subscriptions", token: "gAAAA-not-a-token")
                #expect(bad.status == .unauthorized, "\(bad.text)")
                let gone = try await call(client, .get, "/v1/subscriptions", token: revoked)
                #expect(gone.status == .unauthorized, "a revoked token is refused: \(gone.text)")

                let created = try await call(client, .post, "/v1/subscriptions", token: tokenA, json: ["event_types": ["compute.*"], "target": ["queue": "ks-events"]])
                #expect(created.status == .created, "\(created.text)")
                #expect(created.object["project"] as? String == projectA, "the project comes from the token")
                let id = try #require(created.object["id"] as? String)
                #expect(try await call(client, .get, "/v1/subscriptions/\(id)", token: tokenA).status == .ok)
                #expect(try await call(client, .get, "/v1/subscriptions/\(id)", token: tokenB).status == .notFound)
                #expect(try await call(client, .patch, "/v1/subscriptions/\(id)", token: tokenB, json: ["message_ttl": 120]).status == .notFound)
                #expect(try await call(client, .delete, "/v1/subscriptions/\(id)", token: tokenB).status == .notFound)
                #expect(try await harness.registry.get(id: id, project: projectA) != nil, "B changed nothing")

                let everything: [String: Any] = ["event_types": ["compute.*"], "target": ["queue": "all-events"], "all_projects": true]
                let member = try await call(client, .post, "/v1/subscriptions", token: tokenA, json: everything)
                #expect(member.status == .forbidden)
                let byAdmin = try await call(client, .post, "/v1/subscriptions", token: admin, json: everything)
                #expect(byAdmin.status == .created, "\(byAdmin.text)")
                #expect(byAdmin.object["project"] as? String == adminProject)
            }
            // Each token was validated by Keystone once; the rest came from the cache.
            #expect(validator.validationCount <= 6, "\(validator.validationCount) validations")
        }

        @Test("Keystone refusing Herald's own service user is a 503 naming it, not a 401")
        func badServiceUser() async throws {
            var keystone = try KeystoneFixture()
            try await keystone.setUp()
            var configuration = keystone.configuration
            configuration.password = "wrong"
            let validator = KeystoneValidator(configuration: configuration, logger: Logger(label: "test"))
            let application = Application(router: harness.api.router(authenticator: KeystoneAuthenticator(validator: validator)))
            let token = try await keystone.userToken("a")
            try await application.test(.router) { client in
                let reply = try await call(client, .get, "/v1/subscriptions", token: token)
                #expect(reply.status == .serviceUnavailable)
                #expect(reply.message.contains(keystone.serviceUser), "\(reply.message)")
            }
        }
    }
}
