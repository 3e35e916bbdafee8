import Coordination
import Delivery
import Foundation
import HeraldModel
import Logging
import Messaging
import Metrics
import Notifications
import Routing
import Synchronization

/// How notifications come in: one ingest queue bound to every exchange, or one per exchange.
package enum IngestLayout: String, Equatable, Sendable, CaseIterable {
    /// `<cluster>.ingest`, bound to every exchange: one node ingests at a time (clusters made
    /// before ingest spread over nodes).
    case single
    /// `<cluster>.ingest.<exchange>`, one per exchange: the nodes share them out through leases
    /// of their own (an event type comes from one exchange, so its order is kept), so up to as
    /// many nodes as exchanges ingest at once.
    case perExchange = "per-exchange"
}

/// What Herald's queues are declared with: their type, their length bounds and the ingest layout.
package struct QueueShape: Equatable, Sendable {
    /// classic or quorum.
    package var type: String
    /// At most this many messages wait in each ingest queue; 0: no bound.
    package var ingestMaxMessages: Int
    /// At most this many messages wait in each `<cluster>.p.<n>` (and in `<cluster>.dead`); 0: no bound.
    package var partitionMaxMessages: Int
    var ingestLayout: IngestLayout
    /// At most this many bytes of bodies wait in each ingest queue (`x-max-length-bytes`); 0: no bound.
    package var ingestMaxBytes = 0
    /// At most this many bytes of bodies wait in each `<cluster>.p.<n>` (and in `<cluster>.dead`); 0: no bound.
    package var partitionMaxBytes = 0

    /// A new cluster's: quorum queues, which survive the loss of a RabbitMQ node, bounds, and
    /// an ingest queue per exchange.
    package static let newCluster = QueueShape(
        type: "quorum", ingestMaxMessages: 1_000_000, partitionMaxMessages: 50_000, ingestLayout: .perExchange,
        ingestMaxBytes: 4 << 30, partitionMaxBytes: 512 << 20)
    /// A cluster made before the record existed: classic queues without bounds, one ingest queue
    /// (the old defaults).
    static let legacy = QueueShape(
        type: "classic", ingestMaxMessages: 0, partitionMaxMessages: 0, ingestLayout: .single)
}

/// The queue shape a node declares with (HERALD_QUEUE_TYPE, HERALD_INGEST_QUEUE_MAX_MESSAGES,
/// HERALD_PARTITION_QUEUE_MAX_MESSAGES, HERALD_INGEST_LAYOUT).
///
/// RabbitMQ refuses to redeclare a queue with other arguments (406), so the shape is the
/// cluster's, recorded in Redis (`<prefix>queue-shape`, a hash) once a node has declared the
/// queues with it. Each value is, in order: the node's setting; the cluster's record; for a
/// cluster made before the record existed (its partition count is stored, no shape), `legacy`;
/// for a new cluster, `newCluster`.
package enum ClusterQueueShape {
    static let knownTypes = ["classic", "quorum"]

    /// - Parameters:
    ///   - configured: the node's settings (nil or empty: unset).
    ///   - recorded: the cluster's record (empty when there is none).
    ///   - clusterExists: whether the cluster's partition count is stored.
    /// - Throws: `ConfigurationError` naming the setting when the record holds a value this version cannot use.
    static func choose(
        configured: QueueShapeSettings, recorded: [String: String], clusterExists: Bool
    ) throws -> QueueShape {
        let fallback = recorded.isEmpty && !clusterExists ? QueueShape.newCluster : .legacy
        func recordedCount(_ field: String, key: String, _ otherwise: Int) throws -> Int {
            guard let text = recorded[field] else { return otherwise }
            guard let value = Int(text), value >= 0 else {
                throw ConfigurationError(
                    key: key, value: "(unset)",
                    expected:
                        "a whole number: the cluster's record in Redis says \(field) '\(text.prefix(40))'; set \(key)")
            }
            return value
        }
        var shape = fallback
        if !configured.type.isEmpty {
            shape.type = configured.type
        } else if let type = recorded["type"] {
            guard knownTypes.contains(type) else {
                throw ConfigurationError(
                    key: "HERALD_QUEUE_TYPE", value: "(unset)",
                    expected:
                        "classic or quorum: the cluster's record in Redis says '\(type.prefix(40))', which this version does not know; set HERALD_QUEUE_TYPE"
                )
            }
            shape.type = type
        }
        shape.ingestMaxMessages =
            try configured.ingestMaxMessages
            ?? recordedCount("ingest-max-messages", key: "HERALD_INGEST_QUEUE_MAX_MESSAGES", fallback.ingestMaxMessages)
        shape.partitionMaxMessages =
            try configured.partitionMaxMessages
            ?? recordedCount(
                "partition-max-messages", key: "HERALD_PARTITION_QUEUE_MAX_MESSAGES", fallback.partitionMaxMessages)
        // A record made before the byte bounds (its queues declared without them) has none.
        shape.ingestMaxBytes =
            try configured.ingestMaxBytes
            ?? recordedCount("ingest-max-bytes", key: "HERALD_INGEST_QUEUE_MAX_BYTES", fallback.ingestMaxBytes)
        shape.partitionMaxBytes =
            try configured.partitionMaxBytes
            ?? recordedCount("partition-max-bytes", key: "HERALD_PARTITION_QUEUE_MAX_BYTES", fallback.partitionMaxBytes)
        if let layout = configured.ingestLayout {
            // Back to one queue would bind it again beside the per-exchange ones: every
            // notification twice, and the per-exchange queues filling with nobody on them.
            if layout == .single && recorded["ingest-layout"] == IngestLayout.perExchange.rawValue {
                throw ConfigurationError(
                    key: "HERALD_INGEST_LAYOUT", value: layout.rawValue,
                    expected:
                        "per-exchange (or unset): this cluster moved to an ingest queue per exchange, and going back is not supported (docs/pipeline.md, \"Ingest\")"
                )
            }
            shape.ingestLayout = layout
        } else if let text = recorded["ingest-layout"] {
            guard let layout = IngestLayout(rawValue: text) else {
                throw ConfigurationError(
                    key: "HERALD_INGEST_LAYOUT", value: "(unset)",
                    expected:
                        "single or per-exchange: the cluster's record in Redis says '\(text.prefix(40))', which this version does not know; set HERALD_INGEST_LAYOUT"
                )
            }
            shape.ingestLayout = layout
        }
        return shape
    }

    /// The shape to declare with, from the settings and the cluster's keys in Redis.
    static func resolve(
        configured: QueueShapeSettings, redis: RedisClient, keyPrefix: String
    ) async throws -> QueueShape {
        let replies = try await redis.pipeline([
            RedisCommand("HGETALL", keyPrefix + "queue-shape"), RedisCommand("EXISTS", keyPrefix + "partitions"),
        ])
        let recorded = replies.first?.hashFields ?? [:]
        return try choose(configured: configured, recorded: recorded, clusterExists: (replies.last?.integer ?? 0) > 0)
    }

    /// Records the shape once the queues were declared with it, so later nodes declare the same.
    static func record(_ shape: QueueShape, redis: RedisClient, keyPrefix: String) async throws {
        try await redis.send(
            "HSET", keyPrefix + "queue-shape", "type", shape.type,
            "ingest-max-messages", shape.ingestMaxMessages, "partition-max-messages", shape.partitionMaxMessages,
            "ingest-layout", shape.ingestLayout.rawValue, "ingest-max-bytes", shape.ingestMaxBytes,
            "partition-max-bytes", shape.partitionMaxBytes
        )
    }
}

/// A node's own queue settings; nil (or an empty type) is unset: the cluster's record decides.
package struct QueueShapeSettings: Equatable, Sendable {
    var type: String = ""
    var ingestMaxMessages: Int?
    var partitionMaxMessages: Int?
    var ingestLayout: IngestLayout?
    var ingestMaxBytes: Int?
    var partitionMaxBytes: Int?
}

