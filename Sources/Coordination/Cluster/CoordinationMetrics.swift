import Metrics

/// Coordination's metrics, through swift-metrics, made from the factory the coordinator is given
/// (the node's own backend, so that coordinators in one process keep theirs apart).
struct CoordinationMetrics: Sendable {
    /// Round trip of the heartbeat script, which renews the alive key every lease hangs on.
    let heartbeat: Metrics.Timer
    /// Assignments this node has taken up: one per rebalance of the cluster.
    let assignments: Counter

    init(factory: any MetricsFactory) {
        heartbeat = Metrics.Timer(label: "herald_lease_renew_seconds", factory: factory)
        assignments = Counter(label: "herald_rebalances_total", factory: factory)
    }
}
