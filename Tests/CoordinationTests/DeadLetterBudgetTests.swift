import Coordination
import Foundation
import HeraldModel
import TestSupport
import Testing

@Suite("Dead letters within a budget, against a real Redis")
struct DeadLetterBudgetTests {
    func letter(_ index: Int, reason: DeadLetter.Reason, project: String = "p1", body: String = "{}") -> DeadLetter {
        DeadLetter(reason: reason, detail: "n\(index)", project: project, body: body, at: Double(index))
    }

    @Test(
        "the oldest beyond a cap are trimmed and counted by reason; long bodies are cut and marked; a project's stream expires when idle"
    )
    func budget() async throws {
        var budget = DeadLetterBudget()
        budget.max = 100
        budget.projectMax = 3
        budget.bodyBytes = 1_024
        budget.projectIdle = .seconds(3600)
        let redis = try RedisClient(url: TestServers.redisURL())
        let prefix = TestServers.uniqueName("herald-test.budget") + ":"
        let store = DeadLetterStore(redis: redis, keyPrefix: prefix, budget: budget)
        var trimmed: [String: Int] = [:]
        for index in 0..<5 {
            let reason: DeadLetter.Reason = index < 2 ? .notFound : .rejected
            for (key, count) in try await store.append([letter(index, reason: reason)]) {
                trimmed[key, default: 0] += count
            }
        }
        #expect(trimmed == ["not_found": 2], "the two oldest (not_found) went to make room")
        let kept = try await store.recent(project: "p1", count: 10)
        #expect(kept.map(\.letter.detail) == ["n4", "n3", "n2"])
        #expect(try await store.droppedByReason() == ["not_found": 2])
        #expect(try await store.count() == 5, "the cluster-wide stream is under its own cap")

        try await store.append([letter(9, reason: .rejected, project: "p2", body: String(repeating: "b", count: 5_000))]
        )
        let long = try #require(try await store.recent(project: "p2", count: 1).first?.letter)
        #expect(long.body.utf8.count == 1_024)
        #expect(long.bodyTruncated == true)
        let ttl = try await redis.send("PTTL", prefix + "dead-letters:p2").integer ?? -1
        #expect((1...3_600_000).contains(ttl), "an idle project's letters expire (\(ttl) ms)")
    }
}
