import Foundation
import HeraldModel
import Logging
import Metrics
import Synchronization

/// What a coordinator reports about its own acting set, stamped with wall-clock
/// seconds so an outside checker can compare nodes in different processes.
public enum ClusterObservation: Sendable, Equatable {
    case acquired(partition: Int, epoch: UInt64, at: Double)
    /// The node stopped acting on it (the consumer confirmed the revoke).
    case released(partition: Int, at: Double)
    case lost(partition: Int, at: Double)
    /// A beat succeeded: everything held may be acted on until `until`.
    case valid(until: Double, at: Double)
}

/// The assignment the leader writes.
struct StoredAssignment: Codable, Equatable {
    var membership: Int64
    var members: [String]
    var owners: [Int]

    func owner(of partition: Int) -> String? {
        guard partition < owners.count, owners[partition] >= 0, owners[partition] < members.count else { return nil }
        return members[owners[partition]]
    }
}

/// Member metadata, as shown to operators.
public struct MemberInfo: Codable, Sendable, Equatable {
    public var owner: String
    public var address: String
    public var version: String
    public var started: Double
}

/// One node's part in the cluster: membership, leader duties, leases, and the
/// ownership events the consumer side acts on. See docs/coordination.md.
public final class ClusterCoordinator: Sendable {
    public let configuration: ClusterConfiguration
    /// `<node>#<incarnation>`: leases belong to one process, not to a node name.
    public let owner: String
    private let redis: RedisClient
    private let subscriber: RedisSubscriber
    private let logger: Logger
    /// The clock of the heartbeat, the lease retries, the validity and the leave's drain.
    private let clock: ElapsedClock
    private let metrics: CoordinationMetrics
    private let state: Mutex<OwnershipState>
    private let executor: BlockingExecutor
    private let control = Mutex(Control())
    /// Wakes the loop: a Redis event, a confirmed revoke, a resume, a stop.
    private let wakeup = Wakeup()
    /// Signalled by the loop after each round, for `leave` to look at the leases again.
    private let rounds = Wakeup()
    private let observer: (@Sendable (ClusterObservation) -> Void)?
    private let eventsContinuation: AsyncStream<OwnershipEvent>.Continuation
    /// Ownership events for the consumer side: acquired, revoke (drain, then `confirmRevoked`), lost.
    public let events: AsyncStream<OwnershipEvent>

    struct Control {
        var wake = false
        var paused = false
        var stopping = false
        var confirmed: [Int] = []
        var loop: Task<Void, Never>?
        var watcher: Task<Void, Never>?
        var isLeader = false
        var leaderValue = ""
        var assignmentEpoch: Int64 = -1
        /// Set by `leave`: how long its revokes may take before the leases go regardless.
        var leaveDrainTimeout: Duration?
        var assignment: StoredAssignment?
        var nextAcquire: Duration = .zero
        var metadata = ""
    }

    /// - Parameters:
    ///   - observer: told of every change of the acting set, with wall-clock times (tests and benchmarks).
    ///   - metrics: where its heartbeat round trips and rebalances are counted.
    ///   - metricsDomain: what its leases are for, the `domain` label of those metrics (`partitions`,
    ///     `ingest`).
    ///   - clock: what the node's own time is read from: when to beat, when to retry, until when its
    ///     leases may be acted on (a manual clock in tests; Redis judges expiry by its own `TIME`).
    /// - Throws: `CoordinationError.invalidConfiguration` for a bad setting.
    public init(
        configuration: ClusterConfiguration,
        redis redisConfiguration: RedisConfiguration,
        logger: Logger = Logger(label: "herald.cluster"),
        observer: (@Sendable (ClusterObservation) -> Void)? = nil,
        metrics: any MetricsFactory = MetricsSystem.factory,
        metricsDomain: String = "partitions",
        clock: ElapsedClock = .continuous
    ) throws {
        try configuration.validate()
        self.clock = clock
        self.metrics = CoordinationMetrics(factory: metrics, domain: metricsDomain)
        self.configuration = configuration
        self.owner = "\(configuration.nodeID)#\(UUID().uuidString.prefix(8).lowercased())"
        var named = redisConfiguration
        named.clientName = "herald:\(owner)"
        self.redis = RedisClient(configuration: named, logger: logger)
        self.subscriber = RedisSubscriber(configuration: redisConfiguration, logger: logger)
        var logger = logger
        logger[metadataKey: LogKey.node] = "\(configuration.nodeID)"
        self.logger = logger
        self.observer = observer
        self.state = Mutex(OwnershipState(aliveTTL: configuration.aliveTTL, margin: configuration.margin))
        self.executor = BlockingExecutor(label: "herald-leases")
        (events, eventsContinuation) = AsyncStream.makeStream(of: OwnershipEvent.self)
    }

