/// The cluster's record of parked deliveries, in Redis: which subscriptions have messages
/// parked in their broker queue, how many, since when, who is retrying them and when next.
///
/// A subscription counts as parked while its count is above zero. Messages are counted
/// *before* they are published into the parking queue and uncounted only once they left it
/// (delivered, dead-lettered or dropped), so a count of zero proves that none of a node's
/// parked messages is still waiting: only then may a node deliver that subscription's new
/// messages directly again without overtaking parked ones (docs/pipeline.md, "Outages").
///
/// Keys (under the prefix): `park:<subscription>` (hash: count, project, since, attempts, next,
/// error, claimed), `park-due` (sorted set: subscription by its next attempt, Redis time in ms),
/// `park-projects` (hash: project → messages parked, for the per-project bound),
/// `park-failing:<subscription>` (a lane's recent failure, expiring).
public final class ParkingLedger: Sendable {
    private let redis: RedisClient
    private let prefix: String

    public init(redis: RedisClient, keyPrefix: String = "herald:") {
        self.redis = redis
        self.prefix = keyPrefix
    }

    /// What `reserve` answered.
    public enum Reservation: Sendable, Equatable {
        /// Counted; `at` is Redis' time (ms), the messages' parked-at.
        case reserved(count: Int, at: Int64)
        /// The project's parked messages would exceed its share.
        case projectFull(parked: Int)
        /// The subscription's parked messages would exceed its queue's bound.
        case subscriptionFull(parked: Int)
    }

