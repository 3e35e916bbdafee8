import Coordination
import Delivery
import Foundation
import HTTPAPI
import HeraldModel
import Hummingbird
import Identity
import Logging
import Metrics
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The pipeline as a service: prepares the node (queues, connections), then runs its parts
/// (`HeraldNode.parts`) as a group of their own, which stops in the parts' order when this
/// service is told to stop.
package struct PipelineService: Service {
    let node: HeraldNode

    package func run() async throws {
        guard await node.waitForBrokers() else { return }
        let prepared = try await node.prepare()
        let parts = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: node.parts(prepared), logger: node.logger))
        // The parts' scope: what they share outlives every one of them, even when they are
        // cancelled together (a stop past its budget), when the group's order no longer holds.
        try await withClosing(prepared, close: node.close) { _ in try await parts.run() }
        node.logger.info("stopped")
    }
}

/// One `herald node`, assembled: the pipeline and the HTTP API in one ServiceGroup. On SIGTERM
/// or SIGINT the group stops the pipeline first (the API keeps answering, `/readyz` with 503),
/// then the API; whatever is still running when the budget is spent is cancelled.
package struct NodeAssembly: Sendable {
    package let node: HeraldNode
    package let application: Application<RouterResponder<APIContext>>
    package let group: ServiceGroup

    /// Where the API listens, once it does.
    package let boundPort: Locked<Int?>
    /// The API's own Redis clients (the node's are its own to close).
    let redisClients: [RedisClient]

    /// Runs the group until it has stopped (`group.triggerGracefulShutdown()` or a signal), then
    /// closes the Redis clients the node and its API shared: after every service has ended, also
    /// when the shutdown budget ran out and they were cancelled together.
    /// - Throws: what the group ended with (a part that could not start, such as the membership
    ///   of a node with another partition count).
    package func run() async throws {
        try await withClosing(self, close: { await $0.closeRedisClients() }) { try await $0.group.run() }
    }

    private func closeRedisClients() async {
        await node.closeRedisClients()
        for client in redisClients { await client.close() }
    }

    fileprivate static func make(
        configuration: NodeConfiguration, logger: Logger, metrics: PrometheusCollectorRegistry,
        signals: [UnixSignal], onListening: @escaping @Sendable (Int) -> Void
    ) throws -> NodeAssembly {
        let node = try HeraldNode(
            configuration: configuration, logger: logger, metrics: PrometheusMetricsFactory(registry: metrics))
        let zaqar = ZaqarClient(
            requestTimeout: configuration.deliveryTimeout, tokens: node.keystone, caFile: configuration.zaqarCAFile)
        let gauges = NodeGauges(registry: metrics)
        let rateLimits = RedisClient(configuration: try RedisConfiguration(url: configuration.redisURL), logger: logger)
        var services = APIServices(
            registry: node.registry, deadLetters: node.deadLetters, defaultZaqarURL: configuration.zaqarURL,
            deliver: { target, message in try await zaqar.post(target, messages: [message]) },
            readiness: { node.readiness() },
            metrics: {
                gauges.update(from: node)
                return metrics.emitToString()
            },
            keystone: node.keystone,
            signedURLs: configuration.signedURLs,
            endpoints: try ZaqarEndpoints(urls: configuration.zaqarAllowedURLs),
            limits: configuration.limits,
            rates: RateLimiter(redis: rateLimits, keyPrefix: configuration.keyPrefix),
            policy: configuration.policy,
            parking: node.parkingLedger, stats: node.stats, catalog: node.catalog,
            retryHorizon: configuration.parking.horizon, redaction: configuration.redaction
        )
        services.metricsOnAPIPort = configuration.metricsPort == nil
        let api = HeraldAPI(services: services)
        let router: Router<APIContext>
        if let keystone = node.keystone, configuration.apiAuth == .keystone {
            router = api.router(authenticator: KeystoneAuthenticator(keystone: keystone))
        } else {
            logger.warning(
                "the API trusts the X-Project-Id header: development mode (HERALD_API_AUTH=trusted-header); never expose it beyond a test machine"
            )
            router = api.router(authenticator: TrustedHeaderAuthenticator())
        }
        let boundPort = Locked<Int?>(nil)
        let application = Application(
            router: router,
            configuration: ApplicationConfiguration(
                address: .hostname(configuration.apiHost, port: configuration.apiPort), serverName: "herald"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? configuration.apiPort
                boundPort.withLock { $0 = port }
                logger.info("API listening", metadata: [LogKey.apiAddress: "\(configuration.apiHost):\(port)"])
                onListening(port)
            },
            logger: logger
        )
        // Shut down in reverse order, each after the one before has finished: readiness off, the
        // pipeline, the replay client, the API, the metrics' own listener if any (scraped to the
        // end). (The Redis clients the API's stores share with the node are closed after the
        // group, by `run`.)
        var parts: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let metricsPort = configuration.metricsPort {
            let metricsApplication = Application(
                router: api.metricsRouter(),
                configuration: ApplicationConfiguration(
                    address: .hostname(configuration.apiHost, port: metricsPort), serverName: "herald"),
                onServerRunning: { channel in
                    let port = channel.localAddress?.port ?? metricsPort
                    logger.info(
                        "metrics listening", metadata: [LogKey.metricsAddress: "\(configuration.apiHost):\(port)"])
                },
                logger: logger
            )
            parts.append(.init(service: metricsApplication))
        }
        parts += [
            .init(service: application),
            .init(service: ZaqarClientService(client: zaqar, keystone: node.keystone)),
            .init(service: PipelineService(node: node)),
            .init(service: ShutdownNotice(node: node)),
        ]
        var groupConfiguration = ServiceGroupConfiguration(
            services: parts,
            gracefulShutdownSignals: signals,
            logger: logger
        )
        groupConfiguration.maximumGracefulShutdownDuration = configuration.shutdownBudget
        return NodeAssembly(
            node: node, application: application, group: ServiceGroup(configuration: groupConfiguration),
            boundPort: boundPort, redisClients: [rateLimits])
    }
}

