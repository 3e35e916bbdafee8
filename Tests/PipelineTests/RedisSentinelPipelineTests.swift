import AsyncHTTPClient
import Foundation
import HeraldModel
import TestSupport
import Testing

extension PipelineSuites {
    /// A herald node coordinating in a Redis behind Sentinel (`scripts/servers sentinel`):
    /// the master is killed mid-run.
    @Suite("Redis with Sentinel: the master is killed under a herald node", .serialized, .timeLimit(.minutes(5)))
    struct RedisSentinelPipelineTests {
        @Test(
            "the master is killed mid-run: the node follows the sentinels to the new master, takes its partitions again, and every event arrives"
        )
        func masterKilled() async throws {
            try await PipelineRun.with(
                partitions: 8, redisURL: try TestServers.value("HERALD_TEST_REDIS_SENTINEL_URL")
            ) { run in
                let project = "5e1a7c9b3d2f4a6e8b0c1d2e3f4a5b6c"
                let subscription = Subscription(
                    project: project, eventTypes: ["compute.instance.*"], target: Target(queue: run.queue("sentinel")))
                try await run.registry.create(subscription)
                run.trackQueues([(project, subscription.target.queue)])
                try await run.startNodes(1, extra: ["HERALD_EXCHANGES": "nova"], as: .inProcess)
                try await run.waitAllPartitionsHeld()

                let before = try run.publish(run.numberedLines(project: project, 0..<600))
                #expect(await before.wait() == 0, "\(before.tail())")
                try await TestServers.control("sentinel", "kill-master")
                do {
                    let after = try run.publish(run.numberedLines(project: project, 600..<900))
                    #expect(await after.wait() == 0, "\(after.tail())")
                    let seen = try await run.waitForNumbered(
                        queue: subscription.target.queue, project: project, count: 900)
                    #expect(seen == Set(0..<900), "nothing lost across the failover")
                    // Every partition is held again, in the new master.
                    try await run.waitAllPartitionsHeld()
                    let port = try #require(run.nodes["node-1"]?.apiPort)
                    let ready = try await HTTPClient.shared.execute(
                        HTTPClientRequest(url: "http://127.0.0.1:\(port)/readyz"), timeout: .seconds(10))
                    #expect(ready.status.code == 200)
                    try await TestServers.control("sentinel", "restart-old")
                } catch {
                    try? await TestServers.control("sentinel", "restart-old")
                    throw error
                }
            }
        }
    }

    @Suite("Herald nodes coordinating in Redis over TLS (rediss://)", .serialized, .timeLimit(.minutes(5)))
    struct RedisTLSPipelineTests {
        @Test("two nodes on rediss:// with a client certificate: leases, registry changes and every event")
        func overTLS() async throws {
            let url =
                "rediss://localhost:\(try TestServers.value("HERALD_TEST_REDIS_TLS_PORT"))/0?cacertfile=\(try TestServers.value("HERALD_TEST_CA_FILE"))"
                + "&certfile=\(try TestServers.value("HERALD_TEST_CLIENT_CERT_FILE"))&keyfile=\(try TestServers.value("HERALD_TEST_CLIENT_KEY_FILE"))"
            try await PipelineRun.with(partitions: 8, redisURL: url) { run in
                try await run.startNodes(2, extra: ["HERALD_EXCHANGES": "nova"], as: .inProcess)
                try await run.waitAllPartitionsHeld()
                // Created after the nodes started: it reaches them through the registry over TLS.
                let project = "7d2e4f6a8b0c1d3e5f7a9b1c2d3e4f5a"
                let subscription = Subscription(
                    project: project, eventTypes: ["compute.instance.*"], target: Target(queue: run.queue("tls")))
                try await run.registry.create(subscription)
                run.trackQueues([(project, subscription.target.queue)])
                try await Task.sleep(for: .seconds(2))
                let publisher = try run.publish(run.numberedLines(project: project, 0..<300))
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                let seen = try await run.waitForNumbered(queue: subscription.target.queue, project: project, count: 300)
                #expect(seen == Set(0..<300))
            }
        }
    }
}
