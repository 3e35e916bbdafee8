import Coordination
import Foundation
import HeraldModel
import Logging
import Messaging
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

@Suite("The cluster's queue shape: type and length bounds")
struct QueueShapeChoiceTests {
    static let none = QueueShapeSettings()

    @Test(
        "a setting wins; else the cluster's record; else the old shape for a cluster older than the record, quorum, bounds and an ingest queue per exchange for a new one",
        arguments: [
            (
                QueueShapeSettings(type: "classic"), ["type": "quorum"], true,
                QueueShape(type: "classic", ingestMaxMessages: 0, partitionMaxMessages: 0, ingestLayout: .single)
            ),
            (
                QueueShapeSettings(type: "quorum", partitionMaxMessages: 7), [:], true,
                QueueShape(type: "quorum", ingestMaxMessages: 0, partitionMaxMessages: 7, ingestLayout: .single)
            ),
            (
                none, ["type": "classic", "ingest-max-messages": "10", "partition-max-messages": "3"], false,
                QueueShape(type: "classic", ingestMaxMessages: 10, partitionMaxMessages: 3, ingestLayout: .single)
            ),
            (
                QueueShapeSettings(ingestMaxMessages: 99),
                ["type": "quorum", "ingest-max-messages": "10", "partition-max-messages": "3"], true,
                QueueShape(type: "quorum", ingestMaxMessages: 99, partitionMaxMessages: 3, ingestLayout: .single)
            ),
            (
                QueueShapeSettings(ingestLayout: .perExchange), ["type": "classic"], true,
                QueueShape(type: "classic", ingestMaxMessages: 0, partitionMaxMessages: 0, ingestLayout: .perExchange)
            ),
            (
                none, ["type": "quorum", "ingest-layout": "per-exchange"], true,
                QueueShape(type: "quorum", ingestMaxMessages: 0, partitionMaxMessages: 0, ingestLayout: .perExchange)
            ),
            (none, [:], true, QueueShape.legacy),
            (none, [:], false, QueueShape.newCluster),
            // Byte bounds: a setting, else the record; a record made before them has none.
            (
                QueueShapeSettings(partitionMaxBytes: 100), ["type": "quorum", "ingest-max-bytes": "7"], true,
                QueueShape(
                    type: "quorum", ingestMaxMessages: 0, partitionMaxMessages: 0, ingestLayout: .single,
                    ingestMaxBytes: 7, partitionMaxBytes: 100)
            ),
            (
                none, ["type": "quorum", "ingest-max-messages": "10", "partition-max-messages": "3"], true,
                QueueShape(type: "quorum", ingestMaxMessages: 10, partitionMaxMessages: 3, ingestLayout: .single)
            ),
        ])
    func choice(
        configured: QueueShapeSettings, recorded: [String: String], clusterExists: Bool, expected: QueueShape
    ) throws {
        #expect(
            try ClusterQueueShape.choose(configured: configured, recorded: recorded, clusterExists: clusterExists)
                == expected)
    }

    @Test("a record this version cannot use, or a bad setting, stops start-up naming the key")
    func refused() {
        #expect(throws: ConfigurationError.self) {
            try ClusterQueueShape.choose(configured: Self.none, recorded: ["type": "stream"], clusterExists: true)
        }
        #expect(throws: ConfigurationError.self) {
            try ClusterQueueShape.choose(
                configured: Self.none, recorded: ["partition-max-bytes": "lots"], clusterExists: true)
        }
        #expect(throws: ConfigurationError.self) {
            try ClusterQueueShape.choose(
                configured: Self.none, recorded: ["partition-max-messages": "-4"], clusterExists: true)
        }
        #expect(throws: ConfigurationError.self) {
            try NodeConfiguration.fromEnvironment(["HERALD_QUEUE_TYPE": "stream", "HERALD_API_AUTH": "trusted-header"])
        }
        #expect(throws: ConfigurationError.self) {
            try NodeConfiguration.fromEnvironment([
                "HERALD_PARTITION_QUEUE_MAX_MESSAGES": "lots", "HERALD_API_AUTH": "trusted-header",
            ])
        }
        #expect(throws: ConfigurationError.self) {
            try ClusterQueueShape.choose(
                configured: Self.none, recorded: ["ingest-layout": "sharded"], clusterExists: true)
        }
        #expect(throws: ConfigurationError.self) {
            try NodeConfiguration.fromEnvironment([
                "HERALD_INGEST_LAYOUT": "sharded", "HERALD_API_AUTH": "trusted-header",
            ])
        }
        // Back to one ingest queue after the move: refused (every notification would come twice).
        #expect(throws: ConfigurationError.self) {
            try ClusterQueueShape.choose(
                configured: QueueShapeSettings(ingestLayout: .single), recorded: ["ingest-layout": "per-exchange"],
                clusterExists: true)
        }
        // An exchange names a queue of its own: nothing a queue name cannot hold.
        for bad in ["nova,ne utron", "nova,x/y", String(repeating: "x", count: 128)] {
            #expect(throws: ConfigurationError.self) {
                try NodeConfiguration.fromEnvironment(["HERALD_EXCHANGES": bad, "HERALD_API_AUTH": "trusted-header"])
            }
        }
        let unset = try? NodeConfiguration.fromEnvironment(["HERALD_API_AUTH": "trusted-header"])
        #expect(unset?.queueSettings == Self.none)
    }

    @Test(
        "a refused notification is held and every later one behind it; the first is tried alone after 50 ms doubling to 5 s; once it is taken the others go together; only a refused part stays"
    )
    func hold() {
        var hold = IngestHold<String>()
        let start = ContinuousClock.now
        #expect(!hold.isHolding)
        let began = hold.refused(.init(sequence: 1, item: "n1"), at: start)
        #expect(began, "a first refusal begins a spell")
        #expect(hold.isHolding, "later notifications wait behind it")
        hold.hold(.init(sequence: 4, item: "n4"))
        let again = hold.refused(.init(sequence: 2, item: "n2"), at: start)
        #expect(!again, "a second refusal continues the spell")
        #expect(hold.entries.map(\.item) == ["n1", "n2", "n4"], "a late refusal of an earlier one goes in order")
        let early = hold.take(at: start)
        #expect(early == nil, "not before the wait")
        #expect(hold.wait(at: start) == .milliseconds(100), "two refusals: 50 ms, then 100 ms")
        let probe = hold.take(at: start + .milliseconds(100))
        #expect(probe?.map(\.item) == ["n1"], "while refusals go on, the first alone")
        let during = hold.take(at: start + .seconds(60))
        #expect(during == nil, "nothing more while it is in flight")
        #expect(hold.wait(at: start + .seconds(60)) == nil)
        hold.settle([(1, "n1")], refused: true, at: start)
        #expect(hold.wait(at: start) == .milliseconds(200))
        for _ in 0..<10 {
            _ = hold.take(at: start + .seconds(3600))
            hold.settle([(1, "n1")], refused: true, at: start)
        }
        #expect(hold.wait(at: start) == .seconds(5), "the wait stops doubling at 5 s")
        // Taken: the others go together, at once.
        _ = hold.take(at: start + .seconds(5))
        hold.settle([(1, nil)], refused: false, at: start + .seconds(5))
        let rest = hold.take(at: start + .seconds(5))
        #expect(rest?.map(\.item) == ["n2", "n4"])
        // Of a notification spanning partitions, only the refused part stays; a new spell begins at 50 ms.
        hold.settle([(2, nil), (4, "n4-part")], refused: true, at: start + .seconds(5))
        #expect(hold.entries.map(\.item) == ["n4-part"])
        #expect(hold.wait(at: start + .seconds(5)) == .milliseconds(50))
        _ = hold.take(at: start + .seconds(6))
        hold.settle([(4, nil)], refused: false, at: start + .seconds(6))
        #expect(!hold.isHolding)
        #expect(hold.wait(at: start + .seconds(6)) == nil)
        #expect(hold.refusals == 14)
    }
}

