/// The cluster's record of parked deliveries, in Redis: which subscriptions have messages
/// parked in their broker queue, how many, since when, who is retrying them and when next.
///
/// A subscription is parked while its record exists. Messages are counted *before* they are
/// published into the parking queue (so the record exists before they are there) and uncounted
/// once they left it; the record goes only when the node retrying the subscription has seen its
/// queue empty with nothing counted (`observeEmpty`): the queue itself, not the count, decides
/// that nothing waits any more. Only then may a node deliver that subscription's new messages
/// directly again without overtaking parked ones (docs/pipeline.md, "Outages").
///
/// Nodes are named here by their process identity (`<node>#<incarnation>`, the coordinator's
/// owner), so that what a dead process left behind is known as such: its `alive:<owner>` key
/// (the coordinator's, a 1.5 s TTL) stays missing for 10 s (`graceMilliseconds`; one lapse of
/// a live process is not its death). A count it reserved and never published, a `closing` it
/// set and a claim it held then stop holding the subscription; so does a reservation of a live
/// process that no confirm followed for 2 minutes.
///
/// Keys (under the prefix): `park:<subscription>` (hash: count, project, since, attempts, next,
/// error, claimed, bytes, empty_since, closing, `pending:<owner>`: messages that owner counted
/// and has not yet seen confirmed by the broker, `pending-at:<owner>`: its latest reservation,
/// `gone:<owner>`: when its `alive:` key was first seen missing), `park-due` (sorted set: subscription by its next attempt,
/// Redis time in ms), `park-projects` and `park-project-bytes` (hash: project → messages and
/// bytes parked, for the per-project bounds),
/// `park-failing:<subscription>` (a lane's recent failure, expiring).
public final class ParkingLedger: Sendable {
    private let redis: RedisClient
    private let prefix: String

    public init(redis: RedisClient, keyPrefix: String = "herald:") {
        self.redis = redis
        self.prefix = keyPrefix
    }

    /// What `reserve` answered.
    public enum Reservation: Sendable, Equatable {
        /// Counted; `at` is Redis' time (ms), the messages' parked-at.
        case reserved(at: Int64)
        /// The project's parked messages (or bytes) would exceed its share.
        case projectFull(parked: Int)
        case projectBytesFull(parkedBytes: Int)
        /// Every project's parked bytes together reached the cluster's bound.
        case clusterBytesFull(parkedBytes: Int)
        /// The subscription's parked messages would exceed its queue's bound.
        case subscriptionFull(parked: Int)
        /// Its retrier has caught up and is emptying the queue (`close`): new messages wait for
        /// the unparking and then go directly, instead of joining a queue that must end.
        case closing
        /// Asked only to queue behind parked messages (`onlyIfParked`), and none are parked: the
        /// subscription was unparked; its messages go directly.
        case notParked
    }

