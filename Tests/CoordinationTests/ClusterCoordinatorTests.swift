import Coordination
import Foundation
import Synchronization
import TestSupport
import Testing

/// Several coordinators in this process against the real Redis, each with its own key
/// prefix; an `OwnershipTimeline` records every node's acting set and fails on any overlap.
final class TestCluster: Sendable {
    let prefix = TestServers.uniqueName("herald-test.cluster") + ":"
    let partitions: Int
    let timeline = OwnershipTimeline()
    let nodes = Mutex<[String: ClusterCoordinator]>([:])

    init(partitions: Int) {
        self.partitions = partitions
    }

    var now: Double { Date().timeIntervalSince1970 }

    @discardableResult
    func add(_ name: String, partitions: Int? = nil) async throws -> ClusterCoordinator {
        let configuration = ClusterConfiguration(
            nodeID: name, keyPrefix: prefix, partitionCount: partitions ?? self.partitions)
        let timeline = timeline
        let coordinator = try ClusterCoordinator(
            configuration: configuration,
            redis: try RedisConfiguration(url: TestServers.redisURL()),
            observer: { timeline.record(name, $0) }
        )
        try await coordinator.start()
        // The consumer side: drain at once and confirm every revoke.
        Task {
            for await event in coordinator.events {
                if case .revoke(let partition) = event { coordinator.confirmRevoked(partition) }
            }
        }
        nodes.withLock { $0[name] = coordinator }
        return coordinator
    }

    func node(_ name: String) -> ClusterCoordinator { nodes.withLock { $0[name]! } }

    func remove(_ name: String) { nodes.withLock { $0[name] = nil } }

    /// Waits until the live nodes act on every partition with balanced shares.
    func waitBalanced(_ names: [String], timeout: Duration = .seconds(15)) async throws -> Double {
        let start = now
        try await eventually(timeout: timeout) {
            let shares = names.map { self.node($0).acting().count }
            let total = shares.reduce(0, +)
            let union = names.reduce(into: Set<Int>()) { $0.formUnion(self.node($1).acting().keys) }
            guard total == partitions, union.count == partitions, shares.max()! - shares.min()! <= 1 else {
                throw CoordinationError(
                    .unexpectedReply, "not balanced yet: \(zip(names, shares).map { "\($0)=\($1)" })")
            }
        }
        return now - start
    }

    func expectNoOverlap(sourceLocation: SourceLocation = #_sourceLocation) {
        let violations = timeline.violations(now: now)
        #expect(violations.isEmpty, "two actors at once: \(violations.prefix(5))", sourceLocation: sourceLocation)
    }

    func shutdown() async {
        for coordinator in nodes.withLock({ Array($0.values) }) { await coordinator.abandon() }
    }
}

extension RedisServerTests {
    @Suite("Cluster coordination in one process", .timeLimit(.minutes(3)))
    struct ClusterCoordinatorTests {
        @Test("three nodes converge on a balanced assignment, each partition acted on once")
        func convergence() async throws {
            let cluster = TestCluster(partitions: 64)
            for name in ["a", "b", "c"] { try await cluster.add(name) }
            _ = try await cluster.waitBalanced(["a", "b", "c"])
            let leaders = ["a", "b", "c"].filter { cluster.node($0).isLeader }
            #expect(leaders.count == 1, "exactly one leader: \(leaders)")
            cluster.expectNoOverlap()
            await cluster.shutdown()
        }

        @Test("a graceful leave hands its partitions over, drained before released")
        func gracefulLeave() async throws {
            let cluster = TestCluster(partitions: 64)
            for name in ["a", "b", "c"] { try await cluster.add(name) }
            _ = try await cluster.waitBalanced(["a", "b", "c"])
            let leaving = cluster.node("c")
            let redis = try RedisClient(url: TestServers.redisURL())
            func holders() async throws -> [String] {
                try await redis.pipeline((0..<64).map { RedisCommand("GET", cluster.prefix + "lease:\($0)") })
                    .compactMap { $0.string?.split(separator: "|").first?.split(separator: "#").first.map(String.init) }
            }
            #expect(try await holders().contains("c"), "the leases name their holders as read here")
            let started = cluster.now
            await leaving.leave()
            // Released, not left to expire: once `leave` returns, no lease names it.
            let holders = try await holders()
            #expect(
                !holders.contains("c"), "leases still held by the node that left: \(holders.filter { $0 == "c" }.count)"
            )
            await redis.close()
            cluster.remove("c")
            _ = try await cluster.waitBalanced(["a", "b"])
            #expect(cluster.timeline.fullCoverage(after: started, partitionCount: 64, now: cluster.now) != nil)
            cluster.expectNoOverlap()
            await cluster.shutdown()
        }

