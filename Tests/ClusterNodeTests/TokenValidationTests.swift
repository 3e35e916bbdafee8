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

@Suite("Access rules, system scope and the validation limit (pure logic)")
struct TokenRuleTests {
    @Test("paths match as keystonemiddleware matches them: * one segment, ** anything, the rest literal")
    func paths() {
        func matches(_ pattern: String, _ path: String) -> Bool {
            AccessRule.matches(Array(pattern.utf8)[...], Array(path.utf8)[...])
        }
        #expect(matches("/v1/subscriptions", "/v1/subscriptions"))
        #expect(!matches("/v1/subscriptions", "/v1/subscriptions/x"))
        #expect(matches("/v1/subscriptions/*", "/v1/subscriptions/abc"))
        #expect(!matches("/v1/subscriptions/*", "/v1/subscriptions/"), "* is one non-empty segment")
        #expect(!matches("/v1/subscriptions/*", "/v1/subscriptions/abc/delivery"))
        #expect(matches("/v1/subscriptions/{id}/delivery", "/v1/subscriptions/abc/delivery"))
        #expect(matches("/v1/**", "/v1/subscriptions/abc/delivery"))
        #expect(matches("/v1/**", "/v1/"), "** may be empty")
        #expect(matches("/**/delivery", "/v1/subscriptions/abc/delivery"))
        #expect(!matches("/v1/**", "/v2/subscriptions"))
        #expect(!matches("/v1/dead-letters", "/v1/dead-letters2"))
        // Hostile patterns cost little: many wildcards are refused past a depth, not explored.
        #expect(!matches(String(repeating: "**", count: 40) + "x", String(repeating: "a", count: 4000)))
        let rule = AccessRule(service: "events", path: "/v1/subscriptions", method: "GET")
        #expect(rule.allows(method: "GET", path: "/v1/subscriptions", serviceType: "events"))
        #expect(!rule.allows(method: "POST", path: "/v1/subscriptions", serviceType: "events"))
        #expect(!rule.allows(method: "GET", path: "/v1/subscriptions", serviceType: "compute"))
    }

    @Test("a token bucket per source, charged by refusals only: a burst, then one per 1/rate; IPv6 by /64; bounded")
    func rateLimit() {
        var limit = ValidationRateLimit(perSecond: 2, burst: 4)
        let start = ContinuousClock.now
        for _ in 0..<10 { #expect(limit.check("10.0.0.1", now: start) == nil, "checking costs nothing") }
        for _ in 0..<4 { limit.charge("10.0.0.1", now: start) }
        let wait = limit.check("10.0.0.1", now: start)
        #expect(wait != nil && wait! > .milliseconds(400) && wait! <= .milliseconds(500), "\(String(describing: wait))")
        #expect(limit.check("10.0.0.2", now: start) == nil, "another source has its own bucket")
        #expect(limit.check("10.0.0.1", now: start + .milliseconds(500)) == nil, "one more after 1/rate")
        // One IPv6 host holds its whole /64: every address in it shares the bucket.
        for suffix in 1...4 { limit.charge("2001:db8:1:2::\(suffix)", now: start) }
        #expect(limit.check("2001:db8:1:2:ffff::9", now: start) != nil)
        #expect(limit.check("2001:db8:1:3::1", now: start) == nil, "another /64 is another source")
        // An IPv4 client of an API listening on `::` is its IPv4 address, not the one /64 (::ffff:0:0)
        // every IPv4 client would share.
        #expect(limit.key("::ffff:10.0.0.1") == "10.0.0.1")
        #expect(limit.key("::ffff:192.0.2.200") == "192.0.2.200")
        #expect(limit.check("::ffff:10.0.0.1", now: start) != nil, "the same client as 10.0.0.1, whose bucket is spent")
        #expect(limit.check("::ffff:10.0.0.3", now: start) == nil, "another IPv4 client is another source")
        // Spraying addresses past the capacity lands in one shared bucket.
        var small = ValidationRateLimit(perSecond: 1, burst: 2)
        small.capacity = 100
        for index in 0..<1000 { small.charge("10.1.\(index / 256).\(index % 256)", now: start) }
        #expect(small.sources <= 101)
        #expect(
            small.check("10.9.9.9", now: start) != nil || small.check("10.1.0.1", now: start) != nil,
            "new sources past the capacity share a spent bucket")
        // Validations are taken before Keystone answers (so many unknown tokens at once from one
        // source cannot all reach it) and given back for a valid token.
        var taking = ValidationRateLimit(perSecond: 1, burst: 2)
        #expect(taking.take("10.2.0.1", now: start) == nil)
        #expect(taking.take("10.2.0.1", now: start) == nil)
        #expect(taking.take("10.2.0.1", now: start) != nil, "a third one in flight at once waits")
        taking.refund("10.2.0.1", now: start)
        #expect(taking.take("10.2.0.1", now: start) == nil, "a valid token's validation was given back")
        for _ in 0..<5 { taking.refund("10.2.0.1", now: start) }
        #expect(taking.take("10.2.0.1", now: start) == nil && taking.take("10.2.0.1", now: start) == nil)
        #expect(taking.take("10.2.0.1", now: start) != nil, "refunds never raise a bucket past its burst")
        var off = ValidationRateLimit(perSecond: 0, burst: 0)
        for _ in 0..<100 { off.charge("x", now: start) }
        #expect(off.check("x", now: start) == nil, "rate 0: no limit")
    }

