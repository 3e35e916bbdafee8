import Coordination
import Foundation
import HeraldModel
import Logging
import Messaging
import Notifications
import Synchronization

/// Runs a node's ingest: one `IngestService` per ingest queue it may consume (`Topology.ingestQueues`).
///
/// - One ingest queue (`single`), or unordered ingest: every queue on every node; a
///   single-active-consumer queue keeps one node active and the others on standby.
/// - One queue per exchange, ordered: the queues are shared out by leases of their own, a
///   `ClusterCoordinator` under `<prefix>ingest:<fingerprint>:` whose "partitions" are the
///   queues (`ingestDomain`). A node consumes a queue only while it holds its lease; a handover
///   stops the consumer, waits until what it took is acked or given back (its channels closed),
///   and only then releases the lease, so the next node starts after the last one's
///   notifications: an event type, which comes from one exchange, keeps its order.
package final class IngestOwners: Sendable {
    private let queues: [String]
    private let coordinator: ClusterCoordinator?
    private let make: @Sendable (String) -> IngestService
    private let logger: Logger
    private let running = Mutex<[Int: Running]>([:])
    /// Set by `shutdown`: nothing starts any more.
    private let stopping = Atomic<Bool>(false)
    /// Runs before any queue is consumed, and stops early when the node stops: a cluster's old
    /// single ingest queue is emptied first (`LegacyIngest`), so that nothing older comes after.
    private let before: @Sendable (_ stopping: @escaping @Sendable () -> Bool) async -> Void

    struct Running: Sendable {
        let service: IngestService
        /// `service.run()`; awaited in `stop(_:)`.
        let task: Task<Void, Never>
    }

    init(
        queues: [String], coordinator: ClusterCoordinator?, logger: Logger,
        before: @escaping @Sendable (_ stopping: @escaping @Sendable () -> Bool) async -> Void = { _ in },
        make: @escaping @Sendable (String) -> IngestService
    ) {
        self.queues = queues
        self.coordinator = coordinator
        self.logger = logger
        self.before = before
        self.make = make
    }

    /// The Redis key prefix of the ingest leases: one lease domain per list of ingest queues, so
    /// that nodes configured with other exchanges (a rolling change) never share numbers that
    /// mean other queues. `<prefix>ingest:<first 8 hex digits of FNV-1a 64 of the names>:`.
    static func keyPrefix(_ keyPrefix: String, queues: [String]) -> String {
        let fingerprint = PartitionHash.fnv1a64(queues.joined(separator: "\n").utf8)
        return keyPrefix + "ingest:" + String(String(fingerprint, radix: 16).prefix(8)) + ":"
    }

    /// Joins the ingest leases' group (when the queues are shared out by leases).
    func start() async throws {
        try await coordinator?.start()
    }

    /// The services running now (for tests and `herald status`): queue names.
    var consuming: [String] {
        running.withLock { running in running.keys.sorted().map { queues[$0] } }
    }

    /// Follows the lease events until they end (or, without leases, starts every queue).
    func run() async {
        await before { [self] in stopping.load(ordering: .relaxed) }
        guard let coordinator else {
            for index in queues.indices { start(index) }
            return
        }
        for await event in coordinator.events {
            switch event {
            case .acquired(let index, _):
                start(index)
            case .revoke(let index):
                await stop(index)
                coordinator.confirmRevoked(index)
            case .lost(let index):
                await stop(index)
            }
        }
    }

    private func start(_ index: Int) {
        guard queues.indices.contains(index) else { return }
        let service = make(queues[index])
        let started = running.withLock { running -> Bool in
            // Checked under the lock `shutdown` lists the running ones under, after it set `stopping`.
            guard running[index] == nil, !stopping.load(ordering: .relaxed) else { return false }
            // Held in `running`; awaited by `stop(_:)` (a lost lease, a shutdown).
            let task = Task { [logger] in
                do { try await service.run() } catch {
                    logger.error(
                        "ingest stopped", metadata: [LogKey.amqpQueue: "\(service.queue)", LogKey.error: "\(error)"])
                }
            }
            running[index] = Running(service: service, task: task)
            return true
        }
        if started { logger.info("ingesting", metadata: [LogKey.amqpQueue: "\(queues[index])"]) }
    }

    /// Stops one queue's consumer and waits until what it took is acked or given back.
    private func stop(_ index: Int) async {
        guard let stopped = running.withLock({ $0.removeValue(forKey: index) }) else { return }
        await stopped.service.stop()
        await stopped.task.value
        stopped.service.clearGauges()
        logger.info("stopped ingesting", metadata: [LogKey.amqpQueue: "\(stopped.service.queue)"])
    }

    /// Stops every queue's consumer (with leases: hands them over, within `drainTimeout`).
    func shutdown(drainTimeout: Duration) async {
        stopping.store(true, ordering: .relaxed)
        if let coordinator { await coordinator.leave(drainTimeout: drainTimeout) }
        for index in running.withLock({ Array($0.keys) }) { await stop(index) }
    }
}

