import Coordination
import Delivery
import Foundation
import HTTPTypes
import HeraldModel
import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOFoundationCompat
import Prometheus
import TestSupport

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

/// The API over the real Redis (registry and dead letters under a key prefix of its own) and
/// the real Zaqar (replays), driven in-process through HummingbirdTesting.
struct APIHarness {
    let prefix = TestServers.uniqueName("herald-api") + ":"
    let registry: SubscriptionRegistry
    let deadLetters: DeadLetterStore
    let zaqar: ZaqarReader
    let readiness = Locked<[String: Bool]>([
        "rabbitmq": true, "registry": true, "membership": true, "not_stopping": true,
    ])
    let metrics = PrometheusCollectorRegistry()
    let api: HeraldAPI
    /// The parking record the delivery-state route reads (same key prefix).
    let parking: ParkingLedger

    /// One client for every harness, alive for the whole run (a client must be shut down before it goes).
    ///
    /// The local Zaqar serves one request at a time (wsgiref, listen backlog 5): while the
    /// pipeline tests of the same pass post into it, a new connection can wait for seconds in
    /// its backlog, past a node's 2 s connect timeout (a replay then failed with "failed 2").
    /// These tests are about the API, not Zaqar's speed: give the connection time.
    static let replayClient = ZaqarClient(connectTimeout: .seconds(20), requestTimeout: .seconds(30))

    /// - Parameters: the operator's settings under test (none by default: every endpoint, no rates).
    init(endpoints: ZaqarEndpoints? = nil, limits: APILimits = APILimits(), rates: Bool = false) throws {
        let redis = try RedisConfiguration(url: try TestServers.redisURL())
        registry = SubscriptionRegistry(redis: redis, keyPrefix: prefix)
        deadLetters = DeadLetterStore(redis: RedisClient(configuration: redis), keyPrefix: prefix)
        zaqar = ZaqarReader(baseURL: try TestServers.zaqarURL())
        let client = Self.replayClient
        let readiness = readiness
        let metrics = metrics
        let parking = ParkingLedger(redis: RedisClient(configuration: redis), keyPrefix: prefix)
        self.parking = parking
        api = HeraldAPI(
            services: APIServices(
                registry: registry, deadLetters: deadLetters, defaultZaqarURL: zaqar.baseURL,
                deliver: { target, message in try await client.post(target, messages: [message]) },
                readiness: { readiness.value },
                metrics: { metrics.emitToString() },
                endpoints: endpoints,
                limits: limits,
                rates: rates ? RateLimiter(redis: RedisClient(configuration: redis), keyPrefix: prefix) : nil,
                parking: parking,
                stats: SubscriptionStats(redis: RedisClient(configuration: redis), keyPrefix: prefix),
                catalog: EventTypeCatalog(redis: RedisClient(configuration: redis), keyPrefix: prefix)
            ))
    }

    /// Runs `body` against the router.
    func test<T: Sendable>(_ body: @Sendable (Client) async throws -> T) async throws -> T {
        let application = Application(router: api.router(authenticator: TrustedHeaderAuthenticator()))
        return try await application.test(.router) { client in try await body(Client(client: client)) }
    }

    /// A test client that sends JSON as a project and reads JSON back.
    struct Client: Sendable {
        let client: any TestClientProtocol

        @discardableResult
        func call(
            _ method: HTTPRequest.Method, _ uri: String, project: String? = "p1", admin: Bool = false,
            roles: String? = nil, user: String? = nil,
            json: Any? = nil, raw: String? = nil
        ) async throws -> Reply {
            var headers = HTTPFields()
            if let project { headers[.projectID] = project }
            if admin { headers[.roles] = "member,admin" }
            if let roles { headers[.roles] = roles }
            if let user { headers[.userID] = user }
            var body: ByteBuffer?
            if let json { body = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)) }
            if let raw { body = ByteBuffer(string: raw) }
            if body != nil { headers[.contentType] = "application/json" }
            let response = try await client.execute(uri: uri, method: method, headers: headers, body: body)
            return Reply(status: response.status, headers: response.headers, data: Data(buffer: response.body))
        }
    }

    /// One request to an application behind Keystone, with `X-Auth-Token` when given.
    static func call(
        _ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, token: String?,
        json: [String: Any]? = nil
    ) async throws -> Reply {
        var headers = HTTPFields()
        if let token { headers[.authToken] = token }
        var body: ByteBuffer?
        if let json {
            body = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json))
            headers[.contentType] = "application/json"
        }
        let response = try await client.execute(uri: uri, method: method, headers: headers, body: body)
        return Reply(status: response.status, headers: response.headers, data: Data(buffer: response.body))
    }

    struct Reply: Sendable {
        var status: HTTPResponse.Status
        var headers: HTTPFields
        var data: Data

        var object: [String: Any] { ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any]) ?? [:] }
        var text: String { String(decoding: data, as: UTF8.self) }
        /// The message of an error body.
        var message: String { ((object["error"] as? [String: Any])?["message"] as? String) ?? text }
    }
}