/// Builds one node from its configuration (the Hummingbird template's `buildApplication`):
/// the pipeline and the API as services of one `ServiceGroup`, returned with the parts a caller
/// may look at. Nothing connects until the group runs; `group.triggerGracefulShutdown()` (or one
/// of `signals`) stops it as SIGTERM does. Tests run several in one process with `signals: []`.
///
/// - Parameters:
///   - configuration: the node's settings, already validated (`NodeConfiguration.fromEnvironment`).
///   - logger: the node's logger; the node adds its id as metadata.
///   - metrics: where `/metrics` reads from (Prometheus is bootstrapped only by the executable).
///   - signals: the signals that begin the graceful shutdown.
///   - onListening: called with the API's port once it listens.
/// - Throws: a `ConfigurationError` or a `RedisConfiguration` error for settings that cannot be used.
package func buildNode(
    configuration: NodeConfiguration, logger: Logger,
    metrics: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
    signals: [UnixSignal] = [.sigterm, .sigint], onListening: @escaping @Sendable (Int) -> Void = { _ in }
) throws -> NodeAssembly {
    try NodeAssembly.make(
        configuration: configuration, logger: logger, metrics: metrics, signals: signals, onListening: onListening)
}

/// Turns readiness off the moment the graceful shutdown begins, before anything stops.
package struct ShutdownNotice: Service {
    let node: HeraldNode

    package func run() async throws {
        try? await gracefulShutdown()
        node.markStopping()
    }
}

/// Closes the API's own Zaqar client (dead-letter replays) and Keystone's, after everything else.
package struct ZaqarClientService: Service {
    let client: ZaqarClient
    var keystone: KeystoneClient?

    package func run() async throws {
        try? await gracefulShutdown()
        await client.shutdown()
        await keystone?.shutdown()
    }
}

/// Gauges read at scrape time from the node's state.
package struct NodeGauges: Sendable {
    let partitionsOwned: Prometheus.Gauge
    let isLeader: Prometheus.Gauge
    let bufferedMessages: Prometheus.Gauge
    let ready: Prometheus.Gauge

    init(registry: PrometheusCollectorRegistry) {
        func gauge(_ name: String, _ help: String) -> Prometheus.Gauge {
            registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help))
        }
        partitionsOwned = gauge("herald_partitions_owned", "Partitions this node holds the lease of and acts on.")
        isLeader = gauge("herald_leader", "1 when this node is the cluster's leader.")
        bufferedMessages = gauge(
            "herald_delivery_buffered_messages", "Messages held for delivery (queued or in flight).")
        ready = gauge("herald_ready", "1 when /readyz answers 200.")
        // Set once: a pod's series whose value changes is a container that restarted (the
        // HeraldRestarting alert counts the changes; a new pod is a new series).
        gauge("herald_start_time_seconds", "When this node process started, in seconds since the Unix epoch.")
            .set(to: Date().timeIntervalSince1970.rounded())
    }

    func update(from node: HeraldNode) {
        partitionsOwned.set(to: Double(node.coordinator.acting().count))
        isLeader.set(to: node.coordinator.isLeader ? 1 : 0)
        bufferedMessages.set(to: Double(node.deliveryStatistics?.bufferedMessages ?? 0))
        let checks = node.readiness()
        ready.set(to: checks.values.allSatisfy { $0 } ? 1 : 0)
    }
}
