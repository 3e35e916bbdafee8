import Coordination
import Delivery
import DequeModule
import Foundation
import HeraldModel
import Logging
import Messaging
import Metrics
import Synchronization

/// How failing targets are parked and retried (docs/pipeline.md, "Outages").
struct ParkingSettings: Sendable {
    /// HERALD_DELIVERY_RETRY_HORIZON: how long parked messages are retried before they are
    /// dead-lettered (`retry_horizon`). Default 24 h.
    var horizon: Duration = .seconds(86_400)
    /// HERALD_PARKING_AFTER_ATTEMPTS: failed attempts in a lane before its batch is parked. Default 3.
    var afterAttempts = 3
    /// HERALD_PARKING_RETRY_BASE_SECONDS / _CAP_SECONDS: the parked messages' retry schedule,
    /// exponential with jitter (each delay between half and all of min(cap, base * 2^attempt)).
    /// Default 5 s, 300 s.
    var retryBase: Duration = .seconds(5)
    var retryCap: Duration = .seconds(300)
    /// HERALD_PARKING_PROJECT_MAX_MESSAGES: messages one project may have parked, cluster-wide. Default 100000.
    var projectMaxMessages = 100_000
    /// HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES: messages one subscription may have parked (its
    /// queue's `x-max-length`, with `reject-publish`). Default 50000.
    var subscriptionMaxMessages = 50_000
    /// HERALD_PARKING_DRAINS: subscriptions one node retries at once. Default 4.
    var concurrentDrains = 4
    /// How often a node refreshes which subscriptions are parked and takes due ones. Default 1 s.
    var tick: Duration = .seconds(1)
    /// A node retrying a subscription holds it this long (renewed per batch). Default 60 s.
    var claimLease: Duration = .seconds(60)
    /// Messages per retried request (Zaqar's batch). Default 100.
    var batchMessages = 100
    /// How long a lane's failure is shown as "failing". Default 120 s.
    var failingShownFor: Duration = .seconds(120)

    /// The delay before retry `attempt` (0 for the first): half the ceiling plus a random half.
    func delay<R: RandomNumberGenerator>(attempt: Int, using random: inout R) -> Duration {
        let ceiling = Backoff(base: retryBase, cap: retryCap).ceiling(attempt: attempt)
        return ceiling / 2 + (ceiling / 2) * Double.random(in: 0...1, using: &random)
    }
}

/// `herald_parking_*` metrics (bounded labels; no project or subscription names).
enum ParkingMetrics {
    static let parkedMessages = Gauge(label: "herald_parked_messages")
    static let parkedSubscriptions = Gauge(label: "herald_parked_subscriptions")
    static let oldestAge = Gauge(label: "herald_parked_oldest_age_seconds")
    static let delivered = Counter(label: "herald_parked_delivered_total")
    static let retries = Counter(label: "herald_parked_retries_total")
    static let dropped = Counter(label: "herald_parked_dropped_total", dimensions: [("reason", "subscription_deleted")])
    static let reconciled = Counter(label: "herald_parked_dropped_total", dimensions: [("reason", "count_reconciled")])
    static let refused = Dictionary(uniqueKeysWithValues: ["project_full", "subscription_full", "unavailable"].map {
        ($0, Counter(label: "herald_parking_refused_total", dimensions: [("reason", $0)]))
    })
}

struct ParkingRefused: Error, CustomStringConvertible {
    var reason: String
    var description: String
}

/// Parks a failing subscription's messages in its own durable RabbitMQ queue
/// (`<cluster>.park.<subscription>`), counted in the `ParkingLedger` before they are published,
/// and tells the batcher which subscriptions are parked (a set refreshed from Redis every tick,
/// plus the ones this node parked since).
final class TargetParking: DeliveryParking {
    private let connection: AMQPConnection
    private let ledger: ParkingLedger
    private let names: ClusterNames
    private let queueType: String
    let settings: ParkingSettings
    private let logger: Logger
    private let channel = Mutex<AMQPChannel?>(nil)
    private let declared = Mutex<Set<String>>([])
    private let cache = Mutex(Cache())

