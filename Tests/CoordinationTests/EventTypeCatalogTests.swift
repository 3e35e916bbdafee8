import Coordination
import Foundation
import TestSupport
import Testing

@Suite("Event types per project in Redis", .serialized)
struct EventTypeCatalogTests {
    @Test(
        "types are counted per project, most frequent first, with the last sample; a project keeps at most its limit of types (more are refused, not grown); samples over the size bound are not kept; a sample is asked for once per type and project between flushes"
    )
    func catalog() async throws {
        let redis = try RedisClient(url: TestServers.redisURL())
        let prefix = TestServers.uniqueName("herald-test.types") + ":"
        let catalog = EventTypeCatalog(redis: redis, keyPrefix: prefix, maxTypesPerProject: 3, sampleBytes: 64)
        #expect(catalog.seen(project: "p1", eventType: "compute.instance.update"))
        #expect(!catalog.seen(project: "p1", eventType: "compute.instance.update"), "one sample per flush")
        catalog.sample(
            project: "p1", eventType: "compute.instance.update",
            json: Array(#"{"event_type":"compute.instance.update","n":1}"#.utf8))
        _ = catalog.seen(project: "p1", eventType: "compute.instance.update")
        #expect(catalog.seen(project: "p1", eventType: "volume.create.end"))
        catalog.sample(
            project: "p1", eventType: "volume.create.end",
            json: Array(("{\"x\":\"" + String(repeating: "y", count: 100) + "\"}").utf8))
        #expect(catalog.seen(project: "p2", eventType: "port.create.end"))
        #expect(try await catalog.flush() == 3)

        let one = try await catalog.list(project: "p1")
        #expect(one.map(\.eventType) == ["compute.instance.update", "volume.create.end"])
        #expect(one.map(\.count) == [3, 1])
        #expect(one.first?.sample == #"{"event_type":"compute.instance.update","n":1}"#)
        #expect(one.last?.sample == nil, "over 64 bytes: no sample")
        #expect(one.allSatisfy { abs(($0.lastSeen ?? 0) - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000 })
        #expect(try await catalog.list(project: "p2").map(\.eventType) == ["port.create.end"], "each project its own")
        #expect(try await catalog.list(project: "p3").isEmpty)

        // At most 3 types for p1: the fourth and fifth are refused; known ones still count.
        for type in ["a.b", "c.d", "e.f", "compute.instance.update"] {
            _ = catalog.seen(project: "p1", eventType: type)
        }
        try await catalog.flush()
        let capped = try await catalog.list(project: "p1")
        #expect(capped.count == 3, "\(capped.map(\.eventType))")
        #expect(capped.first { $0.eventType == "compute.instance.update" }?.count == 4)
        #expect(try await redis.send("HGET", prefix + "types-refused", "count").string == "2")
    }

    @Test(
        "countedWithoutSample counts an event only when no sample of it is due (its pair is pending, or no room for it): otherwise it leaves it to seen, counted once"
    )
    func countedWithoutSample() async throws {
        let catalog = EventTypeCatalog(
            redis: try RedisClient(url: TestServers.redisURL()),
            keyPrefix: TestServers.uniqueName("herald-test.types") + ":", maxPending: 2)
        #expect(!catalog.countedWithoutSample(project: "p", eventType: "a"), "a sample is due: not counted here")
        #expect(catalog.seen(project: "p", eventType: "a"), "counted by seen, which asks for the sample")
        #expect(catalog.countedWithoutSample(project: "p", eventType: "a"))
        #expect(catalog.countedWithoutSample(project: "p", eventType: "a"))
        #expect(catalog.seen(project: "p", eventType: "b"))
        #expect(catalog.countedWithoutSample(project: "p", eventType: "c"), "no room: dropped, as seen would")
        #expect(catalog.droppedPairs == 1)
        try await catalog.flush()
        #expect(try await catalog.list(project: "p").first { $0.eventType == "a" }?.count == 3)
    }

    @Test(
        "with sampleBytes 0 no sample is ever wanted or kept and every event is counted; a project's keys live retentionDays after its last write"
    )
    func noSamplesAndRetention() async throws {
        let redis = try RedisClient(url: TestServers.redisURL())
        let prefix = TestServers.uniqueName("herald-test.types") + ":"
        let catalog = EventTypeCatalog(redis: redis, keyPrefix: prefix, sampleBytes: 0, retentionDays: 2)
        #expect(!catalog.seen(project: "p", eventType: "a"), "no sample wanted")
        #expect(catalog.countedWithoutSample(project: "p", eventType: "b"), "counted: seen will not be asked")
        #expect(catalog.countedWithoutSample(project: "p", eventType: "a"))
        catalog.sample(project: "p", eventType: "a", json: Array("{}".utf8))
        #expect(try await catalog.flush() == 2)
        let entries = try await catalog.list(project: "p")
        #expect(entries.map(\.eventType) == ["a", "b"] && entries.map(\.count) == [2, 1])
        #expect(entries.allSatisfy { $0.sample == nil })
        #expect(try await redis.send("EXISTS", prefix + "types-sample:p").integer == 0)
        let left = try #require(try await redis.send("PTTL", prefix + "types:p").integer)
        #expect((2 * 86_400_000 - 60_000...2 * 86_400_000).contains(left), "\(left) ms left")
    }

    @Test("pairs beyond the pending bound are dropped and counted, not grown")
    func bounded() async throws {
        let catalog = EventTypeCatalog(
            redis: try RedisClient(url: TestServers.redisURL()),
            keyPrefix: TestServers.uniqueName("herald-test.types") + ":", maxPending: 2)
        #expect(catalog.seen(project: "p", eventType: "a"))
        #expect(catalog.seen(project: "p", eventType: "b"))
        #expect(!catalog.seen(project: "p", eventType: "c"))
        #expect(catalog.droppedPairs == 1)
        #expect(try await catalog.flush() == 2)
    }
}