@Suite("Queue shape and bounds against the real Redis and RabbitMQ", .serialized, .timeLimit(.minutes(3)))
struct QueueShapeTests {
    /// A cluster of its own: its names, key prefix and notification exchange (so no other
    /// test's ingest queue is bound to what this one publishes).
    static func configuration(_ extra: [String: String] = [:]) throws -> (NodeConfiguration, String) {
        let cluster = TestServers.uniqueName("qshape")
        let exchange = TestServers.uniqueName("qshape-x")
        let environment = [
            "HERALD_API_AUTH": "trusted-header", "HERALD_CLUSTER": cluster, "HERALD_KEY_PREFIX": cluster + ":",
            "HERALD_PARTITIONS": "1",
            "HERALD_EXCHANGES": exchange, "HERALD_REDIS_URL": try TestServers.redisURL(),
            "HERALD_AMQP_URL": try TestServers.amqpURL(),
            "HERALD_INGEST_WATCH_SECONDS": "1",
        ].merging(extra) { $1 }
        return (try NodeConfiguration.fromEnvironment(environment), exchange)
    }

    /// An ingest of a cluster of its own (`configuration(_:)` with `extra`, its queue shape
    /// resolved), consuming its exchange's ingest queue, and what a test reads back with.
    struct RunningIngest {
        let configuration: NodeConfiguration
        let exchange: String
        let queue: String
        let redis: RedisClient
        let connection: AMQPConnection
        /// A channel of the test's own.
        let control: AMQPChannel
        let service: IngestService
        /// `service.run()`.
        let task: Task<Void, any Error>
        let deadLetters: DeadLetterStore
    }