/// A cluster that had one ingest queue (`<cluster>.ingest`) and now has one per exchange: the
/// old queue is unbound from every exchange (nothing new reaches it), consumed until it is empty,
/// then deleted; only then does a node consume the new queues, so that nothing older arrives
/// after something newer. One node moves it, the holder of `<prefix>ingest-move` in Redis (a
/// lock renewed every second, taken over 15 s after its holder stops renewing): only it consumes
/// and deletes, so no node deletes the queue while another still holds notifications of it. The
/// others wait until it is gone.
package enum LegacyIngest {
    /// What a passive declare said of the old queue.
    private enum Answer {
        case found(AMQPQueueState)
        case gone
        /// The node stops (while RabbitMQ could not answer).
        case stopping
    }

    /// The Redis lock of the node moving the old queue: taken or renewed (true), or held by another (false).
    typealias MoveLock = @Sendable () async -> Bool

    /// The lock on the Redis key `<prefix>ingest-move`, for `owner` (15 s, renewed on each call).
    static func moveLock(redis: RedisClient, keyPrefix: String, owner: String) -> MoveLock {
        let script = RedisScript(
            #"""
            if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
            if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
            return 0
            """#)
        return {
            let answer = try? await redis.evalSHA(
                script, keys: [keyPrefix + "ingest-move"], arguments: [owner, "15000"])
            return answer?.integer == 1
        }
    }

    /// Unbinds the old queue, if there is one, from every exchange (done at start, before the
    /// node consumes anything, and again on every pass of `drain`: a node still on the old
    /// layout binds it again when it reconnects). Without an old queue, nothing.
    static func unbindIfPresent(connection: AMQPConnection, configuration: NodeConfiguration) async throws {
        if try await connection.queueState(configuration.names.ingest) != nil {
            try await unbind(configuration.names.ingest, connection: connection, configuration: configuration)
        }
    }

    /// Empties the old queue, if there is one; returns when it is gone or the node stops.
    static func drain(
        connection: AMQPConnection, configuration: NodeConfiguration, logger: Logger, lock: MoveLock,
        stopping: @escaping @Sendable () -> Bool,
        make: @escaping @Sendable (String) -> IngestService
    ) async {
        let legacy = configuration.names.ingest
        // None: a new cluster, or one that moved already.
        guard case .found(let first) = await answer(legacy, connection: connection, stopping: stopping) else { return }
        logger.warning(
            "this cluster's ingest moves to a queue per exchange: emptying the old queue first",
            metadata: [LogKey.amqpQueue: "\(legacy)", LogKey.amqpMessages: "\(first.messageCount)"])
        var running: (service: IngestService, task: Task<Void, Never>)?
        func stopConsuming() async {
            guard let (service, task) = running else { return }
            running = nil
            await service.stop()
            await task.value  // acked or given back, its channels closed
            service.clearGauges()
        }
        var unbindFailures = 0
        while !stopping() {
            do { try await unbind(legacy, connection: connection, configuration: configuration) } catch {
                unbindFailures += 1
                if unbindFailures == 1 || unbindFailures % 60 == 0 {
                    logger.error(
                        "cannot unbind the old ingest queue; new notifications may still reach it (and the new queues)",
                        metadata: [LogKey.amqpQueue: "\(legacy)", LogKey.error: "\(error)"])
                }
            }
            guard case .found(let now) = await answer(legacy, connection: connection, stopping: stopping) else { break }
            guard await lock() else {
                // Another node moves it: this one waits until the queue is gone.
                await stopConsuming()
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            if now.messageCount > 0 {
                if running == nil {
                    let service = make(legacy)
                    running = (service, Task { try? await service.run() })  // awaited in stopConsuming
                }
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            // Nothing ready: stop consuming (what this node took is acked or given back: its
            // channels are closed), and delete it once no consumer is on it either and nothing
            // came back. (A classic queue is deleted only if empty; a quorum queue cannot be
            // asked that: RabbitMQ closes the connection.)
            await stopConsuming()
            if case .found(let after) = await answer(legacy, connection: connection, stopping: stopping),
                after.messageCount == 0, after.consumerCount == 0, await lock(),
                let dropped = await delete(
                    legacy, ifEmpty: configuration.queueShape.type == "classic", connection: connection)
            {
                if dropped > 0 {
                    logger.error(
                        "the old ingest queue held notifications when it was deleted (a node of the old layout still consuming it?)",
                        metadata: [LogKey.amqpQueue: "\(legacy)", LogKey.amqpMessages: "\(dropped)"])
                }
                logger.info("the old ingest queue is empty and deleted", metadata: [LogKey.amqpQueue: "\(legacy)"])
                return
            }
            try? await Task.sleep(for: .seconds(1))
        }
        await stopConsuming()
    }

    /// The queue's ready messages and consumers. Asks again while RabbitMQ cannot say (a
    /// connection down): `gone` only on its 404.
    private static func answer(
        _ queue: String, connection: AMQPConnection, stopping: @Sendable () -> Bool
    ) async -> Answer {
        var attempt = 0
        var random = SystemRandomNumberGenerator()
        while !stopping() {
            do {
                guard let state = try await connection.queueState(queue) else { return .gone }
                return .found(state)
            } catch {
                attempt += 1
                try? await Task.sleep(
                    for: Backoff(base: .milliseconds(200), cap: .seconds(5)).delay(attempt: attempt, using: &random))
            }
        }
        return .stopping
    }

    private static func unbind(
        _ queue: String, connection: AMQPConnection, configuration: NodeConfiguration
    ) async throws {
        let channel = try await connection.openChannel()
        do {
            for (exchange, keys) in Topology.sources(configuration) {
                for key in keys { try await channel.unbindQueue(queue, from: exchange, routingKey: key) }
            }
        } catch {
            await channel.close()
            throw error
        }
        await channel.close()
    }

    /// Deletes `queue`; the messages it held, or nil when it was not deleted.
    private static func delete(_ queue: String, ifEmpty: Bool, connection: AMQPConnection) async -> Int? {
        guard let channel = try? await connection.openChannel() else { return nil }
        let held = try? await channel.deleteQueue(queue, ifEmpty: ifEmpty)
        await channel.close()
        return held
    }
}