        @Test("a crashed node's partitions are taken over once its leases expire")
        func crash() async throws {
            let cluster = TestCluster(partitions: 64)
            for name in ["a", "b", "c"] { try await cluster.add(name) }
            _ = try await cluster.waitBalanced(["a", "b", "c"])
            let crashed = cluster.node("b")
            let crashedAt = cluster.now
            await crashed.abandon()  // closes its Redis connection without releasing, as kill -9 would
            cluster.timeline.died("b", at: crashedAt)
            cluster.remove("b")
            _ = try await cluster.waitBalanced(["a", "c"])
            let recovered = try #require(
                cluster.timeline.fullCoverage(after: crashedAt, partitionCount: 64, now: cluster.now))
            #expect(recovered - crashedAt < 3, "all partitions acted on again after \(recovered - crashedAt) s")
            cluster.expectNoOverlap()
            await cluster.shutdown()
        }

        @Test("a paused node (as under SIGSTOP) loses its partitions and acts on none of them when resumed")
        func pause() async throws {
            let cluster = TestCluster(partitions: 32)
            for name in ["a", "b", "c"] { try await cluster.add(name) }
            _ = try await cluster.waitBalanced(["a", "b", "c"])
            let paused = cluster.node("c")
            let held = paused.acting()
            #expect(!held.isEmpty)
            let pausedAt = cluster.now
            paused.pause()
            // After the member deadline (5 s) the others take everything over.
            try await eventually(timeout: .seconds(12)) {
                let union = ["a", "b"].reduce(into: Set<Int>()) { $0.formUnion(cluster.node($1).acting().keys) }
                guard union.count == 32 else {
                    throw CoordinationError(.unexpectedReply, "\(union.count) of 32 covered")
                }
            }
            #expect(cluster.now - pausedAt < 8)
            // Resumed: before it even beats, it acts on nothing it held.
            paused.resume()
            #expect(paused.acting().isEmpty)
            cluster.expectNoOverlap()
            // It rejoins and gets a fair share back.
            _ = try await cluster.waitBalanced(["a", "b", "c"])
            cluster.expectNoOverlap()
            await cluster.shutdown()
        }

        @Test("the leader lease moves when its holder dies, and the new leader reassigns")
        func leaderChange() async throws {
            let cluster = TestCluster(partitions: 16)
            for name in ["a", "b", "c"] { try await cluster.add(name) }
            _ = try await cluster.waitBalanced(["a", "b", "c"])
            let leader = try #require(["a", "b", "c"].first { cluster.node($0).isLeader })
            let crashedAt = cluster.now
            await cluster.node(leader).abandon()
            cluster.timeline.died(leader, at: crashedAt)
            cluster.remove(leader)
            let survivors = ["a", "b", "c"].filter { $0 != leader }
            _ = try await cluster.waitBalanced(survivors)
            #expect(survivors.filter { cluster.node($0).isLeader }.count == 1)
            cluster.expectNoOverlap()
            await cluster.shutdown()
        }

        @Test("a node configured with another partition count refuses to start, naming both counts")
        func partitionCountMismatch() async throws {
            let cluster = TestCluster(partitions: 64)
            try await cluster.add("a")
            do {
                try await cluster.add("b", partitions: 128)
                Issue.record("a node with 128 partitions joined a 64-partition cluster")
            } catch let error as CoordinationError {
                #expect(error.code == .invalidConfiguration)
                #expect(error.description.contains("64") && error.description.contains("128"), "\(error)")
            }
            await cluster.shutdown()
        }

        @Test(
            "the partition count Redis lost (a replica promoted before it synced) is written again by the next beat: a node with another count still cannot join"
        )
        func partitionCountRestored() async throws {
            let cluster = TestCluster(partitions: 64)
            try await cluster.add("a")
            let raw = try RedisClient(url: TestServers.redisURL())
            try await raw.send("DEL", cluster.prefix + "partitions")
            try await eventually(timeout: .seconds(10)) {
                guard try await raw.send("GET", cluster.prefix + "partitions").integer == 64 else {
                    throw TestFailure("the partition count is not back yet")
                }
            }
            await #expect(throws: CoordinationError.self) { try await cluster.add("b", partitions: 128) }
            await raw.close()
            await cluster.shutdown()
        }

        @Test("a bad node id is refused before anything starts")
        func badNodeID() throws {
            #expect(throws: CoordinationError.self) {
                _ = try ClusterCoordinator(
                    configuration: ClusterConfiguration(nodeID: "bad id|x"),
                    redis: RedisConfiguration(url: "redis://127.0.0.1:1"))
            }
        }
    }
}
