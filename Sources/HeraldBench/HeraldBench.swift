import ArgumentParser
import CBaseline
import ChildProcesses
import Coordination
import Foundation
import Logging
import Messaging

/// Micro-benchmarks of Herald's clients, each against a baseline measured in
/// the same run (these machines are noisy: compare, don't quote absolutes).
@main
struct HeraldBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald-bench",
        abstract: "Benchmarks of Herald's Redis and AMQP clients against baselines in the same run.",
        subcommands: [
            Clients.self, AMQP.self, Redis.self, Failover.self, ClusterLoad.self, DeliveryBenchmark.self, HotPath.self,
            Load.self, Member.self, PartitionBalance.self, HTTPClients.self, InstantSinkCommand.self,
        ],
        defaultSubcommand: Clients.self
    )
}

struct ServerOptions: ParsableArguments {
    @Option(help: "RabbitMQ URL (default: $HERALD_TEST_AMQP_URL).")
    var amqpURL: String =
        ProcessInfo.processInfo.environment["HERALD_TEST_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"

    @Option(help: "Redis URL (default: $HERALD_TEST_REDIS_URL).")
    var redisURL: String = ProcessInfo.processInfo.environment["HERALD_TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379/0"

    @Option(help: "Rounds of each measurement; the median is reported.")
    var rounds: Int = 3
}

/// Both client benchmarks, one after the other.
struct Clients: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the AMQP and Redis benchmarks.")

    @OptionGroup var servers: ServerOptions
    @Option(help: "Messages per AMQP round.") var messages: Int = 50_000
    @Option(help: "SET commands per Redis round.") var requests: Int = 200_000

    func run() async throws {
        try await AMQPBenchmark(servers: servers, messages: messages, size: 1024, prefetch: 100).run()
        print("")
        try await RedisBenchmark(servers: servers, requests: requests, pipeline: 16).run()
    }
}

struct AMQP: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Consume-and-ack messages/s: Swift client vs a plain C loop over rabbitmq-c.")

    @OptionGroup var servers: ServerOptions
    @Option(help: "Messages per round.") var messages: Int = 50_000
    @Option(help: "Body size in bytes.") var size: Int = 1024
    @Option(help: "basic.qos prefetch.") var prefetch: UInt16 = 100

    func run() async throws {
        try await AMQPBenchmark(servers: servers, messages: messages, size: size, prefetch: prefetch).run()
    }
}

struct Redis: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Pipelined SETs/s: Swift client vs redis-benchmark.")

    @OptionGroup var servers: ServerOptions
    @Option(help: "SET commands per round.") var requests: Int = 200_000
    @Option(help: "Commands per pipeline.") var pipeline: Int = 16

    func run() async throws {
        try await RedisBenchmark(servers: servers, requests: requests, pipeline: pipeline).run()
    }
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

func format(_ rate: Double) -> String {
    String(format: "%10.0f", rate)
}

// MARK: AMQP

struct AMQPBenchmark {
    let servers: ServerOptions
    let messages: Int
    let size: Int
    let prefetch: UInt16

    func run() async throws {
        var logger = Logger(label: "herald.bench")
        logger.logLevel = .warning
        let configuration = try AMQPConfiguration(url: servers.amqpURL)
        let connection = try await AMQPConnection.connect(configuration, logger: logger)
        let control = try await connection.openChannel()
        let queue = "herald.bench.\(UUID().uuidString.prefix(8).lowercased())"
        try await control.declareQueue(queue, options: AMQPQueueOptions(durable: false, autoDelete: false))
        try await control.enableConfirms()
        print(
            "AMQP consume-and-ack: \(messages) messages of \(size) B per round, prefetch \(prefetch), \(servers.rounds) rounds, queue \(queue)"
        )
        print("  round        C msg/s   Swift msg/s   Swift/C")

        var cRates: [Double] = []
        var swiftRates: [Double] = []
        for round in 1...servers.rounds {
            try await fill(control, queue)
            let cRate = try await consumeWithC(configuration, queue)
            try await fill(control, queue)
            let swiftRate = try await consumeWithSwift(connection, queue)
            cRates.append(cRate)
            swiftRates.append(swiftRate)
            print(
                "  \(round)      \(format(cRate))    \(format(swiftRate))     \(String(format: "%.2f", swiftRate / cRate))"
            )
        }
        let ratio = median(swiftRates) / median(cRates)
        print(
            "  median \(format(median(cRates)))    \(format(median(swiftRates)))     \(String(format: "%.2f", ratio))   (goal >= 0.80)"
        )
        _ = try? await control.deleteQueue(queue)
        await connection.close()
    }

    private func fill(_ channel: AMQPChannel, _ queue: String) async throws {
        let body = [UInt8](repeating: UInt8(ascii: "x"), count: size)
        var sent = 0
        while sent < messages {
            let batch = min(1000, messages - sent)
            try await channel.publish(
                Array(repeating: AMQPOutgoingMessage(exchange: "", routingKey: queue, body: body), count: batch))
            sent += batch
        }
    }

