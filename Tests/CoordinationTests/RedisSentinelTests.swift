import Foundation
import TestSupport
import Testing

@testable import Coordination

/// Redis behind Sentinel (`scripts/servers sentinel`): a master, a replica, three sentinels.
/// Serialised: the test kills the master.
@Suite("Redis with Sentinel: the master is killed", .serialized, .timeLimit(.minutes(2)))
struct RedisSentinelTests {
    /// Waits until every sentinel names the same master, which says it is one, twice 2 s apart.
    static func settled(_ configuration: RedisConfiguration) async throws {
        guard case .sentinel(let name, let sentinels) = configuration.endpoint else { return }
        // Each sentinel asked alone, as the client asks them (`HiredisContext.masterAddress`).
        func masters() throws -> Set<String> {
            Set(
                try sentinels.map { sentinel in
                    var one = configuration
                    one.endpoint = .sentinel(master: name, sentinels: [sentinel])
                    let (host, port) = try HiredisContext.masterAddress(one)
                    return "\(host):\(port)"
                })
        }
        try await eventually(timeout: .seconds(60)) {
            let first = try masters()
            guard first.count == 1, let master = first.first, !master.isEmpty else {
                throw TestFailure("the sentinels name \(first)")
            }
            try await Task.sleep(for: .seconds(2))
            guard try masters() == first else { throw TestFailure("the sentinels moved on from \(master)") }
            let client = RedisClient(configuration: configuration)
            defer { Task { await client.close() } }
            guard try await client.send("ROLE").array?.first?.string == "master" else {
                throw TestFailure("\(master) is not a master yet")
            }
        }
    }

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

    @Test(
        "over TLS (rediss+sentinel://): the sentinels and the master are reached with TLS, and after a failover the client follows the new master"
    )
    func failoverOverTLS() async throws {
        let url = try TestServers.value("HERALD_TEST_REDIS_SENTINEL_TLS_URL")
        var configuration = try RedisConfiguration(url: url)
        #expect(configuration.tls != nil)
        configuration.reconnectMaxDelay = .milliseconds(200)
        let client = RedisClient(configuration: configuration)
        defer { Task { await client.close() } }
        let key = TestServers.uniqueName("herald-test:sentinel-tls")
        try await client.send("SET", key, "before")
        let before = try await client.send("ROLE")
        #expect(before.array?.first?.string == "master")
        // The master the sentinels name, and the port the client is on: the TLS-only node.
        let (host, port) = try HiredisContext.masterAddress(configuration)
        #expect(try await client.send("CONFIG", "GET", "tls-port").array?.last?.string == "\(port)")

        // A failover the sentinels run (the old master stays up and is demoted): the client asks
        // the sentinels every second and moves to the new master over TLS.
        guard case .sentinel(_, let sentinels) = configuration.endpoint, let sentinel = sentinels.first else {
            throw TestFailure("not a sentinel URL: \(url)")
        }
        var asking = RedisConfiguration(
            endpoint: .tcp(host: sentinel.host, port: sentinel.port), tls: configuration.tls)
        asking.connectTimeout = .seconds(2)
        let sentinelClient = RedisClient(configuration: asking)
        defer { Task { await sentinelClient.close() } }
        #expect(try await sentinelClient.send("SENTINEL", "FAILOVER", "heraldtls").string == "OK")
        let moved = try await eventually(timeout: .seconds(30)) {
            let named = try HiredisContext.masterAddress(configuration)
            guard named != (host, port) else { throw TestFailure("the sentinels still name \(host):\(port)") }
            return named.port
        }
        // Writes land on the new master (one the old master took before its demotion is lost, and
        // written again here).
        try await eventually(timeout: .seconds(30)) {
            try await client.send("SET", key, "after")
            let on = try await client.send("CONFIG", "GET", "tls-port").array?.last?.string
            guard on == "\(moved)", try await client.send("GET", key).string == "after" else {
                throw TestFailure("on the node with tls-port \(on ?? "?"), not the new master's \(moved)")
            }
        }
        #expect(try await client.send("ROLE").array?.first?.string == "master")
    }

    @Test("over TLS with a CA that did not sign the sentinels' certificates: refused, naming TLS and the CA")
    func refusedOverTLS() async throws {
        let url = try TestServers.value("HERALD_TEST_REDIS_SENTINEL_TLS_URL")
        let other = try TestServers.value("HERALD_TEST_OTHER_CA_FILE")
        let ca = try TestServers.value("HERALD_TEST_CA_FILE")
        var configuration = try RedisConfiguration(url: url.replacingOccurrences(of: ca, with: other))
        configuration.connectTimeout = .seconds(2)
        configuration.commandTimeout = .seconds(2)
        let client = RedisClient(configuration: configuration)
        defer { Task { await client.close() } }
        do {
            _ = try await client.send("PING")
            Issue.record("PING succeeded trusting another CA")
        } catch {
            #expect("\(error)".contains("TLS") && "\(error)".contains(other), "\(error)")
        }
    }

    @Test(
        "behind sentinels the master's connection is kept between commands, checked every interval with a sentinel whose connection is kept too"
    )
    func masterConnectionKept() async throws {
        var configuration = try RedisConfiguration(url: try TestServers.value("HERALD_TEST_REDIS_SENTINEL_URL"))
        // The suite's failovers settle first (sentinels may still be moving to the new master):
        // a master change during this test would be a reconnect it does not count.
        try await Self.settled(configuration)
        configuration.sentinelCheckInterval = .milliseconds(100)
        let client = RedisClient(configuration: configuration)
        defer { Task { await client.close() } }
        let key = TestServers.uniqueName("herald-test:sentinel-kept")
        // About 20 checks with the sentinels, one before each command.
        for round in 1...20 {
            try await client.send("SET", key, "\(round)")
            try await Task.sleep(for: .milliseconds(110))
        }
        #expect(try await client.send("GET", key).string == "20")
        #expect(
            client.statistics.reconnects == 0,
            "the master's connection was made again \(client.statistics.reconnects) times for 21 commands")
        #expect(
            client.statistics.sentinelConnects == 1,
            "\(client.statistics.sentinelConnects) connections to a sentinel for about 20 checks: one is kept")
    }
}
