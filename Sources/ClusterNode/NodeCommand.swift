import ArgumentParser
import Dispatch
import Foundation
import Logging

/// `herald node`: one cluster node until SIGTERM or SIGINT, then a graceful stop.
struct Node: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one cluster node: ingest, owned partitions, delivery into Zaqar.",
        discussion: """
            Configured through the environment: HERALD_NODE_ID, HERALD_REDIS_URL, HERALD_AMQP_URL,
            HERALD_ZAQAR_URL, HERALD_PARTITIONS, HERALD_KEY_PREFIX, HERALD_EXCHANGES,
            HERALD_EXCHANGES_DURABLE, HERALD_CEILOMETER_EVENTS, HERALD_INGEST_ORDERED, HERALD_INGEST_PREFETCH,
            HERALD_PARTITION_PREFETCH, HERALD_QUEUE_TYPE, HERALD_SHUTDOWN_BUDGET_SECONDS
            (see the README's table). A bad value stops start-up naming the variable.
            """
    )

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = ProcessInfo.processInfo.environment["HERALD_LOG_LEVEL"] ?? "info"

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level (HERALD_LOG_LEVEL) '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        var logger = Logger(label: "herald")
        logger.logLevel = level
        let configuration: NodeConfiguration
        do {
            configuration = try NodeConfiguration.fromEnvironment()
        } catch {
            throw ValidationError("\(error)")
        }
        let node = try HeraldNode(configuration: configuration, logger: logger)
        try await node.start()
        // Made only now: a signal source released without ever being resumed crashes libdispatch.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let signals = [SIGTERM, SIGINT].map { DispatchSource.makeSignalSource(signal: $0) }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let once = OnceFlag()
            for source in signals {
                source.setEventHandler { if once.take() { continuation.resume() } }
                source.resume()
            }
        }
        await node.shutdown()
    }
}

/// True exactly once.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var taken = false

    func take() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if taken { return false }
        taken = true
        return true
    }
}
