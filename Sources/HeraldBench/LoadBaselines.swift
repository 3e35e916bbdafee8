import ArgumentParser
import AsyncHTTPClient
import CBaseline
import ChildProcesses
import Coordination
import Delivery
import Foundation
import HeraldModel
import Messaging
import NIOCore
import Notifications
import Pipeline
import Synchronization

/// What `herald-bench load --baselines` measures before the open-loop run, all in the same run:
/// the broker's ceiling for Herald's topology, the nodes' own maximum on the same messages,
/// one POST per delivery into the same sink, and the nodes' start-up, memory and Redis costs.
struct LoadBaselines: Codable {
    /// Notifications each saturation phase takes through.
    var events: Int
    /// The plain rabbitmq-c loop (`herald_baseline_topology`): ingest → confirmed publish to a
    /// partition queue → consume and ack, no Herald logic. Notifications per second.
    var brokerCeilingPerSecond: Double
    /// CPU (user + system) of that loop's thread per notification: the client's share of the
    /// broker work Herald does too, with nothing else (the broker's own CPU not counted).
    var brokerLoopCPUMicrosecondsPerEvent: Double
    /// The nodes draining the same number of notifications from a pre-filled ingest queue
    /// into the sink, between 10% and 90% of the expected deliveries. Notifications per second.
    var heraldPerSecond: Double
    var heraldDeliveriesPerSecond: Double
    var heraldToBrokerCeiling: Double
    /// One POST per (event, subscription) into the same sink over as many connections as a
    /// node's pool (the seed service's way, without the broker). Deliveries per second.
    var onePostDeliveriesPerSecond: Double
    var heraldToOnePost: Double
    /// Herald's deliveries per request in the drain, rounded: the batch size of the next baseline.
    var sameBatchSize: Int
    /// The same sink taking batches of `sameBatchSize` posted straight at it (no broker, no
    /// Herald), over as many connections as the one-POST baseline. Deliveries per second.
    var sameBatchDeliveriesPerSecond: Double
    var heraldToSameBatch: Double
    /// Node CPU (user + system) between 10% and 90% of the drain, per notification.
    var cpuMicrosecondsPerEvent: Double
    /// Redis commands the server processed between 10% and 90% of the drain, per notification
    /// (every command counts as a round trip, pipelined or not: an upper bound).
    var redisCommandsPerEvent: Double
    /// Deliveries per POST the nodes made in the drain (from their /metrics).
    var messagesPerRequest: Double?
    /// From launching a node until its /readyz answered 200, per node (the restart of the drain).
    var readySeconds: [Double]
    /// Resident memory of each node, idle, subscriptions loaded, before any load.
    var idleRSSMegabytes: [Double]
    /// The anonymous part of it (heap, stacks): what the node itself holds, code and other
    /// file pages (shared, reclaimable) left out.
    var idleAnonymousMegabytes: [Double]
    /// `--drain-nodes`: the same drain with only some of the nodes running.
    var scaling: [ScalingDrain]?

    struct ScalingDrain: Codable {
        var nodes: Int
        var perSecond: Double
        var deliveriesPerSecond: Double
        /// Against the first count's.
        var ratio: Double
        /// First deliveries below one delivered before, per (subscription, partition, exchange).
        var outOfOrder: Int
    }
}

