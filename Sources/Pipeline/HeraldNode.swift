import Coordination
import Delivery
import Foundation
import HeraldModel
import Identity
import Logging
import Messaging
import Metrics
import Routing
import Synchronization

extension DeadLetterStore: DeadLetterSink {
    public func deadLetter(_ letters: [DeadLetter]) async throws {
        DeadLetterMetrics.trimmed(try await append(letters))
    }
}

/// `herald_dead_letters_dropped_total{reason}`: older letters trimmed to keep within the budget
/// (bounded labels: the reasons Herald knows, else `other`).
package enum DeadLetterMetrics {
    static let counters = Dictionary(
        uniqueKeysWithValues: (DeadLetter.Reason.allCases.map(\.rawValue) + ["other"]).map {
            ($0, Counter(label: "herald_dead_letters_dropped_total", dimensions: [("reason", $0)]))
        })

    static func trimmed(_ byReason: [String: Int]) {
        for (reason, count) in byReason {
            (counters[reason] ?? counters["other"])?.increment(by: count)
        }
        if !byReason.isEmpty {
            logger.warning(
                "dead letters trimmed to keep within the budget (HERALD_DEAD_LETTERS_MAX, HERALD_DEAD_LETTERS_PROJECT_MAX)",
                metadata: [
                    LogKey.heraldTrimmed:
                        "\(byReason.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))"
                ])
        }
    }

    static let logger = Logger(label: "herald.dead-letters")
}

