import Foundation
import HTTPTypes
import HeraldModel
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOFoundationCompat
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

extension APISuites {
    /// docs/identity.md's "Answers per persona" table, route by route and persona by persona,
    /// against the real Keystone: the test reads the table, so changing the policy or the table
    /// alone fails it.
    @Suite("Policy per persona, with real Keystone tokens")
    struct KeystonePersonaTests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        struct Persona {
            var token: String
            /// What a system-scoped token adds to name the project it acts on.
            var query = ""
        }

        /// The table: requests (first column) by persona (header), each cell an HTTP status.
        static func table() throws -> (personas: [String], rows: [(request: String, statuses: [Int])]) {
            let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
                .appendingPathComponent("docs/identity.md").path
            let text = try String(contentsOfFile: path, encoding: .utf8)
            guard let start = text.range(of: "## Answers per persona") else {
                throw TestFailure("docs/identity.md has no \"## Answers per persona\" section")
            }
            let lines = text[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).map(
                String.init)
            func cells(_ line: String) -> [String] {
                line.split(separator: "|", omittingEmptySubsequences: false).dropFirst().dropLast().map {
                    $0.trimmingCharacters(in: .whitespaces)
                }
            }
            guard let header = lines.firstIndex(where: { $0.hasPrefix("|") }) else {
                throw TestFailure("no table under Answers per persona")
            }
            let personas = Array(cells(lines[header]).dropFirst())
            var rows: [(String, [Int])] = []
            for line in lines[(header + 2)...] {
                guard line.hasPrefix("|") else { break }
                let row = cells(line)
                let statuses = row.dropFirst().compactMap { Int($0) }
                guard statuses.count == personas.count else {
                    throw TestFailure(
                        "docs/identity.md row '\(row.first ?? "")' has \(statuses.count) statuses for \(personas.count) personas"
                    )
                }
                rows.append((row[0], statuses))
            }
            return (personas, rows)
        }

        /// The harness's API behind Keystone (the fixture's service user), the fixture's admin
        /// project the cloud admins'.
        func application(_ keystone: KeystoneFixture) -> some ApplicationProtocol {
            var configuration = KeystoneConfiguration(
                url: keystone.url + "/v3", username: keystone.serviceUser, password: keystone.servicePassword,
                project: keystone.serviceProject,
                userDomain: "Default", projectDomain: "Default", cacheTTL: .seconds(60)
            )
            configuration.adminProject = keystone.adminProjectID
            let client = KeystoneClient(configuration: configuration, logger: Logger(label: "test"))
            var services = harness.api.services
            services.keystone = client
            return Application(
                router: HeraldAPI(services: services).router(authenticator: KeystoneAuthenticator(keystone: client)))
        }