    struct Cache {
        /// Parked subscriptions, with the refresh generation they were last seen or added in.
        var parked: [String: UInt64] = [:]
        var generation: UInt64 = 0
    }

    init(connection: AMQPConnection, ledger: ParkingLedger, names: ClusterNames, queueType: String, settings: ParkingSettings, logger: Logger) {
        self.connection = connection
        self.ledger = ledger
        self.names = names
        self.queueType = queueType
        self.settings = settings
        self.logger = logger
    }

    /// A parking queue's arguments: durable, one consumer at a time, bounded with `reject-publish`
    /// (a full queue refuses, and the confirm says so: the lane keeps the messages).
    var queueOptions: AMQPQueueOptions {
        AMQPQueueOptions(durable: true, arguments: [
            "x-queue-type": .string(queueType),
            "x-single-active-consumer": .bool(true),
            "x-max-length": .int(Int64(settings.subscriptionMaxMessages)),
            "x-overflow": .string("reject-publish"),
        ])
    }

    func isParked(_ subscriptionID: String) -> Bool {
        cache.withLock { $0.parked[subscriptionID] != nil }
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
            cache.parked = cache.parked.filter { $0.value > generation }
            for subscription in parked { cache.parked[subscription] = max(cache.parked[subscription] ?? 0, generation) }
        }
    }

    func park(_ messages: [ZaqarOutgoingMessage], reason: String, failed: Bool) async throws {
        guard let first = messages.first else { return }
        let subscription = first.subscriptionID
        let project = first.target.project
        var random = SystemRandomNumberGenerator()
        let reservation: ParkingLedger.Reservation
        do {
            reservation = try await ledger.reserve(
                subscription: subscription, project: project, count: messages.count, projectMax: settings.projectMaxMessages,
                subscriptionMax: settings.subscriptionMaxMessages, delay: failed ? settings.delay(attempt: 0, using: &random) : .zero, error: reason
            )
        } catch {
            ParkingMetrics.refused["unavailable"]?.increment()
            throw ParkingRefused(reason: "unavailable", description: "Redis could not count the parked messages: \(error)")
        }
        let parkedAt: Int64
        switch reservation {
        case .projectFull(let parked):
            ParkingMetrics.refused["project_full"]?.increment()
            throw ParkingRefused(reason: "project_full", description: "project \(project) has \(parked) messages parked; HERALD_PARKING_PROJECT_MAX_MESSAGES is \(settings.projectMaxMessages)")
        case .subscriptionFull(let parked):
            ParkingMetrics.refused["subscription_full"]?.increment()
            throw ParkingRefused(reason: "subscription_full", description: "subscription \(subscription) has \(parked) messages parked; HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES is \(settings.subscriptionMaxMessages)")
        case .reserved(_, let at):
            parkedAt = at
        }
        // From now on this node parks the subscription's messages, whatever a refresh under way says.
        cache.withLock { cache in cache.parked[subscription] = cache.generation + 1 }
        do {
            try await publish(messages, subscription: subscription, parkedAt: parkedAt)
        } catch {
            ParkingMetrics.refused["unavailable"]?.increment()
            try? await ledger.release(subscription: subscription, count: messages.count)
            throw ParkingRefused(reason: "unavailable", description: "RabbitMQ did not take the parked messages: \(error)")
        }
        if failed {
            logger.warning("parked messages of a failing target", metadata: [
                "subscription": "\(subscription)", "delivery.count": "\(messages.count)", "error": "\(SafeText.clean(reason, limit: 200))",
            ])
        }
    }

    private func publish(_ messages: [ZaqarOutgoingMessage], subscription: String, parkedAt: Int64) async throws {
        let queue = names.parkingQueue(subscription)
        let channel = try await publishingChannel()
        if !declared.withLock({ $0.contains(queue) }) {
            _ = try await declare(queue, on: channel)
            declared.withLock { declared in
                if declared.count >= 10_000 { declared.removeAll() }
                declared.insert(queue)
            }
        }
        let outgoing = messages.map { message in
            AMQPOutgoingMessage(exchange: "", routingKey: queue, body: message.body, properties: AMQPMessageProperties(
                contentType: "application/json",
                headers: [
                    "herald-subscription-id": .string(message.subscriptionID),
                    "herald-event-id": .string(message.eventID),
                    "herald-parked-at": .int(parkedAt),
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
            logger.warning("a parking queue exists with other arguments; using it as it is", metadata: ["amqp.queue": "\(queue)", "error": "\(error)"])
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

    func failing(_ subscriptionIDs: Set<String>, error: String) async {
        for subscription in subscriptionIDs {
            try? await ledger.noteFailure(subscription: subscription, error: SafeText.clean(error, limit: 200), ttl: settings.failingShownFor)
        }
    }

    func recovered(_ subscriptionIDs: Set<String>) async {
        for subscription in subscriptionIDs { try? await ledger.clearFailure(subscription: subscription) }
    }
}

/// Retries parked subscriptions: every tick it refreshes which subscriptions are parked (for the
/// batcher), then claims due ones in Redis and drains each from its queue in order, a batch at a
/// time, through `DeliveryBatcher.attemptParked`: delivered and dead-lettered messages are acked
/// and uncounted; on a failure the rest go back to the head of the queue (nack, requeue) and the
/// next attempt is scheduled with backoff. Past the horizon, messages still failing are
/// dead-lettered (`retry_horizon`). A deleted subscription's parked messages are dropped, counted.
final class ParkingDrainer: Sendable {
    private let connection: AMQPConnection
    private let ledger: ParkingLedger
    private let parking: TargetParking
    private let batcher: DeliveryBatcher
    private let index: Locked<SubscriptionIndex>
    private let names: ClusterNames
    private let nodeID: String
    private let defaultZaqarURL: String
    private let logger: Logger
    private let active = Mutex<Set<String>>([])
    /// Subscriptions whose queue this node found empty while Redis still counted messages, and when.
    private let emptySince = Mutex<[String: ContinuousClock.Instant]>([:])

    init(connection: AMQPConnection, ledger: ParkingLedger, parking: TargetParking, batcher: DeliveryBatcher, index: Locked<SubscriptionIndex>,
         names: ClusterNames, nodeID: String, defaultZaqarURL: String, logger: Logger) {
        self.connection = connection
        self.ledger = ledger
        self.parking = parking
        self.batcher = batcher
        self.index = index
        self.names = names
        self.nodeID = nodeID
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
                ticks += 1
                let free = settings.concurrentDrains - active.withLock { $0.count }
                if free > 0, let claimed = try? await ledger.claimDue(node: nodeID, lease: settings.claimLease, limit: free) {
                    for subscription in claimed {
                        guard active.withLock({ $0.insert(subscription).inserted }) else { continue }
                        group.addTask {
                            await self.drain(subscription)
                            _ = self.active.withLock { $0.remove(subscription) }
                        }
                    }
                }
                try? await Task.sleep(for: settings.tick)
            }
        }
    }

    /// Which subscriptions are parked, for the batcher; and, now and then, the gauges.
    func refresh(gauges: Bool) async {
        let generation = parking.beginRefresh()
        guard let parked = try? await ledger.parkedSubscriptions() else { return }
        parking.apply(parked, generation: generation)
        guard gauges, let states = try? await ledger.allStates() else { return }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        ParkingMetrics.parkedSubscriptions.record(states.count)
        ParkingMetrics.parkedMessages.record(states.reduce(0) { $0 + $1.count })
        ParkingMetrics.oldestAge.record(Double(max(0, now - (states.map(\.since).min() ?? now))) / 1000)
    }

    /// Retries one claimed subscription's parked messages until its queue is empty, the target
    /// fails again, or the node stops.
    func drain(_ subscriptionID: String) async {
        let channel: AMQPChannel
        do {
            channel = try await connection.openChannel()
        } catch {
            try? await ledger.finished(subscription: subscriptionID, node: nodeID, delay: settings.tick)
            return
        }
        await drain(subscriptionID, on: channel)
        // Closing requeues, at the head of the queue, whatever was taken and not settled.
        await channel.close()
    }

    private func drain(_ subscriptionID: String, on channel: AMQPChannel) async {
        let queue = names.parkingQueue(subscriptionID)
        do {
            let state = try await parking.declare(queue, on: channel)
            guard index.withLock({ $0.subscription(id: subscriptionID) }) != nil else {
                await dropAll(subscriptionID, queue: queue, channel: channel)
                return
            }
            if state.messageCount == 0 {
                await reconcileEmpty(subscriptionID)
                return
            }
            emptySince.withLock { _ = $0.removeValue(forKey: subscriptionID) }
            let consumer = try await channel.consume(queue, prefetch: UInt16(clamping: settings.batchMessages))
            let inbox = DeliveryInbox()
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    do { for try await delivery in consumer { inbox.put(delivery) } } catch {}
                    inbox.finish()
                }
                await self.retry(subscriptionID, from: inbox, channel: channel)
                try? await consumer.cancel()
                inbox.finish()
            }
        } catch {
            logger.warning("cannot retry parked messages", metadata: ["subscription": "\(subscriptionID)", "error": "\(error)"])
            try? await ledger.finished(subscription: subscriptionID, node: nodeID, delay: settings.tick)
        }
    }

    private func retry(_ subscriptionID: String, from inbox: DeliveryInbox, channel: AMQPChannel) async {
        var random = SystemRandomNumberGenerator()
        while !Task.isCancelled {
            let deliveries = await inbox.take(max: settings.batchMessages, firstWithin: .seconds(2), moreWithin: .milliseconds(20))
            guard !deliveries.isEmpty else {
                // The queue is empty for now; anything counted meanwhile is due again soon.
                try? await ledger.finished(subscription: subscriptionID, node: nodeID, delay: settings.tick)
                return
            }
            guard let subscription = index.withLock({ $0.subscription(id: subscriptionID) }) else {
                for delivery in deliveries { channel.ack(delivery) }
                try? await ledger.release(subscription: subscriptionID, count: deliveries.count)
                ParkingMetrics.dropped.increment(by: deliveries.count)
                logger.info("dropped parked messages of a deleted subscription", metadata: ["subscription": "\(subscriptionID)", "delivery.count": "\(deliveries.count)"])
                continue
            }
            let target = subscription.zaqarTarget(defaultURL: defaultZaqarURL)
            let messages = deliveries.map { delivery in
                ZaqarOutgoingMessage(
                    target: target, body: delivery.body, subscriptionID: subscriptionID,
                    eventID: delivery.properties.headers["herald-event-id"]?.string ?? delivery.properties.messageID ?? ""
                )
            }
            let outcome = await batcher.attemptParked(messages)
            let settled: Int
            var failure: (error: String, retryAfter: Duration?)?
            switch outcome {
            case .settled:
                settled = deliveries.count
            case .failed(let count, let error, let retryAfter):
                settled = count
                failure = (error, retryAfter)
            }
            for delivery in deliveries.prefix(settled) { channel.ack(delivery) }
            if settled > 0 {
                try? await ledger.release(subscription: subscriptionID, count: settled)
                ParkingMetrics.delivered.increment(by: settled)
            }
            guard let failure else {
                // Still ours for another lease: no other node starts on it meanwhile.
                try? await ledger.renew(subscription: subscriptionID, node: nodeID, lease: settings.claimLease)
                continue
            }
            ParkingMetrics.retries.increment()
            // Past the horizon, what still fails is dead-lettered; the rest waits for the next attempt.
            let rest = Array(deliveries.dropFirst(settled))
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let horizon = settings.horizon.milliseconds
            let expired = rest.prefix { ($0.properties.headers["herald-parked-at"]?.int ?? now) + horizon <= now }
            let attempts = (try? await ledger.state(subscription: subscriptionID))?.attempts ?? 0
            if !expired.isEmpty {
                let parkedAt = expired.first?.properties.headers["herald-parked-at"]?.int ?? now
                await batcher.deadLetterExpired(Array(messages.dropFirst(settled).prefix(expired.count)), detail:
                    "retried for \(Duration.milliseconds(now - parkedAt).seconds) s (\(attempts + 1) attempts after parking) without delivery; HERALD_DELIVERY_RETRY_HORIZON is \(settings.horizon.seconds) s; last error: \(failure.error)")
                for delivery in expired { channel.ack(delivery) }
                try? await ledger.release(subscription: subscriptionID, count: expired.count)
            }
            guard let last = rest.dropFirst(expired.count).last else { continue }
            channel.nack(last, multiple: true, requeue: true)
            let delay = max(settings.delay(attempt: attempts, using: &random), failure.retryAfter ?? .zero)
            _ = try? await ledger.retryLater(subscription: subscriptionID, node: nodeID, delay: delay, error: SafeText.clean(failure.error, limit: 200))
            logger.info("parked messages still fail; retrying later", metadata: [
                "subscription": "\(subscriptionID)", "herald.attempt": "\(attempts + 1)", "herald.next_seconds": "\(delay.seconds)",
                "error": "\(SafeText.clean(failure.error, limit: 200))",
            ])
            return
        }
        try? await ledger.finished(subscription: subscriptionID, node: nodeID, delay: .zero)
    }

    /// A deleted subscription: its parked messages are dropped (counted) and its queue deleted.
    private func dropAll(_ subscriptionID: String, queue: String, channel: AMQPChannel) async {
        let dropped = (try? await channel.deleteQueue(queue)) ?? 0
        try? await ledger.forget(subscription: subscriptionID)
        ParkingMetrics.dropped.increment(by: dropped)
        logger.info("dropped the parked messages of a deleted subscription", metadata: ["subscription": "\(subscriptionID)", "delivery.count": "\(dropped)"])
    }

    /// Redis counts messages the queue does not hold (a node stopped between counting and
    /// publishing): after 30 s of an empty queue the count is dropped, or the subscription would
    /// stay parked for ever.
    private func reconcileEmpty(_ subscriptionID: String) async {
        let now = ContinuousClock.now
        let first = emptySince.withLock { seen in
            if seen.count >= 10_000 { seen.removeAll() }
            if seen[subscriptionID] == nil { seen[subscriptionID] = now }
            return seen[subscriptionID] ?? now
        }
        if now - first >= .seconds(30) {
            let count = (try? await ledger.state(subscription: subscriptionID))?.count ?? 0
            try? await ledger.forget(subscription: subscriptionID)
            emptySince.withLock { _ = $0.removeValue(forKey: subscriptionID) }
            ParkingMetrics.reconciled.increment(by: count)
            logger.warning("a parked subscription's queue stayed empty while messages were counted; count dropped", metadata: [
                "subscription": "\(subscriptionID)", "delivery.count": "\(count)",
            ])
        } else {
            try? await ledger.finished(subscription: subscriptionID, node: nodeID, delay: settings.tick * 5)
        }
    }
}

