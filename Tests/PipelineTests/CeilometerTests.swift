import Coordination
import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    @Suite("Ceilometer events through the pipeline", .serialized, .timeLimit(.minutes(5)))
    struct CeilometerTests {
        struct Trait {
            var name: String
            var dtype: Int
            var value: Any
        }

        /// One event as Ceilometer's notifier publisher serialises it.
        func event(_ id: String, _ type: String, _ traits: [Trait]) -> [String: Any] {
            [
                "message_id": id, "event_type": type, "generated": "2026-11-24T16:37:41.367798",
                "traits": traits.map { [$0.name, $0.dtype, $0.value] }, "raw": [:] as [String: Any],
                "message_signature": "signature-\(id)",
            ]
        }

        @Test("each event of a Ceilometer list is an event of its own; trait conditions select them")
        func traitConditions() async throws {
            try await PipelineRun.with(partitions: 8) { run in
                let big = Subscription(
                    project: "p1", eventTypes: ["compute.instance.*"],
                    conditions: [Condition(field: "traits.memory_mb", op: .ge, value: .number(2048))],
                    target: Target(queue: run.queue("ceilo-big")))
                let active = Subscription(
                    project: "p1", eventTypes: ["*"],
                    conditions: [Condition(field: "traits.state", op: .eq, value: .string("active"))],
                    target: Target(queue: run.queue("ceilo-active")))
                let other = Subscription(project: "p2", eventTypes: ["*"], target: Target(queue: run.queue("ceilo-p2")))
                for subscription in [big, active, other] { try await run.registry.create(subscription) }
                try await run.startNodes(
                    2, extra: ["HERALD_CEILOMETER_EVENTS": "true", "HERALD_EXCHANGES": "nova"], as: .inProcess)
                try await run.waitAllPartitionsHeld()

                let batches: [[[String: Any]]] = [
                    [
                        event(
                            "e1", "compute.instance.create.end",
                            [
                                Trait(name: "project_id", dtype: 1, value: "p1"),
                                Trait(name: "memory_mb", dtype: 2, value: 4096),
                                Trait(name: "state", dtype: 1, value: "active"),
                            ]),
                        event(
                            "e2", "compute.instance.create.end",
                            [
                                Trait(name: "project_id", dtype: 1, value: "p1"),
                                Trait(name: "memory_mb", dtype: 2, value: 512),
                                Trait(name: "state", dtype: 1, value: "building"),
                            ]),
                    ],
                    [
                        event(
                            "e3", "volume.attach.end",
                            [
                                Trait(name: "tenant_id", dtype: 1, value: "p1"),
                                Trait(name: "state", dtype: 1, value: "active"),
                            ]),
                        event(
                            "e4", "compute.instance.delete.end",
                            [
                                Trait(name: "project_id", dtype: 1, value: "p2"),
                                Trait(name: "memory_mb", dtype: 2, value: 8192),
                            ]),
                        event(
                            "e5", "compute.instance.update",
                            [
                                Trait(name: "project_id", dtype: 1, value: "p1"),
                                Trait(name: "memory_mb", dtype: 2, value: 2048),
                            ]),
                    ],
                ]
                let lines: [[String: Any]] = batches.map {
                    [
                        "exchange": "ceilometer", "topic": "event", "priority": "sample", "driver": "messagingv2",
                        "publisher_id": "ceilometer.publisher.host1", "event_type": "event", "payload": $0,
                    ]
                }
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")

                let expected: [(Subscription, Set<String>)] = [
                    (big, ["e1", "e5"]), (active, ["e1", "e3"]), (other, ["e4"]),
                ]
                let received = try await run.readEvents(expected: expected, timeout: .seconds(60))
                for (subscription, ids) in expected {
                    #expect(Set(received[subscription.target.queue] ?? []) == ids, "\(subscription.target.queue)")
                    #expect(
                        (received[subscription.target.queue] ?? []).count == ids.count,
                        "no duplicates in \(subscription.target.queue)")
                }
            }
        }

        @Test("a list whose matches fill several parts: every match delivered once, the notification settled once")
        func matchesInParts() async throws {
            try await PipelineRun.with(partitions: 4) { run in
                let first = Subscription(
                    project: "p1", eventTypes: ["compute.instance.update"], target: Target(queue: run.queue("parts-a")))
                let second = Subscription(
                    project: "p1", eventTypes: ["compute.*"], target: Target(queue: run.queue("parts-b")))
                for subscription in [first, second] { try await run.registry.create(subscription) }
                try await run.startNodes(
                    1, extra: ["HERALD_CEILOMETER_EVENTS": "true", "HERALD_EXCHANGES": "nova"], as: .inProcess)
                try await run.waitAllPartitionsHeld()

                // One event type and no resource: one partition, one delivery of 150 events and
                // 300 matches (parts hold at most 256).
                let ids = (0..<150).map { "part-e\($0)" }
                let events = ids.map {
                    event($0, "compute.instance.update", [Trait(name: "project_id", dtype: 1, value: "p1")])
                }
                let line: [String: Any] = [
                    "exchange": "ceilometer", "topic": "event", "priority": "sample", "driver": "messagingv2",
                    "publisher_id": "ceilometer.publisher.host1", "event_type": "event", "payload": events,
                ]
                let publisher = try run.publish([line])
                #expect(await publisher.wait() == 0, "\(publisher.tail())")

                let expected: [(Subscription, Set<String>)] = [(first, Set(ids)), (second, Set(ids))]
                let received = try await run.readEvents(expected: expected, timeout: .seconds(90))
                for (subscription, ids) in expected {
                    let got = received[subscription.target.queue] ?? []
                    #expect(Set(got) == ids, "\(subscription.target.queue)")
                    #expect(got.count == ids.count, "no duplicates in \(subscription.target.queue)")
                }
            }
        }
    }
}

extension PipelineRun {
    /// Waits for the queues to fill, then returns the `event_id`s in each.
    func readEvents(expected: [(Subscription, Set<String>)], timeout: Duration) async throws -> [String: [String]] {
        let deadline = ContinuousClock.now + timeout
        var result: [String: [String]] = [:]
        while ContinuousClock.now < deadline {
            result = [:]
            for (subscription, _) in expected {
                let bodies = try await zaqar.bodies(queue: subscription.target.queue, project: subscription.project)
                result[subscription.target.queue] = bodies.compactMap {
                    ($0["herald"] as? [String: Any])?["event_id"] as? String
                }
            }
            if expected.allSatisfy({ (result[$0.0.target.queue] ?? []).count >= $0.1.count }) { break }
            try await Task.sleep(for: .milliseconds(500))
        }
        try await Task.sleep(for: .seconds(1))
        for (subscription, _) in expected {
            let bodies = try await zaqar.bodies(queue: subscription.target.queue, project: subscription.project)
            result[subscription.target.queue] = bodies.compactMap {
                ($0["herald"] as? [String: Any])?["event_id"] as? String
            }
        }
        trackQueues(expected.map { ($0.0.project, $0.0.target.queue) })
        return result
    }
}
