/// Parking refused for good for now: the project's (or the subscription's) parking share is
/// full. The batcher dead-letters such messages (`parking_full`) instead of holding them, so that
/// one tenant's failing targets cannot stall the partitions every tenant's events share.
public struct ParkingFull: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }

    /// The project holds its share of parked messages (HERALD_PARKING_PROJECT_MAX_MESSAGES).
    public static func projectMessages(_ project: String, parked: Int, share: Int) -> ParkingFull {
        ParkingFull(
            "project \(project) has \(parked) messages parked, its share (HERALD_PARKING_PROJECT_MAX_MESSAGES) is \(share)"
        )
    }

    /// The project holds its share of parked bytes (HERALD_PARKING_PROJECT_MAX_BYTES).
    public static func projectBytes(_ project: String, parked: Int, share: Int) -> ParkingFull {
        ParkingFull(
            "project \(project) has \(parked) bytes parked, its share (HERALD_PARKING_PROJECT_MAX_BYTES) is \(share)")
    }

    /// Every project's parked bytes together are at the cluster's bound (HERALD_PARKING_MAX_BYTES).
    public static func clusterBytes(parked: Int, bound: Int) -> ParkingFull {
        ParkingFull("\(parked) bytes are parked in all, the cluster's bound (HERALD_PARKING_MAX_BYTES) is \(bound)")
    }

    /// The subscription holds as many parked messages as one may (HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES).
    public static func subscriptionMessages(_ subscription: String, parked: Int, limit: Int) -> ParkingFull {
        ParkingFull(
            "subscription \(subscription) has \(parked) messages parked, at most \(limit)"
                + " (HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES)")
    }
}

/// Parking is closing for this subscription: its retrier caught up and is emptying its queue.
/// The batcher holds the messages until the subscription is unparked, then sends them directly.
public struct ParkingClosing: Error, Sendable {
    public init() {}
}

/// Messages offered only to stay behind parked ones, and none are parked any more (the
/// subscription was unparked): the batcher sends them directly.
public struct ParkingNotNeeded: Error, Sendable {
    public init() {}
}

/// Each subscription's life as its owner sees it (`SubscriptionStats` in a node): told of every
/// message delivered or dead-lettered and of the first failure of each failing spell. Called on
/// the delivery path: it must only count, never wait.
public protocol DeliveryActivity: Sendable {
    func delivered(_ subscriptionIDs: [String])
    func deadLettered(_ subscriptionIDs: [String])
    func failed(_ subscriptionIDs: Set<String>, error: String)
}

/// Where a lane moves the messages of a target that keeps failing, so that they stop holding
/// the partition they came from (and every other tenant's events behind it): durable parking
/// that retries them later (`herald node`: a RabbitMQ queue per subscription, docs/pipeline.md).
///
/// The batcher parks a batch after `DeliveryConfiguration.attemptsBeforeParking` failed attempts
/// (5xx, 429, timeouts, connection errors, and 401/403 from a trust that may come back), and
/// parks at once every message of a subscription that `isParked` says is parked, so that new
/// messages queue behind the parked ones instead of overtaking them.
public protocol DeliveryParking: Sendable {
    /// Whether this subscription has messages parked now (a cheap, local answer).
    func isParked(_ subscriptionID: String) -> Bool
    /// Returns when `isParked` may answer otherwise (the parked set was read again, about every
    /// second), or after `timeout`: for a lane waiting until a closing subscription is unparked.
    func waitForChange(timeout: Duration) async
    /// Parks these messages (of one subscription, in order) durably: returns once the broker has
    /// confirmed them, after which the batcher settles them as parked.
    /// - Parameters:
    ///   - reason: why (the target's last error, or "behind parked messages").
    ///   - failed: the target failed them (their first retry waits a backoff); false for
    ///     messages parked only to stay behind parked ones (retried as soon as possible).
    ///   - retryAfter: the target asked for this wait (`Retry-After`): the first retry from parking
    ///     waits at least that long.
    /// - Throws: `ParkingFull` when the project's parking share is used up (the batcher
    ///   dead-letters them); any other error when they could not be parked now (broker or Redis
    ///   unavailable): the lane keeps them and tries again, holding its room in the buffers,
    ///   which is the backpressure that slows the partitions feeding it.
    func park(_ messages: [ZaqarOutgoingMessage], reason: String, failed: Bool, retryAfter: Duration?) async throws
    /// A lane's attempt for this subscription failed (shown as "failing" until it parks or recovers).
    func failing(_ subscriptionIDs: Set<String>, error: String) async
    /// A lane that had failed delivered again.
    func recovered(_ subscriptionIDs: Set<String>) async
}
