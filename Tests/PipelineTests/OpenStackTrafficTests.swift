import Coordination
import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    /// Every fixture of `Tests/Fixtures/notifications` (nova legacy and versioned, neutron, cinder,
    /// glance, heat, keystone, octavia, designate, ironic, manila, magnum, a Ceilometer event)
    /// published through real oslo.messaging with its request context (an admin acting for a
    /// tenant, nova's service user acting for a user, keystone's empty context), into a node with
    /// the shipped event definitions: each project's subscriptions get exactly what it owns, and
    /// what it did to others' resources only when it asked (`include_actor`).
    @Suite("Real OpenStack traffic: owners, actors, topics and priorities", .serialized, .timeLimit(.minutes(5)))
    struct OpenStackTrafficTests {
        static let projects = [
            "tenant": "4f2e7ab3c1d04f6a8e6b0c9d1a2b3c4d", "admin": "a0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5",
            "service": "5e7c9a1b3d5f4e6a8b0c2d4e6f8a0b1c", "other": "9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        ]
        static let instance = "178b0921-8f85-4257-88b6-2e743b5a975c"

        struct Published {
            var label: String
            var owner: String?
            var actor: String?
            var resourceID: String?
            var ceilometer: Bool
            var priority: String
            var eventType: String
        }

        @Test(
            "each fixture reaches its owner's subscriptions, the actor's only with include_actor, no other project; versioned, warn and critical arrive; resource_id and origin filter"
        )
        func attribution() async throws {
            let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Fixtures/notifications")
            let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter {
                $0.hasSuffix(".json")
            }.sorted()
            var lines: [[String: Any]] = []
            var published: [Published] = []
            for (index, name) in names.enumerated() {
                let fixture = try #require(
                    try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent(name)))
                        as? [String: Any])
                let expect = fixture["expect"] as? [String: Any] ?? [:]
                let ceilometer = fixture["exchange"] as? String == "ceilometer"
                var priorities = [fixture["priority"] as? String ?? "info"]
                if name == "cinder-volume.create.end.json" { priorities += ["warn", "critical"] }
                for priority in priorities {
                    let label = "fixture-\(index)-\(priority)"
                    lines.append([
                        "exchange": fixture["exchange"] as? String ?? "nova", "driver": "messagingv2",
                        "topic": ceilometer ? "event" : fixture["topic"] as? String ?? "notifications",
                        "priority": ceilometer ? "sample" : priority, "publisher_id": label,
                        "event_type": fixture["event_type"] as? String ?? "",
                        "context": fixture["context"] as? [String: Any] ?? [:], "payload": fixture["payload"] ?? [:],
                    ])
                    published.append(
                        Published(
                            label: label, owner: expect["owner"] as? String, actor: expect["actor"] as? String,
                            resourceID: expect["resource_id"] as? String, ceilometer: ceilometer, priority: priority,
                            eventType: fixture["event_type"] as? String ?? ""))
                }
            }

            try await PipelineRun.with(partitions: 8) { run in
                var subscriptions: [(Subscription, (Published) -> Bool)] = []
                for (name, project) in Self.projects.sorted(by: { $0.key < $1.key }) {
                    subscriptions.append(
                        (
                            Subscription(
                                project: project, eventTypes: ["*"], target: Target(queue: run.queue("own-\(name)")),
                                origin: .notification),
                            { !$0.ceilometer && $0.owner == project }
                        ))
                    subscriptions.append(
                        (
                            Subscription(
                                project: project, eventTypes: ["*"], target: Target(queue: run.queue("actor-\(name)")),
                                includeActor: true, origin: .notification),
                            { !$0.ceilometer && ($0.owner == project || $0.actor == project) }
                        ))
                }
                let tenant = Self.projects["tenant"]!
                subscriptions.append(
                    (
                        Subscription(
                            project: tenant, eventTypes: ["*"], target: Target(queue: run.queue("ceilometer")),
                            origin: .ceilometer),
                        { $0.ceilometer && $0.owner == tenant }
                    ))
                subscriptions.append(
                    (
                        Subscription(
                            project: tenant, eventTypes: ["volume.*"],
                            conditions: [Condition(field: "priority", op: .eq, value: .string("WARN"))],
                            target: Target(queue: run.queue("warn")), origin: .notification),
                        { !$0.ceilometer && $0.owner == tenant && $0.priority == "warn" }
                    ))
                subscriptions.append(
                    (
                        Subscription(
                            project: tenant, eventTypes: ["*"], target: Target(queue: run.queue("pinned")),
                            resourceID: Self.instance, origin: .notification),
                        { !$0.ceilometer && $0.owner == tenant && $0.resourceID == Self.instance }
                    ))
                // The cloud admin's feed of every project's server creations, unredacted.
                let created = ["compute.instance.create.end", "instance.create.end"]
                var unredacted = Subscription(
                    project: Self.projects["admin"]!, allProjects: true, eventTypes: created,
                    target: Target(queue: run.queue("unredacted")), origin: .notification)
                unredacted.unredacted = true
                subscriptions.append((unredacted, { !$0.ceilometer && created.contains($0.eventType) }))
                for (subscription, _) in subscriptions { try await run.registry.create(subscription) }
                run.trackQueues(subscriptions.map { ($0.0.project, $0.0.target.queue) })
                try await run.startNodes(
                    1,
                    extra: [
                        "HERALD_EXCHANGES":
                            "nova,neutron,cinder,glance,heat,keystone,designate,octavia,ironic,manila,magnum,trove",
                        "HERALD_CEILOMETER_EVENTS": "true",
                    ], as: .inProcess)
                try await run.waitAllPartitionsHeld()
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")

                for (subscription, wanted) in subscriptions {
                    let expected = Set(published.filter(wanted).map(\.label))
                    let queue = subscription.target.queue
                    let received = try await eventually(timeout: .seconds(60)) {
                        let labels = try await run.zaqar.bodies(queue: queue, project: subscription.project).compactMap
                        {
                            body -> String? in
                            guard let event = body["event"] as? [String: Any] else { return nil }
                            // A Ceilometer event is one element of the list: its publisher is in the raw notification.
                            return event["publisher_id"] as? String
                                ?? ((event["raw"] as? [String: Any])?["publisher_id"] as? String)
                                ?? (body["herald"] as? [String: Any])?["event_id"] as? String
                        }
                        guard labels.count >= expected.count else {
                            throw TestFailure(
                                "\(queue): \(labels.count) of \(expected.count); missing \(expected.subtracting(labels).sorted())"
                            )
                        }
                        return labels
                    }
                    if subscription.origin == .ceilometer {
                        #expect(received.count == expected.count, "\(queue): the Ceilometer copy only")
                    } else {
                        #expect(
                            Set(received) == expected,
                            "\(queue): missing \(expected.subtracting(received).sorted()), unexpected \(Set(received).subtracting(expected).sorted())"
                        )
                        #expect(received.count == expected.count, "\(queue): each once")
                    }
                }
                // What tenants receive has no hosts (docs/security.md, "What tenants receive"); the
                // admin's unredacted feed has them.
                for (subscription, _) in subscriptions {
                    let bodies = try await run.zaqar.bodies(
                        queue: subscription.target.queue, project: subscription.project)
                    for body in bodies {
                        let event = try #require(body["event"] as? [String: Any])
                        let payload = event["payload"] as? [String: Any] ?? [:]
                        let nova = payload["nova_object.data"] as? [String: Any] ?? [:]
                        let traits = (event["traits"] as? [[Any]] ?? []).filter {
                            ["host", "node"].contains($0.first as? String ?? "")
                        }
                        let hosts =
                            [
                                payload["host"], payload["node"], nova["host"], nova["node"], event["raw"],
                                event["message_signature"],
                            ].compactMap { $0 } + traits
                        let redacted = (body["herald"] as? [String: Any])?["redacted"] as? [String] ?? []
                        if subscription.unredacted == true {
                            #expect(
                                !hosts.isEmpty && redacted.isEmpty,
                                "the admin's unredacted feed keeps the hosts: \(event["event_type"] ?? "")")
                        } else {
                            #expect(
                                hosts.isEmpty,
                                "\(subscription.target.queue): \(event["event_type"] ?? "") still has \(hosts)")
                            if created.contains(event["event_type"] as? String ?? ""), event["traits"] == nil {
                                #expect(
                                    Set(redacted).isSuperset(of: ["payload.host", "payload.node"])
                                        || Set(redacted).isSuperset(of: [
                                            "payload.'nova_object.data'.host", "payload.'nova_object.data'.node",
                                        ]),
                                    "the envelope says what was removed: \(redacted)")
                            }
                        }
                    }
                }
                #expect(
                    try await run.zaqar.bodies(queue: unredacted.target.queue, project: unredacted.project).count == 2)

                // Nothing went where nobody asked: every published fixture with an owner reached that owner.
                let owned = published.filter { !$0.ceilometer && $0.owner != nil }
                #expect(owned.count >= 35)
            }
        }
    }
}