    private func consumeWithC(_ configuration: AMQPConfiguration, _ queue: String) async throws -> Double {
        let result: Result<Double, any Error> = await withCheckedContinuation { continuation in
            let thread = Thread {
                var seconds = 0.0
                var error = [CChar](repeating: 0, count: 256)
                let status = herald_baseline_consume_ack(
                    configuration.host, Int32(configuration.port), configuration.virtualHost,
                    configuration.user, configuration.password, queue, Int32(prefetch), messages,
                    &seconds, &error, Int32(error.count)
                )
                if status == 0 {
                    continuation.resume(returning: .success(Double(messages) / seconds))
                } else {
                    continuation.resume(
                        returning: .failure(
                            MessagingError(
                                .protocolError,
                                String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
                        ))
                }
            }
            thread.start()
        }
        return try result.get()
    }

    private func consumeWithSwift(_ connection: AMQPConnection, _ queue: String) async throws -> Double {
        let channel = try await connection.openChannel()
        let start = ContinuousClock.now
        let consumer = try await channel.consume(queue, prefetch: prefetch)
        var received = 0
        for try await delivery in consumer {
            channel.ack(delivery)
            received += 1
            if received == messages { break }
        }
        let elapsed = ContinuousClock.now - start
        try await consumer.cancel()
        await channel.close()
        return Double(messages) / elapsed.seconds
    }
}

// MARK: Redis

struct RedisBenchmark {
    let servers: ServerOptions
    let requests: Int
    let pipeline: Int

    func run() async throws {
        let configuration = try RedisConfiguration(url: servers.redisURL)
        guard case .tcp(let host, let port) = configuration.endpoint else {
            throw ValidationError("the Redis benchmark needs a redis://host:port URL, not \(servers.redisURL)")
        }
        let client = RedisClient(configuration: configuration)
        try await client.connect()
        print(
            "Redis pipelined SET: \(requests) commands per round, \(pipeline) per pipeline, 1 connection, \(servers.rounds) rounds"
        )
        print("  round  redis-benchmark SET/s   Swift SET/s   Swift/baseline")
        var baseline: [Double] = []
        var swift: [Double] = []
        for round in 1...servers.rounds {
            let reference = try await redisBenchmark(host: host, port: port, clients: 1)
            let measured = try await swiftPipelined(client)
            baseline.append(reference)
            swift.append(measured)
            print(
                "  \(round)      \(format(reference))          \(format(measured))     \(String(format: "%.2f", measured / reference))"
            )
        }
        let ratio = median(swift) / median(baseline)
        print(
            "  median \(format(median(baseline)))          \(format(median(swift)))     \(String(format: "%.2f", ratio))   (goal >= 0.50)"
        )
        let fifty = try await redisBenchmark(host: host, port: port, clients: 50)
        print("  for scale: redis-benchmark with its default 50 connections: \(format(fifty)) SET/s")
        await client.close()
    }

    private func swiftPipelined(_ client: RedisClient) async throws -> Double {
        // The same shape as redis-benchmark's SET: random keys out of 100,000, a 3-byte value.
        let value: [UInt8] = Array("xxx".utf8)
        let batches = requests / pipeline
        var commands: [[RedisCommand]] = []
        commands.reserveCapacity(batches)
        for _ in 0..<batches {
            commands.append(
                (0..<pipeline).map { _ in
                    RedisCommand("SET", "key:\(String(format: "%012d", Int.random(in: 0..<100_000)))", value)
                })
        }
        let start = ContinuousClock.now
        for batch in commands {
            let replies = try await client.pipeline(batch)
            guard replies.count == batch.count, replies.allSatisfy({ $0 == .status("OK") }) else {
                throw ValidationError("a pipelined SET failed: \(replies.first { $0 != .status("OK") } ?? .null)")
            }
        }
        let elapsed = ContinuousClock.now - start
        return Double(batches * pipeline) / elapsed.seconds
    }

    /// Runs `redis-benchmark -t set -P N -q` and reads its requests per second.
    private func redisBenchmark(host: String, port: Int, clients: Int) async throws -> Double {
        let process = try ChildProcess(
            [
                "/usr/bin/env", "redis-benchmark", "-h", host, "-p", "\(port)", "-t", "set", "-n", "\(requests)", "-P",
                "\(pipeline)", "-c", "\(clients)", "-r", "100000", "-q",
            ], output: .pipe, errors: .inherit)
        let text = process.readOutputToEnd()
        _ = await process.wait()
        // "SET: 123456.78 requests per second, p50=0.055 msec" (after \r progress lines)
        guard
            let line = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).last(where: { $0.hasPrefix("SET: ") }),
            let number = line.dropFirst(5).split(separator: " ").first, let rate = Double(number)
        else {
            throw ValidationError("cannot read redis-benchmark's output: \(text)")
        }
        return rate
    }
}
