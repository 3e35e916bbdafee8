import ArgumentParser
import Foundation
import HeraldModel
import Logging
import Metrics
import Pipeline
import Prometheus
import ServiceLifecycle

/// `herald node`: one cluster node until SIGTERM or SIGINT, then a graceful stop.
struct Node: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one cluster node: ingest, owned partitions, delivery into Zaqar, and the HTTP API.",
        discussion: """
            Every setting is a HERALD_* key (the README's table lists them with their defaults).
            Each is read, from lowest to highest precedence, from the --config file (KEY=VALUE
            lines), the environment, --set KEY=VALUE, and the flags below. A bad value stops
            start-up with a message naming the key and the value.

            On SIGTERM or SIGINT, /readyz turns 503, ingest stops, the owned partitions are
            drained, acked and released, the node leaves the group and exits, all within
            HERALD_SHUTDOWN_BUDGET_SECONDS.
            """
    )

    @Option(help: "A file of HERALD_*=value lines (HERALD_CONFIG_FILE).")
    var config: String?

    @Option(
        name: .customLong("set"),
        help: ArgumentHelp(
            "Set any HERALD_* key, e.g. --set HERALD_PARTITIONS=512. Repeatable.", valueName: "KEY=VALUE"))
    var settings: [String] = []

    @Option(help: "This node's id, the pod name in Kubernetes (HERALD_NODE_ID).")
    var nodeID: String?

    @Option(help: "Redis URL (HERALD_REDIS_URL).")
    var redisURL: String?

    @Option(help: "RabbitMQ URL (HERALD_AMQP_URL).")
    var amqpURL: String?

    @Option(help: "Zaqar URL (HERALD_ZAQAR_URL).")
    var zaqarURL: String?

    @Option(help: "Where the API listens (HERALD_API_HOST).")
    var apiHost: String?

    @Option(help: "The API's port, 0 for any free one (HERALD_API_PORT).")
    var apiPort: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical (HERALD_LOG_LEVEL).")
    var logLevel: String?

    @Option(help: "text or json (HERALD_LOG_FORMAT).")
    var logFormat: String?

    /// The configuration from every source, flags last.
    func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> NodeConfiguration {
        var values: [String: String] = [:]
        if let file = config ?? environment["HERALD_CONFIG_FILE"] {
            let fromFile = try ConfigurationFile.read(file)
            try NodeConfiguration.checkKeys(fromFile, source: file)
            values = fromFile
        }
        values.merge(environment.filter { $0.key.hasPrefix("HERALD_") }) { _, new in new }
        var set: [String: String] = [:]
        for setting in settings {
            guard let equals = setting.firstIndex(of: "=") else {
                throw ConfigurationError(key: "--set", value: setting, expected: "KEY=VALUE")
            }
            set[String(setting[..<equals])] = String(setting[setting.index(after: equals)...])
        }
        try NodeConfiguration.checkKeys(set, source: "--set")
        values.merge(set) { _, new in new }
        let flags: [(String, String?)] = [
            ("HERALD_NODE_ID", nodeID), ("HERALD_REDIS_URL", redisURL), ("HERALD_AMQP_URL", amqpURL),
            ("HERALD_ZAQAR_URL", zaqarURL),
            ("HERALD_API_HOST", apiHost), ("HERALD_API_PORT", apiPort), ("HERALD_LOG_LEVEL", logLevel),
            ("HERALD_LOG_FORMAT", logFormat),
        ]
        for case (let key, let value?) in flags { values[key] = value }
        return try NodeConfiguration.fromEnvironment(values)
    }

    func run() async throws {
        var configuration: NodeConfiguration
        do {
            configuration = try resolve()
        } catch {
            throw ValidationError("\(error)")
        }
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let nodeID = configuration.nodeID
        let json = configuration.logFormat == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                json ? JSONLogHandler(label: label) : CleanTextLogHandler(StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            handler.metadata[LogKey.node] = "\(nodeID)"
            return handler
        }
        let metrics = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))
        let logger = Logger(label: "herald")
        for key in NodeConfiguration.unknownEnvironmentKeys(ProcessInfo.processInfo.environment) {
            logger.warning(
                "an environment variable named like a setting is no setting of Herald's: ignored (misspelt? see the README's configuration table)",
                metadata: [LogKey.configurationKey: "\(key)"])
        }
        // HERALD_ZAQAR_URL unset, Keystone set: Zaqar is where the catalog says.
        do {
            configuration = try await configuration.resolvingZaqarFromCatalog(logger: logger)
        } catch let error as ConfigurationError {
            throw ValidationError("\(error)")
        }
        let assembly = try buildNode(configuration: configuration, logger: logger, metrics: metrics)
        try await assembly.run()
    }
}
