import AsyncHTTPClient
import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    /// Herald on a three-node RabbitMQ cluster (`scripts/servers cluster`), its URL naming all
    /// three nodes, with quorum queues: the node Herald is connected to stops under it.
    @Suite("A RabbitMQ cluster: the node Herald uses stops", .serialized, .timeLimit(.minutes(5)))
    struct RabbitClusterTests {
        @Test(
            "the node Herald is connected to stops mid-run: Herald moves to the next, and every event published before and after arrives"
        )
        func nodeStops() async throws {
            let clusterURL = try TestServers.value("HERALD_TEST_AMQP_CLUSTER_URL")
            try await PipelineRun.with(partitions: 8, clusterURL: clusterURL) { run in
                let project = "c1a5e7b9d2f44e6a8b0c1d2e3f4a5b6c"
                let subscription = Subscription(
                    project: project, eventTypes: ["compute.instance.*"], target: Target(queue: run.queue("cluster")))
                try await run.registry.create(subscription)
                run.trackQueues([(project, subscription.target.queue)])
                try await run.startNodes(
                    1, extra: ["HERALD_QUEUE_TYPE": "quorum", "HERALD_EXCHANGES": "nova"], as: .inProcess)
                try await run.waitAllPartitionsHeld()

                // Before: published (into quorum queues, on every node) while Herald works on them.
                let before = try run.publish(run.numberedLines(project: project, 0..<600))
                #expect(await before.wait() == 0, "\(before.tail())")
                // The first host of the URL is the one Herald connected to.
                try await TestServers.control("cluster", "stop", "1")
                var restarted = false
                do {
                    // The queues' leaders on the stopped node are elected anew on the others; until
                    // then RabbitMQ drops what a publisher without confirms (oslo.messaging's
                    // notifications) sends. Probes until one arrives, so the loss measured is Herald's.
                    var settled = false
                    for probe in 0..<10 where !settled {
                        let line = run.numberedLines(project: project, (10_000 + probe)..<(10_001 + probe))
                        #expect(await (try run.publish(line)).wait() == 0)
                        settled =
                            (try? await eventually(timeout: .seconds(10)) { () async throws -> Bool in
                                guard
                                    try await run.numbered(queue: subscription.target.queue, project: project).contains(
                                        10_000 + probe)
                                else { throw TestFailure("probe \(probe) not yet") }
                                return true
                            }) ?? false
                    }
                    #expect(settled, "the cluster carried a probe again within 100 s")
                    // After: the publisher, given all three hosts, finds the nodes that are left.
                    let after = try run.publish(run.numberedLines(project: project, 600..<900))
                    #expect(await after.wait() == 0, "\(after.tail())")
                    let seen = try await run.waitForNumbered(
                        queue: subscription.target.queue, project: project, count: 900)
                    #expect(seen == Set(0..<900), "nothing lost across the node's loss")
                    // The node kept running and is ready again, on another node of the cluster.
                    let port = try #require(run.nodes["node-1"]?.apiPort)
                    let ready = try await HTTPClient.shared.execute(
                        HTTPClientRequest(url: "http://127.0.0.1:\(port)/readyz"), timeout: .seconds(10))
                    #expect(ready.status.code == 200)
                    #expect(try await run.deadLetters.recent(project: project, count: 10).isEmpty)
                    try await TestServers.control("cluster", "start", "1")
                    restarted = true
                } catch {
                    if !restarted { try? await TestServers.control("cluster", "start", "1") }
                    throw error
                }
            }
        }
    }
}
