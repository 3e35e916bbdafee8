import Coordination
import Delivery
import DequeModule
import Foundation
import HeraldModel
import Logging
import Messaging
import Metrics
import Routing
import Synchronization

/// How failing targets are parked and retried (docs/pipeline.md, "Outages").
package struct ParkingSettings: Sendable {
    /// HERALD_DELIVERY_RETRY_HORIZON: how long parked messages are retried before they are
    /// dead-lettered (`retry_horizon`). Default 24 h.
    var horizon: Duration = .seconds(86_400)
    /// HERALD_PARKING_AFTER_ATTEMPTS: failed attempts in a lane before its batch is parked. Default 3.
    var afterAttempts = 3
    /// HERALD_PARKING_RETRY_BASE_SECONDS / _CAP_SECONDS: the parked messages' retry schedule,
    /// exponential with jitter (each delay between half and all of min(cap, base * 2^attempt)).
    /// Default 5 s, 60 s (a target back from an outage gets its backlog within a minute).
    var retryBase: Duration = .seconds(5)
    var retryCap: Duration = .seconds(60)
    /// HERALD_PARKING_PROJECT_MAX_MESSAGES: messages one project may have parked, cluster-wide. Default 100000.
    var projectMaxMessages = 100_000
    /// HERALD_PARKING_PROJECT_MAX_BYTES: bytes one project may have parked, cluster-wide (also each
    /// of its queues' `x-max-length-bytes`). Default 1 GiB.
    var projectMaxBytes = 1 << 30
    /// HERALD_PARKING_MAX_BYTES: every project's parked bytes together; 0: no bound.
    var clusterMaxBytes = 8 << 30
    /// How long a parked subscription's queue must stay empty while more messages are counted
    /// than live nodes are publishing before the excess is dropped (an uncount lost after its
    /// ack). What a dead node reserved is dropped at once. Default 10 s: while it runs, the
    /// subscription's new messages may be held in their lanes (a closed parking).
    var emptyWindow: Duration = .seconds(10)
    /// HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES: messages one subscription may have parked (its
    /// queue's `x-max-length`, with `reject-publish`). Default 50000.
    var subscriptionMaxMessages = 50_000
    /// HERALD_PARKING_DRAINS: subscriptions one node retries at once. Default 4.
    var concurrentDrains = 4
    /// How often a node refreshes which subscriptions are parked and takes due ones. Default 1 s.
    var tick: Duration = .seconds(1)
    /// A node retrying a subscription holds it this long (renewed per batch). Default 60 s.
    var claimLease: Duration = .seconds(60)
    /// How long one node drains one subscription before it lets others have the slot. Default 30 s.
    var drainSession: Duration = .seconds(30)
    /// Messages per retried request (Zaqar's batch). Default 100.
    var batchMessages = 100
    /// How long a lane's failure is shown as "failing". Default 120 s.
    var failingShownFor: Duration = .seconds(120)

    /// The delay before retry `attempt` (0 for the first): half the ceiling plus a random half.
    func delay<R: RandomNumberGenerator>(attempt: Int, using random: inout R) -> Duration {
        Backoff(base: retryBase, cap: retryCap, floor: 0.5).delay(attempt: attempt, using: &random)
    }
}

/// `herald_parking_*` metrics (bounded labels; no project or subscription names), made from the
/// node's metrics factory (so that nodes in one process keep theirs apart).
package struct ParkingMetrics: Sendable {
    let parkedMessages: Gauge
    let parkedSubscriptions: Gauge
    let oldestAge: Gauge
    let delivered: Counter
    let retries: Counter
    let dropped: Counter
    let reconciled: Counter
    /// By reason: `project_full`, `subscription_full`, `unavailable`, `cluster_full`.
    let refusedProjectFull: Counter
    let refusedSubscriptionFull: Counter
    let refusedUnavailable: Counter
    let refusedClusterFull: Counter

    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        parkedMessages = Gauge(label: "herald_parked_messages", factory: factory)
        parkedSubscriptions = Gauge(label: "herald_parked_subscriptions", factory: factory)
        oldestAge = Gauge(label: "herald_parked_oldest_age_seconds", factory: factory)
        delivered = Counter(label: "herald_parked_delivered_total", factory: factory)
        retries = Counter(label: "herald_parked_retries_total", factory: factory)
        dropped = Counter(
            label: "herald_parked_dropped_total", dimensions: [("reason", "subscription_deleted")], factory: factory)
        reconciled = Counter(
            label: "herald_parked_dropped_total", dimensions: [("reason", "count_reconciled")], factory: factory)
        func refused(_ reason: String) -> Counter {
            Counter(label: "herald_parking_refused_total", dimensions: [("reason", reason)], factory: factory)
        }
        refusedProjectFull = refused("project_full")
        refusedSubscriptionFull = refused("subscription_full")
        refusedUnavailable = refused("unavailable")
        refusedClusterFull = refused("cluster_full")
    }
}

