import AsyncHTTPClient
import Delivery
import Foundation
import HeraldModel
import NIOCore
import NIOHTTP1
import TestSupport
import Testing

extension RedisBackedDeliveryTests {
    @Suite("Delivery into a real Zaqar", .timeLimit(.minutes(3)))
    struct ZaqarDeliveryTests {
        let zaqarURL: String
        let reader: ZaqarReader

        init() throws {
            zaqarURL = try TestServers.zaqarURL()
            reader = ZaqarReader(baseURL: zaqarURL)
        }

        func queue() -> String { "herald-test-" + UUID().uuidString.prefix(13).lowercased() }

        @Test("batches arrive whole and in order per lane")
        func orderPerLane() async throws {
            let harness = try DeliveryHarness()
            let project = "p-" + UUID().uuidString.prefix(8).lowercased()
            let targets = (0..<3).map { _ in ZaqarTarget(baseURL: zaqarURL, project: project, queue: queue()) }
            // Interleave the lanes, one submission per message, as a partition consumer would.
            var all: [ZaqarOutgoingMessage] = []
            let perLane = targets.map { DeliveryHarness.messages(120, to: $0, label: $0.queue) }
            for index in 0..<120 { for lane in perLane { all.append(lane[index]) } }
            let outcome = await harness.deliverEach(all)
            #expect(outcome == DeliveryOutcome(delivered: 360, deadLettered: 0))
            #expect(
                harness.count("herald_delivery_requests_total") < 360 / 4,
                "batched: \(harness.count("herald_delivery_requests_total")) requests for 360 messages")
            for target in targets {
                let bodies = try await reader.bodies(queue: target.queue, project: project)
                let numbers = bodies.compactMap { ($0["event"] as? [String: Any])?["n"] as? Int }
                #expect(numbers == Array(0..<120), "\(target.queue) holds \(numbers.count) messages in order")
                let herald = bodies.first?["herald"] as? [String: Any]
                #expect(herald?["event_id"] as? String == "\(target.queue)-0")
                #expect(herald?["subscription_id"] as? String == "sub-\(target.queue)")
            }
            await harness.shutdown()
        }

        @Test("messages that together exceed 256 KiB are split over several requests, never rejected")
        func splitsLargeBatches() async throws {
            let harness = try DeliveryHarness()
            let project = "p-split"
            let target = ZaqarTarget(baseURL: zaqarURL, project: project, queue: queue())
            let outcome = await harness.batcher.deliver(DeliveryHarness.messages(60, to: target, padding: 10_000))
            #expect(outcome == DeliveryOutcome(delivered: 60, deadLettered: 0))
            #expect(harness.count("herald_delivery_requests_total") >= 3)
            #expect(harness.count("herald_dead_letters_total") == 0)
            #expect(try await reader.bodies(queue: target.queue, project: project).count == 60)
            await harness.shutdown()
        }

        @Test("one message over the request limit is dead-lettered as too large, the rest delivered")
        func tooLarge() async throws {
            let harness = try DeliveryHarness()
            let project = "p-large"
            let target = ZaqarTarget(baseURL: zaqarURL, project: project, queue: queue())
            var messages = DeliveryHarness.messages(3, to: target)
            messages.append(DeliveryHarness.messages(1, to: target, label: "huge", padding: 300_000)[0])
            let outcome = await harness.batcher.deliver(messages)
            #expect(outcome == DeliveryOutcome(delivered: 3, deadLettered: 1))
            let letters = try await harness.deadLetters.recent()
            #expect(letters.count == 1)
            #expect(letters.first?.reason == .tooLarge)
            #expect(letters.first?.eventID == "huge-0")
            #expect(letters.first?.detail.contains("262144") == true)
            await harness.shutdown()
        }

        @Test("a pre-signed URL with an explicit expiry delivers; an expired one is dead-lettered naming the expiry")
        func signedURLs() async throws {
            let harness = try DeliveryHarness()
            let project = "p-signed-" + UUID().uuidString.prefix(6).lowercased()
            let queueName = queue()
            // Posting creates the queue; share wants it to exist.
            _ = try await reader.request("/v2/queues/\(queueName)", project: project, method: .PUT, body: [:])
            let signed = try await reader.share(
                queue: queueName, project: project, expires: Date().addingTimeInterval(3600))
            let target = ZaqarTarget(
                baseURL: zaqarURL, project: project, queue: queueName, credentials: .signedURL(signed, trust: nil))
            let outcome = await harness.batcher.deliver(DeliveryHarness.messages(5, to: target))
            #expect(outcome == DeliveryOutcome(delivered: 5, deadLettered: 0))
            #expect(try await reader.bodies(queue: queueName, project: project).count == 5)

            let shortLived = try await reader.share(
                queue: queueName, project: project, expires: Date().addingTimeInterval(2))
            try await Task.sleep(for: .milliseconds(2500))
            let expiredTarget = ZaqarTarget(
                baseURL: zaqarURL, project: project, queue: queueName, credentials: .signedURL(shortLived, trust: nil))
            let late = await harness.batcher.deliver(DeliveryHarness.messages(2, to: expiredTarget, label: "late"))
            #expect(late == DeliveryOutcome(delivered: 0, deadLettered: 2))
            let letters = try await harness.deadLetters.recent()
            #expect(letters.count == 2)
            #expect(letters.allSatisfy { $0.reason == .signedURLExpired && $0.detail.contains("expired at") })
            #expect(try await reader.bodies(queue: queueName, project: project).count == 5)
            await harness.shutdown()
        }

        @Test(
            "Zaqar's 400 for a bad message is dead-lettered with Zaqar's own words; an all-projects subscription's letter is kept apart from its project's"
        )
        func zaqarRejects() async throws {
            let harness = try DeliveryHarness()
            let project = "p-bad-" + UUID().uuidString.prefix(8).lowercased()
            let target = ZaqarTarget(baseURL: zaqarURL, project: project, queue: queue())
            var messages = DeliveryHarness.messages(4, to: target)
            // A TTL below Zaqar's minimum of 60 s.
            let event = Array("{\"n\":99}".utf8)
            for (index, allProjects) in [(1, true), (2, false)] {
                let id = allProjects ? "bad-ttl-all" : "bad-ttl"
                messages[index] = ZaqarOutgoingMessage(
                    target: target,
                    body: ZaqarMessageEncoding.message(
                        event: event, ttl: 1, subscriptionID: "s", eventID: id, partition: 0, epoch: 1),
                    subscriptionID: "s", eventID: id, allProjects: allProjects)
            }
            let outcome = await harness.batcher.deliver(messages)
            #expect(outcome == DeliveryOutcome(delivered: 2, deadLettered: 2))
            let letters = try await harness.deadLetters.recent()
            #expect(Set(letters.map(\.eventID)) == ["bad-ttl", "bad-ttl-all"])
            for letter in letters {
                #expect(letter.reason == .rejected)
                #expect(letter.zaqarMessage?.lowercased().contains("ttl") == true, "\(letter.zaqarMessage ?? "")")
                #expect(letter.project == project)
                #expect((letter.allProjects == true) == (letter.eventID == "bad-ttl-all"))
            }
            // The project sees its own letter only; the other holds another project's event.
            #expect(try await harness.deadLetters.recent(project: project).map(\.letter.eventID) == ["bad-ttl"])
            #expect(try await harness.deadLetters.recent(.allProjects).map(\.letter.eventID) == ["bad-ttl-all"])
            await harness.shutdown()
        }
    }
}