/// Herald's AMQP names (DESIGN.md, "Partitions"), with the cluster's name (`ClusterNames`).
package enum Topology {
    /// RabbitMQ 4 gives quorum queues a delivery limit of 20 unless one is set, after which a
    /// message given back that often (requeued after lost channels, handovers) is dropped or
    /// dead-lettered. Herald's queues set one that is never reached. Only with the bounded shape
    /// (a cluster made since then): adding it to an existing queue would be a 406.
    package static func deliveryLimit(_ shape: QueueShape) -> AMQPTable {
        shape.type == "quorum" ? ["x-delivery-limit": .int(1_000_000)] : [:]
    }

    /// What each exchange is bound with: every `<topic>.<priority>` (nova's versioned
    /// notifications and warn, critical, audit and sample ones as well as info and error), and
    /// Ceilometer's `event.sample` when its events are asked for. In exchange order.
    static func sources(_ configuration: NodeConfiguration) -> [(exchange: String, keys: [String])] {
        let keys = configuration.notificationTopics.flatMap { topic in configuration.priorities.map { "\(topic).\($0)" }
        }
        var sources: [String: [String]] = [:]
        for exchange in configuration.exchanges { sources[exchange, default: []] += keys }
        if configuration.ceilometerEvents { sources["ceilometer", default: []].append("event.sample") }
        return sources.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// The ingest queues and the exchanges each is bound to: `<cluster>.ingest` bound to every
    /// exchange (`single`), or `<cluster>.ingest.<exchange>` each bound to its own, in exchange
    /// order (`perExchange`: the ingest leases number them in this order).
    static func ingestQueues(_ configuration: NodeConfiguration) -> [(queue: String, exchanges: [String])] {
        let exchanges = sources(configuration).map(\.exchange)
        switch configuration.queueShape.ingestLayout {
        case .single: return [(configuration.names.ingest, exchanges)]
        case .perExchange: return exchanges.map { (configuration.names.ingestQueue(exchange: $0), [$0]) }
        }
    }

    /// The arguments of every ingest queue.
    static func ingestArguments(_ configuration: NodeConfiguration) -> AMQPTable {
        let shape = configuration.queueShape
        var arguments: AMQPTable = ["x-queue-type": .string(shape.type)]
        // Ordered ingest: one active consumer, the other nodes on standby (DESIGN.md had competing
        // consumers, which reorder events of a partition across nodes).
        if configuration.ingestOrdered { arguments["x-single-active-consumer"] = .bool(true) }
        // Bounded: a full ingest queue refuses what the services publish to it (their other
        // queues, Ceilometer's, still get it), so RabbitMQ, which the whole cloud shares, never
        // reaches a memory or disk alarm because of Herald.
        arguments.merge(bounds(messages: shape.ingestMaxMessages, bytes: shape.ingestMaxBytes, shape)) { a, _ in a }
        return arguments
    }

    /// A queue's bounds as arguments: at most `messages` messages and `bytes` bytes of bodies (0:
    /// no bound), past which RabbitMQ refuses publishes to it (`reject-publish`), with quorum's
    /// delivery limit; none when both are 0.
    package static func bounds(messages: Int, bytes: Int, _ shape: QueueShape) -> AMQPTable {
        var arguments: AMQPTable = [:]
        if messages > 0 { arguments["x-max-length"] = .int(Int64(messages)) }
        if bytes > 0 { arguments["x-max-length-bytes"] = .int(Int64(bytes)) }
        guard !arguments.isEmpty else { return [:] }
        arguments["x-overflow"] = .string("reject-publish")
        return arguments.merging(deliveryLimit(shape)) { first, _ in first }
    }

    /// Declares the notification exchanges as oslo.messaging does (topic), Herald's own
    /// ingest queues bound to them (never the shared notifications.info queue), the
    /// partition exchange, the dead-letter exchange, and the P partition queues.
    static func declare(on channel: AMQPChannel, configuration: NodeConfiguration) async throws {
        let names = configuration.names
        let partitions = names.partitions
        let dead = names.dead
        let sources = Self.sources(configuration)
        let shape = configuration.queueShape
        let queueArguments: AMQPTable = ["x-queue-type": .string(shape.type)]
        for (exchange, _) in sources {
            try await channel.declareExchange(
                exchange, options: AMQPExchangeOptions(type: "topic", durable: configuration.exchangesDurable))
        }
        let keys = Dictionary(uniqueKeysWithValues: sources.map { ($0.exchange, $0.keys) })
        for (queue, exchanges) in ingestQueues(configuration) {
            do {
                try await channel.declareQueue(
                    queue, options: AMQPQueueOptions(durable: true, arguments: ingestArguments(configuration)))
            } catch let error as MessagingError where error.replyCode == 406 {
                // The queue exists with other arguments: a node of another configuration or version declared it.
                throw ConfigurationError(
                    key: "HERALD_INGEST_ORDERED", value: "\(configuration.ingestOrdered)",
                    expected:
                        "\(queue) already exists with other arguments (\(error.replyText ?? "406")); set HERALD_INGEST_ORDERED, HERALD_QUEUE_TYPE, HERALD_INGEST_QUEUE_MAX_MESSAGES and HERALD_INGEST_QUEUE_MAX_BYTES as the running nodes have them (or leave them unset: the cluster's record in Redis decides), or delete \(queue) while no node runs"
                )
            }
            for exchange in exchanges {
                for key in keys[exchange] ?? [] { try await channel.bindQueue(queue, to: exchange, routingKey: key) }
            }
        }
        try await channel.declareExchange(partitions, options: AMQPExchangeOptions(type: "direct", durable: true))
        try await channel.declareExchange(dead, options: AMQPExchangeOptions(type: "fanout", durable: true))
        var deadArguments = queueArguments
        // Nothing consumes the dead queue: it keeps the newest.
        if shape.partitionMaxMessages > 0 { deadArguments["x-max-length"] = .int(Int64(shape.partitionMaxMessages)) }
        if shape.partitionMaxBytes > 0 { deadArguments["x-max-length-bytes"] = .int(Int64(shape.partitionMaxBytes)) }
        try await channel.declareQueue(dead, options: AMQPQueueOptions(durable: true, arguments: deadArguments))
        try await channel.bindQueue(dead, to: dead, routingKey: "")
        for partition in 0..<configuration.partitions {
            try await declarePartition(partition, on: channel, configuration: configuration)
        }
    }

    /// Declares one partition queue and binds it to the partition exchange (both exist after).
    static func declarePartition(
        _ partition: Int, on channel: AMQPChannel, configuration: NodeConfiguration
    )
        async throws
    {
        let names = configuration.names
        let shape = configuration.queueShape
        var arguments: AMQPTable = [
            "x-single-active-consumer": .bool(true),
            "x-dead-letter-exchange": .string(names.dead),
            "x-queue-type": .string(shape.type),
        ]
        // A full partition queue refuses the ingest's publish (a nack): the ingest holds the
        // notification unacked and tries again (`IngestHold`); the backlog stays in the ingest queue.
        arguments.merge(bounds(messages: shape.partitionMaxMessages, bytes: shape.partitionMaxBytes, shape)) { a, _ in
            a
        }
        try await channel.declareQueue(
            names.partitionQueue(partition), options: AMQPQueueOptions(durable: true, arguments: arguments))
        try await bindPartition(partition, on: channel, configuration: configuration)
    }

    /// Binds one partition queue to the partition exchange (its routing key: the partition's number).
    static func bindPartition(
        _ partition: Int, on channel: AMQPChannel, configuration: NodeConfiguration
    )
        async throws
    {
        let names = configuration.names
        try await channel.bindQueue(names.partitionQueue(partition), to: names.partitions, routingKey: "\(partition)")
    }
}

/// Notifications a partition queue refused (full: `x-overflow reject-publish`), held unacked
/// and published again, in order.
///
/// While any is held, ingest publishes nothing new: later notifications are held behind them,
/// so a partition's events keep their order and a full partition queue stops the ingest (at
/// most the ingest prefetch is held, then the ingest queue keeps the backlog). Nothing is
/// requeued (a requeued notification would come straight back and spin against the full
/// queue), dropped or dead-lettered. The first held notification is tried alone after 50 ms,
/// the wait doubling to 5 s while it is refused; once it is taken, all held ones are published
/// together. A value type that takes the time as an argument, so tests drive it without sleeping.
package struct IngestHold<Item: Sendable>: Sendable {
    struct Entry: Sendable {
        /// The order in which ingest took the notification.
        let sequence: UInt64
        /// What is still to publish of it.
        var item: Item
    }

    /// The waits between tries of the first held notification: 50 ms doubling to 5 s.
    static var retries: Backoff { Backoff(base: .milliseconds(50), cap: .seconds(5)) }

    /// In ingest order.
    private(set) var entries: [Entry] = []
    private var inFlight = false
    /// Refusals in the current spell; non-zero while refusals go on, and then only the first
    /// entry is tried.
    private var spell = 0
    private var due: ContinuousClock.Instant?
    /// Refusals so far.
    private(set) var refusals = 0

    /// Whether new notifications must be held behind earlier ones.
    var isHolding: Bool { !entries.isEmpty }

    /// Holds a notification behind the held ones (it was not published).
    mutating func hold(_ entry: Entry) {
        insert(entry)
    }

    /// A partition queue refused (part of) a notification published in the ordinary way: held,
    /// and the first held one is tried again after the next wait. Returns whether this began a spell.
    mutating func refused(_ entry: Entry, at now: ContinuousClock.Instant) -> Bool {
        insert(entry)
        return backOff(at: now)
    }

    /// What to publish now, when it is due and nothing is in flight: the first held entry alone
    /// while refusals go on, every held entry once one was taken.
    mutating func take(at now: ContinuousClock.Instant) -> [Entry]? {
        guard !inFlight, let first = entries.first, let due, due <= now else { return nil }
        inFlight = true
        return spell == 0 ? entries : [first]
    }

    /// What became of what `take` gave: for each entry, what is still to publish of it (nil:
    /// done, or dropped). A refusal waits longer and tries the first alone; otherwise the rest
    /// goes at once. Returns whether a refusal began a spell.
    @discardableResult
    mutating func settle(
        _ outcomes: [(sequence: UInt64, rest: Item?)], refused: Bool, at now: ContinuousClock.Instant
    ) -> Bool {
        inFlight = false
        for outcome in outcomes {
            guard let index = entries.firstIndex(where: { $0.sequence == outcome.sequence }) else { continue }
            if let rest = outcome.rest { entries[index].item = rest } else { entries.remove(at: index) }
        }
        if refused { return backOff(at: now) }
        spell = 0
        due = entries.isEmpty ? nil : now
        return false
    }

    /// How long until the held notifications are due; nil when none is held or some are in flight.
    func wait(at now: ContinuousClock.Instant) -> Duration? {
        guard !inFlight, !entries.isEmpty, let due else { return nil }
        return due > now ? due - now : .zero
    }

    private mutating func insert(_ entry: Entry) {
        let index = entries.firstIndex { $0.sequence > entry.sequence } ?? entries.endIndex
        entries.insert(entry, at: index)
    }

    private mutating func backOff(at now: ContinuousClock.Instant) -> Bool {
        refusals += 1
        spell += 1
        due = now + Self.retries.ceiling(attempt: spell - 1)
        return spell == 1
    }
}

/// What one ingest consumer's notifications are doing between the AMQP connection's thread
/// (`IngestService.forwardOnArrival`) and the ingest's task: the thread forwards a notification
/// only while nothing it handed over waits to be published (so the task's publishes are never
/// overtaken), and the consumer ends only once what the thread published is settled (`forwards`).
final class IngestArrivals: Sendable {
    /// Handed over to the task and not yet published (or found to need no publish) by it.
    private let handedOver = Atomic<Int>(0)
    /// Published by the thread, not yet confirmed or refused.
    let forwards = InFlight()

    /// Whether the thread may publish a notification itself: nothing handed over waits.
    var mayForward: Bool { handedOver.load(ordering: .acquiring) == 0 }

    /// The thread handed a notification over.
    func handOver() { handedOver.add(1, ordering: .releasing) }

    /// The task is done with one it was handed: published (called on the connection's thread,
    /// after the publish), or it publishes nothing of it.
    func handled() { handedOver.subtract(1, ordering: .releasing) }
}

/// The ingest's metrics for bounded queues (`Topology`), made from the node's metrics factory.
/// The queue label is bounded: one per ingest queue of the configuration.
package struct IngestMetrics: Sendable {
    /// `herald_partition_publish_refused_total{reason="full"}`: a partition queue at its bound
    /// refused a publish (nack); alert when it grows.
    let refusedFull: Counter
    /// `herald_partition_publish_refused_total{reason="unroutable"}`: a publish came back, its
    /// partition queue or binding missing (declared again before the next try).
    let refusedUnroutable: Counter
    /// `herald_partition_declare_failures_total`: the ingest could not declare a partition queue
    /// its notifications could not reach; alert when it keeps growing (ingest is stopped).
    let declareFailures: Counter
    private let factory: any MetricsFactory

    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        refusedFull = Counter(
            label: "herald_partition_publish_refused_total", dimensions: [("reason", "full")], factory: factory)
        refusedUnroutable = Counter(
            label: "herald_partition_publish_refused_total", dimensions: [("reason", "unroutable")], factory: factory)
        declareFailures = Counter(label: "herald_partition_declare_failures_total", factory: factory)
    }

    /// `herald_ingest_held_notifications`: notifications held unacked for a full partition queue.
    func held(_ queue: String) -> Gauge {
        Gauge(label: "herald_ingest_held_notifications", dimensions: [("queue", queue)], factory: factory)
    }
    /// `herald_ingest_queue_messages` (ready in the ingest queue, sampled every
    /// HERALD_INGEST_WATCH_SECONDS) over `herald_ingest_queue_max_messages` (its bound, 0: none):
    /// alert well before 1, where RabbitMQ refuses the services' notifications to Herald.
    func depth(_ queue: String) -> Gauge {
        Gauge(label: "herald_ingest_queue_messages", dimensions: [("queue", queue)], factory: factory)
    }
    func bound(_ queue: String) -> Gauge {
        Gauge(label: "herald_ingest_queue_max_messages", dimensions: [("queue", queue)], factory: factory)
    }
}

