import Coordination
import Delivery
import Foundation
import HeraldModel
import Identity
import Logging
import Messaging
import Metrics
import NIOCore
import NIOPosix
import Notifications
import Routing
import ServiceLifecycle
import Synchronization

/// The node's dead-letter store as the batcher and the ingest write to it: what the budget
/// trims and what Redis refused are counted on the node's metrics.
package struct CountedDeadLetters: DeadLetterSink {
    let store: DeadLetterStore
    let metrics: DeadLetterMetrics

    package init(store: DeadLetterStore, metrics: DeadLetterMetrics = DeadLetterMetrics()) {
        self.store = store
        self.metrics = metrics
    }

    package func deadLetter(_ letters: [DeadLetter]) async throws {
        metrics.trimmed(try await store.append(letters))
    }
}

/// `herald_dead_letters_dropped_total{reason}`: older letters trimmed to keep within the budget
/// (bounded labels: the reasons Herald knows, else `other`); `herald_dead_letter_write_failures_total`:
/// Redis could not take dead letters (they are held and retried).
package struct DeadLetterMetrics: Sendable {
    private let dropped: [String: Counter]
    private let droppedOther: Counter
    let writeFailures: Counter

    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        func dropped(_ reason: String) -> Counter {
            Counter(label: "herald_dead_letters_dropped_total", dimensions: [("reason", reason)], factory: factory)
        }
        self.dropped = Dictionary(
            uniqueKeysWithValues: DeadLetter.Reason.allCases.map(\.rawValue).map { ($0, dropped($0)) })
        droppedOther = dropped("other")
        writeFailures = Counter(label: "herald_dead_letter_write_failures_total", factory: factory)
    }

    func trimmed(_ byReason: [String: Int]) {
        for (reason, count) in byReason {
            (dropped[reason] ?? droppedOther).increment(by: count)
        }
        if !byReason.isEmpty {
            Self.logger.warning(
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
/// watch, the coordinator. `prepare()` makes what its parts share, `parts(_:)` lists them in
/// their shutdown order (SIGTERM: stop ingest, hand the partitions over (drain, ack, release),
/// leave the group), `close(_:)` closes what they shared.
package final class HeraldNode: Sendable {
    /// Herald's version, as `herald --version` prints it and the membership records say.
    package static let version = "0.1.0"

    let configuration: NodeConfiguration
    let coordinator: ClusterCoordinator
    let registry: SubscriptionRegistry
    let deadLetters: DeadLetterStore
    /// The same store as the batcher and the ingest write to it (trims and failures counted).
    let deadLetterSink: CountedDeadLetters
    /// The ingest's metrics (refused publishes, held notifications, queue depths).
    let ingestMetrics: IngestMetrics
    /// The parked messages' metrics.
    let parkingMetrics: ParkingMetrics
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
    let logger: Logger
    /// HERALD_REDIS_URL, parsed once (every Redis client of the node is made from it).
    private let redisConfiguration: RedisConfiguration
    /// What `prepare` made and the readiness checks and gauges look at.
    private let prepared = Mutex<Prepared?>(nil)
    private let flags = Mutex(Flags())
    /// Signalled once the registry's first read is in the index (`registryLoaded`); the
    /// membership waits for it.
    private let indexLoaded = Wakeup()
    /// Signalled once the node is a member of the cluster; the ingest waits for it.
    private let joined = Wakeup()
    /// HERALD_SHUTDOWN_BUDGET_SECONDS, begun when the graceful shutdown begins (`markStopping`).
    let shutdownBudget: ShutdownBudget
    /// The Redis clients the node made, closed once the node and its API have stopped.
    private let redisClients: [RedisClient]
    /// The legacy ingest's move lock (`LegacyIngest.moveLock`), one of `redisClients`.
    private let ingestMoveLock: RedisClient

    struct Flags {
        var registryLoaded = false
        var stopping = false
    }

    /// The node's connections and the objects its parts share, made by `prepare`.
    struct Prepared: Sendable {
        var connection: AMQPConnection
        var zaqar: ZaqarClient
        var batcher: DeliveryBatcher
        var index: Locked<SubscriptionIndex>
        var drainer: ParkingDrainer
        var owners: PartitionOwners
        var ingest: IngestOwners
        var keeper: SignedURLKeeper
    }

    /// Builds a node from its configuration; nothing connects until `prepare()`.
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
            redis: redis, logger: logger, metrics: metrics
        )
        registry = SubscriptionRegistry(redis: redis, keyPrefix: configuration.keyPrefix, logger: logger)
        shutdownBudget = ShutdownBudget(configuration.shutdownBudget)
        let (deadLetterRedis, parkingRedis, statsRedis, catalogRedis, moveLockRedis) = (
            RedisClient(configuration: redis, logger: logger), RedisClient(configuration: redis, logger: logger),
            RedisClient(configuration: redis, logger: logger), RedisClient(configuration: redis, logger: logger),
            RedisClient(configuration: redis, logger: logger)
        )
        redisClients = [deadLetterRedis, parkingRedis, statsRedis, catalogRedis, moveLockRedis]
        deadLetters = DeadLetterStore(
            redis: deadLetterRedis, keyPrefix: configuration.keyPrefix, budget: configuration.deadLetterBudget)
        deadLetterSink = CountedDeadLetters(store: deadLetters, metrics: DeadLetterMetrics(factory: metrics))
        ingestMetrics = IngestMetrics(factory: metrics)
        parkingMetrics = ParkingMetrics(factory: metrics)
        parkingLedger = ParkingLedger(redis: parkingRedis, keyPrefix: configuration.keyPrefix)
        stats = SubscriptionStats(redis: statsRedis, keyPrefix: configuration.keyPrefix)
        catalog = EventTypeCatalog(
            redis: catalogRedis, keyPrefix: configuration.keyPrefix,
            maxTypesPerProject: configuration.eventTypesPerProject, sampleBytes: configuration.eventTypeSampleBytes,
            retentionDays: configuration.eventTypeDays)
        ingestMoveLock = moveLockRedis
        keystone = configuration.keystone.map { KeystoneClient(configuration: $0, logger: logger) }
    }

    /// Makes `next` the index, and answers how many subscriptions it has. The old index is
    /// freed here, once the lock is released (the AMQP connection's thread takes that lock for
    /// every partition delivery), and before the caller returns freed pages to the system.
    private static func install(_ next: SubscriptionIndex, in index: Locked<SubscriptionIndex>) -> Int {
        var next = next
        let count = next.count
        index.withLock { swap(&$0, &next) }
        return count
    }

    /// Gives freed heap pages back to the system. A registry snapshot and the index it replaces
    /// are garbage after a rebuild, and glibc keeps freed memory for reuse: without this the
    /// node's resident size stays at the peak of the largest rebuild.
    static func returnFreedMemory() {
        #if os(Linux)
        _ = glibcMallocTrim(0)
        #endif
    }

    /// Waits until something listens where Redis and RabbitMQ should be (a TCP connection, or a
    /// unix socket's, is accepted at one of their addresses), asking again with a growing wait
    /// (1 s doubling to 30 s), logged each time: a node started during an outage of either waits
    /// for it (`/healthz` answers, `/readyz` says 503) instead of exiting into Kubernetes' growing
    /// restart delay. Only the listening is waited for: a server that answers and refuses (a
    /// password, a vhost, a certificate, a sentinel that names no master) is left to `prepare`,
    /// which stops the node naming it.
    /// - Returns: false when the node was told to stop meanwhile.
    func waitForBrokers() async -> Bool {
        var wait = Duration.seconds(1)
        while let (server, addresses) = await Self.notListening(
            redis: redisConfiguration, amqpURL: configuration.amqpURL)
        {
            logger.warning(
                "nothing listens where \(server) should be (\(addresses)) at start-up; asking again in \(Int(wait.seconds)) s"
            )
            do {
                let pause = wait
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
            } catch {
                return false
            }
            wait = min(wait * 2, .seconds(30))
        }
        return true
    }

    /// Where to connect to see whether something listens.
    enum ListenAddress: CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)

        var description: String {
            switch self {
            case .tcp(let host, let port): return "\(host):\(port)"
            case .unix(let path): return "unix:\(path)"
            }
        }
    }

    /// The first of Redis and RabbitMQ at none of whose addresses anything accepts a connection,
    /// with those addresses (no credentials); nil when both listen, or the AMQP URL cannot be
    /// read (`prepare` says so).
    static func notListening(redis: RedisConfiguration, amqpURL: String) async -> (String, String)? {
        let redisAddresses: [ListenAddress] =
            switch redis.endpoint {
            case .tcp(let host, let port): [.tcp(host: host, port: port)]
            case .unix(let path): [.unix(path: path)]
            case .sentinel(_, let sentinels): sentinels.map { .tcp(host: $0.host, port: $0.port) }
            }
        if !(await anyListening(redisAddresses)) {
            let server = if case .sentinel = redis.endpoint { "Redis's sentinels" } else { "Redis" }
            return (server, redisAddresses.map(\.description).joined(separator: ", "))
        }
        if let amqp = try? AMQPConfiguration(url: amqpURL) {
            let addresses = amqp.endpoints.map { ListenAddress.tcp(host: $0.host, port: $0.port) }
            if !(await anyListening(addresses)) {
                return ("RabbitMQ", addresses.map(\.description).joined(separator: ", "))
            }
        }
        return nil
    }

    /// Whether one of `addresses` accepts a connection within 3 s; closed at once.
    static func anyListening(_ addresses: [ListenAddress]) async -> Bool {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(.seconds(3))
        for address in addresses {
            do {
                let channel =
                    switch address {
                    case .tcp(let host, let port): try await bootstrap.connect(host: host, port: port).get()
                    case .unix(let path): try await bootstrap.connect(unixDomainSocketPath: path).get()
                    }
                try? await channel.close()
                return true
            } catch {
                continue
            }
        }
        return false
    }

    /// Everything the node does once before its parts run: the queues' shape settled and
    /// declared, the AMQP connection, the batcher, the parking drainer, the partitions' and the
    /// ingest's owners. Nothing is consumed yet.
    func prepare() async throws -> Prepared {
        // The queues' type and bounds: the settings, else the cluster's record (ClusterQueueShape).
        try await withClosing(
            RedisClient(configuration: redisConfiguration, logger: logger), close: { await $0.close() }
        ) { settings in
            var configuration = self.configuration
            configuration.queueShape = try await ClusterQueueShape.resolve(
                configured: configuration.queueSettings, redis: settings, keyPrefix: configuration.keyPrefix)
            // A notification over the decoder's bound is dead-lettered with its start only: held
            // whole, a flood of them held prefetch x the broker's largest message per ingest queue.
            var amqp = try AMQPConfiguration(url: configuration.amqpURL)
            amqp.maxBodyBytes = NotificationDecoder.defaultMaxBytes
            let connection = try await AMQPConnection.connect(amqp, logger: logger)
            do {
                let prepared = try await prepare(
                    connection: connection, configuration: configuration, settings: settings)
                self.prepared.withLock { $0 = prepared }
                return prepared
            } catch {
                await connection.close()
                await coordinator.abandon()  // closes its Redis client (the count's check used it)
                throw error
            }
        }
    }

    private func prepare(
        connection: AMQPConnection, configuration: NodeConfiguration, settings: RedisClient
    ) async throws -> Prepared {
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
        // Before anything is consumed: a node with another partition count stops here. (Not
        // earlier: the count's key is what tells the shape's resolve that a cluster exists, and
        // a node starting beside this one must find the shape recorded once it does.)
        try await coordinator.checkPartitionCount()
        logger.info(
            "queues declared",
            metadata: [
                LogKey.amqpQueueType: "\(configuration.queueShape.type)",
                LogKey.amqpIngestMaxMessages: "\(configuration.queueShape.ingestMaxMessages)",
                LogKey.amqpPartitionMaxMessages: "\(configuration.queueShape.partitionMaxMessages)",
            ])

        // What can refuse the settings, before anything that must be shut down is made.
        let endpoints = try ZaqarEndpoints(urls: configuration.zaqarAllowedURLs)
        let ingest = try ingestOwners(connection: connection, configuration: configuration)
        // The subscription index: filled by the registry watch (a part of the node).
        let index = Locked(SubscriptionIndex([], defaultZaqarURL: configuration.zaqarURL))
        let zaqar = ZaqarClient(
            requestTimeout: configuration.deliveryTimeout, poolSize: configuration.zaqarConnections, tokens: keystone,
            caFile: configuration.zaqarCAFile)
        var delivery = DeliveryConfiguration()
        delivery.linger = configuration.deliveryLinger
        delivery.projectMaxMessages = configuration.deliveryProjectMaxMessages
        delivery.attemptsBeforeParking = configuration.parking.afterAttempts
        let parking = TargetParking(
            connection: connection, ledger: parkingLedger, names: configuration.names,
            queueType: configuration.queueShape.type, owner: coordinator.owner,
            settings: configuration.parking, metrics: parkingMetrics, logger: logger
        )
        let batcher: DeliveryBatcher
        do {
            batcher = try DeliveryBatcher(
                configuration: delivery, zaqar: zaqar, deadLetters: deadLetterSink, endpoints: endpoints,
                parking: parking, activity: stats, logger: logger, metrics: metrics)
        } catch {
            await zaqar.shutdown()
            throw error
        }
        let drainer = ParkingDrainer(
            connection: connection, ledger: parkingLedger, parking: parking, batcher: batcher, index: index,
            lookup: { [registry] id, project in
                do { return .some(try await registry.get(id: id, project: project)) } catch { return nil }
            },
            isLeader: { [coordinator] in coordinator.isLeader }, names: configuration.names,
            owner: coordinator.owner, defaultZaqarURL: configuration.zaqarURL, logger: logger
        )
        let owners = PartitionOwners(
            connection: connection, coordinator: coordinator, batcher: batcher, index: index,
            configuration: configuration,
            counters: counters, stats: stats, catalog: catalog, logger: logger,
            beforeConsuming: { await drainer.refreshBeforeConsuming() })
        let keeper = SignedURLKeeper(
            registry: registry, keystone: keystone, zaqar: zaqar, defaultZaqarURL: configuration.zaqarURL,
            policy: configuration.signedURLs, endpoints: endpoints,
            isLeader: { [coordinator] in coordinator.isLeader }, logger: logger
        )
        return Prepared(
            connection: connection, zaqar: zaqar, batcher: batcher, index: index, drainer: drainer, owners: owners,
            ingest: ingest, keeper: keeper)
    }

    /// The node's parts: started together; on a graceful shutdown stopped one at a time from the
    /// last in this list to the first, each once the one before it has ended. So a stop runs:
    /// ingest (handed over within half the budget), the signed-URL keeper, the membership (every
    /// partition revoked, drained, acked and released; the group left), the batcher (its last
    /// requests, 2 s, then it stops), the partitions' consumers (drains still running are cut:
    /// their leases are released and the broker gives what they held to the next owner), the
    /// parking drainer, the registry watch and the counts (a last write). The connections they
    /// share are closed once all of them have ended (`close`), also when the budget ran out and
    /// they were cancelled together. What a part needs at start is waited for explicitly: the
    /// membership joins (and partitions are consumed) once the index holds the registry and the
    /// parked subscriptions are known; the ingest consumes once the node is a member.
    func parts(_ prepared: Prepared) -> [NodePart] {
        let (logger, budget) = (logger, shutdownBudget)
        return [
            subscriptionCounts(),
            registryWatch(into: prepared.index),
            .loop("parking drainer", logger: logger) { await prepared.drainer.run() },
            NodePart("partitions") {
                await cancelWhenGracefulShutdown { await prepared.owners.run() }
                // Its events end when the membership leaves; the part then waits for its turn to stop.
                try? await gracefulShutdown()
            },
            .closing("delivery") {
                _ = await prepared.batcher.drain(timeout: .seconds(2))
                // What did not drain stays unacked for the next owner; nothing retries against the
                // connection closed after this (in a test process, nodes stop without the process ending).
                prepared.batcher.stop()
            },
            NodePart("membership") { [self] in
                let ready = await cancelWhenGracefulShutdown { [indexLoaded] in
                    await indexLoaded.wait(timeout: nil)
                }
                guard ready, !flags.withLock({ $0.stopping }) else {
                    // Stopped before it joined: nothing to hand over, and no leave, which would
                    // remove a member of this node's name that another process may be. (Ends on
                    // its turn: a part that returns earlier would end the group with an error.)
                    try? await gracefulShutdown()
                    await coordinator.abandon()
                    return
                }
                // Knows which subscriptions are parked before any partition is consumed.
                await prepared.drainer.refreshBeforeConsuming()
                try await coordinator.start()
                joined.signal()
                logger.info(
                    "node started",
                    metadata: [
                        LogKey.heraldPartitions: "\(configuration.partitions)",
                        LogKey.heraldExchanges: "\(configuration.exchanges)",
                    ])
                try? await gracefulShutdown()
                // Half the budget went to the ingest; the partitions get what is left, less 3 s:
                // 2 for the batcher's last requests, 1 for the parts after it.
                await coordinator.leave(drainTimeout: max(.seconds(1), budget.left - .seconds(3)))
            },
            .loop("signed-URL keeper", logger: logger) { await prepared.keeper.run() },
            NodePart("ingest") { [joined] in
                guard await cancelWhenGracefulShutdown({ await joined.wait(timeout: nil) }) else { return }
                try await prepared.ingest.start()
                await withDiscardingTaskGroup { group in
                    // Ends after `shutdown` below (or at once without leases: the consumers run on).
                    group.addTask { await prepared.ingest.run() }
                    try? await gracefulShutdown()
                    await prepared.ingest.shutdown(drainTimeout: budget.whole / 2)
                }
            },
        ]
    }

    /// Each subscription's counts, written once a second (the delivery path only counts), and
    /// a last time when the node stops.
    private func subscriptionCounts() -> NodePart {
        let (stats, catalog, logger) = (stats, catalog, logger)
        return NodePart("subscription counts") {
            await cancelWhenGracefulShutdown {
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
            _ = try? await stats.flush()
            _ = try? await catalog.flush()
        }
    }

    /// The subscription index made anew from the registry's changes (only the changed
    /// subscriptions compiled again) and swapped in; the first read signals `indexLoaded`. A
    /// registry that lost changes the node had taken in (`RegistryUpdate.lostVersion`) lost
    /// subscriptions in Redis: it is logged as an error and counted
    /// (`herald_registry_losses_total`), and what is left is used.
    private func registryWatch(into index: Locked<SubscriptionIndex>) -> NodePart {
        let losses = Counter(label: "herald_registry_losses_total", factory: metrics)
        let redaction = configuration.redaction
        let logger = logger
        /// A stored subscription with a condition on what tenants never receive (made before the
        /// rule that now covers it) is left out of the index: matching it would tell its project
        /// the hidden value by whether it fires.
        @Sendable func admissible(_ subscription: Subscription) -> Bool {
            guard let found = redaction.conditionOnRedacted(subscription) else { return true }
            logger.error(
                "subscription left out: its condition \(found.index) reads \(found.field), which the redaction rule \(found.rule) keeps from tenants; it receives nothing until the condition is changed or removed",
                metadata: [LogKey.subscription: "\(subscription.id)", LogKey.project: "\(subscription.project)"])
            return false
        }
        return .loop("registry watch", logger: logger) { [self] in
            var updates = registry.watch().makeAsyncIterator()
            var first = true
            while let update = await updates.next() {
                let held = index.withLock { $0.count }
                let count = Self.install(
                    update.replacesAll
                        ? SubscriptionIndex(
                            update.subscriptions(logger: logger).lazy.filter { admissible($0) },
                            defaultZaqarURL: configuration.zaqarURL)
                        : index.withLock { $0 }.updated(
                            with: update.changed.mapValues { $0.flatMap { admissible($0) ? $0 : nil } }),
                    in: index)
                // Pages freed by the build and by earlier updates go back to the system. This update's
                // records are freed when the iteration ends; trimming after that made no measurable
                // difference to the idle RSS (BENCHMARKS.md, "Memory after traffic").
                Self.returnFreedMemory()
                if let lost = update.lostVersion {
                    losses.increment()
                    logger.error(
                        "Redis lost subscriptions: the registry this node held at version \(lost) is now at version \(update.version) without the changes this node had taken in (a replica promoted before it had synced, or the keys flushed or deleted). Restore Redis from a backup (docs/coordination.md); until then only what is left is delivered",
                        metadata: [
                            LogKey.registryVersion: "\(update.version)",
                            LogKey.registryHeld: "\(held)",
                            LogKey.registrySubscriptions: "\(count)",
                        ])
                }
                if first {
                    first = false
                    flags.withLock { $0.registryLoaded = true }
                    indexLoaded.signal()
                    continue
                }
                logger.info(
                    "subscription index updated",
                    metadata: [
                        LogKey.registryVersion: "\(update.version)",
                        LogKey.registryChanged: "\(update.replacesAll ? "all" : "\(update.changed.count)")",
                        LogKey.registrySubscriptions: "\(count)",
                    ])
            }
        }
    }

    /// The node's ingest: its queues (`Topology.ingestQueues`), shared out by leases of their own
    /// when there is one per exchange and order is kept (`IngestOwners`).
    private func ingestOwners(connection: AMQPConnection, configuration: NodeConfiguration) throws -> IngestOwners {
        let queues = Topology.ingestQueues(configuration).map(\.queue)
        let make: @Sendable (String) -> IngestService = { [deadLetterSink, ingestMetrics, counters, logger] queue in
            IngestService(
                connection: connection, queue: queue, configuration: configuration, deadLetters: deadLetterSink,
                metrics: ingestMetrics,
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
                redis: redisConfiguration, logger: ingestLogger, metrics: metrics, metricsDomain: "ingest"
            )
        }
        let lock = LegacyIngest.moveLock(
            redis: ingestMoveLock, keyPrefix: configuration.keyPrefix, owner: self.coordinator.owner)
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
        let connected = prepared.withLock { $0?.connection.isConnected } ?? false
        return [
            "rabbitmq": connected,
            "registry": flags.registryLoaded,
            "membership": coordinator.isMembershipCurrent,
            "not_stopping": !flags.stopping,
        ]
    }

    /// Readiness goes false: the graceful stop has begun.
    func markStopping() {
        shutdownBudget.begin()
        flags.withLock { $0.stopping = true }
        logger.info("stopping: readiness is now false")
    }

    var deliveryStatistics: DeliveryStatistics? {
        prepared.withLock { $0?.batcher.statistics }
    }

    /// Closes the connections the parts shared, once every part has ended.
    func close(_ prepared: Prepared) async {
        await prepared.connection.close()
        await prepared.zaqar.shutdown()
    }

    /// Closes the node's Redis clients (the API's stores use them until the API stops).
    func closeRedisClients() async {
        for client in redisClients { await client.close() }
        await registry.close()
    }
}

#if os(Linux)
/// glibc's `int malloc_trim(size_t pad)` (malloc.h, which the Glibc module leaves out).
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
#endif
