import Coordination
import Delivery
import Foundation
import HeraldModel
import Logging
import Synchronization

/// When Herald acts on pre-signed URLs: within `renewBefore` of expiry it renews one through the
/// subscription's trust, or warns (log, API, `herald status`) when there is none.
package struct SignedURLPolicy: Sendable {
    package var renewBefore: Duration = .seconds(21_600)
    /// A renewed URL expires this long after renewal (Zaqar's default of one day is what let the
    /// seed service's URLs die quietly).
    package var lifetime: Duration = .seconds(604_800)
    /// How often the leader looks.
    package var checkEvery: Duration = .seconds(60)

    package init(
        renewBefore: Duration = .seconds(21_600), lifetime: Duration = .seconds(604_800),
        checkEvery: Duration = .seconds(60)
    ) {
        self.renewBefore = renewBefore
        self.lifetime = lifetime
        self.checkEvery = checkEvery
    }
}

/// Where a subscription's pre-signed URL stands, judged against a renewal window.
package enum SignedURLStanding: Equatable, Sendable {
    /// Far enough from expiry.
    case fine(expires: Date)
    /// Within the window, and the subscription's trust can renew it.
    case renewable(expires: Date)
    /// Within the window with no trust: it will stop working at `expires`.
    case expiring(expires: Date)
    /// Past expiry with no trust: its events are dead-lettered as `signed_url_expired`.
    case expired(expires: Date)
    /// Zaqar's `expires` could not be read.
    case unreadable(String)

    package init?(_ subscription: Subscription, now: Date, renewBefore: Duration) {
        guard let signed = subscription.target.signedURL else { return nil }
        guard let expires = ZaqarDates.parse(signed.expires) else {
            self = .unreadable(signed.expires)
            return
        }
        let left = expires.timeIntervalSince(now)
        if left > renewBefore.seconds {
            self = .fine(expires: expires)
        } else if subscription.trustID != nil {
            self = .renewable(expires: expires)
        } else {
            self = left > 0 ? .expiring(expires: expires) : .expired(expires: expires)
        }
    }

    /// Words for the API and `herald status`, or nil when all is well.
    package func warning(now: Date) -> String? {
        let stamp = { (date: Date) in ISO8601DateFormatter().string(from: date) }
        switch self {
        case .fine, .renewable:
            return nil
        case .expiring(let expires):
            return
                "target.signed_url expires at \(stamp(expires)) (in \(Self.span(expires.timeIntervalSince(now)))) and the subscription has no Keystone trust to renew it: "
                + "give it a new signed_url made with a later 'expires', or events will be dead-lettered as signed_url_expired"
        case .expired(let expires):
            return
                "target.signed_url expired at \(stamp(expires)): events are dead-lettered as signed_url_expired until the subscription gets a new signed_url"
        case .unreadable(let text):
            return
                "target.signed_url.expires \(SafeText.quoted(text, limit: 40)) is not a date Herald can read, so it cannot warn before it expires"
        }
    }

    /// `45 s`, `12 min`, `5 h 20 min`.
    static func span(_ seconds: Double) -> String {
        let whole = Int(seconds.rounded())
        if whole < 120 { return "\(whole) s" }
        if whole < 7200 { return "\(whole / 60) min" }
        return "\(whole / 3600) h \(whole % 3600 / 60) min"
    }
}