/// Where in the pipeline an event is counted.
package enum PipelineStage: String, CaseIterable, Sendable {
    case ingested, routed, malformed, consumed, matched, unmatched
    /// A partition's delivery its owner sent to `herald.dead`: it cannot decode it, or none of its
    /// events falls in that partition (the nodes disagree on the event definitions).
    case misrouted
}

/// `herald_events_total{stage}` (bounded labels): the events at each stage, kept once, in the
/// metrics backend the counters are made from (Prometheus in a node; tests read theirs).
package struct PipelineCounters: Sendable {
    private let counters: [PipelineStage: Counter]
    private let factory: any MetricsFactory

    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        counters = Dictionary(uniqueKeysWithValues: PipelineStage.allCases.map { ($0, Self.counter($0, factory)) })
    }

    private static func counter(_ stage: PipelineStage, _ factory: any MetricsFactory) -> Counter {
        Counter(label: "herald_events_total", dimensions: [("stage", stage.rawValue)], factory: factory)
    }

    /// Counts events at a stage.
    func count(_ stage: PipelineStage, by amount: Int = 1) {
        (counters[stage] ?? Self.counter(stage, factory)).increment(by: amount)
    }
}

/// Consumes one ingest queue (the single active consumer, or a competing one when
/// HERALD_INGEST_ORDERED=false), finds each event's
/// partition, republishes the untouched body to herald.partitions with routing key =
/// partition and headers, and acks only after the broker confirmed. Undecodable input
/// is dead-lettered with the reason, then acked.
package final class IngestService: Sendable {
    private let connection: AMQPConnection
    /// The ingest queue this service consumes (`Topology.ingestQueues`).
    let queue: String
    private let configuration: NodeConfiguration
    /// The queue's length and bound, sampled by `watch`.
    private let depth: Gauge
    private let bound: Gauge
    /// Notifications held for a full partition queue (`IngestHold`).
    private let held: Gauge
    private let deadLetters: CountedDeadLetters
    private let metrics: IngestMetrics
    private let logger: Logger
    let counters: PipelineCounters
    private let consumer = Mutex<AMQPConsumer?>(nil)
    private let stopped = Atomic<Bool>(false)
    /// Publishes that full partition queues refused, since the start (each `consumeOnce` has an
    /// `IngestHold` of its own).
    private let refusalCount = Atomic<Int>(0)
    /// Failed declares of partition queues notifications could not reach, since the start.
    private let declareFailureCount = Atomic<Int>(0)
    /// Notifications published on the AMQP connection's thread (`forwardOnArrival`), since the start.
    private let forwardedCount = Atomic<Int>(0)
    /// The longest event type, message id or project routed: AMQP short strings hold 255 bytes.
    static let maxRoutedField = 255
    /// The largest notification decoded on the AMQP connection's thread (`forwardOnArrival`):
    /// every channel of the node's connection waits while it is, so larger ones (Ceilometer's
    /// lists) are decoded by the ingest's task.
    static let forwardedBodyLimit = 32 << 10
    /// A notification with what is still to publish of it (held for a full partition queue).
    private typealias Held = (delivery: AMQPDelivery, messages: [AMQPOutgoingMessage])

    init(
        connection: AMQPConnection, queue: String, configuration: NodeConfiguration,
        deadLetters: CountedDeadLetters, metrics: IngestMetrics = IngestMetrics(), counters: PipelineCounters,
        logger: Logger
    ) {
        self.connection = connection
        self.queue = queue
        self.metrics = metrics
        depth = metrics.depth(queue)
        bound = metrics.bound(queue)
        held = metrics.held(queue)
        self.configuration = configuration
        self.deadLetters = deadLetters
        self.logger = logger
        self.counters = counters
    }

    /// Runs until `stop()`; returns once every delivery taken is acked. A consumer that ends
    /// any other way (the broker cancelled it, or dropped it: see `watch`) or fails is logged
    /// as an error and started again: ingest never stops quietly.
    func run() async throws {
        var failures = 0
        while !stopped.load(ordering: .relaxed) {
            do {
                try await consumeOnce()
                failures = 0
                if stopped.load(ordering: .relaxed) { break }
                logger.error("the \(queue) consumer ended without a stop; consuming again")
            } catch {
                failures += 1
                if stopped.load(ordering: .relaxed) { break }
                logger.error(
                    "ingest failed; consuming again",
                    metadata: [LogKey.error: "\(error)", LogKey.heraldAttempt: "\(failures)"])
            }
            try? await Task.sleep(
                for: Backoff(base: .milliseconds(500), cap: .seconds(5), floor: 0.5).delay(attempt: failures))
        }
    }

    /// One consumer on the ingest queue, until it ends; then every delivery taken is acked or
    /// given back: it returns once both channels are closed (what was taken and not acked is
    /// the queue's again, at its head, before a next owner of the queue consumes).
    private func consumeOnce() async throws {
        let consuming = try await connection.openChannel()
        let publishing: AMQPChannel
        do { publishing = try await connection.openChannel() } catch {
            await consuming.close()
            throw error
        }
        let result: Result<Void, any Error>
        do { result = .success(try await consume(consuming: consuming, publishing: publishing)) } catch {
            result = .failure(error)
        }
        await consuming.close()
        await publishing.close()
        try result.get()
    }

    private func consume(consuming: AMQPChannel, publishing: AMQPChannel) async throws {
        try await Topology.declare(on: publishing, configuration: configuration)
        try await publishing.enableConfirms()
        // Confirms are awaited in order on a second task, so publishing never waits for them.
        // Each partition's message has a ticket of its own, so a refusal names what to publish again.
        typealias Ticketed = [(message: AMQPOutgoingMessage, ticket: AMQPPublishTicket)]
        let (pending, pendingContinuation) = AsyncStream.makeStream(of: (UInt64, AMQPDelivery, Ticketed).self)
        // What full partition queues refused, held and published again in order (IngestHold).
        let hold = Locked(IngestHold<Held>())
        let (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        // Set once a publish failed (not refused): nothing later is published or acked; the
        // channels' close gives it all back, in order.
        let broken = Locked(false)
        // What the connection's thread published itself (`forwardOnArrival`), and what it handed over.
        let arrivals = IngestArrivals()
        // Set when a refusal was a return (312 NO_ROUTE: a partition queue or its binding is
        // missing): the retrier declares the held notifications' partitions before it tries them
        // again, whichever node owns them (or none).
        let unroutable = Locked(false)
        let noteRefusal: @Sendable (Bool, any Error) -> Void = { [self] first, error in
            if (error as? MessagingError)?.replyCode == 312 {
                unroutable.withLock { $0 = true }
                metrics.refusedUnroutable.increment()
            } else {
                metrics.refusedFull.increment()
            }
            let refusals = refusalCount.add(1, ordering: .relaxed).newValue
            if first || refusals % 100 == 0 {
                logger.warning(
                    "a partition queue refused a notification (full: HERALD_PARTITION_QUEUE_MAX_MESSAGES; or missing, unroutable: declared again before the next try); it is held and tried again, and ingest publishes nothing new until it is taken",
                    metadata: [
                        LogKey.error: "\(error)", LogKey.heraldRefusals: "\(refusals)",
                    ])
            }
        }
        /// Holds what a partition queue refused of a notification, behind the held ones; returns
        /// whether this began a spell of refusals (for `noteRefusal`).
        let holdRefused: @Sendable (UInt64, Held) -> Bool = { [self] sequence, item in
            let first = hold.withLock { hold in
                let first = hold.refused(.init(sequence: sequence, item: item), at: .now)
                held.record(hold.entries.count)
                return first
            }
            wake.yield()
            return first
        }
        // This consumer, once it is made (for `breakOff`).
        let current = Locked<AMQPConsumer?>(nil)
        /// After a failed publish: every later notification is left unacked, and the consumer
        /// ends: closing the channels gives them back to the head of the ingest queue (a nack
        /// would put one at the back of a quorum queue, behind notifications of its partition).
        /// The consumer is cancelled, not its channel closed here: the acker and the retrier
        /// both settle, and an ack the other sends after this must still go out. Runs once.
        let breakOff: @Sendable () -> Void = {
            guard
                broken.withLock({ broken in
                    defer { broken = true }
                    return !broken
                })
            else { return }
            // Nothing left on its way at the cancel (`cancelAfterSpendingCredit`): what the node
            // received and did not ack comes back at the queue's head, in order; what is on its
            // way at a plain cancel would come back behind later notifications.
            Task { [prefetch = self.configuration.ingestPrefetch] in
                try? await current.value?.cancelAfterSpendingCredit(prefetch: prefetch)
            }
        }
        /// A publish of the task's failed or was refused: told on the connection's thread, so that
        /// the thread forwards nothing after it (a failure: nothing more at all; a refusal: nothing
        /// until the acker holds it).
        let taskPublishFailed: @Sendable (MessagingError) -> Void = { error in
            if error.code == .publishNacked { arrivals.handOver() } else { breakOff() }
        }
        let consumer = try await consuming.consume(
            queue, prefetch: configuration.ingestPrefetch,
            onArrival: forwardOnArrival(
                publishing: publishing, arrivals: arrivals, hold: hold, broken: broken,
                refused: { sequence, item, error in
                    let first = holdRefused(sequence, item)
                    // Logged off the connection's thread.
                    Task { noteRefusal(first, error) }
                },
                breakOff: breakOff))
        current.withLock { $0 = consumer }
        // Stopped before the consumer was made (`stop` found none to cancel): both under one lock.
        if self.consumer.withLock({ held in
            held = consumer
            return stopped.load(ordering: .relaxed)
        }) {
            try? await consumer.cancelAfterSpendingCredit(prefetch: configuration.ingestPrefetch)
        } else if broken.value {
            try? await consumer.cancel()
        }
        // Only watches the consumer; cancelled when this returns (it holds nothing to hand back).
        let watchdog = Task { await watch(consumer) }
        defer { watchdog.cancel() }
        /// Awaits a notification's tickets in order and settles it: acked when every message was
        /// taken; when the channel or the connection failed, left unacked and the consumer ended
        /// (`breakOff`). Otherwise it answers what the broker refused (a nack), to hold; empty
        /// when there is nothing to hold.
        let settle:
            @Sendable (AMQPDelivery, Ticketed) async -> (refused: [AMQPOutgoingMessage], nack: (any Error)?, nacks: Int) =
                {
                    delivery, tickets in
                    var refused: [AMQPOutgoingMessage] = []
                    var nack: (any Error)?
                    var failed = false
                    for (message, ticket) in tickets {
                        do {
                            try await ticket.wait()
                        } catch let error as MessagingError where error.code == .publishNacked {
                            refused.append(message)
                            nack = error
                        } catch {
                            failed = true
                        }
                    }
                    if failed || broken.value {
                        breakOff()
                        return ([], nil, refused.count)
                    }
                    if refused.isEmpty { consuming.ack(delivery) }
                    return (refused, nack, refused.count)
                }
        // Acks in publish order as the confirms come. Awaited below, before the retrier is stopped.
        let acker = Task {
            for await (sequence, delivery, tickets) in pending {
                let (refused, nack, nacks) = await settle(delivery, tickets)
                if let nack, !refused.isEmpty {
                    noteRefusal(holdRefused(sequence, (delivery, refused)), nack)
                }
                // The refusals `taskPublishFailed` told the thread of are held now (or the consumer ends).
                for _ in 0..<nacks { arrivals.handled() }
            }
        }
        // Publishes the held notifications again. Awaited in `stopRetrying`.
        let retrier = Task {
            var wakeups = wakes.makeAsyncIterator()
            while !Task.isCancelled {
                let (taken, wait) = hold.withLock { hold in (hold.take(at: .now), hold.wait(at: .now)) }
                guard let taken else {
                    if let wait { try? await Task.sleep(for: wait) } else { _ = await wakeups.next() }
                    continue
                }
                // Until a try goes through: a batch's last refusal may be another kind, and the
                // returned one need not be the first taken.
                if unroutable.value {
                    await declarePartitions(of: taken.flatMap(\.item.messages))
                }
                var published: [(sequence: UInt64, delivery: AMQPDelivery, tickets: Ticketed?)] = []
                for entry in taken {
                    // A delivery whose channel went is the broker's again: dropped here, not published twice.
                    guard consumer.isCurrent(entry.item.delivery) else {
                        published.append((entry.sequence, entry.item.delivery, nil))
                        continue
                    }
                    published.append(
                        (
                            entry.sequence, entry.item.delivery,
                            entry.item.messages.map { ($0, publishing.publishInOrder([$0], mandatory: true)) }
                        ))
                }
                var outcomes: [(sequence: UInt64, rest: Held?)] = []
                var lastNack: (any Error)?
                for (sequence, delivery, tickets) in published {
                    guard let tickets else {
                        outcomes.append((sequence, nil))
                        continue
                    }
                    let (refused, nack, _) = await settle(delivery, tickets)
                    outcomes.append((sequence, refused.isEmpty ? nil : (delivery, refused)))
                    if !refused.isEmpty { lastNack = nack }
                }
                let first = hold.withLock { hold in
                    let first = hold.settle(outcomes, refused: lastNack != nil, at: .now)
                    held.record(hold.entries.count)
                    return first
                }
                if lastNack == nil { unroutable.withLock { $0 = false } }
                if let lastNack { noteRefusal(first, lastNack) }
            }
        }
        // What the connection's thread handed over, in order. Each one is `handled` once, when
        // nothing of it can overtake what the thread forwards after it: at once when it is not
        // published, and on the connection's thread right after its publish when it is.
        do {
            for try await delivery in consumer {
                let sequence = delivery.arrivalOrder
                // Taken before a reconnect: the broker gives it again on the new connection;
                // publishing it now as well would put it twice, the first copy ahead of its
                // neighbours. (What was already in flight at the loss can still come twice.)
                // After a failed publish: left for the channels' close (see `breakOff`).
                guard consumer.isCurrent(delivery), !broken.value else {
                    arrivals.handled()
                    continue
                }
                guard let routed = await route(delivery) else {
                    arrivals.handled()
                    pendingContinuation.yield((sequence, delivery, []))
                    continue
                }
                let isHeld = hold.withLock { hold in
                    guard hold.isHolding else { return false }
                    hold.hold(.init(sequence: sequence, item: (delivery, routed)))
                    self.held.record(hold.entries.count)
                    return true
                }
                if isHeld {
                    // Held: the hold keeps the thread from forwarding anything until it is published.
                    arrivals.handled()
                    wake.yield()
                    continue
                }
                let lastHandled: @Sendable () -> Void = { arrivals.handled() }
                var tickets: Ticketed = []
                for (index, message) in routed.enumerated() {
                    // Mandatory: with its partition queue deleted, a notification comes back and is
                    // held (as one a full queue refused), not dropped by the broker.
                    let ticket = publishing.publishInOrder(
                        [message], mandatory: true, published: index == routed.count - 1 ? lastHandled : nil,
                        failed: taskPublishFailed)
                    tickets.append((message, ticket))
                }
                // An empty Ceilometer list: nothing to publish, acked as it is.
                if routed.isEmpty { arrivals.handled() }
                pendingContinuation.yield((sequence, delivery, tickets))
            }
        } catch {
            await finish(pendingContinuation, acker: acker, arrivals: arrivals)
            await stopRetrying(retrier, wake: wake, publishing: publishing)
            throw error
        }
        await finish(pendingContinuation, acker: acker, arrivals: arrivals)
        await stopRetrying(retrier, wake: wake, publishing: publishing)
    }

    /// Waits until every notification taken is settled or held: the acker's, and what the
    /// connection's thread published itself (a refusal among those is held before this returns).
    private func finish<Element>(
        _ pending: AsyncStream<Element>.Continuation, acker: Task<Void, Never>, arrivals: IngestArrivals
    ) async {
        pending.finish()
        await acker.value
        _ = await arrivals.forwards.zero()
    }

    /// The ingest's work on the connection's thread: a notification of at most
    /// `forwardedBodyLimit` bytes whose events fall in one partition is decoded and published
    /// there as it arrives, and acked there once the broker confirmed it: no task is woken for
    /// it. Anything else is handed over to `consume`'s loop, and so is everything after it until
    /// that loop has published it (or found nothing to publish): one path never overtakes the
    /// other. While notifications are held for a full partition queue, or after a failed
    /// publish, everything is handed over.
    private func forwardOnArrival(
        publishing: AMQPChannel, arrivals: IngestArrivals, hold: Locked<IngestHold<Held>>, broken: Locked<Bool>,
        refused: @escaping @Sendable (UInt64, Held, MessagingError) -> Void,
        breakOff: @escaping @Sendable () -> Void
    ) -> @Sendable (AMQPDelivery) -> AMQPArrival {
        { [self] delivery in
            guard delivery.body.count <= Self.forwardedBodyLimit, arrivals.mayForward, !broken.value,
                !hold.withLock({ $0.isHolding }),
                let routed = try? routedMessages(delivery, parts: false), routed.count == 1
            else {
                // Decoded again (and counted) there; one that cannot be is dead-lettered there.
                arrivals.handOver()
                return .handOver
            }
            counters.count(.ingested)
            counters.count(.routed)
            forwardedCount.add(1, ordering: .relaxed)
            arrivals.forwards.add()
            return .forward(
                routed, on: publishing,
                settled: { result in
                    defer { arrivals.forwards.remove() }
                    switch result {
                    case .success:
                        return !broken.value
                    case .failure(let error) where error.code == .publishNacked:
                        if !broken.value { refused(delivery.arrivalOrder, (delivery, routed), error) }
                        return false
                    case .failure:
                        breakOff()
                        return false
                    }
                })
        }
    }

    /// Ends the retrier of a consumer that ended: what it still holds is unacked, and RabbitMQ
    /// gives it back to the ingest queue when the channels close.
    private func stopRetrying(
        _ retrier: Task<Void, Never>, wake: AsyncStream<Void>.Continuation, publishing: AMQPChannel
    ) async {
        retrier.cancel()
        wake.finish()
        await publishing.close()
        await retrier.value
        held.record(0)
    }

    /// Every `ingestWatchInterval`: when RabbitMQ lists no consumer on the ingest queue (or no
    /// such queue) while this node believes it consumes, the broker has dropped this node's
    /// consumer (seen under load-test failure scenarios: every node's ingest channel open, no
    /// consumer left, notifications piling up): cancel it so that `run` consumes anew.
    private func watch(_ consumer: AMQPConsumer) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.ingestWatchInterval)
            if Task.isCancelled || stopped.load(ordering: .relaxed) { return }
            guard connection.isConnected else { continue }
            let answer: Result<AMQPQueueState?, any Error>
            do { answer = .success(try await connection.queueState(queue)) } catch { answer = .failure(error) }
            if case .success(let state?) = answer {
                depth.record(state.messageCount)
                bound.record(configuration.queueShape.ingestMaxMessages)
            }
            switch answer {
            case .success(let state?) where state.consumerCount == 0:
                logger.error(
                    "RabbitMQ lists no consumer on \(queue) although this node consumes it; consuming anew",
                    metadata: [
                        LogKey.amqpMessages: "\(state.messageCount)", LogKey.amqpConsumer: "\(consumer.tag)",
                    ])
            case .success(nil):
                logger.error(
                    "\(queue) is gone; declaring it again and consuming anew",
                    metadata: [LogKey.amqpConsumer: "\(consumer.tag)"])
            default:
                continue
            }
            try? await consumer.cancel()
            return
        }
    }

    /// Declares the partition queues (and bindings) `messages` go to, on a channel of its own
    /// (a refusal closes that one, not the ingest's): a deleted queue or a removed binding comes
    /// back even when no node consumes the partition. A queue that exists with other arguments
    /// (406) is bound all the same.
    private func declarePartitions(of messages: [AMQPOutgoingMessage]) async {
        let partitions = Set(messages.compactMap { Int($0.routingKey) }).filter {
            (0..<configuration.partitions).contains($0)
        }
        guard !partitions.isEmpty, let channel = try? await connection.openChannel() else { return }
        do {
            for partition in partitions.sorted() {
                do {
                    try await Topology.declarePartition(partition, on: channel, configuration: configuration)
                } catch let error as MessagingError where error.replyCode == 406 {
                    // The channel is open again (the engine reopens a channel the broker closed).
                    try await Topology.bindPartition(partition, on: channel, configuration: configuration)
                }
            }
            logger.notice(
                "declared partition queues that notifications could not reach",
                metadata: [LogKey.partition: "\(partitions.sorted())"])
        } catch {
            metrics.declareFailures.increment()
            // The first failure, then every 10th (the retrier comes back every 5 s at most).
            let failures = declareFailureCount.add(1, ordering: .relaxed).newValue
            if failures % 10 == 1 {
                logger.warning(
                    "cannot declare a partition queue that notifications could not reach; they stay held",
                    metadata: [LogKey.error: "\(error)", LogKey.amqpFailures: "\(failures)"])
            }
        }
        await channel.close()
    }

    /// The messages to publish for a delivery, or nil when it was dead-lettered.
    private func route(_ delivery: AMQPDelivery) async -> [AMQPOutgoingMessage]? {
        counters.count(.ingested)
        let messages: [AMQPOutgoingMessage]
        do {
            messages = try routedMessages(delivery)
        } catch {
            counters.count(.malformed)
            let kept = delivery.body.prefix(64 << 10)
            var letter = DeadLetter(
                reason: .malformed, detail: SafeText.clean("\(error)", limit: 500),
                target: "\(delivery.exchange)/\(delivery.routingKey)",
                body: String(decoding: kept, as: UTF8.self), at: Date().timeIntervalSince1970
            )
            // Cut here, or already on the wire (`isPartial`): the whole length says which.
            if kept.count < delivery.bodyLength { letter.bodyTruncated = true }
            await store([letter])
            return nil
        }
        counters.count(.routed, by: messages.count)
        return messages
    }

    /// One message per partition the delivery's events fall in (a Ceilometer list may span
    /// several), with the headers the owner routes by.
    /// - Throws: `NotificationDecodingError` when the body is not a notification Herald can route.
    /// - Parameter parts: whether a list spanning partitions is cut into each one's part (the
    ///   connection thread's fast path, which takes only notifications of one partition, skips it).
    private func routedMessages(_ delivery: AMQPDelivery, parts: Bool = true) throws -> [AMQPOutgoingMessage] {
        guard !delivery.isPartial else {
            // The connection kept only its start (`AMQPConfiguration.maxBodyBytes`).
            throw NotificationDecodingError(
                "the notification is \(delivery.bodyLength) bytes; at most \(NotificationDecoder.defaultMaxBytes) are accepted (its first \(delivery.body.count) bytes were read)"
            )
        }
        let events = try NotificationDecoder.decode(delivery.body).map { event in
            var event = event
            configuration.eventDefinitions.attribute(&event)
            return event
        }
        // The decoder refused event types and message ids too long for a header; the projects
        // and resource id the definitions (or the decoder's guess) found are checked here.
        for event in events {
            for (field, value) in [
                ("project", event.project ?? ""), ("actor project", event.actorProject ?? ""),
                ("resource id", event.resourceID ?? ""),
            ]
            where value.utf8.count > Self.maxRoutedField {
                throw NotificationDecodingError(
                    "\(field) is \(value.utf8.count) bytes; at most \(Self.maxRoutedField) fit an AMQP header (\(SafeText.quoted(value, limit: 40)))"
                )
            }
        }
        // One message per partition the events fall in (a Ceilometer list may span several).
        var byPartition: [Int: (first: NotificationEvent, all: [NotificationEvent])] = [:]
        for event in events {
            let partition = PartitionHash.partition(of: event.partitionKey, count: configuration.partitions)
            byPartition[partition, default: (event, [])].all.append(event)
        }
        let spans = parts && byPartition.count > 1
        return byPartition.sorted { $0.key < $1.key }.map { partition, routed in
            let event = routed.first
            // A list spanning several partitions: each gets only its own events (whole, a batch
            // of 100 events over 20 partitions was 20 copies, each decoded whole by its owner),
            // unless that part would not fit the decoder's bound (then the list, as it came).
            let part = spans ? NotificationDecoder.ceilometerList(routed.all) : nil
            var headers: [String: AMQPFieldValue] = [
                "herald-event-type": .string(event.eventType),
                "herald-project": .string(event.project ?? ""),
                "herald-actor-project": .string(event.actorProject ?? ""),
                "herald-resource-id": .string(event.resourceID ?? ""),
                "herald-message-id": .string(event.messageID),
                // How many of the body's events fall in this partition: with one, the
                // headers above say all the owner needs to know whether any
                // subscription could take it (`RoutedEvent`).
                "herald-events": .int(Int64(routed.all.count)),
                // Which definitions attributed it: an owner on others decodes it itself.
                "herald-definitions": .string(configuration.eventDefinitions.fingerprint),
            ]
            // A part holds this partition's events only: its owner takes them all, whatever its
            // own definitions say (no other partition has them).
            if part != nil { headers["herald-part"] = .bool(true) }
            return AMQPOutgoingMessage(
                exchange: configuration.names.partitions, routingKey: "\(partition)", body: part ?? delivery.body,
                properties: AMQPMessageProperties(
                    contentType: "application/json", headers: headers, persistent: true,
                    messageID: event.messageID
                ))
        }
    }

    /// Stores dead letters, retrying until Redis takes them: nothing is dropped.
    private func store(_ letters: [DeadLetter]) async {
        var attempt = 0
        while true {
            do {
                try await deadLetters.deadLetter(letters)
                return
            } catch {
                attempt += 1
                deadLetters.metrics.writeFailures.increment()
                if attempt == 1 || attempt % 10 == 0 {
                    logger.error(
                        "cannot store a dead letter; holding the notification and retrying",
                        metadata: [LogKey.error: "\(error)", LogKey.heraldAttempt: "\(attempt)"])
                }
                try? await Task.sleep(
                    for: Backoff(base: .milliseconds(50), cap: .seconds(2), floor: 0.5).delay(attempt: attempt - 1))
            }
        }
    }

    /// Stops taking new notifications; `run()` returns once the ones taken are acked.
    func stop() async {
        let consumer = consumer.withLock { consumer in
            stopped.store(true, ordering: .relaxed)
            return consumer
        }
        // Nothing left on its way at the cancel: what is would come back out of order.
        try? await consumer?.cancelAfterSpendingCredit(prefetch: configuration.ingestPrefetch)
    }

    /// A queue this node no longer consumes: its gauges say nothing rather than a stale length
    /// (the node consuming it now reports it).
    func clearGauges() {
        depth.record(0)
        held.record(0)
    }

    /// Publishes the partition queues refused since the start.
    var refusals: Int { refusalCount.load(ordering: .relaxed) }

    /// Notifications published on the AMQP connection's thread since the start; the rest went
    /// through the ingest's task.
    var forwardedOnArrival: Int { forwardedCount.load(ordering: .relaxed) }
}