    @Test("behind trusted proxies the client is the last X-Forwarded-For hop that is not one of them")
    func forwarded() throws {
        func client(_ peer: String, _ forwarded: [String], trusted: [String]) throws -> String {
            var headers = HTTPFields()
            for value in forwarded { headers.append(HTTPField(name: .forwardedFor, value: value)) }
            let request = Request(
                head: HTTPRequest(
                    method: .get, scheme: nil, authority: nil, path: "/v1/subscriptions", headerFields: headers),
                body: RequestBody(buffer: ByteBuffer()))
            return KeystoneAuthenticator.client(request, peer: peer, trusted: try AddressRanges(trusted))
        }
        #expect(
            try client("10.0.0.5", ["203.0.113.7"], trusted: []) == "10.0.0.5", "an untrusted peer's header is ignored")
        #expect(
            try client("10.0.0.5", ["198.51.100.1, 203.0.113.7"], trusted: ["10.0.0.5"]) == "203.0.113.7",
            "the client can prepend anything; the proxy's own hop counts")
        #expect(
            try client("10.0.0.5", ["203.0.113.7", "10.0.0.4"], trusted: ["10.0.0.5", "10.0.0.4"]) == "203.0.113.7")
        #expect(try client("10.0.0.5", [], trusted: ["10.0.0.5"]) == "10.0.0.5")
        // An ingress's pods within their network's range, IPv4 and IPv6, and an IPv4 peer as `::` sees it.
        #expect(
            try client("10.42.7.9", ["203.0.113.7, 10.42.0.3"], trusted: ["10.42.0.0/16"]) == "203.0.113.7")
        #expect(try client("::ffff:10.42.7.9", ["203.0.113.7"], trusted: ["10.42.0.0/16"]) == "203.0.113.7")
        #expect(try client("fd00:10::8", ["2001:db8::1"], trusted: ["fd00:10::/64"]) == "2001:db8::1")
        #expect(try client("10.43.0.1", ["203.0.113.7"], trusted: ["10.42.0.0/16"]) == "10.43.0.1", "outside the range")
    }

    @Test(
        "X-Forwarded-For from a peer that is not a trusted proxy is warned of, once per peer, for 16 peers at most"
    )
    func untrustedForwarder() throws {
        func request(_ forwarded: String?) -> Request {
            var headers = HTTPFields()
            if let forwarded { headers.append(HTTPField(name: .forwardedFor, value: forwarded)) }
            return Request(
                head: HTTPRequest(
                    method: .get, scheme: nil, authority: nil, path: "/v1/subscriptions", headerFields: headers),
                body: RequestBody(buffer: ByteBuffer()))
        }
        let ingress = try AddressRanges(["10.42.0.0/16"])
        #expect(KeystoneAuthenticator.forwardedByUntrusted(request("203.0.113.7"), peer: "10.43.0.1", trusted: ingress))
        #expect(
            !KeystoneAuthenticator.forwardedByUntrusted(request("203.0.113.7"), peer: "10.42.0.1", trusted: ingress),
            "a trusted proxy's header is read, not warned of")
        #expect(
            !KeystoneAuthenticator.forwardedByUntrusted(request(nil), peer: "10.43.0.1", trusted: ingress),
            "no header, nothing to say")
        let client = KeystoneClient(
            configuration: KeystoneConfiguration(
                url: "http://127.0.0.1:9/v3", username: "herald", password: "p", project: "service",
                userDomain: "Default", projectDomain: "Default", cacheTTL: .seconds(60)),
            logger: Logger(label: "test"))
        #expect(client.warnOfUntrustedForwarder("10.43.0.1"))
        #expect(!client.warnOfUntrustedForwarder("10.43.0.1"), "once per peer")
        let warned = (0..<100).filter { client.warnOfUntrustedForwarder("10.44.0.\($0)") }.count
        #expect(warned == KeystoneClient.untrustedForwarderWarnings - 1, "bounded: anyone can send the header")
    }

    /// A Keystone that holds every request until told, and a client of it asking at most
    /// `validationsInFlight` validations at once.
    static func stallingKeystone(validationsInFlight: Int) async throws -> (HostileZaqar, KeystoneClient) {
        let keystone = try await HostileZaqar { _ in .stall }
        var configuration = KeystoneConfiguration(
            url: keystone.url + "/v3", username: "herald", password: "p", project: "service", userDomain: "Default",
            projectDomain: "Default", cacheTTL: .seconds(60))
        configuration.validationsInFlight = validationsInFlight
        return (keystone, KeystoneClient(configuration: configuration, logger: Logger(label: "test")))
    }

    @Test(
        "past the validations Keystone is asked at once (every source together), a token not in the cache is a 503 at once, not a wait behind them"
    )
    func validationsInFlight() async throws {
        // A Keystone that holds every request until told: the first four stay in flight.
        let (keystone, client) = try await Self.stallingKeystone(validationsInFlight: 4)
        let outcomes = await withTaskGroup(of: String.self) { group in
            // Forty sources, each well within its own limit.
            for n in 0..<40 {
                group.addTask {
                    do {
                        _ = try await client.caller(token: "gAAAAA-unknown-\(n)", source: "2001:db8:\(n)::1")
                        return "accepted"
                    } catch {
                        return "\(error)"
                    }
                }
            }
            var outcomes: [String] = []
            for await outcome in group {
                outcomes.append(outcome)
                if outcomes.count == 36 { keystone.releaseStalls() }
            }
            return outcomes
        }
        #expect(outcomes.count == 40)
        #expect(outcomes.filter { $0.contains("4 tokens at once") }.count == 36, "\(Set(outcomes))")
        #expect(keystone.totalRequests <= 4, "Keystone was asked \(keystone.totalRequests) times")
        await keystone.close()
    }

    @Test(
        "one network (an IPv6 /48 of 65,536 sources) holds at most a quarter of the validations in flight; another network's token is still let through"
    )
    func networkShare() async throws {
        #expect(ValidationRateLimit.network("2001:db8:1:2::1") == ValidationRateLimit.network("2001:db8:1:ffff::9"))
        #expect(ValidationRateLimit.network("2001:db8:1:2::1") != ValidationRateLimit.network("2001:db8:2::1"))
        #expect(ValidationRateLimit.network("::ffff:10.0.0.1") == "10.0.0.1")
        #expect(ValidationRateLimit.network("10.0.0.1") == "10.0.0.1")
        let (keystone, client) = try await Self.stallingKeystone(validationsInFlight: 16)
        #expect(client.networkShare == 4)
        let outcomes = await withTaskGroup(of: (String, String).self) { group in
            // Forty /64s of one /48, each well within its own limit, and one source elsewhere.
            let sources = (0..<40).map { "2001:db8:1:\($0)::1" } + ["2001:db8:2::1"]
            for (n, source) in sources.enumerated() {
                group.addTask {
                    do {
                        _ = try await client.caller(token: "gAAAAA-unknown-\(n)", source: source)
                        return (source, "accepted")
                    } catch {
                        return (source, "\(error)")
                    }
                }
            }
            var outcomes: [(String, String)] = []
            for await outcome in group {
                outcomes.append(outcome)
                if outcomes.count == 36 { keystone.releaseStalls() }
            }
            return outcomes
        }
        #expect(outcomes.count == 41)
        let refused = outcomes.filter { $0.1.contains("4 tokens from your network at once") }
        #expect(refused.count == 36, "\(Set(outcomes.map(\.1)))")
        #expect(refused.allSatisfy { $0.0.hasPrefix("2001:db8:1:") })
        let elsewhere = outcomes.filter { $0.0 == "2001:db8:2::1" }.map(\.1)
        #expect(elsewhere.count == 1 && !elsewhere[0].contains("at once already"), "\(elsewhere)")
        await keystone.close()
    }

    @Test("address ranges: prefixes on and off byte boundaries, both families apart; bad entries named")
    func addressRanges() throws {
        let ranges = try AddressRanges(["10.42.0.0/16", "192.0.2.128/25", "2001:db8:a::/48", "198.51.100.7", "::1"])
        for inside in ["10.42.255.1", "192.0.2.200", "2001:db8:a:ffff::1", "198.51.100.7", "::1", "::ffff:192.0.2.129"]
        {
            #expect(ranges.contains(inside), "\(inside)")
        }
        for outside in [
            "10.43.0.1", "192.0.2.127", "2001:db8:b::1", "198.51.100.8", "::2", "", "x", "10.42.0.1%eth0",
            "::ffff:10.43.0.1", String(repeating: "1", count: 100),
        ] {
            #expect(!ranges.contains(outside), "\(outside)")
        }
        #expect(try AddressRanges(["0.0.0.0/0"]).contains("203.0.113.9"))
        #expect(!(try AddressRanges(["0.0.0.0/0"]).contains("2001:db8::1")), "an IPv4 range holds no IPv6 address")
        for bad in ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/+8", "ingress.local", "fd00::/129", "10.0.0/8"]
        {
            #expect(throws: AddressRangeError.self, "\(bad)") { try AddressRanges([bad]) }
        }
        #expect(throws: AddressRangeError.self) {
            try AddressRanges(Array(repeating: "10.0.0.1", count: AddressRanges.maxEntries + 1))
        }
    }

    @Test("Keystone's answers: project scope, system scope, access rules; other scopes refused")
    func scopes() throws {
        let project: [String: Any] = [
            "project": ["id": "p1"], "roles": [["name": "Member"]], "user": ["id": "u1"], "is_admin_project": false,
        ]
        let caller = try KeystoneClient.caller(project, token: "t", adminProject: nil)
        #expect(
            caller.project == "p1" && caller.roles.contains("member") && caller.systemScope == nil
                && caller.accessRules == nil)
        #expect(caller.credentials.projectID == "p1")
        let system: [String: Any] = ["system": ["all": true], "roles": [["name": "admin"]], "user": ["id": "u2"]]
        let admin = try KeystoneClient.caller(system, token: "t", adminProject: "adm")
        #expect(
            admin.systemScope == "all" && admin.credentials.projectID == nil && admin.credentials.systemScope == "all")
        #expect(
            Policy().allows(
                "subscription:create_all_projects", credentials: admin.credentials, target: ["project_id": "p9"]))
        #expect(
            !Policy().allows(
                "subscription:create",
                credentials: try KeystoneClient.caller(
                    ["system": ["all": true], "roles": [["name": "reader"]]], token: "t", adminProject: nil
                ).credentials, target: ["project_id": "p9"]))
        #expect(
            Policy().allows(
                "subscription:list",
                credentials: try KeystoneClient.caller(
                    ["system": ["all": true], "roles": [["name": "reader"]]], token: "t", adminProject: nil
                ).credentials, target: ["project_id": "p9"]))
        var restricted = project
        restricted["application_credential"] = [
            "id": "ac", "access_rules": [["id": "r1", "service": "events", "path": "/v1/**", "method": "GET"]],
        ]
        #expect(
            try KeystoneClient.caller(restricted, token: "t", adminProject: nil).accessRules == [
                AccessRule(service: "events", path: "/v1/**", method: "GET")
            ])
        var unrestricted = project
        unrestricted["application_credential"] = ["id": "ac"]
        #expect(try KeystoneClient.caller(unrestricted, token: "t", adminProject: nil).accessRules == nil)
        let domain: [String: Any] = ["domain": ["id": "default"], "roles": [["name": "admin"]]]
        #expect(throws: KeystoneClient.Failure.self) {
            try KeystoneClient.caller(domain, token: "t", adminProject: nil)
        }
        #expect(throws: KeystoneClient.Failure.self) {
            try KeystoneClient.caller(["system": ["all": false], "roles": []], token: "t", adminProject: nil)
        }
    }
}

