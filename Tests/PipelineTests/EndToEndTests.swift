import Coordination
import Foundation
import HeraldModel
import Messaging
import TestSupport
import Testing

/// What the test publishes, and what it expects from it, computed here and not by Herald.
struct PublishedNotification {
    var seq: Int
    var exchange: String
    var driver: String
    var eventType: String
    var project: String?
    var payload: [String: Any]
    /// Where the project is: in the payload (`tenant_id`) or only in the context.
    var projectInPayload: Bool

    var json: [String: Any] {
        var item: [String: Any] = [
            "exchange": exchange, "driver": driver, "event_type": eventType, "payload": payload,
            "publisher_id": "\(exchange).host1",
        ]
        if let project, !projectInPayload { item["project"] = project }
        return item
    }
}

/// The test's own reading of a subscription (globs through regular expressions).
struct ExpectedSubscription {
    var subscription: Subscription

    func matches(_ notification: PublishedNotification) -> Bool {
        guard subscription.allProjects || notification.project == subscription.project else { return false }
        let includes = subscription.eventTypes.filter { !$0.hasPrefix("!") }
        let excludes = subscription.eventTypes.filter { $0.hasPrefix("!") }.map { String($0.dropFirst()) }
        guard includes.contains(where: { Self.glob($0, notification.eventType) }) else { return false }
        guard !excludes.contains(where: { Self.glob($0, notification.eventType) }) else { return false }
        for condition in subscription.conditions {
            let field = condition.field.replacingOccurrences(of: "payload.", with: "")
            switch (condition.op, condition.value) {
            case (.eq, .string(let wanted)?): if notification.payload[field] as? String != wanted { return false }
            case (.ge, .number(let bound)?):
                if Double(notification.payload[field] as? Int ?? Int.min) < bound { return false }
            default: Issue.record("the test does not model \(condition)")
            }
        }
        return true
    }

    static func glob(_ pattern: String, _ text: String) -> Bool {
        let regex =
            "^"
            + NSRegularExpression.escapedPattern(for: pattern).replacingOccurrences(of: "\\*", with: ".*")
            .replacingOccurrences(of: "\\?", with: ".") + "$"
        return text.range(of: regex, options: .regularExpression) != nil
    }
}

enum Disruption: String, CaseIterable, CustomStringConvertible {
    case none, addNode, sigterm, kill9
    var description: String { rawValue }

    /// Where the run's nodes live: in the test process, unless a real signal is the point
    /// (SIGTERM's exit within the budget, kill -9's crash), which only a process can take.
    var nodes: PipelineRun.NodeKind {
        switch self {
        case .none, .addNode: .inProcess
        case .sigterm, .kill9: .process
        }
    }
}

/// The pipeline suites. Each suite's tests run one at a time; suites run side by side (each has its
/// own vhost, key prefix and queues). `scripts/test` runs them in a pass of their own, since other
/// suites restart Redis and RabbitMQ, and the end-to-end suite in a pass of its own after them: its
/// runs count lost leases and timed-out requests, which a starved machine makes.
@Suite("Pipeline with whole nodes, in the test process or as herald node processes")
enum PipelineSuites {}

extension PipelineSuites {
    @Suite("End to end: oslo.messaging -> RabbitMQ -> herald nodes -> Zaqar", .serialized, .timeLimit(.minutes(10)))
    struct EndToEndTests {
        static let eventTypes: [String: [String]] = [
            "nova": [
                "compute.instance.create.start", "compute.instance.create.end", "compute.instance.delete.end",
                "compute.instance.update",
            ],
            "neutron": ["port.create.end", "port.delete.end", "network.create.end"],
            "cinder": ["volume.create.end", "volume.attach.end", "volume.delete.end"],
        ]
        static let patterns = [
            "compute.instance.*", "compute.instance.create.*", "*.create.end", "volume.*", "port.*",
            "network.create.end", "*", "volume.attach.end",
        ]
        static let projects = ["p1", "p2", "p3"]