/// Parking impossible for now (Redis or RabbitMQ unavailable): the lane holds the messages.
package struct ParkingRefused: Error, CustomStringConvertible {
    package var description: String
}

/// Parks a failing subscription's messages in its own durable RabbitMQ queue
/// (`<cluster>.park.<subscription>`), counted in the `ParkingLedger` before they are published,
/// and tells the batcher which subscriptions are parked (a set refreshed from Redis every tick,
/// plus the ones this node parked since).
package final class TargetParking: DeliveryParking {
    private let connection: AMQPConnection
    private let ledger: ParkingLedger
    private let names: ClusterNames
    private let queueType: String
    /// This process (`<node>#<incarnation>`), named on its reservations.
    private let owner: String
    let settings: ParkingSettings
    let metrics: ParkingMetrics
    private let logger: Logger
    private let channel = Mutex<AMQPChannel?>(nil)
    private let declared = Mutex<Set<String>>([])
    private let cache = Mutex(Cache())
    /// Signalled whenever the parked set was read again (`apply`).
    private let reread = Wakeup()

    struct Cache {
        /// Parked subscriptions, with the refresh generation they were last seen or added in.
        var parked: [String: UInt64] = [:]
        var generation: UInt64 = 0
        /// The newest refresh applied: an older one that ends later does not undo it.
        var applied: UInt64 = 0
    }

    init(
        connection: AMQPConnection, ledger: ParkingLedger, names: ClusterNames, queueType: String, owner: String,
        settings: ParkingSettings, metrics: ParkingMetrics = ParkingMetrics(), logger: Logger
    ) {
        self.metrics = metrics
        self.connection = connection
        self.ledger = ledger
        self.names = names
        self.queueType = queueType
        self.owner = owner
        self.settings = settings
        self.logger = logger
    }

    /// A parking queue's arguments: durable, one consumer at a time, bounded with `reject-publish`
    /// (a full queue refuses, and the confirm says so: the lane keeps the messages).
    var queueOptions: AMQPQueueOptions {
        AMQPQueueOptions(
            durable: true,
            arguments: [
                "x-queue-type": .string(queueType),
                "x-single-active-consumer": .bool(true),
                "x-max-length": .int(Int64(settings.subscriptionMaxMessages)),
                "x-max-length-bytes": .int(Int64(settings.projectMaxBytes)),
                "x-overflow": .string("reject-publish"),
            ].merging(queueType == "quorum" ? ["x-delivery-limit": .int(1_000_000)] : [:]) { first, _ in first })
    }

    package func isParked(_ subscriptionID: String) -> Bool {
        cache.withLock { $0.parked[subscriptionID] != nil }
    }

    package func waitForChange(timeout: Duration) async {
        await reread.wait(timeout: timeout)
    }

    /// Starts a refresh: its generation, to be passed to `apply`.
    func beginRefresh() -> UInt64 {
        cache.withLock { cache in
            cache.generation += 1
            return cache.generation
        }
    }

    /// Replaces the parked set with what Redis listed in a refresh begun at `generation`,
    /// keeping what this node parked after that refresh began (Redis may not have shown it yet).
    func apply(_ parked: Set<String>, generation: UInt64) {
        cache.withLock { cache in
            guard generation > cache.applied else { return }
            cache.applied = generation
            cache.parked = cache.parked.filter { $0.value > generation }
            for subscription in parked { cache.parked[subscription] = max(cache.parked[subscription] ?? 0, generation) }
        }
        reread.signal()
    }

    package func park(
        _ messages: [ZaqarOutgoingMessage], reason: String, failed: Bool, retryAfter: Duration? = nil
    ) async throws {
        guard let first = messages.first else { return }
        let subscription = first.subscriptionID
        let project = first.target.project
        var random = SystemRandomNumberGenerator()
        let bytes = messages.reduce(0) { $0 + $1.body.count }
        let reservation: ParkingLedger.Reservation
        do {
            reservation = try await ledger.reserve(
                subscription: subscription, project: project, count: messages.count, bytes: bytes,
                projectMax: settings.projectMaxMessages,
                projectMaxBytes: settings.projectMaxBytes, clusterMaxBytes: settings.clusterMaxBytes,
                subscriptionMax: settings.subscriptionMaxMessages,
                delay: failed ? max(settings.delay(attempt: 0, using: &random), retryAfter ?? .zero) : .zero,
                error: reason,
                onlyIfParked: !failed, owner: owner
            )
        } catch {
            metrics.refusedUnavailable.increment()
            throw ParkingRefused(description: "Redis could not count the parked messages: \(error)")
        }
        let parkedAt: Int64
        switch reservation {
        case .projectFull(let parked):
            metrics.refusedProjectFull.increment()
            throw ParkingFull.projectMessages(project, parked: parked, share: settings.projectMaxMessages)
        case .projectBytesFull(let parkedBytes):
            metrics.refusedProjectFull.increment()
            throw ParkingFull.projectBytes(project, parked: parkedBytes, share: settings.projectMaxBytes)
        case .clusterBytesFull(let parkedBytes):
            metrics.refusedClusterFull.increment()
            throw ParkingFull.clusterBytes(parked: parkedBytes, bound: settings.clusterMaxBytes)
        case .subscriptionFull(let parked):
            metrics.refusedSubscriptionFull.increment()
            throw ParkingFull.subscriptionMessages(
                subscription, parked: parked, limit: settings.subscriptionMaxMessages)
        case .closing:
            throw ParkingClosing()
        case .notParked:
            throw ParkingNotNeeded()
        case .reserved(let at):
            parkedAt = at
        }
        // From now on this node parks the subscription's messages, whatever a refresh under way says.
        cache.withLock { cache in cache.parked[subscription] = cache.generation + 1 }
        do {
            try await publish(messages, subscription: subscription, parkedAt: parkedAt)
        } catch {
            // Uncounted: the lane parks them again. Some may be in the queue all the same (a nack
            // or a return for part of it); the drainer that finds them counts them again.
            try? await ledger.unreserve(subscription: subscription, count: messages.count, bytes: bytes, owner: owner)
            metrics.refusedUnavailable.increment()
            throw ParkingRefused(description: "RabbitMQ did not take the parked messages: \(error)")
        }
        // The record may have gone while they were on their way (a drainer saw the queue empty
        // first): it is written again, so that they are never left in a queue nobody retries.
        // Tried a few times: this is the one step that brings such a record back.
        for attempt in 0..<5 {
            do {
                if try await ledger.confirm(
                    subscription: subscription, project: project, count: messages.count, bytes: bytes, owner: owner)
                {
                    logger.warning(
                        "parked messages arrived after their subscription's record went; recorded again",
                        metadata: [LogKey.subscription: "\(subscription)"])
                }
                break
            } catch {
                if attempt == 4 {
                    logger.error(
                        "cannot confirm parked messages in Redis; if their record went meanwhile, they wait until the subscription parks again",
                        metadata: [
                            LogKey.subscription: "\(subscription)", LogKey.error: "\(error)",
                        ])
                }
                try? await Task.sleep(
                    for: Backoff(base: .milliseconds(200), cap: .seconds(5), floor: 0.5).delay(attempt: attempt))
            }
        }
        if failed {
            logger.warning(
                "parked messages of a failing target",
                metadata: [
                    LogKey.subscription: "\(subscription)", LogKey.deliveryCount: "\(messages.count)",
                    LogKey.error: "\(SafeText.clean(reason, limit: 200))",
                ])
        }
    }

    private func publish(_ messages: [ZaqarOutgoingMessage], subscription: String, parkedAt: Int64) async throws {
        let queue = names.parkingQueue(subscription)
        let channel = try await publishingChannel()
        if !declared.withLock({ $0.contains(queue) }) {
            _ = try await declare(queue, on: channel)
            // Known to the sweep, which finds a queue whose record was lost.
            try await ledger.noteQueue(subscription: subscription)
            declared.withLock { declared in
                if declared.count >= 10_000 { declared.removeAll() }
                declared.insert(queue)
            }
        }
        let outgoing = messages.map { message in
            AMQPOutgoingMessage(
                exchange: "", routingKey: queue, body: message.body,
                properties: AMQPMessageProperties(
                    contentType: "application/json",
                    headers: [
                        "herald-subscription-id": .string(message.subscriptionID),
                        "herald-event-id": .string(message.eventID),
                        "herald-parked-at": .int(parkedAt),
                        // Kept with the message: the subscription may be changed before it is
                        // drained, and a dead letter of every project's events must stay apart.
                        "herald-all-projects": .bool(message.allProjects),
                    ],
                    persistent: true,
                    messageID: message.eventID
                ))
        }
        do {
            // Mandatory: a queue deleted meanwhile returns the message instead of dropping it.
            try await channel.publish(outgoing, mandatory: true)
        } catch {
            // Declare again next time (the queue may have gone with its subscription).
            declared.withLock { _ = $0.remove(queue) }
            throw error
        }
    }

    /// Declares a parking queue; one that exists with other arguments (declared by a node with
    /// another HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES or HERALD_QUEUE_TYPE) is used as it is.
    func declare(_ queue: String, on channel: AMQPChannel) async throws -> AMQPQueueState {
        do {
            return try await channel.declareQueue(queue, options: queueOptions)
        } catch let error as MessagingError where error.replyCode == 406 {
            logger.warning(
                "a parking queue exists with other arguments; using it as it is",
                metadata: [LogKey.amqpQueue: "\(queue)", LogKey.error: "\(error)"])
            return try await channel.declareQueuePassive(queue)
        }
    }

    private func publishingChannel() async throws -> AMQPChannel {
        if let channel = channel.withLock({ $0 }) { return channel }
        let opened = try await connection.openChannel()
        try await opened.enableConfirms()
        return channel.withLock { current in
            if let current { return current }
            current = opened
            return opened
        }
    }

    package func failing(_ subscriptionIDs: Set<String>, error: String) async {
        for subscription in subscriptionIDs {
            try? await ledger.noteFailure(
                subscription: subscription, error: SafeText.clean(error, limit: 200), ttl: settings.failingShownFor)
        }
    }

    package func recovered(_ subscriptionIDs: Set<String>) async {
        for subscription in subscriptionIDs { try? await ledger.clearFailure(subscription: subscription) }
    }
}

