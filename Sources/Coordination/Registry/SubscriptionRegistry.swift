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
/// bumped by every change, a head naming the last change, and a pub/sub notice of it.
///
/// Keys under the prefix: `sub:<id>`, `subs:project:<project>` (zset by id),
/// `subs:all` (set), `subs:version`, `subs:head` and `subs:history` (the last
/// `recentHeads` heads, scored by the version that made them); channels `subs:changes` (notices
/// with heads) and `subs:changed` (the same changes as Heralds older than heads read them).
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

    /// How many heads of past changes `subs:history` keeps. A watcher whose head is among them
    /// at its version only missed notices; one whose head is missing while its version is within
    /// the kept ones saw changes Redis lost; one older than all of them cannot be told either way.
    public static let recentHeads = 1024

    /// Each change is named by a head of its own (`subs:head`, a random id the caller gives),
    /// and its notice on `subs:changes` names the head before it too: `<version>:<previous
    /// head>:<head> <id>`. A watcher follows a notice only from the head it holds, so a history
    /// that forked (Redis lost changes and others were made) is seen even at the very version
    /// it held. The same change is published after it on `subs:changed` as `<version> <id>`,
    /// for Heralds older than heads (a rolling upgrade): they follow it by version, and a
    /// watcher with heads skips it as the change it already has. An older Herald's own changes
    /// leave the head alone.
    private static func advancingHead(_ body: String) -> RedisScript {
        RedisScript(
            """
            local function notify(prefix, version, id, head)
              local previous = redis.call('GET', prefix .. 'subs:head') or ''
              redis.call('SET', prefix .. 'subs:head', head)
              redis.call('ZADD', prefix .. 'subs:history', version, head)
              redis.call('ZREMRANGEBYRANK', prefix .. 'subs:history', 0, -\(recentHeads + 1))
              redis.call('PUBLISH', prefix .. 'subs:changes', version .. ':' .. previous .. ':' .. head .. ' ' .. id)
              redis.call('PUBLISH', prefix .. 'subs:changed', version .. ' ' .. id)
            end

            """ + body)
    }

    /// ARGV[5]: the project's quota (0: none); -1 when the project is at it, 0 when the id exists.
    /// ARGV[6] (`update`'s too, `delete`'s ARGV[4]): the change's head.
    private static let create = advancingHead(
        #"""
        local prefix, id, project, quota, total = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[7] or '0')
        if quota > 0 and redis.call('ZCARD', prefix .. 'subs:project:' .. project) >= quota then return -1 end
        if total > 0 and redis.call('SCARD', prefix .. 'subs:all') >= total then return -3 end
        if redis.call('SET', prefix .. 'sub:' .. id, ARGV[4], 'NX') == false then return 0 end
        redis.call('ZADD', prefix .. 'subs:project:' .. project, 0, id)
        redis.call('SADD', prefix .. 'subs:all', id)
        local version = redis.call('INCR', prefix .. 'subs:version')
        notify(prefix, version, id, ARGV[6])
        return version
        """#)

    /// ARGV[5]: the record as it was read; -2 when it is no longer that (changed meanwhile).
    private static let update = advancingHead(
        #"""
        local prefix, id, project = ARGV[1], ARGV[2], ARGV[3]
        if redis.call('ZSCORE', prefix .. 'subs:project:' .. project, id) == false then return 0 end
        if redis.call('GET', prefix .. 'sub:' .. id) ~= ARGV[5] then return -2 end
        redis.call('SET', prefix .. 'sub:' .. id, ARGV[4])
        local version = redis.call('INCR', prefix .. 'subs:version')
        notify(prefix, version, id, ARGV[6])
        return version
        """#)

    private static let delete = advancingHead(
        #"""
        local prefix, id, project = ARGV[1], ARGV[2], ARGV[3]
        if redis.call('ZREM', prefix .. 'subs:project:' .. project, id) == 0 then return 0 end
        -- Its counts and its last failure go with it (they were kept 30 days: a tenant creating
        -- and deleting subscriptions left one key behind each time).
        redis.call('DEL', prefix .. 'sub:' .. id, prefix .. 'stats:' .. id, prefix .. 'park-failing:' .. id)
        redis.call('SREM', prefix .. 'subs:all', id)
        local version = redis.call('INCR', prefix .. 'subs:version')
        notify(prefix, version, id, ARGV[4])
        return version
        """#)

    /// Version, head, the version that made the head, what the history says of the head ARGV[2]
    /// made at version ARGV[3] (1: it is there, 0: it should be and is not, 2: nothing to tell,
    /// it is older than the history or empty), and every record, read atomically. Writes
    /// nothing (a master refusing writes still answers).
    private static let snapshot = RedisScript(
        #"""
        local prefix, held, heldVersion = ARGV[1], ARGV[2], tonumber(ARGV[3])
        local history = prefix .. 'subs:history'
        local head = redis.call('GET', prefix .. 'subs:head') or ''
        local headVersion = 0
        if head ~= '' then headVersion = tonumber(redis.call('ZSCORE', history, head) or '0') end
        local verdict = 2
        if held ~= '' then
          local score = redis.call('ZSCORE', history, held)
          if score and tonumber(score) == heldVersion then
            verdict = 1
          else
            local oldest = redis.call('ZRANGE', history, 0, 0, 'WITHSCORES')
            if oldest[2] and heldVersion < tonumber(oldest[2]) then verdict = 2 else verdict = 0 end
          end
        end
        local ids = redis.call('SMEMBERS', prefix .. 'subs:all')
        local out = { redis.call('GET', prefix .. 'subs:version') or '0', head, headVersion, verdict }
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
    public func create(_ subscription: Subscription, quota: Int? = nil, total: Int? = nil) async throws -> Subscription
    {
        try subscription.validate()
        let version = try await redis.evalSHA(
            Self.create,
            arguments: [
                prefix, subscription.id, subscription.project, try encode(subscription), quota ?? 0,
                Self.newHead(), total ?? 0,
            ])
        if version.integer == -1 { throw SubscriptionQuotaExceeded(project: subscription.project, quota: quota ?? 0) }
        if version.integer == -3 {
            throw SubscriptionQuotaExceeded(project: subscription.project, quota: total ?? 0, cloudWide: true)
        }
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
            arguments: [prefix, updated.id, updated.project, try encode(updated), stored, Self.newHead()])
        switch version.integer ?? 0 {
        case -2: return .changedMeanwhile
        case ...0: return .missing
        default: return .updated(updated)
        }
    }

    /// Deletes a subscription of `project`; false when that project has no such id.
    @discardableResult
    public func delete(id: String, project: String) async throws -> Bool {
        let version = try await redis.evalSHA(Self.delete, arguments: [prefix, id, project, Self.newHead()])
        return (version.integer ?? 0) > 0
    }

    public func version() async throws -> Int64 {
        try await redis.send("GET", prefix + "subs:version").integer ?? 0
    }

    /// The version and the head ("" when no change made one yet).
    func position() async throws -> (version: Int64, head: String) {
        let reply = try await redis.send("MGET", prefix + "subs:version", prefix + "subs:head")
        let values = reply.array ?? []
        return (values.first?.integer ?? 0, values.dropFirst().first?.string ?? "")
    }

    public func snapshot() async throws -> RegistrySnapshot {
        let whole = try await storedRecords(held: "", heldVersion: 0)
        let subscriptions = Array(RegistryUpdate.decoding(whole.records, logger: logger))
        return RegistrySnapshot(version: whole.version, subscriptions: subscriptions.sorted { $0.id < $1.id })
    }

    /// A new change's head.
    private static func newHead() -> String { UUID().uuidString.lowercased() }

    /// The registry as one script reads it at once.
    struct StoredRegistry {
        var version: Int64
        /// The last change's head ("" when no change made one yet), and the version that made it.
        var head: String
        var headVersion: Int64
        /// What the history says of the head asked about.
        var held: HeldHead
        var records: [StoredSubscription]
    }

    /// What the registry's history says of a watcher's head.
    enum HeldHead: Int64 {
        /// Forked: the head should be in the history (its version is within it) and is not, or not
        /// at that version: Redis lost the change that made it.
        case lost = 0
        case known = 1
        /// No head asked about, or one older than the history keeps.
        case untold = 2
    }

    /// The version, the head, what the history says of `held` (made at `heldVersion`), and every
    /// stored record with its key's id, as stored (JSON), read atomically by one script.
    func storedRecords(held: String, heldVersion: Int64) async throws -> StoredRegistry {
        let reply = try await redis.evalSHA(Self.snapshot, arguments: [prefix, held, heldVersion])
        let items = reply.array ?? []
        guard items.count >= 4, let version = items[0].integer, let head = items[1].string,
            let headVersion = items[2].integer, let verdict = items[3].integer.flatMap(HeldHead.init(rawValue:))
        else {
            throw CoordinationError(.unexpectedReply, "the snapshot script answered \(String("\(reply)".prefix(200)))")
        }
        let pairs = items.dropFirst(4)
        var records: [StoredSubscription] = []
        records.reserveCapacity(pairs.count / 2)
        var index = pairs.startIndex
        while index + 1 < pairs.endIndex {
            if let id = pairs[index].string, let bytes = pairs[index + 1].bytes {
                records.append(StoredSubscription(id: id, bytes: bytes))
            }
            index += 2
        }
        return StoredRegistry(version: version, head: head, headVersion: headVersion, held: verdict, records: records)
    }

    // MARK: Watching

    /// The whole registry now, then what changed after every change. A change notice
    /// (`<version>:<previous head>:<head> <id>`, pub/sub) that follows the version and the head
    /// held is passed on by reading that one record; a gap in the versions, another history (a
    /// notice at the version held with another head), a reconnect, or a version or head seen to
    /// differ on the `poll` (a lost notice costs at most one poll) reads the whole registry
    /// again. A whole read at a lower version, or whose history does not hold the head held,
    /// reports that Redis lost changes (`RegistryUpdate.lostVersion`). Updates the consumer has
    /// not taken yet are merged, so a slow consumer gets one update with every change since it
    /// last looked. The watch keeps no subscriptions of its own. Ends when the consumer stops
    /// iterating.
    /// - Parameters:
    ///   - poll: how often the version is read, the safety net for lost notices.
    ///   - clock: what the poll is timed by (a manual clock in tests).
    public func watch(poll: Duration = .seconds(1), clock: ElapsedClock = .continuous) -> RegistryWatch {
        let pending = RegistryWatch.Pending()
        let (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let (changes, changed) = AsyncStream.makeStream(
            of: RegistryChange.self, bufferingPolicy: .bufferingNewest(1024))
        let notices = subscriber.subscribe(to: [prefix + "subs:changes", prefix + "subs:changed"])
        // The watch's three tasks are cancelled together by `stop()` below, when its consumer goes.
        let listener = Task {
            for await event in notices {
                switch event {
                case .message(_, let payload): changed.yield(RegistryChange(payload) ?? .resync)
                // The first whole read once the notices are subscribed: no change falls between.
                case .subscribed: changed.yield(.resync)
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
            var head = ""
            var headVersion: Int64 = 0
            var needsResync = true
            for await change in changes {
                if Task.isCancelled { break }
                do {
                    if case .notice(let next, let id, let heads) = change, !needsResync {
                        // An older Herald's notice (no heads) leaves the head where it is.
                        if version != .max, next == version + 1, heads == nil || heads?.previous == head {
                            let record = try await get(id: id, project: nil)
                            version = next
                            if let heads { (head, headVersion) = (heads.head, next) }
                            pending.merge(RegistryUpdate(version: next, changed: [id: record]))
                            wake.yield()
                            continue
                        }
                        // Older than the version held: read already (or a fork the poll will see).
                        if next < version || (next == version && (heads == nil || heads?.head == head)) { continue }
                    }
                    if case .poll = change, !needsResync, try await position() == (version, head) { continue }
                    let whole = try await storedRecords(held: head, heldVersion: headVersion)
                    // The version only grows, and the heads of the last changes are kept: a lower
                    // version, or a history without the head held, lost the changes up to it.
                    let lost = version > 0 && (whole.version < version || whole.held == .lost)
                    if version > 0, !head.isEmpty, whole.held == .untold {
                        logger.warning(
                            "this node fell more than \(Self.recentHeads) registry changes behind (from version \(version) to \(whole.version)); whether Redis lost any of them cannot be told",
                            metadata: [LogKey.registryVersion: "\(whole.version)"])
                    }
                    pending.merge(
                        RegistryUpdate(
                            version: whole.version, all: whole.records, changed: [:],
                            lostVersion: lost ? version : nil))
                    version = whole.version
                    (head, headVersion) = (whole.head, whole.headVersion)
                    needsResync = false
                    wake.yield()
                } catch {
                    needsResync = true
                    logger.warning("reading the registry failed; retrying", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
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
    /// A change notice: the version it made, the subscription it touched, and the heads before
    /// and after it (nil from a Herald older than heads).
    case notice(Int64, String, heads: (previous: String, head: String)?)
    /// Time to compare versions (a notice may have been lost).
    case poll
    /// Read everything again (a reconnect, an unreadable notice).
    case resync

    init?(_ payload: [UInt8]) {
        let parts = String(decoding: payload, as: UTF8.self).split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        // `<version>:<previous head>:<head>` (the previous head is empty after a registry without one).
        let position = parts[0].split(separator: ":", omittingEmptySubsequences: false)
        switch position.count {
        case 1:
            guard let version = Int64(position[0]) else { return nil }
            self = .notice(version, String(parts[1]), heads: nil)
        case 3:
            guard let version = Int64(position[0]), !position[2].isEmpty else { return nil }
            self = .notice(version, String(parts[1]), heads: (String(position[1]), String(position[2])))
        default:
            return nil
        }
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
    /// (the version only ever grows) or with a history that does not hold the last change it
    /// took in (its head). Redis lost the registry's changes up to it: a replica that had not
    /// synced was promoted, the keys were flushed or deleted. `all` is what is left.
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
    /// The bound of every project's subscriptions together, not the project's own.
    public var cloudWide = false

    public init(project: String, quota: Int, cloudWide: Bool = false) {
        self.project = project
        self.quota = quota
        self.cloudWide = cloudWide
    }

    public var description: String {
        cloudWide
            ? "the cloud holds \(quota) subscriptions, the bound of every project's together (HERALD_QUOTA_SUBSCRIPTIONS_TOTAL); ask the cloud's operator"
            : "project \(project) has \(quota) subscriptions, its quota (HERALD_QUOTA_SUBSCRIPTIONS); delete one first"
    }
}
