import Foundation
import HeraldModel

/// How much dead-letter storage a cluster may use (docs/security.md).
public struct DeadLetterBudget: Sendable {
    /// Letters kept in the cluster-wide stream (HERALD_DEAD_LETTERS_MAX). Default 20000.
    public var max = 20_000
    /// Letters kept per project (HERALD_DEAD_LETTERS_PROJECT_MAX). Default 1000.
    public var projectMax = 1_000
    /// Bytes of a letter's body kept; a longer body is cut and the letter marked so (it can no
    /// longer be replayed). With the counts, this bounds the bytes stored: at most about
    /// `max × (bodyBytes + 1 KiB)` (HERALD_DEAD_LETTER_BODY_BYTES). Default 16384.
    public var bodyBytes = 16 << 10
    /// A project's stream that takes no letter for this long is removed (HERALD_DEAD_LETTERS_IDLE_DAYS). Default 14 days.
    public var projectIdle: Duration = .seconds(14 * 86_400)

    public init() {}
}

/// Dead letters in capped Redis streams, one entry per letter with its reason as a
/// field of its own (for counting by reason) and the whole letter as JSON:
/// `<prefix>dead-letters` holds every letter for operators, and a letter of a project is also
/// in `<prefix>dead-letters:<project>`, which the project lists, replays and purges through
/// the API. Both are bounded by count (the oldest go first), every letter's body by bytes, and
/// a project's stream expires when idle. What is trimmed is never silent: it is counted by
/// reason in `<prefix>dead-letters-dropped` (a hash; `herald status` shows it) and returned
/// to the caller for its metric and log. A letter of an admin's all-projects subscription holds
/// another project's event: it goes to `<prefix>dead-letters-all-projects` instead of the admin
/// project's stream, for the cloud's admins only (`Scope.allProjects`).
public final class DeadLetterStore: Sendable {
    /// Whose letters: a project's own, or those of the all-projects subscriptions.
    public enum Scope: Sendable, Equatable, CustomStringConvertible {
        case project(String)
        case allProjects

        public var description: String {
            switch self {
            case .project(let project): return "project \(project)"
            case .allProjects: return "the all-projects subscriptions"
            }
        }
    }

    private let redis: RedisClient
    private let key: String
    public let budget: DeadLetterBudget

    public init(redis: RedisClient, keyPrefix: String = "herald:", budget: DeadLetterBudget = DeadLetterBudget()) {
        self.redis = redis
        self.key = keyPrefix + "dead-letters"
        self.budget = budget
    }

    private func projectKey(_ project: String) -> String {
        key + ":" + project
    }

    /// Not under `dead-letters:`: a project named `dropped` must not share its key.
    private var droppedKey: String { key + "-dropped" }

    /// Not under `dead-letters:` either, for the same reason.
    private var allProjectsKey: String { key + "-all-projects" }

    private func streamKey(_ scope: Scope) -> String {
        switch scope {
        case .project(let project): return projectKey(project)
        case .allProjects: return allProjectsKey
        }
    }

