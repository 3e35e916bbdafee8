import Foundation
import HeraldModel

/// Dead letters in a capped Redis stream (`<prefix>dead-letters`, `MAXLEN ~ cap`),
/// one entry per letter with its reason as a field of its own (for counting by
/// reason) and the whole letter as JSON.
public final class DeadLetterStore: Sendable {
    private let redis: RedisClient
    private let key: String
    private let cap: Int

    public init(redis: RedisClient, keyPrefix: String = "herald:", cap: Int = 100_000) {
        self.redis = redis
        self.key = keyPrefix + "dead-letters"
        self.cap = cap
    }

    /// Appends letters in one round trip.
    /// - Throws: `CoordinationError` when Redis cannot take them (the caller retries: nothing is dropped).
    public func append(_ letters: [DeadLetter]) async throws {
        guard !letters.isEmpty else { return }
        let encoder = JSONEncoder()
        let commands = try letters.map { letter in
            RedisCommand("XADD", key, "MAXLEN", "~", cap, "*", "reason", letter.reason.rawValue,
                         "project", letter.project ?? "", "letter", String(decoding: try encoder.encode(letter), as: UTF8.self))
        }
        let replies = try await redis.pipeline(commands)
        if let failed = replies.first(where: { if case .error = $0 { return true } else { return false } }) {
            throw CoordinationError(.serverError, "Redis refused a dead letter", underlying: "\(failed)")
        }
    }

    /// The newest letters first, at most `count`.
    public func recent(count: Int = 100) async throws -> [DeadLetter] {
        let reply = try await redis.send("XREVRANGE", key, "+", "-", "COUNT", count)
        let decoder = JSONDecoder()
        return (reply.array ?? []).compactMap { entry in
            guard let fields = entry.array?.last?.array else { return nil }
            for index in stride(from: 0, to: fields.count - 1, by: 2) where fields[index].string == "letter" {
                return fields[index + 1].bytes.flatMap { try? decoder.decode(DeadLetter.self, from: Data($0)) }
            }
            return nil
        }
    }

    /// How many letters the stream holds.
    public func count() async throws -> Int {
        Int(try await redis.send("XLEN", key).integer ?? 0)
    }
}