        var notificationCount: Int {
            Int(ProcessInfo.processInfo.environment["HERALD_E2E_NOTIFICATIONS"] ?? "") ?? 10_000
        }

        @Test(
            "every expected message arrives, none unexpected, in publish order per event type",
            arguments: Disruption.allCases)
        func endToEnd(disruption: Disruption) async throws {
            // HERALD_E2E_DISRUPTIONS=sigterm,kill9 runs only those (for experiments); all by default.
            if let only = ProcessInfo.processInfo.environment["HERALD_E2E_DISRUPTIONS"],
                !only.split(separator: ",").contains(Substring(disruption.rawValue))
            {
                return
            }
            var random = SystemRandomNumberGenerator()
            try await PipelineRun.with(partitions: 32) { run in

                // 50 subscriptions over 3 projects, plus one admin subscription to every project.
                var subscriptions: [Subscription] = []
                for index in 0..<50 {
                    var types = [Self.patterns[index % Self.patterns.count]]
                    if index % 7 == 3 { types.append("!compute.instance.update") }
                    var conditions: [Condition] = []
                    if index % 5 == 1 {
                        conditions.append(Condition(field: "payload.flavor", op: .eq, value: .string("m1.small")))
                    }
                    if index % 5 == 2 {
                        conditions.append(Condition(field: "payload.size", op: .ge, value: .number(10)))
                    }
                    subscriptions.append(
                        Subscription(
                            project: Self.projects[index % 3], eventTypes: types, conditions: conditions,
                            target: Target(queue: run.queue("e2e-\(index)")), messageTTL: 3600))
                }
                subscriptions.append(
                    Subscription(
                        project: "admin", allProjects: true, eventTypes: ["compute.*"],
                        target: Target(queue: run.queue("e2e-admin")), messageTTL: 3600))
                for subscription in subscriptions { try await run.registry.create(subscription) }
                try await run.startNodes(3, as: disruption.nodes)
                try await run.waitAllPartitionsHeld()

                // Notifications: three exchanges, both drivers, projects in the payload or only in the context, some with none.
                var published: [PublishedNotification] = []
                for seq in 0..<notificationCount {
                    let exchange = ["nova", "neutron", "cinder"].randomElement(using: &random)!
                    let project: String? =
                        Int.random(in: 0..<20, using: &random) == 0 ? nil : Self.projects.randomElement(using: &random)!
                    var payload: [String: Any] = [
                        "seq": seq, "flavor": ["m1.small", "m1.large"].randomElement(using: &random)!,
                        "size": Int.random(in: 1...20, using: &random), "note": String(repeating: "n", count: 600),
                    ]
                    let inPayload = project != nil && Bool.random(using: &random)
                    if inPayload { payload["tenant_id"] = project }
                    published.append(
                        PublishedNotification(
                            seq: seq, exchange: exchange,
                            driver: Bool.random(using: &random) ? "messaging" : "messagingv2",
                            eventType: Self.eventTypes[exchange]!.randomElement(using: &random)!, project: project,
                            payload: payload, projectInPayload: inPayload))
                }
                let malformed: [[String: Any]] = [
                    ["raw": "{not json", "exchange": "nova"],
                    ["raw_base64": Data([0xff, 0xfe, 0x7b, 0x7d]).base64EncodedString(), "exchange": "neutron"],
                    ["raw": "{\"message_id\": \"m\", \"payload\": {}}", "exchange": "cinder"],
                    ["raw": "[1, 2, 3]", "exchange": "nova"],
                    ["raw": "{\"event_type\": \"compute.instance.update\"}", "exchange": "nova"],
                ]
                var lines = published.map(\.json)
                for (offset, bad) in malformed.enumerated() {
                    lines.insert(bad, at: min(lines.count, (offset + 1) * lines.count / (malformed.count + 1)))
                }

                // Publish in the background; disrupt a third of the way through.
                let publishStarted = ContinuousClock.now
                let publisher = try run.publish(lines)
                if disruption != .none {
                    try await run.waitForIngested(notificationCount / 3, timeout: .seconds(120))
                    switch disruption {
                    case .addNode: try await run.startNodes(1, as: disruption.nodes)
                    case .sigterm:
                        // Under load: the node must be gone within its budget, its partitions held by the others.
                        let started = ContinuousClock.now
                        try await run.stop("node-2", signal: SIGTERM)
                        let took = ContinuousClock.now - started
                        print(
                            "e2e sigterm: node-2 exited \(run.nodes["node-2"]?.exitStatus ?? -1) after \(took) (budget \(PipelineRun.shutdownBudget) s)"
                        )
                        #expect(took < .seconds(PipelineRun.shutdownBudget))
                        try await run.waitAllPartitionsHeld()
                        #expect(try await run.leaseHolders().contains("node-2") == false)
                    case .kill9: try await run.stop("node-3", signal: SIGKILL)
                    case .none: break
                    }
                }
                let publisherStatus = await publisher.wait()
                let publishedAfter = ContinuousClock.now - publishStarted
                #expect(publisherStatus == 0, "the publisher failed: \(publisher.tail())")

                // Expected messages, by queue.
                let expected = subscriptions.map { subscription in
                    (
                        subscription,
                        Set(
                            published.filter { ExpectedSubscription(subscription: subscription).matches($0) }.map(\.seq)
                        )
                    )
                }
                let total = expected.reduce(0) { $0 + $1.1.count }
                let received = try await run.readUntil(expected: expected, timeout: .seconds(240))
                let arrivedAfter = ContinuousClock.now - publishStarted

                var lost = 0
                var unexpected = 0
                var duplicates = 0
                var outOfOrder = 0
                var handoffDuplicates = 0
                for (subscription, wanted) in expected {
                    let messages = received[subscription.target.queue] ?? []
                    let seqs = messages.map(\.seq)
                    lost += wanted.subtracting(seqs).count
                    unexpected += Set(seqs).subtracting(wanted).count
                    unexpected += messages.filter { $0.subscriptionID != subscription.id }.count
                    duplicates += messages.count - Set(messages.map(\.eventID)).count
                    // Which ones, and by which owners: the same epoch twice is a delivery retry, two epochs a handoff.
                    for (eventID, copies) in Dictionary(grouping: messages, by: \.eventID) where copies.count > 1 {
                        print(
                            "e2e \(disruption): duplicate \(eventID) in \(subscription.target.queue), partition \(copies[0].partition), epochs \(copies.map(\.epoch))"
                        )
                        if Set(copies.map(\.epoch)).count > 1 { handoffDuplicates += copies.count - 1 }
                    }
                    // Per partition key (here the event type: no resource ids), first occurrences arrive in
                    // publish order. (Events of different exchanges sharing a partition are ingested by
                    // different nodes: nothing orders them, docs/pipeline.md, "Ingest".)
                    var seen = Set<String>()
                    var lastByKey: [String: Delivered] = [:]
                    for message in messages where seen.insert(message.eventID).inserted {
                        let key = "\(message.partition)/\(message.eventType)"
                        if let last = lastByKey[key], message.seq < last.seq {
                            outOfOrder += 1
                            if outOfOrder <= 20 {
                                print(
                                    "e2e \(disruption): out of order in \(subscription.target.queue), \(message.eventType) (partition \(message.partition)): seq \(message.seq) epoch \(message.epoch) after seq \(last.seq) epoch \(last.epoch)"
                                )
                            }
                        }
                        lastByKey[key] = message
                    }
                }
                let letters = try await run.deadLetters.recent(count: 1000)
                let nodeLogs: String = run.nodes.values.map { node -> String in
                    (try? String(contentsOfFile: node.log, encoding: .utf8)) ?? ""
                }
                .joined()
                let lostLeases = nodeLogs.components(separatedBy: "lost a partition lease").count - 1
                let shortDrains = nodeLogs.components(separatedBy: "handoff drain ran out of time").count - 1
                // Messages of events a handover gave back after part of them went: the next owner
                // sends those again (logged per partition).
                let repeatedAtHandover = loggedSum(nodeLogs, field: "herald.repeated")
                // Messages in batches retried after an ambiguous failure (the request may have been taken:
                // a timeout after sending, not a refused connection), by a lane or by a parked
                // subscription's drainer: at least once allows these twice.
                let ambiguousRetries = loggedSum(nodeLogs, field: "delivery.count") { line in
                    (line.contains("retrying a batch") || line.contains("parked messages still fail"))
                        && !line.contains("connectTimeout")
                }
                print(
                    "e2e \(disruption): \(notificationCount) notifications, \(total) expected messages, lost \(lost), unexpected \(unexpected), duplicates \(duplicates), out of order \(outOfOrder), dead letters \(letters.count); nodes logged \(lostLeases) lost leases, \(shortDrains) handoff drains out of time, \(repeatedAtHandover) messages sent again at handovers, \(ambiguousRetries) messages retried after a timeout; published in \(String(format: "%.1f", publishedAfter.seconds)) s, all read by \(String(format: "%.1f", arrivedAfter.seconds)) s"
                )
                if lost > 0 {
                    // What a failure needs to be understood: where the missing ones were going, who holds what, what is still queued.
                    var lostByType: [String: Int] = [:]
                    var lostByQueue: [String: Int] = [:]
                    for (subscription, wanted) in expected {
                        let missing = wanted.subtracting((received[subscription.target.queue] ?? []).map(\.seq))
                        if !missing.isEmpty { lostByQueue[subscription.target.queue] = missing.count }
                        for seq in missing { lostByType[published[seq].eventType, default: 0] += 1 }
                    }
                    print(
                        "e2e \(disruption): lost by event type \(lostByType.sorted { $0.key < $1.key }); by queue \(lostByQueue.sorted { $0.value > $1.value }.prefix(10))"
                    )
                    print("e2e \(disruption): lease holders \((try? await run.leaseHolders()) ?? [])")
                    try? await run.rabbitmqctl(
                        "list_queues", "-p", run.vhost, "name", "messages_ready", "messages_unacknowledged", "consumers"
                    )
                    for node in run.nodes.values.sorted(by: { $0.name < $1.name }) {
                        let log = (try? String(contentsOfFile: node.log, encoding: .utf8)) ?? ""
                        let lines = log.split(separator: "\n")
                        print(
                            "e2e \(disruption): \(node.name) logged \(lines.count) lines; the last 15:\n"
                                + lines.suffix(15).map { "  " + $0.prefix(400) }.joined(separator: "\n"))
                    }
                }
                #expect(lost == 0)
                #expect(unexpected == 0)
                #expect(outOfOrder == 0)
                if disruption != .kill9 && shortDrains == 0 && lostLeases == 0 {
                    // A handover (revoke, drain, release) delivers an event twice only when it gave
                    // it back after part of it went (logged); a drain out of time or a lost lease
                    // leaves events behind that the logs do not count.
                    #expect(
                        handoffDuplicates <= repeatedAtHandover,
                        "\(handoffDuplicates) duplicates delivered by two owners, \(repeatedAtHandover) logged as sent again at handovers"
                    )
                }
                if disruption != .kill9 {
                    // The only other duplicates allowed are retries of requests that timed out after
                    // Zaqar took them.
                    #expect(
                        duplicates <= ambiguousRetries + repeatedAtHandover,
                        "\(duplicates) duplicates, only \(ambiguousRetries) messages retried after an ambiguous failure and \(repeatedAtHandover) sent again at handovers"
                    )
                }
                #expect(letters.filter { $0.reason == .malformed }.count == malformed.count, "\(letters.map(\.detail))")
                #expect(letters.allSatisfy { $0.reason == .malformed })
                await run.stopAll()
                for node in run.nodes.values where node.exitStatus != nil {
                    #expect(
                        node.exitStatus == 0 || node.name == "node-3" && disruption == .kill9,
                        "\(node.name) exited \(node.exitStatus!): \(node.tail())")
                }
            }
        }
    }
}
