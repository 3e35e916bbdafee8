import Foundation
import HTTPTypes
import HeraldModel
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

@Suite("Policy rules in oslo.policy's syntax")
struct PolicyRuleTests {
    func credentials(
        _ roles: [String], project: String = "p1", user: String? = "u1", adminProject: Bool = false
    ) -> PolicyCredentials {
        Caller(project: project, roles: roles, isAdminProject: adminProject, userID: user).credentials
    }

    @Test("the language: role, rule, project_id:%(project_id)s, literals, and/or/not, parentheses, @ and !")
    func language() throws {
        let rules: [String: PolicyRule] = [
            "member": try PolicyRule(parsing: "role:member and project_id:%(project_id)s"),
            "either": try PolicyRule(parsing: "rule:member or (role:admin and is_admin_project:True)"),
            "negated": try PolicyRule(parsing: "not role:reader"),
            "always": try PolicyRule(parsing: "@"), "never": try PolicyRule(parsing: "!"),
            "empty": try PolicyRule(parsing: ""),
            "owner": try PolicyRule(parsing: "user_id:%(trustor_id)s"),
        ]
        func holds(
            _ name: String, _ credentials: PolicyCredentials, _ target: [String: String] = ["project_id": "p1"]
        ) -> Bool {
            rules[name]!.holds(credentials, target, rules: rules, depth: 0)
        }
        #expect(holds("member", credentials(["member"])))
        #expect(!holds("member", credentials(["member"]), ["project_id": "p2"]))
        #expect(!holds("member", credentials(["reader"])))
        #expect(holds("member", credentials(["admin"])), "admin implies member")
        #expect(holds("either", credentials(["admin"], adminProject: true), ["project_id": "p9"]))
        #expect(!holds("either", credentials(["admin"], adminProject: false), ["project_id": "p9"]))
        #expect(!holds("negated", credentials(["member"])), "member implies reader")
        #expect(
            holds("always", credentials([])) && !holds("never", credentials(["admin"]))
                && holds("empty", credentials([])))
        #expect(holds("owner", credentials(["member"]), ["trustor_id": "u1"]))
        #expect(!holds("owner", credentials(["member"], user: "u2"), ["trustor_id": "u1"]))
        for bad in ["role:", "and role:x", "(role:x", "role:x or", "http://x/check", "justaword"] {
            #expect(throws: PolicyError.self, "\(bad)") { try PolicyRule(parsing: bad) }
        }
    }

    @Test("every default parses and refers only to rules that exist")
    func defaults() throws {
        for (name, text) in Policy.building.map({ ($0.name, $0.rule) }) + Policy.operations.map({ ($0.name, $0.rule) })
        {
            let rule = try PolicyRule(parsing: text)
            #expect(rule != .never || text == "!", "\(name)")
            let known = Set(Policy.building.map(\.name) + Policy.operations.map(\.name))
            #expect(rule.references.allSatisfy(known.contains), "\(name)")
        }
    }

    @Test("a policy file changes a rule; an unknown rule name stops start-up naming it and its line")
    func files() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString + ".yaml").path
        try "\"dead_letter:purge\": \"role:admin and project_id:%(project_id)s\"\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        let policy = try Policy.load(path: path)
        #expect(!policy.allows("dead_letter:purge", credentials: credentials(["member"]), target: ["project_id": "p1"]))
        #expect(policy.allows("dead_letter:purge", credentials: credentials(["admin"]), target: ["project_id": "p1"]))
        #expect(policy.effective.first { $0.name == "dead_letter:purge" }?.overridden == true)
        try "\"subscription:get\": \"@\"\n\"subscription:frobnicate\": \"@\"\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        #expect {
            _ = try Policy.load(path: path)
        } throws: { error in
            "\(error)".contains("unknown rule 'subscription:frobnicate'") && "\(error)".contains(":2:")
        }
        try "\"project_reader\": \"rule:cloud_admin\"\n\"cloud_admin\": \"not rule:project_reader\"\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        #expect {
            _ = try Policy.load(path: path)
        } throws: { error in
            "\(error)".contains("cycle")
        }
        try "\"subscription:get\": \"@\"\n\"subscription:frobnicate\": \"@\"\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        do {
            _ = try NodeConfiguration.fromEnvironment(["HERALD_POLICY_FILE": path, "HERALD_API_AUTH": "trusted-header"])
            Issue.record("accepted an unknown rule")
        } catch {
            #expect("\(error)".contains("HERALD_POLICY_FILE") && "\(error)".contains("frobnicate"), "\(error)")
        }
    }
}