    private var prefix: String { configuration.keyPrefix }
    private func now() -> Duration { clock.now() }
    private func wall() -> Double { Date().timeIntervalSince1970 }

    // MARK: Public API

    /// Records the partition count of a new cluster, or checks this node's against the one
    /// the cluster was created with (also done by `start`): a node that would route events to
    /// partitions nobody else has must fail before it consumes anything.
    /// - Throws: `CoordinationError.invalidConfiguration` naming both counts; a connection error.
    public func checkPartitionCount() async throws {
        let key = prefix + "partitions"
        let created = try await redis.send("SET", key, configuration.partitionCount, "NX")
        if created.isNull {
            let existing = try await redis.send("GET", key).integer ?? -1
            if existing != Int64(configuration.partitionCount) {
                throw CoordinationError(
                    .invalidConfiguration,
                    "the cluster under key prefix '\(prefix)' was created with \(existing) partitions; this node is configured with \(configuration.partitionCount). Set the partition count to \(existing), or use another key prefix for a new cluster"
                )
            }
        }
    }

    /// Checks the partition count, joins the group and starts beating.
    /// - Throws: `CoordinationError.invalidConfiguration` when the cluster was created with another P;
    ///   a connection error when Redis cannot be reached.
    public func start() async throws {
        try await checkPartitionCount()
        let info = MemberInfo(
            owner: owner, address: configuration.address, version: configuration.version, started: wall())
        let metadata = String(decoding: try JSONEncoder().encode(info), as: UTF8.self)
        control.withLock { $0.metadata = metadata }
        try await beat()
        let events = subscriber.subscribe(to: [prefix + "events"])
        // Held in `control.watcher`; cancelled by `stopLoop` (leave, abandon).
        let watcher = Task { [weak self] in
            for await event in events {
                guard let self else { return }
                if case .message = event { self.wakeUp() }
                if case .subscribed(true) = event { self.wakeUp() }
            }
        }
        // Off the cooperative pool (see BlockingExecutor); holds the coordinator until leave() or abandon() stops it.
        let loop = Task(executorPreference: executor) { await self.run() }
        control.withLock {
            $0.loop = loop
            $0.watcher = watcher
        }
        logger.info(
            "joined the cluster",
            metadata: [LogKey.clusterOwner: "\(owner)", LogKey.clusterPartitions: "\(configuration.partitionCount)"])
    }

    /// The consumer finished draining a revoked partition; its lease is released.
    public func confirmRevoked(_ partition: Int) {
        control.withLock {
            $0.confirmed.append(partition)
            $0.wake = true
        }
        wakeup.signal()
        observer?(.released(partition: partition, at: wall()))
    }

    /// The partitions this node may act on now, with their fencing epochs.
    public func acting() -> [Int: UInt64] {
        let now = now()
        return state.withLock { $0.acting(at: now) }
    }

    /// Whether this node may act on `partition` under `epoch` right now.
    public func isActing(_ partition: Int, epoch: UInt64) -> Bool {
        let now = now()
        return state.withLock { $0.isActing(partition, epoch: epoch, at: now) }
    }

    /// Once `leave` has begun (its revokes hand the partitions over because the node stops): how
    /// long they may take before the leases are released regardless. Nil before.
    public var leaveDrainTimeout: Duration? { control.withLock { $0.leaveDrainTimeout } }

    /// Whether `partition`, acquired under `epoch`, is already revoked (its `revoke` event is on
    /// its way): a consumer that has not started need not start.
    public func isRevoking(_ partition: Int, epoch: UInt64) -> Bool {
        state.withLock { $0.isRevoking(partition, epoch: epoch) }
    }

    /// Whether `partition` is still held under `epoch` (not yet released, valid or not).
    public func holds(_ partition: Int, epoch: UInt64) -> Bool {
        state.withLock { $0.holds(partition, epoch: epoch) }
    }

    /// Whether this node holds the leader lease (as of its last beat).
    public var isLeader: Bool { control.withLock { $0.isLeader } }

