import Coordination
import Foundation
import TestSupport
import Testing

@Suite("Redis configuration from URLs")
struct RedisConfigurationTests {
    @Test(
        "valid URLs",
        arguments: [
            (
                "redis://127.0.0.1:7000/3", RedisConfiguration.Endpoint.tcp(host: "127.0.0.1", port: 7000), 3,
                nil as String?, nil as String?
            ),
            ("redis://localhost", .tcp(host: "localhost", port: 6379), 0, nil, nil),
            ("redis://:s3cret@db.example:6380", .tcp(host: "db.example", port: 6380), 0, nil, "s3cret"),
            ("redis://herald:p%40ss@10.0.0.1:6379/2", .tcp(host: "10.0.0.1", port: 6379), 2, "herald", "p@ss"),
            ("unix:///run/redis.sock?db=5", .unix(path: "/run/redis.sock"), 5, nil, nil),
            (
                "redis+sentinel://:pw@s1:26380,s2/mymaster/2",
                .sentinel(
                    master: "mymaster", sentinels: [.init(host: "s1", port: 26380), .init(host: "s2", port: 26379)]), 2,
                nil, "pw"
            ),
            (
                "redis+sentinel://s1/herald", .sentinel(master: "herald", sentinels: [.init(host: "s1", port: 26379)]),
                0, nil, nil
            ),
        ])
    func parses(
        url: String, endpoint: RedisConfiguration.Endpoint, database: Int, user: String?, password: String?
    ) throws {
        let configuration = try RedisConfiguration(url: url)
        #expect(configuration.endpoint == endpoint)
        #expect(configuration.database == database)
        #expect(configuration.user == user)
        #expect(configuration.password == password)
    }

    @Test(
        "invalid URLs name the bad part",
        arguments: [
            ("http://127.0.0.1:6379", "scheme 'http'"),
            ("redis://127.0.0.1:6379/abc", "'/abc' is not a database number"),
            ("redis://127.0.0.1:99999", "port"),
            (
                "rediss://127.0.0.1?cacertfile=/nonexistent/ca.pem",
                "cacertfile '/nonexistent/ca.pem' is not a readable file"
            ),
            ("rediss://127.0.0.1?verify=false", "always checked"),
            ("rediss://:secret@127.0.0.1?certfile=/etc/hostname", "certfile and keyfile go together"),
            ("unix://", "no socket path"),
            ("redis+sentinel://:secret@s1,s2/", "names the master"),
            ("redis+sentinel://:secret@s1:99999/m", "sentinel port"),
            ("redis+sentinel://:secret@s1/m/x", "not a database number"),
            ("redis+sentinel://:secret@s1/m?frobnicate=1", "unknown option 'frobnicate'"),
            ("redis+sentinel:///m", "sentinels"),
            ("redis+sentinel://:secret@s1/m?cacertfile=/etc/hostname", "unknown option 'cacertfile'"),
            ("rediss+sentinel://:secret@s1/m?verify=false", "always checked"),
            ("rediss+sentinel://:secret@s1/m?cacertfile=/nonexistent/ca.pem", "is not a readable file"),
            ("rediss+sentinel://:secret@s1/m?certfile=/etc/hostname", "certfile and keyfile go together"),
            ("rediss+sentinel://:secret@s1/m?frobnicate=1", "known: sentinel_password, cacertfile"),
            (
                "rediss+sentinel://s1/m?sentinel_password=secret&cacertfile=/nonexistent/ca.pem",
                "is not a readable file"
            ),
            ("redis://:secret@127.0.0.1:6379/abc", "is not a database number"),
            ("unix:///run/redis.sock?password=secret&db=x", "is not a database number"),
        ])
    func rejects(url: String, mention: String) {
        do {
            _ = try RedisConfiguration(url: url)
            Issue.record("\(url) was accepted")
        } catch let error as CoordinationError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.description.contains(mention), "\(error) should mention \(mention)")
            #expect(!error.description.contains("secret"), "a password never appears: \(error)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

@Suite("Redis TLS settings from rediss:// URLs")
struct RedisTLSConfigurationTests {
    @Test("rediss:// is TCP with TLS, checked against the system's CAs unless a CA file is named")
    func parsesTLS() throws {
        let plain = try RedisConfiguration(url: "rediss://:pw@redis.example:6380/2")
        #expect(plain.endpoint == .tcp(host: "redis.example", port: 6380))
        #expect(plain.database == 2)
        #expect(plain.tls == RedisConfiguration.TLS())
        #expect(plain.redactedDescription == "rediss://***@redis.example:6380/2")
        #expect(try RedisConfiguration(url: "redis://redis.example").tls == nil)

        let file = FileManager.default.temporaryDirectory.appendingPathComponent(TestServers.uniqueName("ca") + ".pem")
            .path
        #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let named = try RedisConfiguration(
            url: "rediss://redis.example?cacertfile=\(file)&certfile=\(file)&keyfile=\(file)")
        #expect(named.tls == RedisConfiguration.TLS(caFile: file, certificateFile: file, keyFile: file))

