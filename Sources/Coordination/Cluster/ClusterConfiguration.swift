/// How a node takes part in the cluster. Defaults are tuned so a crashed node's
/// partitions are taken over in under 2 s while Redis sees a handful of commands
/// per node per second, whatever the partition count.
public struct ClusterConfiguration: Sendable {
    /// This node's id, e.g. the pod name: letters, digits, `.`, `_`, `:`, `-`.
    public var nodeID: String
    /// Prefix of every Redis key and channel. Default `herald:`.
    public var keyPrefix: String
    /// P, fixed when the cluster is created; a node configured otherwise refuses to start. Default 256.
    public var partitionCount: Int
    /// How often a node beats (membership, alive key, leader lease, versions). Default 500 ms.
    public var heartbeat: Duration
    /// A member whose beats stop is removed after this long. Default 5 s.
    public var memberDeadline: Duration
    /// TTL of the alive key that keeps all of a node's leases. Default 1.5 s.
    public var aliveTTL: Duration
    /// A node stops acting this long before its alive key could expire. Default 250 ms.
    public var margin: Duration
    /// TTL of the leader lease. Default 1.5 s.
    public var leaderTTL: Duration
    /// How often to retry taking leases the assignment gives but another node still holds. Default 100 ms.
    public var acquireRetry: Duration
    /// Shown to operators (`herald status`).
    public var address: String
    public var version: String

    public init(
        nodeID: String,
        keyPrefix: String = "herald:",
        partitionCount: Int = 256,
        heartbeat: Duration = .milliseconds(500),
        memberDeadline: Duration = .seconds(5),
        aliveTTL: Duration = .milliseconds(1500),
        margin: Duration = .milliseconds(250),
        leaderTTL: Duration = .milliseconds(1500),
        acquireRetry: Duration = .milliseconds(100),
        address: String = "",
        version: String = "0.1.0"
    ) {
        self.nodeID = nodeID
        self.keyPrefix = keyPrefix
        self.partitionCount = partitionCount
        self.heartbeat = heartbeat
        self.memberDeadline = memberDeadline
        self.aliveTTL = aliveTTL
        self.margin = margin
        self.leaderTTL = leaderTTL
        self.acquireRetry = acquireRetry
        self.address = address
        self.version = version
    }

    /// - Throws: `CoordinationError.invalidConfiguration` naming the bad setting and value.
    public func validate() throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
        guard !nodeID.isEmpty, nodeID.count <= 200, nodeID.allSatisfy({ allowed.contains($0) }) else {
            throw CoordinationError(
                .invalidConfiguration, "node id '\(nodeID)' must be 1 to 200 of letters, digits, '.', '_', ':' and '-'")
        }
        guard (1...65536).contains(partitionCount) else {
            throw CoordinationError(
                .invalidConfiguration, "partition count \(partitionCount) must be between 1 and 65536")
        }
        guard heartbeat > .zero else {
            throw CoordinationError(.invalidConfiguration, "heartbeat \(heartbeat) must be positive")
        }
        guard acquireRetry > .zero else {
            throw CoordinationError(.invalidConfiguration, "acquire retry \(acquireRetry) must be positive")
        }
        guard aliveTTL > heartbeat * 2 else {
            throw CoordinationError(
                .invalidConfiguration,
                "alive TTL \(aliveTTL) must exceed two heartbeats (\(heartbeat * 2)) so one late beat does not drop every lease"
            )
        }
        guard margin > .zero, margin < aliveTTL - heartbeat else {
            throw CoordinationError(
                .invalidConfiguration,
                "margin \(margin) must be positive and below alive TTL minus heartbeat (\(aliveTTL - heartbeat))")
        }
        guard memberDeadline > aliveTTL else {
            throw CoordinationError(
                .invalidConfiguration, "member deadline \(memberDeadline) must exceed the alive TTL \(aliveTTL)")
        }
        guard leaderTTL > heartbeat else {
            throw CoordinationError(
                .invalidConfiguration, "leader TTL \(leaderTTL) must exceed the heartbeat \(heartbeat)")
        }
    }
}
