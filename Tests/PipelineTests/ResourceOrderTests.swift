import Coordination
import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    @Suite("Order per resource", .serialized, .timeLimit(.minutes(8)))
    struct ResourceOrderTests {
        /// 300 servers, each going create, power off, power on, delete, their events interleaved;
        /// three nodes, one killed (-9) a third of the way and another stopped with SIGTERM two
        /// thirds of the way (a node joins after the kill). For every server, the first arrival of
        /// each event is in publish order, and every event arrives.
        @Test(
            "300 servers' interleaved lifecycles, kill -9 and SIGTERM midway: first arrivals in publish order per server, nothing lost"
        )
        func lifecycles() async throws {
            let servers = 300
            let steps = [
                "compute.instance.create.end", "compute.instance.power_off.end", "compute.instance.power_on.end",
                "compute.instance.delete.end",
            ]
            var random = SystemRandomNumberGenerator()
            var next = Array(repeating: 0, count: servers)
            var open = Array(0..<servers)
            var lines: [[String: Any]] = []
            var order: [String: [Int]] = [:]
            while !open.isEmpty {
                let pick = Int.random(in: 0..<open.count, using: &random)
                let server = open[pick]
                let instance = "server-\(server)"
                let seq = lines.count
                lines.append([
                    "exchange": "nova", "driver": "messagingv2", "event_type": steps[next[server]], "project": "p1",
                    "payload": [
                        "tenant_id": "p1", "instance_id": instance, "seq": seq,
                        "note": String(repeating: "n", count: 400),
                    ],
                ])
                order[instance, default: []].append(seq)
                next[server] += 1
                if next[server] == steps.count { open.remove(at: pick) }
            }

            try await PipelineRun.with(partitions: 24) { run in
                let subscription = Subscription(
                    project: "p1", eventTypes: ["compute.instance.*"], target: Target(queue: run.queue("servers")))
                try await run.registry.create(subscription)
                try await run.startNodes(3)
                try await run.waitAllPartitionsHeld()
                let publisher = try run.publish(lines)
                try await run.waitForIngested(lines.count / 3, timeout: .seconds(120))
                try await run.stop("node-1", signal: SIGKILL)
                try await run.startNodes(1)
                try await run.waitForIngested(2 * lines.count / 3, timeout: .seconds(120))
                try await run.stop("node-2", signal: SIGTERM)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")

                let received = try await run.readUntil(
                    expected: [(subscription, Set(0..<lines.count))], timeout: .seconds(240))
                let messages = received[subscription.target.queue] ?? []
                var seen = Set<String>()
                var arrivals: [String: [Int]] = [:]
                let instanceOf = Dictionary(
                    uniqueKeysWithValues: order.flatMap { instance, seqs in seqs.map { ($0, instance) } })
                for message in messages where seen.insert(message.eventID).inserted {
                    guard let instance = instanceOf[message.seq] else { continue }
                    arrivals[instance, default: []].append(message.seq)
                }
                let lost = Set(0..<lines.count).subtracting(messages.map(\.seq)).count
                let disordered = order.keys.filter {
                    arrivals[$0] != order[$0] && arrivals[$0].map { $0 != $0.sorted() } ?? false
                }
                print(
                    "order: \(lines.count) events of \(servers) servers, \(messages.count) messages (\(messages.count - seen.count) duplicates), lost \(lost), servers out of order \(disordered.count)"
                )
                #expect(lost == 0)
                #expect(
                    disordered.isEmpty,
                    "out of order: \(disordered.sorted().prefix(5).map { "\($0): \(arrivals[$0] ?? [])" })")
            }
        }
    }
}
