import Dispatch

/// The one way Herald keeps blocking work off Swift's cooperative pool (swift-kafka-client's
/// `DispatchQueueTaskExecutor` and `BlockingCall` are the model): a serial dispatch queue that
/// is also a task executor.
///
/// - `run { ... }` runs a blocking call (a hiredis command, rabbitmq-c's connect) on the queue
///   and resumes the caller with its result; calls on one executor run one at a time, in order,
///   which is what a C handle that is not thread-safe needs.
/// - As a `TaskExecutor`, a task can prefer it (`Task(executorPreference:)`): the coordinator's
///   lease loop runs there, so a node whose cooperative pool is busy with decoding, matching and
///   delivery still renews its leases on time.
///
/// A C library's own event loop (rabbitmq-c's frames, hiredis' subscriber, libcurl's multi
/// handle) is not a call but the life of its handle: it keeps a thread of its own instead, in
/// the one type that owns the handle.
public final class BlockingExecutor: TaskExecutor, Sendable {
    private let queue: DispatchQueue

    /// - Parameter label: the queue's name, as thread dumps and profiles show it.
    public init(label: String) {
        queue = DispatchQueue(label: label)
    }

    /// Runs `body` on the queue, after what was queued before it.
    /// - Throws: what `body` throws.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Runs `body`, which cannot fail, on the queue.
    public func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
