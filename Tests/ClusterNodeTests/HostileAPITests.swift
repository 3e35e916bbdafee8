import Coordination
import Delivery
import Foundation
import HTTPTypes
import HeraldModel
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

extension APISuites {
    @Suite("The API against a hostile tenant: endpoints, caps, quotas, rates")
    struct HostileAPITests {
        static func subscription(queue: String = "q", zaqarURL: String? = nil) -> [String: Any] {
            var target: [String: Any] = ["queue": queue]
            if let zaqarURL { target["zaqar_url"] = zaqarURL }
            return ["event_types": ["compute.instance.*"], "target": target]
        }

        @Test(
            "a zaqar_url outside HERALD_ZAQAR_ALLOWED_URLS is a 400 naming the field and the allowed list, on create and on patch"
        )
        func endpoints() async throws {
            let harness = try APIHarness(endpoints: try ZaqarEndpoints(urls: ["http://zaqar.internal:8888"]))
            try await harness.test { client in
                let refused = try await client.call(
                    .post, "/v1/subscriptions", json: Self.subscription(zaqarURL: "http://169.254.169.254/latest"))
                #expect(refused.status == .badRequest)
                #expect(refused.message.hasPrefix("target.zaqar_url:"), "\(refused.message)")
                #expect(refused.message.contains("http://zaqar.internal:8888"))
                let allowed = try await client.call(
                    .post, "/v1/subscriptions", json: Self.subscription(zaqarURL: "http://zaqar.internal:8888"))
                #expect(allowed.status == .created, "\(allowed.text)")
                let id = try #require(allowed.object["id"] as? String)
                let patched = try await client.call(
                    .patch, "/v1/subscriptions/\(id)",
                    json: ["target": ["queue": "q", "zaqar_url": "http://keystone.internal:5000"]])
                #expect(patched.status == .badRequest)
                #expect(patched.message.hasPrefix("target.zaqar_url:"))
                #expect(
                    try await harness.registry.get(id: id, project: "p1")?.target.zaqarURL
                        == "http://zaqar.internal:8888", "the refused change was not stored")
            }
        }

