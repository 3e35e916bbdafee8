import Foundation
import HeraldModel
import Synchronization

/// Each subscription's recent life, for its owner: events matched, delivered and dead-lettered
/// (in total and per minute over the last hour), when it last delivered, its last error.
///
/// Nodes count in memory (a lock and a dictionary add on the delivery path) and write what
/// they counted once a second (`flush`, one script call per 500 subscriptions), so the hot path
/// never waits on Redis; a flush that fails keeps its counts for the next one. One key per
/// subscription (under the prefix): `stats:<subscription>`, a hash kept 30 days after its last
/// write: matched, delivered, dead_lettered, last_delivered_at, last_error, last_error_at (Redis
/// time in ms), and 60 minute slots (`s<minute % 60>` = the minute it counts, `s<n>:m`, `:d`,
/// `:x`), a slot reset when a new minute reuses it: the last hour is the slots of the last 60
/// minutes, at most 245 small fields per subscription.
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

    /// A delivery to these subscriptions' target failed (the first failure of a spell). The text
    /// is shown to the subscription's project: control characters go, at most 300 characters.
    public func failed(_ subscriptionIDs: some Sequence<String>, error: String) {
        let error = SafeText.clean(error, limit: 300)
        pending.withLock { pending in
            for id in subscriptionIDs where pending.errors[id] != nil || pending.errors.count < maxPending {
                pending.errors[id] = error
            }
        }
    }

    private static let write = RedisScript(
        #"""
        local p = ARGV[1]
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local minute = math.floor(tonumber(t[1]) / 60)
        local i = 2
        while i + 4 <= #ARGV do
          local sub, matched, delivered, dead, err = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]
          local key = p .. 'stats:' .. sub
          local slot = 's' .. (minute % 60)
          -- Only for a subscription that still exists: counts of a deleted one (flushed after its
          -- delete) would make its key again, for 30 days.
          if redis.call('EXISTS', p .. 'sub:' .. sub) == 1 then
            if tonumber(redis.call('HGET', key, slot) or '-1') ~= minute then
              redis.call('HSET', key, slot, minute, slot .. ':m', 0, slot .. ':d', 0, slot .. ':x', 0)
            end
            for _, counted in ipairs({{'matched', matched, ':m'}, {'delivered', delivered, ':d'}, {'dead_lettered', dead, ':x'}}) do
              if counted[2] > 0 then
                redis.call('HINCRBY', key, counted[1], counted[2])
                redis.call('HINCRBY', key, slot .. counted[3], counted[2])
              end
            end
            if delivered > 0 then redis.call('HSET', key, 'last_delivered_at', now) end
            if err ~= '' then redis.call('HSET', key, 'last_error', err, 'last_error_at', now) end
            redis.call('PEXPIRE', key, 2592000000)
          end
          i = i + 5
        end
        return 1
        """#)

    /// Writes what was counted since the last flush; on failure the counts stay for the next.
    /// - Returns: subscriptions written.
    @discardableResult
    public func flush() async throws -> Int {
        let taken = pending.withLock { pending -> Pending in
            defer { pending = Pending(dropped: pending.dropped) }
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
                    // Still within the table's bound, as when they were counted.
                    if pending.counts[id] == nil, pending.errors[id] == nil,
                        max(pending.counts.count, pending.errors.count) >= maxPending
                    {
                        pending.dropped += 1
                        continue
                    }
                    if let counts = taken.counts[id] {
                        var merged = pending.counts[id] ?? Counts()
                        merged.matched += counts.matched
                        merged.delivered += counts.delivered
                        merged.deadLettered += counts.deadLettered
                        pending.counts[id] = merged
                    }
                    if let error = taken.errors[id], pending.errors[id] == nil { pending.errors[id] = error }
                }
            }
            throw error
        }
        return written
    }

    /// What the next flush writes for a subscription (tests).
    func pending(_ id: String) -> Counts? { pending.withLock { $0.counts[id] } }
    func pendingError(_ id: String) -> String? { pending.withLock { $0.errors[id] } }

    /// Subscriptions whose counts were dropped because too many were pending (since the start;
    /// a lost script answer may also count a flush twice: these counts are for people, not bills).
    public var droppedSubscriptions: Int { pending.withLock { $0.dropped } }

    /// One subscription's life: totals, the last hour (the current minute and the 59 before it,
    /// by Redis' clock), the last delivery and error.
    public func health(subscription: String) async throws -> Health {
        let replies = try await redis.pipeline([
            RedisCommand("TIME"), RedisCommand("HGETALL", prefix + "stats:" + subscription),
        ])
        guard let seconds = replies.first?.array?.first?.string.flatMap({ Int64($0) }) else {
            throw CoordinationError(.unexpectedReply, "TIME answered \(replies.first ?? .null)")
        }
        let minute = seconds / 60
        let fields = replies.dropFirst().first?.hashFields ?? [:]
        // Counts as Redis keeps them, clamped: a corrupt one cannot make the hour's sums overflow.
        func number(_ key: String) -> Int { min(max(fields[key].flatMap { Int($0) } ?? 0, 0), 1 << 53) }
        var health = Health(
            total: Counts(
                matched: number("matched"), delivered: number("delivered"), deadLettered: number("dead_lettered")))
        for slot in 0..<60 {
            guard let counted = fields["s\(slot)"].flatMap({ Int64($0) }), counted > minute - 60, counted <= minute
            else { continue }
            health.lastHour.matched += number("s\(slot):m")
            health.lastHour.delivered += number("s\(slot):d")
            health.lastHour.deadLettered += number("s\(slot):x")
        }
        health.lastDeliveredAt = fields["last_delivered_at"].flatMap { Int64($0) }
        health.lastError = fields["last_error"].flatMap { $0.isEmpty ? nil : $0 }
        health.lastErrorAt = fields["last_error_at"].flatMap { Int64($0) }
        return health
    }

}
