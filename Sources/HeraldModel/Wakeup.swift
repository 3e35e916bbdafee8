import Synchronization

/// A signal a loop sleeps on instead of polling: `wait` returns when `signal` is called (or was
/// called since the last wait), when its timeout passes, or when the task is cancelled. A signal
/// with nobody waiting is kept for the next wait, so one sent between a loop's check and its
/// wait is never lost; several signals before a wait count as one.
///
/// Made for one waiter at a time (a loop). With several, a signal wakes those already waiting and
/// is kept only if there are none: one about to wait may miss it and wait for the next signal or
/// its timeout (the parked set's re-reads, every second, are used so: a lane then waits a second
/// more at worst).
public final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Wakes every waiter; with none, the next `wait` returns at once.
    public func signal() {
        let resumed = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            guard !state.waiters.isEmpty else {
                state.pending = true
                return []
            }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in resumed { waiter.resume(returning: true) }
    }

    /// Waits for a signal, at most `timeout` (nil: no limit) of `clock`'s time.
    /// - Returns: whether a signal came (false: the timeout passed or the task was cancelled).
    @discardableResult
    public func wait(timeout: Duration?, clock: ElapsedClock = .continuous) async -> Bool {
        if state.withLock({ state in
            defer { state.pending = false }
            return state.pending
        }) {
            return true
        }
        guard let timeout else { return await signalled() }
        if timeout <= .zero { return false }
        return await answer(within: timeout, clock: clock) { await self.signalled() }
    }

    /// Returns true on a signal, false when the task is cancelled.
    private func signalled() async -> Bool {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                // Registered only while no signal is pending and the task goes on; else answered here.
                let now = state.withLock { state -> Bool? in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    if Task.isCancelled { return false }
                    state.waiters[id] = continuation
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(returning: false)
        }
    }
}
