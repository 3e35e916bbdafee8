import Foundation
import Synchronization

/// What events exist, per project: the event types Herald has seen for a project, how many,
/// when last, and the latest one as its subscribers would receive it, so that users can write
/// patterns and conditions without reading OpenStack's source.
///
/// Bounded everywhere: a node counts at most `maxPending` (project, event type) pairs between
/// flushes, a project keeps at most `maxTypesPerProject` event types (a type past that is not
/// recorded; the count of such drops is kept), a sample is at most `sampleBytes` (a larger event
/// keeps no sample; 0 keeps none). Keys (under the prefix), each kept `retentionDays` (30) after
/// its last write:
/// `types:<project>` (hash: event type → count), `types-seen:<project>` (→ Redis time, ms),
/// `types-sample:<project>` (→ the latest event's JSON, redacted).
public final class EventTypeCatalog: Sendable {
    public struct Entry: Sendable, Equatable {
        public var eventType: String
        public var count: Int
        /// Redis time, ms.
        public var lastSeen: Int64?
        /// The latest event of this type, as JSON, redacted as tenants receive it.
        public var sample: String?
    }

    struct Key: Hashable {
        var project: String
        var eventType: String
    }

    private struct Pending {
        var counts: [Key: Int] = [:]
        var samples: [Key: [UInt8]] = [:]
        var dropped = 0
    }

    private let redis: RedisClient
    private let prefix: String
    private let pending = Mutex(Pending())
    let maxPending: Int
    public let maxTypesPerProject: Int
    public let sampleBytes: Int
    public let retentionDays: Int

    public init(
        redis: RedisClient, keyPrefix: String = "herald:", maxPending: Int = 10_000, maxTypesPerProject: Int = 200,
        sampleBytes: Int = 8192, retentionDays: Int = 30
    ) {
        self.redis = redis
        self.prefix = keyPrefix
        self.maxPending = maxPending
        self.maxTypesPerProject = maxTypesPerProject
        self.sampleBytes = sampleBytes
        self.retentionDays = retentionDays
    }

    /// Counts one event; answers whether a sample of it is wanted (the first of its type and
    /// project since the last flush, so that an event is redacted for a sample at most once a
    /// second per type and project).
    public func seen(project: String, eventType: String) -> Bool {
        count(project: project, eventType: eventType, sampling: true)
    }

    /// Counts one event unless a sample of it is wanted (see `seen`): true when counted (no
    /// sample wanted, or none can be kept now); false leaves it for `seen`, counted there.
    public func countedWithoutSample(project: String, eventType: String) -> Bool {
        count(project: project, eventType: eventType, sampling: false)
    }

    /// A pair already pending is counted; a new one past `maxPending` is dropped (counted as
    /// such); a new one is counted only when `sampling`. Answers whether a sample is wanted
    /// (`sampling`), or whether the event was counted.
    private func count(project: String, eventType: String, sampling: Bool) -> Bool {
        let key = Key(project: project, eventType: eventType)
        let samples = sampleBytes > 0
        return pending.withLock { pending in
            if let count = pending.counts[key] {
                pending.counts[key] = count + 1
                return !sampling
            }
            guard pending.counts.count < maxPending else {
                pending.dropped += 1
                return !sampling
            }
            // With no samples kept (`sampleBytes` 0) none is ever wanted: counted either way.
            if sampling || !samples { pending.counts[key] = 1 }
            return sampling ? samples : !samples
        }
    }

    /// The event as its project's subscribers receive it (too large: no sample).
    public func sample(project: String, eventType: String, json: [UInt8]) {
        guard json.count <= sampleBytes, sampleBytes > 0 else { return }
        pending.withLock { $0.samples[Key(project: project, eventType: eventType)] = json }
    }

    /// Pairs dropped because too many were pending between flushes (since the start).
    public var droppedPairs: Int { pending.withLock { $0.dropped } }

    private static let write = RedisScript(
        #"""
        local p, max, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local refused = 0
        local i = 4
        while i + 3 <= #ARGV do
          local project, kind, n, sample = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
          local counts, seen, samples = p .. 'types:' .. project, p .. 'types-seen:' .. project, p .. 'types-sample:' .. project
          if redis.call('HEXISTS', counts, kind) == 1 or redis.call('HLEN', counts) < max then
            redis.call('HINCRBY', counts, kind, n)
            redis.call('HSET', seen, kind, now)
            if sample ~= '' then redis.call('HSET', samples, kind, sample) end
            for _, key in ipairs({counts, seen, samples}) do
              if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, keep) end
            end
          else
            refused = refused + 1
          end
          i = i + 4
        end
        if refused > 0 then redis.call('HINCRBY', p .. 'types-refused', 'count', refused) end
        return refused
        """#)

    /// Writes what was counted since the last flush (up to 500 pairs per script call). On
    /// failure, what was not written is kept for the next flush.
    /// - Returns: pairs written.
    @discardableResult
    public func flush() async throws -> Int {
        let taken = pending.withLock { pending -> Pending in
            let taken = Pending(counts: pending.counts, samples: pending.samples, dropped: 0)
            pending.counts = [:]
            pending.samples = [:]
            return taken
        }
        let keys = Array(taken.counts.keys)
        var written = 0
        do {
            while written < keys.count {
                let chunk = keys[written..<min(keys.count, written + 500)]
                var arguments: [any RedisArgument] = [prefix, maxTypesPerProject, retentionDays * 86_400_000]
                for key in chunk {
                    arguments += [
                        key.project, key.eventType, taken.counts[key] ?? 0,
                        taken.samples[key].map { String(decoding: $0, as: UTF8.self) } ?? "",
                    ]
                }
                _ = try await redis.evalSHA(Self.write, arguments: arguments)
                written += chunk.count
            }
        } catch {
            pending.withLock { pending in
                for key in keys.dropFirst(written) {
                    pending.counts[key, default: 0] += taken.counts[key] ?? 0
                    if pending.samples[key] == nil, let sample = taken.samples[key] { pending.samples[key] = sample }
                }
            }
            throw error
        }
        return written
    }

    /// A project's event types, most frequent first.
    public func list(project: String) async throws -> [Entry] {
        let replies = try await redis.pipeline([
            RedisCommand("HGETALL", prefix + "types:" + project),
            RedisCommand("HGETALL", prefix + "types-seen:" + project),
            RedisCommand("HGETALL", prefix + "types-sample:" + project),
        ])
        let counts = replies.first?.hashFields ?? [:]
        let seen = replies.dropFirst().first?.hashFields ?? [:]
        let samples = replies.dropFirst(2).first?.hashFields ?? [:]
        return counts.map { type, count in
            Entry(
                eventType: type, count: Int(count) ?? 0, lastSeen: seen[type].flatMap { Int64($0) },
                sample: samples[type])
        }.sorted { ($0.count, $1.eventType) > ($1.count, $0.eventType) }
    }
}
