import Foundation
import HeraldModel

/// Dead letters in capped Redis streams, one entry per letter with its reason as a
/// field of its own (for counting by reason) and the whole letter as JSON:
/// `<prefix>dead-letters` holds every letter for operators (`MAXLEN ~ cap`), and a
/// letter of a project is also in `<prefix>dead-letters:<project>` (`MAXLEN ~
/// projectCap`), which the project lists, replays and purges through the API.
public final class DeadLetterStore: Sendable {
    private let redis: RedisClient
    private let key: String
    private let cap: Int
    private let projectCap: Int

    public init(redis: RedisClient, keyPrefix: String = "herald:", cap: Int = 100_000, projectCap: Int = 10_000) {
        self.redis = redis
        self.key = keyPrefix + "dead-letters"
        self.cap = cap
        self.projectCap = projectCap
    }

    private func projectKey(_ project: String) -> String {
        key + ":" + project
    }

    /// Appends letters in one round trip.
    /// - Throws: `CoordinationError` when Redis cannot take them (the caller retries: nothing is dropped).
    public func append(_ letters: [DeadLetter]) async throws {
        guard !letters.isEmpty else { return }
        let encoder = JSONEncoder()
        let commands = try letters.flatMap { letter in
            let json = String(decoding: try encoder.encode(letter), as: UTF8.self)
            var commands = [RedisCommand("XADD", key, "MAXLEN", "~", cap, "*", "reason", letter.reason.rawValue, "project", letter.project ?? "", "letter", json)]
            if let project = letter.project, !project.isEmpty {
                commands.append(RedisCommand("XADD", projectKey(project), "MAXLEN", "~", projectCap, "*", "reason", letter.reason.rawValue, "letter", json))
            }
            return commands
        }
        let replies = try await redis.pipeline(commands)
        if let failed = replies.first(where: { if case .error = $0 { return true } else { return false } }) {
            throw CoordinationError(.serverError, "Redis refused a dead letter", underlying: "\(failed)")
        }
    }

    /// The newest letters first, at most `count`.
    public func recent(count: Int = 100) async throws -> [DeadLetter] {
        try await entries(key: key, count: count, before: nil).map(\.letter)
    }

    /// A project's letters, newest first: at most `count`, older than the entry id `before` when given.
    public func recent(project: String, count: Int = 100, before: String? = nil) async throws -> [(id: String, letter: DeadLetter)] {
        try await entries(key: projectKey(project), count: count, before: before)
    }

    /// A project's letters by entry id; ids it does not have are left out.
    public func letters(project: String, ids: [String]) async throws -> [(id: String, letter: DeadLetter)] {
        guard !ids.isEmpty else { return [] }
        let replies = try await redis.pipeline(ids.map { RedisCommand("XRANGE", projectKey(project), $0, $0) })
        return replies.flatMap(Self.decode)
    }

    /// Removes letters of a project (after a replay); returns how many were removed.
    @discardableResult
    public func remove(project: String, ids: [String]) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return Int(try await redis.send(RedisCommand(["XDEL", projectKey(project)] + ids)).integer ?? 0)
    }

    /// Removes every letter of a project; returns how many there were.
    public func purge(project: String) async throws -> Int {
        let replies = try await redis.pipeline([RedisCommand("XLEN", projectKey(project)), RedisCommand("DEL", projectKey(project))])
        return Int(replies[0].integer ?? 0)
    }

    /// How many letters there are per reason among the newest `scan` (for `herald status`).
    public func countsByReason(scan: Int = 10_000) async throws -> [DeadLetter.Reason: Int] {
        let reply = try await redis.send("XREVRANGE", key, "+", "-", "COUNT", scan)
        var counts: [DeadLetter.Reason: Int] = [:]
        for entry in reply.array ?? [] {
            guard let fields = entry.array?.last?.array else { continue }
            for index in stride(from: 0, to: fields.count - 1, by: 2) where fields[index].string == "reason" {
                if let reason = fields[index + 1].string.flatMap(DeadLetter.Reason.init(rawValue:)) { counts[reason, default: 0] += 1 }
            }
        }
        return counts
    }

    private func entries(key: String, count: Int, before: String?) async throws -> [(id: String, letter: DeadLetter)] {
        let reply = try await redis.send("XREVRANGE", key, before.map { "(" + $0 } ?? "+", "-", "COUNT", count)
        return Self.decode(reply)
    }

    private static func decode(_ reply: RedisReply) -> [(id: String, letter: DeadLetter)] {
        let decoder = JSONDecoder()
        return (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let fields = parts[1].array else { return nil }
            for index in stride(from: 0, to: fields.count - 1, by: 2) where fields[index].string == "letter" {
                return fields[index + 1].bytes.flatMap { try? decoder.decode(DeadLetter.self, from: Data($0)) }.map { (id, $0) }
            }
            return nil
        }
    }

    /// How many letters the stream holds.
    public func count() async throws -> Int {
        Int(try await redis.send("XLEN", key).integer ?? 0)
    }
}