extension APISuites {
    @Suite("Token validation under a flood (a real Keystone)")
    struct TokenFloodTests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        /// - Parameter clock: the validation limit's and the caches' time: a test's manual clock
        ///   stands still unless the test moves it, so no refill comes from the test's own pace.
        func client(
            _ keystone: KeystoneFixture, perSecond: Int, negative: Duration, clock: ElapsedClock = .continuous
        ) -> KeystoneClient {
            var configuration = KeystoneConfiguration(
                url: keystone.url + "/v3", username: keystone.serviceUser, password: keystone.servicePassword,
                project: keystone.serviceProject,
                userDomain: "Default", projectDomain: "Default", cacheTTL: .seconds(60)
            )
            configuration.validationsPerSecond = perSecond
            configuration.negativeCacheTTL = negative
            return KeystoneClient(configuration: configuration, logger: Logger(label: "test"), clock: clock)
        }

        /// The API of the harness, its callers identified by `keystone`, under test.
        func behindKeystone(
            _ keystone: KeystoneClient, _ body: @Sendable (any TestClientProtocol) async throws -> Void
        ) async throws {
            var services = harness.api.services
            services.keystone = keystone
            let application = Application(
                router: HeraldAPI(services: services).router(authenticator: KeystoneAuthenticator(keystone: keystone)))
            try await application.test(.router, body)
        }

