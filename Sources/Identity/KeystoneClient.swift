import AsyncHTTPClient
import Delivery
import Foundation
import HeraldModel
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// Herald's own Keystone identity (the service user), how long validations are kept, and what
/// a trust delegates.
package struct KeystoneConfiguration: Sendable {
    /// HERALD_KEYSTONE_URL, e.g. http://keystone:5000 (with or without /v3).
    package var url: String
    package var username: String
    package var password: String
    var project: String
    var userDomain: String
    var projectDomain: String
    /// A validated token is trusted for at most this long (or until it expires): the window in
    /// which a revoked token still passes.
    var cacheTTL: Duration
    /// At most this many tokens are kept.
    var cacheCapacity = 10_000
    /// The roles a subscriber's trust delegates on their project (HERALD_KEYSTONE_TRUST_ROLES).
    var trustRoles = ["member"]
    /// HERALD_ADMIN_PROJECT: the cloud's admin project, by id; an admin there is an admin
    /// across projects. nil: none is (Keystone's `is_admin_project` is true for every project
    /// unless its `admin_project_name` is set); cloud admins use system-scoped tokens.
    package var adminProject: String?
    /// A token Keystone refused is refused without asking again for this long
    /// (HERALD_KEYSTONE_NEGATIVE_CACHE_SECONDS).
    var negativeCacheTTL: Duration = .seconds(10)
    /// Tokens Keystone refuses that one source may send a second (HERALD_KEYSTONE_VALIDATIONS_PER_SECOND),
    /// in bursts of twice that; past it, that source's unknown tokens are not sent to Keystone. 0: no limit.
    var validationsPerSecond = 10
    /// Validations Keystone is asked at once, from every source together
    /// (HERALD_KEYSTONE_VALIDATIONS_IN_FLIGHT): past it, a token not in the cache gets a 503 at
    /// once instead of queueing behind them (many sources, such as a tenant's IPv6 /64s, each
    /// within its own limit, would otherwise hold up everyone's validations).
    package var validationsInFlight = 64
    /// Herald's service type in the catalog (HERALD_SERVICE_TYPE): what application credentials'
    /// access rules must name to reach Herald.
    package var serviceType = "events"
    /// HERALD_TRUSTED_PROXIES: addresses or CIDR ranges of the proxies in front of Herald (an
    /// ingress); from them, the client is the last address of `X-Forwarded-For` that is not one
    /// of them.
    package var trustedProxies = AddressRanges()
    /// HERALD_KEYSTONE_CA_FILE: the CAs that sign Keystone's certificate; nil: the system's.
    var caFile: String?

    package init(
        url: String, username: String, password: String, project: String, userDomain: String, projectDomain: String,
        cacheTTL: Duration, cacheCapacity: Int = 10_000, trustRoles: [String] = ["member"], adminProject: String? = nil,
        negativeCacheTTL: Duration = .seconds(10), validationsPerSecond: Int = 10, serviceType: String = "events",
        trustedProxies: AddressRanges = AddressRanges(), caFile: String? = nil, validationsInFlight: Int = 64
    ) {
        self.url = url
        self.username = username
        self.password = password
        self.project = project
        self.userDomain = userDomain
        self.projectDomain = projectDomain
        self.cacheTTL = cacheTTL
        self.cacheCapacity = cacheCapacity
        self.trustRoles = trustRoles
        self.adminProject = adminProject
        self.negativeCacheTTL = negativeCacheTTL
        self.validationsPerSecond = validationsPerSecond
        self.serviceType = serviceType
        self.trustedProxies = trustedProxies
        self.validationsInFlight = validationsInFlight
        self.caFile = caFile
    }

    var base: String {
        var base = url
        while base.hasSuffix("/") { base.removeLast() }
        if base.hasSuffix("/v3") { base.removeLast(3) }
        return base
    }
}