extension APISuites {
    /// Each route's answer per persona, as docs/identity.md's policy table says (trusted-header
    /// mode: the roles come from X-Roles; the Keystone mode reads the same roles from the token).
    @Suite("Policy per persona")
    struct PolicyPersonaTests {
        struct Persona: Sendable {
            var name: String
            var project: String
            var roles: String
            var user: String
        }

        static let reader = Persona(name: "reader", project: "p1", roles: "reader", user: "r1")
        static let member = Persona(name: "member", project: "p1", roles: "member", user: "m1")
        static let otherMember = Persona(name: "second member", project: "p1", roles: "member", user: "m2")
        static let stranger = Persona(name: "member of another project", project: "p2", roles: "member", user: "s1")
        static let admin = Persona(name: "cloud admin", project: "admin", roles: "admin", user: "a1")

        func call(
            _ client: APIHarness.Client, _ persona: Persona, _ method: HTTPRequest.Method, _ uri: String,
            json: Any? = nil
        ) async throws -> APIHarness.Reply {
            try await client.call(
                method, uri, project: persona.project, roles: persona.roles, user: persona.user, json: json)
        }

        @Test(
            "readers read, members write, only the trustor changes a trusted target, all-projects is the cloud admin's")
        func table() async throws {
            let harness = try APIHarness()
            try await harness.test { client in
                let body: [String: Any] = ["event_types": ["compute.*"], "target": ["queue": "q"]]
                // Create: members yes, readers no.
                #expect(
                    try await call(client, Self.reader, .post, "/v1/subscriptions", json: body).status == .forbidden)
                let created = try await call(client, Self.member, .post, "/v1/subscriptions", json: body)
                #expect(created.status == .created, "\(created.text)")
                let id = try #require(created.object["id"] as? String)
                #expect(created.object["created_by"] as? String == "m1")
                // Read: readers yes; another project never sees it.
                #expect(try await call(client, Self.reader, .get, "/v1/subscriptions/\(id)").status == .ok)
                #expect(try await call(client, Self.reader, .get, "/v1/subscriptions").status == .ok)
                #expect(try await call(client, Self.stranger, .get, "/v1/subscriptions/\(id)").status == .notFound)
                // A test event: members yes, readers no, another project not found.
                #expect(try await call(client, Self.reader, .post, "/v1/subscriptions/\(id)/test").status == .forbidden)
                #expect(
                    try await call(client, Self.stranger, .post, "/v1/subscriptions/\(id)/test").status == .notFound)
                let tested = try await call(client, Self.otherMember, .post, "/v1/subscriptions/\(id)/test")
                #expect(tested.status == .ok && tested.object["delivered"] as? Bool == true, "\(tested.text)")
                // Change and delete: members yes, readers no.
                #expect(
                    try await call(client, Self.reader, .patch, "/v1/subscriptions/\(id)", json: ["message_ttl": 600])
                        .status == .forbidden)
                let patched = try await call(
                    client, Self.otherMember, .patch, "/v1/subscriptions/\(id)", json: ["message_ttl": 600])
                #expect(patched.status == .ok)
                #expect(patched.object["updated_by"] as? String == "m2")
                // Dead letters: readers list, only members replay and purge.
                #expect(try await call(client, Self.reader, .get, "/v1/dead-letters").status == .ok)
                #expect(try await call(client, Self.reader, .delete, "/v1/dead-letters").status == .forbidden)
                #expect(try await call(client, Self.member, .delete, "/v1/dead-letters").status == .ok)
                // All projects: the cloud admin only, and never handed to another project.
                var all = body
                all["all_projects"] = true
                #expect(try await call(client, Self.member, .post, "/v1/subscriptions", json: all).status == .forbidden)
                let feed = try await call(client, Self.admin, .post, "/v1/subscriptions", json: all)
                #expect(feed.status == .created, "\(feed.text)")
                all["project"] = "p2"
                #expect(try await call(client, Self.admin, .post, "/v1/subscriptions", json: all).status == .badRequest)
                // Another project's subscription: the cloud admin may make one, a member may not.
                var forOther = body
                forOther["project"] = "p2"
                #expect(
                    try await call(client, Self.member, .post, "/v1/subscriptions", json: forOther).status == .forbidden
                )
                #expect(
                    try await call(client, Self.admin, .post, "/v1/subscriptions", json: forOther).status == .created)
                #expect(try await call(client, Self.reader, .delete, "/v1/subscriptions/\(id)").status == .forbidden)
                #expect(try await call(client, Self.member, .delete, "/v1/subscriptions/\(id)").status == .noContent)
                // The rules in force, for everyone who is someone.
                let rules = try await call(client, Self.reader, .get, "/v1/policy")
                #expect(rules.status == .ok)
                #expect(
                    (rules.object["rules"] as? [[String: Any]])?.contains {
                        $0["name"] as? String == "subscription:update_trusted_target"
                    } == true)
            }
        }

        @Test(
            "an all-projects subscription's dead letters hold every project's events: the admin project's readers and members do not see them, the cloud admin does with all_projects=true"
        )
        func allProjectsDeadLetters() async throws {
            let harness = try APIHarness()
            let adminReader = Persona(name: "admin project's reader", project: "admin", roles: "reader", user: "ar1")
            let adminMember = Persona(name: "admin project's member", project: "admin", roles: "member", user: "am1")
            @Sendable func letter(_ event: String, allProjects: Bool) -> DeadLetter {
                DeadLetter(
                    reason: .notFound, detail: "no such queue", subscriptionID: "s-" + event, eventID: event,
                    project: "admin", body: "{\"event\":{\"project\":\"p7\"}}", at: 1, allProjects: allProjects)
            }
            try await harness.deadLetters.append([
                letter("own", allProjects: false), letter("every-project", allProjects: true),
            ])
            try await harness.test { client in
                func events(_ reply: APIHarness.Reply) -> [String] {
                    (reply.object["dead_letters"] as? [[String: Any]] ?? []).compactMap { $0["event_id"] as? String }
                }
                for persona in [adminReader, adminMember, Self.admin] {
                    let own = try await call(client, persona, .get, "/v1/dead-letters")
                    #expect(own.status == .ok && events(own) == ["own"], "\(persona.name): \(own.text)")
                }
                for persona in [adminReader, adminMember, Self.member] {
                    for (method, uri) in [
                        (HTTPRequest.Method.get, "/v1/dead-letters?all_projects=true"),
                        (.post, "/v1/dead-letters/replay?all_projects=true"),
                        (.delete, "/v1/dead-letters?all_projects=true"),
                    ] {
                        let refused = try await call(client, persona, method, uri)
                        #expect(refused.status == .forbidden, "\(persona.name) \(method) \(uri): \(refused.text)")
                    }
                }
                let bad = try await call(client, Self.admin, .get, "/v1/dead-letters?all_projects=maybe")
                #expect(bad.status == .badRequest && bad.message.hasPrefix("all_projects:"), "\(bad.text)")
                let every = try await call(client, Self.admin, .get, "/v1/dead-letters?all_projects=true")
                #expect(every.status == .ok && events(every) == ["every-project"], "\(every.text)")
                let first = (every.object["dead_letters"] as? [[String: Any]])?.first
                #expect(first?["all_projects"] as? Bool == true)
                // Its subscription is gone: the replay says so and keeps it.
                let replay = try await call(client, Self.admin, .post, "/v1/dead-letters/replay?all_projects=true")
                #expect(replay.status == .ok, "\(replay.text)")
                #expect((replay.object["failed"] as? [[String: Any]])?.count == 1, "\(replay.text)")
                #expect(
                    try await call(client, Self.admin, .get, "/v1/dead-letters?all_projects=").status == .badRequest,
                    "an empty value is not taken for true")
                // A letter of a live feed, replayed by a cloud admin acting in another project: its
                // subscription is found under the project that owns it, and the message reaches its queue.
                let queue = "feed-" + UUID().uuidString.prefix(8).lowercased()
                let feed = try await call(
                    client, Self.admin, .post, "/v1/subscriptions",
                    json: ["event_types": ["compute.*"], "all_projects": true, "target": ["queue": queue]])
                let feedID = try #require(feed.object["id"] as? String, "\(feed.text)")
                var live = letter("live", allProjects: true)
                live.subscriptionID = feedID
                live.body = #"{"ttl": 600, "body": {"event": {"event_type": "compute.instance.update"}}}"#
                try await harness.deadLetters.append([live])
                let elsewhere = Persona(
                    name: "cloud admin in another project", project: "p9", roles: "admin", user: "a2")
                let replayed = try await call(client, elsewhere, .post, "/v1/dead-letters/replay?all_projects=true")
                #expect((replayed.object["replayed"] as? [String])?.count == 1, "\(replayed.text)")
                #expect(try await harness.zaqar.bodies(queue: queue, project: "admin").count == 1)
                let purged = try await call(client, Self.admin, .delete, "/v1/dead-letters?all_projects=true")
                #expect(purged.object["purged"] as? Int == 1, "the replayed one left, the other stays: \(purged.text)")
                let left = try await call(client, adminReader, .get, "/v1/dead-letters")
                #expect(events(left) == ["own"], "the project's own letter stays: \(left.text)")
            }
        }

        @Test(
            "the admin project's feed made all-projects by a cloud admin: its members can neither change, test nor delete it through /v1/feed or its id"
        )
        func allProjectsFeed() async throws {
            let harness = try APIHarness()
            let adminMember = Persona(name: "admin project's member", project: "admin", roles: "member", user: "am1")
            try await harness.test { client in
                let made = try await call(client, Self.admin, .put, "/v1/feed", json: ["queue": "every-event"])
                #expect(made.status == .created, "\(made.text)")
                let id = try #require(made.object["id"] as? String, "\(made.text)")
                let widened = try await call(
                    client, Self.admin, .patch, "/v1/subscriptions/\(id)", json: ["all_projects": true])
                #expect(widened.status == .ok && widened.object["all_projects"] as? Bool == true, "\(widened.text)")
                for (method, uri, json) in [
                    (HTTPRequest.Method.put, "/v1/feed", ["queue": "mine"] as [String: Any]?),
                    (.delete, "/v1/feed", nil), (.post, "/v1/subscriptions/\(id)/test", nil),
                    (.patch, "/v1/subscriptions/\(id)", ["message_ttl": 900]),
                    (.delete, "/v1/subscriptions/\(id)", nil),
                ] {
                    let refused = try await call(client, adminMember, method, uri, json: json)
                    #expect(refused.status == .forbidden, "\(method) \(uri): \(refused.text)")
                }
                let stored = try #require(try await harness.registry.get(id: id, project: "admin"))
                #expect(stored.target.queue == "every-event" && stored.allProjects, "nothing changed")
                let gone = try await call(client, Self.admin, .delete, "/v1/feed")
                #expect(gone.status == .noContent, "the cloud admin may: \(gone.text)")
            }
        }

        @Test("the token-capture path is closed: a second member cannot point a trust-backed subscription elsewhere")
        func trustedTarget() async throws {
            let harness = try APIHarness()
            // A subscription with a trust of member m1, as the Keystone flow stores it.
            var made = Subscription(
                project: "p1", eventTypes: ["compute.*"], target: Target(queue: "q"), trustID: "trust-of-m1")
            made.createdBy = "m1"
            let subscription = made
            try await harness.registry.create(subscription)
            try await harness.test { client in
                let moved = try await call(
                    client, Self.otherMember, .patch, "/v1/subscriptions/\(subscription.id)",
                    json: ["target": ["queue": "q", "zaqar_url": "http://attacker.example:8888"]])
                #expect(moved.status == .forbidden)
                #expect(moved.message.hasPrefix("target:"), "\(moved.message)")
                #expect(
                    try await harness.registry.get(id: subscription.id, project: "p1")?.target.zaqarURL == nil,
                    "nothing changed")
                // Other fields stay open to the project's members; the trustor may move the target.
                #expect(
                    try await call(
                        client, Self.otherMember, .patch, "/v1/subscriptions/\(subscription.id)",
                        json: ["message_ttl": 900]
                    ).status == .ok)
                let own = try await call(
                    client, Self.member, .patch, "/v1/subscriptions/\(subscription.id)",
                    json: ["target": ["queue": "q2"]])
                #expect(own.status == .ok, "\(own.text)")
            }
        }
    }
}

