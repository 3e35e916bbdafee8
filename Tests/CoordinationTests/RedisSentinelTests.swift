import Coordination
import Foundation
import TestSupport
import Testing

/// Redis behind Sentinel (`scripts/servers sentinel`): a master, a replica, three sentinels.
/// Serialised: the test kills the master.
@Suite("Redis with Sentinel: the master is killed", .serialized, .timeLimit(.minutes(2)))
struct RedisSentinelTests {
    @Test("the client finds the master through the sentinels, and after the master is killed writes go to the new one")
    func failover() async throws {
        let url = try TestServers.value("HERALD_TEST_REDIS_SENTINEL_URL")
        var configuration = try RedisConfiguration(url: url)
        configuration.reconnectMaxDelay = .milliseconds(200)
        let client = RedisClient(configuration: configuration)
        defer { Task { await client.close() } }
        let key = TestServers.uniqueName("herald-test:sentinel")
        try await client.send("SET", key, "before")
        #expect(try await client.send("ROLE").array?.first?.string == "master")

        try await TestServers.control("sentinel", "kill-master")
        do {
            // Writes fail while there is no master, then land on the new one (about 2 to 4 s).
            let started = ContinuousClock.now
            let written: Duration = try await eventually(timeout: .seconds(30)) {
                try await client.send("SET", key, "after")
                return ContinuousClock.now - started
            }
            #expect(try await client.send("GET", key).string == "after")
            #expect(try await client.send("ROLE").array?.first?.string == "master")
            print("sentinel failover: writes resumed \(written) after the master was killed")
            try await TestServers.control("sentinel", "restart-old")
        } catch {
            try? await TestServers.control("sentinel", "restart-old")
            throw error
        }
    }
}