/// One cluster node, assembled: ingest, owned partitions, delivery, the registry
/// watch, the coordinator. `start()` then `shutdown()` (SIGTERM): stop ingest,
/// hand the partitions over (drain, ack, release), leave the group, close.
package final class HeraldNode: Sendable {
    /// Herald's version, as `herald --version` prints it and the membership records say.
    package static let version = "0.1.0"

    let configuration: NodeConfiguration
    let coordinator: ClusterCoordinator
    let registry: SubscriptionRegistry
    let deadLetters: DeadLetterStore
    /// Which subscriptions have messages parked (their targets failed), cluster-wide.
    let parkingLedger: ParkingLedger
    /// Each subscription's counts, last delivery and last error (the API's health view).
    let stats: SubscriptionStats
    /// The event types seen per project (GET /v1/event-types).
    let catalog: EventTypeCatalog
    /// Herald's Keystone client (HERALD_KEYSTONE_URL): API tokens, trusts, trust-scoped tokens.
    let keystone: KeystoneClient?
    /// `herald_events_total{stage}`.
    let counters: PipelineCounters
    /// Where the node's own counts go (its `/metrics`).
    private let metrics: any MetricsFactory
    private let logger: Logger
    /// HERALD_REDIS_URL, parsed once (every Redis client of the node is made from it).
    private let redisConfiguration: RedisConfiguration
    private let parts = Mutex<Parts?>(nil)
    private let flags = Mutex(Flags())

    struct Flags {
        var registryLoaded = false
        var stopping = false
    }

    struct Parts: Sendable {
        var connection: AMQPConnection
        var zaqar: ZaqarClient
        var batcher: DeliveryBatcher
        var ingest: IngestOwners
        /// The node's loops. `shutdown` awaits the ingest's (it ends after `ingest.shutdown`) and,
        /// once cancelled, the others. The partitions' (`ownership`) is cancelled, not awaited: its
        /// revoke drains may wait on a full batcher for up to HERALD_HANDOFF_DRAIN_SECONDS, past the
        /// shutdown budget; the process ends and the broker gives back what they held.
        var ingesting: Task<Void, Never>
        var ownership: Task<Void, Never>
        var others: [Task<Void, Never>]
    }

    /// Builds a node from its configuration; nothing connects until `start()`.
    /// - Parameter metrics: where the node's counts go: its registry's factory, so that nodes in
    ///   one process (tests) keep theirs apart.
    init(configuration: NodeConfiguration, logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory) throws {
        self.configuration = configuration
        self.metrics = metrics
        counters = PipelineCounters(factory: metrics)
        var logger = logger
        logger[metadataKey: LogKey.node] = "\(configuration.nodeID)"
        self.logger = logger
        let redis = try RedisConfiguration(url: configuration.redisURL)
        redisConfiguration = redis
        coordinator = try ClusterCoordinator(
            configuration: ClusterConfiguration(
                nodeID: configuration.nodeID, keyPrefix: configuration.keyPrefix,
                partitionCount: configuration.partitions,
                address: "\(ProcessInfo.processInfo.hostName):\(configuration.apiPort)", version: Self.version
            ),
            redis: redis, logger: logger
        )
        registry = SubscriptionRegistry(redis: redis, keyPrefix: configuration.keyPrefix, logger: logger)
        deadLetters = DeadLetterStore(
            redis: RedisClient(configuration: redis, logger: logger), keyPrefix: configuration.keyPrefix,
            budget: configuration.deadLetterBudget)
        parkingLedger = ParkingLedger(
            redis: RedisClient(configuration: redis, logger: logger), keyPrefix: configuration.keyPrefix)
        stats = SubscriptionStats(
            redis: RedisClient(configuration: redis, logger: logger), keyPrefix: configuration.keyPrefix)
        catalog = EventTypeCatalog(
            redis: RedisClient(configuration: redis, logger: logger), keyPrefix: configuration.keyPrefix)
        keystone = configuration.keystone.map { KeystoneClient(configuration: $0, logger: logger) }
    }

    /// Gives freed heap pages back to the system. A registry snapshot and the index it replaces
    /// are garbage after a rebuild, and glibc keeps freed memory for reuse: without this the
    /// node's resident size stays at the peak of the largest rebuild.
    static func returnFreedMemory() {
        #if os(Linux)
        _ = glibcMallocTrim(0)
        #endif
    }

    func start() async throws {
        // The queues' type and bounds: the settings, else the cluster's record (ClusterQueueShape).
        var configuration = self.configuration
        let settings = RedisClient(configuration: redisConfiguration, logger: logger)
        configuration.queueShape = try await ClusterQueueShape.resolve(
            configured: configuration.queueSettings, redis: settings, keyPrefix: configuration.keyPrefix)
        let connection = try await AMQPConnection.connect(
            try AMQPConfiguration(url: configuration.amqpURL), logger: logger)
        let control = try await connection.openChannel()
        try await Topology.declare(on: control, configuration: configuration)
        await control.close()
        if configuration.queueShape.ingestLayout == .perExchange {
            // An older cluster's one ingest queue gets nothing more, from now on (`LegacyIngest`).
            do { try await LegacyIngest.unbindIfPresent(connection: connection, configuration: configuration) } catch {
                logger.error(
                    "cannot unbind the old ingest queue; the move tries again", metadata: [LogKey.error: "\(error)"])
            }
        }
        try await ClusterQueueShape.record(
            configuration.queueShape, redis: settings, keyPrefix: configuration.keyPrefix)
        logger.info(
            "queues declared",
            metadata: [
                LogKey.amqpQueueType: "\(configuration.queueShape.type)",
                LogKey.amqpIngestMaxMessages: "\(configuration.queueShape.ingestMaxMessages)",
                LogKey.amqpPartitionMaxMessages: "\(configuration.queueShape.partitionMaxMessages)",
            ])
        await settings.close()

        // The subscription index: made anew from the registry's changes (only the changed
        // subscriptions compiled again) and swapped in.
        let index = Locked(SubscriptionIndex([], defaultZaqarURL: configuration.zaqarURL))
        let zaqarURL = configuration.zaqarURL
        var updates = registry.watch().makeAsyncIterator()
        /// Applies the next update; what it held (possibly every subscription, decoded) is freed
        /// when this returns, so the heap is trimmed after it.
        func applyNext() async -> (version: Int64, changed: String)? {
            guard let update = await updates.next() else { return nil }
            let current = index.withLock { $0 }
            let next =
                update.replacesAll
                ? SubscriptionIndex(update.subscriptions(logger: logger), defaultZaqarURL: zaqarURL)
                : current.updated(with: update.changed)
            index.withLock { $0 = next }
            return (update.version, update.replacesAll ? "all" : "\(update.changed.count)")
        }
        _ = await applyNext()
        Self.returnFreedMemory()
        flags.withLock { $0.registryLoaded = true }
        // The node's loops are held in `Parts` and ended by `shutdown` (see `Parts`).
        let watcher = Task { [logger] in
            while let applied = await applyNext() {
                Self.returnFreedMemory()
                logger.info(
                    "subscription index updated",
                    metadata: [
                        LogKey.registryVersion: "\(applied.version)",
                        LogKey.registryChanged: "\(applied.changed)",
                        LogKey.registrySubscriptions: "\(index.withLock { $0.count })",
                    ])
            }
        }

        let zaqar = ZaqarClient(
            requestTimeout: configuration.deliveryTimeout, tokens: keystone, caFile: configuration.zaqarCAFile)
        var delivery = DeliveryConfiguration()
        delivery.linger = configuration.deliveryLinger
        delivery.projectMaxMessages = configuration.deliveryProjectMaxMessages
        delivery.attemptsBeforeParking = configuration.parking.afterAttempts
        let parking = TargetParking(
            connection: connection, ledger: parkingLedger, names: configuration.names,
            queueType: configuration.queueShape.type, owner: coordinator.owner,
            settings: configuration.parking, logger: logger
        )
        let batcher = try DeliveryBatcher(
            configuration: delivery, zaqar: zaqar, deadLetters: deadLetters,
            endpoints: try ZaqarEndpoints(urls: configuration.zaqarAllowedURLs), parking: parking,
            activity: stats, logger: logger, metrics: metrics
        )
        let drainer = ParkingDrainer(
            connection: connection, ledger: parkingLedger, parking: parking, batcher: batcher, index: index,
            lookup: { [registry] id, project in
                do { return .some(try await registry.get(id: id, project: project)) } catch { return nil }
            },
            isLeader: { [coordinator] in coordinator.isLeader }, names: configuration.names,
            owner: coordinator.owner, defaultZaqarURL: configuration.zaqarURL, logger: logger
        )
        // Knows which subscriptions are parked before any partition is consumed.
        await drainer.refreshBeforeConsuming()
        let retrying = Task { await drainer.run() }
        let owners = PartitionOwners(
            connection: connection, coordinator: coordinator, batcher: batcher, index: index,
            configuration: configuration,
            deadLetters: deadLetters, counters: counters, stats: stats, catalog: catalog, logger: logger,
            beforeConsuming: { await drainer.refreshBeforeConsuming() })
        let ownership = Task { await owners.run() }
        try await coordinator.start()
        let ingest = try ingestOwners(connection: connection, configuration: configuration)
        let ingesting = Task { await ingest.run() }
        try await ingest.start()
        let keeper = SignedURLKeeper(
            registry: registry, keystone: keystone, zaqar: zaqar, defaultZaqarURL: configuration.zaqarURL,
            policy: configuration.signedURLs,
            isLeader: { [coordinator] in coordinator.isLeader }, logger: logger
        )
        let keeping = Task { await keeper.run() }
        // Each subscription's counts, written once a second (the delivery path only counts).
        let counting = Task { [stats, catalog, logger] in
            var failures = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                do {
                    try await stats.flush()
                    try await catalog.flush()
                    failures = 0
                } catch {
                    failures += 1
                    if failures == 1 || failures % 60 == 0 {
                        logger.warning(
                            "cannot write subscription counts to Redis; keeping them for the next try",
                            metadata: [LogKey.error: "\(error)"])
                    }
                }
            }
        }
        parts.withLock {
            $0 = Parts(
                connection: connection, zaqar: zaqar, batcher: batcher, ingest: ingest,
                ingesting: ingesting, ownership: ownership, others: [watcher, keeping, retrying, counting])
        }
        logger.info(
            "node started",
            metadata: [
                LogKey.heraldPartitions: "\(configuration.partitions)",
                LogKey.heraldExchanges: "\(configuration.exchanges)",
            ])
    }

    /// The node's ingest: its queues (`Topology.ingestQueues`), shared out by leases of their own
    /// when there is one per exchange and order is kept (`IngestOwners`).
    private func ingestOwners(connection: AMQPConnection, configuration: NodeConfiguration) throws -> IngestOwners {
        let queues = Topology.ingestQueues(configuration).map(\.queue)
        let make: @Sendable (String) -> IngestService = { [deadLetters, counters, logger] queue in
            IngestService(
                connection: connection, queue: queue, configuration: configuration, deadLetters: deadLetters,
                counters: counters, logger: logger)
        }
        let perExchange = configuration.queueShape.ingestLayout == .perExchange
        var coordinator: ClusterCoordinator?
        if perExchange && configuration.ingestOrdered {
            var ingestLogger = logger
            ingestLogger[metadataKey: LogKey.clusterDomain] = "ingest"
            coordinator = try ClusterCoordinator(
                configuration: ClusterConfiguration(
                    nodeID: configuration.nodeID,
                    keyPrefix: IngestOwners.keyPrefix(configuration.keyPrefix, queues: queues),
                    partitionCount: queues.count,
                    address: "\(ProcessInfo.processInfo.hostName):\(configuration.apiPort)", version: Self.version
                ),
                redis: redisConfiguration, logger: ingestLogger
            )
        }
        let lock = LegacyIngest.moveLock(
            redis: RedisClient(configuration: redisConfiguration, logger: logger),
            keyPrefix: configuration.keyPrefix, owner: self.coordinator.owner)
        return IngestOwners(
            queues: queues, coordinator: coordinator, logger: logger,
            before: { [logger] stopping in
                guard perExchange else { return }
                await LegacyIngest.drain(
                    connection: connection, configuration: configuration, logger: logger, lock: lock,
                    stopping: stopping, make: make)
            }, make: make)
    }

    /// The checks behind `/readyz`: every one must be true for the node to take traffic.
    func readiness() -> [String: Bool] {
        let flags = flags.withLock { $0 }
        let connected = parts.withLock { $0?.connection.isConnected } ?? false
        return [
            "rabbitmq": connected,
            "registry": flags.registryLoaded,
            "membership": coordinator.isMembershipCurrent,
            "not_stopping": !flags.stopping,
        ]
    }

    /// Readiness goes false: the graceful stop has begun.
    func markStopping() {
        flags.withLock { $0.stopping = true }
        logger.info("stopping: readiness is now false")
    }

    var deliveryStatistics: DeliveryStatistics? {
        parts.withLock { $0?.batcher.statistics }
    }

    /// Graceful stop within the shutdown budget: ingest first, then the partitions
    /// (drained and acked before their leases are released), then the group.
    func shutdown() async {
        markStopping()
        guard let parts = parts.withLock({ $0 }) else { return }
        logger.info("shutting down")
        // One budget: the ingest's handover takes up to half of it, the partitions what is left
        // (less 2 s for the batcher's last requests).
        let started = ContinuousClock.now
        let budget = configuration.shutdownBudget
        await parts.ingest.shutdown(drainTimeout: budget / 2)
        await parts.ingesting.value
        await coordinator.leave(drainTimeout: max(.seconds(1), budget - (ContinuousClock.now - started) - .seconds(2)))
        _ = await parts.batcher.drain(timeout: .seconds(2))
        // What did not drain stays unacked for the next owner; nothing retries against the
        // connection closed below (in a test process, nodes stop without the process ending).
        parts.batcher.stop()
        parts.ownership.cancel()
        for task in parts.others { task.cancel() }
        for task in parts.others { await task.value }
        _ = try? await stats.flush()
        _ = try? await catalog.flush()
        await parts.connection.close()
        await parts.zaqar.shutdown()
        logger.info("stopped")
    }
}

#if os(Linux)
/// glibc's `int malloc_trim(size_t pad)` (malloc.h, which the Glibc module leaves out).
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
#endif
