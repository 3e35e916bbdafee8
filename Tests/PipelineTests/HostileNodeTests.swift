import AsyncHTTPClient
import Coordination
import Foundation
import HeraldModel
import Messaging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Notifications
import TestSupport
import Testing

extension PipelineSuites {
    @Suite("herald node against hostile tenants, targets and notifications", .serialized, .timeLimit(.minutes(5)))
    struct HostileNodeTests {
        func call(
            _ port: Int, _ method: HTTPMethod, _ path: String, project: String, roles: String? = nil,
            json: [String: Any]
        ) async throws -> (Int, String) {
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
            request.method = method
            request.headers.add(name: "X-Project-Id", value: project)
            if let roles { request.headers.add(name: "X-Roles", value: roles) }
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
        }

        @Test(
            "hostile targets (Retry-After inf/nan/1e300/86400, redirects, silence, huge bodies) kill no node; a zaqar_url outside the allowed list is a 400 and never contacted; a poison notification is a dead letter, a 3 MiB one too (read no further than its first 64 KiB); another project's events flow"
        )
        func hostileTargets() async throws {
            let hostile = try await HostileZaqar { request in
                switch request.queue.split(separator: "-").first {
                case "inf": return .answer(status: 503, headers: ["Retry-After": "inf"])
                case "nan": return .answer(status: 429, headers: ["Retry-After": "nan"])
                case "huge": return .answer(status: 503, headers: ["Retry-After": "1e300"])
                case "day": return .answer(status: 503, headers: ["Retry-After": "86400"])
                case "redirect": return .redirect(location: "http://127.0.0.1:1/v2/queues/x/messages")
                case "silent": return .silent
                case "html": return .huge(status: 400, bytes: 3 << 20)
                default: return .accept
                }
            }
            let forbidden = try await HostileZaqar { _ in .accept }
            do {
                try await PipelineRun.with(partitions: 8) { run in
                    try await run.startNodes(
                        1,
                        extra: [
                            "HERALD_ZAQAR_ALLOWED_URLS": "\(run.zaqar.baseURL),\(hostile.url)",
                            "HERALD_DELIVERY_TIMEOUT_SECONDS": "2",
                        ], as: .inProcess)
                    try await run.waitAllPartitionsHeld()
                    let port = try #require(run.nodes["node-1"]?.apiPort)

                    var ids: [String: String] = [:]
                    for kind in ["inf", "nan", "huge", "day", "redirect", "silent", "html"] {
                        let (status, body) = try await call(
                            port, .POST, "/v1/subscriptions", project: "evil",
                            json: [
                                "event_types": ["compute.instance.*"],
                                "target": ["queue": "\(kind)-\(run.id)", "zaqar_url": hostile.url],
                            ])
                        #expect(status == 201, "\(kind): \(body)")
                        ids[kind] =
                            ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any])?["id"]
                            as? String
                    }
                    let (refused, refusal) = try await call(
                        port, .POST, "/v1/subscriptions", project: "evil",
                        json: [
                            "event_types": ["compute.instance.*"],
                            "target": ["queue": "elsewhere", "zaqar_url": forbidden.url],
                        ])
                    #expect(refused == 400)
                    #expect(refusal.contains("target.zaqar_url"), "\(refusal)")
                    // The cloud admin's feed of every project into a target that refuses it: its dead
                    // letters hold evil's events, so they are kept apart from the admin project's own.
                    let (feedCreated, feed) = try await call(
                        port, .POST, "/v1/subscriptions", project: "admin", roles: "admin",
                        json: [
                            "event_types": ["compute.instance.*"], "all_projects": true,
                            "target": ["queue": "html-all-\(run.id)", "zaqar_url": hostile.url],
                        ])
                    #expect(feedCreated == 201, "\(feed)")
                    let feedID =
                        ((try? JSONSerialization.jsonObject(with: Data(feed.utf8))) as? [String: Any])?["id"] as? String
                    let good = run.queue("good")
                    let (created, answer) = try await call(
                        port, .POST, "/v1/subscriptions", project: "good",
                        json: ["event_types": ["volume.*"], "target": ["queue": good]])
                    #expect(created == 201, "\(answer)")
                    run.trackQueues([("good", good)])
                    try await Task.sleep(for: .seconds(2))

                    var lines: [[String: Any]] = []
                    for seq in 0..<20 {
                        lines.append([
                            "exchange": "nova", "event_type": "compute.instance.create.end", "project": "evil",
                            "payload": ["seq": seq],
                        ])
                        lines.append([
                            "exchange": "cinder", "event_type": "volume.create.end", "project": "good",
                            "payload": ["seq": seq],
                        ])
                    }
                    let poisonID = String(repeating: "p", count: 300)
                    let poison =
                        "{\"event_type\": \"compute.instance.poison\", \"message_id\": \"\(poisonID)\", \"priority\": \"INFO\", \"publisher_id\": \"x\", \"timestamp\": \"2026-12-04 00:00:00\", \"payload\": {\"project_id\": \"evil\"}}"
                    lines.insert(["raw": poison, "exchange": "nova"], at: 10)
                    // Beyond the decoder's 1 MiB: only its start is kept from the wire (a flood of
                    // such held prefetch x the broker's largest message), and it is dead-lettered.
                    let huge =
                        "{\"event_type\": \"compute.instance.huge\", \"payload\": {\"project_id\": \"evil\", \"pad\": \""
                        + String(repeating: "x", count: 3 << 20) + "\"}}"
                    lines.insert(["raw": huge, "exchange": "nova"], at: 20)
                    let publisher = try run.publish(lines)
                    #expect(await publisher.wait() == 0, "\(publisher.tail())")

                    let arrived = try await eventually(timeout: .seconds(60)) {
                        let bodies = try await run.zaqar.bodies(queue: good, project: "good")
                        guard bodies.count >= 20 else { throw TestFailure("\(bodies.count) of 20 in \(good)") }
                        return bodies
                    }
                    #expect(arrived.count == 20, "the other project's events flow while evil's targets misbehave")
                    try await eventually(timeout: .seconds(30)) {
                        let letters = try await run.deadLetters.recent(count: 100)
                        guard
                            letters.contains(where: {
                                $0.reason == .malformed && $0.detail.contains("message_id is 300 bytes")
                            }
                            )
                        else {
                            throw TestFailure("no dead letter for the poison notification: \(letters.map(\.detail))")
                        }
                        guard let huge = letters.first(where: { $0.detail.contains("\(huge.utf8.count) bytes") }) else {
                            throw TestFailure("no dead letter for the 3 MiB notification: \(letters.map(\.detail))")
                        }
                        #expect(huge.detail.contains("its first 65536 bytes were read"), "\(huge.detail)")
                        #expect(huge.reason == .malformed && huge.bodyTruncated == true)
                    }
                    try await eventually(timeout: .seconds(30)) {
                        let apart = try await run.deadLetters.recent(.allProjects, count: 100).map(\.letter)
                        guard apart.filter({ $0.subscriptionID == feedID }).count >= 20 else {
                            throw TestFailure("\(apart.count) of the feed's 20 dead letters kept apart")
                        }
                        #expect(apart.allSatisfy { $0.allProjects == true && $0.project == "admin" })
                    }
                    #expect(
                        try await run.deadLetters.recent(project: "admin", count: 100).isEmpty,
                        "none in the admin project's own letters, which its readers list")
                    // Every hostile target was tried, and the node is still there.
                    try await eventually(timeout: .seconds(30)) {
                        for kind in ["inf", "nan", "huge", "day", "redirect", "silent", "html"]
                        where hostile.requests(queue: "\(kind)-\(run.id)") == 0 {
                            throw TestFailure("\(kind) was never tried")
                        }
                    }
                    try await Task.sleep(for: .seconds(3))
                    let exited = await run.exited("node-1")
                    #expect(!exited, "the node died: \(run.nodes["node-1"]?.tail(40) ?? "")")
                    #expect(forbidden.totalRequests == 0, "a refused endpoint is never contacted")