/// Keeps pre-signed URLs alive on the leader node: every `checkEvery` it looks at every
/// subscription with one; within `renewBefore` of expiry it makes a new URL through the
/// subscription's trust (`/share` with a trust-scoped token) and stores it, or, with no trust,
/// warns once per expiry. Past expiry, delivery dead-letters with `signed_url_expired`.
package final class SignedURLKeeper: Sendable {
    let registry: SubscriptionRegistry
    let keystone: KeystoneClient?
    let zaqar: ZaqarClient
    let defaultZaqarURL: String
    let policy: SignedURLPolicy
    /// The Zaqar endpoints Herald may use (`HERALD_ZAQAR_ALLOWED_URLS`): a renewal sends a token
    /// acting as the subscriber, so an endpoint taken off the list gets none.
    let endpoints: ZaqarEndpoints?
    let isLeader: @Sendable () -> Bool
    let logger: Logger
    /// Subscription id -> the expiry last warned about.
    private let warned = Mutex<[String: String]>([:])

    /// - Parameter endpoints: nil only in tests that have no list.
    package init(
        registry: SubscriptionRegistry, keystone: KeystoneClient?, zaqar: ZaqarClient, defaultZaqarURL: String,
        policy: SignedURLPolicy, endpoints: ZaqarEndpoints?,
        isLeader: @escaping @Sendable () -> Bool, logger: Logger
    ) {
        self.registry = registry
        self.keystone = keystone
        self.zaqar = zaqar
        self.defaultZaqarURL = defaultZaqarURL
        self.policy = policy
        self.endpoints = endpoints
        self.isLeader = isLeader
        self.logger = logger
    }

    /// Subscriptions warned about and remembered (tests).
    var warnedSubscriptions: Set<String> { Set(warned.withLock { $0.keys }) }

    /// What one pass did.
    struct Pass: Equatable, Sendable {
        var renewed: [String] = []
        var warned: [String] = []
        var failed: [String] = []
        /// Not renewed: their Zaqar is no longer an allowed endpoint.
        var notAllowed: [String] = []
    }

    package func run() async {
        while !Task.isCancelled {
            if isLeader() {
                do { _ = try await check() } catch {
                    logger.warning("pre-signed URL check failed", metadata: [LogKey.error: "\(error)"])
                }
            }
            try? await Task.sleep(for: policy.checkEvery)
        }
    }

    /// One pass over the registry.
    func check(now: Date = Date()) async throws -> Pass {
        var pass = Pass()
        // Subscriptions still warned about: the others' entries go after a whole pass (deleted,
        // renewed or changed ones would stay for the node's life).
        var stillWarned = Set<String>()
        var whole = true
        for subscription in try await registry.snapshot().subscriptions {
            // A node stopping ends the pass here (its shutdown awaits this task); the next leader
            // goes on from the registry.
            if Task.isCancelled {
                whole = false
                break
            }
            guard let standing = SignedURLStanding(subscription, now: now, renewBefore: policy.renewBefore) else {
                continue
            }
            switch standing {
            case .fine:
                continue
            case .renewable(let expires):
                let endpoint = subscription.target.zaqarURL ?? defaultZaqarURL
                if let endpoints, !endpoints.permits(endpoint) {
                    // Delivery dead-letters its messages (`not_allowed`); no token goes there.
                    pass.notAllowed.append(subscription.id)
                    stillWarned.insert(subscription.id)
                    let first = warned.withLock { seen in
                        defer { seen[subscription.id] = "not allowed" }
                        return seen[subscription.id] != "not allowed"
                    }
                    if first {
                        logger.warning(
                            "not renewing a pre-signed URL: its Zaqar is not in HERALD_ZAQAR_ALLOWED_URLS",
                            metadata: [
                                LogKey.subscription: "\(subscription.id)", LogKey.project: "\(subscription.project)",
                            ])
                    }
                    continue
                }
                do {
                    if try await renew(subscription, now: now) { pass.renewed.append(subscription.id) }
                } catch {
                    pass.failed.append(subscription.id)
                    logger.error(
                        "renewing a pre-signed URL failed; trying again at the next check",
                        metadata: [
                            LogKey.subscription: "\(subscription.id)",
                            LogKey.keystoneTrust: "\(subscription.trustID ?? "")",
                            LogKey.zaqarExpires: "\(ISO8601DateFormatter().string(from: expires))",
                            LogKey.error: "\(error)",
                        ])
                }
            case .expiring, .expired, .unreadable:
                let expires = subscription.target.signedURL?.expires ?? ""
                stillWarned.insert(subscription.id)
                let first = warned.withLock { seen in
                    defer { seen[subscription.id] = expires }
                    return seen[subscription.id] != expires
                }
                if first, let warning = standing.warning(now: now) {
                    pass.warned.append(subscription.id)
                    logger.warning(
                        "pre-signed URL cannot be renewed",
                        metadata: [
                            LogKey.subscription: "\(subscription.id)", LogKey.project: "\(subscription.project)",
                            LogKey.problem: "\(warning)",
                        ])
                }
            }
        }
        if whole { warned.withLock { $0 = $0.filter { stillWarned.contains($0.key) } } }
        return pass
    }

    /// Renews the subscription's pre-signed URL; false when it was not stored (the subscription
    /// went, its target changed, or it kept changing while this was written).
    private func renew(_ subscription: Subscription, now: Date) async throws -> Bool {
        guard let keystone, let trust = subscription.trustID else {
            throw KeystoneClient.Failure.unavailable("this node has no Keystone configured")
        }
        let token = try await keystone.trustToken(trust)
        let expires = now.addingTimeInterval(policy.lifetime.seconds)
        let signed = try await zaqar.share(
            baseURL: subscription.target.zaqarURL ?? defaultZaqarURL, queue: subscription.target.queue,
            project: subscription.project,
            token: token, expires: expires
        )
        // Read it again: the user may have changed it meanwhile; only the URL is replaced, and
        // only while the target is the one the URL was made for. A change made between this read
        // and the write makes the write fail; the record is read again.
        for _ in 0..<3 {
            guard let current = try await registry.get(id: subscription.id, project: subscription.project),
                current.target == subscription.target
            else { return false }
            var renewed = current
            renewed.target.signedURL = signed
            switch try await registry.update(renewed, from: current) {
            case .updated:
                logger.info(
                    "pre-signed URL renewed through the trust",
                    metadata: [
                        LogKey.subscription: "\(subscription.id)", LogKey.zaqarExpires: "\(signed.expires)",
                        LogKey.zaqarPreviousExpires: "\(subscription.target.signedURL?.expires ?? "")",
                    ])
                return true
            case .missing: return false
            case .changedMeanwhile: continue
            }
        }
        logger.warning(
            "the subscription kept changing while its pre-signed URL was renewed; trying on the next pass",
            metadata: [LogKey.subscription: "\(subscription.id)"])
        return false
    }
}
