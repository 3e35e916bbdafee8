import Metrics

/// Coordination's metrics, through swift-metrics (the executable picks the backend).
enum CoordinationMetrics {
    /// Round trip of the heartbeat script, which renews the alive key every lease hangs on.
    static let heartbeat = Metrics.Timer(label: "herald_lease_renew_seconds")
    /// Assignments this node has taken up: one per rebalance of the cluster.
    static let assignments = Counter(label: "herald_rebalances_total")
}
