import Delivery
import Foundation
import HTTPTypes
import HeraldModel
import Logging
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

/// The API suites share the real Redis; `scripts/test` runs them in the pass without restarts.
@Suite("API against the real Redis and Zaqar", .serialized)
enum APISuites {}

extension APISuites {
    @Suite("Subscriptions API")
    struct SubscriptionAPITests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        /// A create body with a pre-signed URL, one field replaced (JSON text, escapes and all).
        static func signed(
            signature: String = "abc", expires: String = "2099-01-01T00:00:00",
            methods: String = #"["POST"]"#, paths: String = #"["/v2/queues/q/messages"]"#
        ) -> String {
            #"{"event_types": ["compute.*"], "target": {"queue": "q", "signed_url": {"signature": ""#
                + signature + #"", "expires": ""# + expires + #"", "methods": "# + methods + #", "paths": "# + paths
                + #", "project": "p1"}}}"#
        }

        static var valid: [String: Any] {
            [
                "event_types": ["compute.instance.*", "!compute.instance.update"],
                "conditions": [["field": "payload.state", "op": "eq", "value": "active"]],
                "target": ["queue": "my-events"],
                "message_ttl": 600,
            ]
        }

        @Test("create, get, list, patch, delete; another project sees 404")
        func lifecycle() async throws {
            try await harness.test { client in
                let created = try await client.call(.post, "/v1/subscriptions", json: Self.valid)
                #expect(created.status == .created, "\(created.text)")
                let id = try #require(created.object["id"] as? String)
                #expect(created.headers[.location] == "/v1/subscriptions/\(id)")
                #expect(created.object["project"] as? String == "p1")
                #expect(
                    created.object["event_types"] as? [String] == ["compute.instance.*", "!compute.instance.update"])
                #expect(created.object["message_ttl"] as? Int == 600)

                let got = try await client.call(.get, "/v1/subscriptions/\(id)")
                #expect(got.status == .ok)
                #expect(got.object["id"] as? String == id)
                #expect(try await client.call(.get, "/v1/subscriptions/\(id)", project: "p2").status == .notFound)
                #expect(try await client.call(.delete, "/v1/subscriptions/\(id)", project: "p2").status == .notFound)
                #expect(
                    try await client.call(.patch, "/v1/subscriptions/\(id)", project: "p2", json: ["message_ttl": 60])
                        .status == .notFound)

