import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    @Suite("CloudEvents: a subscription's messages as CloudEvents 1.0", .serialized, .timeLimit(.minutes(5)))
    struct CloudEventsTests {
        static let project = "ce-project"

        /// Validates JSON events (one per line) against the schema in Tests/Fixtures/cloudevents
        /// with Python's jsonschema; answers the validator's exit status.
        static func validate(_ events: [[String: Any]], in directory: String, name: String) async throws -> Int32 {
            let file = "\(directory)/\(name).jsonl"
            try events.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }.joined(
                separator: "\n"
            )
            .write(toFile: file, atomically: true, encoding: .utf8)
            let schema = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Fixtures/cloudevents/cloudevents-1.0.schema.json").path
            let script = URL(fileURLWithPath: try TestServers.value("HERALD_TEST_SERVERS")).deletingLastPathComponent()
                .appendingPathComponent("validate-cloudevents.py").path
            return try await TestServers.run([
                try TestServers.value("HERALD_TEST_PYTHON"), script, "--schema", schema, "--events", file,
            ])
        }

        @Test(
            "format cloudevents: every message is a CloudEvents 1.0 event that validates against the schema; id, type, source, time, subject and data come from the notification, redacted as for Herald's envelope"
        )
        func cloudEvents() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                var cloud = Subscription(
                    project: Self.project, eventTypes: ["compute.instance.*", "volume.*"],
                    target: Target(queue: run.queue("cloudevents")))
                cloud.format = .cloudevents
                let plain = Subscription(
                    project: Self.project, eventTypes: ["compute.instance.*", "volume.*"],
                    target: Target(queue: run.queue("envelope")))
                for subscription in [cloud, plain] { try await run.registry.create(subscription) }
                run.trackQueues([(cloud.project, cloud.target.queue), (plain.project, plain.target.queue)])
                try await run.startNodes(1, as: .inProcess)
                try await run.waitAllPartitionsHeld()

                // nova and cinder as they publish (oslo adds the timestamp), a publisher id that is
                // not URI-safe, and a payload that is not an object.
                let servers = (0..<4).map { _ in UUID().uuidString.lowercased() }
                var lines: [[String: Any]] = []
                for (index, server) in servers.enumerated() {
                    lines.append([
                        "exchange": "nova", "driver": "messagingv2", "event_type": "compute.instance.create.end",
                        "publisher_id": "compute.cmp-\(index)",
                        "payload": [
                            "tenant_id": Self.project, "instance_id": server, "host": "cmp-\(index)",
                            "node": "cmp-\(index).example", "state": "active", "seq": index,
                        ],
                    ])
                }
                lines.append([
                    "exchange": "cinder", "driver": "messagingv2", "event_type": "volume.create.end",
                    "publisher_id": "volume:vol-host@lvm",
                    "payload": [
                        "tenant_id": Self.project, "volume_id": "vol-1", "size": 10, "host": "vol-host@lvm#pool",
                        "seq": 10,
                    ],
                ])
                lines.append([
                    "exchange": "nova", "driver": "messagingv2", "event_type": "compute.instance.update",
                    "publisher_id": "comp ute/\u{e9}\"x.cmp-9",
                    "project": Self.project,
                    "payload": [
                        "tenant_id": Self.project, "instance_id": servers[0], "seq": 11,
                        "note": "quote \" and \\ and \u{2603}",
                    ],
                ])
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")

                let events = try await eventually(timeout: .seconds(60)) {
                    let bodies = try await run.zaqar.bodies(queue: cloud.target.queue, project: cloud.project)
                    guard bodies.count >= lines.count else {
                        throw TestFailure("\(bodies.count) of \(lines.count) CloudEvents")
                    }
                    return bodies
                }
                let envelopes = try await eventually(timeout: .seconds(60)) {
                    let bodies = try await run.zaqar.bodies(queue: plain.target.queue, project: plain.project)
                    guard bodies.count >= lines.count else {
                        throw TestFailure("\(bodies.count) of \(lines.count) envelopes")
                    }
                    return bodies
                }
                #expect(events.count == lines.count && envelopes.count == lines.count)
                // The node's own counts (its registry, apart from any other node in this process).
                let metrics = try await run.metrics(of: "node-1")
                #expect(metrics["herald_events_total{stage=\"matched\"}"] == Double(lines.count), "\(metrics)")
                #expect(metrics["herald_delivered_messages_total"] == Double(2 * lines.count), "\(metrics)")
                // And the node's coordination, ingest and parking metrics, on its own /metrics too.
                // Each of its coordinators counts apart: the partitions' and the ingest queues'.
                #expect(
                    (metrics["herald_rebalances_total{domain=\"partitions\"}"] ?? 0) >= 1, "\(metrics.keys.sorted())")
                #expect((metrics["herald_rebalances_total{domain=\"ingest\"}"] ?? 0) >= 1, "\(metrics.keys.sorted())")
                for name in [
                    "herald_ingest_queue_max_messages", "herald_parked_subscriptions", "herald_lease_renew_seconds",
                ] {
                    #expect(metrics.keys.contains { $0.hasPrefix(name) }, "\(name) in \(metrics.keys.sorted())")
                }

                // The schema says yes to all of them, and no to a broken one (so it can say no).
                #expect(
                    try await Self.validate(events, in: run.directory, name: "cloudevents") == 0,
                    "the CloudEvents validate: \(events)")
                var broken = events[0]
                broken["specversion"] = nil
                broken["HeraldPartition"] = 1
                #expect(
                    try await Self.validate([broken], in: run.directory, name: "broken") == 1,
                    "the validator refuses an event without specversion")

                // Each CloudEvent against the envelope of the same event.
                let bySeq = Dictionary(
                    envelopes.compactMap { body -> (Int, [String: Any])? in
                        guard
                            let seq = ((body["event"] as? [String: Any])?["payload"] as? [String: Any])?["seq"] as? Int
                        else { return nil }
                        return (seq, body)
                    }, uniquingKeysWith: { first, _ in first })
                for event in events {
                    let data = try #require(event["data"] as? [String: Any], "\(event)")
                    let seq = try #require(data["seq"] as? Int)
                    let envelope = try #require(bySeq[seq])
                    let original = try #require(envelope["event"] as? [String: Any])
                    let herald = try #require(envelope["herald"] as? [String: Any])
                    #expect(event["specversion"] as? String == "1.0")
                    #expect(
                        event["id"] as? String == herald["event_id"] as? String, "id: the notification's message id")
                    #expect(event["type"] as? String == original["event_type"] as? String)
                    #expect(event["datacontenttype"] as? String == "application/json")
                    #expect(
                        NSDictionary(dictionary: data).isEqual(to: original["payload"] as? [String: Any] ?? [:]),
                        "data: the payload as the envelope has it")
                    #expect(data["host"] == nil && data["node"] == nil, "redacted as for tenants: \(data)")
                    #expect(event["subject"] as? String == herald["resource_id"] as? String)
                    #expect(event["heraldsubscription"] as? String == cloud.id)
                    #expect(event["heraldpartition"] as? Int == herald["partition"] as? Int)
                    #expect(event["heraldepoch"] as? Int == herald["epoch"] as? Int)
                    #expect(event["heraldproject"] as? String == Self.project)
                    #expect(
                        event["heraldredacted"] as? String == (herald["redacted"] as? [String])?.joined(separator: ","))
                    // oslo's "2026-12-05 04:10:00.123456" (UTC) as RFC 3339.
                    let timestamp = try #require(original["timestamp"] as? String)
                    #expect(event["time"] as? String == timestamp.replacingOccurrences(of: " ", with: "T") + "Z")
                    switch seq {
                    case 0..<4:
                        #expect(event["source"] as? String == "/openstack/compute", "the service, never the host")
                        #expect(event["subject"] as? String == servers[seq])
                    case 10: #expect(event["source"] as? String == "/openstack/volume")
                    default:
                        #expect(
                            event["source"] as? String == "/openstack/comp",
                            "up to the first character a service name does not hold")
                    }
                }
            }
        }
    }
}
