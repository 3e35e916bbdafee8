import Metrics

/// Coordination's metrics, through swift-metrics, made from the factory the coordinator is given
/// (the node's own backend, so that coordinators in one process keep theirs apart).
struct CoordinationMetrics: Sendable {
    /// Round trip of the heartbeat script, which renews the alive key every lease hangs on.
    let heartbeat: Metrics.Timer
    /// Assignments this node has taken up: one per rebalance of the cluster.
    let assignments: Counter

    /// - Parameter domain: what the coordinator's leases are for (`partitions`, `ingest`): the
    ///   `domain` label, so that a node's two coordinators count apart.
    init(factory: any MetricsFactory, domain: String) {
        let dimensions = [("domain", domain)]
        heartbeat = Metrics.Timer(label: "herald_lease_renew_seconds", dimensions: dimensions, factory: factory)
        assignments = Counter(label: "herald_rebalances_total", dimensions: dimensions, factory: factory)
    }
}