/// Consumes the partitions this node owns: `acquired` starts a consumer on
/// herald.p.<n>; `revoke` cancels it, waits for in-flight deliveries to be delivered
/// (or dead-lettered) and acked, then confirms; `lost` stops at once.
package final class PartitionOwners: Sendable {
    private let connection: AMQPConnection
    private let coordinator: ClusterCoordinator
    private let batcher: DeliveryBatcher
    private let index: Locked<SubscriptionIndex>
    private let configuration: NodeConfiguration
    private let logger: Logger
    /// Misrouted deliveries seen, and undecodable ones: the first of each and then every 1,000th
    /// is logged (a rollout of new event definitions would otherwise log one line per
    /// notification); all are counted.
    private let misroutedSeen = Atomic<Int>(0)
    private let undecodableSeen = Atomic<Int>(0)
    let counters: PipelineCounters
    /// Events matched per subscription (the API's health view); nil: not counted.
    private let stats: SubscriptionStats?
    /// The event types seen per project, with a redacted sample (GET /v1/event-types); nil: none.
    private let catalog: EventTypeCatalog?
    private let owned = Mutex<[Int: Owned]>([:])
    /// Partitions revoked whose handover still drains: a `lost` that comes meanwhile gives back
    /// what they have not sent.
    private let draining = Mutex<[Int: Owned]>([:])
    /// Set by the leave's first revoke (`leaveDeadlines`).
    private let leaving = Mutex<LeaveDeadlines?>(nil)
    /// Partitions acquired whose consumer could not start (RabbitMQ away or reconnecting, the
    /// consume refused, ...) or ended without a stop, with the task trying again (and its token):
    /// until the consumer starts, or the partition is stopped or acquired anew. Without it the
    /// lease would be held, and renewed, with nobody consuming.
    private let retrying = Mutex(Retrying())

    struct Retrying {
        var byPartition: [Int: (token: UInt64, task: Task<Void, Never>)] = [:]
        var tokens: UInt64 = 0
        /// Set when the ownership events ended: nothing is retried any more.
        var closed = false

        /// Whether `token`'s retry is still the partition's, and its task not cancelled.
        func holds(_ partition: Int, token: UInt64) -> Bool {
            byPartition[partition]?.token == token && !Task.isCancelled
        }
    }
    /// Runs before a newly acquired partition is consumed (the parked subscriptions are re-read,
    /// so that a new owner does not deliver directly what the old one parked behind).
    private let beforeConsuming: @Sendable () async -> Void
    /// The handover drains' time (a manual clock in tests).
    private let clock: ElapsedClock

    final class Owned: Sendable {
        let epoch: UInt64
        let channel: AMQPChannel
        let consumer: AMQPConsumer
        /// Its events not yet settled, and one more while its consumer loop runs.
        let inFlight = InFlight()
        let task = Mutex<Task<Void, Never>?>(nil)
        /// What it submits to the batcher: given back at a stop (`stop`).
        let origin = DeliveryBatcher.Origin()
        /// Down to zero by `cutShort`: a handover's waits end (lost meanwhile, or the node leaves).
        let cut = InFlight()
        var isCutShort: Bool { cut.count == 0 }
        func cutShort() { cut.remove() }
        /// Messages of events given back after others of theirs went (delivered, dead-lettered
        /// or parked): the next owner handles those again.
        let repeated = Atomic<Int>(0)

        init(epoch: UInt64, channel: AMQPChannel, consumer: AMQPConsumer) {
            self.epoch = epoch
            self.channel = channel
            self.consumer = consumer
            cut.add()
        }
    }

    init(
        connection: AMQPConnection, coordinator: ClusterCoordinator, batcher: DeliveryBatcher,
        index: Locked<SubscriptionIndex>, configuration: NodeConfiguration,
        counters: PipelineCounters, stats: SubscriptionStats? = nil,
        catalog: EventTypeCatalog? = nil, logger: Logger,
        beforeConsuming: @escaping @Sendable () async -> Void = {}, clock: ElapsedClock = .continuous
    ) {
        self.beforeConsuming = beforeConsuming
        self.clock = clock
        self.stats = stats
        self.catalog = catalog
        self.connection = connection
        self.coordinator = coordinator
        self.batcher = batcher
        self.index = index
        self.configuration = configuration
        self.counters = counters
        self.logger = logger
    }

    /// Settles, on the AMQP connection's thread as it arrives, a delivery of partition
    /// `partition` (held under `epoch`) of one event that no subscription's project and patterns
    /// take (the ingest's headers say so, under this node's event definitions), when the
    /// event-type catalog wants no sample of it: acked as unmatched, no task woken, nothing
    /// decoded. Most events of a cloud meet no subscription. Only what is known at once is
    /// decided here (the lease, the candidate cache; no pattern is run on that thread, which
    /// every channel shares); everything else goes to `handle`.
    private func unmatchedOnArrival(partition: Int, epoch: UInt64) -> @Sendable (AMQPDelivery) -> AMQPArrival {
        { [self] delivery in
            guard let routed = unmatched(delivery, runningPatterns: false),
                coordinator.isActing(partition, epoch: epoch)
            else { return .handOver }
            if let project = routed.project, let catalog,
                !catalog.countedWithoutSample(project: project, eventType: routed.eventType)
            {
                return .handOver
            }
            counters.count(.consumed)
            counters.count(.unmatched)
            return .ack
        }
    }

    /// What the ingest's headers say of a delivery of one event that no subscription's project
    /// and patterns take, under this node's event definitions; nil when the body is to be decoded
    /// (several events, other definitions, or a subscription may take it). Without
    /// `runningPatterns` (the AMQP connection's thread) only the candidate cache is asked, and
    /// what it does not know is nil too.
    private func unmatched(_ delivery: AMQPDelivery, runningPatterns: Bool) -> RoutedEvent? {
        guard
            let routed = RoutedEvent(
                delivery.properties.headers, definitions: configuration.eventDefinitions.fingerprint)
        else { return nil }
        let index = index.withLock { $0 }
        let takes =
            runningPatterns
            ? index.mayMatch(eventType: routed.eventType, project: routed.project, actorProject: routed.actorProject)
            : index.mayMatchIfKnown(
                eventType: routed.eventType, project: routed.project, actorProject: routed.actorProject)
        return takes == false ? routed : nil
    }

    /// Follows the coordinator's ownership events until they end; returns once the drains of
    /// revoked partitions (which run beside the events, each in a child task) have ended too.
    /// Starts still being retried then give up.
    func run() async {
        await withDiscardingTaskGroup { group in
            for await event in coordinator.events {
                switch event {
                case .acquired(let partition, let epoch):
                    endRetry(partition)
                    // Starts run one at a time: after a node joins, the partitions it takes from
                    // this one are revoked while this one still starts those it got at first (the
                    // events wait their turn). One revoked meanwhile is not started, only to be
                    // stopped again: its revoke finds nothing to drain and confirms at once.
                    // (Released already, too: its revoke came before this event and was confirmed.)
                    if coordinator.isRevoking(partition, epoch: epoch) || !coordinator.holds(partition, epoch: epoch) {
                        logger.debug(
                            "not starting a partition revoked before its turn",
                            metadata: [LogKey.partition: "\(partition)"])
                        continue
                    }
                    let starting = clock.now()
                    do {
                        try await start(partition, epoch: epoch)
                        if !coordinator.holds(partition, epoch: epoch), let owned = leave(partition) {
                            // Released while it started (no revoke is coming for it any more).
                            await stop(owned, partition: partition, ending: .lost)
                            continue
                        }
                        logger.debug(
                            "consuming an acquired partition",
                            metadata: [
                                LogKey.partition: "\(partition)",
                                LogKey.heraldStartSeconds: "\((clock.now() - starting).seconds)",
                            ])
                    } catch {
                        logger.error(
                            "cannot consume an acquired partition; trying again until it can",
                            metadata: [LogKey.partition: "\(partition)", LogKey.error: "\(error)"])
                        retryStart(partition, epoch: epoch)
                    }
                case .revoke(let partition):
                    // Taken out now, before later events: the drain runs beside them and must
                    // never stop a newer consumer (or retry) of the same partition.
                    let owned = leave(partition)
                    // In a rebalance (a node joined) the next owner should not wait behind this
                    // node's backlog: given back soon. A node that stops (SIGTERM: a rolling
                    // restart) sends what it took for half of what its leave allows, and gives
                    // back the rest in time for its channel to close before its leases go (after
                    // that, the next owner would take later events first).
                    let ending: Ending =
                        coordinator.leaveDrainTimeout.map { .leaving(leaveDeadlines(leaving: $0)) }
                        ?? .rebalance(giveBackAfter: configuration.handoffGiveBack, drain: configuration.handoffDrain)
                    if let owned { draining.withLock { $0[partition] = owned } }
                    let revoked = clock.now()
                    group.addTask {
                        if let owned {
                            await self.stop(owned, partition: partition, ending: ending)
                            self.draining.withLock { draining in
                                if draining[partition] === owned { draining[partition] = nil }
                            }
                        }
                        self.coordinator.confirmRevoked(partition)
                        self.logger.debug(
                            "revoked partition handed over",
                            metadata: [
                                LogKey.partition: "\(partition)",
                                LogKey.heraldDrainSeconds: "\((self.clock.now() - revoked).seconds)",
                            ])
                    }
                case .lost(let partition):
                    if let owned = leave(partition) {
                        await stop(owned, partition: partition, ending: .lost)
                    } else if let handingOver = draining.withLock({ $0[partition] }) {
                        // Lost while its handover drains: what it has not sent goes back now, and
                        // its channel closes without waiting (the next owner may hold the lease).
                        batcher.giveBack(handingOver.origin)
                        handingOver.cutShort()
                    }
                }
            }
        }
        let left = retrying.withLock { retrying in
            retrying.closed = true
            defer { retrying.byPartition = [:] }
            return retrying.byPartition.values.map(\.task)
        }
        for task in left { task.cancel() }
    }

    /// Tries to start an acquired partition's consumer again, with backoff (0.2 s doubling to 5 s,
    /// with jitter), while this node still acts on it under `epoch` and it is not stopped or
    /// acquired anew (each retry has a token of its own: the same epoch can come back).
    private func retryStart(_ partition: Int, epoch: UInt64) {
        let backoff = Backoff(base: .milliseconds(200), cap: .seconds(5))
        // Registered under the lock before it can run: it finds itself there.
        let replaced = retrying.withLock { retrying -> Task<Void, Never>? in
            guard !retrying.closed else { return nil }
            retrying.tokens += 1
            let token = retrying.tokens
            let task = Task {
                var random = SystemRandomNumberGenerator()
                for attempt in 0... {
                    do {
                        try await clock.sleep(for: backoff.delay(attempt: attempt, using: &random))
                    } catch {
                        return  // cancelled: stopped, acquired anew, or the events ended
                    }
                    guard isRetrying(partition, token: token) else { return }
                    guard coordinator.isActing(partition, epoch: epoch) else {
                        // The lease lapsed: `lost` follows (its stop ends this retry); if the lease
                        // turns out to be renewed instead, the next attempt goes on.
                        continue
                    }
                    do {
                        try await start(partition, epoch: epoch, retry: token)
                        logger.notice(
                            "consuming an acquired partition now", metadata: [LogKey.partition: "\(partition)"])
                        return
                    } catch is NotWanted {
                        return
                    } catch {
                        // The first failure was logged; then every 10th attempt (about every 25 s).
                        if attempt % 10 == 9 {
                            logger.error(
                                "still cannot consume an acquired partition; trying again",
                                metadata: [LogKey.partition: "\(partition)", LogKey.error: "\(error)"])
                        }
                    }
                }
            }
            defer { retrying.byPartition[partition] = (token, task) }
            return retrying.byPartition[partition]?.task
        }
        replaced?.cancel()
    }

    private func isRetrying(_ partition: Int, token: UInt64) -> Bool {
        retrying.withLock { $0.holds(partition, token: token) }
    }

    /// Ends the partition's retry, if one runs.
    private func endRetry(_ partition: Int) {
        retrying.withLock { $0.byPartition.removeValue(forKey: partition) }?.task.cancel()
    }

    /// A retried start whose partition was stopped or acquired anew meanwhile: its channel is closed.
    private struct NotWanted: Error {}

    /// Starts consuming a partition. A retried start (`retry`: its token) is counted among the
    /// partitions consumed only while it is still the partition's retry and nothing else consumes
    /// the partition, and stops being retried in the same step; otherwise its channel is closed
    /// (not its consumer cancelled first: what the broker sent it comes back in order at the
    /// close) and `NotWanted` thrown.
    private func start(_ partition: Int, epoch: UInt64, retry: UInt64? = nil) async throws {
        await beforeConsuming()
        let channel = try await connection.openChannel()
        let consumer: AMQPConsumer
        do {
            if retry != nil {
                // The queue may be what failed: deleted under the node (the broker then ended its
                // consumer), while the ingest's publishes to it are dropped as unroutable.
                try await Topology.declarePartition(partition, on: channel, configuration: configuration)
            }
            consumer = try await channel.consume(
                configuration.names.partitionQueue(partition), prefetch: configuration.partitionPrefetch,
                onArrival: unmatchedOnArrival(partition: partition, epoch: epoch))
        } catch {
            await channel.close()
            throw error
        }
        let owned = Owned(epoch: epoch, channel: channel, consumer: consumer)
        let counted = self.owned.withLock { consumed -> Bool in
            if let retry {
                let current = retrying.withLock { retrying -> Bool in
                    guard retrying.holds(partition, token: retry) else { return false }
                    retrying.byPartition[partition] = nil
                    return true
                }
                guard current, consumed[partition] == nil else { return false }
            }
            consumed[partition] = owned
            // Set before `stop` can find it (the task runs only after this lock is released).
            owned.task.withLock { $0 = consumerLoop(partition, owned: owned) }
            return true
        }
        guard counted else {
            await channel.close()
            throw NotWanted()
        }
    }

    /// The partition's consumer loop, held in `owned.task`; awaited by `stop(_:partition:drain:)` once its
    /// consumer is cancelled. A loop that ends without a stop (the broker cancelled the consumer:
    /// its queue deleted, ...) leaves the partition and starts it again, retried as an acquired
    /// one, while the lease is held: a lease is never held with nobody consuming.
    private func consumerLoop(_ partition: Int, owned: Owned) -> Task<Void, Never> {
        // Counted before the task runs: a stop that comes first waits for it all the same.
        owned.inFlight.add()
        return Task {
            var failure: (any Error)?
            do {
                // One taken before a reconnect comes again on the new connection: delivering it now
                // as well would deliver it twice, the first copy ahead of events after it. (What
                // was already in the batcher at the loss can still come twice: at least once.)
                for try await delivery in owned.consumer where owned.consumer.isCurrent(delivery) {
                    await self.handle(delivery, partition: partition, owned: owned)
                }
            } catch {
                failure = error
            }
            owned.inFlight.remove()
            let unstopped = self.owned.withLock { consumed -> Bool in
                guard consumed[partition] === owned else { return false }
                consumed[partition] = nil
                return true
            }
            guard unstopped else { return }
            logger.warning(
                "partition consumer ended without a stop; consuming it again",
                metadata: [LogKey.partition: "\(partition)", LogKey.error: "\(failure.map { "\($0)" } ?? "none")"])
            // Its events come again to the new consumer: what is not sent yet is not sent twice.
            batcher.giveBack(owned.origin)
            await owned.channel.close()
            retryStart(partition, epoch: owned.epoch)
        }
    }

    private func handle(_ delivery: AMQPDelivery, partition: Int, owned: Owned) async {
        counters.count(.consumed)
        guard coordinator.isActing(partition, epoch: owned.epoch), !owned.origin.isGivenBack else {
            // The lease is gone, or the partition is being handed over and what is left goes to
            // the next owner: not delivered here; left unacked, the broker gives it back at the
            // channel's close.
            return
        }
        // Most events of a cloud meet no subscription: one whose type and projects (the ingest's
        // headers) no subscription's project and patterns take is settled without decoding it,
        // unless the event-type catalog wants it as a sample.
        var sampleDue: Bool?
        if let routed = unmatched(delivery, runningPatterns: true) {
            sampleDue = routed.project.map { catalog?.seen(project: $0, eventType: routed.eventType) ?? false }
            if sampleDue != true {
                counters.count(.unmatched)
                owned.channel.ack(delivery)
                return
            }
        }
        let events: [NotificationEvent]
        do {
            let decoded = try NotificationDecoder.decode(delivery.body).map { event in
                var event = event
                configuration.eventDefinitions.attribute(&event)
                return event
            }
            // A list's part (`herald-part`) holds only what the ingest put in this partition: all
            // of it is this partition's, even where this node's definitions (in a rollout of new
            // ones) would put an event elsewhere, since no other partition has it.
            events =
                delivery.properties.headers["herald-part"] == .bool(true)
                ? decoded
                : decoded.filter {
                    PartitionHash.partition(of: $0.partitionKey, count: configuration.partitions) == partition
                }
            if events.isEmpty {
                // Ingest put it here for an event of this partition: this node's definitions put
                // every one elsewhere. Kept in herald.dead for the operator, not acked as unmatched.
                counters.count(.misrouted)
                if misroutedSeen.add(1, ordering: .relaxed).oldValue % 1_000 == 0 {
                    logger.error(
                        "no event of a partition's delivery falls in that partition: do all nodes run the same event definitions (HERALD_EVENT_DEFINITIONS)? The notification goes to herald.dead (first of such, then every 1,000th, logged; herald_events_total{stage=\"misrouted\"} counts them all)",
                        metadata: [
                            LogKey.partition: "\(partition)",
                            LogKey.heraldEventType: "\(SafeText.clean(decoded.first?.eventType ?? "", limit: 100))",
                            LogKey.heraldEventId: "\(SafeText.clean(decoded.first?.messageID ?? "", limit: 100))",
                        ])
                }
                owned.channel.reject(delivery, requeue: false)
                return
            }
        } catch {
            // Ingest validated it; a body that fails here goes to herald.dead all the same.
            counters.count(.misrouted)
            if undecodableSeen.add(1, ordering: .relaxed).oldValue % 1_000 == 0 {
                logger.error(
                    "cannot decode a partition's delivery; it goes to herald.dead (first of such, then every 1,000th, logged)",
                    metadata: [
                        LogKey.partition: "\(partition)", LogKey.error: "\(SafeText.clean("\(error)", limit: 300))",
                    ])
            }
            owned.channel.reject(delivery, requeue: false)
            return
        }
        let current = index.withLock { $0 }
        // The matches go to the batcher in parts as they are made (a Ceilometer list of many
        // events, each taken by many subscriptions, is never all in memory at once), and the
        // delivery is settled once, when the last part is: acked, or rejected when a match
        // could not be made.
        var part = DeliveryPart()
        var submission: (parts: DeliveryBatcher.Submission, rejected: Locked<Bool>)?
        var matchedAny = false
        func send() async {
            guard !part.messages.isEmpty else { return }
            if submission == nil {
                let rejected = Locked(false)
                owned.inFlight.add()
                let parts = batcher.submission(origin: owned.origin) { outcome in
                    if outcome.givenBack > 0 {
                        // Some of its messages were taken back at a stop: the next owner gets the
                        // event again (those that went already come twice), from the channel's close.
                        let went = outcome.delivered + outcome.deadLettered + outcome.parked
                        if went > 0 { owned.repeated.add(went, ordering: .relaxed) }
                    } else if rejected.value {
                        owned.channel.reject(delivery, requeue: false)
                    } else {
                        // Delivered or dead-lettered, every one of them: now the event may go.
                        owned.channel.ack(delivery)
                    }
                    owned.inFlight.remove()
                }
                submission = (parts, rejected)
            }
            stats?.count(part.messages.lazy.map(\.subscriptionID), \.matched)
            await submission?.parts.add(part.take())
        }
        for event in events {
            // What exists, per project: counted, and now and then kept as tenants would see it.
            // (Counted already when the headers were read: a sample is due.)
            if let catalog, let project = event.project,
                sampleDue ?? catalog.seen(project: project, eventType: event.eventType)
            {
                do {
                    let cut = try configuration.redaction.redact(event)
                    catalog.sample(project: project, eventType: event.eventType, json: cut?.json ?? event.json)
                } catch {
                    // The redactor refused it: no sample, never an uncut one.
                }
            }
            let matches = current.matches(event)
            guard !matches.isEmpty else { continue }
            let body = NotificationDecoder.encode(event)
            // What tenants receive: cut once per event, only when a subscription takes it redacted.
            var redacted: Redacted??
            // CloudEvents subscriptions: the attributes once per event, the data once per cut.
            var cloudEvent: ZaqarMessageEncoding.CloudEventAttributes?
            var cloudData: [Bool: [UInt8]] = [:]
            for route in matches {
                var delivered = body
                var removed: [String] = []
                if !route.unredacted {
                    if redacted == nil {
                        do {
                            redacted = .some(try configuration.redaction.redact(event))
                        } catch {
                            // The decoder accepted these bytes, so this is Herald's bug: never
                            // deliver them uncut; the broker dead-letters the notification.
                            logger.error(
                                "cannot redact an event; the notification goes to the dead-letter queue",
                                metadata: [
                                    LogKey.heraldEventType: "\(event.eventType)",
                                    LogKey.heraldEventId: "\(event.messageID)",
                                    LogKey.error: "\(error)",
                                ])
                            if let submission {
                                submission.rejected.withLock { $0 = true }
                                submission.parts.close()
                            } else {
                                owned.channel.reject(delivery, requeue: false)
                            }
                            return
                        }
                    }
                    if case .some(.some(let cut)) = redacted {
                        delivered = cut.json
                        removed = cut.removed
                    }
                }
                let message: [UInt8]
                if route.format == .cloudevents {
                    let attributes =
                        cloudEvent
                        ?? ZaqarMessageEncoding.CloudEventAttributes.of(
                            eventType: event.eventType, messageID: event.messageID,
                            publisherID: event.value(at: "publisher_id")?.stringValue,
                            timestamp: (event.value(at: "timestamp") ?? event.value(at: "generated"))?.stringValue,
                            resourceID: event.resourceID
                        )
                    cloudEvent = attributes
                    let cut = !removed.isEmpty
                    // The payload, as delivered (a Ceilometer event has none: the whole event).
                    let data = cloudData[cut] ?? NotificationScanner.rawValue(delivered, path: ["payload"]) ?? delivered
                    cloudData[cut] = data
                    message = ZaqarMessageEncoding.cloudEvent(
                        data: data, attributes: attributes, ttl: route.messageTTL,
                        subscriptionID: route.id, partition: partition, epoch: owned.epoch,
                        project: event.project, actorProject: event.actorProject, redacted: removed
                    )
                } else {
                    message = ZaqarMessageEncoding.message(
                        event: delivered, ttl: route.messageTTL, subscriptionID: route.id,
                        eventID: event.messageID, partition: partition, epoch: owned.epoch,
                        project: event.project, actorProject: event.actorProject, resourceID: event.resourceID,
                        redacted: removed
                    )
                }
                matchedAny = true
                part.append(
                    ZaqarOutgoingMessage(
                        target: route.target, body: message, subscriptionID: route.id, eventID: event.messageID,
                        allProjects: route.allProjects
                    ))
                if part.isFull { await send() }
            }
        }
        counters.count(matchedAny ? .matched : .unmatched)
        await send()
        guard let submission else {
            owned.channel.ack(delivery)
            return
        }
        submission.parts.close()
    }

    /// Takes a partition out of those consumed (and ends a start still being retried: first, so
    /// that a retry that starts now is not counted): what `stop` then stops, if it was consumed.
    private func leave(_ partition: Int) -> Owned? {
        endRetry(partition)
        return owned.withLock { $0.removeValue(forKey: partition) }
    }

    /// How a partition's consumer ends (`stop`).
    enum Ending {
        /// The lease is gone: at once.
        case lost
        /// Revoked for a node that joined: what is not sent after `giveBackAfter` is given back; the
        /// channel closes after `drain` at the latest (both from the cancel).
        case rebalance(giveBackAfter: Duration, drain: Duration)
        /// Revoked because this node leaves: by the leave's own deadlines.
        case leaving(LeaveDeadlines)
    }

    /// When a leaving node's handovers give back and close their channels (on `clock`): half-way
    /// through what the leave allows, and a little before it releases the leases regardless.
    struct LeaveDeadlines {
        var giveBackAt: Duration
        var closeBy: Duration
    }

    /// The leave's deadlines, fixed by its first revoke. Handovers of a rebalance still draining
    /// then give back and close at once: the leave's limit holds for them too.
    private func leaveDeadlines(leaving limit: Duration) -> LeaveDeadlines {
        let (deadlines, first) = leaving.withLock { leaving -> (LeaveDeadlines, Bool) in
            if let known = leaving { return (known, false) }
            let now = clock.now()
            let deadlines = LeaveDeadlines(
                giveBackAt: now + limit / 2, closeBy: now + limit - min(.seconds(1), limit / 4))
            leaving = deadlines
            return (deadlines, true)
        }
        if first {
            for owned in draining.withLock({ Array($0.values) }) {
                batcher.giveBack(owned.origin)
                owned.cutShort()
            }
        }
        return deadlines
    }

    /// Waits until the consumer's events are all settled (true), its stop is cut short, or
    /// `deadline` passes.
    private func settled(_ owned: Owned, by deadline: Duration) async -> Bool {
        let left = deadline - clock.now()
        guard left > .zero, !owned.isCutShort else { return owned.inFlight.count == 0 }
        return await answer(within: left, clock: clock) {
            await withTaskGroup(of: Bool.self) { group in
                group.addTask { await owned.inFlight.zero() }
                group.addTask {
                    _ = await owned.cut.zero()
                    return false
                }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
        } || owned.inFlight.count == 0
    }

    /// Stops consuming a partition. Handed over (`rebalance`, `leaving`): waits until its events
    /// are delivered and acked, so that the next owner gets none of them again, until the time to
    /// give back; what is not sent then is given back (`DeliveryBatcher.giveBack`) for the next
    /// owner, and the channel closes once the requests on their way end, or at the close's
    /// deadline (what is still in flight then comes twice). Cut short (`Owned.cutShort`), both
    /// come at once. Lost: gives back at once and waits for nothing.
    private func stop(_ owned: Owned, partition: Int, ending: Ending) async {
        let started = clock.now()
        let (giveBackAt, closeBy): (Duration, Duration)
        switch ending {
        case .lost:
            // Another node may own it already. What this one has not sent yet is not sent from
            // here (nor is a submitter left waiting for room); unacked, it comes back to the queue
            // at the channel's close.
            try? await owned.consumer.cancel()
            batcher.giveBack(owned.origin)
            await owned.task.withLock { $0 }?.value
            await owned.channel.close()
            return
        case .rebalance(let giveBackAfter, let drain):
            // Handed over: nothing left on its way at the cancel (it would come back out of order).
            try? await owned.consumer.cancelAfterSpendingCredit(prefetch: configuration.partitionPrefetch)
            let cancelledAt = clock.now()
            (giveBackAt, closeBy) = (cancelledAt + min(giveBackAfter, drain), cancelledAt + drain)
        case .leaving(let deadlines):
            try? await owned.consumer.cancelAfterSpendingCredit(prefetch: configuration.partitionPrefetch)
            (giveBackAt, closeBy) = (deadlines.giveBackAt, deadlines.closeBy)
        }
        let cancelled = clock.now() - started
        // Its events go out as they are for a moment (a quiet node finishes them: no duplicates).
        // Then what is not sent yet goes back: under a backlog it waits behind every other
        // partition's messages, the node's whole buffer, while the next owner waits for it. At the
        // drain's end in any case: the next owner gets those events, so they are not sent from here.
        var givenBack = 0
        if !(await settled(owned, by: giveBackAt)) {
            givenBack = batcher.giveBack(owned.origin)
            _ = await settled(owned, by: closeBy)
        }
        // Ends soon once given back: nothing it handles waits for room any more.
        await owned.task.withLock { $0 }?.value
        let left = owned.inFlight.count
        let took = clock.now() - started
        let repeated = owned.repeated.load(ordering: .relaxed)
        let metadata: Logger.Metadata = [
            LogKey.partition: "\(partition)", LogKey.heraldGivenBack: "\(givenBack)",
            LogKey.heraldRepeated: "\(repeated)", LogKey.heraldDrainSeconds: "\(took.seconds)",
            LogKey.heraldCancelSeconds: "\(cancelled.seconds)",
        ]
        if left > 0 {
            logger.warning(
                "handoff drain ran out of time; the next owner gets these events again",
                metadata: metadata.merging([LogKey.heraldInFlight: "\(left)"]) { $1 })
        } else if repeated > 0 {
            // Delivered ones reach tenants twice (the same event_id), dead-lettered ones are stored
            // twice: worth an operator's eye.
            logger.warning(
                "partition handed over; messages not sent yet were given back for the next owner, which sends again those of their events that went already",
                metadata: metadata)
        } else if givenBack > 0 {
            logger.info(
                "partition handed over; messages not sent yet were given back for the next owner",
                metadata: metadata)
        } else if took > .seconds(1) {
            logger.info("partition drained for handoff", metadata: metadata)
        } else {
            logger.debug("partition drained for handoff", metadata: metadata)
        }
        await owned.channel.close()
    }
}

/// A part of one delivery's matches on its way to the batcher: full at `maxMessages` messages or
/// `maxBytes` of bodies, whichever comes first.
struct DeliveryPart {
    static let maxMessages = 256
    static let maxBytes = 1 << 20

    private(set) var messages: [ZaqarOutgoingMessage] = []
    private var bytes = 0

    var isFull: Bool { messages.count >= Self.maxMessages || bytes >= Self.maxBytes }

    mutating func append(_ message: ZaqarOutgoingMessage) {
        messages.append(message)
        bytes += message.body.count
    }

    /// The messages, leaving the part empty.
    mutating func take() -> [ZaqarOutgoingMessage] {
        defer {
            messages = []
            bytes = 0
        }
        return messages
    }
}

/// What the ingest's headers say of a partition's delivery holding one event: its type and
/// projects. Nil when they say the body holds more than one (a Ceilometer list), lack a field
/// (an older node's ingest), or come from other event definitions than `definitions` (a
/// rollout of new ones): the body is decoded then.
struct RoutedEvent {
    var eventType: String
    var project: String?
    var actorProject: String?

    init?(_ headers: AMQPTable, definitions: String) {
        guard headers["herald-events"]?.int == 1, headers["herald-definitions"]?.string == definitions,
            let eventType = headers["herald-event-type"]?.string,
            !eventType.isEmpty, let project = headers["herald-project"]?.string,
            let actor = headers["herald-actor-project"]?.string
        else { return nil }
        self.eventType = eventType
        self.project = project.isEmpty ? nil : project
        self.actorProject = actor.isEmpty ? nil : actor
    }
}
