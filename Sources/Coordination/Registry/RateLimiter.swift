/// Fixed-window rate limits shared by every node, in Redis: `<prefix>rate:<name>:<window>`
/// counts what was taken in the current window (Redis' clock, so nodes agree), and expires
/// with it. Used for a project's subscription changes and dead-letter replays.
public final class RateLimiter: Sendable {
    private let redis: RedisClient
    private let prefix: String

    public init(redis: RedisClient, keyPrefix: String = "herald:") {
        self.redis = redis
        self.prefix = keyPrefix
    }

    /// Takes `amount` if the window has room for all of it. Answers -1 when taken, else
    /// the milliseconds until the window ends.
    private static let take = RedisScript(
        #"""
        local key, limit, amount, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local start = now - (now % window)
        local full = key .. ':' .. start
        local used = tonumber(redis.call('GET', full) or '0')
        if used + amount > limit then return start + window - now end
        redis.call('INCRBY', full, amount)
        redis.call('PEXPIRE', full, window * 2)
        return -1
        """#)

    /// Takes `amount` of the `limit` allowed per `window` for `name`.
    /// - Returns: nil when taken; otherwise how long until the window has room again.
    /// - Throws: `CoordinationError` when Redis cannot be asked.
    public func take(_ name: String, amount: Int = 1, limit: Int, per window: Duration) async throws -> Duration? {
        let windowMilliseconds = max(1, window.milliseconds)
        let reply = try await redis.evalSHA(
            Self.take, arguments: [prefix + "rate:" + name, limit, amount, Int(windowMilliseconds)])
        guard let wait = reply.integer else {
            throw CoordinationError(.unexpectedReply, "the rate script answered \(reply)")
        }
        return wait < 0 ? nil : .milliseconds(wait)
    }
}