/// Herald's client of Keystone v3: validates users' tokens (`GET /v3/auth/tokens` with
/// Herald's service token, cached until the token expires or `cacheTTL` passes), creates and
/// deletes subscribers' trusts, and issues trust-scoped tokens for posting into their queues.
package final class KeystoneClient: Sendable {
    package enum Failure: Error, CustomStringConvertible {
        /// Keystone does not accept the token (unknown, expired or revoked) or the request.
        case invalid(String)
        /// Keystone could not be asked (down, or refusing Herald's own credentials).
        case unavailable(String)
        /// This source sent more unknown tokens than `validationsPerSecond`: try again after this.
        case throttled(Duration)

        package var description: String {
            switch self {
            case .invalid(let text), .unavailable(let text): return text
            case .throttled(let wait): return "too many token validations from this source; try again in \(wait)"
            }
        }
    }

    private struct Entry {
        var caller: Caller
        var until: ContinuousClock.Instant
    }

    private struct ServiceToken {
        var token: String
        var userID: String
        /// A minute before it expires: renewed then.
        var until: ContinuousClock.Instant
        /// When it expires, and how long it was issued for: a trust-scoped token made from it
        /// expires with it (Keystone keeps a rescoped token's expiry), so trusts ask for at least
        /// `trustMinimumLife` of it.
        var expires: ContinuousClock.Instant
        var lifetime: Duration
        /// The catalog that came with it: where the cloud's services listen.
        var catalog = ServiceCatalog()

        /// What a token made from this one lives at least: half its lifetime, at most 10 minutes.
        var trustMinimumLife: Duration { min(lifetime / 2, .seconds(600)) }
    }

    /// Whether Keystone makes trust-scoped tokens from Herald's own token (`[token]
    /// allow_rescope_scoped_token`, true by default): then a trust's token costs Keystone no
    /// password check; when it refuses, each costs a password login, as before.
    enum Rescoping: Equatable {
        case unknown, works
        /// Until when the password is used before Herald's token is tried again (the cloud may
        /// change its setting back).
        case refused(until: ContinuousClock.Instant)

        var works: Bool { self == .works }

        func usesPassword(now: ContinuousClock.Instant) -> Bool {
            if case .refused(let until) = self { return until > now }
            return false
        }
    }

    private struct State {
        var service: ServiceToken?
        /// Validations in flight by the network they came from (`ValidationRateLimit.network`):
        /// no more entries than callers waiting on a validation (each removes its own).
        var networksInFlight: [String: Int] = [:]
        /// The login under way, which every caller needing a new service token awaits: a node
        /// starting with many trusts to serve logs in once, not once per trust.
        var login: Task<ServiceToken, any Error>?
        var rescoping = Rescoping.unknown
        var cache: [String: Entry] = [:]
        /// Tokens refused (by Keystone, or by Herald after Keystone's answer: unscoped, domain
        /// scope, rules it cannot read), until when they are refused without asking, and why.
        var refused: [String: (until: ContinuousClock.Instant, reason: String)] = [:]
        var rateLimit: ValidationRateLimit
        /// Trust-scoped tokens by trust, each until a minute before it expires.
        var trustTokens: [String: (token: String, until: ContinuousClock.Instant)] = [:]
        /// The size at which expired trust tokens are next swept out (`cacheCapacity`, or twice
        /// what was left: each token is one trust in use, so the valid ones are kept).
        var trustTokensSweepAt = 0
        /// Trusts Keystone refused a token for, until when that answer stands without asking again,
        /// and how many times in a row it was refused: a tenant who deletes its trusts must not
        /// cost Keystone a password login per batch, nor one per trust every `goneTrustTTL`.
        var goneTrusts: [String: GoneTrust] = [:]
        /// Herald's own token found good after a trust's refusal (a validation of it, or a new
        /// login), and until when that stands for the next trusts' refusals asked with that token
        /// (`serviceConfirmation`): many trusts gone at once cost one check.
        var serviceConfirmed: (token: String, until: ContinuousClock.Instant)?
        /// Until when Herald's own login is taken as refused (Keystone refused it): trust tokens
        /// are then not asked for at all (each needs a login, and a refused password tried per
        /// delivery brings on the account's lockout). Only a refusal is remembered: a login that
        /// worked says nothing of one a rotated password refuses the next second.
        var serviceRefusedUntil: ContinuousClock.Instant?
    }

    /// A trust Keystone refused: until when, and how many refusals in a row.
    struct GoneTrust {
        var until: ContinuousClock.Instant
        var refusals: Int
    }

    /// How long a trust Keystone refused once is taken as gone without asking: short, as one
    /// misread answer (a flaky identity backend) dead-letters its events meanwhile. Each refusal
    /// in a row doubles it, up to `goneTrustLongest`.
    static let goneTrustTTL: Duration = .seconds(15)
    static let goneTrustLongest: Duration = .seconds(600)
    /// How long Herald's own token found good after a trust's refusal answers for the next
    /// trusts' refusals.
    static let serviceConfirmation: Duration = .seconds(5)

    /// How long a trust refused `refusals` times in a row is taken as gone.
    static func goneFor(refusals: Int) -> Duration {
        let doublings = min(max(refusals - 1, 0), 10)
        return min(goneTrustTTL * (1 << doublings), goneTrustLongest)
    }
    /// How long Herald's own login is taken as refused (`State.serviceRefusedUntil`).
    static let serviceRefusalTTL: Duration = .seconds(15)

    package let configuration: KeystoneConfiguration
    private let http: HTTPClient
    private let logger: Logger
    private let state: Mutex<State>
    private let validations = Atomic<Int>(0)
    private let trustTokenRequests = Atomic<Int>(0)
    private let serviceLogins = Atomic<Int>(0)
    private let passwordTrustTokens = Atomic<Int>(0)
    /// Peers that sent `X-Forwarded-For` without being trusted proxies, each warned of once.
    private let untrustedForwarders = Mutex<Set<String>>([])
    /// How many such peers are warned of at most (anyone can send the header).
    static let untrustedForwarderWarnings = 16
    private let serviceChecks = Atomic<Int>(0)
    private let validationsAsked = Atomic<Int>(0)

    /// Whether `http` is this client's own (made for `caFile`), to shut down with it.
    private let ownsHTTP: Bool

    /// The caches' time: `origin` plus `clock`'s (the monotonic clock itself unless a test drives it).
    private let clock: ElapsedClock
    private let origin: ContinuousClock.Instant

    private func instant() -> ContinuousClock.Instant { origin + clock.now() }

    /// - Parameters:
    ///   - http: the HTTP client to use; nil: the shared one, or one of its own trusting
    ///     `configuration.caFile` when that is set.
    ///   - clock: what the caches' lifetimes and the validation limit are timed by (a manual
    ///     clock in tests).
    package init(
        configuration: KeystoneConfiguration, http: HTTPClient? = nil, logger: Logger,
        clock: ElapsedClock = .continuous
    ) {
        self.configuration = configuration
        self.clock = clock
        origin = ContinuousClock.now
        if let http {
            self.http = http
            ownsHTTP = false
        } else if let caFile = configuration.caFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(caFile)
            var settings = HTTPClient.Configuration()
            settings.tlsConfiguration = tls
            settings.redirectConfiguration = .disallow
            self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: settings)
            ownsHTTP = true
        } else {
            self.http = Self.withoutRedirects
            ownsHTTP = false
        }
        self.logger = logger
        let rate = Double(configuration.validationsPerSecond)
        state = Mutex(State(rateLimit: ValidationRateLimit(perSecond: rate, burst: 2 * rate)))
    }

    /// The client of every KeystoneClient without a CA file of its own: as `HTTPClient.shared`
    /// (the system's CAs, never shut down), but a redirect is not followed (a token or the
    /// service password must not go where Keystone's answer points).
    private static let withoutRedirects: HTTPClient = {
        var settings = HTTPClient.Configuration()
        settings.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: settings)
    }()

    /// The longest token looked at; longer ones are refused without asking Keystone (Fernet
    /// tokens are about 200 bytes, JWS tokens under 1 KiB).
    static let maxTokenBytes = 4096

    /// Closes its own HTTP client, if it made one.
    package func shutdown() async {
        if ownsHTTP { try? await http.shutdown() }
    }

    /// Round trips to Keystone's token validation (the cache is working when this stays low).
    var validationCount: Int { validations.load(ordering: .relaxed) }
    /// Trust-scoped tokens asked of Keystone.
    var trustTokenCount: Int { trustTokenRequests.load(ordering: .relaxed) }
    /// Trust tokens held (tests).
    var heldTrustTokenCount: Int { state.withLock { $0.trustTokens.count } }
    /// Logins of Herald's own service user (each a password check in Keystone).
    var serviceLoginCount: Int { serviceLogins.load(ordering: .relaxed) }
    /// Trust-scoped tokens asked with Herald's password (each a password check in Keystone).
    var passwordTrustTokenCount: Int { passwordTrustTokens.load(ordering: .relaxed) }
    /// Validations of Herald's own token (after a trust's refusal).
    var serviceCheckCount: Int { serviceChecks.load(ordering: .relaxed) }
    var rescoping: Rescoping { state.withLock { $0.rescoping } }
    var rescopeRefused: Bool {
        if case .refused = rescoping { return true }
        return false
    }
    /// How many validations one network may have in flight: a quarter of all.
    var networkShare: Int { max(1, configuration.validationsInFlight / 4) }
    /// Herald's service token held now (tests revoke it).
    var heldServiceToken: String? { state.withLock { $0.service?.token } }

    // MARK: Users' tokens

    /// The caller a token stands for.
    /// - Parameter source: who sent it (the peer's address), for the per-source limit on
    ///   validations that reach Keystone.
    package func caller(token: String, source: String = "-") async throws(Failure) -> Caller {
        guard token.utf8.count <= Self.maxTokenBytes else {
            throw .invalid("longer than \(Self.maxTokenBytes) bytes; no Keystone token is")
        }
        let now = instant()
        let known = state.withLock { state -> Result<Caller?, Failure> in
            if let entry = state.cache[token], entry.until > now { return .success(entry.caller) }
            if let refused = state.refused[token] {
                if refused.until > now { return .failure(.invalid(refused.reason)) }
                state.refused[token] = nil
            }
            // Taken before Keystone is asked, given back unless Keystone refuses the token: many
            // unknown tokens sent at once from one source cannot all reach Keystone.
            if let wait = state.rateLimit.take(source, now: now) { return .failure(.throttled(wait)) }
            return .success(nil)
        }
        switch known {
        case .success(let caller?): return caller
        case .success(nil): break
        case .failure(let failure): throw failure
        }
        // One network (an IPv6 /48, which holds 65,536 sources of their own) holds at most its
        // share of the validations in flight: the rest stay for everyone else's new tokens. (Only
        // for a token Keystone is to be asked about: a cached one costs no address parsing.)
        let network = ValidationRateLimit.network(source)
        let admitted = state.withLock { state in
            guard state.networksInFlight[network, default: 0] < networkShare else { return false }
            state.networksInFlight[network, default: 0] += 1
            return true
        }
        guard admitted else {
            refund(source)
            throw .unavailable(
                "Keystone is checking \(networkShare) tokens from your network at once already (a quarter of HERALD_KEYSTONE_VALIDATIONS_IN_FLIGHT); try again in a moment"
            )
        }
        defer {
            state.withLock { state in
                let left = state.networksInFlight[network, default: 1] - 1
                state.networksInFlight[network] = left > 0 ? left : nil
            }
        }
        guard validationsAsked.add(1, ordering: .relaxed).newValue <= configuration.validationsInFlight else {
            validationsAsked.subtract(1, ordering: .relaxed)
            refund(source)
            throw .unavailable(
                "Keystone is checking \(configuration.validationsInFlight) tokens at once already (HERALD_KEYSTONE_VALIDATIONS_IN_FLIGHT); try again in a moment"
            )
        }
        defer { validationsAsked.subtract(1, ordering: .relaxed) }
        var request = HTTPClientRequest(url: configuration.base + "/v3/auth/tokens")
        request.headers.add(name: "X-Subject-Token", value: token)
        // Without it Keystone refuses tokens of application credentials with access rules, as
        // it does for services that cannot enforce them.
        request.headers.add(name: "OpenStack-Identity-Access-Rules", value: "1.0")
        validations.add(1, ordering: .relaxed)
        let answer: (Int, [String: Any], HTTPHeaders)
        do {
            answer = try await asService(request)
        } catch {
            refund(source)
            throw error
        }
        let (status, body, _) = answer
        switch status {
        case 200:
            guard let object = body["token"] as? [String: Any] else {
                refund(source)
                throw .unavailable("Keystone's validation answer has no token")
            }
            let caller: Caller
            do {
                caller = try Self.caller(object, token: token, adminProject: configuration.adminProject)
            } catch {
                // Keystone accepts it, Herald does not (unscoped, another scope, unreadable rules):
                // remembered as a refusal (its charge kept), or each repeat would cost a validation.
                if case .invalid(let reason) = error {
                    refuse(token, reason: reason, now: now)
                } else {
                    refund(source)
                }
                throw error
            }
            refund(source)
            let expires = Self.expiry(object["expires_at"] as? String)
            let until = min(
                now + configuration.cacheTTL,
                expires.map { now + .seconds(max(0, $0.timeIntervalSinceNow)) } ?? now + configuration.cacheTTL)
            state.withLock { state in
                if state.cache.count >= configuration.cacheCapacity {
                    state.cache = state.cache.filter { $0.value.until > now }
                    if state.cache.count >= configuration.cacheCapacity, let key = state.cache.keys.first {
                        state.cache[key] = nil
                    }
                }
                state.cache[token] = Entry(caller: caller, until: until)
            }
            return caller
        case 404:
            let reason = "Keystone does not accept this token (unknown, expired or revoked)"
            refuse(token, reason: reason, now: now)
            throw .invalid(reason)
        default:
            refund(source)
            throw .unavailable("Keystone answered \(status) to the token validation")
        }
    }

    /// A refused token (its source keeps the charge `take` made): the refusal remembered for
    /// `negativeCacheTTL`.
    private func refuse(_ token: String, reason: String, now: ContinuousClock.Instant) {
        guard configuration.negativeCacheTTL > .zero else { return }
        state.withLock { state in
            remember(token, (now + configuration.negativeCacheTTL, reason), in: &state.refused, now: now) {
                $0.until
            }
        }
    }

    /// A validation `take` charged that does not count against its source (a valid token, or
    /// Keystone could not answer).
    private func refund(_ source: String) {
        let now = instant()
        state.withLock { $0.rateLimit.refund(source, now: now) }
    }

    /// Adds an entry that holds until `until(value)`, bounded as the token caches are: at the
    /// capacity, expired entries go first, then all of them.
    private func remember<Value>(
        _ key: String, _ value: Value, in entries: inout [String: Value], now: ContinuousClock.Instant,
        until: (Value) -> ContinuousClock.Instant
    ) {
        if entries.count >= configuration.cacheCapacity {
            entries = entries.filter { until($0.value) > now }
            if entries.count >= configuration.cacheCapacity { entries.removeAll(keepingCapacity: true) }
        }
        entries[key] = value
    }

    /// The caller of a validated token (Keystone's `token` object): project-scoped, or
    /// system-scoped (`system: {all: true}`; its project comes from the request), with an
    /// application credential's access rules when it has any. Other scopes (domain, none)
    /// are refused.
    static func caller(_ object: [String: Any], token: String, adminProject: String?) throws(Failure) -> Caller {
        let roles = (object["roles"] as? [[String: Any]] ?? []).prefix(256).compactMap {
            ($0["name"] as? String)?.lowercased()
        }
        let userID = (object["user"] as? [String: Any])?["id"] as? String
        var accessRules: [AccessRule]?
        if let credential = object["application_credential"] as? [String: Any], let listed = credential["access_rules"]
        {
            // Present but unreadable: no rule, so nothing is allowed (never unrestricted).
            let rules = listed as? [[String: Any]] ?? []
            guard rules.count <= AccessRule.maxRules else {
                throw .invalid("the application credential has more than \(AccessRule.maxRules) access rules")
            }
            accessRules = rules.map {
                AccessRule(
                    service: $0["service"] as? String ?? "", path: $0["path"] as? String ?? "",
                    method: $0["method"] as? String ?? "")
            }
        }
        if let system = object["system"] as? [String: Any], system["all"] as? Bool == true {
            return Caller(
                project: "", roles: roles, isAdminProject: false, userID: userID, token: token, systemScope: "all",
                accessRules: accessRules)
        }
        guard let project = (object["project"] as? [String: Any])?["id"] as? String, !project.isEmpty else {
            throw .invalid(
                "the token is scoped to neither a project nor the system; ask Keystone for a project-scoped token")
        }
        // By id only: names are unique only within a domain, and a domain admin could make one.
        // Unset, no project is the admin project: Keystone calls every project its admin project
        // unless its own `admin_project_name` is set, which would make every project's admins
        // the cloud's. Cloud admins then come with system-scoped tokens.
        let isAdminProject = adminProject.map { $0 == project } ?? false
        return Caller(
            project: project, roles: roles, isAdminProject: isAdminProject, userID: userID, token: token,
            accessRules: accessRules)
    }

    /// Logs once per peer (for the first `untrustedForwarderWarnings` peers) that `peer` sends
    /// `X-Forwarded-For` but is not in `HERALD_TRUSTED_PROXIES`: an ingress left out makes every
    /// client behind it one source for the limit on unknown tokens, so junk tokens from one
    /// client lock everyone's new tokens out.
    /// - Returns: whether this call logged.
    @discardableResult
    package func warnOfUntrustedForwarder(_ peer: String) -> Bool {
        let first = untrustedForwarders.withLock { seen in
            guard seen.count < Self.untrustedForwarderWarnings, !seen.contains(peer) else { return false }
            seen.insert(peer)
            return true
        }
        if first {
            logger.warning(
                "a peer that is not a trusted proxy sends X-Forwarded-For: the header is ignored; if this peer is your ingress or load balancer, every client behind it shares one limit on unknown tokens (HERALD_KEYSTONE_VALIDATIONS_PER_SECOND) and one network's share (a quarter) of the validations in flight: add its address or range to HERALD_TRUSTED_PROXIES",
                metadata: [LogKey.apiPeer: "\(SafeText.clean(peer, limit: 64))"])
        }
        return first
    }

    // MARK: Trusts

    /// A trust from the caller to Herald's service user on the caller's project, delegating
    /// `trustRoles` with impersonation (Zaqar then sees the subscriber), made with the caller's
    /// own token as Keystone requires.
    /// - Returns: the trust's id.
    package func createTrust(for caller: Caller) async throws(Failure) -> String {
        guard let token = caller.token, let trustor = caller.userID else {
            throw .invalid("a trust needs the subscriber's Keystone token")
        }
        let trustee = try await service(renew: false).userID
        var request = HTTPClientRequest(url: configuration.base + "/v3/OS-TRUST/trusts")
        request.method = .POST
        request.headers.add(name: "X-Auth-Token", value: token)
        try Self.setJSON(
            &request,
            [
                "trust": [
                    "trustor_user_id": trustor, "trustee_user_id": trustee, "project_id": caller.project,
                    "impersonation": true, "roles": configuration.trustRoles.map { ["name": $0] },
                ]
            ])
        let (status, body, _) = try await send(request)
        guard status == 201, let id = (body["trust"] as? [String: Any])?["id"] as? String else {
            let reason = Self.errorMessage(body)
            if (400..<500).contains(status) {
                throw .invalid(
                    "Keystone refused a trust to Herald (\(status)): \(reason); the trust delegates the role(s) \(configuration.trustRoles.joined(separator: ", ")) on project \(caller.project), which you must hold"
                )
            }
            throw .unavailable("Keystone answered \(status) to creating a trust: \(reason)")
        }
        logger.info(
            "trust created", metadata: [LogKey.keystoneTrust: "\(id)", LogKey.keystoneProject: "\(caller.project)"])
        return id
    }

    /// Deletes a trust through a token scoped by it (with impersonation that token acts as the
    /// trustor, whom Keystone's policy lets delete it). A trust already gone counts as deleted.
    package func deleteTrust(_ trust: String) async throws(Failure) {
        let token: String
        do {
            token = try await trustToken(trust, fresh: true)
        } catch {
            switch error {
            case .refused:
                state.withLock { _ = $0.trustTokens.removeValue(forKey: trust) }
                return
            case .unavailable(let reason):
                throw .unavailable(reason)
            }
        }
        var request = HTTPClientRequest(url: configuration.base + "/v3/OS-TRUST/trusts/\(trust)")
        request.method = .DELETE
        request.headers.add(name: "X-Auth-Token", value: token)
        let (status, body, _) = try await send(request)
        state.withLock { _ = $0.trustTokens.removeValue(forKey: trust) }
        guard status == 204 || status == 404 else {
            throw .unavailable("Keystone answered \(status) to deleting trust \(trust): \(Self.errorMessage(body))")
        }
        logger.info("trust deleted", metadata: [LogKey.keystoneTrust: "\(trust)"])
    }

    /// A token scoped through `trust`, from the cache unless `fresh`. Asked with Herald's own
    /// token (`methods: ["token"]`), which costs Keystone no password check; with Herald's
    /// password only where Keystone refuses to rescope a scoped token.
    func trustToken(_ trust: String, fresh: Bool = false) async throws(ZaqarTokenError) -> String {
        let now = instant()
        if !fresh, let cached = state.withLock({ $0.trustTokens[trust] }), cached.until > now { return cached.token }
        if let until = state.withLock({ $0.goneTrusts[trust]?.until }), until > now {
            throw .refused("trust \(trust) is gone or unusable (Keystone said so moments ago)")
        }
        if let until = state.withLock({ $0.serviceRefusedUntil }), until > now {
            throw .unavailable(
                "Keystone refused Herald's service user moments ago; not asking for a token of trust \(trust)")
        }
        trustTokenRequests.add(1, ordering: .relaxed)
        // What the subscriber's health shows: the login's own words (the user name, Keystone's
        // reason) are the operator's, in the log.
        let loginFailed = "Herald's service user could not log in to Keystone; no token of trust \(trust)"
        var service: ServiceToken
        do {
            service = try await serviceForTrusts()
        } catch {
            throw .unavailable(loginFailed)
        }
        var byPassword = state.withLock { $0.rescoping.usesPassword(now: now) }
        var answer = try await askTrustToken(trust, with: byPassword ? nil : service.token)
        if answer.status == 403, !byPassword,
            state.withLock({ !$0.rescoping.works }) || Self.errorMessage(answer.body).contains("rescope")
        {
            // Keystone may refuse to rescope a scoped token (`[token] allow_rescope_scoped_token =
            // false`, set from the start or since): the password tells that apart from a refused
            // trust; tried again with Herald's token after an hour.
            answer = try await askTrustToken(trust, with: nil)
            byPassword = true
            if answer.status == 201 {
                let first = state.withLock { state in
                    defer { state.rescoping = .refused(until: now + Self.rescopeRetry) }
                    return state.rescoping.works || state.rescoping == .unknown
                }
                if first {
                    logger.warning(
                        "Keystone does not rescope Herald's token to a trust ([token] allow_rescope_scoped_token = false): each trust's token costs a password login"
                    )
                }
            }
        }
        // Keystone's 404 to a token request is about the token it was asked with (never seen
        // for a trust): checked each time, whatever was confirmed moments ago.
        if Self.refusal(answer.status), answer.status == 404 || !serviceConfirmed(byPassword ? nil : service.token) {
            // Keystone refuses alike a trust it has not got and Herald's own credentials it no
            // longer takes: a token revoked or expired early (told by a validation of it, no
            // password check), a password changed or locked (told by a login). Herald refused is
            // the operator's to mend (retried, parked), not the trust's end. Either answers for
            // the next trusts' refusals a few seconds.
            switch byPassword ? false : await serviceTokenValid(service.token) {
            case true?:
                confirmService(service.token)
            case false?:
                do {
                    service = try await replacement(for: service.token, login: byPassword)
                } catch {
                    throw .unavailable(loginFailed)
                }
                confirmService(service.token)
                answer = try await askTrustToken(trust, with: byPassword ? nil : service.token)
            case nil:
                throw .unavailable("Keystone could not confirm Herald's own token, asked for a token of trust \(trust)")
            }
        }
        let (status, body, headers) = answer
        guard status == 201, let token = headers.first(name: "X-Subject-Token") else {
            if Self.refusal(status) {
                state.withLock { state in
                    let refusals = (state.goneTrusts[trust]?.refusals ?? 0) + 1
                    let gone = GoneTrust(until: now + Self.goneFor(refusals: refusals), refusals: refusals)
                    remember(trust, gone, in: &state.goneTrusts, now: now) { $0.until }
                    state.trustTokens[trust] = nil
                }
                throw .refused("trust \(trust) is gone or unusable (\(status): \(Self.errorMessage(body)))")
            }
            throw .unavailable("Keystone answered \(status) to a token for trust \(trust)")
        }
        let until = Self.tokenTimes(of: body, now: instant()).renew
        state.withLock { state in
            // Expired tokens of trusts no longer used (subscriptions deleted, moved to other
            // nodes) went nowhere: swept once the map reaches its threshold.
            if state.trustTokens.count >= max(configuration.cacheCapacity, state.trustTokensSweepAt) {
                state.trustTokens = state.trustTokens.filter { $0.value.until > now }
                state.trustTokensSweepAt = 2 * state.trustTokens.count
            }
            state.trustTokens[trust] = (token, until)
            state.goneTrusts[trust] = nil
            if !byPassword { state.rescoping = .works }
        }
        return token
    }

    /// How long a Keystone that refused to rescope is asked with the password before Herald's
    /// token is tried again.
    static let rescopeRetry: Duration = .seconds(3600)

    /// Whether Herald's own credentials were found good moments ago: `token` (the one a trust's
    /// token was asked with) validated, or with nil, a login that made the token held now.
    private func serviceConfirmed(_ token: String?) -> Bool {
        let now = instant()
        return state.withLock { state in
            guard let confirmed = state.serviceConfirmed, confirmed.until > now else { return false }
            return confirmed.token == (token ?? state.service?.token)
        }
    }

    private func confirmService(_ token: String) {
        let until = instant() + Self.serviceConfirmation
        state.withLock { $0.serviceConfirmed = (token, until) }
    }

    /// A service token in place of `stale`, which Keystone no longer takes: the one held now if
    /// another caller replaced it meanwhile, else a login (shared with any under way). With
    /// `login`, always a login: it tells whether Keystone takes the password.
    private func replacement(for stale: String, login: Bool) async throws(Failure) -> ServiceToken {
        let now = instant()
        if !login, let held = state.withLock({ $0.service }), held.token != stale, held.until > now { return held }
        return try await self.login()
    }

    /// 401, 403 and 404: what Keystone answers for a trust gone, expired, or not Herald's.
    private static func refusal(_ status: Int) -> Bool { status == 401 || status == 403 || status == 404 }

    /// Asks Keystone for a token scoped by `trust`: with Herald's `serviceToken`, or with its
    /// password when nil.
    private func askTrustToken(
        _ trust: String, with serviceToken: String?
    ) async throws(ZaqarTokenError) -> (status: Int, body: [String: Any], headers: HTTPHeaders) {
        var request = HTTPClientRequest(url: configuration.base + "/v3/auth/tokens")
        request.method = .POST
        let identity: [String: Any]
        if let serviceToken {
            identity = ["methods": ["token"], "token": ["id": serviceToken]]
        } else {
            passwordTrustTokens.add(1, ordering: .relaxed)
            identity = passwordIdentity
        }
        do {
            try Self.setJSON(&request, ["auth": ["identity": identity, "scope": ["OS-TRUST:trust": ["id": trust]]]])
            return try await send(request)
        } catch {
            // The detail (Keystone's internal address) is the operator's; the subscriber's health
            // shows this error, so it says only what failed.
            logger.warning(
                "cannot get a token for a trust",
                metadata: [LogKey.keystoneTrust: "\(trust)", LogKey.error: "\(error.description)"])
            throw .unavailable("Keystone could not be reached for a token of trust \(trust)")
        }
    }

    /// Whether Keystone still takes Herald's own `token` (a validation of it by itself, which
    /// Keystone's policy lets a token's subject do); nil when Keystone gave no clear answer.
    private func serviceTokenValid(_ token: String) async -> Bool? {
        serviceChecks.add(1, ordering: .relaxed)
        var request = HTTPClientRequest(url: configuration.base + "/v3/auth/tokens?nocatalog")
        request.method = .GET
        request.headers.add(name: "X-Auth-Token", value: token)
        request.headers.add(name: "X-Subject-Token", value: token)
        guard let (status, _, _) = try? await send(request) else { return nil }
        switch status {
        case 200: return true
        case 401, 404: return false
        default: return nil
        }
    }

    // MARK: Herald's own token

    private var passwordIdentity: [String: Any] {
        [
            "methods": ["password"],
            "password": [
                "user": [
                    "name": configuration.username, "domain": ["name": configuration.userDomain],
                    "password": configuration.password,
                ]
            ],
        ]
    }

    /// Sends `request` with Herald's service token, getting a new one once if Keystone refuses it.
    private func asService(_ request: HTTPClientRequest) async throws(Failure) -> (Int, [String: Any], HTTPHeaders) {
        var request = request
        for renew in [false, true] {
            let token = try await service(renew: renew).token
            request.headers.replaceOrAdd(name: "X-Auth-Token", value: token)
            let answer = try await send(request)
            if answer.0 != 401 || renew { return answer }
        }
        preconditionFailure("unreachable")
    }

    /// Herald's service token and user id, renewed a minute before expiry or when refused.
    private func service(renew: Bool) async throws(Failure) -> ServiceToken {
        if !renew, let current = state.withLock({ $0.service }), current.until > instant() { return current }
        return try await login()
    }

    /// Herald's service token with at least `trustMinimumLife` left: a trust's token made from
    /// it lives as long as it does.
    private func serviceForTrusts() async throws(Failure) -> ServiceToken {
        if let current = state.withLock({ $0.service }), current.until > instant(),
            current.expires - instant() >= current.trustMinimumLife
        {
            return current
        }
        return try await login()
    }

    /// A new service token: the login under way if there is one, else a new one that every
    /// caller meanwhile shares.
    private func login() async throws(Failure) -> ServiceToken {
        let now = instant()
        let task = state.withLock { state -> Task<ServiceToken, any Error>? in
            if let running = state.login { return running }
            // A refusal stands a while for every caller (users' validations too): a refused
            // password tried per request would bring on the account's lockout.
            if let until = state.serviceRefusedUntil, until > now { return nil }
            let task = Task<ServiceToken, any Error> {
                var result: Result<ServiceToken, Failure>
                do throws(Failure) { result = .success(try await self.passwordLogin()) } catch {
                    result = .failure(error)
                }
                let now = self.instant()
                self.state.withLock { state in
                    state.login = nil
                    switch result {
                    case .success(let token):
                        state.service = token
                        state.serviceRefusedUntil = nil
                    case .failure(.invalid(let reason)):
                        // Remembered a while; to callers Keystone is unavailable (a 503, not the
                        // caller's 401).
                        state.serviceRefusedUntil = now + Self.serviceRefusalTTL
                        result = .failure(.unavailable(reason))
                    case .failure: break
                    }
                }
                return try result.get()
            }
            state.login = task
            return task
        }
        guard let task else {
            throw .unavailable(
                "Keystone refused Herald's service user \(configuration.username) moments ago; asking again shortly")
        }
        do {
            return try await task.value
        } catch let failure as Failure {
            throw failure
        } catch {
            throw .unavailable("\(error)")
        }
    }

    /// Logs Herald's service user in with its password.
    /// - Throws: `.invalid` when Keystone refuses the user, `.unavailable` when it cannot be asked.
    private func passwordLogin() async throws(Failure) -> ServiceToken {
        let now = instant()
        serviceLogins.add(1, ordering: .relaxed)
        var request = HTTPClientRequest(url: configuration.base + "/v3/auth/tokens")
        request.method = .POST
        try Self.setJSON(
            &request,
            [
                "auth": [
                    "identity": passwordIdentity,
                    "scope": [
                        "project": ["name": configuration.project, "domain": ["name": configuration.projectDomain]]
                    ],
                ]
            ])
        let (status, body, headers) = try await send(request)
        guard status == 201, let token = headers.first(name: "X-Subject-Token"),
            let userID = ((body["token"] as? [String: Any])?["user"] as? [String: Any])?["id"] as? String
        else {
            logger.error(
                "Keystone refused Herald's service user",
                metadata: [LogKey.keystoneStatus: "\(status)", LogKey.keystoneUser: "\(configuration.username)"])
            let refusal =
                "Keystone refused Herald's service user \(configuration.username) (\(status)): \(Self.errorMessage(body))"
            // A 5xx is Keystone's trouble, not a refusal of the password.
            throw status >= 500 ? .unavailable(refusal) : .invalid(refusal)
        }
        let times = Self.tokenTimes(of: body, now: now)
        return ServiceToken(
            token: token, userID: userID, until: times.renew, expires: times.expires, lifetime: times.lifetime,
            catalog: ServiceCatalog(token: body))
    }

    /// The URL of a service in the catalog of Herald's own token (nil when the catalog has none).
    /// - Throws: when Keystone cannot be reached or refuses Herald's service user.
    package func catalogURL(type: String, interface: String, region: String?) async throws -> String? {
        do {
            return try await service(renew: false).catalog.url(type: type, interface: interface, region: region)
        } catch {
            throw KeystoneUnavailable(description: error.description)
        }
    }

    // MARK: HTTP

    private func send(_ request: HTTPClientRequest) async throws(Failure) -> (Int, [String: Any], HTTPHeaders) {
        do {
            let response = try await http.execute(request, timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 4 << 20)
            let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
            return (Int(response.status.code), object, response.headers)
        } catch {
            // Keystone's address and the network's words are the operator's: logged here, while
            // the error (which API answers can carry to tenants) says only what failed.
            logger.warning(
                "Keystone cannot be reached",
                metadata: [LogKey.keystoneURL: "\(configuration.base)", LogKey.error: "\(error)"])
            throw .unavailable("Keystone cannot be reached")
        }
    }

    private static func setJSON(_ request: inout HTTPClientRequest, _ object: [String: Any]) throws(Failure) {
        guard let data = try? JSONSerialization.data(withJSONObject: object) else {
            throw .unavailable("cannot encode a request to Keystone")
        }
        request.headers.replaceOrAdd(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: data))
    }

    /// Keystone's errors are `{"error": {"code", "title", "message"}}`.
    private static func errorMessage(_ body: [String: Any]) -> String {
        ((body["error"] as? [String: Any])?["message"] as? String) ?? "no message"
    }

    /// Keystone's `2026-11-24T23:05:21.000000Z`.
    static func expiry(_ text: String?) -> Date? {
        text.flatMap(ZaqarDates.parse)
    }

    /// When a token Keystone issued is renewed (a minute before it expires), when it expires
    /// (10 minutes from `now` when Keystone gives no expiry), and how long it lives.
    private static func tokenTimes(
        of body: [String: Any], now: ContinuousClock.Instant
    ) -> (renew: ContinuousClock.Instant, expires: ContinuousClock.Instant, lifetime: Duration) {
        let token = body["token"] as? [String: Any]
        let expiresAt = expiry(token?["expires_at"] as? String)
        let issuedAt = expiry(token?["issued_at"] as? String)
        // Keystone's own clock when it gives both (the token was just issued: a rescoped one
        // keeps its parent's expiry), so Herald's clock being off does not shorten it; bounded
        // before it becomes a duration (a day at most).
        let left: Double
        if let expiresAt, let issuedAt {
            left = min(max(0, expiresAt.timeIntervalSince(issuedAt)), 86_400)
        } else {
            left = min(max(0, expiresAt?.timeIntervalSinceNow ?? 600), 86_400)
        }
        // Just issued (or rescoped from a token that was), what it has left is its lifetime.
        return (now + .seconds(max(0, left - 60)), now + .seconds(left), .seconds(left))
    }
}

extension KeystoneClient: ZaqarTokenSource {
    package func token(trust: String) async throws(ZaqarTokenError) -> String {
        try await trustToken(trust)
    }

    package func refused(trust: String, token: String) {
        state.withLock { state in
            if state.trustTokens[trust]?.token == token { state.trustTokens[trust] = nil }
        }
    }
}

/// Keystone could not answer Herald's own request (its service token or catalog).
package struct KeystoneUnavailable: Error, CustomStringConvertible {
    package var description: String
}
