import Coordination
import Foundation
import HeraldModel
import Logging
import TestSupport
import Testing

@Suite("Subscription validation")
struct SubscriptionValidationTests {
    static func valid() -> Subscription {
        Subscription(
            project: "p1", eventTypes: ["compute.instance.*", "!compute.instance.exists"],
            conditions: [
                Condition(field: "payload.state", op: .eq, value: .string("active")),
                Condition(field: "traits.memory_mb", op: .ge, value: .number(1024)),
            ], target: Target(queue: "my-events"), messageTTL: 3600)
    }

    @Test("a well-formed subscription passes and survives a JSON round trip with snake_case keys")
    func valid() throws {
        let subscription = Self.valid()
        try subscription.validate()
        let json = try JSONEncoder().encode(subscription)
        let text = String(decoding: json, as: UTF8.self)
        #expect(text.contains("\"event_types\"") && text.contains("\"message_ttl\""))
        #expect(try JSONDecoder().decode(Subscription.self, from: json) == subscription)
    }

    @Test(
        "each bad field is named",
        arguments: [
            ("event_types", { @Sendable (s: inout Subscription) in s.eventTypes = [] }),
            ("event_types", { @Sendable (s: inout Subscription) in s.eventTypes = ["!compute.*"] }),
            ("event_types[1]", { @Sendable (s: inout Subscription) in s.eventTypes = ["a.*", "bad type"] }),
            ("target.queue", { @Sendable (s: inout Subscription) in s.target.queue = "no/slashes" }),
            ("target.zaqar_url", { @Sendable (s: inout Subscription) in s.target.zaqarURL = "ftp://x" }),
            ("message_ttl", { @Sendable (s: inout Subscription) in s.messageTTL = 59 }),
            (
                "conditions[0]",
                { @Sendable (s: inout Subscription) in
                    s.conditions = [Condition(field: "payload.x", op: .in, value: .string("a"))]
                }
            ),
            (
                "conditions[0]",
                { @Sendable (s: inout Subscription) in
                    s.conditions = [Condition(field: "payload..x", op: .eq, value: .null)]
                }
            ),
            (
                "conditions[2]",
                { @Sendable (s: inout Subscription) in
                    s.conditions.append(Condition(field: "payload.size", op: .gt, value: .bool(true)))
                }
            ),
        ] as [(String, @Sendable (inout Subscription) -> Void)])
    func invalid(field: String, breakIt: @Sendable (inout Subscription) -> Void) {
        var subscription = Self.valid()
        breakIt(&subscription)
        #expect(throws: SubscriptionValidationError.self) { try subscription.validate() }
        do {
            try subscription.validate()
        } catch let error as SubscriptionValidationError {
            #expect(error.field == field, "\(error)")
        } catch {
            Issue.record("\(error)")
        }
    }
}

extension RedisServerTests {
    @Suite("Subscription registry against a real Redis", .timeLimit(.minutes(2)))
    struct SubscriptionRegistryTests {
        let prefix = TestServers.uniqueName("herald-test.registry") + ":"

        func registry() throws -> SubscriptionRegistry {
            SubscriptionRegistry(redis: try RedisConfiguration(url: TestServers.redisURL()), keyPrefix: prefix)
        }

        func subscription(_ project: String, _ queue: String = "q") -> Subscription {
            Subscription(project: project, eventTypes: ["compute.instance.*"], target: Target(queue: queue))
        }

        @Test("create, get, update, delete (its counts and last failure with it); another project sees nothing")
        func crud() async throws {
            let registry = try registry()
            let created = try await registry.create(subscription("p1"))
            #expect(try await registry.get(id: created.id, project: "p1") == created)
            #expect(try await registry.get(id: created.id, project: "p2") == nil)
            #expect(
                try await registry.get(id: created.id, project: nil) == created, "an admin (no project filter) sees it")

            var changed = created
            changed.messageTTL = 7200
            var stolen = changed
            stolen.project = "p2"
            var asP2 = created
            asP2.project = "p2"
            #expect(try await registry.update(stolen, from: asP2) == .missing, "p2 cannot update p1's subscription")
            guard case .updated(let updated) = try await registry.update(changed, from: created) else {
                Issue.record("the update was not made")
                return
            }
            #expect(updated.messageTTL == 7200)
            #expect(updated.updatedAt >= created.updatedAt)
            #expect(try await registry.get(id: created.id, project: "p1")?.messageTTL == 7200)

