/// Herald's AMQP names, which carry the cluster's name so that two Herald clusters sharing a
/// RabbitMQ vhost never consume each other's queues: `<cluster>.ingest.<exchange>` (or one
/// `<cluster>.ingest` in a cluster made before ingest spread over nodes), `<cluster>.partitions`,
/// `<cluster>.dead`, `<cluster>.p.<n>`. The name is `HERALD_CLUSTER`, or else the Redis key
/// prefix without its trailing `:` (a cluster is one prefix), so the default prefix `herald:`
/// keeps the names `herald.ingest`, `herald.p.0`, ...
public struct ClusterNames: Sendable, Equatable {
    public let cluster: String

    /// - Throws: `SubscriptionValidationError`-free: a `ClusterNameError` naming what is wrong.
    public init(cluster: String) throws(ClusterNameError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
        guard (1...64).contains(cluster.count), cluster.allSatisfy({ allowed.contains($0) }), !cluster.hasPrefix("amq.")
        else {
            throw ClusterNameError(name: cluster)
        }
        self.cluster = cluster
    }

    /// The name a key prefix implies: `herald:` → `herald`, `region-1:herald:` → `region-1.herald`.
    public static func derived(fromKeyPrefix prefix: String) -> String {
        var name = prefix
        while name.hasSuffix(":") { name.removeLast() }
        return name.replacingOccurrences(of: ":", with: ".")
    }

    public var ingest: String { cluster + ".ingest" }
    public var partitions: String { cluster + ".partitions" }
    public var dead: String { cluster + ".dead" }

    /// The ingest queue of one exchange (`<cluster>.ingest.<exchange>`), in the per-exchange
    /// layout: each is single-active-consumer, and the nodes share them out (docs/pipeline.md).
    public func ingestQueue(exchange: String) -> String { "\(cluster).ingest.\(exchange)" }
    public func partitionQueue(_ partition: Int) -> String { "\(cluster).p.\(partition)" }
    /// Where a subscription's messages wait while its target fails (docs/pipeline.md, "Outages").
    public func parkingQueue(_ subscriptionID: String) -> String { "\(cluster).park.\(subscriptionID)" }
}

public struct ClusterNameError: Error, CustomStringConvertible, Sendable {
    public var name: String

    public var description: String {
        "'\(SafeText.clean(name, limit: 80))' must be 1 to 64 of letters, digits, '_', '.' and '-' (and not start with 'amq.')"
    }
}
