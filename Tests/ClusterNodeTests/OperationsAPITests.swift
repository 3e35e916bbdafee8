import Foundation
import HTTPTypes
import HeraldModel
import Prometheus
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

extension APISuites {
    @Suite("Dead letters API")
    struct DeadLetterAPITests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        func letter(_ subscriptionID: String?, project: String, event: String) -> DeadLetter {
            let body =
                #"{"ttl": 300, "body": {"event": {"event_type": "compute.instance.create.end"}, "herald": {"event_id": "\#(event)"}}}"#
            return DeadLetter(
                reason: .retriesExhausted, detail: "Zaqar answered 503 five times", httpStatus: 503,
                target: "zaqar p/q",
                subscriptionID: subscriptionID, eventID: event, project: project, body: body,
                at: Date().timeIntervalSince1970)
        }

        @Test(
            "list newest first, replay into the real Zaqar (what fails again stays), purge; only the caller's project")
        func listReplayPurge() async throws {
            let queue = "dead-replay-" + UUID().uuidString.prefix(8).lowercased()
            let subscription = try await harness.registry.create(
                Subscription(project: "p1", eventTypes: ["compute.*"], target: Target(queue: queue)))
            try await harness.deadLetters.append([
                letter(subscription.id, project: "p1", event: "e1"),
                letter("gone", project: "p1", event: "e2"),
                letter(subscription.id, project: "p2", event: "e3"),
            ])
            try await harness.test { client in
                let listed = try await client.call(.get, "/v1/dead-letters")
                #expect(listed.status == .ok)
                let letters = listed.object["dead_letters"] as? [[String: Any]] ?? []
                #expect(letters.compactMap { $0["event_id"] as? String } == ["e2", "e1"], "newest first, p1's only")
                #expect(letters.allSatisfy { $0["id"] is String && $0["reason"] as? String == "retries_exhausted" })
                let paged = try await client.call(.get, "/v1/dead-letters?limit=1")
                #expect((paged.object["dead_letters"] as? [Any])?.count == 1)
                // Letters are large: at most 100 a page (other lists take 1,000).
                #expect(try await client.call(.get, "/v1/dead-letters?limit=100").status == .ok)
                let tooMany = try await client.call(.get, "/v1/dead-letters?limit=101")
                #expect(tooMany.status == .badRequest && tooMany.message.hasPrefix("limit:"), "\(tooMany.text)")
                let second = try await client.call(.get, try #require(paged.object["next"] as? String))
                #expect(((second.object["dead_letters"] as? [[String: Any]])?.first?["event_id"] as? String) == "e1")

                let replay = try await client.call(.post, "/v1/dead-letters/replay")
                #expect(replay.status == .ok, "\(replay.text)")
                #expect((replay.object["replayed"] as? [String])?.count == 1, "\(replay.text)")
                let failed = replay.object["failed"] as? [[String: Any]] ?? []
                #expect(failed.count == 1, "\(replay.text)")
                #expect((failed.first?["reason"] as? String)?.contains("no longer exists") == true)
                let bodies = try await harness.zaqar.bodies(queue: queue, project: "p1")
                #expect(bodies.compactMap { ($0["herald"] as? [String: Any])?["event_id"] as? String } == ["e1"])

                let after = try await client.call(.get, "/v1/dead-letters")
                #expect(
                    (after.object["dead_letters"] as? [[String: Any]])?.compactMap { $0["event_id"] as? String } == [
                        "e2"
                    ])
                let unknown = try await client.call(.post, "/v1/dead-letters/replay", json: ["ids": ["0-1"]])
                #expect(unknown.status == .notFound)
                #expect(unknown.message.hasPrefix("ids"))
                let badIDs = try await client.call(.post, "/v1/dead-letters/replay", json: ["ids": "0-1"])
                #expect(badIDs.status == .badRequest)
                #expect(badIDs.message.hasPrefix("ids"))
                // A letter named twice is posted once.
                try await harness.deadLetters.append([letter(subscription.id, project: "p1", event: "e4")])
                let fourth = try await client.call(.get, "/v1/dead-letters?limit=1")
                let id = try #require((fourth.object["dead_letters"] as? [[String: Any]])?.first?["id"] as? String)
                let twice = try await client.call(.post, "/v1/dead-letters/replay", json: ["ids": [id, id]])
                #expect((twice.object["replayed"] as? [String]) == [id], "\(twice.text)")
                let copies = try await harness.zaqar.bodies(queue: queue, project: "p1").filter {
                    ($0["herald"] as? [String: Any])?["event_id"] as? String == "e4"
                }
                #expect(copies.count == 1, "one copy of e4")

                let purged = try await client.call(.delete, "/v1/dead-letters")
                #expect(purged.object["purged"] as? Int == 1)
                #expect(
                    (try await client.call(.get, "/v1/dead-letters").object["dead_letters"] as? [Any])?.isEmpty == true)
                let other = try await client.call(.get, "/v1/dead-letters", project: "p2")
                #expect((other.object["dead_letters"] as? [Any])?.count == 1, "p2's letters are untouched")
            }
            _ = try? await harness.zaqar.request("/v2/queues/\(queue)", project: "p1", method: .DELETE)
        }
    }

    @Suite("Health, readiness, metrics")
    struct HealthTests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        @Test("healthz always 200; readyz 503 naming the failing check, 200 when all pass; metrics in Prometheus text")
        func health() async throws {
            let gauge = harness.metrics.makeGauge(
                descriptor: MetricNameDescriptor(metricName: "herald_test_gauge", unitName: "", helpText: ""))
            gauge.set(to: 3)
            try await harness.test { client in
                #expect(try await client.call(.get, "/healthz", project: nil).status == .ok)
                let ready = try await client.call(.get, "/readyz", project: nil)
                #expect(ready.status == .ok)
                #expect(ready.object["ready"] as? Bool == true)
                harness.readiness.withLock { $0["rabbitmq"] = false }
                let notReady = try await client.call(.get, "/readyz", project: nil)
                #expect(notReady.status == .serviceUnavailable)
                #expect((notReady.object["checks"] as? [String: Bool])?["rabbitmq"] == false)
                let metrics = try await client.call(.get, "/metrics", project: nil)
                #expect(metrics.status == .ok)
                #expect(metrics.headers[.contentType]?.hasPrefix("text/plain") == true)
                #expect(metrics.text.contains("herald_test_gauge 3"), "\(metrics.text)")
            }
        }
    }

    @Suite("OpenAPI document")
    struct OpenAPITests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        var document: [String: Any] {
            get throws {
                try #require(try JSONSerialization.jsonObject(with: Data(OpenAPIDocument.json.utf8)) as? [String: Any])
            }
        }

        @Test("the document lists exactly the routes the API serves")
        func sameRoutes() throws {
            let paths = try #require(try document["paths"] as? [String: [String: Any]])
            let documented = Set(
                paths.flatMap { path, item in
                    item.keys.filter { $0 != "parameters" }.map { "\($0.uppercased()) \(path)" }
                })
            let served = Set(harness.api.routes.map { "\($0.method.rawValue) \($0.path)" })
            #expect(
                documented == served,
                "only documented: \(documented.subtracting(served).sorted()); only served: \(served.subtracting(documented).sorted())"
            )
        }

        @Test("every route answers with a documented status, and 2xx JSON bodies carry the schema's required fields")
        func behaviourMatches() async throws {
            let document = try document
            let paths = try #require(document["paths"] as? [String: [String: Any]])
            let schemas = try #require(
                (document["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]])
            func resolve(_ schema: [String: Any]?) -> [String: Any]? {
                guard let reference = schema?["$ref"] as? String else { return schema }
                return schemas[String(reference.split(separator: "/").last ?? "")]
            }
            func check(_ method: String, _ path: String, _ reply: APIHarness.Reply) {
                let operation = paths[path]?[method.lowercased()] as? [String: Any]
                let responses = operation?["responses"] as? [String: Any] ?? [:]
                let code = "\(reply.status.code)"
                #expect(
                    responses[code] != nil, "\(method) \(path) answered \(code), documented: \(responses.keys.sorted())"
                )
                guard (200..<300).contains(reply.status.code), reply.status.code != 204,
                    let response = responses[code] as? [String: Any],
                    let schema = resolve(
                        ((response["content"] as? [String: Any])?["application/json"] as? [String: Any])?["schema"]
                            as? [String: Any])
                else { return }
                for field in schema["required"] as? [String] ?? [] {
                    #expect(
                        reply.object[field] != nil,
                        "\(method) \(path): \(field) is required by the document, missing in \(reply.text.prefix(300))")
                }
            }
            let queue = "openapi-" + UUID().uuidString.prefix(8).lowercased()
            let calls = try await harness.test { client in
                var calls: [(String, String, APIHarness.Reply)] = []
                func call(
                    _ method: HTTPRequest.Method, _ uri: String, _ route: String, project: String? = "p1",
                    json: Any? = nil
                ) async throws -> APIHarness.Reply {
                    let reply = try await client.call(method, uri, project: project, json: json)
                    calls.append((method.rawValue, route, reply))
                    return reply
                }
                _ = try await call(.get, "/healthz", "/healthz", project: nil)
                _ = try await call(.get, "/readyz", "/readyz", project: nil)
                _ = try await call(.get, "/metrics", "/metrics", project: nil)
                _ = try await call(.get, "/v1/openapi.json", "/v1/openapi.json", project: nil)
                let body: [String: Any] = ["event_types": ["compute.*"], "target": ["queue": queue]]
                let created = try await call(.post, "/v1/subscriptions", "/v1/subscriptions", json: body)
                #expect(created.status == .created, "\(created.text)")
                let id = created.object["id"] as? String ?? "none"
                _ = try await call(.post, "/v1/subscriptions", "/v1/subscriptions", json: ["target": ["queue": "q"]])
                _ = try await call(.post, "/v1/subscriptions", "/v1/subscriptions", project: nil, json: body)
                _ = try await call(
                    .post, "/v1/subscriptions", "/v1/subscriptions",
                    json: ["event_types": ["compute.*"], "target": ["queue": "q"], "all_projects": true])
                _ = try await call(.get, "/v1/subscriptions", "/v1/subscriptions")
                _ = try await call(.get, "/v1/subscriptions?limit=0", "/v1/subscriptions")
                _ = try await call(.get, "/v1/subscriptions/\(id)", "/v1/subscriptions/{id}")
                _ = try await call(.get, "/v1/subscriptions/nope", "/v1/subscriptions/{id}")
                _ = try await call(.get, "/v1/subscriptions/\(id)/delivery", "/v1/subscriptions/{id}/delivery")
                _ = try await call(.get, "/v1/subscriptions/nope/delivery", "/v1/subscriptions/{id}/delivery")
                _ = try await call(.post, "/v1/subscriptions/\(id)/test", "/v1/subscriptions/{id}/test")
                _ = try await call(.post, "/v1/subscriptions/nope/test", "/v1/subscriptions/{id}/test")
                _ = try await call(.get, "/v1/event-types", "/v1/event-types")
                _ = try await call(.get, "/v1/feed", "/v1/feed")
                _ = try await call(.put, "/v1/feed", "/v1/feed", json: ["event_types": ["*"]])
                _ = try await call(.put, "/v1/feed", "/v1/feed", json: ["queue": queue])
                _ = try await call(.put, "/v1/feed", "/v1/feed", json: ["queue": queue, "message_ttl": 600])
                _ = try await call(.get, "/v1/feed", "/v1/feed")
                _ = try await call(.delete, "/v1/feed", "/v1/feed")
                _ = try await call(.delete, "/v1/feed", "/v1/feed")
                _ = try await call(
                    .patch, "/v1/subscriptions/\(id)", "/v1/subscriptions/{id}", json: ["message_ttl": 120])
                _ = try await call(
                    .patch, "/v1/subscriptions/\(id)", "/v1/subscriptions/{id}", json: ["message_ttl": 1])
                _ = try await call(
                    .patch, "/v1/subscriptions/nope", "/v1/subscriptions/{id}", json: ["message_ttl": 120])
                let alias = try await call(
                    .post, "/v1/subscription", "/v1/subscription", json: ["source": "compute", "target": queue])
                _ = try await call(.post, "/v1/subscription", "/v1/subscription", json: ["target": queue])
                _ = try await call(.get, "/v1/subscription", "/v1/subscription")
                _ = try await call(
                    .get, "/v1/subscription/\(alias.object["id"] as? String ?? "none")", "/v1/subscription/{id}")
                _ = try await call(.get, "/v1/subscription/nope", "/v1/subscription/{id}")
                _ = try await call(
                    .delete, "/v1/subscription/\(alias.object["id"] as? String ?? "none")", "/v1/subscription/{id}")
                _ = try await call(.delete, "/v1/subscription/nope", "/v1/subscription/{id}")
                _ = try await call(.get, "/v1/dead-letters", "/v1/dead-letters")
                _ = try await call(.get, "/v1/dead-letters?limit=5000", "/v1/dead-letters")
                _ = try await call(.post, "/v1/dead-letters/replay", "/v1/dead-letters/replay")
                _ = try await call(.post, "/v1/dead-letters/replay", "/v1/dead-letters/replay", json: ["ids": ["1-1"]])
                _ = try await call(.post, "/v1/dead-letters/replay", "/v1/dead-letters/replay", json: ["ids": 1])
                _ = try await call(.delete, "/v1/dead-letters", "/v1/dead-letters")
                _ = try await call(.get, "/v1/policy", "/v1/policy")
                _ = try await call(.get, "/v1/policy", "/v1/policy", project: nil)
                _ = try await call(.delete, "/v1/subscriptions/\(id)", "/v1/subscriptions/{id}")
                _ = try await call(.delete, "/v1/subscriptions/\(id)", "/v1/subscriptions/{id}")
                return calls
            }
            for (method, path, reply) in calls { check(method, path, reply) }
            let exercised = Set(calls.map { "\($0.0) \($0.1)" })
            let served = Set(harness.api.routes.map { "\($0.method.rawValue) \($0.path)" })
            #expect(
                served.subtracting(exercised).isEmpty,
                "routes this test does not call: \(served.subtracting(exercised).sorted())")
        }
    }
}