        func get(_ http: any TestClientProtocol, token: String) async throws -> HTTPResponse.Status {
            var headers = HTTPFields()
            headers[.authToken] = token
            return try await http.execute(uri: "/v1/subscriptions", method: .get, headers: headers, body: nil).status
        }

        @Test(
            "a refused token is refused again without asking Keystone; past the per-source limit, 429 with Retry-After")
        func flood() async throws {
            let keystone = try await KeystoneFixture.make()
            let good = try await keystone.userToken("a")
            let keystoneClient = client(
                keystone, perSecond: 1, negative: .seconds(30), clock: ElapsedClock(ManualClock()))
            try await behindKeystone(keystoneClient) { http in
                #expect(try await get(http, token: good) == .ok)
                #expect(keystoneClient.validationCount == 1)
                #expect(try await get(http, token: "gAAAAA-bogus-1") == .unauthorized)
                #expect(keystoneClient.validationCount == 2)
                for _ in 0..<20 { #expect(try await get(http, token: "gAAAAA-bogus-1") == .unauthorized) }
                #expect(keystoneClient.validationCount == 2, "the refusal is cached: Keystone was asked once")
                #expect(try await get(http, token: "gAAAAA-bogus-2") == .unauthorized)
                #expect(keystoneClient.validationCount == 3)
                // Two refusals spent the bucket (1 a second, bursts of 2; the valid token cost
                // nothing): the next unknown token from this address waits.
                var headers = HTTPFields()
                headers[.authToken] = "gAAAAA-bogus-3"
                let throttled = try await http.execute(
                    uri: "/v1/subscriptions", method: .get, headers: headers, body: nil)
                #expect(throttled.status == .tooManyRequests)
                #expect(throttled.headers[.retryAfter] == "1")
                #expect(keystoneClient.validationCount == 3, "throttled before Keystone")
                // A valid token in the cache is never limited.
                #expect(try await get(http, token: good) == .ok)
                let huge = String(repeating: "A", count: 5000)
                #expect(try await get(http, token: huge) == .unauthorized)
                #expect(keystoneClient.validationCount == 3, "an oversized token is refused without asking")
            }
        }

        @Test(
            "a token Keystone accepts but Herald refuses (unscoped) is remembered and charged as a refusal: repeats cost no validation"
        )
        func refusedAfterValidation() async throws {
            let keystone = try await KeystoneFixture.make()
            let unscoped = try await KeystoneFixture.token(
                url: keystone.url, user: "admin", password: try TestServers.value("HERALD_TEST_KEYSTONE_ADMIN_PASSWORD")
            )
            let clock = ManualClock()
            let keystoneClient = client(keystone, perSecond: 1, negative: .seconds(30), clock: ElapsedClock(clock))
            try await behindKeystone(keystoneClient) { http in
                let first = try await get(http, token: unscoped)
                #expect(first == .unauthorized || first == .forbidden, "\(first)")
                #expect(keystoneClient.validationCount == 1)
                for _ in 0..<10 { #expect(try await get(http, token: unscoped) == first) }
                #expect(keystoneClient.validationCount == 1, "remembered: Keystone was asked once")
                // And charged as a refusal: with one more (1 a second, bursts of 2), the next unknown
                // token from this source waits.
                #expect(try await get(http, token: "gAAAAA-bogus-after-unscoped") == .unauthorized)
                #expect(try await get(http, token: "gAAAAA-bogus-after-that") == .tooManyRequests)
                // A second later, one more.
                clock.advance(by: .seconds(1))
                #expect(try await get(http, token: "gAAAAA-bogus-a-second-later") == .unauthorized)
            }
        }
    }
}
