import Foundation
import TestSupport
import Testing

@testable import Coordination

@Suite("Subscription counts in Redis", .serialized)
struct SubscriptionStatsTests {
    @Test(
        "counts and errors written by a flush read back as totals and the last hour (a bucket older than an hour is left out); a flush writes only what came since the last; past the table's bound counts are dropped and counted"
    )
    func counts() async throws {
        let redis = try RedisClient(url: TestServers.redisURL())
        let prefix = TestServers.uniqueName("herald-test.stats") + ":"
        let stats = SubscriptionStats(redis: redis, keyPrefix: prefix)
        // Counts are kept for subscriptions that exist (their registry record).
        for id in ["s1", "s2", "s3", "a", "b"] { _ = try await redis.send("SET", prefix + "sub:" + id, "{}") }
        stats.count(["s1", "s1", "s1", "s2"], \.matched)
        stats.count(["s1", "s1"], \.delivered)
        stats.count(["s1"], \.deadLettered)
        stats.failed(["s1"], error: "HTTP 503: down")
        #expect(try await stats.flush() == 2)
        #expect(try await stats.flush() == 0, "nothing new")

        let one = try await stats.health(subscription: "s1")
        #expect(one.total == SubscriptionStats.Counts(matched: 3, delivered: 2, deadLettered: 1))
        #expect(one.lastHour == one.total)
        #expect(one.lastError == "HTTP 503: down")
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        #expect(abs((one.lastDeliveredAt ?? 0) - now) < 60_000 && abs((one.lastErrorAt ?? 0) - now) < 60_000)
        let two = try await stats.health(subscription: "s2")
        #expect(two.total == SubscriptionStats.Counts(matched: 1) && two.lastDeliveredAt == nil && two.lastError == nil)
        #expect(try await stats.health(subscription: "none") == SubscriptionStats.Health())

        // A slot last used two hours ago (another slot than now's, so that this flush leaves it)
        // is in no last hour; its counts are in the total as they were when counted.
        let minute = Int64(Date().timeIntervalSince1970) / 60
        let old = (minute + 30) % 60
        _ = try await redis.send("HSET", prefix + "stats:s2", "s\(old)", minute - 90, "s\(old):d", 5)
        stats.count(["s2"], \.delivered)
        try await stats.flush()
        let later = try await stats.health(subscription: "s2")
        #expect(later.lastHour.delivered == 1 && later.total.delivered == 1)
        #expect(
            try await redis.send("EXISTS", prefix + "stats-min:s2:\(minute)").integer == 0, "one key per subscription")

        let small = SubscriptionStats(redis: redis, keyPrefix: prefix, maxPending: 2)
        small.count(["a", "b", "c", "a"], \.matched)
        #expect(small.droppedSubscriptions == 1)
        #expect(try await small.flush() == 2)
        #expect(small.droppedSubscriptions == 1, "since the start, not since the last flush")
        stats.failed(["s3"], error: "line\nbreak\u{7}" + String(repeating: "e", count: 1000))
        try await stats.flush()
        let cleaned = try #require(try await stats.health(subscription: "s3").lastError)
        #expect(cleaned.count <= 301 && !cleaned.contains("\n") && !cleaned.contains("\u{7}"), "\(cleaned.prefix(40))")
        #expect(try await small.health(subscription: "a").total.matched == 2)

        // A deleted subscription's counts, flushed after its delete, make no key again.
        stats.count(["gone"], \.matched)
        stats.failed(["gone"], error: "HTTP 503")
        try await stats.flush()
        #expect(try await redis.send("EXISTS", prefix + "stats:gone").integer == 0)
        #expect(try await stats.health(subscription: "gone") == SubscriptionStats.Health())
    }

    @Test(
        "a flush that cannot reach Redis keeps its counts and errors, added to what comes meanwhile, for the next flush"
    )
    func keptOnFailure() async throws {
        // Nothing listens on port 1.
        let away = SubscriptionStats(
            redis: try RedisClient(url: "redis://127.0.0.1:1/0"), keyPrefix: "herald-test.stats:")
        away.count(["s1", "s1"], \.delivered)
        away.failed(["s1"], error: "timeout")
        await #expect(throws: (any Error).self) { try await away.flush() }
        away.count(["s1"], \.delivered)
        #expect(away.pending("s1") == SubscriptionStats.Counts(delivered: 3))
        #expect(away.pendingError("s1") == "timeout")
        await #expect(throws: (any Error).self) { try await away.flush() }
        #expect(away.pending("s1") == SubscriptionStats.Counts(delivered: 3), "kept again, not doubled")
    }
}