        // Behind Sentinel: the sentinels and the master they name, both over TLS.
        let sentinels = try RedisConfiguration(
            url: "rediss+sentinel://:pw@s1:26380,s2/mymaster/2?sentinel_password=sp&cacertfile=\(file)")
        #expect(
            sentinels.endpoint
                == .sentinel(
                    master: "mymaster", sentinels: [.init(host: "s1", port: 26380), .init(host: "s2", port: 26379)]))
        #expect(sentinels.database == 2 && sentinels.password == "pw" && sentinels.sentinelPassword == "sp")
        #expect(sentinels.tls == RedisConfiguration.TLS(caFile: file))
        #expect(sentinels.redactedDescription == "rediss+sentinel://***@s1:26380,s2:26379/mymaster/2")
        #expect(try RedisConfiguration(url: "redis+sentinel://s1/m").tls == nil)
    }
}

/// Every suite that uses the test Redis lives in here: serialised, because one test restarts it.
@Suite("Against the real Redis", .serialized)
enum RedisServerTests {}

extension RedisServerTests {
    @Suite("Redis over TLS against a real Redis (rediss://)", .timeLimit(.minutes(2)))
    struct RedisTLSTests {
        /// The test Redis's TLS port, which asks for a client certificate (Redis's default).
        func url(host: String = "localhost", ca: String? = nil, clientCertificate: Bool = true) throws -> String {
            let port = try TestServers.value("HERALD_TEST_REDIS_TLS_PORT")
            var options = ["cacertfile=\(try ca ?? TestServers.value("HERALD_TEST_CA_FILE"))"]
            if clientCertificate {
                options += [
                    "certfile=\(try TestServers.value("HERALD_TEST_CLIENT_CERT_FILE"))",
                    "keyfile=\(try TestServers.value("HERALD_TEST_CLIENT_KEY_FILE"))",
                ]
            }
            return "rediss://\(host):\(port)/0?" + options.joined(separator: "&")
        }

        @Test(
            "commands, a pipeline of 1,000 with a 1 MiB value, and pub/sub go through TLS",
            arguments: ["localhost", "127.0.0.1"])
        func roundTrips(host: String) async throws {
            let client = try RedisClient(url: url(host: host))
            let key = TestServers.uniqueName("herald-test.tls")
            let big = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            try await client.send(RedisCommand("SET", key, big, "EX", 60))
            #expect(try await client.send(RedisCommand("GET", key)) == .bulk(big))
            let replies = try await client.pipeline((0..<1000).map { _ in RedisCommand("INCR", key + ".n") })
            #expect(replies.last == .integer(1000))
            _ = try await client.send("DEL", key + ".n")
            // The plain port sees what went in over TLS: the same server.
            #expect(
                try await RedisClient(url: TestServers.redisURL()).send("STRLEN", key) == .integer(Int64(big.count)))

            let channel = TestServers.uniqueName("herald-test.tls-channel")
            let subscriber = RedisSubscriber(configuration: try RedisConfiguration(url: url(host: host)))
            var events = subscriber.subscribe(to: [channel]).makeAsyncIterator()
            #expect(await events.next() == .subscribed(reconnected: false))
            for index in 0..<50 {
                #expect(try await client.send(RedisCommand("PUBLISH", channel, "message \(index)")) == .integer(1))
            }
            for index in 0..<50 {
                #expect(await events.next() == .message(channel: channel, payload: Array("message \(index)".utf8)))
            }
        }