            // Its counts and its last failure, kept under its id, go with it.
            let redis = try RedisClient(url: TestServers.redisURL())
            let stats = SubscriptionStats(redis: redis, keyPrefix: prefix)
            stats.count([created.id], \.matched)
            try await stats.flush()
            _ = try await redis.send("SET", prefix + "park-failing:" + created.id, "HTTP 503")
            #expect(try await stats.health(subscription: created.id).total.matched == 1)
            #expect(try await registry.delete(id: created.id, project: "p2") == false)
            #expect(try await redis.send("EXISTS", prefix + "stats:" + created.id).integer == 1)
            #expect(try await registry.delete(id: created.id, project: "p1") == true)
            #expect(try await registry.get(id: created.id, project: "p1") == nil)
            #expect(try await redis.send("EXISTS", prefix + "stats:" + created.id).integer == 0)
            #expect(try await redis.send("EXISTS", prefix + "park-failing:" + created.id).integer == 0)
            #expect(try await registry.delete(id: created.id, project: "p1") == false)
        }

        @Test("two changes made from the same record: the second is told to read again, and nothing is lost")
        func changesFromOneRecord() async throws {
            let registry = try registry()
            let created = try await registry.create(subscription("p1"))
            var longer = created
            longer.messageTTL = 7200
            var elsewhere = created
            elsewhere.target = Target(queue: "elsewhere")
            guard case .updated(let first) = try await registry.update(longer, from: created) else {
                Issue.record("the first change was not made")
                return
            }
            #expect(try await registry.update(elsewhere, from: created) == .changedMeanwhile)
            #expect(try await registry.get(id: created.id, project: "p1") == first, "the second wrote nothing")

            // Made again from what is stored now, it goes through, and both changes hold.
            var again = try #require(try await registry.get(id: created.id, project: "p1"))
            again.target = Target(queue: "elsewhere")
            guard case .updated = try await registry.update(again, from: first) else {
                Issue.record("the change made again was not made")
                return
            }
            let stored = try #require(try await registry.get(id: created.id, project: "p1"))
            #expect(stored.messageTTL == 7200 && stored.target.queue == "elsewhere")

            try await registry.delete(id: created.id, project: "p1")
            #expect(try await registry.update(again, from: stored) == .missing)
        }