extension APISuites {
    @Suite("Conditions cannot read what tenants never receive")
    struct RedactedConditionTests {
        @Test(
            "a stored subscription with a condition on a redacted field (made before the rule) says in its warnings that it receives nothing"
        )
        func storedConditionWarned() async throws {
            let harness = try APIHarness()
            let stored = try await harness.registry.create(
                Subscription(
                    project: "p1", eventTypes: ["compute.*"],
                    conditions: [Condition(field: "payload.host", op: .eq, value: .string("compute-3"))],
                    target: Target(queue: "q")))
            try await harness.test { client in
                let reply = try await client.call(.get, "/v1/subscriptions/\(stored.id)", project: "p1")
                let warnings = reply.object["warnings"] as? [String] ?? []
                #expect(
                    warnings.contains { $0.hasPrefix("conditions[0].field") && $0.contains("receives nothing") },
                    "\(reply.text)")
            }
        }

        @Test(
            "a condition on a redacted field is a 400 naming it (create and PATCH); exists, other fields and an admin's unredacted subscription pass"
        )
        func conditions() async throws {
            let harness = try APIHarness()
            try await harness.test { client in
                func create(
                    _ condition: [String: Any], roles: String = "member", project: String = "p1",
                    extra: [String: Any] = [:]
                ) async throws -> APIHarness.Reply {
                    var body: [String: Any] = [
                        "event_types": ["compute.*", "port.*"], "target": ["queue": "q"], "conditions": [condition],
                    ]
                    body.merge(extra) { $1 }
                    return try await client.call(
                        .post, "/v1/subscriptions", project: project, roles: roles, user: "u1", json: body)
                }
                for refused: [String: Any] in [
                    ["field": "payload.host", "op": "prefix", "value": "compute-1"],
                    ["field": "payload.port.binding:host_id", "op": "eq", "value": "compute-1"],
                    ["field": "payload.ports.0.binding:profile.pci_slot", "op": "eq", "value": "x"],
                    ["field": "payload.nova_object.data.node", "op": "in", "value": ["a", "b"]],
                    ["field": "publisher_id", "op": "eq", "value": "compute.compute-1"],
                    ["field": "traits.host", "op": "eq", "value": "compute-1"],
                    ["field": "payload.port", "op": "eq", "value": ["binding:host_id": "compute-1"]],
                ] {
                    let reply = try await create(refused)
                    #expect(reply.status == .badRequest, "\(refused): \(reply.text)")
                    #expect(reply.message.hasPrefix("conditions[0].field:"), "\(reply.message)")
                }
                for allowed: [String: Any] in [
                    ["field": "payload.state", "op": "eq", "value": "active"],
                    ["field": "payload.hostname", "op": "prefix", "value": "web"],
                    ["field": "payload.host", "op": "exists"],
                    ["field": "payload.port", "op": "exists"],
                ] {
                    let reply = try await create(allowed)
                    #expect(reply.status == .created, "\(allowed): \(reply.text)")
                }
                let made = try await create(["field": "payload.state", "op": "eq", "value": "active"])
                let id = try #require(made.object["id"] as? String)
                let patched = try await client.call(
                    .patch, "/v1/subscriptions/\(id)", project: "p1", roles: "member", user: "u1",
                    json: ["conditions": [["field": "payload.node", "op": "eq", "value": "n1"]]])
                #expect(patched.status == .badRequest, "\(patched.text)")
                // The cloud admin's unredacted feed sees the hosts, so it may test them.
                let admin = try await create(
                    ["field": "payload.host", "op": "prefix", "value": "compute-1"], roles: "admin", project: "admin",
                    extra: ["all_projects": true, "unredacted": true])
                #expect(admin.status == .created, "\(admin.text)")
                // unredacted is the cloud admin's, and an all-projects subscription's only.
                #expect(
                    try await create(
                        ["field": "payload.state", "op": "eq", "value": "active"], extra: ["unredacted": true]
                    ).status == .forbidden)
                #expect(
                    try await create(
                        ["field": "payload.state", "op": "eq", "value": "active"], roles: "admin", project: "admin",
                        extra: ["unredacted": true]
                    ).status == .badRequest)
            }
        }
    }
}