                    // Each subscription's health says what its target did: the 503s as its recent error,
                    // the refused 400s as dead letters with the reason.
                    for (kind, expected) in [("inf", "503"), ("html", "dead-lettered")] {
                        let id = try #require(ids[kind])
                        try await eventually(timeout: .seconds(20)) {
                            var request = HTTPClientRequest(
                                url: "http://127.0.0.1:\(port)/v1/subscriptions/\(id)/delivery")
                            request.headers.add(name: "X-Project-Id", value: "evil")
                            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                            let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
                            let health =
                                (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
                            guard (health["recent_error"] as? String)?.contains(expected) == true,
                                health["recent_error_at"] is String,
                                (health["total"] as? [String: Any])?["matched"] as? Int == 20
                            else { throw TestFailure("\(kind): \(text)") }
                            if kind == "html" {
                                guard ((health["total"] as? [String: Any])?["dead_lettered"] as? Int ?? 0) > 0 else {
                                    throw TestFailure("\(kind): no dead letters counted: \(text)")
                                }
                            }
                        }
                    }
                }
            } catch {
                await hostile.close()
                await forbidden.close()
                throw error
            }
            await hostile.close()
            await forbidden.close()
        }

        @Test(
            "a partition's delivery whose event falls in another partition (nodes on different definitions) goes to the dead queue, counted as misrouted, not acked as unmatched; a Ceilometer list's part there is taken (the ingest put all of it there)"
        )
        func misrouted() async throws {
            try await PipelineRun.with(partitions: 4) { run in
                try await run.startNodes(1, as: .inProcess)
                try await run.waitAllPartitionsHeld()
                let eventType = "compute.instance.update"
                // No resource id: the event type is the partition key.
                let wrong = (PartitionHash.partition(of: eventType, count: 4) + 1) % 4
                let names = try run.names
                let connection = try await AMQPConnection.connect(url: run.amqpURL)
                let channel = try await connection.openChannel()
                try await channel.publish(
                    AMQPOutgoingMessage(
                        exchange: names.partitions, routingKey: "\(wrong)",
                        body: Array(
                            #"{"event_type": "\#(eventType)", "message_id": "m-misrouted", "payload": {"project_id": "p1"}}"#
                                .utf8),
                        properties: AMQPMessageProperties(contentType: "application/json", persistent: true)))
                let name = try #require(run.nodes.keys.first)
                try await eventually(timeout: .seconds(30)) {
                    let metrics = try await run.metrics(of: name)
                    guard metrics["herald_events_total{stage=\"misrouted\"}"] == 1 else {
                        throw TestFailure("misrouted: \(metrics.filter { $0.key.contains("stage") })")
                    }
                }
                let dead = try await eventually(timeout: .seconds(30)) {
                    let depth = try await channel.declareQueuePassive(names.dead).messageCount
                    guard depth >= 1 else { throw TestFailure("nothing in \(names.dead)") }
                    return depth
                }
                #expect(dead == 1)

                // A Ceilometer list's part (`herald-part`) holds only what the ingest put in this
                // partition, so it is taken whatever this node's definitions say: not misrouted.
                let part =
                    #"{"event_type": "event", "payload": [{"event_type": "\#(eventType)", "message_id": "m-part", "generated": "2026-12-07T00:00:00", "traits": [["project_id", 1, "p1"]]}]}"#
                try await channel.publish(
                    AMQPOutgoingMessage(
                        exchange: names.partitions, routingKey: "\(wrong)", body: Array(part.utf8),
                        properties: AMQPMessageProperties(
                            contentType: "application/json", headers: ["herald-part": .bool(true)], persistent: true)))
                try await eventually(timeout: .seconds(30)) {
                    let metrics = try await run.metrics(of: name)
                    guard metrics["herald_events_total{stage=\"consumed\"}"] == 2 else {
                        throw TestFailure("consumed: \(metrics.filter { $0.key.contains("stage") })")
                    }
                }
                try await Task.sleep(for: .milliseconds(500))
                #expect(try await run.metrics(of: name)["herald_events_total{stage=\"misrouted\"}"] == 1)
                #expect(try await channel.declareQueuePassive(names.dead).messageCount == 1)
                await channel.close()
                await connection.close()
            }
        }

        @Test(
            "a single event no subscription's project and patterns take is settled from the ingest's headers without being decoded; one a subscription could take, or attributed by other event definitions, is decoded"
        )
        func settledFromHeaders() async throws {
            try await PipelineRun.with(partitions: 4) { run in
                let taken = Subscription(
                    project: "p1", eventTypes: ["compute.instance.*"], target: Target(queue: run.queue("headers")))
                try await run.registry.create(taken)
                try await run.startNodes(1, as: .inProcess)
                try await run.waitAllPartitionsHeld()
                let eventType = "compute.instance.update"
                let partition = PartitionHash.partition(of: eventType, count: 4)
                let names = try run.names
                let connection = try await AMQPConnection.connect(url: run.amqpURL)
                let channel = try await connection.openChannel()
                // Not JSON: decoding it would send it to the dead queue as misrouted.
                let ours = EventDefinitions.defaults.fingerprint
                func publish(project: String, definitions: String = EventDefinitions.defaults.fingerprint) async throws
                {
                    try await channel.publish(
                        AMQPOutgoingMessage(
                            exchange: names.partitions, routingKey: "\(partition)", body: Array("not json".utf8),
                            properties: AMQPMessageProperties(
                                contentType: "application/json",
                                headers: [
                                    "herald-event-type": .string(eventType), "herald-project": .string(project),
                                    "herald-actor-project": .string(""), "herald-resource-id": .string(""),
                                    "herald-message-id": .string("m-\(project)"), "herald-events": .int(1),
                                    "herald-definitions": .string(definitions),
                                ],
                                persistent: true)))
                }
                let name = try #require(run.nodes.keys.first)
                // No owner (the event-type catalog, which decodes an event of a project now and then
                // for a sample, counts only events with one) and no all-projects subscription.
                try await publish(project: "")
                try await eventually(timeout: .seconds(30)) {
                    let metrics = try await run.metrics(of: name)
                    guard metrics["herald_events_total{stage=\"unmatched\"}"] == 1 else {
                        throw TestFailure("unmatched: \(metrics.filter { $0.key.contains("stage") })")
                    }
                }
                try await publish(project: "p1")
                // Attributed by other event definitions (a rollout): this node decodes it itself.
                try await publish(project: "", definitions: ours + "-other")
                try await eventually(timeout: .seconds(30)) {
                    let metrics = try await run.metrics(of: name)
                    guard metrics["herald_events_total{stage=\"misrouted\"}"] == 2 else {
                        throw TestFailure("misrouted: \(metrics.filter { $0.key.contains("stage") })")
                    }
                }
                let dead = try await eventually(timeout: .seconds(30)) {
                    let depth = try await channel.declareQueuePassive(names.dead).messageCount
                    guard depth >= 2 else { throw TestFailure("\(depth) in \(names.dead)") }
                    return depth
                }
                #expect(dead == 2, "only the events a subscription could take, or of other definitions, were decoded")
                let metrics = try await run.metrics(of: name)
                #expect(metrics["herald_events_total{stage=\"unmatched\"}"] == 1)
                await channel.close()
                await connection.close()
            }
        }

        @Test("two clusters in one vhost: each ingests every notification into its own queues")
        func twoClusters() async throws {
            try await PipelineRun.with(partitions: 4) { run in
                let otherPrefix = TestServers.uniqueName("herald-e2e-b") + ":"
                try await run.startNodes(1, as: .inProcess)
                try await run.startNodes(1, extra: ["HERALD_KEY_PREFIX": otherPrefix], as: .inProcess)
                try await run.waitAllPartitionsHeld()
                try await eventually(timeout: .seconds(60)) {
                    let leases = try await run.redis.pipeline(
                        (0..<4).map { RedisCommand("GET", otherPrefix + "lease:\($0)") })
                    guard leases.allSatisfy({ $0.string != nil }) else {
                        throw TestFailure("the second cluster holds not all its partitions yet")
                    }
                }
                let other = SubscriptionRegistry(
                    redis: try RedisConfiguration(url: run.redisURL), keyPrefix: otherPrefix)
                let queueA = run.queue("cluster-a")
                let queueB = run.queue("cluster-b")
                try await run.registry.create(
                    Subscription(project: "p1", eventTypes: ["compute.*"], target: Target(queue: queueA)))
                try await other.create(
                    Subscription(project: "p1", eventTypes: ["compute.*"], target: Target(queue: queueB)))
                run.trackQueues([("p1", queueA), ("p1", queueB)])
                try await Task.sleep(for: .seconds(2))
                let publisher = try run.publish(
                    (0..<20).map {
                        [
                            "exchange": "nova", "event_type": "compute.instance.create.end", "project": "p1",
                            "payload": ["seq": $0],
                        ]
                    })
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                for queue in [queueA, queueB] {
                    let bodies = try await eventually(timeout: .seconds(60)) {
                        let bodies = try await run.zaqar.bodies(queue: queue, project: "p1")
                        guard bodies.count >= 20 else { throw TestFailure("\(bodies.count) of 20 in \(queue)") }
                        return bodies
                    }
                    #expect(bodies.count == 20, "\(queue): every notification once, none taken by the other cluster")
                }
            }
        }

        @Test(
            "a node configured with another partition count stops before it consumes anything, naming both counts; the cluster's events all arrive"
        )
        func wrongPartitionCount() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                try await run.startNodes(1, as: .inProcess)
                try await run.waitAllPartitionsHeld()
                let queue = run.queue("counted")
                try await run.registry.create(
                    Subscription(project: "p1", eventTypes: ["compute.*"], target: Target(queue: queue)))
                run.trackQueues([("p1", queue)])
                try await run.startNodes(1, extra: ["HERALD_PARTITIONS": "16"], as: .inProcess)
                try await eventually(timeout: .seconds(30)) {
                    guard await run.exited("node-2") else { throw TestFailure("node-2 still runs") }
                }
                let log = run.nodes["node-2"]?.tail(40) ?? ""
                #expect(log.contains("8 partitions") && log.contains("16"), "\(log)")
                #expect(try await run.ingestLeaseHolders().values.allSatisfy { $0 == "node-1" })
                // Had it ingested while it started, some of these would sit in its partitions 8 to 15.
                let publisher = try run.publish(
                    (0..<40).map {
                        [
                            "exchange": ["nova", "neutron", "cinder"][$0 % 3],
                            "event_type": "compute.instance.create.end", "project": "p1", "payload": ["seq": $0],
                        ]
                    })
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                let bodies = try await eventually(timeout: .seconds(60)) {
                    let bodies = try await run.zaqar.bodies(queue: queue, project: "p1")
                    guard bodies.count >= 40 else { throw TestFailure("\(bodies.count) of 40 in \(queue)") }
                    return bodies
                }
                #expect(bodies.count == 40)
            }
        }
    }
}