    /// Redis time in ms, as every script reads it.
    private static let clock = #"""
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        """#

    /// Whether a process named in a record is gone: its `alive:` key missing, and missing when
    /// looked at `grace` ms before too (a mark `gone:<owner>` in the record remembers the first
    /// time). The coordinator writes the key again on its next beat, so one lapse of a live
    /// process (a slow beat, a Redis failover) is not taken for its death.
    private static let gone = #"""
        local function gone(p, key, owner, now, grace)
          local mark = 'gone:' .. owner
          if redis.call('EXISTS', p .. 'alive:' .. owner) == 1 then
            redis.call('HDEL', key, mark)
            return false
          end
          local since = tonumber(redis.call('HGET', key, mark) or '-1')
          if since < 0 then
            if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, mark, now) end
            return false
          end
          return now - since >= grace
        end
        """#

    /// How long a process' `alive:` key must stay missing before what it left in a record is
    /// taken as a dead process' (ms): twice the coordinator's member deadline.
    static let graceMilliseconds = 10_000

    /// A reservation not confirmed within this long (ms) is stale, whoever made it: its publish
    /// has long failed or ended, and the confirm or unreserve that should have followed was lost.
    static let staleReservationMilliseconds = 120_000

    /// Adds `delta` to a project's parked bytes (never below zero) and the same change to every
    /// project's together (`park-bytes-total`, which `HERALD_PARKING_MAX_BYTES` bounds).
    private static let parkedBytes = #"""
        local function parkedBytes(p, project, delta)
          if delta == 0 then return end
          local key = p .. 'park-project-bytes'
          local before = tonumber(redis.call('HGET', key, project) or '0') or 0
          local after = before + delta
          if after <= 0 then
            redis.call('HDEL', key, project)
            after = 0
          else
            redis.call('HSET', key, project, string.format('%d', after))
          end
          local total = (tonumber(redis.call('GET', p .. 'park-bytes-total') or '0') or 0) + after - before
          if total <= 0 then
            redis.call('DEL', p .. 'park-bytes-total')
          else
            redis.call('SET', p .. 'park-bytes-total', string.format('%d', total))
          end
        end
        """#

    /// Takes a subscription's record out with its share of the project's counters.
    private static let drop =
        parkedBytes + "\n" + #"""
            local function drop(p, sub, key)
              local project = redis.call('HGET', key, 'project')
              if project then
                local count = tonumber(redis.call('HGET', key, 'count') or '0')
                local bytes = tonumber(redis.call('HGET', key, 'bytes') or '0')
                if count > 0 and redis.call('HINCRBY', p .. 'park-projects', project, -count) <= 0 then redis.call('HDEL', p .. 'park-projects', project) end
                if bytes > 0 then parkedBytes(p, project, -bytes) end
              end
              redis.call('DEL', key)
              redis.call('ZREM', p .. 'park-due', sub)
            end
            """#

    private static let reserve = RedisScript(
        clock + "\n" + gone + "\n" + parkedBytes + "\n" + #"""
            local p, sub, project, n, pmax, smax, delay, err, bytes, bmax, onlyIfParked, owner, grace = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11], ARGV[12], tonumber(ARGV[13])
            local cmax = tonumber(ARGV[14] or '0')
            local key = p .. 'park:' .. sub
            if onlyIfParked == '1' and redis.call('EXISTS', key) == 0 then return {-5, 0} end
            local used = tonumber(redis.call('HGET', p .. 'park-projects', project) or '0')
            if used + n > pmax then return {-1, used} end
            local usedBytes = tonumber(redis.call('HGET', p .. 'park-project-bytes', project) or '0')
            if usedBytes + bytes > bmax then return {-3, usedBytes} end
            if cmax > 0 then
              -- Every project's together: many projects of one tenant must not fill the shared broker.
              local total = tonumber(redis.call('GET', p .. 'park-bytes-total') or '0') or 0
              if total + bytes > cmax then return {-6, total} end
            end
            local count = tonumber(redis.call('HGET', key, 'count') or '0')
            if count + n > smax then return {-2, count} end
            if redis.call('HGET', key, 'closing') == '1' then
              -- Closed by a claimer still alive: wait for it. Closed by one that died: open again.
              local claimer = redis.call('HGET', key, 'claimed') or ''
              if claimer ~= '' and not gone(p, key, claimer, now, grace) then return {-4, 0} end
              redis.call('HDEL', key, 'closing')
            end
            if redis.call('EXISTS', key) == 0 then
              redis.call('HSET', key, 'project', project, 'since', now, 'attempts', 0, 'next', now + delay, 'error', err, 'count', 0, 'bytes', 0, 'claimed', '')
              redis.call('ZADD', p .. 'park-due', now + delay, sub)
            end
            redis.call('HDEL', key, 'empty_since')
            redis.call('HINCRBY', p .. 'park-projects', project, n)
            parkedBytes(p, project, bytes)
            redis.call('HINCRBY', key, 'bytes', bytes)
            redis.call('HINCRBY', key, 'count', n)
            if owner ~= '' then
              redis.call('HINCRBY', key, 'pending:' .. owner, n)
              redis.call('HSET', key, 'pending-at:' .. owner, now)
            end
            return {0, now}
            """#)

    /// Counts `count` messages (`bytes` in all) of a subscription as parked, before they are
    /// published. A subscription stays parked (its record exists) until a drainer has seen its
    /// queue empty (`observeEmpty`), whatever the count says: the count bounds and shows.
    /// - Parameters:
    ///   - delay: when a subscription that was not parked should first be retried.
    ///   - error: why (shown in `herald status` and the API).
    ///   - owner: the process counting them (`<node>#<incarnation>`); its reservation is pending
    ///     until it calls `confirm` or `unreserve`, and is dropped if it dies before.
    /// - Throws: `CoordinationError` when Redis cannot be asked.
    public func reserve(
        subscription: String, project: String, count: Int, bytes: Int = 0, projectMax: Int,
        projectMaxBytes: Int = Int.max / 2, clusterMaxBytes: Int = 0, subscriptionMax: Int,
        delay: Duration, error: String, onlyIfParked: Bool = false, owner: String = ""
    ) async throws -> Reservation {
        let reply = try await redis.evalSHA(
            Self.reserve,
            arguments: [
                prefix, subscription, project, count, projectMax, subscriptionMax, Int(max(0, delay.milliseconds)),
                String(error.prefix(300)), bytes, projectMaxBytes,
                onlyIfParked ? "1" : "0", owner, Self.graceMilliseconds, clusterMaxBytes,
            ])
        guard let items = reply.array, items.count == 2, let first = items[0].integer, let second = items[1].integer
        else {
            throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)")
        }
        switch first {
        case -1: return .projectFull(parked: Int(second))
        case -2: return .subscriptionFull(parked: Int(second))
        case -3: return .projectBytesFull(parkedBytes: Int(second))
        case -4: return .closing
        case -5: return .notParked
        case -6: return .clusterBytesFull(parkedBytes: Int(second))
        default: return .reserved(at: second)
        }
    }

    private static let confirm = RedisScript(
        clock + "\n" + parkedBytes + "\n" + #"""
            local p, sub, project, n, bytes, owner = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
            local key = p .. 'park:' .. sub
            if redis.call('EXISTS', key) == 1 then
              if owner ~= '' and redis.call('HEXISTS', key, 'pending:' .. owner) == 1 then
                if redis.call('HINCRBY', key, 'pending:' .. owner, -n) <= 0 then redis.call('HDEL', key, 'pending:' .. owner, 'pending-at:' .. owner) end
              end
              return 0
            end
            redis.call('HSET', key, 'project', project, 'since', now, 'attempts', 0, 'next', now, 'error', 'parked while its record was gone', 'count', n, 'bytes', bytes, 'claimed', '')
            redis.call('HINCRBY', p .. 'park-projects', project, n)
            parkedBytes(p, project, bytes)
            redis.call('ZADD', p .. 'park-due', now, sub)
            return 1
            """#)

    /// After the broker confirmed parked messages: they are pending no more (they are in the
    /// queue, where the count's drainer will find them). When the subscription's record went
    /// meanwhile (a drainer saw the queue empty before they arrived, or dropped the count of an
    /// owner it took for dead), it is made again, due now, so that the messages are never left
    /// in a queue nobody retries. Answers whether it had to be made.
    @discardableResult
    public func confirm(
        subscription: String, project: String, count: Int, bytes: Int = 0, owner: String = ""
    ) async throws -> Bool {
        try await redis.evalSHA(Self.confirm, arguments: [prefix, subscription, project, count, bytes, owner]).integer
            == 1
    }

    private static let unreserve = RedisScript(
        #"""
        local p, sub, owner, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
        local key = p .. 'park:' .. sub
        if owner ~= '' and redis.call('HEXISTS', key, 'pending:' .. owner) == 1 then
          if redis.call('HINCRBY', key, 'pending:' .. owner, -n) <= 0 then redis.call('HDEL', key, 'pending:' .. owner, 'pending-at:' .. owner) end
        end
        return 1
        """#)

    /// The broker did not take messages counted by `reserve`: they are uncounted and pending no
    /// more (the lane still holds them and parks them again). Any that reached the queue all the
    /// same are counted again by the drainer that finds them (`renew(atLeast:)`): a count too low
    /// corrects itself, a count too high would hold the subscription parked.
    public func unreserve(subscription: String, count: Int, bytes: Int = 0, owner: String = "") async throws {
        _ = try await redis.evalSHA(Self.unreserve, arguments: [prefix, subscription, owner, count])
        _ = try await release(subscription: subscription, count: count, bytes: bytes)
    }

    private static let release = RedisScript(
        parkedBytes + "\n" + #"""
            local p, sub, n, bytes = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
            local key = p .. 'park:' .. sub
            local project = redis.call('HGET', key, 'project')
            if not project then return 0 end
            local count = tonumber(redis.call('HGET', key, 'count') or '0')
            local held = tonumber(redis.call('HGET', key, 'bytes') or '0')
            if n > count then n = count end
            if bytes > held then bytes = held end
            if n > 0 and redis.call('HINCRBY', p .. 'park-projects', project, -n) <= 0 then redis.call('HDEL', p .. 'park-projects', project) end
            if bytes > 0 then parkedBytes(p, project, -bytes) end
            redis.call('HSET', key, 'count', count - n, 'bytes', held - bytes)
            return count - n
            """#)

    /// Uncounts messages that left parking (delivered, dead-lettered, dropped). The record stays
    /// (the subscription stays parked) until a drainer sees the queue empty. Answers how many
    /// are still counted.
    @discardableResult
    public func release(subscription: String, count: Int, bytes: Int = 0) async throws -> Int {
        let reply = try await redis.evalSHA(Self.release, arguments: [prefix, subscription, count, bytes])
        guard let left = reply.integer else {
            throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)")
        }
        return Int(left)
    }

    private static let claim = RedisScript(
        clock + "\n" + gone + "\n" + #"""
            local p, node, lease, limit, grace = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
            -- Fair between projects: of the first 200 due (oldest first), one per project in turn, so a
            -- project with many parked subscriptions cannot take every retry slot while others wait. A
            -- bounded window: a project with 200 or more due before any other's still fills a claim.
            local candidates = redis.call('ZRANGEBYSCORE', p .. 'park-due', '-inf', now, 'LIMIT', 0, 200)
            local byProject, projects = {}, {}
            for _, sub in ipairs(candidates) do
              local project = redis.call('HGET', p .. 'park:' .. sub, 'project') or ''
              if byProject[project] == nil then byProject[project] = {}; table.insert(projects, project) end
              table.insert(byProject[project], sub)
            end
            local due = {}
            local round = 1
            while #due < limit do
              local took = false
              for _, project in ipairs(projects) do
                local sub = byProject[project][round]
                if sub and #due < limit then table.insert(due, sub); took = true end
              end
              if not took then break end
              round = round + 1
            end
            -- Claims whose holder died: taken at once rather than when their lease runs out (the
            -- soonest 100 of the claimed or waiting ones are looked at, a bounded scan).
            if #due < limit then
              local later = redis.call('ZRANGEBYSCORE', p .. 'park-due', '(' .. now, '+inf', 'LIMIT', 0, 100)
              for _, sub in ipairs(later) do
                if #due >= limit then break end
                local holder = redis.call('HGET', p .. 'park:' .. sub, 'claimed') or ''
                if holder ~= '' and holder ~= node and gone(p, p .. 'park:' .. sub, holder, now, grace) then table.insert(due, sub) end
              end
            end
            for _, sub in ipairs(due) do
              redis.call('ZADD', p .. 'park-due', 'XX', now + lease, sub)
              redis.call('HSET', p .. 'park:' .. sub, 'claimed', node)
            end
            return due
            """#)

    /// Takes up to `limit` subscriptions whose next attempt is due (one per project in turn, oldest
    /// first, of the first 200 due), or whose claim is held by a process that died (its `alive:`
    /// key went), for `lease`: no other node takes them until the
    /// lease passes or the claimer dies; only the claimer may reschedule them meanwhile.
    public func claimDue(node: String, lease: Duration, limit: Int) async throws -> [String] {
        let reply = try await redis.evalSHA(
            Self.claim, arguments: [prefix, node, Int(lease.milliseconds), limit, Self.graceMilliseconds])
        return reply.array?.compactMap(\.string) ?? []
    }

    /// Reschedules a claimed subscription, only for the node holding the claim (a drainer whose
    /// claim ran out and was taken changes nothing). mode: failed, finished or renew.
    private static let schedule = RedisScript(
        clock + "\n" + #"""
            local p, sub, node, delay, mode, err, since, atLeast = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
            local key = p .. 'park:' .. sub
            if redis.call('EXISTS', key) == 0 then return {-1, now} end
            local claimed = redis.call('HGET', key, 'claimed') or ''
            if claimed ~= node and claimed ~= '' then return {-2, now} end
            if mode == 'failed' then
              redis.call('HINCRBY', key, 'attempts', 1)
              redis.call('HSET', key, 'error', err)
            end
            if mode ~= 'renew' then redis.call('HDEL', key, 'closing') end
            if since > 0 then redis.call('HSET', key, 'since', since) end
            -- The drainer saw messages in the queue: an earlier sight of it empty counts no more.
            if atLeast > 0 then redis.call('HDEL', key, 'empty_since') end
            local count = tonumber(redis.call('HGET', key, 'count') or '0')
            if atLeast > count then
              local project = redis.call('HGET', key, 'project')
              redis.call('HINCRBY', p .. 'park-projects', project, atLeast - count)
              redis.call('HSET', key, 'count', atLeast)
            end
            redis.call('HSET', key, 'next', now + delay, 'claimed', mode == 'renew' and node or '')
            redis.call('ZADD', p .. 'park-due', 'XX', now + delay, sub)
            return {tonumber(redis.call('HGET', key, 'attempts') or '0'), now}
            """#)

    private func schedule(
        _ subscription: String, node: String, delay: Duration, mode: String, error: String = "", since: Int64 = 0,
        atLeast: Int = 0
    ) async throws -> Int {
        let reply = try await redis.evalSHA(
            Self.schedule,
            arguments: [
                prefix, subscription, node, Int(max(0, delay.milliseconds)), mode, String(error.prefix(300)), since,
                atLeast,
            ])
        guard let items = reply.array, items.count == 2, let attempts = items[0].integer else {
            throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)")
        }
        return Int(attempts)
    }

    /// After a failed attempt: counts it, keeps the error and the oldest waiting message's parked-at
    /// (`since`, Redis ms; 0 keeps it), and sets the next attempt `delay` from now.
    /// - Returns: attempts so far (negative when this node no longer holds the claim).
    @discardableResult
    public func retryLater(
        subscription: String, node: String, delay: Duration, error: String, since: Int64 = 0
    ) async throws -> Int {
        try await schedule(subscription, node: node, delay: delay, mode: "failed", error: error, since: since)
    }

    /// A drain ended without a failure (its queue had nothing more for now, or the node stops):
    /// whatever is still there is due again after `delay`, for any node.
    public func finished(subscription: String, node: String, delay: Duration) async throws {
        _ = try await schedule(subscription, node: node, delay: delay, mode: "finished")
    }

    /// A drain at work keeps its claim for another `lease`; the count is raised to `atLeast` (the
    /// messages its queue holds) if it fell below (an ack lost with a connection counts twice).
    /// - Returns: false when this node no longer holds the claim: it must stop draining.
    public func renew(subscription: String, node: String, lease: Duration, atLeast: Int = 0) async throws -> Bool {
        try await schedule(subscription, node: node, delay: lease, mode: "renew", atLeast: atLeast) >= 0
    }

    private static let close = RedisScript(
        #"""
        local p, sub, node = ARGV[1], ARGV[2], ARGV[3]
        local key = p .. 'park:' .. sub
        if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'claimed') ~= node then return 0 end
        redis.call('HSET', key, 'closing', '1')
        return 1
        """#)

    /// The claimer has caught up with a subscription's queue: from now on no new message is
    /// parked for it (`reserve` answers `.closing`), so the queue can end; the claimer empties
    /// it and `observeEmpty` unparks the subscription. A failure or the end of the drain
    /// (`retryLater`, `finished`) opens it again. Answers whether this node holds the claim.
    @discardableResult
    public func close(subscription: String, node: String) async throws -> Bool {
        try await redis.evalSHA(Self.close, arguments: [prefix, subscription, node]).integer == 1
    }

    /// What `observeEmpty` concluded.
    public enum EmptyQueue: Sendable, Equatable {
        /// Nothing counted: the subscription is parked no more.
        case unparked
        /// Messages counted but not in the queue (publishes under way, or messages a drainer has
        /// just put back): looked at again later.
        case waiting
        /// Counts that no message in the queue backs were dropped: those reserved by processes that
        /// died before publishing (at once), and any other excess over what live processes are
        /// still publishing once the queue stayed empty for the whole window (an ack whose uncount
        /// was lost). The subscription is unparked unless live publishes are still under way.
        case reconciled(count: Int)
    }

    private static let observeEmpty = RedisScript(
        clock + "\n" + drop + "\n" + gone + "\n" + #"""
            local p, sub, node, window, delay, grace, stale = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
            local key = p .. 'park:' .. sub
            if redis.call('EXISTS', key) == 0 then return {1, 0} end
            local claimed = redis.call('HGET', key, 'claimed') or ''
            if claimed ~= node and claimed ~= '' then return {2, 0} end
            local project = redis.call('HGET', key, 'project')
            local count = tonumber(redis.call('HGET', key, 'count') or '0')
            -- Reservations by processes that are gone, or that no confirm followed for long, will
            -- never be published: uncounted now.
            local fields = redis.call('HGETALL', key)
            local live, dropped = 0, 0
            for i = 1, #fields, 2 do
              local field = fields[i]
              if string.sub(field, 1, 8) == 'pending:' then
                local owner = string.sub(field, 9)
                local n = tonumber(fields[i + 1]) or 0
                local at = tonumber(redis.call('HGET', key, 'pending-at:' .. owner) or '0')
                if now - at >= stale or gone(p, key, owner, now, grace) then
                  redis.call('HDEL', key, field, 'pending-at:' .. owner, 'gone:' .. owner)
                  dropped = dropped + math.max(n, 0)
                else
                  live = live + math.max(n, 0)
                end
              end
            end
            local function trim(n)
              if n > count then n = count end
              if n <= 0 then return end
              if redis.call('HINCRBY', p .. 'park-projects', project, -n) <= 0 then redis.call('HDEL', p .. 'park-projects', project) end
              count = count - n
              redis.call('HSET', key, 'count', count)
              if count == 0 then
                local bytes = tonumber(redis.call('HGET', key, 'bytes') or '0')
                if bytes > 0 then parkedBytes(p, project, -bytes) end
                redis.call('HSET', key, 'bytes', 0)
              end
            end
            local reconciled = math.min(dropped, math.max(count, 0))
            trim(dropped)
            if count <= 0 then
              drop(p, sub, key)
              if reconciled > 0 then return {3, reconciled} end
              return {1, 0}
            end
            if count > live then
              -- More counted than live processes are publishing, and the queue is empty: an uncount
              -- lost after its ack, or messages a drainer is just putting back. After the window, dropped.
              local since = tonumber(redis.call('HGET', key, 'empty_since') or '-1')
              if since < 0 then
                redis.call('HSET', key, 'empty_since', now)
              elseif now - since >= window then
                reconciled = reconciled + count - live
                trim(count - live)
                redis.call('HDEL', key, 'empty_since')
                if count <= 0 then
                  drop(p, sub, key)
                  return {3, reconciled}
                end
              end
            else
              redis.call('HDEL', key, 'empty_since')
            end
            redis.call('HSET', key, 'next', now + delay, 'claimed', '')
            redis.call('ZADD', p .. 'park-due', 'XX', now + delay, sub)
            if reconciled > 0 then return {3, reconciled} end
            return {2, count}
            """#)

    /// The claimer saw the subscription's queue empty with no consumer on it: unparks it when
    /// nothing is counted; drops what dead processes reserved; otherwise waits (`delay`) for
    /// publishes under way, and drops any count beyond what live processes are publishing once
    /// the queue stayed empty for `window`.
    public func observeEmpty(
        subscription: String, node: String, window: Duration, delay: Duration
    ) async throws -> EmptyQueue {
        let reply = try await redis.evalSHA(
            Self.observeEmpty,
            arguments: [
                prefix, subscription, node, Int(window.milliseconds), Int(max(0, delay.milliseconds)),
                Self.graceMilliseconds, Self.staleReservationMilliseconds,
            ])
        guard let items = reply.array, items.count == 2, let code = items[0].integer, let count = items[1].integer
        else {
            throw CoordinationError(.unexpectedReply, "the parking script answered \(reply)")
        }
        switch code {
        case 1: return .unparked
        case 3: return .reconciled(count: Int(count))
        default: return .waiting
        }
    }

    private static let forget = RedisScript(
        drop + "\n" + #"""
            local p, sub = ARGV[1], ARGV[2]
            drop(p, sub, p .. 'park:' .. sub)
            redis.call('SREM', p .. 'park-queues', sub)
            return 1
            """#)

    /// Remembers that a subscription has a parking queue (`park-queues`), so that a sweep can
    /// find a queue whose record was lost (`queuesWithoutRecord`).
    public func noteQueue(subscription: String) async throws {
        _ = try await redis.send("SADD", prefix + "park-queues", subscription)
    }

    /// Forgets a parking queue that no longer exists.
    public func forgetQueue(subscription: String) async throws {
        _ = try await redis.send("SREM", prefix + "park-queues", subscription)
    }

    private static let orphans = RedisScript(
        #"""
        local p, cursor, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
        local scan = redis.call('SSCAN', p .. 'park-queues', cursor, 'COUNT', count)
        local out = {scan[1]}
        for _, sub in ipairs(scan[2]) do
          if redis.call('EXISTS', p .. 'park:' .. sub) == 0 then out[#out + 1] = sub end
        end
        return out
        """#)

    /// One step of a sweep over the subscriptions with a parking queue: those of them that have no
    /// record (parked messages may wait there that nobody would retry). Start with cursor "0"; a
    /// returned cursor "0" means the sweep went round.
    public func queuesWithoutRecord(
        cursor: String, count: Int = 100
    ) async throws -> (next: String, subscriptions: [String]) {
        let reply = try await redis.evalSHA(Self.orphans, arguments: [prefix, cursor, count])
        guard let items = reply.array, let next = items.first?.string else {
            throw CoordinationError(.unexpectedReply, "the sweep script answered \(reply)")
        }
        return (next, items.dropFirst().compactMap(\.string))
    }

    /// Forgets a subscription's parking record (its queue went with the subscription).
    public func forget(subscription: String) async throws {
        _ = try await redis.evalSHA(Self.forget, arguments: [prefix, subscription])
    }

    /// The subscriptions parked now (bounded by the number of subscriptions).
    public func parkedSubscriptions() async throws -> Set<String> {
        let reply = try await redis.send("ZRANGE", prefix + "park-due", 0, -1)
        return Set(reply.array?.compactMap(\.string) ?? [])
    }

    /// One subscription's parking, as `herald status` and the API show it.
    public struct State: Sendable, Equatable {
        public var subscription: String
        public var project: String
        public var count: Int
        /// When its oldest parked message was parked (Redis time, ms).
        public var since: Int64
        public var attempts: Int
        public var nextAttempt: Int64
        public var lastError: String
        /// The node retrying it now, if any.
        public var claimedBy: String?
    }

    /// Redis' clock, in milliseconds: what parking stamps messages with (`herald-parked-at`), so
    /// what a horizon is judged by, whatever a node's own clock says.
    public func now() async throws -> Int64 {
        let reply = try await redis.send("TIME")
        guard let parts = reply.array, parts.count == 2, let seconds = parts[0].string.flatMap({ Int64($0) }),
            let micros = parts[1].string.flatMap({ Int64($0) })
        else {
            throw CoordinationError(.unexpectedReply, "TIME answered \(reply)")
        }
        return seconds &* 1000 &+ micros / 1000
    }

    public func state(subscription: String) async throws -> State? {
        try await states(subscriptions: [subscription]).first
    }

    public func states(subscriptions: [String]) async throws -> [State] {
        guard !subscriptions.isEmpty else { return [] }
        let replies = try await redis.pipeline(subscriptions.map { RedisCommand("HGETALL", prefix + "park:" + $0) })
        return zip(subscriptions, replies).compactMap { subscription, reply in
            let fields = reply.hashFields
            guard fields["project"] != nil else { return nil }
            // Clamped: the drainer adds to them, and a corrupt value must not trap a node.
            func clamped(_ key: String, _ most: Int) -> Int { min(max(fields[key].flatMap { Int($0) } ?? 0, 0), most) }
            let count = clamped("count", 1 << 40)
            return State(
                subscription: subscription, project: fields["project"] ?? "", count: count,
                since: fields["since"].flatMap { Int64($0) } ?? 0,
                attempts: clamped("attempts", 1 << 30),
                nextAttempt: fields["next"].flatMap { Int64($0) } ?? 0,
                lastError: fields["error"] ?? "", claimedBy: fields["claimed"].flatMap { $0.isEmpty ? nil : $0 }
            )
        }
    }

    /// Every parked subscription's state, oldest parking first.
    public func allStates() async throws -> [State] {
        try await states(subscriptions: Array(parkedSubscriptions()).sorted()).sorted { $0.since < $1.since }
    }

    // MARK: Failing lanes (not parked yet)

    /// A lane's failure, kept for `ttl` (a lane that keeps failing parks its messages soon after).
    public func noteFailure(subscription: String, error: String, ttl: Duration) async throws {
        _ = try await redis.evalSHA(
            Self.noteFailure,
            arguments: [prefix + "park-failing:" + subscription, String(error.prefix(300)), Int(ttl.milliseconds)])
    }

    /// Since when (Redis time) and why, set once per failing spell (NX), in one round trip.
    private static let noteFailure = RedisScript(
        clock + "\n" + #"""
            redis.call('SET', ARGV[1], now .. ' ' .. ARGV[2], 'PX', tonumber(ARGV[3]), 'NX')
            return 1
            """#)

    public func clearFailure(subscription: String) async throws {
        _ = try await redis.send("DEL", prefix + "park-failing:" + subscription)
    }

    /// A lane's recent failure: since when (Redis time, ms) and the error.
    public func failure(subscription: String) async throws -> (since: Int64, error: String)? {
        guard let text = try await redis.send("GET", prefix + "park-failing:" + subscription).string else { return nil }
        let parts = text.split(separator: " ", maxSplits: 1)
        return (Int64(parts.first ?? "") ?? 0, parts.count > 1 ? String(parts[1]) : "")
    }
}