                let patched = try await client.call(
                    .patch, "/v1/subscriptions/\(id)", json: ["message_ttl": 7200, "conditions": [] as [Any]])
                #expect(patched.status == .ok, "\(patched.text)")
                #expect(patched.object["message_ttl"] as? Int == 7200)
                #expect((patched.object["conditions"] as? [Any])?.isEmpty == true)
                #expect(
                    patched.object["event_types"] as? [String] == ["compute.instance.*", "!compute.instance.update"],
                    "untouched fields stay")
                let stored = try await harness.registry.get(id: id, project: "p1")
                #expect(stored?.messageTTL == 7200)

                #expect(try await client.call(.delete, "/v1/subscriptions/\(id)").status == .noContent)
                #expect(try await client.call(.delete, "/v1/subscriptions/\(id)").status == .notFound)
                #expect(try await client.call(.get, "/v1/subscriptions/\(id)").status == .notFound)
            }
        }

        @Test("PATCHes of different fields sent at once: every answered change holds")
        func concurrentPatches() async throws {
            try await harness.test { client in
                let created = try await client.call(.post, "/v1/subscriptions", json: Self.valid)
                let id = try #require(created.object["id"] as? String)
                let changes: [(String, Any)] = [
                    ("message_ttl", 7200), ("event_types", ["image.*"]), ("conditions", [] as [Any]),
                    ("target", ["queue": "elsewhere"]), ("resource_id", "r-1"), ("format", "cloudevents"),
                ]
                let answers = try await withThrowingTaskGroup(of: (String, HTTPResponse.Status).self) { group in
                    for (key, value) in changes {
                        let body = [key: value] as [String: Any]
                        let json = try JSONSerialization.data(withJSONObject: body)
                        group.addTask {
                            let object = try JSONSerialization.jsonObject(with: json)
                            let reply = try await client.call(.patch, "/v1/subscriptions/\(id)", json: object)
                            return (key, reply.status)
                        }
                    }
                    return try await group.reduce(into: [String: HTTPResponse.Status]()) { $0[$1.0] = $1.1 }
                }
                #expect(answers.values.allSatisfy { $0 == .ok || $0 == .conflict }, "\(answers)")
                #expect(answers.values.contains(.ok))
                let stored = try #require(try await harness.registry.get(id: id, project: "p1"))
                let held: [String: Bool] = [
                    "message_ttl": stored.messageTTL == 7200, "event_types": stored.eventTypes == ["image.*"],
                    "conditions": stored.conditions.isEmpty, "target": stored.target.queue == "elsewhere",
                    "resource_id": stored.resourceID == "r-1", "format": stored.format == .cloudevents,
                ]
                for (key, status) in answers where status == .ok {
                    #expect(held[key] == true, "\(key) was answered 200 but is not stored")
                }
                for (key, status) in answers where status == .conflict {
                    #expect(held[key] == false, "\(key) was answered 409 but is stored")
                }
            }
        }

        @Test(
            "a pre-signed URL's signature is kept for delivery but never answered: not on create, get, list or patch"
        )
        func signatureNeverAnswered() async throws {
            try await harness.test { client in
                let signed: [String: Any] = [
                    "signature": "secret-signature-0123456789abcdef", "expires": "2099-01-01T00:00:00",
                    "methods": ["POST"], "paths": ["/v2/queues/signed/messages"], "project": "p1",
                ]
                var body = Self.valid
                body["target"] = ["queue": "signed", "signed_url": signed]
                let created = try await client.call(.post, "/v1/subscriptions", json: body)
                #expect(created.status == .created, "\(created.text)")
                let id = try #require(created.object["id"] as? String)
                let patched = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["message_ttl": 900])
                #expect(patched.status == .ok, "\(patched.text)")
                let answers = [
                    created, try await client.call(.get, "/v1/subscriptions/\(id)"),
                    try await client.call(.get, "/v1/subscriptions"), patched,
                ]
                for answer in answers {
                    #expect(!answer.text.contains("secret-signature"), "\(answer.text)")
                    #expect(answer.text.contains("2099-01-01T00:00:00"), "the rest of it is answered: \(answer.text)")
                }
                let stored = try await harness.registry.get(id: id, project: "p1")
                #expect(stored?.target.signedURL?.signature == "secret-signature-0123456789abcdef")
                #expect(try await client.call(.delete, "/v1/subscriptions/\(id)").status == .noContent)
            }
        }

        @Test(
            "the renewer sends no token to a Zaqar taken off the allowed list; one still allowed is renewed (here: fails for want of Keystone)"
        )
        func renewerKeepsToAllowedEndpoints() async throws {
            let now = Date()
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withFullDate, .withTime, .withColonSeparatorInTime, .withDashSeparatorInDate]
            let soon = String(formatter.string(from: now.addingTimeInterval(600)).prefix(19))
            func expiring(_ url: String) -> Subscription {
                Subscription(
                    project: "p1", eventTypes: ["compute.*"],
                    target: Target(
                        queue: "q", zaqarURL: url,
                        signedURL: SignedURL(
                            signature: "s", expires: soon, methods: ["POST"], paths: ["/v2/queues/q/messages"],
                            project: "p1")), trustID: "t")
            }
            let removed = try await harness.registry.create(expiring("http://removed.example:8888"))
            let allowed = try await harness.registry.create(expiring("http://zaqar.example:8888"))
            let zaqar = ZaqarClient()
            let keeper = SignedURLKeeper(
                registry: harness.registry, keystone: nil, zaqar: zaqar,
                defaultZaqarURL: "http://zaqar.example:8888", policy: SignedURLPolicy(renewBefore: .seconds(3600)),
                endpoints: try ZaqarEndpoints(urls: ["http://zaqar.example:8888"]), isLeader: { true },
                logger: Logger(label: "test"))
            let pass = try await keeper.check(now: now)
            #expect(pass.notAllowed == [removed.id])
            #expect(pass.failed == [allowed.id])
            #expect(pass.renewed.isEmpty)
            #expect(keeper.warnedSubscriptions == [removed.id])
            // Deleted, it is forgotten after the next whole pass (the memory was for the node's life).
            #expect(try await harness.registry.delete(id: removed.id, project: "p1"))
            _ = try await keeper.check(now: now)
            #expect(keeper.warnedSubscriptions.isEmpty)
            await zaqar.shutdown()
        }

        @Test("list pages follow the next link to the end, in id order, only the caller's project")
        func paging() async throws {
            try await harness.test { client in
                var ids: [String] = []
                for index in 0..<5 {
                    var body = Self.valid
                    body["target"] = ["queue": "q\(index)"]
                    ids.append(
                        try #require(
                            try await client.call(.post, "/v1/subscriptions", json: body).object["id"] as? String))
                }
                try await client.call(.post, "/v1/subscriptions", project: "p2", json: Self.valid)
                var seen: [String] = []
                var next: String? = "/v1/subscriptions?limit=2"
                var pages = 0
                while let uri = next {
                    let page = try await client.call(.get, uri)
                    #expect(page.status == .ok)
                    let items = page.object["subscriptions"] as? [[String: Any]] ?? []
                    #expect(items.count <= 2)
                    seen += items.compactMap { $0["id"] as? String }
                    next = page.object["next"] as? String
                    pages += 1
                    if pages > 10 { break }
                }
                #expect(seen == ids.sorted())
                #expect(pages == 3)
            }
        }

        @Test(
            "bad requests are 400 naming the field, and nothing is stored",
            arguments: [
                (#"{"target": {"queue": "q"}}"#, "event_types"),
                (#"{"event_types": ["compute.*"]}"#, "target"),
                (#"{"event_types": "compute.*", "target": {"queue": "q"}}"#, "event_types"),
                (#"{"event_types": ["compute.*"], "target": {"queue": "q"}, "message_ttl": 5}"#, "message_ttl"),
                (
                    #"{"event_types": ["compute.*"], "target": {"queue": "q"}, "conditions": [{"field": "payload.x", "op": "like", "value": 1}]}"#,
                    "conditions[0].op"
                ),
                (
                    #"{"event_types": ["compute.*"], "target": {"queue": "q"}, "conditions": [{"field": "payload.x", "op": "in", "value": 1}]}"#,
                    "conditions[0]"
                ),
                (#"{"event_types": ["bad type!"], "target": {"queue": "q"}}"#, "event_types[0]"),
                (#"{"event_types": ["!compute.*"], "target": {"queue": "q"}}"#, "event_types"),
                (#"{"event_types": ["compute.*"], "target": {}}"#, "target.queue"),
                (#"{"event_type": ["compute.*"], "target": {"queue": "q"}}"#, "event_type"),
                (Self.signed(signature: #"s\r\nX-Injected: 1"#), "target.signed_url.signature"),
                (Self.signed(expires: #"2099-01-01T00:00:00\u0000"#), "target.signed_url.expires"),
                (
                    Self.signed(paths: #"["/v2/queues/q/messages,/v2/queues/other/messages"]"#),
                    "target.signed_url.paths"
                ),
                (Self.signed(methods: #"["POST", "GET\n"]"#), "target.signed_url.methods"),
            ])
        func invalid(body: String, field: String) async throws {
            try await harness.test { client in
                let reply = try await client.call(.post, "/v1/subscriptions", raw: body)
                #expect(reply.status == .badRequest)
                #expect(reply.message.hasPrefix(field), "\(reply.message)")
                let listed = try await client.call(.get, "/v1/subscriptions")
                #expect((listed.object["subscriptions"] as? [Any])?.isEmpty == true)
            }
        }

        @Test("a body that is not a JSON object, a null field in a patch, a bad limit: 400 with a message")
        func malformedBodies() async throws {
            try await harness.test { client in
                let notJSON = try await client.call(.post, "/v1/subscriptions", raw: "{event_types:")
                #expect(notJSON.status == .badRequest)
                #expect(notJSON.message.contains("not valid JSON"))
                let array = try await client.call(.post, "/v1/subscriptions", raw: "[1]")
                #expect(array.status == .badRequest)
                #expect(array.message.contains("JSON object"))
                let empty = try await client.call(.post, "/v1/subscriptions", raw: "")
                #expect(empty.status == .badRequest)

                let id = try #require(
                    try await client.call(.post, "/v1/subscriptions", json: Self.valid).object["id"] as? String)
                let null = try await client.call(.patch, "/v1/subscriptions/\(id)", raw: "{\"target\": null}")
                #expect(null.status == .badRequest)
                #expect(null.message.hasPrefix("target"), "\(null.message)")
                let badTTL = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["message_ttl": 99_999_999])
                #expect(badTTL.status == .badRequest)
                #expect(badTTL.message.hasPrefix("message_ttl"))
                #expect(
                    try await harness.registry.get(id: id, project: "p1")?.messageTTL == 600,
                    "a refused patch changes nothing")
                let unknown = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["project": "p9"])
                #expect(unknown.status == .badRequest)
                #expect(unknown.message.hasPrefix("project"))

                for limit in ["0", "1001", "x"] {
                    let reply = try await client.call(.get, "/v1/subscriptions?limit=\(limit)")
                    #expect(reply.status == .badRequest)
                    #expect(reply.message.hasPrefix("limit"))
                }
            }
        }

        @Test("no identity is 401; all projects and another project need the admin role")
        func authorization() async throws {
            try await harness.test { client in
                let anonymous = try await client.call(.get, "/v1/subscriptions", project: nil)
                #expect(anonymous.status == .unauthorized)
                #expect(anonymous.message.contains("X-Project-Id"))

                var everything = Self.valid
                everything["all_projects"] = true
                let refused = try await client.call(.post, "/v1/subscriptions", json: everything)
                #expect(refused.status == .forbidden)
                #expect(refused.message.hasPrefix("all_projects"))
                let allowed = try await client.call(.post, "/v1/subscriptions", admin: true, json: everything)
                #expect(allowed.status == .created)
                #expect(allowed.object["all_projects"] as? Bool == true)

                var elsewhere = Self.valid
                elsewhere["project"] = "p7"
                #expect(try await client.call(.post, "/v1/subscriptions", json: elsewhere).status == .forbidden)
                let forOther = try await client.call(.post, "/v1/subscriptions", admin: true, json: elsewhere)
                #expect(forOther.status == .created)
                #expect(forOther.object["project"] as? String == "p7")
                let id = try #require(allowed.object["id"] as? String)
                let demote = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["all_projects": true])
                #expect(
                    demote.status == .forbidden,
                    "a member may not switch all_projects on, even on an admin's subscription")
            }
        }
    }

    @Suite("The seed service's API, kept as an alias")
    struct AliasAPITests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        @Test("POST, GET, GET one, DELETE /v1/subscription with source, target, message_ttl")
        func alias() async throws {
            try await harness.test { client in
                let created = try await client.call(
                    .post, "/v1/subscription",
                    json: ["source": "compute.instance", "target": "zaqar://my-events", "message_ttl": 300])
                #expect(created.status == .created, "\(created.text)")
                let id = try #require(created.object["id"] as? String)
                #expect(created.object["source"] as? String == "compute.instance")
                #expect(created.object["target"] as? String == "zaqar://my-events")
                #expect(created.object["project_id"] as? String == "p1")
                let stored = try #require(try await harness.registry.get(id: id, project: "p1"))
                #expect(stored.eventTypes == ["compute.instance*"])
                #expect(stored.target.queue == "my-events")
                #expect(stored.messageTTL == 300)

                let plain = try await client.call(
                    .post, "/v1/subscription", json: ["source": "volume.", "target": "vols"])
                #expect(plain.status == .created)
                #expect(plain.object["message_ttl"] as? Int == 3600)

                let listed = try await client.call(.get, "/v1/subscription")
                #expect(listed.status == .ok)
                #expect((listed.object["subscriptions"] as? [[String: Any]])?.count == 2)
                #expect(
                    try await client.call(.get, "/v1/subscription/\(id)").object["source"] as? String
                        == "compute.instance")
                #expect(try await client.call(.get, "/v1/subscription/\(id)", project: "p2").status == .notFound)
                #expect(try await client.call(.delete, "/v1/subscription/\(id)").status == .noContent)
                #expect(try await client.call(.get, "/v1/subscription/\(id)").status == .notFound)
                #expect(
                    try await client.call(.get, "/v1/subscriptions/\(id)").status == .notFound,
                    "one registry behind both APIs")
            }
        }

        @Test(
            "nabu's instance pinning: a prefix and an instance id become the prefix's pattern and a resource_id filter")
        func pinned() async throws {
            try await harness.test { client in
                let instance = "178b0921-8f85-4257-88b6-2e743b5a975c"
                let created = try await client.call(
                    .post, "/v1/subscription",
                    json: ["source": "compute.instance.\(instance)", "target": "zaqar://mine"])
                #expect(created.status == .created, "\(created.text)")
                let id = try #require(created.object["id"] as? String)
                #expect(
                    created.object["source"] as? String == "compute.instance.\(instance)", "it reads back as written")
                let stored = try #require(try await harness.registry.get(id: id, project: "p1"))
                #expect(stored.eventTypes == ["compute.instance.*"])
                #expect(stored.resourceID == instance)
                // The native API shows and changes the filter.
                let native = try await client.call(.get, "/v1/subscriptions/\(id)")
                #expect(native.object["resource_id"] as? String == instance)
                // include_actor is the project admin's (docs/identity.md).
                #expect(
                    try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["include_actor": true]).status
                        == .forbidden)
                let widened = try await client.call(
                    .patch, "/v1/subscriptions/\(id)", admin: true,
                    json: ["resource_id": NSNull(), "include_actor": true, "origin": "any"])
                #expect(widened.status == .ok, "\(widened.text)")
                #expect(widened.object["resource_id"] == nil)
                #expect(widened.object["include_actor"] as? Bool == true)
                #expect(widened.object["origin"] as? String == "any")
                let bad = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["origin": "elsewhere"])
                #expect(bad.status == .badRequest)
                #expect(bad.message.hasPrefix("origin"), "\(bad.message)")
            }
        }

        @Test(
            "format: herald by default, cloudevents on request, changed by PATCH, anything else a 400 naming the field")
        func format() async throws {
            try await harness.test { client in
                let plain = try await client.call(
                    .post, "/v1/subscriptions", json: ["event_types": ["volume.*"], "target": ["queue": "plain"]])
                #expect(plain.status == .created && plain.object["format"] == nil, "\(plain.text)")
                let cloud = try await client.call(
                    .post, "/v1/subscriptions",
                    json: ["event_types": ["volume.*"], "target": ["queue": "cloud"], "format": "cloudevents"])
                #expect(cloud.status == .created, "\(cloud.text)")
                #expect(cloud.object["format"] as? String == "cloudevents")
                let id = try #require(cloud.object["id"] as? String)
                #expect(try await harness.registry.get(id: id, project: "p1")?.format == .cloudevents)
                let back = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["format": "herald"])
                #expect(back.status == .ok && back.object["format"] as? String == "herald", "\(back.text)")
                for body: [String: Any] in [["format": "xml"], ["format": 1], ["format": NSNull()]] {
                    let bad = try await client.call(.patch, "/v1/subscriptions/\(id)", json: body)
                    #expect(bad.status == .badRequest, "\(body): \(bad.text)")
                    #expect(bad.message.hasPrefix("format"), "\(bad.message)")
                }
                let badCreate = try await client.call(
                    .post, "/v1/subscriptions",
                    json: ["event_types": ["volume.*"], "target": ["queue": "q"], "format": "CloudEvents"])
                #expect(badCreate.status == .badRequest && badCreate.message.hasPrefix("format"), "\(badCreate.text)")
            }
        }

        @Test(
            "POST /v1/subscriptions/{id}/test posts a herald.test event into the target and answers what it said: taken by the real Zaqar (in either format), a 403 from a broken one, nothing sent to an endpoint not allowed; HERALD_RATE_TESTS a minute"
        )
        func testEvent() async throws {
            let refusing = try await HostileZaqar { _ in
                .answer(status: 403, body: #"{"title": "Forbidden", "description": "the trust is gone"}"#)
            }
            let queue = "test-event-" + UUID().uuidString.prefix(8).lowercased()
            try await harness.test { client in
                let created = try await client.call(
                    .post, "/v1/subscriptions", user: "u1",
                    json: ["event_types": ["volume.*"], "target": ["queue": queue]])
                let id = try #require(created.object["id"] as? String, "\(created.text)")
                let sent = try await client.call(.post, "/v1/subscriptions/\(id)/test", user: "u1")
                #expect(sent.status == .ok, "\(sent.text)")
                #expect(
                    sent.object["delivered"] as? Bool == true && sent.object["status"] as? Int == 201, "\(sent.text)")
                let eventID = try #require(sent.object["event_id"] as? String)
                let bodies = try await harness.zaqar.bodies(queue: queue, project: "p1")
                let event = try #require(
                    bodies.first { ($0["herald"] as? [String: Any])?["event_id"] as? String == eventID },
                    "the test event is in the queue: \(bodies)")
                let inner = try #require(event["event"] as? [String: Any])
                #expect(inner["event_type"] as? String == "herald.test")
                #expect((inner["payload"] as? [String: Any])?["test"] as? Bool == true)
                #expect((inner["payload"] as? [String: Any])?["requested_by"] as? String == "u1")

                // As a CloudEvent when the subscription takes CloudEvents.
                #expect(
                    try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["format": "cloudevents"]).status
                        == .ok)
                let cloud = try await client.call(.post, "/v1/subscriptions/\(id)/test")
                let cloudID = try #require(cloud.object["event_id"] as? String, "\(cloud.text)")
                let cloudEvent = try #require(
                    try await harness.zaqar.bodies(queue: queue, project: "p1").first { $0["id"] as? String == cloudID }
                )
                #expect(
                    cloudEvent["specversion"] as? String == "1.0" && cloudEvent["type"] as? String == "herald.test"
                        && cloudEvent["source"] as? String == "/herald")

                // A broken target: what it said, not a 5xx of Herald's.
                let broken = try await client.call(
                    .post, "/v1/subscriptions",
                    json: ["event_types": ["volume.*"], "target": ["queue": "q", "zaqar_url": refusing.url]])
                let brokenID = try #require(broken.object["id"] as? String, "\(broken.text)")
                let refused = try await client.call(.post, "/v1/subscriptions/\(brokenID)/test")
                #expect(refused.status == .ok)
                #expect(
                    refused.object["delivered"] as? Bool == false && refused.object["status"] as? Int == 403,
                    "\(refused.text)")
                #expect((refused.object["error"] as? String)?.contains("403") == true, "\(refused.text)")
                #expect(
                    try await client.call(.post, "/v1/subscriptions/\(brokenID)/test", project: "p2").status
                        == .notFound)
            }
            // An endpoint the operator does not allow is never contacted; a project's tests are rated.
            let limited = try APIHarness(
                endpoints: try ZaqarEndpoints(urls: [try TestServers.zaqarURL()]), limits: APILimits(testsPerMinute: 2),
                rates: true)
            try await limited.registry.create(
                Subscription(
                    id: "outside", project: "p1", eventTypes: ["volume.*"],
                    target: Target(queue: "q", zaqarURL: refusing.url)))
            try await limited.test { client in
                let outside = try await client.call(.post, "/v1/subscriptions/outside/test")
                #expect(
                    outside.object["delivered"] as? Bool == false && outside.object["status"] == nil, "\(outside.text)")
                #expect((outside.object["error"] as? String)?.contains("HERALD_ZAQAR_ALLOWED_URLS") == true)
                #expect(try await client.call(.post, "/v1/subscriptions/outside/test").status == .ok)
                let third = try await client.call(.post, "/v1/subscriptions/outside/test")
                #expect(third.status == .tooManyRequests && third.headers[.retryAfter] != nil, "\(third.text)")
                #expect(third.message.contains("HERALD_RATE_TESTS"))
            }
            #expect(refusing.requests(queue: "q") == 1, "only the allowed harness' test reached it")
            await refusing.close()
        }

        @Test(
            "the project's feed: PUT turns it on (every event type by default) and changes it, one per project with an id of its own, listed among the subscriptions; GET and DELETE; errors name the field"
        )
        func feed() async throws {
            try await harness.test { client in
                #expect(try await client.call(.get, "/v1/feed").status == .notFound)
                let missing = try await client.call(.put, "/v1/feed", json: ["event_types": ["*"]])
                #expect(missing.status == .badRequest && missing.message.hasPrefix("queue"), "\(missing.text)")
                let stray = try await client.call(
                    .put, "/v1/feed", json: ["queue": "events", "target": ["queue": "x"]])
                #expect(stray.status == .badRequest && stray.message.contains("target"), "\(stray.text)")

                let on = try await client.call(.put, "/v1/feed", json: ["queue": "events"])
                #expect(on.status == .created, "\(on.text)")
                let id = try #require(on.object["id"] as? String)
                #expect(id.hasPrefix("feed-") && id.count == 37)
                #expect(on.object["event_types"] as? [String] == ["*"])
                #expect((on.object["target"] as? [String: Any])?["queue"] as? String == "events")
                let listed =
                    try await client.call(.get, "/v1/subscriptions?limit=1000").object["subscriptions"]
                    as? [[String: Any]] ?? []
                #expect(listed.contains { $0["id"] as? String == id }, "a subscription like any other")

                let changed = try await client.call(
                    .put, "/v1/feed",
                    json: ["queue": "all-events", "event_types": ["compute.*", "volume.*"], "format": "cloudevents"])
                #expect(changed.status == .ok, "\(changed.text)")
                #expect(changed.object["id"] as? String == id, "the same feed")
                #expect(changed.object["format"] as? String == "cloudevents")
                #expect(
                    try await client.call(.get, "/v1/feed").object["event_types"] as? [String] == [
                        "compute.*", "volume.*",
                    ])
                let bad = try await client.call(.put, "/v1/feed", json: ["queue": "no/slash"])
                #expect(bad.status == .badRequest && bad.message.contains("queue"), "\(bad.text)")

                // Another project's feed is its own.
                #expect(try await client.call(.get, "/v1/feed", project: "p2").status == .notFound)
                let theirs = try await client.call(.put, "/v1/feed", project: "p2", json: ["queue": "events"])
                #expect(theirs.status == .created && theirs.object["id"] as? String != id, "\(theirs.text)")
                #expect(try await client.call(.delete, "/v1/feed", project: "p2").status == .noContent)

                #expect(try await client.call(.delete, "/v1/feed").status == .noContent)
                #expect(try await client.call(.get, "/v1/feed").status == .notFound)
                #expect(try await client.call(.get, "/v1/subscriptions/\(id)").status == .notFound)
            }
        }

        @Test(
            "alias errors name the field",
            arguments: [
                (#"{"target": "q"}"#, "source"),
                (#"{"source": "compute", "target": "a/b"}"#, "target"),
                (#"{"source": "", "target": "q"}"#, "source"),
                (#"{"source": "compute", "target": "q", "message_ttl": 1}"#, "message_ttl"),
                (#"{"source": "compute", "target": "q", "queue": "x"}"#, "queue"),
            ])
        func aliasErrors(body: String, field: String) async throws {
            try await harness.test { client in
                let reply = try await client.call(.post, "/v1/subscription", raw: body)
                #expect(reply.status == .badRequest)
                #expect(reply.message.hasPrefix(field), "\(reply.message)")
            }
        }
    }
}
