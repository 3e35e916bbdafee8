/// How the batcher batches, bounds and retries. Defaults in the comments.
public struct DeliveryConfiguration: Sendable {
    /// A batch closes at this many messages. Default 100 (Zaqar sets no count limit).
    public var maxBatchMessages: Int = 100
    /// ... or at this many request bytes: Zaqar's `max_messages_post_size`. Default 262144.
    public var maxRequestBytes: Int = 262_144
    /// ... or this long after its first message, on a busy lane (see `lingerWindow`). Default 5 ms.
    public var linger: Duration = .milliseconds(5)
    /// A lane lingers only when it sent a request within this long: a busy lane's batch waits
    /// `linger` for company (fewer, fuller requests under load); a message that comes alone to a
    /// quiet lane goes at once, without `linger` added. Default 10 ms.
    public var lingerWindow: Duration = .milliseconds(10)
    /// Messages (and bytes) one lane may hold, queued or in flight. Default 5000 / 16 MiB.
    public var laneMaxMessages: Int = 5_000
    public var laneMaxBytes: Int = 16 << 20
    /// Messages (and bytes) one project's lanes together may hold: a project's share, so that one
    /// tenant's many failing queues cannot fill the node. Default 10000 / 32 MiB.
    public var projectMaxMessages: Int = 10_000
    public var projectMaxBytes: Int = 32 << 20
    /// Messages (and bytes) all lanes together may hold. Default 50000 / 128 MiB.
    public var globalMaxMessages: Int = 50_000
    public var globalMaxBytes: Int = 128 << 20
    /// Retry delays: full jitter over `min(cap, base * 2^attempt)`. Default 100 ms, 10 s.
    public var retryBase: Duration = .milliseconds(100)
    public var retryCap: Duration = .seconds(10)
    /// Attempts before a batch is dead-lettered as `retries_exhausted`; waiting on an open circuit does not count. Default 10.
    /// Only without parking: with parking, a batch parks after `attemptsBeforeParking` instead.
    public var maxAttempts: Int = 10
    /// With parking (`DeliveryParking`), failed attempts after which a batch is parked. Default 3
    /// (with the default backoff, within about a second).
    public var attemptsBeforeParking: Int = 3
    /// With parking, the longest `Retry-After` a failing batch waits out in its lane: a target that
    /// asks for longer has the batch parked at once (retried on parking's schedule), as has one
    /// whose request timed out, so that one target cannot hold its partitions' deliveries for a
    /// minute. Default 1 s.
    public var longestWaitBeforeParking: Duration = .seconds(1)
    /// Consecutive failures that open a lane's circuit, and how long it stays open. Default 5, 5 s.
    public var circuitThreshold: Int = 5
    public var circuitCooldown: Duration = .seconds(5)
    /// Lanes held before a new one has the idle ones looked over (those idle for 10 minutes are
    /// forgotten, failures and all; the next look comes at twice what is left). Tests lower it.
    package var laneSweepFloor: Int = 1_024

    public init() {}

    /// - Throws: `DeliveryError.invalidConfiguration` naming the bad setting.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws {
            if !ok { throw DeliveryError(.invalidConfiguration, message) }
        }
        try check(maxBatchMessages >= 1, "max batch messages \(maxBatchMessages) must be at least 1")
        try check(maxRequestBytes >= 1024, "max request bytes \(maxRequestBytes) must be at least 1024")
        try check(linger >= .zero, "linger \(linger) must not be negative")
        try check(lingerWindow >= .zero, "linger window \(lingerWindow) must not be negative")
        try check(
            laneMaxMessages >= maxBatchMessages,
            "lane max messages \(laneMaxMessages) must be at least the batch size \(maxBatchMessages)")
        try check(
            laneMaxBytes >= maxRequestBytes,
            "lane max bytes \(laneMaxBytes) must be at least the request size \(maxRequestBytes)")
        try check(
            projectMaxMessages >= laneMaxMessages,
            "project max messages \(projectMaxMessages) must be at least a lane's \(laneMaxMessages)")
        try check(
            projectMaxBytes >= laneMaxBytes,
            "project max bytes \(projectMaxBytes) must be at least a lane's \(laneMaxBytes)")
        // A project's share above the total is simply the total (one project alone may use it all).
        try check(
            globalMaxMessages >= laneMaxMessages,
            "global max messages \(globalMaxMessages) must be at least a lane's \(laneMaxMessages)")
        try check(
            globalMaxBytes >= laneMaxBytes,
            "global max bytes \(globalMaxBytes) must be at least a lane's \(laneMaxBytes)")
        try check(maxAttempts >= 1, "max attempts \(maxAttempts) must be at least 1")
        try check(attemptsBeforeParking >= 1, "attempts before parking \(attemptsBeforeParking) must be at least 1")
        try check(
            longestWaitBeforeParking >= .zero,
            "longest wait before parking \(longestWaitBeforeParking) must not be negative")
        try check(circuitThreshold >= 1, "circuit threshold \(circuitThreshold) must be at least 1")
    }
}

/// A lane's circuit breaker as a value type with time passed in.
///
/// Closed: requests flow. After `threshold` consecutive failures it opens: nothing
/// is sent for `cooldown`. Then it is half-open: one probe goes; success closes it,
/// failure opens it again for another cooldown.
public struct CircuitBreaker: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case closed
        case open(until: Duration)
        case halfOpen
    }

    public let threshold: Int
    public let cooldown: Duration
    public private(set) var state: State = .closed
    public private(set) var consecutiveFailures = 0

    public init(threshold: Int, cooldown: Duration) {
        self.threshold = threshold
        self.cooldown = cooldown
    }

    /// `nil` when a request may go now; otherwise how long to wait.
    public mutating func wait(now: Duration) -> Duration? {
        switch state {
        case .closed, .halfOpen:
            return nil
        case .open(let until):
            if now >= until {
                state = .halfOpen
                return nil
            }
            return until - now
        }
    }

    public mutating func succeeded() {
        state = .closed
        consecutiveFailures = 0
    }

    public mutating func failed(now: Duration) {
        consecutiveFailures += 1
        if state == .halfOpen || consecutiveFailures >= threshold {
            state = .open(until: now + cooldown)
        }
    }

    public var isOpen: Bool {
        if case .open = state { return true }
        return false
    }
}

/// The one error type of the Delivery module.
public struct DeliveryError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidConfiguration
        /// The batcher was shut down.
        case closed
        /// A target did not answer in time (the whole exchange has a deadline).
        case deadlineExceeded
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