/// Deliveries of one consumer, taken in batches: `take` waits for the first and briefly for more.
final class DeliveryInbox: Sendable {
    private let state = Mutex(State())

    struct State {
        var buffer = Deque<AMQPDelivery>()
        var finished = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    func put(_ delivery: AMQPDelivery) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.buffer.append(delivery)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Up to `max` deliveries: waits up to `firstWithin` for one, then up to `moreWithin` for each next.
    func take(max: Int, firstWithin: Duration, moreWithin: Duration) async -> [AMQPDelivery] {
        var taken: [AMQPDelivery] = []
        while taken.count < max {
            let available = state.withLock { state -> [AMQPDelivery] in
                var out: [AMQPDelivery] = []
                while out.count + taken.count < max, let next = state.buffer.popFirst() { out.append(next) }
                return out
            }
            taken += available
            if taken.count >= max { break }
            guard await arrival(within: taken.isEmpty ? firstWithin : moreWithin) else { break }
        }
        return taken
    }

    /// Waits until something arrives (true), the inbox finishes or the time passes (false).
    private func arrival(within timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = self.state.withLock { state -> Bool in
                        if !state.buffer.isEmpty || state.finished { return true }
                        state.waiter = continuation
                        return false
                    }
                    if ready { continuation.resume() }
                }
                return self.state.withLock { !$0.buffer.isEmpty }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            // Wake the waiter, if it still waits, so the group can end.
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
            group.cancelAll()
            return first
        }
    }
}
