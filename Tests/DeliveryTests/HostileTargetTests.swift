import Coordination
import Foundation
import HeraldModel
import TestSupport
import Testing

@testable import Delivery

/// Targets that answer as an attacker or a broken service would, over real HTTP
/// (`HostileZaqar`), with dead letters in the real Redis.
@Suite("Hostile targets", .serialized, .timeLimit(.minutes(3)))
struct HostileTargetTests {
    func harness(
        _ configuration: DeliveryConfiguration = Self.quick, requestTimeout: Duration = .seconds(2),
        endpoints: ZaqarEndpoints? = nil, clock: ElapsedClock = .continuous
    ) throws -> (DeliveryBatcher, DeadLetterStore, ZaqarClient) {
        try configuration.validate()  // before the client: one dropped without shutdown() traps
        let redis = try RedisClient(url: TestServers.redisURL())
        let deadLetters = DeadLetterStore(redis: redis, keyPrefix: TestServers.uniqueName("herald-test.hostile") + ":")
        let zaqar = ZaqarClient(requestTimeout: requestTimeout, retryAfterCap: .milliseconds(200))
        return (
            try DeliveryBatcher(
                configuration: configuration, zaqar: zaqar, deadLetters: deadLetters, endpoints: endpoints,
                clock: clock),
            deadLetters, zaqar
        )
    }

    /// Short retries, so that a test sees several attempts in well under a second each.
    static var quick: DeliveryConfiguration {
        var configuration = DeliveryConfiguration()
        configuration.retryBase = .milliseconds(10)
        configuration.retryCap = .milliseconds(50)
        configuration.maxAttempts = 3
        configuration.circuitCooldown = .milliseconds(50)
        return configuration
    }

