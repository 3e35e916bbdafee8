@testable import ClusterNode
import Coordination
import Foundation
import Messaging
import Testing
import TestSupport

@Suite("The cluster's queue type (HERALD_QUEUE_TYPE unset)")
struct QueueTypeChoiceTests {
    @Test("a setting wins; else the cluster's record; else classic for a cluster older than the record, quorum for a new one", arguments: [
        ("classic", "quorum" as String?, true, "classic"),
        ("quorum", nil, true, "quorum"),
        ("", "classic", false, "classic"),
        ("", "quorum", true, "quorum"),
        ("", nil, true, "classic"),
        ("", nil, false, "quorum"),
    ])
    func choice(configured: String, recorded: String?, clusterExists: Bool, expected: String) throws {
        #expect(try ClusterQueueType.choose(configured: configured, recorded: recorded, clusterExists: clusterExists) == expected)
    }

    @Test("a record this version does not know stops start-up, naming the key")
    func unknownRecord() {
        #expect(throws: ConfigurationError.self) { try ClusterQueueType.choose(configured: "", recorded: "stream", clusterExists: true) }
        #expect(throws: ConfigurationError.self) { try NodeConfiguration.fromEnvironment(["HERALD_QUEUE_TYPE": "stream", "HERALD_API_AUTH": "trusted-header"]) }
        #expect((try? NodeConfiguration.fromEnvironment(["HERALD_API_AUTH": "trusted-header"]))?.queueType == "")
    }

    @Test("against the real Redis and RabbitMQ: a new cluster's queues are quorum queues, recorded for the nodes that follow")
    func newClusterIsQuorum() async throws {
        let cluster = TestServers.uniqueName("qtype")
        let prefix = cluster + ":"
        var configuration = try NodeConfiguration.fromEnvironment([
            "HERALD_API_AUTH": "trusted-header", "HERALD_CLUSTER": cluster, "HERALD_KEY_PREFIX": prefix, "HERALD_PARTITIONS": "2",
            "HERALD_EXCHANGES": "nova",
        ])
        let redis = try RedisClient(url: TestServers.redisURL())
        defer { Task { _ = try? await redis.send("DEL", prefix + "queue-type", prefix + "partitions") } }
        configuration.queueType = try await ClusterQueueType.resolve(configured: configuration.queueType, redis: redis, keyPrefix: prefix)
        #expect(configuration.queueType == "quorum")

        let connection = try await AMQPConnection.connect(url: TestServers.amqpURL())
        let channel = try await connection.openChannel()
        try await Topology.declare(on: channel, configuration: configuration)
        try await ClusterQueueType.record(configuration.queueType, redis: redis, keyPrefix: prefix)
        let names = configuration.names
        let queues = [names.ingest, names.dead, names.partitionQueue(0), names.partitionQueue(1)]
        // RabbitMQ says which type a queue has by refusing the other one (406 PRECONDITION_FAILED).
        for queue in queues {
            let probe = try await connection.openChannel()
            do {
                _ = try await probe.declareQueue(queue, options: AMQPQueueOptions(durable: true, arguments: ["x-queue-type": .string("classic")]))
                Issue.record("\(queue) took a classic redeclaration: it is not a quorum queue")
            } catch let error as MessagingError {
                #expect(error.replyCode == 406, "\(queue): \(error)")
            }
        }

        // A node started later (the partition count stored meanwhile) follows the record.
        _ = try await redis.send("SET", prefix + "partitions", 2)
        #expect(try await ClusterQueueType.resolve(configured: "", redis: redis, keyPrefix: prefix) == "quorum")
        // A cluster made before the record existed kept the old default.
        _ = try await redis.send("DEL", prefix + "queue-type")
        #expect(try await ClusterQueueType.resolve(configured: "", redis: redis, keyPrefix: prefix) == "classic")

        let cleanup = try await connection.openChannel()
        for queue in queues { _ = try? await cleanup.deleteQueue(queue) }
        await connection.close()
    }
}
