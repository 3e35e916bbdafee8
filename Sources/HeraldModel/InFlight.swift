import Synchronization

/// A count of work in flight that can be awaited down to zero without polling: `remove` resumes
/// the waiters when the count reaches zero; `waitUntilZero` gives up after a timeout.
public final class InFlight: Sendable {
    private struct State {
        var count = 0
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public var count: Int { state.withLock { $0.count } }

    public func add(_ amount: Int = 1) {
        state.withLock { $0.count += amount }
    }

    /// Takes `amount` off (never below zero); at zero, every waiter goes on.
    public func remove(_ amount: Int = 1) {
        let resumed = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count = max(0, state.count - amount)
            guard state.count == 0 else { return [] }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in resumed { waiter.resume() }
    }

    /// Waits until the count is zero or `timeout` has passed (or the task is cancelled).
    /// - Returns: whether the count was zero.
    /// - Parameter clock: what the timeout is measured on (a manual clock in tests).
    public func waitUntilZero(timeout: Duration, clock: ElapsedClock = .continuous) async -> Bool {
        if count == 0 { return true }
        return await answer(within: timeout, clock: clock) { await self.zero() } || count == 0
    }

    /// Returns when the count is zero (true) or the task is cancelled (false).
    public func zero() async -> Bool {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // Registered only while the count is above zero and the task goes on; else resumed here.
                let now = state.withLock { state -> Bool in
                    if state.count == 0 || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
        return count == 0
    }
}

/// `wait`'s answer, or false once `timeout` has passed (`wait` is then cancelled, and should
/// answer false for that unless what it waited for came at the same time: that answer wins).
package func answer(
    within timeout: Duration, clock: ElapsedClock, _ wait: @escaping @Sendable () async -> Bool
) async -> Bool {
    await withTaskGroup(of: Bool.self) { group in
        group.addTask { await wait() }
        group.addTask {
            try? await clock.sleep(for: timeout)
            return false
        }
        var answered = await group.next() ?? false
        group.cancelAll()
        while let late = await group.next() { answered = answered || late }
        return answered
    }
}
