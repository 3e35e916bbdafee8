import Delivery
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
    @Suite("The API with Keystone tokens and trusts (a real Keystone)")
    struct KeystoneAPITests {
        let harness: APIHarness

        init() throws {
            harness = try APIHarness()
        }

        /// With the cloud's admin project set (without it no project-scoped token is a cloud admin).
        func configuration(_ keystone: KeystoneFixture) -> KeystoneConfiguration {
            var configuration = KeystoneConfiguration(
                url: keystone.url + "/v3", username: keystone.serviceUser, password: keystone.servicePassword,
                project: keystone.serviceProject,
                userDomain: "Default", projectDomain: "Default", cacheTTL: .seconds(60)
            )
            configuration.adminProject = keystone.adminProjectID
            return configuration
        }

        /// The error `client.trustToken` ends with; nil, and an issue recorded naming `given`, when
        /// it gives a token instead.
        func trustTokenError(
            _ client: KeystoneClient, _ trust: String, fresh: Bool = false, given: Comment
        ) async -> ZaqarTokenError? {
            do {
                _ = try await client.trustToken(trust, fresh: fresh)
            } catch {
                return error
            }
            Issue.record(given)
            return nil
        }

        /// The harness's API behind Keystone.
        func application(_ client: KeystoneClient) -> some ApplicationProtocol {
            var services = harness.api.services
            services.keystone = client
            return Application(
                router: HeraldAPI(services: services).router(authenticator: KeystoneAuthenticator(keystone: client)))
        }

        func call(
            _ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, token: String?,
            json: [String: Any]? = nil
        ) async throws -> APIHarness.Reply {
            try await APIHarness.call(client, method, uri, token: token, json: json)
        }

        @Test("no, bad, expired and revoked tokens: 401; another project's subscription: 404; all projects: admin only")
        func keystoneAuth() async throws {
            let keystone = try await KeystoneFixture.make()
            let client = KeystoneClient(configuration: configuration(keystone), logger: Logger(label: "test"))
            let tokenA = try await keystone.userToken("a")
            let tokenB = try await keystone.userToken("b")
            let revoked = try await keystone.userToken("a")
            let expiring = try await keystone.shortLivedToken("a", seconds: 3)
            let admin = try await keystone.adminToken()
            let (revokedStatus, _, _) = try await KeystoneFixture.request(
                keystone.url + "/v3/auth/tokens", .DELETE, token: admin, subject: revoked)
            #expect(revokedStatus == 204)
            let projectA = try #require(keystone.projects["a"])

            try await application(client).test(.router) { http in
                let none = try await call(http, .get, "/v1/subscriptions", token: nil)
                #expect(none.status == .unauthorized)
                #expect(none.message.contains("X-Auth-Token"))
                let bad = try await call(http, .get, "/v1/subscriptions", token: "gAAAA-not-a-token")
                #expect(bad.status == .unauthorized, "\(bad.text)")
                let gone = try await call(http, .get, "/v1/subscriptions", token: revoked)
                #expect(gone.status == .unauthorized, "a revoked token is refused: \(gone.text)")
                try await Task.sleep(for: .seconds(5))
                let expired = try await call(http, .get, "/v1/subscriptions", token: expiring)
                #expect(expired.status == .unauthorized, "an expired token is refused: \(expired.text)")

                let created = try await call(
                    http, .post, "/v1/subscriptions", token: tokenA,
                    json: ["event_types": ["compute.*"], "target": ["queue": "ks-events"], "trust": false])
                #expect(created.status == .created, "\(created.text)")
                #expect(created.object["project"] as? String == projectA, "the project comes from the token")
                let id = try #require(created.object["id"] as? String)
                #expect(try await call(http, .get, "/v1/subscriptions/\(id)", token: tokenA).status == .ok)
                #expect(try await call(http, .get, "/v1/subscriptions/\(id)", token: tokenB).status == .notFound)
                #expect(
                    try await call(http, .patch, "/v1/subscriptions/\(id)", token: tokenB, json: ["message_ttl": 120])
                        .status == .notFound)
                #expect(try await call(http, .delete, "/v1/subscriptions/\(id)", token: tokenB).status == .notFound)
                #expect(try await harness.registry.get(id: id, project: projectA) != nil, "B changed nothing")

                let everything: [String: Any] = [
                    "event_types": ["compute.*"], "target": ["queue": "all-events"], "all_projects": true,
                    "trust": false,
                ]
                let member = try await call(http, .post, "/v1/subscriptions", token: tokenA, json: everything)
                #expect(member.status == .forbidden)
                #expect(member.message.contains("all_projects"))
                let byAdmin = try await call(http, .post, "/v1/subscriptions", token: admin, json: everything)
                #expect(byAdmin.status == .created, "\(byAdmin.text)")
                #expect(byAdmin.object["project"] as? String == keystone.adminProjectID)
            }
            // Without HERALD_ADMIN_PROJECT, the admin role in a project is that project's only,
            // however Keystone marks the project (it calls every project the admin project
            // unless its admin_project_name is set).
            var unset = configuration(keystone)
            unset.adminProject = nil
            let noAdminProject = KeystoneClient(configuration: unset, logger: Logger(label: "test"))
            try await application(noAdminProject).test(.router) { http in
                let everything: [String: Any] = [
                    "event_types": ["compute.*"], "target": ["queue": "all-events"], "all_projects": true,
                    "trust": false,
                ]
                let refused = try await call(http, .post, "/v1/subscriptions", token: admin, json: everything)
                #expect(refused.status == .forbidden, "\(refused.text)")
            }
            // Each token was validated by Keystone once (the expired one twice at most); the rest came from the cache.
            #expect(client.validationCount <= 7, "\(client.validationCount) validations")
        }

        @Test("a subscription gets a trust from its user to Herald by default; deleting it deletes the trust")
        func trustLifecycle() async throws {
            let keystone = try await KeystoneFixture.make()
            let client = KeystoneClient(configuration: configuration(keystone), logger: Logger(label: "test"))
            let tokenA = try await keystone.userToken("a")
            try await application(client).test(.router) { http in
                let created = try await call(
                    http, .post, "/v1/subscriptions", token: tokenA,
                    json: ["event_types": ["compute.*"], "target": ["queue": "trusted"]])
                #expect(created.status == .created, "\(created.text)")
                let id = try #require(created.object["id"] as? String)
                let trust = try #require(
                    created.object["trust_id"] as? String, "the trust is in the answer: \(created.text)")
                #expect(try await keystone.trusts(of: "a") == [trust], "the trust exists in Keystone, given by user a")
                // Herald can act through it: a token scoped to a's project.
                _ = try await client.trustToken(trust)

                let seed = try await call(
                    http, .post, "/v1/subscription", token: tokenA, json: ["source": "volume", "target": "seed-queue"])
                #expect(seed.status == .created, "\(seed.text)")
                #expect(try await keystone.trusts(of: "a").count == 2, "the seed alias gets a trust too")
                let seedID = try #require(seed.object["id"] as? String)

                #expect(try await call(http, .delete, "/v1/subscriptions/\(id)", token: tokenA).status == .noContent)
                #expect(try await keystone.trusts(of: "a").count == 1, "deleting the subscription deleted its trust")
                // A trust Keystone has not got is gone: said once by Keystone, then remembered for a
                // while, so deliveries to it cost no login each.
                for _ in 0..<3 {
                    let failure = await trustTokenError(client, trust, given: "a token for a deleted trust")
                    #expect(failure == nil || failure?.isRefused == true, "\(String(describing: failure))")
                }
                let asked = client.trustTokenCount
                _ = try? await client.trustToken(trust)
                #expect(client.trustTokenCount == asked, "not asked again moments later")
                #expect(try await call(http, .delete, "/v1/subscription/\(seedID)", token: tokenA).status == .noContent)
                #expect(try await keystone.trusts(of: "a").isEmpty)
            }
        }

        @Test(
            "trusts Keystone has not got: five in a row cost one validation of Herald's own token, and each one's wait doubles with each refusal in a row (15 s, 30 s, 60 s, up to 10 minutes)"
        )
        func goneTrustsBackOff() async throws {
            #expect(
                [1, 2, 3, 6, 7, 100].map { KeystoneClient.goneFor(refusals: $0) } == [
                    .seconds(15), .seconds(30), .seconds(60), .seconds(480), .seconds(600), .seconds(600),
                ])
            let keystone = try await KeystoneFixture.make()
            let clock = ManualClock()
            let client = KeystoneClient(
                configuration: configuration(keystone), logger: Logger(label: "test"), clock: ElapsedClock(clock))
            let trusts = (0..<5).map { String(repeating: "\($0)", count: 32) }
            func refused(_ trust: String) async -> Bool {
                await trustTokenError(client, trust, given: "a token for trust \(trust)")?.isRefused == true
            }
            for trust in trusts { #expect(await refused(trust)) }
            #expect(client.serviceLoginCount == 1, "Herald's own token, got once")
            #expect(client.serviceCheckCount == 1, "one validation of Herald's own token told the five 401s apart")
            #expect(client.passwordTrustTokenCount == 0, "no trust asked with the password")
            var asked = client.trustTokenCount
            for wait in [15, 30, 60] {
                clock.advance(by: .seconds(wait - 1))
                #expect(await refused(trusts[0]))
                #expect(client.trustTokenCount == asked, "not asked again before \(wait) s")
                clock.advance(by: .seconds(1))
                #expect(await refused(trusts[0]))
                #expect(client.trustTokenCount == asked + 1, "asked again after \(wait) s")
                asked = client.trustTokenCount
            }
        }

        /// Whether Keystone takes `token` as one scoped by user `letter`'s trust (impersonation: the
        /// user is the trustor, the project theirs).
        func isTrustToken(_ token: String, of letter: String, _ keystone: KeystoneFixture) async throws -> Bool {
            let (status, body, _) = try await KeystoneFixture.request(
                keystone.url + "/v3/auth/tokens", .GET, token: try await keystone.adminToken(), subject: token)
            let scoped = body["token"] as? [String: Any]
            return status == 200 && (scoped?["user"] as? [String: Any])?["id"] as? String == keystone.users[letter]
                && (scoped?["project"] as? [String: Any])?["id"] as? String == keystone.projects[letter]
                && scoped?["OS-TRUST:trust"] != nil
        }

        @Test(
            "trust tokens are asked with Herald's own token, no password each: six at once cost one login; a revoked service token is noticed and replaced; a service token near its end is renewed first"
        )
        func trustTokensByToken() async throws {
            let keystone = try await KeystoneFixture.make()
            let clock = ManualClock()
            let client = KeystoneClient(
                configuration: configuration(keystone), logger: Logger(label: "test"), clock: ElapsedClock(clock))
            var trusts: [(letter: String, trust: String)] = []
            for letter in ["a", "a", "a", "b", "b", "b"] {
                trusts.append((letter, try await keystone.trustToHerald(letter)))
            }
            let tokens = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for (number, entry) in trusts.enumerated() {
                    group.addTask { (number, try await client.trustToken(entry.trust)) }
                }
                var tokens: [Int: String] = [:]
                for try await (number, token) in group { tokens[number] = token }
                return tokens
            }
            for (number, entry) in trusts.enumerated() {
                let token = try #require(tokens[number])
                #expect(try await isTrustToken(token, of: entry.letter, keystone), "trust \(number)")
            }
            #expect(client.serviceLoginCount == 1, "one login for the six (shared while under way)")
            #expect(client.passwordTrustTokenCount == 0)
            #expect(client.rescoping == .works)

            // Herald's own token revoked (an operator, a key rotation): a trust's token asked with
            // it is refused, a validation says whose fault that is, and one new login mends it.
            let held = try #require(client.heldServiceToken)
            let (revoked, _, _) = try await KeystoneFixture.request(
                keystone.url + "/v3/auth/tokens", .DELETE, token: try await keystone.adminToken(), subject: held)
            #expect(revoked == 204)
            let again = try await client.trustToken(trusts[0].trust, fresh: true)
            #expect(try await isTrustToken(again, of: "a", keystone))
            #expect(client.serviceLoginCount == 2)
            #expect(client.serviceCheckCount == 1)
            #expect(client.heldServiceToken != held)
            // Again, with six trusts' tokens asked at once with the revoked token: each refusal is
            // checked, none taken as the trust's, and one login replaces the token for all.
            let second = try #require(client.heldServiceToken)
            let (again2, _, _) = try await KeystoneFixture.request(
                keystone.url + "/v3/auth/tokens", .DELETE, token: try await keystone.adminToken(), subject: second)
            #expect(again2 == 204)
            let renewed = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for (number, entry) in trusts.enumerated() {
                    group.addTask { (number, try await client.trustToken(entry.trust, fresh: true)) }
                }
                var tokens: [Int: String] = [:]
                for try await (number, token) in group { tokens[number] = token }
                return tokens
            }
            for (number, entry) in trusts.enumerated() {
                #expect(try await isTrustToken(try #require(renewed[number]), of: entry.letter, keystone))
            }
            #expect(client.serviceLoginCount == 3, "one login for the six")
            #expect(client.serviceCheckCount >= 2, "the 404s were checked, whatever was confirmed moments before")

            // A trust's token expires with the service token it was made from: with 9 minutes of
            // a one-hour token left (less than its 10-minute minimum), a new login comes first.
            clock.advance(by: .seconds(49 * 60))
            _ = try await client.trustToken(trusts[1].trust, fresh: true)
            #expect(client.serviceLoginCount == 3, "49 minutes in: the service token still serves")
            clock.advance(by: .seconds(120))
            _ = try await client.trustToken(trusts[1].trust, fresh: true)
            #expect(client.serviceLoginCount == 4, "51 minutes in: renewed for the trust")
            #expect(client.passwordTrustTokenCount == 0)
        }

        @Test(
            "trust tokens are held while valid; expired ones of trusts no longer asked are swept out once the map reaches its capacity, valid ones kept"
        )
        func trustTokensSwept() async throws {
            let keystone = try await KeystoneFixture.make()
            let clock = ManualClock()
            var small = configuration(keystone)
            small.cacheCapacity = 3
            let client = KeystoneClient(configuration: small, logger: Logger(label: "test"), clock: ElapsedClock(clock))
            var trusts: [String] = []
            for _ in 0..<5 { trusts.append(try await keystone.trustToHerald("a")) }
            for trust in trusts.prefix(3) { _ = try await client.trustToken(trust) }
            #expect(client.heldTrustTokenCount == 3)
            // Two hours on, the three are expired; the next one sweeps them out.
            clock.advance(by: .seconds(7_200))
            _ = try await client.trustToken(trusts[3])
            #expect(client.heldTrustTokenCount == 1, "the expired three swept out")
            // Valid ones are never dropped: past the capacity the map grows, and sweeps again at
            // twice what was left.
            _ = try await client.trustToken(trusts[4])
            _ = try await client.trustToken(trusts[0])
            _ = try await client.trustToken(trusts[1])
            #expect(client.heldTrustTokenCount == 4)
        }

        @Test(
            "a Keystone that does not rescope scoped tokens (allow_rescope_scoped_token = false): trust tokens are asked with the password, found once"
        )
        func trustTokensWhereRescopeRefused() async throws {
            let keystone = try await KeystoneFixture.make()
            var strict = configuration(keystone)
            strict.url = try TestServers.value("HERALD_TEST_KEYSTONE_STRICT_URL") + "/v3"
            let client = KeystoneClient(configuration: strict, logger: Logger(label: "test"))
            let first = try await keystone.trustToHerald("a")
            let second = try await keystone.trustToHerald("b")
            #expect(try await isTrustToken(try await client.trustToken(first), of: "a", keystone))
            #expect(client.rescopeRefused)
            #expect(client.passwordTrustTokenCount == 1)
            #expect(try await isTrustToken(try await client.trustToken(second), of: "b", keystone))
            #expect(client.passwordTrustTokenCount == 2, "the second asked with the password at once")
            #expect(client.serviceCheckCount == 0, "the password's answer told: no validation needed")
            // A trust gone is still told apart: refused, not Herald's trouble.
            let failure = await trustTokenError(
                client, String(repeating: "7", count: 32), given: "a token for a trust Keystone has not got")
            #expect(failure == nil || failure?.isRefused == true, "\(String(describing: failure))")
        }

        @Test(
            "where trust tokens take the password, Herald's password changed is Herald's trouble (503, retried), not the trust's end"
        )
        func passwordChangedWhereRescopeRefused() async throws {
            let keystone = try await KeystoneFixture.make()
            // A service user of this test's own, whose password the test changes.
            let herald = try await keystone.user("svc", role: "member", on: "a")
            var strict = configuration(keystone)
            strict.url = try TestServers.value("HERALD_TEST_KEYSTONE_STRICT_URL") + "/v3"
            strict.username = "svc-\(keystone.suffix)"
            strict.password = "secret-svc-\(keystone.suffix)"
            strict.project = "ks-a-\(keystone.suffix)"
            let clock = ManualClock()
            let client = KeystoneClient(
                configuration: strict, logger: Logger(label: "test"), clock: ElapsedClock(clock))
            let trust = try await keystone.trust(from: "b", to: herald.id)
            #expect(try await isTrustToken(try await client.trustToken(trust), of: "b", keystone))
            #expect(client.rescopeRefused)
            let (changed, _, _) = try await KeystoneFixture.request(
                keystone.url + "/v3/users/\(herald.id)", .PATCH, token: try await keystone.adminToken(),
                json: ["user": ["password": "changed-\(keystone.suffix)"]])
            #expect(changed == 200)
            clock.advance(by: .seconds(6))
            if let failure = await trustTokenError(
                client, trust, fresh: true, given: "a trust token with a changed password")
            {
                let reason = try #require(failure.unavailableReason, "the trust was taken as gone: \(failure)")
                #expect(reason.contains("service user"), "\(reason)")
                #expect(!reason.contains("svc-"), "the user's name is the operator's: \(reason)")
            }
        }

        @Test("Keystone refusing Herald's own service user is a 503 naming it, not a 401")
        func badServiceUser() async throws {
            let keystone = try await KeystoneFixture.make()
            var configuration = configuration(keystone)
            configuration.password = "wrong"
            let clock = ManualClock()
            let client = KeystoneClient(
                configuration: configuration, logger: Logger(label: "test"), clock: ElapsedClock(clock))
            let token = try await keystone.userToken("a")
            try await application(client).test(.router) { http in
                let reply = try await call(http, .get, "/v1/subscriptions", token: token)
                #expect(reply.status == .serviceUnavailable)
                #expect(reply.message.contains(keystone.serviceUser), "\(reply.message)")
                // The refusal stands 15 s for every caller: no login per request (a refused
                // password tried per request brings on the account's lockout).
                let again = try await call(http, .get, "/v1/subscriptions", token: try await keystone.userToken("b"))
                #expect(again.status == .serviceUnavailable)
            }
            #expect(client.serviceLoginCount == 1)
            // Past the 15 s, a trust's token asks Herald's login again: refused, it is Herald's
            // problem (a password the operator fixes), not the trust's end: retried and parked,
            // never dead-lettered as a trust gone.
            clock.advance(by: .seconds(16))
            if let failure = await trustTokenError(
                client, "0123456789abcdef0123456789abcdef", given: "a token with a wrong password")
            {
                let reason = try #require(failure.unavailableReason, "\(failure)")
                #expect(reason.contains("service user"), "\(reason)")
            }
            #expect(client.serviceLoginCount == 2)
            // Remembered: the next trusts' tokens are not asked for.
            let asked = client.trustTokenCount
            for trust in ["a", "b", "c"].map({ String(repeating: $0, count: 32) }) {
                let failure = await trustTokenError(client, trust, given: "a token with a wrong password")
                #expect(failure == nil || failure?.unavailableReason != nil, "\(String(describing: failure))")
            }
            #expect(client.trustTokenCount == asked, "Keystone not asked again")
            #expect(client.serviceLoginCount == 2)
        }
    }
}

extension ZaqarTokenError {
    /// Keystone (or Herald's memory of it) says the trust is gone.
    var isRefused: Bool {
        if case .refused = self { return true }
        return false
    }

    /// The reason, when Herald could not ask (Keystone down, Herald's own login refused).
    var unavailableReason: String? {
        if case .unavailable(let reason) = self { return reason }
        return nil
    }
}
