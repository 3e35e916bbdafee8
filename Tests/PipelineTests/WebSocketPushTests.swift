import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    @Suite("Zaqar's WebSocket: events pushed to a subscribed socket", .serialized, .timeLimit(.minutes(5)))
    struct WebSocketPushTests {
        @Test(
            "a user subscribed to their queue over Zaqar's WebSocket is pushed every matching event as Herald delivers it, and nothing of another project with a queue of the same name"
        )
        func pushed() async throws {
            let socketURL = try TestServers.value("HERALD_TEST_ZAQAR_WS_URL")
            try await PipelineRun.with(partitions: 8) { run in
                // Two projects, one queue name: Zaqar keeps them apart by project, Herald by subscription.
                let queue = run.queue("pushed")
                let mine = Subscription(
                    project: "ws-p1", eventTypes: ["compute.instance.*"], target: Target(queue: queue), messageTTL: 3600
                )
                let theirs = Subscription(
                    project: "ws-p2", eventTypes: ["compute.instance.*"], target: Target(queue: queue), messageTTL: 3600
                )
                try await run.registry.create(mine)
                try await run.registry.create(theirs)
                run.trackQueues([(mine.project, queue), (theirs.project, queue)])
                try await run.startNodes(2, as: .inProcess)
                try await run.waitAllPartitionsHeld()

                // 60 notifications: project ws-p1's instances (wanted), its volumes (not subscribed), ws-p2's instances.
                var lines: [[String: Any]] = []
                var wanted = Set<Int>()
                for seq in 0..<60 {
                    let (exchange, type, project): (String, String, String) =
                        switch seq % 3 {
                        case 0:
                            (
                                "nova",
                                [
                                    "compute.instance.create.end", "compute.instance.update",
                                    "compute.instance.delete.end",
                                ][
                                    seq % 9 / 3], "ws-p1"
                            )
                        case 1: ("cinder", "volume.create.end", "ws-p1")
                        default: ("nova", "compute.instance.update", "ws-p2")
                        }
                    if seq % 3 == 0 { wanted.insert(seq) }
                    lines.append([
                        "exchange": exchange, "event_type": type, "project": project,
                        "payload": ["tenant_id": project, "instance_id": "i-\(seq % 7)", "seq": seq],
                    ])
                }

                // What python-zaqarclient's WebSocket transport sends; no `authenticate` (this Zaqar is noauth;
                // IdentityTests does it behind Keystone).
                let socket = ZaqarSocket(url: socketURL)
                defer { socket.close() }
                #expect(
                    try await socket.request(
                        "subscription_create", headers: ["X-Project-ID": mine.project],
                        body: ["queue_name": queue, "ttl": 600]) == 201)

                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "the publisher failed: \(publisher.tail())")
                // Pushed while Herald delivers.
                let pushed = try await eventually(timeout: .seconds(90)) {
                    let pushed = socket.pushed
                    guard pushed.count >= wanted.count else {
                        throw TestFailure("\(pushed.count) of \(wanted.count) events pushed")
                    }
                    return pushed
                }
                // A little longer: anything of the other project would show up now.
                try await Task.sleep(for: .seconds(1))
                #expect(socket.pushed.count == pushed.count, "nothing more than the matching events")

                var seqs: [Int] = []
                for message in pushed {
                    let body = message["body"] as? [String: Any]
                    let herald = body?["herald"] as? [String: Any]
                    let payload = (body?["event"] as? [String: Any])?["payload"] as? [String: Any]
                    #expect(message["queue_name"] as? String == queue)
                    #expect(herald?["project"] as? String == mine.project, "another project's event pushed: \(message)")
                    #expect(herald?["subscription_id"] as? String == mine.id)
                    if let seq = payload?["seq"] as? Int { seqs.append(seq) }
                }
                #expect(
                    Set(seqs) == wanted,
                    "missing \(wanted.subtracting(seqs).sorted()), unexpected \(Set(seqs).subtracting(wanted).sorted())"
                )
                // The other project's queue of the same name got its own events, through REST as before.
                let theirSeqs = try await run.numbered(queue: queue, project: theirs.project)
                #expect(theirSeqs == Set((0..<60).filter { $0 % 3 == 2 }))
            }
        }
    }
}