    /// Whether this node's last heartbeat is recent enough that its membership and leases stand (readiness).
    public var isMembershipCurrent: Bool {
        let now = now()
        return state.withLock { $0.isValid(at: now) }
    }

    /// Leaves gracefully: revokes everything (the consumer side must confirm each
    /// revoke, or `drainTimeout` passes), releases the leases, leaves the group.
    public func leave(drainTimeout: Duration = .seconds(10)) async {
        let now = now()
        control.withLock {
            $0.assignmentEpoch = Int64.max  // ignore assignments from here on
            $0.leaveDrainTimeout = drainTimeout  // read by the revokes' consumers
        }
        // Under the state's lock: an assignment read before the line above cannot give partitions back.
        let revokes = state.withLock { $0.beginLeaving(now: now) }
        await execute(revokes)
        // The loop releases each lease as its revoke is confirmed, and drops them all when the
        // node's validity runs out: look again after each of its rounds.
        let deadline = self.now() + drainTimeout
        while !Task.isCancelled {
            let (acting, lapse) = state.withLock { (!$0.acting(at: self.now()).isEmpty, $0.deadline) }
            var wait = deadline - self.now()
            if !acting || wait <= .zero { break }
            // The leases also lapse on their own, at the end of validity, round or no round.
            if let lapse { wait = min(wait, lapse - self.now()) }
            await rounds.wait(timeout: wait, clock: clock)
        }
        await stopLoop()
        await execute(state.withLock { $0.leave() })
        _ = try? await redis.evalSHA(ClusterScripts.leave, arguments: [prefix, configuration.nodeID, owner])
        eventsContinuation.finish()
        await redis.close()
        logger.info("left the cluster")
    }

    /// Stops without releasing anything, as a crash would (for tests): leases expire on their own.
    public func abandon() async {
        await stopLoop()
        eventsContinuation.finish()
        await redis.close()
    }

    /// Pauses the loop as SIGSTOP would: no beats, no events until `resume()` (for tests).
    public func pause() { control.withLock { $0.paused = true } }
    public func resume() {
        control.withLock {
            $0.paused = false
            $0.wake = true
        }
        wakeup.signal()
    }

    private func stopLoop() async {
        let (loop, watcher) = control.withLock { control -> (Task<Void, Never>?, Task<Void, Never>?) in
            control.stopping = true
            return (control.loop, control.watcher)
        }
        wakeup.signal()
        watcher?.cancel()
        await loop?.value
    }

    private func wakeUp() {
        control.withLock { $0.wake = true }
        wakeup.signal()
    }

    // MARK: The loop

    /// Beats every `heartbeat`, and at once when woken; between rounds it sleeps until it is woken
    /// or until the next thing due on the clock alone: the next beat, a retry of leases it could not
    /// take, or the end of its validity (its leases lapse by themselves then).
    private func run() async {
        var nextBeat = now() + configuration.heartbeat
        var lastBeat = Duration.zero - Self.eventBeatGap
        // Woken by an event and not beaten for it yet (events closer than `eventBeatGap` share a beat).
        var eventPending = false
        while true {
            let (stopping, paused, woken) = control.withLock { control -> (Bool, Bool, Bool) in
                let woken = control.wake
                control.wake = false
                return (control.stopping, control.paused, woken)
            }
            if stopping { return }
            if paused {
                await wakeup.wait(timeout: nil)
                continue
            }
            let now = now()
            if woken { eventPending = true }
            if (eventPending && now >= lastBeat + Self.eventBeatGap) || now >= nextBeat {
                nextBeat = now + configuration.heartbeat
                lastBeat = now
                eventPending = false
                do {
                    try await beat()
                } catch {
                    logger.warning("beat failed", metadata: [LogKey.error: "\(error)"])
                    await execute(state.withLock { $0.check(now: self.now()) })
                }
            }
            await releaseConfirmed()
            let retryDue = control.withLock { $0.nextAcquire } <= self.now()
            if retryDue {
                let missing = state.withLock { $0.missing(now: self.now()) }
                if !missing.isEmpty { await execute([.acquire(missing)]) }
            }
            await execute(state.withLock { $0.check(now: self.now()) })
            rounds.signal()
            let beatAt = eventPending ? min(nextBeat, lastBeat + Self.eventBeatGap) : nextBeat
            await wakeup.wait(timeout: nextWake(beat: beatAt) - self.now(), clock: clock)
        }
    }

