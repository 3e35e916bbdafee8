import HeraldModel
import Logging
import ServiceLifecycle
import Synchronization

/// One long-running part of a node (the registry watch, the partitions, the ingest, ...), as the
/// node's `ServiceGroup` runs it. The group starts the parts together and, on a graceful shutdown,
/// tells them one at a time from the last in its list to the first, each once the one before has
/// ended: the list in `HeraldNode.parts` is the node's shutdown order, read bottom up. (When the
/// shutdown budget runs out, the group cancels all that are left at once: that order is then gone.)
///
/// A part's `run` returns only after the graceful shutdown (or when cancelled): one that returns
/// earlier ends the group, and with it the node; one that throws ends it with the error (as the
/// membership does when the coordinator cannot join).
package struct NodePart: Service, CustomStringConvertible {
    /// What the part is, for the group's logs.
    package let description: String
    private let body: @Sendable () async throws -> Void

    /// A part with its own shutdown (`gracefulShutdown()` inside `body` tells it when).
    init(_ name: String, _ body: @escaping @Sendable () async throws -> Void) {
        description = name
        self.body = body
    }

    package func run() async throws { try await body() }

    /// A loop that runs until the graceful shutdown, then is cancelled (what it was doing is
    /// given up: the parts listed after it have ended by then). One that ends on its own
    /// before is logged and the part waits for the shutdown, so that the node goes on without it
    /// as it would have before the parts were services.
    static func loop(
        _ name: String, logger: Logger, _ body: @escaping @Sendable () async -> Void
    ) -> NodePart {
        NodePart(name) {
            await cancelWhenGracefulShutdown { await body() }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return }
            logger.error(
                "a part of the node ended on its own; the node goes on without it",
                metadata: [
                    LogKey.heraldPart: "\(name)"
                ])
            try? await gracefulShutdown()
        }
    }

    /// Nothing to run: `atShutdown` runs when the node stops, after every part listed after this
    /// one has ended (or at once, beside them, when the group is cancelled).
    static func closing(_ name: String, atShutdown: @escaping @Sendable () async -> Void) -> NodePart {
        NodePart(name) {
            try? await gracefulShutdown()
            await atShutdown()
        }
    }
}

/// The node's one shutdown budget (HERALD_SHUTDOWN_BUDGET_SECONDS), shared by the parts that
/// stop in turn: it begins when the graceful shutdown does (`HeraldNode.markStopping`), and each
/// part that waits takes what is left.
package final class ShutdownBudget: Sendable {
    private let total: Duration
    private let clock: ElapsedClock
    private let began = Mutex<Duration?>(nil)

    init(_ total: Duration, clock: ElapsedClock = .continuous) {
        self.total = total
        self.clock = clock
    }

    /// The budget starts now, unless it already has.
    func begin() {
        let now = clock.now()
        began.withLock { began in
            if began == nil { began = now }
        }
    }

    /// The whole budget.
    var whole: Duration { total }

    /// What is left of it (the whole budget before it began; never below zero).
    var left: Duration {
        guard let began = began.withLock({ $0 }) else { return total }
        return max(.zero, total - (clock.now() - began))
    }
}