/// Retries parked subscriptions: every tick it refreshes which subscriptions are parked (for the
/// batcher), then claims due ones in Redis and drains each from its queue in order, a batch at a
/// time, through `DeliveryBatcher.attemptParked`: delivered and dead-lettered messages are acked
/// and uncounted; on a failure the rest go back to the head of the queue (the channel closes) and the
/// next attempt is scheduled with backoff. Past the horizon, messages still failing are
/// dead-lettered (`retry_horizon`). A deleted subscription's parked messages are dropped, counted.
/// A subscription is unparked only when its claimer sees its queue empty with no consumer on it.
package final class ParkingDrainer: Sendable {
    private let connection: AMQPConnection
    private let ledger: ParkingLedger
    private let parking: TargetParking
    private let batcher: DeliveryBatcher
    private let index: Locked<SubscriptionIndex>
    /// The registry's own answer for a subscription the index lacks (the index may be behind):
    /// .some(nil) when it is gone; nil when the registry cannot be asked now.
    private let lookup: @Sendable (_ id: String, _ project: String) async -> Subscription??
    private let isLeader: @Sendable () -> Bool
    private let names: ClusterNames
    /// This process (`<node>#<incarnation>`): it holds claims under this name, so that another
    /// node takes over at once when it dies (ParkingLedger).
    private let owner: String
    private let defaultZaqarURL: String
    private let logger: Logger
    private let active = Mutex<Set<String>>([])
    /// Where the leader's sweep over the parking queues is (`sweep`).
    private let sweepCursor = Mutex("0")
    /// The ticks' and the drain sessions' time (a manual clock in tests).
    private let clock: ElapsedClock

    init(
        connection: AMQPConnection, ledger: ParkingLedger, parking: TargetParking, batcher: DeliveryBatcher,
        index: Locked<SubscriptionIndex>,
        lookup: @escaping @Sendable (_ id: String, _ project: String) async -> Subscription??,
        isLeader: @escaping @Sendable () -> Bool = { true },
        names: ClusterNames, owner: String, defaultZaqarURL: String, logger: Logger,
        clock: ElapsedClock = .continuous
    ) {
        self.clock = clock
        self.connection = connection
        self.ledger = ledger
        self.parking = parking
        self.batcher = batcher
        self.index = index
        self.lookup = lookup
        self.isLeader = isLeader
        self.names = names
        self.owner = owner
        self.defaultZaqarURL = defaultZaqarURL
        self.logger = logger
    }

    private var settings: ParkingSettings { parking.settings }

    /// Runs until cancelled; each drain is a child task of this one.
    func run() async {
        var ticks = 0
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                await refresh(gauges: ticks % 5 == 0)
                if ticks % 30 == 29 { await sweep() }
                ticks += 1
                let free = settings.concurrentDrains - active.withLock { $0.count }
                if free > 0,
                    let claimed = try? await ledger.claimDue(node: owner, lease: settings.claimLease, limit: free)
                {
                    for subscription in claimed {
                        guard active.withLock({ $0.insert(subscription).inserted }) else { continue }
                        group.addTask {
                            await self.drain(subscription)
                            _ = self.active.withLock { $0.remove(subscription) }
                        }
                    }
                }
                try? await clock.sleep(for: settings.tick)
            }
        }
    }

    /// The leader, now and then: parking queues whose record went (a node that lost its Redis
    /// writes, a confirm that never reached Redis) are given a record again when they hold
    /// messages, so that nothing waits in a queue nobody retries; queues that are gone are
    /// forgotten. Looks at up to 100 subscriptions with a parking queue a time, in turn.
    func sweep() async {
        guard isLeader() else { return }
        guard let (next, orphans) = try? await ledger.queuesWithoutRecord(cursor: sweepCursor.withLock { $0 }) else {
            return
        }
        sweepCursor.withLock { $0 = next }
        for subscriptionID in orphans.prefix(20) {
            let answer: AMQPQueueState?
            do { answer = try await connection.queueState(names.parkingQueue(subscriptionID)) } catch { continue }
            guard let state = answer else {
                try? await ledger.forgetQueue(subscription: subscriptionID)
                continue
            }
            guard state.messageCount > 0 else { continue }
            guard let project = index.withLock({ $0.route(id: subscriptionID) })?.project else {
                logger.warning(
                    "a parking queue holds messages of a subscription this node does not know; left for a node that does",
                    metadata: [
                        LogKey.subscription: "\(subscriptionID)", LogKey.deliveryCount: "\(state.messageCount)",
                    ])
                continue
            }
            if (try? await ledger.confirm(subscription: subscriptionID, project: project, count: state.messageCount))
                == true
            {
                logger.warning(
                    "parked messages without a record found; recorded again, to be retried",
                    metadata: [
                        LogKey.subscription: "\(subscriptionID)", LogKey.deliveryCount: "\(state.messageCount)",
                    ])
            }
        }
    }

    /// Which subscriptions are parked, for the batcher; and, now and then, the gauges (the
    /// leader's: they are the cluster's, so that a sum over nodes counts them once).
    /// - Returns: false when Redis could not be read.
    @discardableResult
    func refresh(gauges: Bool) async -> Bool {
        let generation = parking.beginRefresh()
        guard let parked = try? await ledger.parkedSubscriptions() else { return false }
        parking.apply(parked, generation: generation)
        guard gauges else { return true }
        guard isLeader() else {
            parking.metrics.parkedSubscriptions.record(0)
            parking.metrics.parkedMessages.record(0)
            parking.metrics.oldestAge.record(0)
            return true
        }
        guard let states = try? await ledger.allStates() else { return true }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        parking.metrics.parkedSubscriptions.record(states.count)
        // Wrapping arithmetic: the numbers are read from Redis (counts clamped there), and a
        // corrupt one must not trap.
        parking.metrics.parkedMessages.record(states.reduce(0) { $0 &+ $1.count })
        parking.metrics.oldestAge.record(Double(max(0, now &- (states.map(\.since).min() ?? now))) / 1000)
        return true
    }

    /// Before a newly acquired partition is consumed: the parked set, read until Redis answers
    /// (a few tries; the lease itself was just taken from Redis).
    func refreshBeforeConsuming() async {
        for attempt in 0..<5 {
            if await refresh(gauges: false) { return }
            try? await clock.sleep(
                for: Backoff(base: .milliseconds(100), cap: .seconds(2), floor: 0.5).delay(attempt: attempt))
        }
        logger.warning(
            "could not read which subscriptions are parked before consuming a partition; new messages of a parked subscription may overtake parked ones until the next refresh"
        )
    }

    /// Retries one claimed subscription's parked messages until its queue is empty, the target
    /// fails again, the claim is lost, or the node stops.
    func drain(_ subscriptionID: String) async {
        let channel: AMQPChannel
        do {
            channel = try await connection.openChannel()
        } catch {
            logger.warning(
                "cannot open a channel to retry parked messages",
                metadata: [LogKey.subscription: "\(subscriptionID)", LogKey.error: "\(error)"])
            try? await ledger.finished(subscription: subscriptionID, node: owner, delay: settings.tick * 5)
            return
        }
        // What gives up the claim (when retry ends it) runs after the channel closed: another
        // node that claims it then finds every unsettled message back in the queue, in order.
        let afterClose = Locked<(@Sendable () async -> Void)?>(nil)
        let caughtUp = await drain(subscriptionID, on: channel, afterClose: afterClose)
        // Closing requeues, at the head of the queue, whatever was taken and not settled
        // (including what came after the consumer's last batch): only then may the queue be
        // judged empty.
        await channel.close()
        if let release = afterClose.value { await release() }
        guard caughtUp else { return }
        do {
            guard let after = try await connection.queueState(names.parkingQueue(subscriptionID)) else {
                throw MessagingError(.channelClosed, "\(names.parkingQueue(subscriptionID)) is gone", replyCode: 404)
            }
            if after.messageCount == 0 && after.consumerCount == 0 {
                await observeEmpty(subscriptionID)
            } else {
                try? await ledger.finished(subscription: subscriptionID, node: owner, delay: .zero)
            }
        } catch {
            logger.warning(
                "cannot check whether a parked subscription's queue is empty",
                metadata: [LogKey.subscription: "\(subscriptionID)", LogKey.error: "\(error)"])
            try? await ledger.finished(subscription: subscriptionID, node: owner, delay: settings.tick * 5)
        }
    }

    /// Drains what the queue has now. Answers true when it caught up (nothing more came for a
    /// while): the caller then checks, with this channel closed, whether the queue is empty.
    private func drain(
        _ subscriptionID: String, on channel: AMQPChannel, afterClose: Locked<(@Sendable () async -> Void)?>
    ) async -> Bool {
        let queue = names.parkingQueue(subscriptionID)
        do {
            let state = try await parking.declare(queue, on: channel)
            if state.consumerCount > 0 {
                // Another node still drains it (its claim ran out under a long attempt): not twice.
                try? await ledger.finished(subscription: subscriptionID, node: owner, delay: settings.tick * 5)
                return false
            }
            guard let record = try await ledger.state(subscription: subscriptionID) else { return false }
            guard let subscription = await subscription(subscriptionID, project: record.project) else {
                try? await ledger.finished(subscription: subscriptionID, node: owner, delay: settings.tick * 5)
                return false
            }
            guard let subscription else {
                await dropAll(subscriptionID, queue: queue, channel: channel)
                return false
            }
            if state.messageCount == 0 {
                await observeEmpty(subscriptionID)
                return false
            }
            guard
                try await ledger.renew(
                    subscription: subscriptionID, node: owner, lease: settings.claimLease, atLeast: state.messageCount)
            else { return false }
            let consumer = try await channel.consume(queue, prefetch: UInt16(clamping: settings.batchMessages))
            let inbox = DeliveryInbox()
            let drained = await withTaskGroup(of: Bool?.self) { group in
                group.addTask {
                    do { for try await delivery in consumer { inbox.put(delivery) } } catch {}
                    inbox.finish()
                    return nil
                }
                group.addTask {
                    let drained = await self.retry(
                        subscription, from: inbox, channel: channel, isCurrent: consumer.isCurrent,
                        afterClose: afterClose)
                    // Closed with its consumer on it, not cancelled first: for a classic queue
                    // RabbitMQ then puts what was taken and not settled back at the head of the
                    // queue before it confirms the close. A cancelled consumer's unsettled messages
                    // go back only when the queue learns the channel went, after the close
                    // returned, and a next drainer could start before them: later messages first
                    // (seen once in the end-to-end test, on classic queues). A quorum queue takes
                    // them back through its log either way; single-active-consumer hands the queue
                    // over in the same step. The close ends the consumer's stream, and the
                    // caller's close is then a no-op.
                    await channel.close()
                    inbox.finish()
                    return drained
                }
                var drained = false
                for await result in group { if let result { drained = result } }
                return drained
            }
            return drained
        } catch {
            logger.warning(
                "cannot retry parked messages",
                metadata: [LogKey.subscription: "\(subscriptionID)", LogKey.error: "\(error)"])
            let (ledger, owner, delay) = (ledger, owner, settings.tick * 5)
            afterClose.withLock {
                $0 = { try? await ledger.finished(subscription: subscriptionID, node: owner, delay: delay) }
            }
            return false
        }
    }

    /// The subscription as the index has it, else as the registry has it; .some(nil) when the
    /// registry says it is gone; nil when that cannot be known now.
    private func subscription(_ id: String, project: String) async -> SubscriptionRoute?? {
        if let known = index.withLock({ $0.route(id: id) }) { return .some(known) }
        return await lookup(id, project).map { found in
            found.map { SubscriptionRoute($0, defaultZaqarURL: defaultZaqarURL) }
        }
    }

    /// Takes batches until the queue has nothing more for now (true), or the target fails, the
    /// claim is lost or the node stops (false).
    /// Gives up its claim through `afterClose` (run once the channel is closed), never directly.
    private func retry(
        _ subscription: SubscriptionRoute, from inbox: DeliveryInbox, channel: AMQPChannel,
        isCurrent: @escaping @Sendable (AMQPDelivery) -> Bool, afterClose: Locked<(@Sendable () async -> Void)?>
    ) async -> Bool {
        let ledger = ledger
        let owner = owner
        let subscriptionID = subscription.id
        var random = SystemRandomNumberGenerator()
        let target = subscription.target
        let started = clock.now()
        var closing = false
        while !Task.isCancelled {
            // A subscription whose messages keep coming must not keep the slot from the others
            // (closing or not: a closing another node reopened would otherwise never end).
            if clock.now() - started >= settings.drainSession {
                afterClose.withLock {
                    $0 = { try? await ledger.finished(subscription: subscriptionID, node: owner, delay: .zero) }
                }
                return false
            }
            let taken = await inbox.take(
                max: settings.batchMessages, firstWithin: closing ? .milliseconds(500) : .seconds(2),
                moreWithin: .milliseconds(20))
            guard !taken.isEmpty else { return true }
            // Taken before a reconnect: the broker gives them again on the new connection, so they
            // are retried once from there, not also now (fewer duplicates; at least once either way).
            let deliveries = taken.filter(isCurrent)
            if deliveries.isEmpty { continue }
            // Still ours? (A claim that ran out and was taken: stop; what was taken goes back.)
            guard
                (try? await ledger.renew(subscription: subscriptionID, node: owner, lease: settings.claimLease))
                    != false
            else { return false }
            let messages = deliveries.map { delivery in
                ZaqarOutgoingMessage(
                    target: target, body: delivery.body, subscriptionID: subscriptionID,
                    eventID: delivery.properties.headers["herald-event-id"]?.string ?? delivery.properties.messageID
                        ?? "",
                    // As it was when parked (the subscription may have changed since); the
                    // subscription's own for messages parked before the header existed.
                    allProjects: delivery.properties.headers["herald-all-projects"].map { $0 == .bool(true) }
                        ?? subscription.allProjects
                )
            }
            let outcome = await batcher.attemptParked(messages)
            let settled: Int
            var failure: (error: String, retryAfter: Duration?)?
            var stopped = false
            switch outcome {
            case .settled:
                settled = deliveries.count
            case .failed(let count, let error, let retryAfter):
                settled = count
                failure = (error, retryAfter)
            case .stopped(let count):
                settled = count
                stopped = true
            }
            // Uncounted before they are acked: a node dying between the two leaves a count too low
            // (the next drainer raises it to what the queue holds), never one that no message backs.
            if settled > 0 {
                _ = try? await ledger.release(
                    subscription: subscriptionID, count: settled,
                    bytes: deliveries.prefix(settled).reduce(0) { $0 + $1.body.count })
                parking.metrics.delivered.increment(by: settled)
            }
            for delivery in deliveries.prefix(settled) { channel.ack(delivery) }
            // The node is stopping: the rest stay in the queue, unacked, for the next drainer.
            if stopped { return false }
            guard let failure else {
                // Caught up (the queue gave less than a batch): close it, so that new messages stop
                // joining it and it can end; they wait in their lanes until it is unparked.
                if !closing, taken.count < settings.batchMessages {
                    closing = (try? await ledger.close(subscription: subscriptionID, node: owner)) ?? false
                }
                continue
            }
            parking.metrics.retries.increment()
            // Past the horizon, what still fails is dead-lettered; the rest waits for the next attempt.
            let rest = Array(deliveries.dropFirst(settled))
            // Redis' clock, which stamped them: a node whose clock runs behind or ahead must not
            // keep them past the horizon nor give them up early (its own clock only without Redis).
            let now = (try? await ledger.now()) ?? Int64(Date().timeIntervalSince1970 * 1000)
            // Herald's own header, but read as hostile: a value outside [0, now] is taken as now.
            func parkedAt(_ delivery: AMQPDelivery) -> Int64 {
                guard let value = delivery.properties.headers["herald-parked-at"]?.int, value >= 0, value <= now else {
                    return now
                }
                return value
            }
            let horizon = settings.horizon.milliseconds
            let expired = rest.prefix { parkedAt($0) <= now - horizon }
            let attempts = (try? await ledger.state(subscription: subscriptionID))?.attempts ?? 0
            if let oldest = expired.first {
                let detail =
                    "retried for \((now - parkedAt(oldest)) / 1000) s (\(attempts + 1) attempts after parking) without delivery; HERALD_DELIVERY_RETRY_HORIZON is \(settings.horizon.seconds) s; last error: \(failure.error)"
                let stored = await batcher.deadLetterExpired(
                    Array(messages.dropFirst(settled).prefix(expired.count)), detail: detail)
                // Stopping before they were stored: they stay in the queue for the next drainer.
                guard stored else { return false }
                _ = try? await ledger.release(
                    subscription: subscriptionID, count: expired.count, bytes: expired.reduce(0) { $0 + $1.body.count })
                for delivery in expired { channel.ack(delivery) }
            }
            guard let head = rest.dropFirst(expired.count).first else { continue }
            // The rest stay unacked: closing the channel (`drain`) gives them back at the head of
            // the queue, in order with what the consumer took after them. A nack would put them
            // at the back of a quorum queue, behind newer messages of the same subscription.
            let delay = max(settings.delay(attempt: attempts, using: &random), failure.retryAfter ?? .zero)
            let error = SafeText.clean(failure.error, limit: 200)
            let since = parkedAt(head)
            afterClose.withLock {
                $0 = {
                    _ = try? await ledger.retryLater(
                        subscription: subscriptionID, node: owner, delay: delay, error: error, since: since)
                }
            }
            logger.info(
                "parked messages still fail; retrying later",
                metadata: [
                    LogKey.subscription: "\(subscriptionID)", LogKey.heraldAttempt: "\(attempts + 1)",
                    LogKey.deliveryCount: "\(rest.count - expired.count)",
                    LogKey.heraldNextSeconds: "\(delay.seconds)",
                    LogKey.error: "\(SafeText.clean(failure.error, limit: 200))",
                ])
            return false
        }
        afterClose.withLock {
            $0 = { try? await ledger.finished(subscription: subscriptionID, node: owner, delay: .zero) }
        }
        return false
    }

    /// The claimer saw the queue empty: unpark, or wait for what is still counted.
    private func observeEmpty(_ subscriptionID: String) async {
        switch try? await ledger.observeEmpty(
            subscription: subscriptionID, node: owner, window: settings.emptyWindow, delay: settings.tick)
        {
        case .reconciled(let count):
            parking.metrics.reconciled.increment(by: count)
            logger.warning(
                "a parked subscription's queue is empty while messages were counted (reserved by a node that died, or an uncount lost); count dropped",
                metadata: [
                    LogKey.subscription: "\(subscriptionID)", LogKey.deliveryCount: "\(count)",
                ])
        case .unparked, .waiting, nil:
            break
        }
    }

    /// A deleted subscription (the registry says so): its parked messages are dropped (counted)
    /// and its queue deleted.
    private func dropAll(_ subscriptionID: String, queue: String, channel: AMQPChannel) async {
        let dropped = (try? await channel.deleteQueue(queue)) ?? 0
        try? await ledger.forget(subscription: subscriptionID)
        parking.metrics.dropped.increment(by: dropped)
        logger.info(
            "dropped the parked messages of a deleted subscription",
            metadata: [LogKey.subscription: "\(subscriptionID)", LogKey.deliveryCount: "\(dropped)"])
    }
}

