import Foundation
import HeraldModel
import Logging
import Synchronization

/// What a conditional update of a subscription did.
public enum RegistryUpdateOutcome: Sendable, Equatable {
    case updated(Subscription)
    /// The project has no such subscription (deleted meanwhile, or another project's).
    case missing
    /// The record changed after the change was made from it: read it again and redo the change.
    case changedMeanwhile
}

/// Every subscription at one registry version.
public struct RegistrySnapshot: Sendable {
    public var version: Int64
    public var subscriptions: [Subscription]
}

/// The subscription registry in Redis: one JSON record per subscription, an
/// index per project (ids in order, for `limit` + `marker` pages), a version
/// bumped by every change and a pub/sub notice of it.
///
/// Keys under the prefix: `sub:<id>`, `subs:project:<project>` (zset by id),
/// `subs:all` (set), `subs:version`; channel `subs:changed`.
public final class SubscriptionRegistry: Sendable {
    private let redis: RedisClient
    private let subscriber: RedisSubscriber
    private let prefix: String
    private let logger: Logger

    public init(
        redis redisConfiguration: RedisConfiguration, keyPrefix: String = "herald:",
        logger: Logger = Logger(label: "herald.registry")
    ) {
        self.redis = RedisClient(configuration: redisConfiguration, logger: logger)
        self.subscriber = RedisSubscriber(configuration: redisConfiguration, logger: logger)
        self.prefix = keyPrefix
        self.logger = logger
    }

    /// Closes the registry's Redis connection (its watches have their own); later calls throw.
    public func close() async {
        await redis.close()
    }

    /// The registry's incarnation (`subs:incarnation`): set by the first script to run against a
    /// registry without one, from the id it was given; changes only when Redis lost the key (and
    /// so, most likely, the registry with it). Defined in the scripts that need it.
    private static func withIncarnation(_ body: String) -> RedisScript {
        RedisScript(incarnationFunction + body)
    }

    private static let incarnationFunction = """
        local function incarnation(prefix, candidate)
          local held = redis.call('GET', prefix .. 'subs:incarnation')
          if held then return held end
          redis.call('SET', prefix .. 'subs:incarnation', candidate)
          return candidate
        end

        """

