import AsyncHTTPClient
import Coordination
import Foundation
import HeraldModel
import Messaging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import TestSupport
import Testing

extension PipelineSuites {
    @Suite("Running herald nodes: the API over HTTP, herald status", .serialized, .timeLimit(.minutes(5)))
    struct RunningNodeTests {
        /// One HTTP call to a node's API.
        func call(
            _ run: PipelineRun, _ node: String, _ method: HTTPMethod, _ path: String, project: String? = "p1",
            json: [String: Any]? = nil
        ) async throws -> (Int, String) {
            let port = try #require(run.nodes[node]?.apiPort)
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
            request.method = method
            if let project { request.headers.add(name: "X-Project-Id", value: project) }
            if let json {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
            }
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 4 << 20)
            return (Int(response.status.code), String(buffer: body))
        }

        func object(_ text: String) -> [String: Any] {
            ((try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]) ?? [:]
        }

        /// Subscribes project p1 to compute.* events, into `queue` (this run's own).
        func subscribeCompute(_ run: PipelineRun, on node: String, queue: String) async throws {
            let (created, body) = try await call(
                run, node, .POST, "/v1/subscriptions", json: ["event_types": ["compute.*"], "target": ["queue": queue]])
            #expect(created == 201, "\(body)")
            run.trackQueues([("p1", queue)])
        }

        /// Waits until nova's ingest queue has its consumer: the ingest declared the whole topology
        /// before it consumes (a change to the topology made before that would be undone).
        func waitIngesting(_ run: PipelineRun, on channel: AMQPChannel) async throws {
            let ingest = try run.names.ingestQueue(exchange: "nova")
            try await eventually(timeout: .seconds(30)) {
                guard try await channel.declareQueuePassive(ingest).consumerCount >= 1 else {
                    throw TestFailure("nobody consumes \(ingest) yet")
                }
            }
        }

        /// One node, p1 subscribed to compute events into the run's queue `name`, and a channel of
        /// the test's own once the ingest consumes (`waitIngesting`).
        func withIngestingNode(
            queue name: String, _ body: (PipelineRun, String, AMQPChannel) async throws -> Void
        ) async throws {
            try await PipelineRun.with(partitions: 4) { run in
                try await run.startNodes(1)
                try await run.waitAllPartitionsHeld()
                let queue = run.queue(name)
                try await subscribeCompute(run, on: "node-1", queue: queue)
                let connection = try await AMQPConnection.connect(url: run.amqpURL)
                let outcome: Result<Void, any Error>
                do {
                    let channel = try await connection.openChannel()
                    try await waitIngesting(run, on: channel)
                    outcome = .success(try await body(run, queue, channel))
                } catch {
                    outcome = .failure(error)
                }
                await connection.close()
                try outcome.get()
            }
        }

        /// Publishes `count` compute events of p1 (`compute.instance.update.<seq>`) and waits until
        /// the publisher is done (not for their delivery).
        func publishUpdates(_ run: PipelineRun, count: Int) async throws {
            let publisher = try run.publish(computeLines(count: count) { "compute.instance.update.\($0)" })
            #expect(await publisher.wait() == 0, "\(publisher.tail())")
        }

        /// `count` compute events of project p1 for nova's exchange (the event types
        /// `eventType(seq)`, `seq` in the payload).
        func computeLines(count: Int, eventType: (Int) -> String) -> [[String: Any]] {
            (0..<count).map { seq in
                [
                    "exchange": "nova", "driver": "messagingv2", "event_type": eventType(seq), "project": "p1",
                    "payload": ["seq": seq],
                ]
            }
        }

        /// The payloads' `seq` of what p1's `queue` holds, once it holds `count` distinct ones
        /// (copies included: at least once).
        func arrivedSeqs(_ run: PipelineRun, queue: String, count: Int) async throws -> [Int] {
            try await eventually(timeout: .seconds(30)) {
                let seqs = try await run.zaqar.bodies(queue: queue, project: "p1").compactMap { body in
                    ((body["event"] as? [String: Any])?["payload"] as? [String: Any])?["seq"] as? Int
                }
                guard Set(seqs).count >= count else { throw TestFailure("\(Set(seqs).count) of \(count) in \(queue)") }
                return seqs
            }
        }

        /// Publishes `count` compute events of project p1 on nova's exchange (the event types
        /// `eventType(seq)`) and waits until `queue` holds that many.
        /// - Returns: what the queue holds then.
        func publishCompute(
            _ run: PipelineRun, count: Int, into queue: String, eventType: (Int) -> String
        ) async throws -> [[String: Any]] {
            let publisher = try run.publish(computeLines(count: count, eventType: eventType))
            #expect(await publisher.wait() == 0, "\(publisher.tail())")
            return try await eventually(timeout: .seconds(30)) {
                let bodies = try await run.zaqar.bodies(queue: queue, project: "p1")
                guard bodies.count >= count else { throw TestFailure("\(bodies.count) of \(count) in \(queue)") }
                return bodies
            }
        }