extension LoadRun {
    /// Runs the baselines; leaves the nodes running (restarted) and the ingest queue empty.
    func measureBaselines() async throws -> LoadBaselines {
        let count = options.baselineEvents
        let idleRSS = nodes.values.sorted { $0.name < $1.name }.map { LoadNode.residentMegabytes(pid: $0.pid) ?? 0 }
        let idleAnonymous = nodes.values.sorted { $0.name < $1.name }.map {
            LoadNode.residentMegabytes(pid: $0.pid, field: "RssAnon") ?? 0
        }
        log(
            "idle RSS of the nodes: "
                + zip(idleRSS, idleAnonymous).map { String(format: "%.1f MB (%.1f MB anonymous)", $0, $1) }.joined(
                    separator: ", "))

        let (broker, brokerCPU) = try await brokerCeiling(count: count)
        log(
            String(
                format:
                    "broker ceiling (plain rabbitmq-c loop, Herald's topology, %@ queues): %.0f notifications/s, the loop's CPU %.1f µs per notification",
                options.nodesQueueShape.type, broker, brokerCPU))

        let drain = try await heraldDrain(count: count)
        log(
            String(
                format:
                    "herald: %.0f notifications/s (%.0f deliveries/s) = %.2fx the broker ceiling; cpu %.1f µs and %.3f Redis commands per notification",
                drain.perSecond, drain.deliveriesPerSecond, drain.perSecond / broker, drain.cpuMicroseconds,
                drain.redisCommands))

        var scaling: [LoadBaselines.ScalingDrain] = []
        for running in options.drainNodeCounts {
            let measured = try await heraldDrain(count: count, running: running)
            let ratio = measured.perSecond / (scaling.first?.perSecond ?? measured.perSecond)
            scaling.append(
                .init(
                    nodes: running, perSecond: measured.perSecond, deliveriesPerSecond: measured.deliveriesPerSecond,
                    ratio: ratio, outOfOrder: measured.outOfOrder))
            log(
                String(
                    format:
                        "herald with %d of the nodes running: %.0f notifications/s (%.0f deliveries/s), %.2fx with %d; %d out of order",
                    running, measured.perSecond, measured.deliveriesPerSecond, ratio, scaling[0].nodes,
                    measured.outOfOrder))
        }

        let onePost = try await postDirect(events: min(count, options.onePostEvents), batch: 1)
        log(
            String(
                format: "one POST per delivery into the same sink: %.0f deliveries/s; herald %.2fx that", onePost,
                drain.deliveriesPerSecond / onePost))
        // What the sink (Zaqar) takes at Herald's own batch size, Herald's work left out.
        let batch = max(1, Int((drain.messagesPerRequest ?? 1).rounded()))
        let atBatch = try await postDirect(events: min(count, options.onePostEvents * batch), batch: batch)
        log(
            String(
                format: "batches of %d straight into the same sink: %.0f deliveries/s; herald %.2fx that", batch,
                atBatch, drain.deliveriesPerSecond / atBatch))
        return LoadBaselines(
            events: count, brokerCeilingPerSecond: broker, brokerLoopCPUMicrosecondsPerEvent: brokerCPU,
            heraldPerSecond: drain.perSecond, heraldDeliveriesPerSecond: drain.deliveriesPerSecond,
            heraldToBrokerCeiling: drain.perSecond / broker, onePostDeliveriesPerSecond: onePost,
            heraldToOnePost: drain.deliveriesPerSecond / onePost,
            sameBatchSize: batch, sameBatchDeliveriesPerSecond: atBatch,
            heraldToSameBatch: drain.deliveriesPerSecond / atBatch,
            cpuMicrosecondsPerEvent: drain.cpuMicroseconds, redisCommandsPerEvent: drain.redisCommands,
            messagesPerRequest: drain.messagesPerRequest,
            readySeconds: drain.readySeconds, idleRSSMegabytes: idleRSS, idleAnonymousMegabytes: idleAnonymous,
            scaling: scaling.isEmpty ? nil : scaling
        )
    }

    /// Publishes `count` notifications (the run's templates, message ids `base-<seq>`) to an
    /// exchange, transient as oslo.messaging sends them.
    private func fill(
        _ channel: AMQPChannel, exchange: String? = nil, routingKey: String, count: Int, prefix: String
    ) async throws {
        var seq = 0
        while seq < count {
            var batch: [AMQPOutgoingMessage] = []
            while seq < count && batch.count < 500 {
                batch.append(
                    AMQPOutgoingMessage(
                        exchange: exchange ?? self.exchange(seq), routingKey: routingKey,
                        body: envelope(seq, prefix: prefix),
                        properties: AMQPMessageProperties(contentType: "application/json")))
                seq += 1
            }
            try await channel.publish(batch)
        }
    }