        @Test("a record stored as other bytes (another writer's key order and spacing) still updates")
        func otherBytesSameRecord() async throws {
            let registry = try registry()
            let created = try await registry.create(subscription("p1"))
            let redis = try RedisClient(url: TestServers.redisURL())
            let object = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(created))
            let respelled = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
            #expect(respelled != (try JSONEncoder().encode(created)), "the bytes differ")
            _ = try await redis.send("SET", prefix + "sub:" + created.id, Array(respelled))
            let read = try #require(try await registry.get(id: created.id, project: "p1"))
            #expect(read == created)
            var changed = read
            changed.messageTTL = 120
            guard case .updated = try await registry.update(changed, from: read) else {
                Issue.record("a record in other bytes could not be updated")
                return
            }
            #expect(try await registry.get(id: created.id, project: "p1")?.messageTTL == 120)
            await redis.close()
        }

        @Test("an invalid subscription is refused before it is stored")
        func invalidIsRefused() async throws {
            let registry = try registry()
            var bad = subscription("p1")
            bad.messageTTL = 10
            await #expect(throws: SubscriptionValidationError.self) { try await registry.create(bad) }
            #expect(try await registry.version() == 0)
        }

        @Test("pages of a project follow the marker, in id order, and end")
        func pagination() async throws {
            let registry = try registry()
            var ids: [String] = []
            for index in 0..<25 {
                ids.append(try await registry.create(subscription("paged", "q\(index)")).id)
            }
            try await registry.create(subscription("other"))
            var seen: [String] = []
            var marker: String?
            var pages = 0
            repeat {
                let page = try await registry.list(project: "paged", limit: 10, marker: marker)
                seen += page.subscriptions.map(\.id)
                marker = page.next
                pages += 1
            } while marker != nil
            #expect(pages == 3)
            #expect(seen == ids.sorted())
            await #expect(throws: SubscriptionValidationError.self) {
                _ = try await registry.list(project: "paged", limit: 0)
            }
        }

        @Test("every change bumps the version; a watcher gets the whole registry, then the change on its notice")
        func watcherOnNotice() async throws {
            let registry = try registry()
            var updates = registry.watch(poll: .seconds(30)).makeAsyncIterator()
            let first = try #require(await updates.next())
            #expect(first.replacesAll && first.all?.isEmpty == true)
            let created = try await registry.create(subscription("p1"))
            // With a 30 s poll, only the pub/sub notice can bring this in time.
            let second = try #require(await updates.next())
            #expect(second.version == first.version + 1)
            #expect(!second.replacesAll)
            #expect(second.changed.mapValues { $0?.id } == [created.id: created.id])
            try await registry.delete(id: created.id, project: "p1")
            let third = try #require(await updates.next())
            #expect(third.changed.count == 1 && third.changed[created.id] == .some(nil), "a deletion is a nil")
        }

        @Test("changes made while the watcher is not looking all arrive, none dropped")
        func mergedChanges() async throws {
            let registry = try registry()
            var updates = registry.watch(poll: .seconds(30)).makeAsyncIterator()
            let first = try #require(await updates.next())
            var made: [Subscription] = []
            for _ in 0..<5 { made.append(try await registry.create(subscription("p1"))) }
            try await registry.delete(id: made[0].id, project: "p1")
            // Until the watcher has read all six notices; none of them is dropped meanwhile.
            var version = first.version
            var live: Set<String> = []
            while version < first.version + 6 {
                let next = try #require(await updates.next())
                if next.replacesAll { live = Set(next.subscriptions(logger: Logger(label: "test")).map(\.id)) }
                for (id, subscription) in next.changed {
                    if subscription == nil { live.remove(id) } else { live.insert(id) }
                }
                version = next.version
            }
            #expect(live == Set(made.dropFirst().map(\.id)))
        }

        @Test("a lost notice costs at most one poll: the version is compared anyway")
        func lostNotice() async throws {
            let registry = try registry()
            let clock = ManualClock()
            var updates = registry.watch(poll: .seconds(1), clock: ElapsedClock(clock)).makeAsyncIterator()
            _ = try #require(await updates.next())
            // Let the watcher's own subscription settle, so nothing but the poll can notice what follows.
            try await Task.sleep(for: .milliseconds(200))
            // Change the registry behind the watcher's back: no PUBLISH.
            let raw = try RedisClient(url: TestServers.redisURL())
            let sneaky = subscription("p1")
            try await raw.send(
                "SET", prefix + "sub:" + sneaky.id, String(decoding: try JSONEncoder().encode(sneaky), as: UTF8.self))
            try await raw.send("SADD", prefix + "subs:all", sneaky.id)
            try await raw.send("INCR", prefix + "subs:version")
            // Only the poll can notice, and it comes when the clock reaches it.
            try await clock.waitForSleepers()
            #expect(clock.requested.allSatisfy { $0 == .seconds(1) }, "\(clock.requested)")
            clock.advance(by: .seconds(1))
            let next = try #require(await updates.next())
            #expect(next.replacesAll)
            #expect(next.subscriptions(logger: Logger(label: "test")).map(\.id) == [sneaky.id])
        }

        /// Every key of the registry under the test's prefix deleted at once, as when Redis
        /// promotes a replica that had not synced (or the keys are flushed).
        func loseRegistry(_ raw: RedisClient) async throws {
            let keys = try await raw.send("KEYS", prefix + "sub*").array?.compactMap(\.string) ?? []
            #expect(keys.contains(prefix + "subs:head") && keys.contains(prefix + "subs:history"), "\(keys)")
            try await raw.send(RedisCommand(["DEL"] + keys))
        }

        /// A registry, a client of the same Redis for changes behind its back, and a watch of it
        /// polled on `clock`, its first update (the whole registry) taken.
        func watched(
            _ clock: ManualClock
        ) async throws -> (SubscriptionRegistry, RedisClient, RegistryWatch.AsyncIterator) {
            let registry = try registry()
            var updates = registry.watch(poll: .seconds(1), clock: ElapsedClock(clock)).makeAsyncIterator()
            _ = try #require(await updates.next())
            return (registry, try RedisClient(url: TestServers.redisURL()), updates)
        }

        @Test(
            "a registry Redis lost is noticed though the changes made after the loss reach the very version held: the watcher gets what is left, with the version it had"
        )
        func registryLost() async throws {
            let registry = try registry()
            let raw = try RedisClient(url: TestServers.redisURL())
            // The poll's clock never moves: only the notices can bring changes.
            var updates = registry.watch(poll: .seconds(1), clock: ElapsedClock(ManualClock())).makeAsyncIterator()
            let first = try #require(await updates.next())
            #expect(first.lostVersion == nil)
            for _ in 0..<2 { try await registry.create(subscription("p1")) }
            var held = first.version
            while held < first.version + 2 { held = try #require(await updates.next()).version }
            try await loseRegistry(raw)
            // Two changes again: the versions 1 and 2, the very ones the watcher held. Only the
            // second notice's head, not the one held, tells (without heads, this waits out the
            // suite's time limit).
            var after: [String] = []
            for _ in 0..<2 { after.append(try await registry.create(subscription("p2")).id) }
            let lost = try #require(await updates.next())
            #expect(lost.lostVersion == held)
            #expect(lost.replacesAll)
            #expect(Set(lost.subscriptions(logger: Logger(label: "test")).map(\.id)) == Set(after))
            await raw.close()
        }

        @Test(
            "during a rolling upgrade: an older Herald's change (a notice without heads, the head left alone) is taken in by its version, not as a loss, and the next change with heads follows it"
        )
        func olderHeraldsChange() async throws {
            // The poll only when the test moves the clock, at the end.
            let clock = ManualClock()
            var (registry, raw, updates) = try await watched(clock)
            try await registry.create(subscription("p1"))
            _ = try #require(await updates.next())
            // What an older Herald's create script does: no head, a notice `<version> <id>`.
            let older = subscription("p1")
            try await raw.send(
                "SET", prefix + "sub:" + older.id, String(decoding: try JSONEncoder().encode(older), as: UTF8.self))
            try await raw.send("SADD", prefix + "subs:all", older.id)
            try await raw.send("ZADD", prefix + "subs:project:p1", 0, older.id)
            let version = try #require(try await raw.send("INCR", prefix + "subs:version").integer)
            try await raw.send("PUBLISH", prefix + "subs:changed", "\(version) \(older.id)")
            let taken = try #require(await updates.next())
            #expect(!taken.replacesAll && taken.lostVersion == nil)
            #expect(taken.changed.keys.sorted() == [older.id])
            let newer = try await registry.create(subscription("p1"))
            let next = try #require(await updates.next())
            #expect(!next.replacesAll && next.changed.keys.sorted() == [newer.id], "followed by its heads")
            // An older Herald's change whose notice is lost: the poll finds the version moved and
            // the head where it was, reads the whole registry, and that is no loss.
            try await raw.send("SREM", prefix + "subs:all", older.id)
            try await raw.send("ZREM", prefix + "subs:project:p1", older.id)
            try await raw.send("DEL", prefix + "sub:" + older.id)
            try await raw.send("INCR", prefix + "subs:version")
            try await clock.waitForSleepers()
            clock.advance(by: .seconds(1))
            let polled = try #require(await updates.next())
            #expect(polled.replacesAll && polled.lostVersion == nil)
            #expect(!polled.subscriptions(logger: Logger(label: "test")).contains { $0.id == older.id })
            await raw.close()
        }

        @Test(
            "a watcher more than the history's length of changes behind is not told of a loss it cannot judge; it takes the registry in"
        )
        func fellBehind() async throws {
            let clock = ManualClock()
            var (registry, raw, updates) = try await watched(clock)
            let made = try await registry.create(subscription("p1"))
            _ = try #require(await updates.next())
            // 1,100 changes whose notices this watcher never gets (its node paused, say): each
            // moves the version and the head as a change does, the history keeping the last 1,024.
            let behind = SubscriptionRegistry.recentHeads + 76
            try await raw.send(
                "EVAL",
                """
                for n = 1, tonumber(ARGV[2]) do
                  local version = redis.call('INCR', ARGV[1] .. 'subs:version')
                  local head = 'skipped-' .. n
                  redis.call('SET', ARGV[1] .. 'subs:head', head)
                  redis.call('ZADD', ARGV[1] .. 'subs:history', version, head)
                  redis.call('ZREMRANGEBYRANK', ARGV[1] .. 'subs:history', 0, -\(SubscriptionRegistry.recentHeads + 1))
                end
                """, 0, prefix, behind)
            try await clock.waitForSleepers()
            clock.advance(by: .seconds(1))
            let polled = try #require(await updates.next())
            #expect(polled.replacesAll && polled.lostVersion == nil && polled.version == Int64(1 + behind))
            #expect(polled.subscriptions(logger: Logger(label: "test")).map(\.id) == [made.id])
            await raw.close()
        }

        @Test(
            "a registry Redis lost the last change of (a replica that had the one before) is noticed, whether the next poll finds the older version or a change made since at the version held",
            arguments: [0, 1])
        func registryPartlyLost(changesSince: Int) async throws {
            let clock = ManualClock()
            var (registry, raw, updates) = try await watched(clock)
            let kept = try await registry.create(subscription("p1"))
            let gone = try await registry.create(subscription("p1"))
            var held: Int64 = 0
            while held < 2 { held = try #require(await updates.next()).version }
            // The registry as it was after the first change: no notice of that.
            // The heads by version: the first change's, then the second's.
            let heads = try await raw.send("ZRANGE", prefix + "subs:history", 0, -1).array?.compactMap(\.string) ?? []
            try #require(heads.count == 2)
            for command in [
                RedisCommand("DEL", prefix + "sub:" + gone.id), RedisCommand("SREM", prefix + "subs:all", gone.id),
                RedisCommand("ZREM", prefix + "subs:project:p1", gone.id),
                RedisCommand("SET", prefix + "subs:version", 1),
                RedisCommand("SET", prefix + "subs:head", heads[0]),
                RedisCommand("ZREM", prefix + "subs:history", heads[1]),
            ] {
                try await raw.send(command)
            }
            var made: [String] = [kept.id]
            for _ in 0..<changesSince { made.append(try await registry.create(subscription("p1")).id) }
            try await clock.waitForSleepers()
            clock.advance(by: .seconds(1))
            var next = try #require(await updates.next())
            while next.lostVersion == nil && !next.replacesAll { next = try #require(await updates.next()) }
            #expect(next.lostVersion == 2 && next.version == Int64(1 + changesSince))
            #expect(Set(next.subscriptions(logger: Logger(label: "test")).map(\.id)) == Set(made))
            await raw.close()
        }
    }

    @Suite("Cluster coordination across processes", .timeLimit(.minutes(4)))
    struct ClusterProcessTests {
        @Test("member processes under kill -9, SIGTERM, SIGSTOP and scale-out: never two actors, always recovered")
        func failoverRound() async throws {
            let binaries = try TestServers.value("HERALD_TEST_BIN_DIR")
            let json = FileManager.default.temporaryDirectory.appendingPathComponent("failover-\(UUID()).json").path
            let status = try await TestServers.run([
                binaries + "/herald-bench", "failover", "--redis-url", try TestServers.redisURL(),
                "--rounds", "1", "--nodes", "3", "--partitions", "64", "--json", json,
            ])
            #expect(status == 0, "herald-bench failover exited with \(status) (2 means two actors were seen)")
            let data = try Data(contentsOf: URL(fileURLWithPath: json))
            let result = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            #expect((result["violations"] as? [String])?.isEmpty == true)
            let scenarios = try #require(result["scenarios"] as? [String: [String: Any]])
            for name in ["kill9", "sigterm", "sigstop", "scaleout"] {
                let recoveries = scenarios[name]?["recoveries"] as? [Double] ?? []
                #expect(recoveries.count == 1, "\(name) recovered in \(recoveries)")
            }
        }
    }
}
