/// A clock reduced to what Herald's timers use: the time elapsed since it was made, and sleeping.
/// Made from any `Clock` measured in `Duration`: `ContinuousClock` in a node, a manual clock in
/// tests, which then drive lingers, backoffs, circuits and polls by hand instead of sleeping.
public struct ElapsedClock: Sendable {
    private let elapsed: @Sendable () -> Duration
    private let sleeper: @Sendable (Duration) async throws -> Void

    public init<C: Clock>(_ clock: C) where C.Duration == Duration, C.Instant: Sendable {
        let origin = clock.now
        elapsed = { origin.duration(to: clock.now) }
        sleeper = { try await clock.sleep(for: $0) }
    }

    /// The system's monotonic clock.
    public static var continuous: ElapsedClock { ElapsedClock(ContinuousClock()) }

    /// The time since this clock was made.
    public func now() -> Duration { elapsed() }

    /// Sleeps for `duration` of this clock's time.
    /// - Throws: `CancellationError` when the task is cancelled first.
    public func sleep(for duration: Duration) async throws { try await sleeper(duration) }
}