    /// Starts a `RunningIngest` and returns once it consumes (close its connection after).
    static func startIngest(_ extra: [String: String]) async throws -> RunningIngest {
        var (configuration, exchange) = try Self.configuration(extra)
        let redis = try RedisClient(url: TestServers.redisURL())
        configuration.queueShape = try await ClusterQueueShape.resolve(
            configured: configuration.queueSettings, redis: redis, keyPrefix: configuration.keyPrefix)
        let queue = configuration.names.ingestQueue(exchange: exchange)
        let connection = try await AMQPConnection.connect(url: TestServers.amqpURL())
        let deadLetters = DeadLetterStore(redis: redis, keyPrefix: configuration.keyPrefix)
        let service = IngestService(
            connection: connection, queue: queue, configuration: configuration,
            deadLetters: CountedDeadLetters(store: deadLetters),
            counters: PipelineCounters(), logger: Logger(label: "herald.test.ingest"))
        let task = Task { try await service.run() }
        let control = try await connection.openChannel()
        try await eventually(timeout: .seconds(20)) {
            guard try await control.declareQueuePassive(queue).consumerCount == 1 else {
                throw TestFailure("ingest not consuming yet")
            }
        }
        return RunningIngest(
            configuration: configuration, exchange: exchange, queue: queue, redis: redis, connection: connection,
            control: control, service: service, task: task, deadLetters: deadLetters)
    }