    @Test(
        "Retry-After inf, nan, 1e300, -5, 86400 and a date: no trap; retried within the cap, then delivered",
        arguments: [
            "inf", "nan", "1e300", "-5", "86400", "Wed, 21 Oct 2099 07:28:00 GMT", "0x10", "9223372036854775807",
        ])
    func retryAfter(value: String) async throws {
        let first = Counter()
        let server = try await HostileZaqar { _ in
            // The first request of each queue is refused with the hostile header; then accepted.
            if first.value == 0 {
                first.increment()
                return .answer(status: 503, headers: ["Retry-After": value], body: "{\"title\": \"Busy\"}")
            }
            return .accept
        }
        defer { Task { await server.close() } }
        let clock = ManualClock()
        let (batcher, _, zaqar) = try harness(clock: ElapsedClock(clock))
        defer { Task { await zaqar.shutdown() } }
        let delivering = Task {
            await batcher.deliver(
                DeliveryHarness.messages(1, to: ZaqarTarget(baseURL: server.url, project: "p1", queue: "q")))
        }
        // The delay is the capped Retry-After (0.2 s) or the normal backoff, never the header's.
        try await clock.waitForSleepers()
        try #require(
            clock.requested.count == 1 && clock.requested.allSatisfy { $0 <= .milliseconds(200) }, "\(clock.requested)")
        clock.advance(by: clock.requested.last ?? .zero)
        let outcome = await delivering.value
        #expect(outcome.delivered == 1)
        #expect(server.requests(queue: "q") == 2)
    }

    @Test("a redirect is not followed: the target it points to is never contacted; the letters say so without its body")
    func redirect() async throws {
        let elsewhere = try await HostileZaqar { _ in .accept }
        defer { Task { await elsewhere.close() } }
        let server = try await HostileZaqar { _ in .redirect(location: "\(elsewhere.url)/v2/queues/q/messages") }
        defer { Task { await server.close() } }
        let (batcher, deadLetters, zaqar) = try harness()
        defer { Task { await zaqar.shutdown() } }
        let outcome = await batcher.deliver(
            DeliveryHarness.messages(2, to: ZaqarTarget(baseURL: server.url, project: "p1", queue: "q")))
        #expect(outcome.deadLettered == 2)
        #expect(elsewhere.totalRequests == 0, "a 3xx must never be followed")
        let letters = try await deadLetters.recent(count: 10)
        #expect(letters.allSatisfy { $0.reason == .retriesExhausted && $0.detail.contains("302") })
    }

    @Test("huge, non-JSON and escape-laden answers keep only a status and a short clean reason")
    func bodies() async throws {
        let server = try await HostileZaqar { request in
            switch request.queue {
            case "huge": return .huge(status: 400, bytes: 5 << 20)
            case "html":
                return .answer(
                    status: 404, headers: ["Content-Type": "text/html"],
                    body: "<html>internal admin console: secret=hunter2</html>")
            default:
                return .answer(
                    status: 400, headers: ["Content-Type": "application/json"],
                    body:
                        "{\"title\": \"Bad\\u001b[31m\", \"description\": \"line\\nforged: yes \(String(repeating: "y", count: 1000))\"}"
                )
            }
        }
        defer { Task { await server.close() } }
        let (batcher, deadLetters, zaqar) = try harness()
        defer { Task { await zaqar.shutdown() } }
        for queue in ["huge", "html", "escapes"] {
            let outcome = await batcher.deliver(
                DeliveryHarness.messages(
                    1, to: ZaqarTarget(baseURL: server.url, project: "p1", queue: queue), label: queue))
            #expect(outcome.deadLettered == 1, "\(queue)")
        }
        let letters = try await deadLetters.recent(count: 10)
        #expect(letters.count == 3)
        for letter in letters {
            let kept = letter.zaqarMessage ?? ""
            #expect(kept.count <= TargetAnswer.maxReasonCharacters, "\(kept)")
            #expect(!kept.contains("hunter2"), "a non-JSON body is never echoed")
            #expect(!kept.unicodeScalars.contains { $0.value < 0x20 }, "no control characters")
            #expect(!letter.detail.contains("hunter2"))
        }
        #expect(letters.contains { ($0.zaqarMessage ?? "").contains("text/html body of") })
    }

    @Test("a target that never answers is cut off by the request deadline, then dead-lettered; the batcher goes on")
    func silent() async throws {
        let server = try await HostileZaqar { request in request.queue == "silent" ? .silent : .accept }
        defer { Task { await server.close() } }
        var configuration = Self.quick
        configuration.maxAttempts = 2
        let (batcher, _, zaqar) = try harness(configuration, requestTimeout: .milliseconds(500))
        defer { Task { await zaqar.shutdown() } }
        async let stuck = batcher.deliver(
            DeliveryHarness.messages(1, to: ZaqarTarget(baseURL: server.url, project: "p1", queue: "silent")))
        let fine = await batcher.deliver(
            DeliveryHarness.messages(3, to: ZaqarTarget(baseURL: server.url, project: "p2", queue: "fine")))
        #expect(fine.delivered == 3, "another target flows while one is silent")
        let outcome = await stuck
        #expect(outcome.deadLettered == 1)
        #expect(server.requests(queue: "silent") == 2)
    }

    @Test("one project's many stalled queues fill only its share; another project's messages keep flowing")
    func projectShare() async throws {
        let server = try await HostileZaqar { request in request.queue.hasPrefix("stuck") ? .silent : .accept }
        defer { Task { await server.close() } }
        var configuration = DeliveryConfiguration()
        configuration.maxBatchMessages = 10
        configuration.laneMaxMessages = 20
        configuration.projectMaxMessages = 60
        configuration.globalMaxMessages = 100
        configuration.maxAttempts = 1_000
        let (batcher, _, zaqar) = try harness(configuration, requestTimeout: .seconds(60))
        defer { Task { await zaqar.shutdown() } }
        // Ten queues of project "greedy", 20 messages each: 200 wanted, its share is 60.
        let submitter = Task {
            for queue in 0..<10 {
                for message in DeliveryHarness.messages(
                    20, to: ZaqarTarget(baseURL: server.url, project: "greedy", queue: "stuck-\(queue)"),
                    label: "g\(queue)")
                {
                    await batcher.submit([message]) { _ in }
                }
            }
        }
        defer { submitter.cancel() }
        try await eventually(timeout: .seconds(10)) {
            guard batcher.bufferedMessages(project: "greedy") == 60 else {
                throw TestFailure("greedy holds \(batcher.bufferedMessages(project: "greedy"))")
            }
        }
        // The node's buffers are not full: another project's messages go through at once.
        let other = await batcher.deliver(
            DeliveryHarness.messages(30, to: ZaqarTarget(baseURL: server.url, project: "polite", queue: "fine")))
        #expect(other.delivered == 30)
        #expect(batcher.bufferedMessages(project: "greedy") == 60, "the greedy project never holds more than its share")
        #expect(batcher.statistics.peakBufferedMessages <= 90)
    }

    @Test("a target outside the allowed endpoints is never contacted: its messages are dead letters with the reason")
    func endpointNotAllowed() async throws {
        let server = try await HostileZaqar { _ in .accept }
        defer { Task { await server.close() } }
        let (batcher, deadLetters, zaqar) = try harness(
            endpoints: try ZaqarEndpoints(urls: ["http://127.0.0.1:1/zaqar"]))
        defer { Task { await zaqar.shutdown() } }
        let outcome = await batcher.deliver(
            DeliveryHarness.messages(2, to: ZaqarTarget(baseURL: server.url, project: "p1", queue: "q")))
        #expect(outcome.deadLettered == 2)
        #expect(server.totalRequests == 0)
        #expect(try await deadLetters.recent(count: 5).allSatisfy { $0.reason == .targetNotAllowed })
    }
}

