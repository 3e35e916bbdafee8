import ArgumentParser
import Coordination
import Foundation
import HeraldModel
import Logging
import Messaging

/// `herald check`: can this node reach its Redis and RabbitMQ? Says what failed, by name.
struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect to Redis and RabbitMQ, make one round trip through each, and report.",
        discussion: "Exits 0 when both answer, 1 otherwise, naming the server and the reason."
    )

    @OptionGroup var servers: ServerOptions
    @Option(help: "The cluster's Redis key prefix: the key the check writes is under it. Env: HERALD_KEY_PREFIX.")
    var keyPrefix: String =
        ProcessInfo.processInfo.environment["HERALD_KEY_PREFIX"].flatMap { $0.isEmpty ? nil : $0 } ?? "herald:"

    func run() async throws {
        var logger = Logger(label: "herald.check")
        logger.logLevel = .warning
        var healthy = true
        do {
            let report = try await ConnectivityCheck.redis(
                url: servers.redisURL, keyPrefix: keyPrefix, logger: logger)
            print("redis    ok    \(report)")
        } catch {
            healthy = false
            print("redis    FAIL  \(error)")
        }
        do {
            let report = try await ConnectivityCheck.rabbitMQ(url: servers.amqpURL, logger: logger)
            print("rabbitmq ok    \(report)")
        } catch {
            healthy = false
            print("rabbitmq FAIL  \(error)")
        }
        if !healthy { throw ExitCode(1) }
    }
}

/// `--redis-url` and `--amqp-url`, from the environment by default, checked before the command runs.
struct ServerOptions: ParsableArguments {
    @Option(help: "Redis URL: redis://[user:password@]host:port/db or unix:///path?db=N. Env: HERALD_REDIS_URL.")
    var redisURL: String = ProcessInfo.processInfo.environment["HERALD_REDIS_URL"] ?? "redis://127.0.0.1:6379/0"

    @Option(help: "RabbitMQ URL: amqp://user:password@host:port/vhost. Env: HERALD_AMQP_URL.")
    var amqpURL: String =
        ProcessInfo.processInfo.environment["HERALD_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"

    func validate() throws {
        do { _ = try RedisConfiguration(url: redisURL) } catch {
            throw ValidationError("--redis-url (HERALD_REDIS_URL): \(error)")
        }
        do { _ = try AMQPConfiguration(url: amqpURL) } catch {
            throw ValidationError("--amqp-url (HERALD_AMQP_URL): \(error)")
        }
    }
}

/// One round trip through each server, with what it took.
enum ConnectivityCheck {
    /// - Parameter keyPrefix: the cluster's key prefix: the key written and removed is under it (a
    ///   Redis user may be allowed that prefix only).
    static func redis(url: String, keyPrefix: String = "herald:", logger: Logger) async throws -> String {
        let configuration = try RedisConfiguration(url: url)
        let client = RedisClient(configuration: configuration, logger: logger)
        return try await withClosing(client, close: { await $0.close() }) { client in
            let start = ContinuousClock.now
            let key = "\(keyPrefix)check:\(UUID().uuidString)"
            let replies = try await client.pipeline([
                RedisCommand("SET", key, "ok", "EX", 10),
                RedisCommand("GET", key),
                RedisCommand("DEL", key),
                RedisCommand("INFO", "server"),
            ])
            let elapsed = ContinuousClock.now - start
            guard replies[1].string == "ok" else {
                throw CoordinationError(
                    .unexpectedReply, "SET then GET on \(configuration.redactedDescription) read back \(replies[1])")
            }
            let version =
                replies[3].string?.split(separator: "\r\n").first { $0.hasPrefix("redis_version:") }?.dropFirst(
                    "redis_version:".count) ?? "?"
            return
                "\(configuration.redactedDescription), Redis \(version), SET/GET/DEL/INFO pipelined in \(elapsed.formatted(.units(allowed: [.milliseconds], fractionalPart: .show(length: 1))))"
        }
    }

    static func rabbitMQ(url: String, logger: Logger) async throws -> String {
        let configuration = try AMQPConfiguration(url: url)
        let start = ContinuousClock.now
        let connection = try await AMQPConnection.connect(configuration, logger: logger)
        return try await withClosing(connection, close: { await $0.close() }) { connection in
            let channel = try await connection.openChannel()
            let queue = try await channel.declareQueue(
                "", options: AMQPQueueOptions(durable: false, exclusive: true, autoDelete: true))
            try await channel.enableConfirms()
            let body = Array("herald check \(UUID())".utf8)
            try await channel.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue.name, body: body))
            let consumer = try await channel.consume(queue.name, prefetch: 1)
            var iterator = consumer.makeAsyncIterator()
            guard let delivery = try await iterator.next(), delivery.body == body else {
                throw MessagingError(.protocolError, "the test message did not come back from \(queue.name)")
            }
            channel.ack(delivery)
            let elapsed = ContinuousClock.now - start
            return
                "\(configuration.redactedDescription), connect + declare + publish (confirmed) + consume in \(elapsed.formatted(.units(allowed: [.milliseconds], fractionalPart: .show(length: 1))))"
        }
    }
}