    @Test("a new cluster's queues are quorum queues with bounds, recorded for the nodes that follow")
    func newClusterIsQuorum() async throws {
        var (configuration, exchange) = try Self.configuration()
        let prefix = configuration.keyPrefix
        let redis = try RedisClient(url: TestServers.redisURL())
        configuration.queueShape = try await ClusterQueueShape.resolve(
            configured: configuration.queueSettings, redis: redis, keyPrefix: prefix)
        #expect(configuration.queueShape == .newCluster)

        let connection = try await AMQPConnection.connect(url: TestServers.amqpURL())
        try await Topology.declare(on: try await connection.openChannel(), configuration: configuration)
        try await ClusterQueueShape.record(configuration.queueShape, redis: redis, keyPrefix: prefix)
        let names = configuration.names
        let queues = [names.ingestQueue(exchange: exchange), names.dead, names.partitionQueue(0)]
        #expect(Topology.ingestQueues(configuration).map(\.queue) == [names.ingestQueue(exchange: exchange)])
        // RabbitMQ says how a queue was made by refusing other arguments (406 PRECONDITION_FAILED).
        for queue in queues {
            let probe = try await connection.openChannel()
            do {
                _ = try await probe.declareQueue(
                    queue, options: AMQPQueueOptions(durable: true, arguments: ["x-queue-type": .string("classic")]))
                Issue.record("\(queue) took a classic redeclaration: it is not a quorum queue")
            } catch let error as MessagingError {
                #expect(error.replyCode == 406, "\(queue): \(error)")
            }
        }

        // The partition queue holds both bounds: RabbitMQ takes its arguments again as they are,
        // and refuses them without the byte bound.
        let partitionArguments: AMQPTable = [
            "x-single-active-consumer": .bool(true), "x-dead-letter-exchange": .string(names.dead),
            "x-queue-type": .string("quorum"),
        ].merging(Topology.bounds(messages: 50_000, bytes: 512 << 20, .newCluster)) { a, _ in a }
        #expect(partitionArguments["x-max-length-bytes"] == .int(512 << 20))
        _ = try await (try await connection.openChannel()).declareQueue(
            names.partitionQueue(0), options: AMQPQueueOptions(durable: true, arguments: partitionArguments))
        do {
            var without = partitionArguments
            without["x-max-length-bytes"] = nil
            _ = try await (try await connection.openChannel()).declareQueue(
                names.partitionQueue(0), options: AMQPQueueOptions(durable: true, arguments: without))
            Issue.record("the partition queue took a declaration without its byte bound")
        } catch let error as MessagingError {
            #expect(error.replyCode == 406, "\(error)")
        }
        #expect(try await redis.send("HGET", prefix + "queue-shape", "partition-max-bytes").string == "\(512 << 20)")

        // A node started later (the partition count stored meanwhile) follows the record.
        _ = try await redis.send("SET", prefix + "partitions", 1)
        #expect(
            try await ClusterQueueShape.resolve(configured: QueueShapeSettings(), redis: redis, keyPrefix: prefix)
                == .newCluster)
        // A cluster made before the record existed keeps the old shape.
        _ = try await redis.send("DEL", prefix + "queue-shape")
        #expect(
            try await ClusterQueueShape.resolve(configured: QueueShapeSettings(), redis: redis, keyPrefix: prefix)
                == .legacy)

        let cleanup = try await connection.openChannel()
        for queue in queues { _ = try? await cleanup.deleteQueue(queue) }
        _ = try await redis.send("DEL", prefix + "partitions")
        _ = exchange
        await connection.close()
    }

    @Test(
        "a full partition queue: the rest are held (nothing requeued, dropped or dead-lettered) and arrive in order once it drains; a full ingest queue refuses the overflow"
    )
    func boundedQueues() async throws {
        let run = try await Self.startIngest([
            "HERALD_QUEUE_TYPE": "classic", "HERALD_PARTITION_QUEUE_MAX_MESSAGES": "5",
            "HERALD_INGEST_QUEUE_MAX_MESSAGES": "30",
        ])
        defer { Task { await run.connection.close() } }
        let (configuration, exchange, redis, connection, control) =
            (run.configuration, run.exchange, run.redis, run.connection, run.control)
        let (ingest, running, deadLetters, ingestQueue) = (run.service, run.task, run.deadLetters, run.queue)
        let names = configuration.names
        #expect(
            configuration.queueShape
                == QueueShape(
                    type: "classic", ingestMaxMessages: 30, partitionMaxMessages: 5, ingestLayout: .perExchange,
                    ingestMaxBytes: 4 << 30, partitionMaxBytes: 512 << 20))
        func notification(_ seq: Int) -> AMQPOutgoingMessage {
            let message: [String: Any] = [
                "message_id": "m-\(seq)", "publisher_id": "compute.host", "event_type": "compute.instance.update",
                "priority": "INFO",
                "payload": ["seq": seq], "timestamp": "2026-12-05 07:00:00.000000", "_context_project_id": "p1",
            ]
            let body = try! JSONSerialization.data(withJSONObject: message)
            return AMQPOutgoingMessage(exchange: exchange, routingKey: "notifications.info", body: Array(body))
        }
        try await control.publish((0..<20).map(notification))

        // The partition queue stops at its bound; the other 15 are held for it, not in dead letters.
        try await eventually(timeout: .seconds(20)) {
            let depth = try await control.declareQueuePassive(names.partitionQueue(0)).messageCount
            guard depth == 5, ingest.refusals > 0 else {
                throw TestFailure("partition queue holds \(depth), \(ingest.refusals) refusals")
            }
        }
        try await Task.sleep(for: .seconds(1))
        #expect(try await control.declareQueuePassive(names.partitionQueue(0)).messageCount == 5)
        #expect(try await deadLetters.count() == 0)
        // Held, not requeued: a requeued notification would come straight back and be refused
        // again at once (thousands of refusals a second); held ones are retried with backoff.
        #expect(ingest.refusals < 60, "\(ingest.refusals) refusals: spinning against the full queue")

        // Drained, the partition takes the rest: all 20, each once.
        let consumer = try await connection.openChannel()
        var seen: [String] = []
        let deliveries = try await consumer.consume(names.partitionQueue(0), prefetch: 50)
        for try await delivery in deliveries {
            seen.append(delivery.properties.messageID ?? "?")
            consumer.ack(delivery)
            if seen.count == 20 { break }
        }
        #expect(seen == (0..<20).map { "m-\($0)" }, "all 20, once each, in order: \(seen)")

        // With ingest stopped, the ingest queue keeps 30 and refuses the rest.
        await ingest.stop()
        _ = try await running.value
        try await control.publish((100..<140).map(notification))
        try await eventually(timeout: .seconds(10)) {
            let depth = try await control.declareQueuePassive(ingestQueue).messageCount
            guard depth == 30 else { throw TestFailure("ingest queue holds \(depth)") }
        }

        for queue in [ingestQueue, names.dead, names.partitionQueue(0)] { _ = try? await control.deleteQueue(queue) }
        _ = try await redis.send("DEL", configuration.keyPrefix + "queue-shape")
    }

    @Test(
        "notifications published on the connection's thread and those left to the ingest's task (large, malformed, empty) reach the partition in arrival order, each once"
    )
    func forwardedInOrder() async throws {
        let run = try await Self.startIngest(["HERALD_QUEUE_TYPE": "classic"])
        defer { Task { await run.connection.close() } }
        let (configuration, exchange, redis, connection, control) =
            (run.configuration, run.exchange, run.redis, run.connection, run.control)
        let (ingest, running, deadLetters, ingestQueue) = (run.service, run.task, run.deadLetters, run.queue)
        let names = configuration.names
        // Every 7th too large for the connection's thread, every 23rd not a notification, every
        // 29th an empty Ceilometer list (nothing to publish, nothing to dead-letter).
        let large = String(repeating: "x", count: IngestService.forwardedBodyLimit)
        let publishes: @Sendable (Int) -> Bool = { $0 % 23 != 22 && $0 % 29 != 5 }
        func notification(_ seq: Int) -> AMQPOutgoingMessage {
            let body: Data
            if seq % 23 == 22 {
                body = Data("{\"not\": \"a notification \(seq)\"}".utf8)
            } else if seq % 29 == 5 {
                body = Data("{\"event_type\": \"event\", \"payload\": [], \"message_id\": \"e-\(seq)\"}".utf8)
            } else {
                let message: [String: Any] = [
                    "message_id": "m-\(seq)", "publisher_id": "compute.host",
                    "event_type": "compute.instance.update", "priority": "INFO",
                    "payload": ["seq": seq, "padding": seq % 7 == 3 ? large : ""],
                    "timestamp": "2026-12-06 07:00:00.000000", "_context_project_id": "p1",
                ]
                body = try! JSONSerialization.data(withJSONObject: message)
            }
            return AMQPOutgoingMessage(exchange: exchange, routingKey: "notifications.info", body: Array(body))
        }
        let sequence = 0..<300
        let expected = sequence.filter(publishes).map { "m-\($0)" }
        let consumer = try await connection.openChannel()
        var seen: [String] = []
        let deliveries = try await consumer.consume(names.partitionQueue(0), prefetch: 100)
        var arrived = deliveries.makeAsyncIterator()
        // In bursts of ten, each once the last is through: a burst starts on the thread, and
        // behind a large one the rest wait for the task.
        for burst in stride(from: 0, to: sequence.count, by: 10) {
            let sent = burst..<min(burst + 10, sequence.count)
            try await control.publish(sent.map(notification))
            let due = sent.filter(publishes).count
            for _ in 0..<due {
                guard let delivery = try await arrived.next() else { break }
                seen.append(delivery.properties.messageID ?? "?")
                consumer.ack(delivery)
            }
        }
        #expect(seen == expected, "each once, in arrival order")
        try await eventually(timeout: .seconds(10)) {
            guard try await deadLetters.count() == sequence.filter({ $0 % 23 == 22 }).count else {
                throw TestFailure("\(try await deadLetters.count()) dead letters")
            }
        }
        // Both ways were taken: the large, malformed and empty ones by the task, never on the
        // thread, and the thread again after them (most bursts begin there).
        let largeOnes = sequence.filter { $0 % 7 == 3 && publishes($0) }.count
        #expect(
            (10...(expected.count - largeOnes)).contains(ingest.forwardedOnArrival),
            "\(ingest.forwardedOnArrival) published on the thread")
        await ingest.stop()
        _ = try await running.value
        #expect(try await control.declareQueuePassive(ingestQueue).messageCount == 0, "every notification acked")
        await consumer.close()
        #expect(
            try await control.declareQueuePassive(names.partitionQueue(0)).messageCount == 0, "nothing published twice")
        for queue in [ingestQueue, names.dead, names.partitionQueue(0)] { _ = try? await control.deleteQueue(queue) }
        _ = try await redis.send("DEL", configuration.keyPrefix + "queue-shape")
    }
}
