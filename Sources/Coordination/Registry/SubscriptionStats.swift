import Foundation
import Synchronization

/// Each subscription's recent life, for its owner: events matched, delivered and dead-lettered
/// (in total and per minute over the last hour), when it last delivered, its last error.
///
/// Nodes count in memory (a lock and a dictionary add on the delivery path) and write what
/// they counted once a second (`flush`, one script call per 500 subscriptions), so the hot path
/// never waits on Redis; a flush that fails keeps its counts for the next one. Keys (under the
/// prefix): `stats:<subscription>` (hash: matched, delivered, dead_lettered, last_delivered_at,
/// last_error, last_error_at; Redis time in ms; kept 30 days after the last write) and
/// `stats-min:<subscription>:<minute>` (hash: matched, delivered, dead_lettered; kept 65 minutes).
public final class SubscriptionStats: Sendable {
    /// Counts of one subscription.
    public struct Counts: Sendable, Equatable {
        public var matched = 0
        public var delivered = 0
        public var deadLettered = 0

        public init(matched: Int = 0, delivered: Int = 0, deadLettered: Int = 0) {
            self.matched = matched
            self.delivered = delivered
            self.deadLettered = deadLettered
        }
    }

    /// What the API shows.
    public struct Health: Sendable, Equatable {
        public var total = Counts()
        public var lastHour = Counts()
        /// Redis time, ms.
        public var lastDeliveredAt: Int64?
        public var lastError: String?
        public var lastErrorAt: Int64?
    }

    private struct Pending {
        var counts: [String: Counts] = [:]
        var errors: [String: String] = [:]
        /// Subscriptions left out because the table was full (Redis away for long, and more
        /// subscriptions active than `maxPending`): their counts are lost, and said so.
        var dropped = 0
    }

    private let redis: RedisClient
    private let prefix: String
    private let pending = Mutex(Pending())
    /// Subscriptions counted between flushes, at most (the rest are dropped, counted).
    let maxPending: Int

    public init(redis: RedisClient, keyPrefix: String = "herald:", maxPending: Int = 100_000) {
        self.redis = redis
        self.prefix = keyPrefix
        self.maxPending = maxPending
    }

    /// Adds to the counts written by the next flush.
    public func count(_ subscriptionIDs: some Sequence<String>, _ field: WritableKeyPath<Counts, Int>) {
        pending.withLock { pending in
            for id in subscriptionIDs {
                if pending.counts[id] == nil, pending.counts.count >= maxPending {
                    pending.dropped += 1
                    continue
                }
                pending.counts[id, default: Counts()][keyPath: field] += 1
            }
        }
    }

    /// A delivery to these subscriptions' target failed (the first failure of a spell).
    public func failed(_ subscriptionIDs: some Sequence<String>, error: String) {
        let error = String(error.prefix(300))
        pending.withLock { pending in
            for id in subscriptionIDs where pending.errors[id] != nil || pending.errors.count < maxPending {
                pending.errors[id] = error
            }
        }
    }

    private static let write = RedisScript(#"""
    local p = ARGV[1]
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local minute = math.floor(tonumber(t[1]) / 60)
    local i = 2
    while i + 4 <= #ARGV do
      local sub, matched, delivered, dead, err = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]
      local key = p .. 'stats:' .. sub
      local bucket = p .. 'stats-min:' .. sub .. ':' .. minute
      for field, n in pairs({matched = matched, delivered = delivered, dead_lettered = dead}) do
        if n > 0 then
          redis.call('HINCRBY', key, field, n)
          redis.call('HINCRBY', bucket, field, n)
        end
      end
      if delivered > 0 then redis.call('HSET', key, 'last_delivered_at', now) end
      if err ~= '' then redis.call('HSET', key, 'last_error', err, 'last_error_at', now) end
      redis.call('PEXPIRE', key, 2592000000)
      if redis.call('EXISTS', bucket) == 1 then redis.call('PEXPIRE', bucket, 3900000) end
      i = i + 5
    end
    return 1
    """#)

    /// Writes what was counted since the last flush; on failure the counts stay for the next.
    /// - Returns: subscriptions written.
    @discardableResult
    public func flush() async throws -> Int {
        let taken = pending.withLock { pending -> Pending in
            defer { pending = Pending() }
            return pending
        }
        let ids = Set(taken.counts.keys).union(taken.errors.keys).sorted()
        var written = 0
        do {
            for chunk in stride(from: 0, to: ids.count, by: 500).map({ ids[$0..<min(ids.count, $0 + 500)] }) {
                var arguments: [any RedisArgument] = [prefix]
                for id in chunk {
                    let counts = taken.counts[id] ?? Counts()
                    arguments += [id, counts.matched, counts.delivered, counts.deadLettered, taken.errors[id] ?? ""]
                }
                _ = try await redis.evalSHA(Self.write, arguments: arguments)
                written += chunk.count
            }
        } catch {
            // What was not written goes back, added to what came meanwhile.
            let rest = ids.dropFirst(written)
            pending.withLock { pending in
                for id in rest {
                    if let counts = taken.counts[id] {
                        var merged = pending.counts[id] ?? Counts()
                        merged.matched += counts.matched
                        merged.delivered += counts.delivered
                        merged.deadLettered += counts.deadLettered
                        pending.counts[id] = merged
                    }
                    if let error = taken.errors[id], pending.errors[id] == nil { pending.errors[id] = error }
                }
                pending.dropped += taken.dropped
            }
            throw error
        }
        return written
    }

    /// What the next flush writes for a subscription (tests).
    func pending(_ id: String) -> Counts? { pending.withLock { $0.counts[id] } }
    func pendingError(_ id: String) -> String? { pending.withLock { $0.errors[id] } }

    /// Subscriptions whose counts were dropped because too many were pending (since the start).
    public var droppedSubscriptions: Int { pending.withLock { $0.dropped } }

    /// One subscription's life: totals, the last hour (the current minute and the 59 before it,
    /// by Redis' clock), the last delivery and error.
    public func health(subscription: String) async throws -> Health {
        let time = try await redis.send("TIME")
        guard let seconds = time.array?.first?.string.flatMap({ Int64($0) }) else {
            throw CoordinationError(.unexpectedReply, "TIME answered \(time)")
        }
        let minute = seconds / 60
        var commands = [RedisCommand("HGETALL", prefix + "stats:" + subscription)]
        commands += (0..<60).map { RedisCommand("HGETALL", prefix + "stats-min:\(subscription):\(minute - Int64($0))") }
        let replies = try await redis.pipeline(commands)
        func counts(_ fields: [String: String]) -> Counts {
            Counts(matched: fields["matched"].flatMap { Int($0) } ?? 0, delivered: fields["delivered"].flatMap { Int($0) } ?? 0,
                   deadLettered: fields["dead_lettered"].flatMap { Int($0) } ?? 0)
        }
        let main = replies.first?.hashFields ?? [:]
        var health = Health(total: counts(main))
        for reply in replies.dropFirst() {
            let bucket = counts(reply.hashFields)
            health.lastHour.matched += bucket.matched
            health.lastHour.delivered += bucket.delivered
            health.lastHour.deadLettered += bucket.deadLettered
        }
        health.lastDeliveredAt = main["last_delivered_at"].flatMap { Int64($0) }
        health.lastError = main["last_error"].flatMap { $0.isEmpty ? nil : $0 }
        health.lastErrorAt = main["last_error_at"].flatMap { Int64($0) }
        return health
    }
}