        @Test(
            "subscriptions per project stop at the quota (403 naming it); another project is not affected until every project's together reach theirs (403 naming it)"
        )
        func quota() async throws {
            let harness = try APIHarness(limits: APILimits(subscriptionsPerProject: 3, subscriptionsInAll: 4))
            try await harness.test { client in
                for index in 0..<3 {
                    #expect(
                        try await client.call(.post, "/v1/subscriptions", json: Self.subscription(queue: "q\(index)"))
                            .status == .created)
                }
                let refused = try await client.call(.post, "/v1/subscriptions", json: Self.subscription(queue: "q4"))
                #expect(refused.status == .forbidden)
                #expect(refused.message.hasPrefix("subscriptions:"), "\(refused.message)")
                #expect(refused.message.contains("HERALD_QUOTA_SUBSCRIPTIONS"))
                let alias = try await client.call(
                    .post, "/v1/subscription", json: ["source": "compute.instance", "target": "zaqar://q5"])
                #expect(alias.status == .forbidden, "the seed alias counts too")
                #expect(
                    try await client.call(.post, "/v1/subscriptions", project: "p2", json: Self.subscription()).status
                        == .created)
                #expect(try await harness.registry.count(project: "p1") == 3)
                // Every project's together: the fifth of the cloud is refused, whatever the project.
                let cloudFull = try await client.call(
                    .post, "/v1/subscriptions", project: "p3", json: Self.subscription())
                #expect(cloudFull.status == .forbidden, "\(cloudFull.text)")
                #expect(cloudFull.message.contains("HERALD_QUOTA_SUBSCRIPTIONS_TOTAL"), "\(cloudFull.message)")
                #expect(try await harness.registry.count(project: "p3") == 0)
            }
        }

        @Test(
            "requests a node serves at once: past a project's share 429, past the node's bound 503, both with Retry-After and naming the setting; places come back when requests end"
        )
        func inFlight() async throws {
            let harness = try APIHarness(limits: APILimits(requestsInFlightPerProject: 2, requestsInFlight: 3))
            let held = harness.api.inFlight
            try await harness.test { client in
                // Two requests of p1 under way (held here as a slow request would hold them).
                try held.enter("p1")
                try held.enter("p1")
                let refused = try await client.call(.get, "/v1/subscriptions")
                #expect(refused.status == .tooManyRequests, "\(refused.text)")
                #expect(refused.headers[.retryAfter] == "1")
                #expect(refused.message.contains("HERALD_API_PROJECT_REQUESTS_IN_FLIGHT"), "\(refused.message)")
                #expect(try await client.call(.get, "/v1/subscriptions", project: "p2").status == .ok, "per project")
                // A third project's request under way: the node's three places are taken.
                try held.enter("p3")
                let full = try await client.call(.get, "/v1/subscriptions", project: "p2")
                #expect(full.status == .serviceUnavailable, "\(full.text)")
                #expect(full.message.contains("HERALD_API_REQUESTS_IN_FLIGHT"), "\(full.message)")
                #expect(try await client.call(.get, "/healthz", project: nil).status == .ok, "open routes are not held")
                held.leave("p1")
                held.leave("p3")
                #expect(try await client.call(.get, "/v1/subscriptions").status == .ok)
                held.leave("p1")
            }
            #expect(held.inFlight.total == 0 && held.inFlight.projects == 0, "every place given back")
        }

        @Test("creates and updates per project per minute: 429 with Retry-After once the rate is spent")
        func rate() async throws {
            var limits = APILimits()
            limits.changesPerMinute = 4
            let harness = try APIHarness(limits: limits, rates: true)
            try await harness.test { client in
                let created = try await client.call(.post, "/v1/subscriptions", json: Self.subscription())
                let id = try #require(created.object["id"] as? String)
                for ttl in [120, 180, 240] {
                    #expect(
                        try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["message_ttl": ttl]).status
                            == .ok)
                }
                let limited = try await client.call(.patch, "/v1/subscriptions/\(id)", json: ["message_ttl": 300])
                // A minute window may have just rolled over; then the next call is the fifth of the new one.
                let refused =
                    limited.status == .tooManyRequests
                    ? limited : try await client.call(.post, "/v1/subscriptions", json: Self.subscription(queue: "q2"))
                #expect(refused.status == .tooManyRequests, "\(refused.text)")
                let retryAfter = try #require(refused.headers[.retryAfter].flatMap { Int($0) })
                #expect((1...60).contains(retryAfter))
                #expect(refused.message.contains("HERALD_RATE_SUBSCRIPTION_CHANGES"))
                #expect(
                    try await client.call(.post, "/v1/subscriptions", project: "p2", json: Self.subscription()).status
                        == .created, "per project")
            }
        }

        @Test("caps: too many patterns, an oversized in list, a deep path: 400 naming the field and the limit")
        func caps() async throws {
            let harness = try APIHarness()
            try await harness.test { client in
                var body = Self.subscription()
                body["event_types"] = (0...Subscription.Limits.patterns).map { "compute.t\($0).*" }
                let patterns = try await client.call(.post, "/v1/subscriptions", json: body)
                #expect(patterns.status == .badRequest)
                #expect(
                    patterns.message.hasPrefix("event_types:")
                        && patterns.message.contains("at most \(Subscription.Limits.patterns)"), "\(patterns.message)")
                body = Self.subscription()
                body["conditions"] = [
                    ["field": "payload.state", "op": "in", "value": Array(0...Subscription.Limits.inItems)]
                ]
                let items = try await client.call(.post, "/v1/subscriptions", json: body)
                #expect(items.status == .badRequest)
                #expect(
                    items.message.hasPrefix("conditions[0]:")
                        && items.message.contains("at most \(Subscription.Limits.inItems)"), "\(items.message)")
            }
        }

        @Test("a replay takes at most HERALD_REPLAY_MAX letters a call (400 above)")
        func replayBound() async throws {
            var limits = APILimits()
            limits.replayPerCall = 2
            let harness = try APIHarness(limits: limits, rates: true)
            try await harness.test { client in
                let refused = try await client.call(
                    .post, "/v1/dead-letters/replay", json: ["ids": ["1-0", "2-0", "3-0"]])
                #expect(refused.status == .badRequest)
                #expect(
                    refused.message.hasPrefix("ids:") && refused.message.contains("HERALD_REPLAY_MAX"),
                    "\(refused.message)")
            }
        }
    }
}