        @Test(
            "3 nodes: subscribe over HTTP on one node, events arrive in Zaqar; readyz, metrics; herald status shows the cluster"
        )
        func runningCluster() async throws {
            try await PipelineRun.with(partitions: 24) { run in
                try await run.startNodes(3)
                try await run.waitAllPartitionsHeld()
                for node in ["node-1", "node-2", "node-3"] {
                    try await eventually(timeout: .seconds(20)) {
                        let (status, body) = try await call(run, node, .GET, "/readyz", project: nil)
                        guard status == 200 else { throw TestFailure("\(node) /readyz: \(status) \(body)") }
                    }
                }

                // The API of a real node process, over HTTP.
                let queue = run.queue("http")
                let (created, body) = try await call(
                    run, "node-2", .POST, "/v1/subscriptions",
                    json: ["event_types": ["compute.instance.*"], "target": ["queue": queue]])
                #expect(created == 201, "\(body)")
                let (refused, refusal) = try await call(
                    run, "node-1", .POST, "/v1/subscriptions",
                    json: ["event_types": ["compute.*"], "target": ["queue": queue], "message_ttl": 1])
                #expect(refused == 400)
                #expect(refusal.contains("message_ttl"))
                #expect(try await call(run, "node-3", .GET, "/v1/subscriptions", project: nil).0 == 401)
                let (listed, listing) = try await call(run, "node-3", .GET, "/v1/subscriptions")
                #expect(listed == 200)
                #expect((object(listing)["subscriptions"] as? [Any])?.count == 1, "one registry behind every node")

                // The nodes pick the subscription up from the registry; then events flow.
                try await Task.sleep(for: .seconds(2))
                let lines: [[String: Any]] = (0..<20).map { seq in
                    [
                        "exchange": "nova", "driver": "messagingv2",
                        "event_type": seq % 2 == 0 ? "compute.instance.create.end" : "volume.create.end",
                        "project": "p1", "payload": ["seq": seq],
                    ]
                }
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                let arrived = try await eventually(timeout: .seconds(30)) {
                    let bodies = try await run.zaqar.bodies(queue: queue, project: "p1")
                    guard bodies.count >= 10 else { throw TestFailure("\(bodies.count) of 10 in \(queue)") }
                    return bodies
                }
                run.trackQueues([("p1", queue)])
                #expect(arrived.count == 10)

                // Its health, counted by whichever nodes delivered: 10 matched and delivered, in the
                // last hour and in all; a test event to a target that refuses shows as its recent error.
                let id = object(body)["id"] as? String ?? ""
                let health = try await eventually(timeout: .seconds(10)) {
                    let (status, text) = try await call(run, "node-1", .GET, "/v1/subscriptions/\(id)/delivery")
                    let health = object(text)
                    guard status == 200, (health["total"] as? [String: Any])?["delivered"] as? Int == 10 else {
                        throw TestFailure("\(status) \(text)")
                    }
                    return health
                }
                #expect(health["state"] as? String == "healthy")
                #expect((health["total"] as? [String: Any])?["matched"] as? Int == 10)
                #expect((health["last_hour"] as? [String: Any])?["delivered"] as? Int == 10)
                #expect((health["total"] as? [String: Any])?["dead_lettered"] as? Int == 0)
                #expect(health["last_delivered_at"] is String)
                #expect(health["recent_error"] == nil)

                // Metrics of a real node: the pipeline's counters and the ownership gauge.
                var ingested = 0.0
                var owned = 0.0
                for node in ["node-1", "node-2", "node-3"] {
                    let (status, text) = try await call(run, node, .GET, "/metrics", project: nil)
                    #expect(status == 200)
                    #expect(
                        text.contains(
                            #"hb_requests{http_route="/readyz",http_request_method="GET",http_response_status_code="200"}"#
                        ),
                        "request metrics by route pattern")
                    let values = PipelineRun.metricValues(text)
                    ingested += values[#"herald_events_total{stage="ingested"}"#] ?? 0
                    owned += values["herald_partitions_owned"] ?? 0
                }
                #expect(ingested == 20, "the cluster ingested every notification once")
                #expect(owned == 24, "every partition is owned by exactly one node")

                // herald status, as JSON and as text.
                let binary = try TestServers.value("HERALD_TEST_BIN_DIR") + "/herald"
                let environment = try run.environment
                let statusJSON = try ChildProcess(
                    name: "status", argv: [binary, "status", "--json"], environment: environment,
                    log: "\(run.directory)/status.json")
                #expect(await statusJSON.wait() == 0, "\(statusJSON.tail())")
                let report = object(try String(contentsOfFile: statusJSON.log ?? "", encoding: .utf8))
                let members = report["members"] as? [[String: Any]] ?? []
                #expect(members.compactMap { $0["node"] as? String } == ["node-1", "node-2", "node-3"])
                let counts = members.map { ($0["partitions"] as? [Int] ?? []).count }
                #expect(counts.reduce(0, +) == 24)
                #expect(counts.allSatisfy { $0 == 8 }, "24 partitions over 3 nodes: 8 each, \(counts)")
                #expect(members.allSatisfy { ($0["epochs"] as? [Int] ?? []).allSatisfy { $0 >= 1 } })
                #expect(members.filter { $0["leader"] as? Bool == true }.count == 1)
                #expect(["node-1", "node-2", "node-3"].contains(report["leader"] as? String ?? ""))
                // A new cluster has an ingest queue per exchange, each a quorum queue consumed by the one
                // node holding its lease: three exchanges over three nodes, one each.
                var ingestQueues = report["ingest"] as? [[String: Any]] ?? []
                #expect(
                    Set(ingestQueues.compactMap { $0["name"] as? String })
                        == Set(try ["cinder", "neutron", "nova"].map { try run.names.ingestQueue(exchange: $0) }),
                    "\(ingestQueues)")
                // A lease is held a moment before its holder's consumer is registered: asked again
                // until every queue has its one consumer.
                if !ingestQueues.allSatisfy({ $0["consumers"] as? Int == 1 }) {
                    _ = try? await eventually(timeout: .seconds(30)) {
                        let again = try ChildProcess(
                            name: "status", argv: [binary, "status", "--json"], environment: environment,
                            log: "\(run.directory)/status-again.json")
                        guard await again.wait() == 0 else { throw TestFailure("herald status: \(again.tail())") }
                        ingestQueues =
                            object(try String(contentsOfFile: again.log ?? "", encoding: .utf8))["ingest"]
                            as? [[String: Any]] ?? []
                        guard ingestQueues.allSatisfy({ $0["consumers"] as? Int == 1 }) else {
                            throw TestFailure("not every ingest queue has its consumer yet")
                        }
                    }
                }
                #expect(
                    Set(ingestQueues.compactMap { $0["name"] as? String }).count == 3
                        && ingestQueues.allSatisfy { $0["consumers"] as? Int == 1 },
                    "one consumer each: \(ingestQueues)")
                let ingestHolders = try await run.ingestLeaseHolders()
                #expect(ingestHolders.count == 3 && Set(ingestHolders.values).count == 3, "\(ingestHolders)")
                #expect(report["partition_count"] as? Int == 24)
                #expect(report["partitions_held"] as? Int == 24)
                #expect((report["problems"] as? [Any])?.isEmpty == true, "\(report["problems"] ?? "")")
                #expect((report["deepest_partitions"] as? [Any])?.count == 10)