    /// ARGV[5]: the project's quota (0: none); -1 when the project is at it, 0 when the id exists.
    /// ARGV[6] (`update`'s too, `delete`'s ARGV[4], `snapshot`'s ARGV[2]): an incarnation for a
    /// registry without one.
    private static let create = withIncarnation(
        #"""
        local prefix, id, project, quota = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
        if quota > 0 and redis.call('ZCARD', prefix .. 'subs:project:' .. project) >= quota then return -1 end
        if redis.call('SET', prefix .. 'sub:' .. id, ARGV[4], 'NX') == false then return 0 end
        redis.call('ZADD', prefix .. 'subs:project:' .. project, 0, id)
        redis.call('SADD', prefix .. 'subs:all', id)
        local version = redis.call('INCR', prefix .. 'subs:version')
        redis.call('PUBLISH', prefix .. 'subs:changed', version .. ' ' .. id .. ' ' .. incarnation(prefix, ARGV[6]))
        return version
        """#)

    /// ARGV[5]: the record as it was read; -2 when it is no longer that (changed meanwhile).
    private static let update = withIncarnation(
        #"""
        local prefix, id, project = ARGV[1], ARGV[2], ARGV[3]
        if redis.call('ZSCORE', prefix .. 'subs:project:' .. project, id) == false then return 0 end
        if redis.call('GET', prefix .. 'sub:' .. id) ~= ARGV[5] then return -2 end
        redis.call('SET', prefix .. 'sub:' .. id, ARGV[4])
        local version = redis.call('INCR', prefix .. 'subs:version')
        redis.call('PUBLISH', prefix .. 'subs:changed', version .. ' ' .. id .. ' ' .. incarnation(prefix, ARGV[6]))
        return version
        """#)

    private static let delete = withIncarnation(
        #"""
        local prefix, id, project = ARGV[1], ARGV[2], ARGV[3]
        if redis.call('ZREM', prefix .. 'subs:project:' .. project, id) == 0 then return 0 end
        redis.call('DEL', prefix .. 'sub:' .. id)
        redis.call('SREM', prefix .. 'subs:all', id)
        local version = redis.call('INCR', prefix .. 'subs:version')
        redis.call('PUBLISH', prefix .. 'subs:changed', version .. ' ' .. id .. ' ' .. incarnation(prefix, ARGV[4]))
        return version
        """#)

    /// Version, incarnation and every record, read atomically.
    private static let snapshot = withIncarnation(
        #"""
        local prefix = ARGV[1]
        local ids = redis.call('SMEMBERS', prefix .. 'subs:all')
        local out = { redis.call('GET', prefix .. 'subs:version') or '0', incarnation(prefix, ARGV[2]) }
        for i = 1, #ids, 1000 do
          local keys = {}
          for j = i, math.min(i + 999, #ids) do keys[#keys + 1] = prefix .. 'sub:' .. ids[j] end
          local values = redis.call('MGET', unpack(keys))
          for k = 1, #keys do
            if values[k] then
              out[#out + 1] = ids[i + k - 1]
              out[#out + 1] = values[k]
            end
          end
        end
        return out
        """#)

    // MARK: CRUD

    /// Validates and stores a new subscription.
    /// - Parameter quota: the most subscriptions its project may have (nil: no limit); checked
    ///   atomically with the write, so concurrent creates on several nodes cannot pass it.
    /// - Throws: `SubscriptionValidationError` naming the bad field; `SubscriptionQuotaExceeded`;
    ///   `CoordinationError` when Redis fails or the id exists already.
    @discardableResult
    public func create(_ subscription: Subscription, quota: Int? = nil) async throws -> Subscription {
        try subscription.validate()
        let version = try await redis.evalSHA(
            Self.create,
            arguments: [
                prefix, subscription.id, subscription.project, try encode(subscription), quota ?? 0,
                Self.newIncarnation(),
            ])
        if version.integer == -1 { throw SubscriptionQuotaExceeded(project: subscription.project, quota: quota ?? 0) }
        guard (version.integer ?? 0) > 0 else {
            throw CoordinationError(.serverError, "subscription \(subscription.id) exists already")
        }
        return subscription
    }

    /// How many subscriptions a project has.
    public func count(project: String) async throws -> Int {
        Int(try await redis.send("ZCARD", prefix + "subs:project:" + project).integer ?? 0)
    }

    /// The subscription with `id`, if it exists and (when `project` is given) belongs to that project.
    public func get(id: String, project: String?) async throws -> Subscription? {
        guard let bytes = try await redis.send("GET", prefix + "sub:" + id).bytes else { return nil }
        let subscription = try decode(bytes)
        // A record written around the API under another subscription's key is not that one.
        guard subscription.id == id else {
            logger.error(
                "skipping a subscription record whose id differs from its key",
                metadata: [LogKey.subscription: "\(id)", LogKey.registryRecordId: "\(subscription.id)"])
            return nil
        }
        if let project, subscription.project != project { return nil }
        return subscription
    }

    /// One page of a project's subscriptions, ordered by id.
    /// - Parameters:
    ///   - limit: 1 to 1000.
    ///   - marker: the last id of the previous page.
    /// - Returns: the page and the marker of the next one (`nil` on the last page).
    public func list(
        project: String, limit: Int = 100, marker: String? = nil
    ) async throws -> (subscriptions: [Subscription], next: String?) {
        guard (1...1000).contains(limit) else {
            throw SubscriptionValidationError(field: "limit", message: "\(limit) must be between 1 and 1000")
        }
        let start = marker.map { "(" + $0 } ?? "-"
        let ids =
            try await redis.send("ZRANGEBYLEX", prefix + "subs:project:" + project, start, "+", "LIMIT", 0, limit + 1)
            .array?.compactMap(\.string) ?? []
        let page = Array(ids.prefix(limit))
        guard !page.isEmpty else { return ([], nil) }
        let values = try await redis.send(RedisCommand(["MGET"] + page.map { prefix + "sub:" + $0 })).array ?? []
        let subscriptions = try values.compactMap { try $0.bytes.map(decode) }
        return (subscriptions, ids.count > limit ? page.last : nil)
    }

    /// Replaces a subscription of `changed.project` with `changed`, unless it is no longer
    /// `original` (the record the change was made from): two changes made at once from the same
    /// record never lose one of them; the second is told to read the record again.
    /// - Parameters:
    ///   - changed: the new record (its `updatedAt` is set here).
    ///   - original: the record as read before the change.
    /// - Returns: `.updated` with the stored record; `.missing` when that project has no such id;
    ///   `.changedMeanwhile` when the stored record differs from `original`.
    /// - Throws: `SubscriptionValidationError` naming the bad field.
    public func update(_ changed: Subscription, from original: Subscription) async throws -> RegistryUpdateOutcome {
        var updated = changed
        updated.updatedAt = Date().timeIntervalSince1970
        try updated.validate()
        guard changed.id == original.id, changed.project == original.project else { return .changedMeanwhile }
        // The comparison is of what is stored, byte for byte, in the script; the record read here
        // is only checked to be `original` (stored by this or an older Herald, its bytes may not
        // be what encoding `original` would give).
        guard let stored = try await redis.send("GET", prefix + "sub:" + changed.id).bytes else { return .missing }
        let current = try? decode(stored)
        if let current, current.project != changed.project { return .missing }
        guard current == original else { return .changedMeanwhile }
        let version = try await redis.evalSHA(
            Self.update,
            arguments: [prefix, updated.id, updated.project, try encode(updated), stored, Self.newIncarnation()])
        switch version.integer ?? 0 {
        case -2: return .changedMeanwhile
        case ...0: return .missing
        default: return .updated(updated)
        }
    }

    /// Deletes a subscription of `project`; false when that project has no such id.
    @discardableResult
    public func delete(id: String, project: String) async throws -> Bool {
        let version = try await redis.evalSHA(Self.delete, arguments: [prefix, id, project, Self.newIncarnation()])
        return (version.integer ?? 0) > 0
    }

    public func version() async throws -> Int64 {
        try await redis.send("GET", prefix + "subs:version").integer ?? 0
    }

    /// The version and the incarnation (nil: no change was made to this registry yet, or it was lost).
    func position() async throws -> (version: Int64, incarnation: String?) {
        let reply = try await redis.send("MGET", prefix + "subs:version", prefix + "subs:incarnation")
        let values = reply.array ?? []
        return (values.first?.integer ?? 0, values.dropFirst().first?.string)
    }

    public func snapshot() async throws -> RegistrySnapshot {
        let whole = try await storedRecords()
        let subscriptions = Array(RegistryUpdate.decoding(whole.records, logger: logger))
        return RegistrySnapshot(version: whole.version, subscriptions: subscriptions.sorted { $0.id < $1.id })
    }

    /// A new registry's incarnation, offered to the scripts (they keep the one they find).
    private static func newIncarnation() -> String { UUID().uuidString.lowercased() }

    /// The version, the incarnation and every stored record with its key's id, as stored
    /// (JSON), read atomically by one script.
    func storedRecords() async throws -> (version: Int64, incarnation: String, records: [StoredSubscription]) {
        let reply = try await redis.evalSHA(Self.snapshot, arguments: [prefix, Self.newIncarnation()])
        guard let items = reply.array, let version = items.first?.integer,
            let incarnation = items.dropFirst().first?.string
        else {
            throw CoordinationError(.unexpectedReply, "the snapshot script answered \(reply)")
        }
        let pairs = items.dropFirst(2)
        var records: [StoredSubscription] = []
        records.reserveCapacity(pairs.count / 2)
        var index = pairs.startIndex
        while index + 1 < pairs.endIndex {
            if let id = pairs[index].string, let bytes = pairs[index + 1].bytes {
                records.append(StoredSubscription(id: id, bytes: bytes))
            }
            index += 2
        }
        return (version, incarnation, records)
    }

    // MARK: Watching

    /// The whole registry now, then what changed after every change. A change notice
    /// (`<version> <id>`, pub/sub) that follows the version held is passed on by reading that one
    /// record; a gap in the versions, a reconnect, or a version seen to differ on the `poll` (a
    /// lost notice costs at most one poll) reads the whole registry again. Updates the consumer
    /// has not taken yet are merged, so a slow consumer gets one update with every change since
    /// it last looked. The watch keeps no subscriptions of its own. Ends when the consumer stops
    /// iterating.
    /// - Parameters:
    ///   - poll: how often the version is read, the safety net for lost notices.
    ///   - clock: what the poll is timed by (a manual clock in tests).
    public func watch(poll: Duration = .seconds(1), clock: ElapsedClock = .continuous) -> RegistryWatch {
        let pending = RegistryWatch.Pending()
        let (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let (changes, changed) = AsyncStream.makeStream(
            of: RegistryChange.self, bufferingPolicy: .bufferingNewest(1024))
        let notices = subscriber.subscribe(to: [prefix + "subs:changed"])
        // The watch's three tasks are cancelled together by `stop()` below, when its consumer goes.
        let listener = Task {
            for await event in notices {
                switch event {
                case .message(_, let payload): changed.yield(RegistryChange(payload) ?? .resync)
                case .subscribed(reconnected: true): changed.yield(.resync)
                case .subscribed(reconnected: false): break
                }
            }
        }
        let poller = Task {
            while !Task.isCancelled {
                try? await clock.sleep(for: poll)
                changed.yield(.poll)
            }
        }
        let loop = Task {
            var version: Int64 = -1
            var incarnation: String?
            var needsResync = true
            for await change in changes {
                if Task.isCancelled { break }
                do {
                    // A notice of another incarnation (or of an older Herald's, without one) is
                    // followed only by a whole read.
                    if case .notice(let next, let id, let of) = change, !needsResync, of == nil || of == incarnation {
                        if version != .max, next == version + 1 {
                            let record = try await get(id: id, project: nil)
                            version = next
                            pending.merge(RegistryUpdate(version: next, changed: [id: record]))
                            wake.yield()
                            continue
                        }
                        if next <= version { continue }
                    }
                    if case .poll = change, !needsResync, try await position() == (version, incarnation) { continue }
                    let whole = try await storedRecords()
                    // The version only grows, and the incarnation changes only when its key went:
                    // either way Redis lost the registry's changes up to the version held.
                    let lost =
                        version > 0 && (whole.version < version || whole.incarnation != incarnation)
                        ? version : nil
                    version = whole.version
                    incarnation = whole.incarnation
                    needsResync = false
                    pending.merge(
                        RegistryUpdate(version: whole.version, all: whole.records, changed: [:], lostVersion: lost))
                    wake.yield()
                } catch {
                    needsResync = true
                    logger.warning("reading the registry failed; retrying", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
        // The whole registry at once, not after the first poll.
        changed.yield(.resync)
        @Sendable func stop() {
            loop.cancel()
            poller.cancel()
            listener.cancel()
            changed.finish()
        }
        wake.onTermination = { _ in stop() }
        // The loop keeps the wake stream alive, so its end alone would never come: the watch
        // stops when its consumer's task is cancelled or when the sequence and its iterator go.
        return RegistryWatch(wakes: wakes, pending: pending, lifetime: RegistryWatch.Lifetime(stop: stop))
    }

    private func encode(_ subscription: Subscription) throws -> String {
        String(decoding: try JSONEncoder().encode(subscription), as: UTF8.self)
    }

    private func decode(_ bytes: [UInt8]) throws -> Subscription {
        try JSONDecoder().decode(Subscription.self, from: Data(bytes))
    }
}

/// What the registry watch reacts to.
enum RegistryChange: Sendable {
    /// A change notice: the version it made, the subscription it touched and the registry's
    /// incarnation (nil from a Herald older than incarnations).
    case notice(Int64, String, incarnation: String?)
    /// Time to compare versions (a notice may have been lost).
    case poll
    /// Read everything again (a reconnect, an unreadable notice).
    case resync

    init?(_ payload: [UInt8]) {
        let parts = String(decoding: payload, as: UTF8.self).split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let version = Int64(parts[0]) else { return nil }
        self = .notice(version, String(parts[1]), incarnation: parts.count > 2 ? String(parts[2]) : nil)
    }
}

/// One subscription as Redis stores it: its key's id and its JSON.
public struct StoredSubscription: Sendable {
    public var id: String
    public var bytes: [UInt8]

    public init(id: String, bytes: [UInt8]) {
        self.id = id
        self.bytes = bytes
    }
}

/// What a registry watcher learns at once: the whole registry, or the subscriptions that changed.
public struct RegistryUpdate: Sendable {
    /// The registry's version after these changes.
    public var version: Int64
    /// The whole registry as stored (a first read, or a read again after a gap): whatever the
    /// watcher held before is gone. Records, not subscriptions, so that the watcher decodes
    /// them one at a time (`subscriptions`) and never holds them all decoded.
    public var all: [StoredSubscription]?
    /// By id: the subscription as it is now, nil when it was deleted; after `all`, these win.
    public var changed: [String: Subscription?]
    /// With `all`: the version the watch had reached when it found the registry at a lower one
    /// (the version only ever grows). Redis lost the registry's changes up to it: a replica that
    /// had not synced was promoted, the keys were flushed or deleted. `all` is what is left.
    public var lostVersion: Int64?

    public init(
        version: Int64, all: [StoredSubscription]? = nil, changed: [String: Subscription?], lostVersion: Int64? = nil
    ) {
        self.version = version
        self.all = all
        self.changed = changed
        self.lostVersion = lostVersion
    }

    /// Whether this is the whole registry.
    public var replacesAll: Bool { all != nil }

    /// With `all`: every subscription, decoded one at a time as the sequence is read, the
    /// changes applied. Unreadable records are skipped and logged.
    public func subscriptions(logger: Logger) -> some Sequence<Subscription> {
        let changed = changed
        let kept = Self.decoding(all ?? [], logger: logger).filter { changed[$0.id] == nil }
        return [AnySequence(kept), AnySequence(changed.values.lazy.compactMap { $0 })].lazy.joined()
    }

    /// Records decoded one at a time; one unreadable record (or one whose id is not its key's)
    /// must not take the others down with it.
    static func decoding(
        _ records: [StoredSubscription], logger: Logger
    ) -> LazyMapSequence<
        LazyFilterSequence<LazyMapSequence<[StoredSubscription], Subscription?>>, Subscription
    > {
        records.lazy.compactMap { record -> Subscription? in
            do {
                let subscription = try JSONDecoder().decode(Subscription.self, from: Data(record.bytes))
                guard subscription.id == record.id else {
                    logger.error(
                        "skipping a subscription record whose id differs from its key",
                        metadata: [LogKey.subscription: "\(record.id)", LogKey.registryRecordId: "\(subscription.id)"])
                    return nil
                }
                return subscription
            } catch {
                logger.error(
                    "skipping an unreadable subscription record",
                    metadata: [LogKey.subscription: "\(record.id)", LogKey.error: "\(error)"])
                return nil
            }
        }
    }

    /// This update followed by `later`, as one.
    mutating func merge(_ later: RegistryUpdate) {
        if later.replacesAll {
            // A loss the consumer has not been told of yet is not forgotten by a later read.
            let lost = lostVersion ?? later.lostVersion
            self = later
            lostVersion = lost
            return
        }
        version = later.version
        changed.merge(later.changed) { $1 }
    }
}

/// The updates of `SubscriptionRegistry.watch`: at most one waits, with every change merged into
/// it. For one consumer.
public struct RegistryWatch: AsyncSequence, Sendable {
    /// The update the consumer has not taken yet.
    final class Pending: Sendable {
        private let update = Mutex<RegistryUpdate?>(nil)

        func merge(_ later: RegistryUpdate) {
            update.withLock { update in
                guard var current = update.take() else {
                    update = later
                    return
                }
                current.merge(later)
                update = current
            }
        }

        func take() -> RegistryUpdate? {
            update.withLock { update in
                defer { update = nil }
                return update
            }
        }
    }

    /// Stops the watch's tasks when the last copy of the sequence or its iterator goes.
    final class Lifetime: Sendable {
        let stop: @Sendable () -> Void

        init(stop: @escaping @Sendable () -> Void) { self.stop = stop }

        deinit { stop() }
    }

    let wakes: AsyncStream<Void>
    let pending: Pending
    let lifetime: Lifetime

    /// One consumer: iterate it once (a second iterator would share the first one's updates).
    public struct AsyncIterator: AsyncIteratorProtocol {
        var wakes: AsyncStream<Void>.AsyncIterator
        let pending: Pending
        let lifetime: Lifetime

        public mutating func next() async -> RegistryUpdate? {
            while true {
                if let update = pending.take() { return update }
                guard await wakes.next() != nil else { return nil }
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(wakes: wakes.makeAsyncIterator(), pending: pending, lifetime: lifetime)
    }
}

/// A project has as many subscriptions as its quota allows.
public struct SubscriptionQuotaExceeded: Error, CustomStringConvertible, Sendable {
    public var project: String
    public var quota: Int

    public var description: String {
        "project \(project) has \(quota) subscriptions, its quota (HERALD_QUOTA_SUBSCRIPTIONS); delete one first"
    }
}