        @Test(
            "a system-scoped admin follows every list's next links to the end: each link names the project it acts on (and all_projects when asked)"
        )
        func systemAdminPages() async throws {
            let keystone = try await KeystoneFixture.make()
            let projectA = try #require(keystone.projects["a"])
            let token = try await keystone.systemAdminToken()
            var subscriptions: Set<String> = []
            for _ in 0..<5 {
                let made = Subscription(project: projectA, eventTypes: ["compute.*"], target: Target(queue: "pages"))
                try await harness.registry.create(made)
                subscriptions.insert(made.id)
            }
            func letter(_ n: Int, allProjects: Bool) -> DeadLetter {
                DeadLetter(
                    reason: .rejected, detail: "page \(n)", project: projectA, body: "{}",
                    at: Date().timeIntervalSince1970, allProjects: allProjects)
            }
            _ = try await harness.deadLetters.append((0..<5).map { letter($0, allProjects: false) })
            _ = try await harness.deadLetters.append((0..<5).map { letter($0, allProjects: true) })
            try await application(keystone).test(.router) { [subscriptions] http in
                /// The items of every page from `first` on, following `next`.
                func follow(_ first: String, items key: String) async throws -> [[String: Any]] {
                    var items: [[String: Any]] = []
                    var next: String? = first
                    var pages = 0
                    while let uri = next, pages < 10 {
                        let reply = try await APIHarness.call(http, .get, uri, token: token)
                        try #require(reply.status == .ok, "\(uri): \(reply.status.code) \(reply.message)")
                        items += reply.object[key] as? [[String: Any]] ?? []
                        next = reply.object["next"] as? String
                        pages += 1
                    }
                    #expect(pages == 3, "5 items 2 at a time")
                    return items
                }
                let listed = try await follow(
                    "/v1/subscriptions?limit=2&project_id=\(projectA)", items: "subscriptions")
                #expect(Set(listed.compactMap { $0["id"] as? String }) == subscriptions)
                for query in ["", "&all_projects=true"] {
                    let letters = try await follow(
                        "/v1/dead-letters?limit=2&project_id=\(projectA)\(query)", items: "dead_letters")
                    #expect(letters.count == 5, "\(query)")
                    #expect(
                        letters.allSatisfy { ($0["all_projects"] as? Bool ?? false) == !query.isEmpty },
                        "\(query): only the scope asked for")
                }
            }
        }

        @Test("every route answers every persona as docs/identity.md's table says")
        func personas() async throws {
            let keystone = try await KeystoneFixture.make()
            let projectA = try #require(keystone.projects["a"])
            let trustor = try #require(keystone.users["a"])
            let personas: [String: Persona] = [
                "reader": Persona(token: try await keystone.user("reader", role: "reader", on: "a").token),
                "member": Persona(token: try await keystone.userToken("a")),
                "second member": Persona(token: try await keystone.user("member2", role: "member", on: "a").token),
                "member of another project": Persona(token: try await keystone.userToken("b")),
                "project admin": Persona(token: try await keystone.user("padmin", role: "admin", on: "a").token),
                "system admin": Persona(token: try await keystone.systemAdminToken(), query: "project_id=\(projectA)"),
                "cloud admin": Persona(token: try await keystone.adminToken()),
                "app credential for compute": Persona(
                    token: try await keystone.applicationCredentialToken(
                        "a",
                        accessRules: [
                            ["service": "compute", "path": "/v2.1/servers", "method": "GET"]
                        ])),
                "app credential reading subscriptions": Persona(
                    token: try await keystone.applicationCredentialToken(
                        "a",
                        accessRules: [
                            ["service": "events", "path": "/v1/subscriptions", "method": "GET"],
                            ["service": "events", "path": "/v1/subscriptions/*", "method": "GET"],
                        ])),
            ]
            let (columns, rows) = try Self.table()
            #expect(Set(columns) == Set(personas.keys), "the table's personas are the ones this test makes")
            #expect(rows.count >= 12)

            try await application(keystone).test(.router) { http in
                let body: [String: Any] = [
                    "event_types": ["compute.*"], "target": ["queue": "persona"], "trust": false,
                ]
                for (request, statuses) in rows {
                    for (column, expected) in zip(columns, statuses) {
                        let persona = try #require(personas[column])
                        // A subscription of project A for each cell: made by the member, with a
                        // trust of theirs (never used here: only its trustor is checked).
                        var made = Subscription(
                            project: projectA, eventTypes: ["compute.*"], target: Target(queue: "persona"),
                            trustID: "trust-\(UUID().uuidString)")
                        made.createdBy = trustor
                        try await harness.registry.create(made)
                        let id = made.id
                        let (method, path, json): (HTTPRequest.Method, String, [String: Any]?) =
                            switch request {
                            case "`GET /v1/subscriptions`": (.get, "/v1/subscriptions", nil)
                            case "`GET /v1/subscriptions/{id}`": (.get, "/v1/subscriptions/\(id)", nil)
                            case "`POST /v1/subscriptions`": (.post, "/v1/subscriptions", body)
                            case "`POST /v1/subscriptions` for another project":
                                (
                                    .post, "/v1/subscriptions",
                                    body.merging(["project": "f0e1d2c3b4a5968778695a4b3c2d1e0f"]) { $1 }
                                )
                            case "`POST /v1/subscriptions` all projects":
                                (.post, "/v1/subscriptions", body.merging(["all_projects": true]) { $1 })
                            case "`PATCH /v1/subscriptions/{id}` message_ttl":
                                (.patch, "/v1/subscriptions/\(id)", ["message_ttl": 900])
                            case "`PATCH /v1/subscriptions/{id}` target, the member's trust":
                                (.patch, "/v1/subscriptions/\(id)", ["target": ["queue": "elsewhere"]])
                            case "`DELETE /v1/subscriptions/{id}`": (.delete, "/v1/subscriptions/\(id)", nil)
                            case "`GET /v1/dead-letters`": (.get, "/v1/dead-letters", nil)
                            case "`GET /v1/dead-letters?all_projects=true`":
                                (.get, "/v1/dead-letters?all_projects=true", nil)
                            case "`POST /v1/dead-letters/replay`": (.post, "/v1/dead-letters/replay", nil)
                            case "`DELETE /v1/dead-letters`": (.delete, "/v1/dead-letters", nil)
                            case "`GET /v1/policy`": (.get, "/v1/policy", nil)
                            default:
                                throw TestFailure("docs/identity.md names a request this test cannot make: \(request)")
                            }
                        let uri =
                            persona.query.isEmpty ? path : path + (path.contains("?") ? "&" : "?") + persona.query
                        let reply = try await APIHarness.call(http, method, uri, token: persona.token, json: json)
                        #expect(
                            Int(reply.status.code) == expected,
                            "\(request) as \(column): \(reply.status.code) \(reply.message)")
                        if method == .patch, column == "second member", path.hasSuffix(id), json?["target"] != nil {
                            #expect(
                                try await harness.registry.get(id: id, project: projectA)?.target.queue == "persona",
                                "a refused target change stores nothing")
                        }
                    }
                }
            }
        }
    }
}
