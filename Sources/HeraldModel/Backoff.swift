/// Exponential backoff with jitter, the one every retry and reconnect in Herald uses: a
/// random delay in `[floor * c, c]` where `c = min(cap, base * 2^attempt)`.
///
/// `floor` 0 is full jitter (retries of many lanes spread widest); 0.5 keeps every wait at
/// least half its ceiling (a reconnect, or a parked retry, never comes back too soon) while
/// many nodes still do not retry in step.
public struct Backoff: Sendable {
    public var base: Duration
    public var cap: Duration
    /// The share of the ceiling every delay waits at least, from 0 to 1.
    public var floor: Double

    public init(base: Duration, cap: Duration, floor: Double = 0) {
        self.base = base
        self.cap = cap
        self.floor = min(1, max(0, floor))
    }

    /// The ceiling for `attempt` (0 for the first retry).
    public func ceiling(attempt: Int) -> Duration {
        let factor = Double(1 << min(max(attempt, 0), 30))
        return min(cap, base * factor)
    }

    public func delay<R: RandomNumberGenerator>(attempt: Int, using random: inout R) -> Duration {
        ceiling(attempt: attempt) * Double.random(in: floor...1, using: &random)
    }

    public func delay(attempt: Int) -> Duration {
        var random = SystemRandomNumberGenerator()
        return delay(attempt: attempt, using: &random)
    }
}