    private func waitForMessages(_ channel: AMQPChannel, queues: [String], count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(120)
        while true {
            var held = 0
            for queue in queues { held += try await channel.declareQueuePassive(queue).messageCount }
            if held >= count { return }
            guard ContinuousClock.now < deadline else {
                throw ValidationError("\(queues.joined(separator: ", ")) did not reach \(count) messages within 120 s")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    static func threadCPUSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// The plain C loop over the same broker, queues declared as Herald declares its own (type
    /// and bounds as the nodes', `Load.nodesQueueShape`): notifications per second, and the loop's
    /// own CPU per notification (µs).
    private func brokerCeiling(count: Int) async throws -> (perSecond: Double, cpuMicroseconds: Double) {
        let connection = try await AMQPConnection.connect(url: vhostURL)
        let channel = try await connection.openChannel()
        try await channel.enableConfirms()
        let shape = options.nodesQueueShape
        // Bounded as the nodes bound theirs (with quorum's delivery limit); no dead-letter
        // exchange: nothing is rejected here.
        func bounded(_ arguments: AMQPTable, _ maxMessages: Int, _ maxBytes: Int) -> AMQPTable {
            arguments.merging(Topology.bounds(messages: maxMessages, bytes: maxBytes, shape)) { first, _ in first }
        }
        let ingest = "baseline.ingest"
        let exchange = "baseline"
        _ = try await channel.declareQueue(
            ingest,
            options: AMQPQueueOptions(
                durable: true,
                arguments: bounded(
                    ["x-queue-type": .string(shape.type), "x-single-active-consumer": .bool(true)],
                    shape.ingestMaxMessages, shape.ingestMaxBytes)))
        try await channel.declareExchange(exchange, options: AMQPExchangeOptions(type: "direct", durable: true))
        for partition in 0..<options.partitions {
            _ = try await channel.declareQueue(
                "\(exchange).p.\(partition)",
                options: AMQPQueueOptions(
                    durable: true,
                    arguments: bounded(
                        ["x-single-active-consumer": .bool(true), "x-queue-type": .string(shape.type)],
                        shape.partitionMaxMessages, shape.partitionMaxBytes)))
            try await channel.bindQueue("\(exchange).p.\(partition)", to: exchange, routingKey: "\(partition)")
        }
        log("broker ceiling: filling \(ingest) with \(count) notifications")
        try await fill(channel, exchange: "", routingKey: ingest, count: count, prefix: "base")
        try await waitForMessages(channel, queues: [ingest], count: count)
        let configuration = try AMQPConfiguration(url: vhostURL)
        let prefetch = options.nodeEnvironment["HERALD_INGEST_PREFETCH"].flatMap { Int32($0) } ?? 200
        let partitions = Int32(options.partitions)
        let result: Result<(Double, Double), any Error> = await withCheckedContinuation { continuation in
            Thread {
                var seconds = 0.0
                var error = [CChar](repeating: 0, count: 256)
                // The loop runs on this thread alone: its CPU time is the client's cost.
                let cpuBefore = Self.threadCPUSeconds()
                let status = herald_baseline_topology(
                    configuration.host, Int32(configuration.port), configuration.virtualHost, configuration.user,
                    configuration.password,
                    ingest, exchange, partitions, prefetch, count, &seconds, &error, Int32(error.count)
                )
                let cpu = Self.threadCPUSeconds() - cpuBefore
                if status == 0 {
                    continuation.resume(returning: .success((Double(count) / seconds, cpu * 1e6 / Double(count))))
                } else {
                    continuation.resume(
                        returning: .failure(
                            ValidationError(
                                "broker ceiling: "
                                    + String(
                                        decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                            )))
                }
            }.start()
        }
        _ = try? await channel.deleteQueue(ingest)
        for partition in 0..<options.partitions { _ = try? await channel.deleteQueue("\(exchange).p.\(partition)") }
        await connection.close()
        return try result.get()
    }

    struct Drain {
        var perSecond: Double
        var deliveriesPerSecond: Double
        var cpuMicroseconds: Double
        var redisCommands: Double
        var messagesPerRequest: Double?
        var readySeconds: [Double]
        var outOfOrder: Int
    }

    /// Stops the nodes (SIGTERM), fills the ingest queues (of `--exchanges`), starts them again
    /// (the first `running` of them; the others after the measurement) and measures how fast they
    /// deliver everything into the sink.
    private func heraldDrain(count: Int, running: Int? = nil) async throws -> Drain {
        let all = nodes.keys.sorted()
        let names = Array(all.prefix(running ?? all.count))
        for node in nodes.values { node.signal(SIGTERM) }
        for node in nodes.values { _ = await node.process.wait() }
        let connection = try await AMQPConnection.connect(url: vhostURL)
        let channel = try await connection.openChannel()
        try await channel.enableConfirms()
        var ingest: [String] = []
        for exchange in options.exchangeList {
            ingest.append(try await ingestQueue(exchange: exchange, connection: connection))
        }
        ingest = Array(Set(ingest)).sorted()
        log("herald: nodes stopped; filling \(ingest.joined(separator: ", ")) with \(count) notifications")
        try await fill(channel, routingKey: "notifications.info", count: count, prefix: "drain")
        try await waitForMessages(channel, queues: ingest, count: count)
        await connection.close()

        let expected = (0..<count).reduce(0) { $0 + templates[$1 % templates.count].matches.count }
        // Every event due at once: latency is not what this phase measures.
        let recorder = recorder(start: DispatchTime.now().uptimeNanoseconds, rate: 1_000_000_000, eventPrefix: "drain-")
        sink!.use(recorder)
        var launched: [String: ContinuousClock.Instant] = [:]
        for name in names {
            launched[name] = .now
            _ = try startNode(name: name)
        }
        var ready: [String: Double] = [:]
        var marks: [(Int, ContinuousClock.Instant, Double, Int64)] = []  // delivered, time, node CPU, Redis commands
        var last = -1
        var still = ContinuousClock.now
        let thresholds = [expected / 10, expected * 9 / 10]
        while true {
            for name in names where ready[name] == nil {
                if await isReady(nodes[name]!, timeout: .seconds(1)) {
                    ready[name] = (ContinuousClock.now - launched[name]!).seconds
                }
            }
            let delivered = recorder.state.withLock { $0.delivered }
            if marks.count < thresholds.count && delivered >= thresholds[marks.count] {
                for node in nodes.values { node.sampleCPU() }
                marks.append(
                    (delivered, .now, nodes.values.reduce(0) { $0 + $1.cpuSeconds }, try await redisCommandsProcessed())
                )
            }
            if delivered >= expected { break }
            if delivered != last {
                last = delivered
                still = .now
            }
            if ContinuousClock.now - still > .seconds(options.drain) {
                throw ValidationError(
                    "herald drain: \(delivered) of \(expected) deliveries, then nothing for \(options.drain) s; see \(options.out)/node-*.log"
                )
            }
            try await Task.sleep(for: .milliseconds(ready.count == names.count ? 20 : 5))
        }
        // The nodes were started for this phase: their counters hold its requests alone.
        let requests = await nodeMetric("herald_delivery_requests_total")
        let (from, to) = (marks[0], marks[1])
        let seconds = (to.1 - from.1).seconds
        let deliveriesPerSecond = Double(to.0 - from.0) / seconds
        let perDelivery = Double(count) / Double(expected)
        let events = Double(to.0 - from.0) * perDelivery
        for name in all where !names.contains(name) { _ = try startNode(name: name) }
        try await waitReady(timeout: .seconds(30))
        return Drain(
            perSecond: deliveriesPerSecond * perDelivery, deliveriesPerSecond: deliveriesPerSecond,
            cpuMicroseconds: (to.2 - from.2) * 1e6 / events, redisCommands: Double(to.3 - from.3) / events,
            messagesPerRequest: requests > 0 ? Double(expected) / requests : nil,
            readySeconds: names.map { ready[$0] ?? .nan },
            outOfOrder: recorder.state.withLock { $0.outOfOrder }
        )
    }

    /// A counter summed over the running nodes' /metrics.
    func nodeMetric(_ name: String) async -> Double {
        var total = 0.0
        for node in nodes.values where node.process.isRunning {
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(node.apiPort)/metrics")
            request.method = .GET
            guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(2)),
                response.status == .ok, let body = try? await response.body.collect(upTo: 8 << 20)
            else { continue }
            for line in String(buffer: body).split(separator: "\n")
            where line.hasPrefix(name + " ") || line.hasPrefix(name + "{") {
                total += Double(line.split(separator: " ").last ?? "") ?? 0
            }
        }
        return total
    }

    func redisCommandsProcessed() async throws -> Int64 {
        let info = try await redis.send("INFO", "stats").string ?? ""
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("total_commands_processed:") {
            return Int64(line.dropFirst("total_commands_processed:".count)) ?? 0
        }
        throw ValidationError("Redis INFO stats has no total_commands_processed")
    }

    /// Deliveries of `events` notifications posted straight into the sink, `batch` messages of one
    /// queue per POST, over --one-post-connections: deliveries per second. Batch 1 is the seed
    /// service's way; Herald's own batch size is what Zaqar takes at that size.
    private func postDirect(events: Int, batch: Int) async throws -> Double {
        var byQueue: [String: (project: String, messages: [[UInt8]])] = [:]
        var order: [String] = []
        for seq in 0..<events {
            let template = templates[seq % templates.count]
            let event = try NotificationDecoder.decode(envelope(seq, prefix: "post\(batch)"))[0]
            let body = NotificationDecoder.encode(event)
            for subscription in template.matches {
                let message = ZaqarMessageEncoding.message(
                    event: body, ttl: 3600, subscriptionID: subscriptionIDs[subscription], eventID: event.messageID,
                    partition: 0, epoch: 1)
                let queue = "q\(subscription)"
                if byQueue[queue] == nil { order.append(queue) }
                byQueue[queue, default: (event.project ?? "", [])].messages.append(message)
            }
        }
        // Each queue's messages in batches, the queues taking turns.
        var requests: [(queue: String, project: String, body: [UInt8], count: Int)] = []
        var round = 0
        while true {
            var any = false
            for queue in order {
                let (project, messages) = byQueue[queue]!
                let from = round * batch
                guard from < messages.count else { continue }
                any = true
                let slice = messages[from..<min(from + batch, messages.count)]
                requests.append(
                    (
                        queue, project,
                        Array("{\"messages\":[".utf8) + Array(slice.joined(separator: [UInt8(ascii: ",")]))
                            + Array("]}".utf8), slice.count
                    ))
            }
            if !any { break }
            round += 1
        }
        let deliveries = requests.reduce(0) { $0 + $1.count }
        let recorder = recorder(
            start: DispatchTime.now().uptimeNanoseconds, rate: 1_000_000_000, eventPrefix: "post\(batch)-")
        sink!.use(recorder)
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: options.onePostConnections)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let url = sink!.url
        let all = requests
        let connections = options.onePostConnections
        let next = NextIndex()
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<connections {
                group.addTask {
                    while true {
                        let index = next.take()
                        guard index < all.count else { return }
                        var request = HTTPClientRequest(url: "\(url)/v2/queues/\(all[index].queue)/messages")
                        request.method = .POST
                        request.headers.add(name: "Content-Type", value: "application/json")
                        request.headers.add(name: "Client-ID", value: LoadRun.clientID)
                        request.headers.add(name: "X-Project-ID", value: all[index].project)
                        request.body = .bytes(ByteBuffer(bytes: all[index].body))
                        let response = try await client.execute(request, timeout: .seconds(30))
                        let answer = try await response.body.collect(upTo: 1 << 20)
                        guard response.status == .created else {
                            throw ValidationError(
                                "posting batches of \(batch): the sink answered \(response.status): \(String(buffer: answer))"
                            )
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let seconds = (ContinuousClock.now - start).seconds
        try await client.shutdown()
        let delivered = recorder.state.withLock { $0.delivered }
        guard delivered == deliveries else {
            throw ValidationError("posting batches of \(batch): the sink recorded \(delivered) of \(deliveries)")
        }
        return Double(deliveries) / seconds
    }
}

/// Hands out indices to concurrent workers.
final class NextIndex: Sendable {
    private let next = Atomic<Int>(0)
    func take() -> Int { next.add(1, ordering: .relaxed).oldValue }
}

extension LoadNode {
    /// A memory line of /proc/PID/status (VmRSS, or RssAnon: the part that is not code and
    /// other file pages), in MB.
    static func residentMegabytes(pid: pid_t, field: String = "VmRSS") -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.split(separator: " ").dropFirst().first.flatMap { Double($0) }.map { $0 / 1024 }
        }
        return nil
    }
}

extension Load {
    /// The queues' type and bounds the nodes of this run declare theirs with: their settings
    /// (`--node-set`), else a new cluster's (the run's key prefix is new). The broker ceiling is
    /// measured on the same shape: the queue type changes what the broker can do (the plain loop
    /// here drained quorum queues about twice as fast as classic ones, BENCHMARKS.md).
    var nodesQueueShape: QueueShape {
        let settings = nodeEnvironment
        var shape = QueueShape.newCluster
        if let type = settings["HERALD_QUEUE_TYPE"], !type.isEmpty { shape.type = type }
        if let bound = settings["HERALD_INGEST_QUEUE_MAX_MESSAGES"].flatMap({ Int($0) }) {
            shape.ingestMaxMessages = bound
        }
        if let bound = settings["HERALD_PARTITION_QUEUE_MAX_MESSAGES"].flatMap({ Int($0) }) {
            shape.partitionMaxMessages = bound
        }
        if let bound = settings["HERALD_INGEST_QUEUE_MAX_BYTES"].flatMap({ Int($0) }) { shape.ingestMaxBytes = bound }
        if let bound = settings["HERALD_PARTITION_QUEUE_MAX_BYTES"].flatMap({ Int($0) }) {
            shape.partitionMaxBytes = bound
        }
        return shape
    }
}