    private static let reserve = RedisScript(#"""
    local p, sub, project, n, pmax, smax, delay, err = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local key = p .. 'park:' .. sub
    local used = tonumber(redis.call('HGET', p .. 'park-projects', project) or '0')
    if used + n > pmax then return {-1, used} end
    local count = tonumber(redis.call('HGET', key, 'count') or '0')
    if count + n > smax then return {-2, count} end
    if count == 0 then
      redis.call('DEL', key)
      redis.call('HSET', key, 'project', project, 'since', now, 'attempts', 0, 'next', now + delay, 'error', err)
      redis.call('ZADD', p .. 'park-due', now + delay, sub)
    end
    redis.call('HINCRBY', p .. 'park-projects', project, n)
    return {redis.call('HINCRBY', key, 'count', n), now}
    """#)

    /// Counts `count` messages of a subscription as parked, before they are published.
    /// - Parameters:
    ///   - delay: when a subscription that was not parked should first be retried.
    ///   - error: why (shown in `herald status` and the API).
    /// - Throws: `CoordinationError` when Redis cannot be asked.
    public func reserve(
        subscription: String, project: String, count: Int, projectMax: Int, subscriptionMax: Int, delay: Duration, error: String
    ) async throws -> Reservation {
        let reply = try await redis.evalSHA(Self.reserve, arguments: [
            prefix, subscription, project, count, projectMax, subscriptionMax, Int(max(0, delay.milliseconds)), String(error.prefix(300)),
        ])
        guard let items = reply.array, items.count == 2, let first = items[0].integer, let second = items[1].integer else {
            throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)")
        }
        switch first {
        case -1: return .projectFull(parked: Int(second))
        case -2: return .subscriptionFull(parked: Int(second))
        default: return .reserved(count: Int(first), at: second)
        }
    }

    private static let release = RedisScript(#"""
    local p, sub, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
    local key = p .. 'park:' .. sub
    local project = redis.call('HGET', key, 'project')
    if not project then return 0 end
    local count = tonumber(redis.call('HGET', key, 'count') or '0')
    if n > count then n = count end
    local used = redis.call('HINCRBY', p .. 'park-projects', project, -n)
    if used <= 0 then redis.call('HDEL', p .. 'park-projects', project) end
    local left = count - n
    if left <= 0 then
      redis.call('DEL', key)
      redis.call('ZREM', p .. 'park-due', sub)
      return 0
    end
    redis.call('HSET', key, 'count', left)
    return left
    """#)

    /// Uncounts messages that left parking (or were never published); at zero the
    /// subscription is no longer parked. Answers how many are still counted.
    @discardableResult
    public func release(subscription: String, count: Int) async throws -> Int {
        let reply = try await redis.evalSHA(Self.release, arguments: [prefix, subscription, count])
        guard let left = reply.integer else { throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)") }
        return Int(left)
    }

    private static let claim = RedisScript(#"""
    local p, node, lease, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local due = redis.call('ZRANGEBYSCORE', p .. 'park-due', '-inf', now, 'LIMIT', 0, limit)
    for _, sub in ipairs(due) do
      redis.call('ZADD', p .. 'park-due', 'XX', now + lease, sub)
      redis.call('HSET', p .. 'park:' .. sub, 'claimed', node)
    end
    return due
    """#)

    /// Takes up to `limit` subscriptions whose next attempt is due, for `lease`: no other node
    /// takes them until the lease passes or `retryLater`/`finished` is called.
    public func claimDue(node: String, lease: Duration, limit: Int) async throws -> [String] {
        let reply = try await redis.evalSHA(Self.claim, arguments: [prefix, node, Int(lease.milliseconds), limit])
        return reply.array?.compactMap(\.string) ?? []
    }

    private static let schedule = RedisScript(#"""
    local p, sub, node, delay, failed, err, claimed = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local key = p .. 'park:' .. sub
    if redis.call('EXISTS', key) == 0 then return {0, now, 0} end
    if failed == '1' then
      redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HSET', key, 'error', err)
    end
    redis.call('HSET', key, 'next', now + delay, 'claimed', claimed)
    redis.call('ZADD', p .. 'park-due', 'XX', now + delay, sub)
    return {tonumber(redis.call('HGET', key, 'attempts') or '0'), now, tonumber(redis.call('HGET', key, 'since') or now)}
    """#)

    /// After a failed attempt: counts it, keeps the error, and sets the next attempt `delay` from now.
    /// - Returns: attempts so far and Redis' time (ms).
    @discardableResult
    public func retryLater(subscription: String, node: String, delay: Duration, error: String) async throws -> (attempts: Int, now: Int64) {
        let reply = try await redis.evalSHA(Self.schedule, arguments: [prefix, subscription, node, Int(max(0, delay.milliseconds)), "1", String(error.prefix(300)), ""])
        guard let items = reply.array, items.count == 3, let attempts = items[0].integer, let now = items[1].integer else {
            throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)")
        }
        return (Int(attempts), now)
    }

    /// A drain ended without a failure (its queue was empty for now, or the node stops): whatever
    /// is still counted is due again after `delay`, for any node.
    public func finished(subscription: String, node: String, delay: Duration) async throws {
        _ = try await redis.evalSHA(Self.schedule, arguments: [prefix, subscription, node, Int(max(0, delay.milliseconds)), "0", "", ""])
    }

    /// A drain that is making progress keeps its claim for another `lease`.
    public func renew(subscription: String, node: String, lease: Duration) async throws {
        _ = try await redis.evalSHA(Self.schedule, arguments: [prefix, subscription, node, Int(lease.milliseconds), "0", "", node])
    }

    /// Forgets a subscription's parking record (its parked messages are gone: the queue was
    /// deleted with the subscription, or the count outlived every message it counted).
    public func forget(subscription: String) async throws {
        let count = try await state(subscription: subscription)?.count ?? 0
        if count > 0 { try await release(subscription: subscription, count: count) }
    }

    /// The subscriptions parked now (bounded by the number of subscriptions).
    public func parkedSubscriptions() async throws -> Set<String> {
        let reply = try await redis.send("ZRANGE", prefix + "park-due", 0, -1)
        return Set(reply.array?.compactMap(\.string) ?? [])
    }

    /// One subscription's parking, as `herald status` and the API show it.
    public struct State: Sendable, Equatable {
        public var subscription: String
        public var project: String
        public var count: Int
        /// When its oldest parked message was parked (Redis time, ms).
        public var since: Int64
        public var attempts: Int
        public var nextAttempt: Int64
        public var lastError: String
        /// The node retrying it now, if any.
        public var claimedBy: String?
    }

    public func state(subscription: String) async throws -> State? {
        try await states(subscriptions: [subscription]).first
    }

    public func states(subscriptions: [String]) async throws -> [State] {
        guard !subscriptions.isEmpty else { return [] }
        let replies = try await redis.pipeline(subscriptions.map { RedisCommand("HGETALL", prefix + "park:" + $0) })
        return zip(subscriptions, replies).compactMap { subscription, reply in
            guard let items = reply.array, items.count >= 2 else { return nil }
            var fields: [String: String] = [:]
            var index = 0
            while index + 1 < items.count {
                if let key = items[index].string { fields[key] = items[index + 1].string ?? "" }
                index += 2
            }
            guard let count = fields["count"].flatMap({ Int($0) }), count > 0 else { return nil }
            return State(
                subscription: subscription, project: fields["project"] ?? "", count: count, since: fields["since"].flatMap { Int64($0) } ?? 0,
                attempts: fields["attempts"].flatMap { Int($0) } ?? 0, nextAttempt: fields["next"].flatMap { Int64($0) } ?? 0,
                lastError: fields["error"] ?? "", claimedBy: fields["claimed"].flatMap { $0.isEmpty ? nil : $0 }
            )
        }
    }

    /// Every parked subscription's state, oldest parking first.
    public func allStates() async throws -> [State] {
        try await states(subscriptions: Array(parkedSubscriptions()).sorted()).sorted { $0.since < $1.since }
    }

    // MARK: Failing lanes (not parked yet)

    /// A lane's failure, kept for `ttl` (a lane that keeps failing parks its messages soon after).
    public func noteFailure(subscription: String, error: String, ttl: Duration) async throws {
        let reply = try await redis.send("TIME")
        let now = reply.array.flatMap { items -> Int64? in
            guard items.count == 2, let seconds = items[0].integer, let micros = items[1].integer else { return nil }
            return seconds * 1000 + micros / 1000
        } ?? 0
        _ = try await redis.send("SET", prefix + "park-failing:" + subscription, "\(now) \(error.prefix(300))", "PX", Int(ttl.milliseconds), "NX")
    }

    public func clearFailure(subscription: String) async throws {
        _ = try await redis.send("DEL", prefix + "park-failing:" + subscription)
    }

    /// A lane's recent failure: since when (Redis time, ms) and the error.
    public func failure(subscription: String) async throws -> (since: Int64, error: String)? {
        guard let text = try await redis.send("GET", prefix + "park-failing:" + subscription).string else { return nil }
        let parts = text.split(separator: " ", maxSplits: 1)
        return (Int64(parts.first ?? "") ?? 0, parts.count > 1 ? String(parts[1]) : "")
    }
}