                let statusText = try ChildProcess(
                    name: "status", argv: [binary, "status"], environment: environment,
                    log: "\(run.directory)/status.txt")
                #expect(await statusText.wait() == 0)
                let text = try String(contentsOfFile: statusText.log ?? "", encoding: .utf8)
                #expect(text.contains("3 members"), "\(text)")
                #expect(text.contains("24 of 24 partitions held"))
                for node in ["node-1", "node-2", "node-3"] { #expect(text.contains(node)) }
                #expect(text.contains(try run.names.ingestQueue(exchange: "nova")))

                // A partition count no node would take is refused, naming the flag (a negative one
                // trapped where no assignment was stored).
                let badCount = try ChildProcess(
                    name: "status-bad", argv: [binary, "status", "--partitions=-1"], environment: environment,
                    log: "\(run.directory)/status-bad.txt")
                #expect(await badCount.wait() != 0)
                #expect(badCount.tail().contains("--partitions (HERALD_PARTITIONS): from 1 to 65536"), "\(badCount.tail())")
            }
        }

        @Test(
            "a project's feed (PUT /v1/feed) receives every event of the project, of every service, and none of another project's"
        )
        func feed() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                try await run.startNodes(1)
                try await run.waitAllPartitionsHeld()
                let queue = run.queue("feed")
                let (status, body) = try await call(
                    run, "node-1", .PUT, "/v1/feed", project: "feed-p1", json: ["queue": queue])
                #expect(status == 201, "\(body)")
                run.trackQueues([("feed-p1", queue)])
                try await Task.sleep(for: .seconds(2))
                let types = [
                    ("nova", "compute.instance.create.end"), ("cinder", "volume.attach.end"),
                    ("neutron", "port.update.end"), ("nova", "compute.instance.power_off.end"),
                ]
                let lines: [[String: Any]] = (0..<24).map { seq in
                    let (exchange, type) = types[seq % types.count]
                    let project = seq % 3 == 2 ? "feed-p2" : "feed-p1"
                    return [
                        "exchange": exchange, "event_type": type, "project": project,
                        "payload": ["tenant_id": project, "seq": seq, "host": "cmp-\(seq)"],
                    ]
                }
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                let wanted = Set((0..<24).filter { $0 % 3 != 2 })
                let seqs = try await eventually(timeout: .seconds(30)) {
                    let seqs = try await run.numbered(queue: queue, project: "feed-p1")
                    guard seqs.isSuperset(of: wanted) else {
                        throw TestFailure("missing \(wanted.subtracting(seqs).sorted())")
                    }
                    return seqs
                }
                #expect(
                    seqs == wanted,
                    "every event of feed-p1, none of feed-p2: unexpected \(seqs.subtracting(wanted).sorted())")

                // What exists: each project sees its own event types, counted, with a sample as its
                // subscribers receive it (nova's host cut).
                let listed = try await eventually(timeout: .seconds(10)) {
                    let (status, text) = try await call(run, "node-1", .GET, "/v1/event-types", project: "feed-p1")
                    let entries = object(text)["event_types"] as? [[String: Any]] ?? []
                    guard status == 200, entries.reduce(0, { $0 + ($1["count"] as? Int ?? 0) }) == 16 else {
                        throw TestFailure("\(status) \(text)")
                    }
                    return entries
                }
                #expect(Set(listed.compactMap { $0["event_type"] as? String }) == Set(types.map(\.1)))
                let created = try #require(
                    listed.first { $0["event_type"] as? String == "compute.instance.create.end" })
                let sample = try #require(created["sample"] as? [String: Any], "\(created)")
                let payload = try #require(sample["payload"] as? [String: Any])
                #expect(payload["tenant_id"] as? String == "feed-p1" && payload["host"] == nil, "redacted: \(payload)")
                #expect(created["last_seen"] is String)
                let (_, other) = try await call(run, "node-1", .GET, "/v1/event-types", project: "feed-p2")
                let theirs = object(other)["event_types"] as? [[String: Any]] ?? []
                #expect(theirs.reduce(0) { $0 + ($1["count"] as? Int ?? 0) } == 8, "feed-p2's own 8 only: \(other)")
            }
        }

        @Test("ingest comes back by itself when RabbitMQ cancels its consumer (its ingest queue deleted under it)")
        func ingestRecovers() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                try await run.startNodes(1)
                try await run.waitAllPartitionsHeld()
                let queue = run.queue("recover")
                try await subscribeCompute(run, on: "node-1", queue: queue)
                try await Task.sleep(for: .seconds(2))
                // The broker cancels every consumer of a deleted queue; the node must declare it again and consume.
                try await run.rabbitmqctl("delete_queue", "-p", run.vhost, try run.names.ingestQueue(exchange: "nova"))
                try await eventually(timeout: .seconds(30)) {
                    let (status, _) = try await call(run, "node-1", .GET, "/readyz", project: nil)
                    guard status == 200 else { throw TestFailure("not ready") }
                    try await run.rabbitmqctl("list_queues", "-p", run.vhost, "name")
                    let log = (try? String(contentsOfFile: "\(run.directory)/node-1.log", encoding: .utf8)) ?? ""
                    guard log.contains("consuming again") || log.contains("consuming anew") else {
                        throw TestFailure("the node has not logged a new consumer yet")
                    }
                }
                try await Task.sleep(for: .seconds(2))
                let bodies = try await publishCompute(run, count: 5, into: queue) { _ in "compute.instance.update" }
                #expect(bodies.count == 5, "events published after the recovery arrive, once each")
            }
        }

        @Test(
            "a partition whose consumer cannot start when the node acquires it (RabbitMQ refuses to let it read the queue) is tried again until it starts; nothing is lost"
        )
        func partitionStartRetried() async throws {
            try await PipelineRun.with(partitions: 4) { run in
                try await run.startNodes(1)
                try await run.waitAllPartitionsHeld()
                let queue = run.queue("retried")
                try await subscribeCompute(run, on: "node-1", queue: queue)
                // The partitions free, and the nodes' user no longer allowed to read their queues
                // (it still declares, publishes and reads the ingest queues): a consumer of one
                // fails with 403 ACCESS_REFUSED.
                try await run.stop("node-1", signal: SIGTERM)
                try await run.rabbitmqctl(
                    "set_permissions", "-p", run.vhost, "guest", ".*", ".*", "^(?!.*\\.p\\.[0-9]+$).*")
                try await run.startNodes(1)
                try await eventually(timeout: .seconds(30)) {
                    let log = (try? String(contentsOfFile: "\(run.directory)/node-2.log", encoding: .utf8)) ?? ""
                    guard log.contains("cannot consume an acquired partition") else {
                        throw TestFailure("node-2 has not failed to consume a partition yet")
                    }
                }
                // Published while the partitions cannot be consumed: they wait in their queues.
                try await publishUpdates(run, count: 8)
                try await run.rabbitmqctl("set_permissions", "-p", run.vhost, "guest", ".*", ".*", ".*")
                let arrived = try await arrivedSeqs(run, queue: queue, count: 8)
                #expect(
                    arrived.sorted() == Array(0..<8),
                    "the partitions consumed once the node may read them, each event once")
            }
        }

        @Test(
            "partition queues deleted under a running node: what the ingest publishes to them meanwhile comes back and is held, not dropped; the node declares them again and consumes them; every event arrives"
        )
        func partitionQueueRecreated() async throws {
            try await withIngestingNode(queue: "recreated") { run, queue, channel in
                let names = try run.names
                // The nodes' user may not declare partition queues for now: deleted, they stay gone
                // until it may again. The broker ends each queue's consumer with its queue.
                try await run.rabbitmqctl(
                    "set_permissions", "-p", run.vhost, "guest", "^(?!.*\\.p\\.[0-9]+$).*", ".*", ".*")
                for partition in 0..<4 {
                    try await run.rabbitmqctl("delete_queue", "-p", run.vhost, names.partitionQueue(partition))
                }
                try await publishUpdates(run, count: 8)
                // Unroutable now: published mandatory, they come back and are held.
                try await eventually(timeout: .seconds(30)) {
                    let log = (try? String(contentsOfFile: "\(run.directory)/node-1.log", encoding: .utf8)) ?? ""
                    guard log.contains("unroutable") else { throw TestFailure("nothing came back yet") }
                }
                // The ingest tries to declare them itself, and may not: counted (the alert's metric).
                try await eventually(timeout: .seconds(30)) {
                    let metrics = try await run.metrics(of: "node-1")
                    guard (metrics["herald_partition_declare_failures_total"] ?? 0) >= 1 else {
                        throw TestFailure("no failed declare counted: \(metrics.filter { $0.key.contains("declare") })")
                    }
                }
                try await run.rabbitmqctl("set_permissions", "-p", run.vhost, "guest", ".*", ".*", ".*")
                try await eventually(timeout: .seconds(30)) {
                    for partition in 0..<4 {
                        let state: AMQPQueueState
                        do {
                            state = try await channel.declareQueuePassive(names.partitionQueue(partition))
                        } catch {
                            throw TestFailure("partition \(partition) not declared again: \(error)")
                        }
                        guard state.consumerCount == 1 else { throw TestFailure("partition \(partition) not consumed") }
                    }
                }
                let arrived = try await arrivedSeqs(run, queue: queue, count: 8)
                #expect(Set(arrived) == Set(0..<8), "every event (at least once)")
            }
        }

        @Test(
            "partition queues whose bindings were removed (their consumers untouched): what the ingest publishes comes back, the ingest binds them again itself, every event arrives"
        )
        func partitionBindingRestored() async throws {
            try await withIngestingNode(queue: "rebound") { run, queue, channel in
                let names = try run.names
                for partition in 0..<4 {
                    try await channel.unbindQueue(
                        names.partitionQueue(partition), from: names.partitions, routingKey: "\(partition)")
                }
                try await publishUpdates(run, count: 8)
                let arrived = try await arrivedSeqs(run, queue: queue, count: 8)
                #expect(Set(arrived) == Set(0..<8), "every event (at least once)")
                let metrics = try await run.metrics(of: "node-1")
                #expect(
                    (metrics["herald_partition_publish_refused_total{reason=\"unroutable\"}"] ?? 0) >= 1,
                    "counted as unroutable: \(metrics.filter { $0.key.contains("refused") })")
            }
        }

        @Test(
            "a partition handed over while its owner's Zaqar holds every request: what the owner had not sent yet is given back, delivered by the next owner (each server in order), never by the old owner afterwards"
        )
        func handoverGivesBackUnsent() async throws {
            // node-1 posts into a Zaqar that holds every request until released; node-2 into one
            // that takes everything. One subscription: one lane, one request in flight on node-1.
            let held = try await HostileZaqar { _ in .stall }
            let open = try await HostileZaqar { _ in .accept }
            try await PipelineRun.with(partitions: 4) { run in
                try await run.startNodes(
                    1,
                    extra: [
                        "HERALD_ZAQAR_URL": held.url, "HERALD_DELIVERY_TIMEOUT_SECONDS": "300",
                        "HERALD_HANDOFF_DRAIN_SECONDS": "3", "HERALD_LOG_LEVEL": "info",
                    ])
                try await run.waitAllPartitionsHeld()
                try await subscribeCompute(run, on: "node-1", queue: "handover")
                let count = 300
                let publisher = try run.publish(run.numberedLines(project: "p1", 0..<count))
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                // Everything taken by node-1 (300 events over 4 partitions of prefetch 100 each
                // may leave a few in RabbitMQ: they go to whoever owns their partition later).
                try await eventually(timeout: .seconds(30)) {
                    guard held.totalRequests >= 1 else { throw TestFailure("node-1 has not posted yet") }
                    let metrics = try await run.metrics(of: "node-1")
                    let buffered = metrics["herald_delivery_buffered_messages"] ?? 0
                    guard buffered >= 200 else { throw TestFailure("node-1 holds \(buffered) messages") }
                }

                try await run.startNodes(1, extra: ["HERALD_ZAQAR_URL": open.url])
                let owners = try await eventually(timeout: .seconds(60)) { () -> [String] in
                    let leases = try await run.redis.pipeline(
                        (0..<4).map { RedisCommand("GET", run.prefix + "lease:\($0)") })
                    let owners = leases.map { $0.string?.split(separator: "|").first.map(String.init) ?? "" }
                    guard owners.filter({ $0.hasPrefix("node-2") }).count == 2 else {
                        throw TestFailure("leases: \(owners)")
                    }
                    return owners
                }
                let handedOver = Set(owners.indices.filter { owners[$0].hasPrefix("node-2") })
                // node-2 delivers the handed-over partitions' events while node-1's Zaqar still holds.
                try await eventually(timeout: .seconds(60)) {
                    let partitions = Set(
                        open.accepted(queue: "handover").compactMap { Delivered(json: $0)?.partition })
                    guard partitions == handedOver else {
                        throw TestFailure(
                            "node-2 delivered partitions \(partitions.sorted()) of \(handedOver.sorted())")
                    }
                }
                held.releaseStalls()
                // What node-2 delivered, once both Zaqars hold every event between them.
                let fromOpen = try await eventually(timeout: .seconds(60)) { () -> [Delivered] in
                    let fromHeld = held.accepted(queue: "handover").compactMap(Delivered.init(json:))
                    let fromOpen = open.accepted(queue: "handover").compactMap(Delivered.init(json:))
                    let seqs = Set((fromHeld + fromOpen).map(\.seq))
                    guard seqs.count == count else { throw TestFailure("\(seqs.count) of \(count) events delivered") }
                    return fromOpen
                }
                // Into the held Zaqar, node-1's request held at the handover goes again when released
                // (one request in flight per queue: it is the first accepted); anything of a
                // handed-over partition in a later request was sent by node-1 after the handover.
                let late = held.acceptedRequests(queue: "handover").dropFirst().joined()
                    .compactMap(Delivered.init(json:)).filter { handedOver.contains($0.partition) }
                #expect(
                    late.isEmpty,
                    "node-1 delivered \(late.count) events of handed-over partitions after the handover")
                // The next owner delivers each server's events in order.
                let byServer = Dictionary(grouping: fromOpen) { $0.seq % 40 }
                for (server, events) in byServer {
                    let firstCopies = events.map(\.seq).reduce(into: [Int]()) { seen, seq in
                        if !seen.contains(seq) { seen.append(seq) }
                    }
                    #expect(firstCopies == firstCopies.sorted(), "server \(server): \(firstCopies)")
                }
                let log = (try? String(contentsOfFile: "\(run.directory)/node-1.log", encoding: .utf8)) ?? ""
                let givenBack = loggedSum(log, field: "herald.given_back")
                #expect(givenBack > 0, "node-1 logged what it gave back")
            }
            await held.close()
            await open.close()
        }

        @Test(
            "a cluster with one ingest queue moves to one per exchange: the old queue is emptied first, then deleted; every event arrives once, each server's in order"
        )
        func ingestLayoutMove() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                let queue = run.queue("move")
                try await run.registry.create(
                    Subscription(
                        project: "p1", eventTypes: ["compute.instance.update"], target: Target(queue: queue),
                        messageTTL: 3600))
                run.trackQueues([("p1", queue)])
                try await run.startNodes(1, extra: ["HERALD_INGEST_LAYOUT": "single"])
                try await run.waitAllPartitionsHeld()
                let first = try run.publish(run.numberedLines(project: "p1", 0..<100))
                #expect(await first.wait() == 0, "\(first.tail())")
                _ = try await run.waitForNumbered(queue: queue, project: "p1", count: 100)
                try await run.stop("node-1", signal: SIGTERM)
                // No node runs: these wait in the old queue.
                let waiting = try run.publish(run.numberedLines(project: "p1", 100..<400))
                #expect(await waiting.wait() == 0, "\(waiting.tail())")
                try await run.startNodes(
                    2, extra: ["HERALD_INGEST_LAYOUT": "per-exchange", "HERALD_LOG_LEVEL": "info"])
                // And these while the nodes move: they go to the new queue, and wait for the old one to empty.
                let more = try run.publish(run.numberedLines(project: "p1", 400..<700))
                #expect(await more.wait() == 0, "\(more.tail())")
                _ = try await run.waitForNumbered(queue: queue, project: "p1", count: 700)

                let bodies = try await run.zaqar.bodies(queue: queue, project: "p1")
                let seqs = bodies.compactMap {
                    ((($0["event"] as? [String: Any])?["payload"] as? [String: Any])?["seq"] as? Int)
                }
                #expect(seqs.count == 700, "each once: \(seqs.count) delivered")
                // Per server (the partition key: compute.instance and the instance id), in publish order.
                var last: [Int: Int] = [:]
                var outOfOrder: [(Int, Int)] = []
                for seq in seqs {
                    if let previous = last[seq % 40], seq < previous { outOfOrder.append((previous, seq)) }
                    last[seq % 40] = max(seq, last[seq % 40] ?? -1)
                }
                #expect(outOfOrder.isEmpty, "out of order (after, seq): \(outOfOrder.prefix(10))")
                let logs = ["node-2", "node-3"].map {
                    (try? String(contentsOfFile: "\(run.directory)/\($0).log", encoding: .utf8)) ?? ""
                }.joined()
                #expect(logs.contains("emptying the old queue first"), "a node said it moves the cluster")
                #expect(logs.contains("the old ingest queue is empty and deleted"))
            }
        }

        @Test(
            "a registry Redis lost under a running node (its keys deleted, as when a replica that had not synced is promoted) is logged as an error and counted; the subscription made after it is served, the lost one no longer"
        )
        func registryLost() async throws {
            try await withIngestingNode(queue: "before-loss") { run, before, _ in
                // At once, and to a registry with a history of its own at the version the node holds
                // (1): only the heads can tell, whenever the node's poll comes.
                try await run.redis.send(
                    "EVAL",
                    """
                    for _, key in ipairs(redis.call('KEYS', ARGV[1] .. 'sub*')) do redis.call('DEL', key) end
                    redis.call('SET', ARGV[1] .. 'subs:version', 1)
                    redis.call('SET', ARGV[1] .. 'subs:head', ARGV[2])
                    redis.call('ZADD', ARGV[1] .. 'subs:history', 1, ARGV[2])
                    """, 0, run.prefix, UUID().uuidString.lowercased())
                let after = run.queue("after-loss")
                try await subscribeCompute(run, on: "node-1", queue: after)
                try await eventually(timeout: .seconds(30)) {
                    let metrics = try await run.metrics(of: "node-1")
                    guard (metrics["herald_registry_losses_total"] ?? 0) >= 1 else {
                        throw TestFailure("no loss counted yet")
                    }
                }
                let log = (try? String(contentsOfFile: "\(run.directory)/node-1.log", encoding: .utf8)) ?? ""
                #expect(
                    log.contains(
                        "Redis lost subscriptions: the registry this node held at version 1 "),
                    "\(run.nodes["node-1"]?.tail() ?? "")")
                let bodies = try await publishCompute(run, count: 3, into: after) { _ in "compute.instance.update" }
                #expect(bodies.count == 3)
                #expect(
                    try await run.zaqar.bodies(queue: before, project: "p1").isEmpty, "the lost subscription's queue")
            }
        }

        @Test(
            "a stored subscription whose condition reads what tenants never receive (made before the rule that covers it) is left out of the index: it does not fire, and the node says why"
        )
        func conditionOnRedactedLeftOut() async throws {
            try await withIngestingNode(queue: "plain") { run, plain, _ in
                // Stored as an older Herald, or one with fewer redaction rules, would have taken it.
                let probe = run.queue("probe")
                run.trackQueues([("p1", probe)])
                let stored = try await run.registry.create(
                    Subscription(
                        project: "p1", eventTypes: ["compute.*"],
                        conditions: [Condition(field: "payload.host", op: .eq, value: .string("compute-3"))],
                        target: Target(queue: probe)))
                try await eventually(timeout: .seconds(30)) {
                    let log = (try? String(contentsOfFile: "\(run.directory)/node-1.log", encoding: .utf8)) ?? ""
                    guard log.contains("subscription left out"), log.contains(stored.id) else {
                        throw TestFailure("the node has not said it left the subscription out")
                    }
                }
                let lines = (0..<3).map { seq -> [String: Any] in
                    [
                        "exchange": "nova", "driver": "messagingv2", "event_type": "compute.instance.update",
                        "project": "p1", "payload": ["seq": seq, "host": "compute-3"],
                    ]
                }
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                let delivered = try await arrivedSeqs(run, queue: plain, count: 3)
                #expect(Set(delivered) == [0, 1, 2])
                // Whatever went to the plain queue went in the same matching: give the other lane time.
                try await Task.sleep(for: .seconds(2))
                #expect(
                    try await run.zaqar.bodies(queue: probe, project: "p1").isEmpty,
                    "a condition on the host it never receives would have told p1 the host")
            }
        }

        @Test("a bad configuration value stops start-up, naming the key and the value")
        func badConfiguration() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                let binary = try TestServers.value("HERALD_TEST_BIN_DIR") + "/herald"
                for (key, value) in [
                    ("HERALD_PARTITIONS", "zero"), ("HERALD_API_AUTH", "kerberos"), ("HERALD_QUEUE_TYPE", "stream"),
                    ("HERALD_LOG_FORMAT", "xml"),
                ] {
                    var environment = try run.environment
                    environment[key] = value
                    let node = try ChildProcess(
                        name: "bad", argv: [binary, "node"], environment: environment,
                        log: "\(run.directory)/bad-\(key).log")
                    let status = await node.wait()
                    #expect(status != 0)
                    let output = node.tail()
                    #expect(output.contains(key) && output.contains(value), "\(key)=\(value): \(output)")
                }
                let file = "\(run.directory)/herald.conf"
                try "# a typo\nHERALD_PARTITONS=8\n".write(toFile: file, atomically: true, encoding: .utf8)
                let typo = try ChildProcess(
                    name: "typo", argv: [binary, "node", "--config", file], environment: try run.environment,
                    log: "\(run.directory)/typo.log")
                #expect(await typo.wait() != 0)
                #expect(typo.tail().contains("HERALD_PARTITONS"), "\(typo.tail())")
                // A misspelt key in the environment is named (a warning: other tools share the prefix).
                var environment = try run.environment
                environment["HERALD_PARTITONS"] = "8"
                environment["HERALD_LOG_LEVEL"] = "info"
                let misspelt = try ChildProcess(
                    name: "misspelt", argv: [binary, "node"], environment: environment,
                    log: "\(run.directory)/misspelt.log")
                try await eventually(timeout: .seconds(20)) {
                    guard misspelt.tail(200).contains("HERALD_PARTITONS") else { throw TestFailure(misspelt.tail()) }
                }
                misspelt.send(SIGTERM)
                _ = await misspelt.wait()
                // A server that answers and refuses (RabbitMQ refusing the password) is not waited
                // for, as one that does not listen is: the node stops, saying why.
                var refused = try run.environment
                let amqp = try #require(refused["HERALD_AMQP_URL"])
                refused["HERALD_AMQP_URL"] = amqp.replacingOccurrences(of: "guest:guest@", with: "guest:wrong@")
                #expect(refused["HERALD_AMQP_URL"] != amqp)
                let wrongPassword = try ChildProcess(
                    name: "wrong-password", argv: [binary, "node"], environment: refused,
                    log: "\(run.directory)/wrong-password.log")
                #expect(await wrongPassword.wait() != 0)
                #expect(!wrongPassword.tail(200).contains("nothing listens"), "\(wrongPassword.tail())")
            }
        }

        @Test(
            "with HERALD_METRICS_PORT, /metrics answers there and no longer on the API's port; it tells when the node started (what HeraldRestarting counts)"
        )
        func metricsPort() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                let metricsPort = try TestServers.freePort()
                let before = Date().timeIntervalSince1970.rounded(.down)
                try await run.startNodes(1, extra: ["HERALD_METRICS_PORT": "\(metricsPort)"], as: .inProcess)
                try await eventually(timeout: .seconds(30)) {
                    let (status, body) = try await call(run, "node-1", .GET, "/readyz", project: nil)
                    guard status == 200 else { throw TestFailure("/readyz \(status) \(body)") }
                }
                #expect(try await call(run, "node-1", .GET, "/metrics", project: nil).0 == 404)
                let response = try await HTTPClient.shared.execute(
                    HTTPClientRequest(url: "http://127.0.0.1:\(metricsPort)/metrics"), timeout: .seconds(10))
                let body = String(buffer: try await response.body.collect(upTo: 4 << 20))
                #expect(response.status.code == 200)
                #expect(body.contains("herald_ready 1"), "\(body.prefix(500))")
                let started = body.split(separator: "\n").first { $0.hasPrefix("herald_start_time_seconds ") }
                    .flatMap { Double($0.split(separator: " ").last ?? "") }
                let now = Date().timeIntervalSince1970.rounded(.up)
                #expect(started.map { (before...now).contains($0) } == true, "\(started as Any) in \(before)...\(now)")
                let other = try await HTTPClient.shared.execute(
                    HTTPClientRequest(url: "http://127.0.0.1:\(metricsPort)/v1/subscriptions"), timeout: .seconds(10))
                #expect(other.status.code == 404, "the metrics port serves nothing else")
            }
        }

        @Test(
            "a node started while Redis is down waits for it (alive, not ready, saying so) and starts once it is up, instead of exiting"
        )
        func waitsForRedis() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                let port = try TestServers.freePort()
                try await run.startNodes(1, extra: ["HERALD_REDIS_URL": "redis://127.0.0.1:\(port)/0"])
                let log = "\(run.directory)/node-1.log"
                try await eventually(timeout: .seconds(20)) {
                    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                    guard text.contains("nothing listens where Redis should be") else { throw TestFailure("not yet") }
                }
                // Alive (the liveness probe's /healthz), not ready, and still running after a few tries.
                try await Task.sleep(for: .seconds(4))
                #expect(try await call(run, "node-1", .GET, "/healthz", project: nil).0 == 200)
                #expect(try await call(run, "node-1", .GET, "/readyz", project: nil).0 == 503)
                let server = try #require(
                    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
                        .map { "\($0)/redis-server" }.first { FileManager.default.isExecutableFile(atPath: $0) },
                    "redis-server on the PATH")
                let redis = try ChildProcess(
                    name: "redis-late",
                    argv: [server, "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    environment: [:], log: "\(run.directory)/redis-late.log")
                defer { redis.send(SIGKILL) }
                try await eventually(timeout: .seconds(60)) {
                    let (status, body) = try await call(run, "node-1", .GET, "/readyz", project: nil)
                    guard status == 200 else { throw TestFailure("/readyz \(status) \(body)") }
                }
                try await run.stop("node-1", signal: SIGTERM)
                #expect(run.nodes["node-1"]?.exitStatus == 0)
                redis.send(SIGTERM)
                _ = await redis.wait()
            }
        }
    }
}