    /// Appends one letter to a stream, first trimming the oldest entries beyond the cap and
    /// counting them by reason. KEYS: the stream, the dropped-counts hash. ARGV: cap, idle ms
    /// (0: none), reason, project, letter. Returns the reasons of what was trimmed.
    private static let append = RedisScript(
        #"""
        local stream, dropped = KEYS[1], KEYS[2]
        local cap, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
        local trimmed = {}
        local length = redis.call('XLEN', stream)
        if length >= cap then
          local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', length - cap + 1)
          for _, entry in ipairs(old) do
            local fields, reason = entry[2], 'unknown'
            for i = 1, #fields, 2 do if fields[i] == 'reason' then reason = fields[i + 1] end end
            redis.call('HINCRBY', dropped, reason, 1)
            redis.call('XDEL', stream, entry[1])
            trimmed[#trimmed + 1] = reason
          end
        end
        redis.call('XADD', stream, '*', 'reason', ARGV[3], 'project', ARGV[4], 'letter', ARGV[5])
        if idle > 0 then redis.call('PEXPIRE', stream, idle) end
        return trimmed
        """#)

    /// Appends letters (bodies cut to the budget), trimming the oldest beyond the caps.
    /// - Returns: how many older letters were trimmed to make room, by reason.
    /// - Throws: `CoordinationError` when Redis cannot take them (the caller retries: nothing is dropped).
    @discardableResult
    public func append(_ letters: [DeadLetter]) async throws -> [String: Int] {
        guard !letters.isEmpty else { return [:] }
        let encoder = JSONEncoder()
        var trimmed: [String: Int] = [:]
        for var letter in letters {
            if letter.body.utf8.count > budget.bodyBytes {
                letter.body = String(decoding: letter.body.utf8.prefix(budget.bodyBytes), as: UTF8.self)
                letter.bodyTruncated = true
            }
            let json = String(decoding: try encoder.encode(letter), as: UTF8.self)
            var replies = [
                try await redis.evalSHA(
                    Self.append, keys: [key, droppedKey],
                    arguments: [budget.max, 0, letter.reason.rawValue, letter.project ?? "", json])
            ]
            if let project = letter.project, !project.isEmpty {
                let stream = letter.allProjects == true ? allProjectsKey : projectKey(project)
                replies.append(
                    try await redis.evalSHA(
                        Self.append, keys: [stream, droppedKey],
                        arguments: [
                            budget.projectMax, Int(budget.projectIdle.milliseconds), letter.reason.rawValue, project,
                            json,
                        ]
                    ))
            }
            for reply in replies {
                if case .error(let message) = reply {
                    throw CoordinationError(.serverError, "Redis refused a dead letter", underlying: message)
                }
                for reason in reply.array?.compactMap(\.string) ?? [] { trimmed[reason, default: 0] += 1 }
            }
        }
        return trimmed
    }

    /// How many letters were trimmed to keep within the budget, by reason, since the cluster began.
    public func droppedByReason() async throws -> [String: Int] {
        let reply = try await redis.send("HGETALL", droppedKey)
        let items = reply.array ?? []
        var counts: [String: Int] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if let reason = items[index].string, let count = items[index + 1].string.flatMap({ Int($0) }) {
                counts[reason] = count
            }
        }
        return counts
    }

    /// The newest letters first, at most `count`.
    public func recent(count: Int = 100) async throws -> [DeadLetter] {
        try await entries(key: key, count: count, before: nil).map(\.letter)
    }

    /// A scope's letters, newest first: at most `count`, older than the entry id `before` when given.
    public func recent(
        _ scope: Scope, count: Int = 100, before: String? = nil
    ) async throws -> [(id: String, letter: DeadLetter)] {
        try await entries(key: streamKey(scope), count: count, before: before)
    }

    /// A project's letters, newest first (`recent(.project(project), ...)`).
    public func recent(
        project: String, count: Int = 100, before: String? = nil
    ) async throws -> [(id: String, letter: DeadLetter)] {
        try await recent(.project(project), count: count, before: before)
    }

    /// A scope's letters by entry id; ids it does not have are left out.
    public func letters(_ scope: Scope, ids: [String]) async throws -> [(id: String, letter: DeadLetter)] {
        guard !ids.isEmpty else { return [] }
        let replies = try await redis.pipeline(ids.map { RedisCommand("XRANGE", streamKey(scope), $0, $0) })
        return replies.flatMap(Self.decode)
    }

    /// Removes letters of a scope (after a replay); returns how many were removed.
    @discardableResult
    public func remove(_ scope: Scope, ids: [String]) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return Int(try await redis.send(RedisCommand(["XDEL", streamKey(scope)] + ids)).integer ?? 0)
    }

    /// Removes every letter of a scope; returns how many there were.
    public func purge(_ scope: Scope) async throws -> Int {
        let replies = try await redis.pipeline([
            RedisCommand("XLEN", streamKey(scope)), RedisCommand("DEL", streamKey(scope)),
        ])
        return Int(replies[0].integer ?? 0)
    }

    /// How many letters there are per reason among the newest `scan` (for `herald status`).
    public func countsByReason(scan: Int = 10_000) async throws -> [DeadLetter.Reason: Int] {
        let reply = try await redis.send("XREVRANGE", key, "+", "-", "COUNT", scan)
        var counts: [DeadLetter.Reason: Int] = [:]
        for entry in reply.array ?? [] {
            guard let fields = entry.array?.last?.array else { continue }
            for index in stride(from: 0, to: fields.count - 1, by: 2) where fields[index].string == "reason" {
                if let reason = fields[index + 1].string.flatMap(DeadLetter.Reason.init(rawValue:)) {
                    counts[reason, default: 0] += 1
                }
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
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string, let fields = parts[1].array
            else { return nil }
            for index in stride(from: 0, to: fields.count - 1, by: 2) where fields[index].string == "letter" {
                return fields[index + 1].bytes.flatMap { try? decoder.decode(DeadLetter.self, from: Data($0)) }.map {
                    (id, $0)
                }
            }
            return nil
        }
    }

    /// How many letters the stream holds.
    public func count() async throws -> Int {
        Int(try await redis.send("XLEN", key).integer ?? 0)
    }
}