    /// The shortest time between two beats that events asked for: a burst of events (a
    /// rebalance publishes one per released lease) costs a beat per 10 ms, not one per event.
    static let eventBeatGap: Duration = .milliseconds(10)

    /// The next instant due on the clock alone: the next beat, a lease retry (while target
    /// partitions are missing), the end of validity (while leases are held).
    private func nextWake(beat: Duration) -> Duration {
        let now = now()
        let (deadline, missing) = state.withLock { ($0.deadline, !$0.missing(now: now).isEmpty) }
        var next = beat
        if let deadline { next = min(next, deadline) }
        if missing { next = min(next, control.withLock { $0.nextAcquire }) }
        return next
    }

    private func beat() async throws {
        let sentAt = now()
        let metadata = control.withLock { $0.metadata }
        let reply = try await redis.evalSHA(
            ClusterScripts.beat,
            arguments: [
                prefix, configuration.nodeID, owner,
                Int(configuration.memberDeadline.milliseconds), Int(configuration.aliveTTL.milliseconds),
                Int(configuration.leaderTTL.milliseconds), metadata, configuration.partitionCount,
            ])
        guard let items = reply.array, items.count == 4, let intact = items[0].integer, let leader = items[1].string,
            let membership = items[2].integer, let assignmentEpoch = items[3].integer
        else {
            throw CoordinationError(.unexpectedReply, "the beat script answered \(reply)")
        }
        let received = now()
        metrics.heartbeat.recordNanoseconds((received - sentAt).nanoseconds)
        let actions = state.withLock { $0.beatSucceeded(sentAt: sentAt, intact: intact == 1, now: received) }
        observer?(
            .valid(
                until: wall() + (sentAt + configuration.aliveTTL - configuration.margin - received).seconds, at: wall())
        )
        await execute(actions)

        let isLeader = leader.hasPrefix(configuration.nodeID + "|")
        let wasLeader = control.withLock { control -> Bool in
            let was = control.isLeader
            control.isLeader = isLeader
            control.leaderValue = leader
            return was
        }
        if isLeader && !wasLeader { logger.info("became the leader", metadata: [LogKey.clusterLeader: "\(leader)"]) }
        if isLeader { try await leaderDuties(leader: leader, membership: membership) }
        if assignmentEpoch != control.withLock({ $0.assignmentEpoch }) { try await loadAssignment() }
    }

    // MARK: Leader

    private func leaderDuties(leader: String, membership: Int64) async throws {
        var membership = membership
        // A crashed process closes its connections at once: evict members with none left,
        // long before their deadline would run out.
        let replies = try await redis.pipeline([
            RedisCommand("HGETALL", prefix + "members"), RedisCommand("CLIENT", "LIST", "TYPE", "normal"),
        ])
        let members = parseMembers(replies[0])
        let connected = Set(
            (replies[1].string ?? "").split(separator: "\n").compactMap { line -> Substring? in
                guard let range = line.range(of: " name=") else { return nil }
                return line[range.upperBound...].prefix { $0 != " " }
            })
        let gone = members.filter { !connected.contains(Substring("herald:\($0.value.owner)")) }.map(\.key).sorted()
        if !gone.isEmpty {
            let evicted = try await redis.evalSHA(ClusterScripts.evict, arguments: [prefix, leader] + gone)
            if (evicted.integer ?? 0) > 0 {
                logger.info("evicted members whose process is gone", metadata: [LogKey.clusterMembers: "\(gone)"])
                membership = try await redis.send("GET", prefix + "membership").integer ?? membership
            }
        }
        let current = try await currentAssignment()
        guard current?.membership != membership else { return }
        let live = try await redis.send("HKEYS", prefix + "members").array?.compactMap(\.string) ?? []
        let owners = (0..<configuration.partitionCount).map { current?.owner(of: $0) }
        let target = PartitionAssignor.assign(
            partitionCount: configuration.partitionCount, current: owners, members: live)
        let memberList = Array(Set(target)).sorted()
        let index = Dictionary(uniqueKeysWithValues: memberList.enumerated().map { ($1, $0) })
        let stored = StoredAssignment(membership: membership, members: memberList, owners: target.map { index[$0]! })
        let json = String(decoding: try JSONEncoder().encode(stored), as: UTF8.self)
        let epoch = try await redis.evalSHA(ClusterScripts.writeAssignment, arguments: [prefix, leader, json])
        if let value = epoch.integer, value > 0 {
            let moved = (0..<configuration.partitionCount).filter { owners[$0] != nil && owners[$0] != target[$0] }
                .count
            logger.info(
                "wrote an assignment",
                metadata: [
                    LogKey.clusterAssignmentEpoch: "\(value)", LogKey.clusterMembers: "\(memberList.count)",
                    LogKey.clusterMoved: "\(moved)",
                ])
        }
    }

