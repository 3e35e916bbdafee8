import Coordination
import Foundation
import Messaging

/// Everything a node is configured with, read from `HERALD_*` environment variables.
/// An invalid value stops start-up with a message naming the variable and the value.
struct NodeConfiguration: Sendable {
    /// HERALD_NODE_ID: this node's id (the pod name in Kubernetes). Default: the host name.
    var nodeID: String
    /// HERALD_REDIS_URL. Default redis://127.0.0.1:6379/0.
    var redisURL: String
    /// HERALD_AMQP_URL. Default amqp://guest:guest@127.0.0.1:5672/%2F.
    var amqpURL: String
    /// HERALD_ZAQAR_URL: where subscriptions without their own endpoint deliver. Default http://127.0.0.1:8888.
    var zaqarURL: String
    /// HERALD_PARTITIONS: P, fixed at cluster creation. Default 256.
    var partitions: Int
    /// HERALD_KEY_PREFIX: Redis key prefix. Default herald:.
    var keyPrefix: String
    /// HERALD_EXCHANGES: comma-separated notification exchanges bound to herald.ingest.
    var exchanges: [String]
    /// HERALD_EXCHANGES_DURABLE: declare them durable (must match how the services declare them). Default false.
    var exchangesDurable: Bool
    /// HERALD_CEILOMETER_EVENTS: also bind exchange `ceilometer`, key `event.sample`. Default false.
    var ceilometerEvents: Bool
    /// HERALD_INGEST_ORDERED: one node ingests at a time (herald.ingest is single-active-consumer,
    /// the others stand by), so events of a partition keep their publish order. `false` makes
    /// every node a competing consumer: more ingest throughput, no order across nodes. Fixed per
    /// cluster (RabbitMQ refuses to change a queue's arguments). Default true.
    var ingestOrdered: Bool
    /// HERALD_INGEST_PREFETCH. Default 200.
    var ingestPrefetch: UInt16
    /// HERALD_PARTITION_PREFETCH: unacked events per owned partition. Default 100.
    var partitionPrefetch: UInt16
    /// HERALD_QUEUE_TYPE: classic or quorum, for herald.ingest and the partition queues. Default classic.
    var queueType: String
    /// HERALD_SHUTDOWN_BUDGET_SECONDS: how long a graceful stop may take. Default 20.
    var shutdownBudget: Duration

    static let defaultExchanges = ["nova", "neutron", "cinder", "glance", "heat", "keystone", "designate", "octavia", "ironic"]

    /// - Throws: `ConfigurationError` naming the variable and its bad value.
    static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> NodeConfiguration {
        func string(_ key: String, _ fallback: String) -> String { environment[key].flatMap { $0.isEmpty ? nil : $0 } ?? fallback }
        func integer(_ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
            guard let text = environment[key], !text.isEmpty else { return fallback }
            guard let value = Int(text), range.contains(value) else {
                throw ConfigurationError(key: key, value: text, expected: "a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        }
        func boolean(_ key: String, _ fallback: Bool) throws -> Bool {
            guard let text = environment[key]?.lowercased(), !text.isEmpty else { return fallback }
            switch text {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off": return false
            default: throw ConfigurationError(key: key, value: text, expected: "true or false")
            }
        }
        let configuration = NodeConfiguration(
            nodeID: string("HERALD_NODE_ID", ProcessInfo.processInfo.hostName),
            redisURL: string("HERALD_REDIS_URL", "redis://127.0.0.1:6379/0"),
            amqpURL: string("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
            zaqarURL: string("HERALD_ZAQAR_URL", "http://127.0.0.1:8888"),
            partitions: try integer("HERALD_PARTITIONS", 256, 1...65536),
            keyPrefix: string("HERALD_KEY_PREFIX", "herald:"),
            exchanges: string("HERALD_EXCHANGES", defaultExchanges.joined(separator: ",")).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty },
            exchangesDurable: try boolean("HERALD_EXCHANGES_DURABLE", false),
            ceilometerEvents: try boolean("HERALD_CEILOMETER_EVENTS", false),
            ingestOrdered: try boolean("HERALD_INGEST_ORDERED", true),
            ingestPrefetch: UInt16(try integer("HERALD_INGEST_PREFETCH", 200, 1...65535)),
            partitionPrefetch: UInt16(try integer("HERALD_PARTITION_PREFETCH", 100, 1...65535)),
            queueType: string("HERALD_QUEUE_TYPE", "classic"),
            shutdownBudget: .seconds(try integer("HERALD_SHUTDOWN_BUDGET_SECONDS", 20, 1...3600))
        )
        try configuration.validate()
        return configuration
    }

    func validate() throws {
        do { _ = try RedisConfiguration(url: redisURL) } catch { throw ConfigurationError(key: "HERALD_REDIS_URL", value: redisURL, expected: "\(error)") }
        do { _ = try AMQPConfiguration(url: amqpURL) } catch { throw ConfigurationError(key: "HERALD_AMQP_URL", value: amqpURL, expected: "\(error)") }
        guard let zaqar = URL(string: zaqarURL), ["http", "https"].contains(zaqar.scheme ?? ""), zaqar.host != nil else {
            throw ConfigurationError(key: "HERALD_ZAQAR_URL", value: zaqarURL, expected: "an http(s) URL such as http://zaqar:8888")
        }
        guard ["classic", "quorum"].contains(queueType) else {
            throw ConfigurationError(key: "HERALD_QUEUE_TYPE", value: queueType, expected: "classic or quorum")
        }
        guard !exchanges.isEmpty || ceilometerEvents else {
            throw ConfigurationError(key: "HERALD_EXCHANGES", value: exchanges.joined(separator: ","), expected: "at least one exchange (or HERALD_CEILOMETER_EVENTS=true)")
        }
        do {
            try ClusterConfiguration(nodeID: nodeID, keyPrefix: keyPrefix, partitionCount: partitions).validate()
        } catch {
            throw ConfigurationError(key: "HERALD_NODE_ID", value: nodeID, expected: "\(error)")
        }
    }
}

struct ConfigurationError: Error, CustomStringConvertible {
    var key: String
    var value: String
    var expected: String
    var description: String { "invalid configuration: \(key)='\(value)': \(expected)" }
}