/// Deliveries of one consumer, taken in batches: `take` waits for the first and briefly for more.
package final class DeliveryInbox: Sendable {
    private let state = Mutex(State())

    struct State {
        var buffer = Deque<AMQPDelivery>()
        var finished = false
        var waiter: CheckedContinuation<Void, Never>?
        /// A wake-up (time up) that came before the waiter was in place: the waiter returns at once.
        var woken = false
    }

    func put(_ delivery: AMQPDelivery) {
        state.withLock { $0.buffer.append(delivery) }
        wake()
    }

    func finish() {
        state.withLock { $0.finished = true }
        wake()
    }

    /// Resumes the waiter, or, when none waits yet, makes the next wait return at once.
    private func wake() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.woken = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Up to `max` deliveries: waits up to `firstWithin` for one, then up to `moreWithin` for each next.
    func take(max: Int, firstWithin: Duration, moreWithin: Duration) async -> [AMQPDelivery] {
        var taken: [AMQPDelivery] = []
        while taken.count < max {
            let (available, finished) = state.withLock { state -> ([AMQPDelivery], Bool) in
                var out: [AMQPDelivery] = []
                while out.count + taken.count < max, let next = state.buffer.popFirst() { out.append(next) }
                return (out, state.finished)
            }
            taken += available
            if taken.count >= max || finished { break }
            await arrival(within: taken.isEmpty ? firstWithin : moreWithin)
            if state.withLock({ $0.buffer.isEmpty }) { break }
        }
        return taken
    }

    /// Waits until something arrives, the inbox finishes or the time passes.
    private func arrival(within timeout: Duration) async {
        state.withLock { $0.woken = false }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let now = self.state.withLock { state -> Bool in
                        if !state.buffer.isEmpty || state.finished || state.woken { return true }
                        state.waiter = continuation
                        return false
                    }
                    if now { continuation.resume() }
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                // Ends the wait above, whether it is in place yet or not.
                self.wake()
            }
            await group.next()
            group.cancelAll()
            // The sleeper, cancelled, wakes the waiter if it still waits: the group ends.
        }
    }
}