    private func parseMembers(_ reply: RedisReply) -> [String: MemberInfo] {
        let items = reply.array ?? []
        var members: [String: MemberInfo] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if let node = items[index].string, let bytes = items[index + 1].bytes,
                let info = try? JSONDecoder().decode(MemberInfo.self, from: Data(bytes))
            {
                members[node] = info
            }
        }
        return members
    }

    private func currentAssignment() async throws -> StoredAssignment? {
        guard let bytes = try await redis.send("GET", prefix + "assignment").bytes else { return nil }
        return try JSONDecoder().decode(StoredAssignment.self, from: Data(bytes))
    }

    // MARK: Converging on the assignment

    private func loadAssignment() async throws {
        let replies = try await redis.pipeline([
            RedisCommand("GET", prefix + "assignment"), RedisCommand("GET", prefix + "assignment-epoch"),
        ])
        guard let bytes = replies[0].bytes, let epoch = replies[1].integer else { return }
        let assignment = try JSONDecoder().decode(StoredAssignment.self, from: Data(bytes))
        let proceed = control.withLock { control -> Bool in
            guard control.assignmentEpoch != Int64.max, control.assignmentEpoch < epoch else { return false }
            control.assignmentEpoch = epoch
            control.assignment = assignment
            return true
        }
        guard proceed else { return }
        metrics.assignments.increment()
        let mine = Set((0..<configuration.partitionCount).filter { assignment.owner(of: $0) == configuration.nodeID })
        let now = now()
        await execute(state.withLock { $0.setTarget(mine, now: now) })
    }

    private func releaseConfirmed() async {
        let confirmed = control.withLock { control -> [Int] in
            let list = control.confirmed
            control.confirmed.removeAll()
            return list
        }
        guard !confirmed.isEmpty else { return }
        var actions: [OwnershipState.Action] = []
        state.withLock { state in
            for partition in confirmed { actions += state.confirmRevoked(partition) }
        }
        await execute(actions)
    }

    // MARK: Side effects

    private func execute(_ actions: [OwnershipState.Action]) async {
        for action in actions {
            switch action {
            case .emit(let event):
                eventsContinuation.yield(event)
                switch event {
                case .acquired(let partition, let epoch):
                    observer?(.acquired(partition: partition, epoch: epoch, at: wall()))
                case .lost(let partition):
                    observer?(.lost(partition: partition, at: wall()))
                    logger.warning("lost a partition lease", metadata: [LogKey.clusterPartition: "\(partition)"])
                case .revoke: break
                }
            case .acquire(let partitions):
                do {
                    let reply = try await redis.evalSHA(
                        ClusterScripts.acquire, arguments: [prefix, owner] + partitions)
                    let epochs = reply.array?.map { $0.integer ?? 0 } ?? []
                    let won = zip(partitions, epochs).filter { $0.1 > 0 }.map {
                        OwnershipState.Lease(partition: $0.0, epoch: UInt64($0.1))
                    }
                    let now = now()
                    let follow = state.withLock { $0.acquired(won, now: now) }
                    if won.count < partitions.count {
                        control.withLock { $0.nextAcquire = now + configuration.acquireRetry }
                    }
                    await execute(follow)
                } catch {
                    logger.warning("acquiring leases failed", metadata: [LogKey.error: "\(error)"])
                    control.withLock { $0.nextAcquire = self.now() + configuration.acquireRetry }
                }
            case .release(let leases):
                let pairs: [any RedisArgument] = leases.flatMap {
                    [$0.partition, Int64($0.epoch)] as [any RedisArgument]
                }
                do {
                    try await redis.evalSHA(ClusterScripts.release, arguments: [prefix, owner] + pairs)
                } catch {
                    // The alive key expires on its own; the leases then free themselves.
                    logger.warning(
                        "releasing leases failed",
                        metadata: [LogKey.error: "\(error)", LogKey.clusterPartitions: "\(leases.map(\.partition))"])
                }
            }
        }
    }
}