        @Test("a certificate no trusted CA signed is refused, naming why", arguments: ["other", "system"])
        func wrongCA(trusting: String) async throws {
            let configuration: RedisConfiguration
            if trusting == "other" {
                configuration = try RedisConfiguration(url: url(ca: TestServers.value("HERALD_TEST_OTHER_CA_FILE")))
            } else {
                var system = try RedisConfiguration(url: url())
                system.tls?.caFile = nil
                configuration = system
            }
            do {
                try await RedisClient(configuration: configuration).send("PING")
                Issue.record("TLS succeeded trusting the \(trusting) CA")
            } catch let error as CoordinationError {
                #expect(error.code == .connectionFailed)
                #expect(error.description.contains("certificate was refused"), "\(error)")
                #expect(
                    error.description.contains(trusting == "other" ? "checked against" : "system's CAs"), "\(error)")
            }
        }

        @Test("without the client certificate the server refuses the connection")
        func clientCertificateRequired() async throws {
            do {
                try await RedisClient(url: url(clientCertificate: false)).send("PING")
                Issue.record("the server took a connection without a client certificate")
            } catch let error as CoordinationError {
                #expect([.connectionFailed, .connectionLost].contains(error.code), "\(error)")
            }
        }
    }

    @Suite("Redis client against a real Redis", .timeLimit(.minutes(2)))
    struct RedisClientTests {
        let client: RedisClient

        init() throws {
            client = try RedisClient(url: TestServers.redisURL())
        }

        @Test("binary values and keys with NUL bytes round-trip")
        func binarySafe() async throws {
            let key: [UInt8] = Array(TestServers.uniqueName("herald-test.bin").utf8) + [0, 1, 0]
            let value: [UInt8] = (0..<1024).map { UInt8($0 % 256) }
            try await client.send(RedisCommand("SET", key, value, "EX", 60))
            let reply = try await client.send(RedisCommand("GET", key))
            #expect(reply.bytes == value)
            let length = try await client.send(RedisCommand("STRLEN", key))
            #expect(length == .integer(1024))
            // The key without its NUL tail is a different key.
            let truncated = try await client.send(RedisCommand("EXISTS", Array(key.prefix(key.count - 3))))
            #expect(truncated == .integer(0))
        }

        @Test("typed replies: status, integer, null, array, error")
        func replyTypes() async throws {
            let key = TestServers.uniqueName("herald-test.types")
            #expect(try await client.send("SET", key, "1", "EX", 60) == .status("OK"))
            #expect(try await client.send("INCRBY", key, 41) == .integer(42))
            #expect(try await client.send("GET", key + ".missing") == .null)
            try await client.send("RPUSH", key + ".list", "a", "b")
            try await client.send("EXPIRE", key + ".list", 60)
            #expect(
                try await client.send("LRANGE", key + ".list", 0, -1)
                    == .array([.bulk(Array("a".utf8)), .bulk(Array("b".utf8))]))
            await #expect(throws: CoordinationError.self) { try await client.send("NOSUCHCOMMAND") }
            do {
                try await client.send("INCR", key + ".list")
                Issue.record("INCR on a list succeeded")
            } catch let error as CoordinationError {
                #expect(error.code == .serverError)
                #expect(error.underlying?.contains("WRONGTYPE") == true, "the server's message is kept: \(error)")
            }
        }

        @Test("1,000 pipelined commands go in one round trip")
        func pipeline() async throws {
            let prefix = TestServers.uniqueName("herald-test.pipe")
            let before = client.statistics
            let sets = (0..<1000).map { RedisCommand("SET", "\(prefix).\($0)", "value-\($0)", "EX", 60) }
            let replies = try await client.pipeline(sets)
            let after = client.statistics
            #expect(replies.count == 1000)
            #expect(replies.allSatisfy { $0 == .status("OK") })
            #expect(after.roundTrips - before.roundTrips == 1)
            #expect(after.commands - before.commands == 1000)

            let values = try await client.pipeline((0..<1000).map { RedisCommand("GET", "\(prefix).\($0)") })
            #expect(values.enumerated().allSatisfy { $0.element.string == "value-\($0.offset)" })
        }

        @Test("an error reply inside a pipeline stays in its place")
        func pipelineError() async throws {
            let key = TestServers.uniqueName("herald-test.pipe-error")
            let replies = try await client.pipeline([
                RedisCommand("SET", key, "x", "EX", 60),
                RedisCommand("INCR", key),
                RedisCommand("GET", key),
            ])
            #expect(replies[0] == .status("OK"))
            guard case .error(let text) = replies[1] else {
                Issue.record("expected an error reply, got \(replies[1])")
                return
            }
            #expect(text.contains("not an integer"))
            #expect(replies[2].string == "x")
        }

        @Test("EVALSHA reloads the script after SCRIPT FLUSH")
        func evalshaAfterFlush() async throws {
            let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1]) + 0 -- \(UUID())")
            let key = TestServers.uniqueName("herald-test.lua")
            #expect(try await client.evalSHA(script, keys: [key], arguments: [5]) == .integer(5))
            try await client.send("SCRIPT", "FLUSH")
            #expect(try await client.evalSHA(script, keys: [key], arguments: [5]) == .integer(10))
            try await client.send("DEL", key)
        }

        @Test("AUTH with an ACL user and password, and a wrong password is refused with the server's reason")
        func authentication() async throws {
            let user = TestServers.uniqueName("herald-test-user")
            try await client.send("ACL", "SETUSER", user, "on", ">pa ss", "~*", "+@all")
            defer { Task { [client] in _ = try? await client.send("ACL", "DELUSER", user) } }
            let base = try RedisConfiguration(url: TestServers.redisURL())
            var configuration = base
            configuration.user = user
            configuration.password = "pa ss"
            let authed = RedisClient(configuration: configuration)
            #expect(try await authed.send("ACL", "WHOAMI").string == user)

            configuration.password = "wrong"
            let refused = RedisClient(configuration: configuration)
            do {
                try await refused.send("PING")
                Issue.record("a wrong password was accepted")
            } catch let error as CoordinationError {
                #expect(error.code == .serverError)
                #expect(error.description.contains("AUTH"))
                #expect(error.underlying?.contains("WRONGPASS") == true, "\(error)")
            }
        }

        @Test("the database comes from the URL, and a unix socket works")
        func databaseAndUnixSocket() async throws {
            let key = TestServers.uniqueName("herald-test.db")
            let socket = try TestServers.redisSocket()
            let db3 = try RedisClient(url: "unix://\(socket)?db=3")
            try await db3.send("SET", key, "in-3", "EX", 60)
            #expect(try await db3.send("GET", key).string == "in-3")
            #expect(try await client.send("GET", key) == .null, "db 0 must not see db 3's key")
            let tcpDB3 = try RedisClient(url: TestServers.redisURL().replacingOccurrences(of: "/0", with: "/3"))
            #expect(try await tcpDB3.send("GET", key).string == "in-3")
        }

        @Test("a refused connection names the endpoint")
        func refused() async throws {
            let closedPort = try RedisClient(url: "redis://127.0.0.1:1")
            do {
                try await closedPort.send("PING")
                Issue.record("connected to port 1")
            } catch let error as CoordinationError {
                #expect(error.code == .connectionFailed)
                #expect(error.description.contains("127.0.0.1:1"))
            }
            // The next call inside the backoff window fails fast and says so.
            await #expect(throws: CoordinationError.self) { try await closedPort.send("PING") }
        }

        @Test("a published message reaches a subscriber, binary payload intact")
        func publishSubscribe() async throws {
            let channel = TestServers.uniqueName("herald-test.channel")
            let subscriber = RedisSubscriber(configuration: try RedisConfiguration(url: TestServers.redisURL()))
            var events = subscriber.subscribe(to: [channel]).makeAsyncIterator()
            #expect(await events.next() == .subscribed(reconnected: false))
            let payload: [UInt8] = [0, 255, 10, 0, 42]
            #expect(try await client.send(RedisCommand("PUBLISH", channel, payload)) == .integer(1))
            #expect(await events.next() == .message(channel: channel, payload: payload))
        }

        @Test("client and subscriber recover after the server restarts")
        func recoversAfterRestart() async throws {
            let channel = TestServers.uniqueName("herald-test.restart")
            var configuration = try RedisConfiguration(url: TestServers.redisURL())
            configuration.reconnectMaxDelay = .milliseconds(300)
            let restarting = RedisClient(configuration: configuration)
            let subscriber = RedisSubscriber(configuration: configuration)
            var events = subscriber.subscribe(to: [channel]).makeAsyncIterator()
            #expect(await events.next() == .subscribed(reconnected: false))
            #expect(try await restarting.send("PING") == .status("PONG"))

            try await TestServers.control("restart", "redis")

            // The first command after the restart may fail (the old socket is dead); then it heals.
            let pong = try await eventually { try await restarting.send("PING") }
            #expect(pong == .status("PONG"))
            #expect(restarting.statistics.reconnects >= 1)
            #expect(await events.next() == .subscribed(reconnected: true))
            let delivered = try await eventually { () -> RedisReply in
                let reply = try await restarting.send("PUBLISH", channel, "after-restart")
                guard reply == .integer(1) else { throw CoordinationError(.unexpectedReply, "no subscriber yet") }
                return reply
            }
            #expect(delivered == .integer(1))
            #expect(await events.next() == .message(channel: channel, payload: Array("after-restart".utf8)))
        }
    }
}