@Suite("Parsing what targets and tenants send")
struct HostileParsingTests {
    @Test(
        "Retry-After",
        arguments: [
            ("120", 120.0), ("0", 0.0), ("1.5", 1.5), ("inf", nil), ("nan", nil), ("1e300", nil), ("-5", nil),
            ("", nil),
            ("86400", 200.0), ("99999999999999999999999999", 200.0), ("0x10", nil),
            ("Wed, 21 Oct 2099 07:28:00 GMT", 200.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
            ("tomorrow", nil),
        ] as [(String, Double?)])
    func retryAfter(header: String, seconds: Double?) {
        let parsed = TargetAnswer.retryAfter(
            header, now: Date(timeIntervalSince1970: 1_800_000_000), cap: .seconds(200))
        #expect(parsed.map(\.seconds) == seconds, "\(header)")
    }

    @Test(
        "allowed Zaqar endpoints: scheme, host, port and path prefix",
        arguments: [
            ("http://zaqar:8888", true), ("http://ZAQAR:8888/", true), ("http://zaqar:8888/v2", true),
            ("https://zaqar:8888", false),
            ("http://zaqar:8889", false), ("http://zaqar", false), ("http://other:8888", false),
            ("http://user:pw@zaqar:8888", false),
            ("http://zaqar:8888?x=1", false), ("http://zaqar.evil:8888", false),
            ("https://cloud.example/messaging", true), ("https://cloud.example/messaging/v2", true),
            ("https://cloud.example/messaging-admin", false),
            ("https://cloud.example/messaging/../admin", false), ("https://cloud.example:443/messaging", true),
            ("https://cloud.example/", false),
        ])
    func endpoints(url: String, allowed: Bool) throws {
        let endpoints = try ZaqarEndpoints(urls: ["http://zaqar:8888", "https://cloud.example/messaging/"])
        #expect(endpoints.permits(url) == allowed, "\(url)")
    }

    @Test("allowed Zaqar endpoints: a verdict asked again, and after more URLs than are remembered, is the same")
    func endpointVerdictsRemembered() throws {
        let endpoints = try ZaqarEndpoints(urls: ["http://zaqar:8888"])
        // One in three allowed, past the 1,024 remembered, twice over.
        let urls = (0..<2_500).map { $0 % 3 == 0 ? "http://zaqar:8888/v2/\($0)" : "http://zaqar:\(9_000 + $0)" }
        for _ in 0..<2 {
            for (number, url) in urls.enumerated() { #expect(endpoints.permits(url) == (number % 3 == 0), "\(url)") }
        }
        #expect(endpoints.rememberedCount <= 1_024)
        #expect(endpoints.rememberedCount > 0)
    }

    @Test(
        "allowed Zaqar endpoints: a URL Swift holds equal to an allowed one but with other bytes gets its own verdict, in either order"
    )
    func endpointVerdictsByBytes() throws {
        let allowed = "http://zaqar:8888/K/messages"
        // U+212A KELVIN SIGN: canonically a `K`, so the two strings are equal to Swift; in a path it
        // is percent-encoded, which the allow-list refuses.
        let lookAlike = "http://zaqar:8888/\u{212A}/messages"
        try #require(allowed == lookAlike)
        try #require(!allowed.utf8.elementsEqual(lookAlike.utf8))
        // What each gets from endpoints that remember nothing yet.
        try #require(try ZaqarEndpoints(urls: ["http://zaqar:8888/K"]).permits(allowed) == true)
        try #require(try ZaqarEndpoints(urls: ["http://zaqar:8888/K"]).permits(lookAlike) == false)
        for first in [allowed, lookAlike] {
            let endpoints = try ZaqarEndpoints(urls: ["http://zaqar:8888/K"])
            _ = endpoints.permits(first)
            #expect(endpoints.permits(allowed) == true)
            #expect(endpoints.permits(lookAlike) == false)
            #expect(endpoints.permits(allowed) == true)
        }
    }

    @Test("allowed Zaqar endpoints: a URL longer than any read is refused and not remembered")
    func endpointLongURLs() throws {
        let endpoints = try ZaqarEndpoints(urls: ["http://zaqar:8888"])
        let long = "http://zaqar:8888/" + String(repeating: "a", count: 3_000)
        // One character to Swift, a megabyte of bytes.
        let heavy = "http://zaqar:8888/a" + String(repeating: "\u{0301}", count: 500_000)
        #expect(endpoints.permits(long) == false)
        #expect(endpoints.permits(heavy) == false)
        #expect(endpoints.rememberedCount == 0)
    }

    @Test("a value quoted in a validation error is cleaned and cut, however long or strange")
    func quotedValuesCut() {
        let base = Subscription(project: "p", eventTypes: ["compute.*"], target: Target(queue: "q"))
        let huge = "q" + String(repeating: "\u{0301}", count: 300_000) + "\n\u{1b}[31m"
        let cases: [(String, (inout Subscription) -> Void)] = [
            ("target.queue", { $0.target.queue = String(repeating: "x", count: 200_000) + "\n" }),
            ("target.queue", { $0.target.queue = huge }),
            ("event_types[0]", { $0.eventTypes = ["compute.\u{1b}[2J\n"] }),
            ("conditions[0]", { $0.conditions = [Condition(field: "payload..\u{1b}", op: .exists)] }),
            ("target.zaqar_url", { $0.target.zaqarURL = "not a url \u{1b}[0m" + String(repeating: "x", count: 900) }),
            (
                "target.signed_url.paths",
                {
                    $0.target.signedURL = SignedURL(
                        signature: "s", expires: "2030-01-01T00:00:00", methods: ["POST"], paths: [huge],
                        project: "p")
                }
            ),
        ]
        for (field, change) in cases {
            var subscription = base
            change(&subscription)
            do {
                try subscription.validate()
                Issue.record("\(field): accepted")
            } catch let error as SubscriptionValidationError {
                #expect(error.field == field, "\(error.field)")
                #expect(error.message.utf8.count < 400, "\(field): \(error.message.utf8.count) bytes")
                #expect(
                    !error.message.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f },
                    "\(field): control characters")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test("every subscription limit is a 400-worthy error naming the field and the limit")
    func limits() {
        /// `count` combining acute accents: 2 bytes each, no character of their own.
        func marks(_ count: Int) -> String { String(repeating: "\u{0301}", count: count) }
        let limits = Subscription.Limits.self
        let base = Subscription(project: "p", eventTypes: ["compute.*"], target: Target(queue: "q"))
        let cases: [(String, (inout Subscription) -> Void)] = [
            ("event_types", { $0.eventTypes = (0...limits.patterns).map { "a\($0).*" } }),
            ("event_types[0]", { $0.eventTypes = [String(repeating: "a", count: limits.patternBytes + 1)] }),
            ("event_types[0]", { $0.eventTypes = [String(repeating: "*a", count: limits.wildcardsPerPattern + 1)] }),
            (
                "conditions",
                { $0.conditions = (0...limits.conditions).map { _ in Condition(field: "payload.a", op: .exists) } }
            ),
            (
                "conditions[0]",
                {
                    $0.conditions = [
                        Condition(
                            field: "payload.s", op: .in, value: .array((0...limits.inItems).map { .number(Double($0)) })
                        )
                    ]
                }
            ),
            (
                "conditions[0]",
                {
                    $0.conditions = [
                        Condition(
                            field: "payload.s", op: .eq,
                            value: .string(String(repeating: "v", count: limits.operandStringCharacters + 1)))
                    ]
                }
            ),
            (
                "conditions[0]",
                {
                    $0.conditions = [
                        Condition(
                            field: (0...limits.fieldSegments).map { _ in "a" }.joined(separator: "."), op: .exists)
                    ]
                }
            ),
            (
                "target.zaqar_url",
                { $0.target.zaqarURL = "http://z/" + String(repeating: "a", count: limits.zaqarURLBytes) }
            ),
            (
                "target.signed_url.signature",
                {
                    $0.target.signedURL = SignedURL(
                        signature: String(repeating: "s", count: 600), expires: "2030-01-01T00:00:00",
                        methods: ["POST"], paths: ["messages"], project: "p")
                }
            ),
            // Limits count bytes: a few characters of combining marks are many bytes.
            ("project", { $0.project = "p" + marks(300) }),
            ("conditions[0]", { $0.conditions = [Condition(field: "payload.a" + marks(200), op: .exists)] }),
            ("target.zaqar_url", { $0.target.zaqarURL = "http://z/a" + marks(600) }),
            (
                "target.signed_url.expires",
                {
                    $0.target.signedURL = SignedURL(
                        signature: "s", expires: "2" + marks(300), methods: ["POST"], paths: ["messages"],
                        project: "p")
                }
            ),
            (
                "target.signed_url.paths",
                {
                    $0.target.signedURL = SignedURL(
                        signature: "s", expires: "2030-01-01T00:00:00", methods: ["POST"], paths: ["m" + marks(40)],
                        project: "p")
                }
            ),
        ]
        #expect(("a" + marks(600)).count == 1, "the marks make one character")
        for (field, change) in cases {
            var subscription = base
            change(&subscription)
            #expect(throws: SubscriptionValidationError.self) { try subscription.validate() }
            do {
                try subscription.validate()
            } catch let error as SubscriptionValidationError {
                #expect(error.field == field, "\(error)")
                #expect(error.message.contains("at most") || error.message.contains("longer than"), "\(error)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }
}
