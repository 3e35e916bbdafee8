import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Synchronization

/// Herald's own Keystone identity (the service user) and how long validations are kept.
struct KeystoneConfiguration: Sendable {
    /// HERALD_KEYSTONE_URL, e.g. http://keystone:5000 (with or without /v3).
    var url: String
    var username: String
    var password: String
    var project: String
    var userDomain: String
    var projectDomain: String
    /// A validated token is trusted for at most this long (or until it expires): the window in
    /// which a revoked token still passes.
    var cacheTTL: Duration
    /// At most this many tokens are kept.
    var cacheCapacity = 10_000

    var base: String {
        var base = url
        while base.hasSuffix("/") { base.removeLast() }
        if base.hasSuffix("/v3") { base.removeLast(3) }
        return base
    }
}

/// Validates users' tokens against Keystone v3 (`GET /v3/auth/tokens` with Herald's service
/// token), caching each answer until the token expires or `cacheTTL` passes, whichever is first.
final class KeystoneValidator: Sendable {
    enum Failure: Error, CustomStringConvertible {
        /// Keystone does not know the token, or it expired or was revoked.
        case invalid(String)
        /// Keystone could not be asked (down, or refusing Herald's own credentials).
        case unavailable(String)

        var description: String {
            switch self {
            case .invalid(let text), .unavailable(let text): return text
            }
        }
    }

    private struct Entry {
        var caller: Caller
        var until: ContinuousClock.Instant
    }

    private struct State {
        var serviceToken: (token: String, until: ContinuousClock.Instant)?
        var cache: [String: Entry] = [:]
    }

    let configuration: KeystoneConfiguration
    private let http: HTTPClient
    private let logger: Logger
    private let state = Mutex(State())
    /// Round trips to Keystone's validation, for tests and metrics.
    private let validations = Atomic<Int>(0)

    init(configuration: KeystoneConfiguration, http: HTTPClient = .shared, logger: Logger) {
        self.configuration = configuration
        self.http = http
        self.logger = logger
    }

    var validationCount: Int { validations.load(ordering: .relaxed) }

    /// The caller a token stands for.
    func caller(token: String) async throws(Failure) -> Caller {
        let now = ContinuousClock.now
        if let entry = state.withLock({ $0.cache[token] }), entry.until > now { return entry.caller }
        var retried = false
        while true {
            let service = try await serviceToken(renew: retried)
            var request = HTTPClientRequest(url: configuration.base + "/v3/auth/tokens")
            request.headers.add(name: "X-Auth-Token", value: service)
            request.headers.add(name: "X-Subject-Token", value: token)
            validations.add(1, ordering: .relaxed)
            let (status, body) = try await send(request)
            switch status {
            case 200:
                guard let object = body["token"] as? [String: Any] else { throw .unavailable("Keystone's validation answer has no token") }
                guard let project = (object["project"] as? [String: Any])?["id"] as? String else {
                    throw .invalid("the token is not scoped to a project; ask Keystone for a project-scoped token")
                }
                let roles = (object["roles"] as? [[String: Any]] ?? []).compactMap { ($0["name"] as? String)?.lowercased() }
                let caller = Caller(project: project, isAdmin: roles.contains("admin"))
                let expires = Self.expiry(object["expires_at"] as? String)
                let until = min(now + configuration.cacheTTL, expires.map { now + .seconds(max(0, $0.timeIntervalSinceNow)) } ?? now + configuration.cacheTTL)
                state.withLock { state in
                    if state.cache.count >= configuration.cacheCapacity {
                        state.cache = state.cache.filter { $0.value.until > now }
                        if state.cache.count >= configuration.cacheCapacity, let key = state.cache.keys.first { state.cache[key] = nil }
                    }
                    state.cache[token] = Entry(caller: caller, until: until)
                }
                return caller
            case 404:
                throw .invalid("Keystone does not accept this token (unknown, expired or revoked)")
            case 401 where !retried:
                retried = true  // Herald's own token expired or was revoked: get a new one, once.
            default:
                throw .unavailable("Keystone answered \(status) to the token validation")
            }
        }
    }

    /// Herald's service token, renewed a minute before it expires or when Keystone refused it.
    private func serviceToken(renew: Bool) async throws(Failure) -> String {
        let now = ContinuousClock.now
        if !renew, let current = state.withLock({ $0.serviceToken }), current.until > now { return current.token }
        let body: [String: Any] = ["auth": [
            "identity": ["methods": ["password"], "password": ["user": [
                "name": configuration.username, "domain": ["name": configuration.userDomain], "password": configuration.password,
            ]]],
            "scope": ["project": ["name": configuration.project, "domain": ["name": configuration.projectDomain]]],
        ]]
        var request = HTTPClientRequest(url: configuration.base + "/v3/auth/tokens")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        guard let data = try? JSONSerialization.data(withJSONObject: body) else { throw .unavailable("cannot encode the authentication request") }
        request.body = .bytes(ByteBuffer(bytes: data))
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(10))
        } catch {
            throw .unavailable("Keystone at \(configuration.base) cannot be reached: \(error)")
        }
        let payload = (try? await response.body.collect(upTo: 1 << 20)).map { Data(buffer: $0) } ?? Data()
        guard response.status == .created, let token = response.headers.first(name: "X-Subject-Token") else {
            let message = String(decoding: payload.prefix(300), as: UTF8.self)
            logger.error("Keystone refused Herald's service user", metadata: ["keystone.status": "\(response.status.code)", "keystone.user": "\(configuration.username)"])
            throw .unavailable("Keystone refused Herald's service user \(configuration.username) (\(response.status.code)): \(message)")
        }
        let object = (try? JSONSerialization.jsonObject(with: payload)) as? [String: Any]
        let expires = Self.expiry((object?["token"] as? [String: Any])?["expires_at"] as? String)
        let until = now + .seconds(max(0, (expires?.timeIntervalSinceNow ?? 600) - 60))
        state.withLock { $0.serviceToken = (token, until) }
        return token
    }

    private func send(_ request: HTTPClientRequest) async throws(Failure) -> (Int, [String: Any]) {
        do {
            let response = try await http.execute(request, timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 4 << 20)
            let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
            return (Int(response.status.code), object)
        } catch {
            throw .unavailable("Keystone at \(configuration.base) cannot be reached: \(error)")
        }
    }

    /// Keystone's `2026-11-24T23:05:21.000000Z`.
    static func expiry(_ text: String?) -> Date? {
        guard let text else { return nil }
        let trimmed = text.replacingOccurrences(of: #"\.\d+"#, with: "", options: .regularExpression)
        return ISO8601DateFormatter().date(from: trimmed)
    }
}

/// `HERALD_API_AUTH=keystone`: the caller is whoever Keystone says `X-Auth-Token` belongs to.
struct KeystoneAuthenticator: RouterMiddleware {
    typealias Context = APIContext
    let validator: KeystoneValidator

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        guard let token = request.headers[.authToken], !token.isEmpty else {
            throw HTTPError(.unauthorized, message: "missing X-Auth-Token header: send a Keystone token scoped to your project")
        }
        var context = context
        do {
            context.caller = try await validator.caller(token: token)
        } catch .invalid(let reason) {
            throw HTTPError(.unauthorized, message: "X-Auth-Token: \(reason)")
        } catch .unavailable(let reason) {
            throw HTTPError(.serviceUnavailable, message: "cannot validate the token now: \(reason)")
        }
        return try await next(request, context)
    }
}

extension HTTPField.Name {
    static let authToken = Self("X-Auth-Token")!
}
