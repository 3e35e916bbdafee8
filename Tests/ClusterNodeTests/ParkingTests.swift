import Coordination
import Delivery
import Foundation
import HeraldModel
import Logging
import Messaging
import Routing
import Synchronization
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

/// A batcher with parking, its drainer and ledger, on the real RabbitMQ and Redis, under a
/// cluster name and key prefix of its own; targets are a `HostileZaqar`.
struct ParkingRig {
    let connection: AMQPConnection
    let ledger: ParkingLedger
    let deadLetters: DeadLetterStore
    let zaqar: ZaqarClient
    let names: ClusterNames
    let parking: TargetParking
    let batcher: DeliveryBatcher
    let index: Locked<SubscriptionIndex>
    /// What the registry answers for a subscription the index lacks (tests delete from both).
    let registry: Locked<[String: Subscription]>
    let drainer: ParkingDrainer
    let settings: ParkingSettings
    /// The rig's process identity, alive (its coordinator liveness key set) until `die()`.
    let owner = "test-node#" + UUID().uuidString.prefix(8).lowercased()
    let prefix: String
    let redis: RedisClient

    init(
        settings: ParkingSettings, subscriptions: [Subscription], connection: AMQPConnection? = nil,
        names: ClusterNames? = nil, keyPrefix: String? = nil, queueType: String = "classic"
    ) async throws {
        let logger = Logger(label: "herald.test.parking")
        self.settings = settings
        self.connection =
            if let connection { connection } else { try await AMQPConnection.connect(url: TestServers.amqpURL()) }
        let prefix = keyPrefix ?? TestServers.uniqueName("herald-test.parking") + ":"
        self.prefix = prefix
        self.names = try names ?? ClusterNames(cluster: TestServers.uniqueName("park"))
        redis = try RedisClient(url: TestServers.redisURL())
        // What a node's coordinator keeps alive while the process lives (here for 10 minutes).
        _ = try await redis.send("SET", prefix + "alive:" + owner, "test-node", "PX", 600_000)
        ledger = ParkingLedger(redis: try RedisClient(url: TestServers.redisURL()), keyPrefix: prefix)
        deadLetters = DeadLetterStore(redis: try RedisClient(url: TestServers.redisURL()), keyPrefix: prefix)
        zaqar = ZaqarClient(requestTimeout: .seconds(5))
        parking = TargetParking(
            connection: self.connection, ledger: ledger, names: self.names, queueType: queueType, owner: owner,
            settings: settings, logger: logger)
        var delivery = DeliveryConfiguration()
        delivery.attemptsBeforeParking = settings.afterAttempts
        delivery.retryBase = .milliseconds(10)
        delivery.retryCap = .milliseconds(50)
        batcher = try DeliveryBatcher(
            configuration: delivery, zaqar: zaqar, deadLetters: CountedDeadLetters(store: deadLetters),
            parking: parking,
            logger: logger)
        index = Locked(SubscriptionIndex(subscriptions, defaultZaqarURL: "http://127.0.0.1:1"))
        let registry = Locked(Dictionary(uniqueKeysWithValues: subscriptions.map { ($0.id, $0) }))
        self.registry = registry
        drainer = ParkingDrainer(
            connection: self.connection, ledger: ledger, parking: parking, batcher: batcher, index: index,
            lookup: { id, _ in .some(registry.withLock { $0[id] }) }, names: self.names, owner: owner,
            defaultZaqarURL: "http://127.0.0.1:1", logger: logger
        )
    }

    /// The process is gone, as its coordinator's liveness key expiring says.
    func die() async throws {
        _ = try await redis.send("DEL", prefix + "alive:" + owner)
    }

    /// One message per event id, for a subscription's target.
    static func messages(
        _ subscription: Subscription, _ events: some Sequence<Int>, label: String = "e"
    ) -> [ZaqarOutgoingMessage] {
        events.map { number in
            let event = Array("{\"event_type\":\"compute.instance.update\",\"n\":\(number)}".utf8)
            let body = ZaqarMessageEncoding.message(
                event: event, ttl: 300, subscriptionID: subscription.id, eventID: "\(label)-\(number)", partition: 0,
                epoch: 1)
            return ZaqarOutgoingMessage(
                target: subscription.zaqarTarget(defaultURL: "http://127.0.0.1:1"), body: body,
                subscriptionID: subscription.id, eventID: "\(label)-\(number)")
        }
    }

    /// Submits each message as its own incoming delivery would be; returns once every one is settled.
    func submitEach(_ messages: [ZaqarOutgoingMessage]) async -> DeliveryOutcome {
        let (outcomes, continuation) = AsyncStream.makeStream(of: DeliveryOutcome.self)
        for message in messages {
            await batcher.submit([message]) { continuation.yield($0) }
        }
        var total = DeliveryOutcome()
        var settled = 0
        for await outcome in outcomes {
            total.delivered += outcome.delivered
            total.deadLettered += outcome.deadLettered
            total.parked += outcome.parked
            settled += 1
            if settled == messages.count { break }
        }
        return total
    }

    /// Waits until the subscription's parking record is gone (its queue was seen empty).
    func untilUnparked(_ subscription: Subscription, timeout: Duration = .seconds(15)) async throws {
        try await eventually(timeout: timeout) {
            guard try await ledger.state(subscription: subscription.id) == nil else {
                throw TestFailure("\(subscription.id) still parked")
            }
        }
    }

    func queueDepth(_ subscription: Subscription) async throws -> Int {
        let channel = try await connection.openChannel()
        let depth: Result<Int, any Error>
        do {
            depth = .success(try await channel.declareQueuePassive(names.parkingQueue(subscription.id)).messageCount)
        } catch { depth = .failure(error) }
        await channel.close()
        return try depth.get()
    }

    /// The end of a test: stops the drainer, removes the subscriptions' queues, closes the rig
    /// and the test's Zaqar.
    func finish(_ draining: Task<Void, Never>, deleting subscriptions: [Subscription], zaqar: HostileZaqar) async {
        draining.cancel()
        await draining.value
        await shutdown(deleting: subscriptions)
        await zaqar.close()
    }

    func shutdown(deleting subscriptions: [Subscription]) async {
        if let channel = try? await connection.openChannel() {
            for subscription in subscriptions {
                _ = try? await channel.deleteQueue(names.parkingQueue(subscription.id))
            }
            await channel.close()
        }
        await zaqar.shutdown()
    }
}

/// A Zaqar that answers 503 until `recover()`, then takes everything.
final class DownTarget: Sendable {
    private final class Flag: Sendable {
        let down = Atomic<Bool>(true)
    }

    private let flag: Flag
    let zaqar: HostileZaqar

    init() async throws {
        let flag = Flag()
        self.flag = flag
        zaqar = try await HostileZaqar { _ in flag.down.load(ordering: .relaxed) ? .status(503) : .accept }
    }

    func recover() { flag.down.store(false, ordering: .relaxed) }
}

/// Waits (up to 30 s) until a queue has received at least `count` messages.
func untilArrived(_ count: Int, at zaqar: HostileZaqar, queue: String) async throws {
    try await eventually(timeout: .seconds(30)) {
        let arrived = eventIDs(zaqar, queue: queue).count
        guard arrived >= count else { throw TestFailure("\(arrived) of \(count) in \(queue)") }
    }
}

/// The event ids a queue received, in arrival order.
func eventIDs(_ zaqar: HostileZaqar, queue: String) -> [String] {
    zaqar.accepted(queue: queue).compactMap { body in
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let herald = object["herald"] as? [String: Any]
        else { return nil }
        return herald["event_id"] as? String
    }
}

@Suite("Parking failing targets in RabbitMQ (real RabbitMQ, Redis and HTTP)", .serialized, .timeLimit(.minutes(3)))
struct ParkingTests {
    static func subscription(queue: String, zaqar: HostileZaqar, project: String = "p1") -> Subscription {
        Subscription(
            project: project, eventTypes: ["compute.instance.*"], target: .init(queue: queue, zaqarURL: zaqar.url))
    }

    /// A target answering 503 until `recover()`, a subscription on it, and its first `count`
    /// messages parked by a rig with `fastSettings`.
    static func parked(_ count: Int, queue: String) async throws -> (DownTarget, Subscription, ParkingRig) {
        let target = try await DownTarget()
        let subscription = Self.subscription(queue: queue, zaqar: target.zaqar)
        let rig = try await ParkingRig(settings: Self.fastSettings(), subscriptions: [subscription])
        #expect(await rig.submitEach(ParkingRig.messages(subscription, 0..<count)).parked == count)
        return (target, subscription, rig)
    }

    static func fastSettings() -> ParkingSettings {
        var settings = ParkingSettings()
        settings.afterAttempts = 2
        settings.retryBase = .milliseconds(300)
        settings.retryCap = .milliseconds(600)
        settings.tick = .milliseconds(100)
        return settings
    }

    @Test(
        "a failing target's messages are parked and acked; a healthy target beside it keeps flowing; after recovery every parked message arrives, and new ones queue behind them in order"
    )
    func parkAndRecover() async throws {
        let down = Atomic<Bool>(true)
        let zaqar = try await HostileZaqar { request in
            request.queue == "failing" && down.load(ordering: .relaxed) ? .status(503) : .accept
        }
        let failing = Self.subscription(queue: "failing", zaqar: zaqar)
        let healthy = Self.subscription(queue: "healthy", zaqar: zaqar)
        let rig = try await ParkingRig(settings: Self.fastSettings(), subscriptions: [failing, healthy])

        // While the target is down: every submission settles (the partition could ack it), the
        // failing one's as parked, the healthy one's as delivered.
        let first = await rig.submitEach(ParkingRig.messages(failing, 0..<20))
        let beside = await rig.submitEach(ParkingRig.messages(healthy, 0..<20))
        #expect(first.parked == 20 && first.delivered == 0 && first.deadLettered == 0, "\(first)")
        #expect(beside.delivered == 20 && beside.parked == 0, "\(beside)")
        #expect(eventIDs(zaqar, queue: "healthy") == (0..<20).map { "e-\($0)" })
        #expect(try await rig.queueDepth(failing) == 20)
        let parked = try #require(try await rig.ledger.state(subscription: failing.id))
        #expect(parked.count == 20 && parked.project == "p1" && parked.lastError.contains("503"), "\(parked)")
        #expect(rig.parking.isParked(failing.id))

        // The target is back, but the drainer has not run yet: new messages do not overtake.
        down.store(false, ordering: .relaxed)
        let later = await rig.submitEach(ParkingRig.messages(failing, 20..<25))
        #expect(
            later.parked == 5 && later.delivered == 0,
            "new messages of a parked subscription wait behind the parked ones: \(later)")
        #expect(eventIDs(zaqar, queue: "failing").isEmpty)

        let draining = Task { await rig.drainer.run() }
        try await eventually(timeout: .seconds(30)) {
            guard eventIDs(zaqar, queue: "failing").count >= 25 else {
                throw TestFailure("\(eventIDs(zaqar, queue: "failing").count) of 25 arrived")
            }
        }
        #expect(
            eventIDs(zaqar, queue: "failing") == (0..<25).map { "e-\($0)" },
            "in the order they were submitted, each once")
        try await eventually {
            guard try await rig.ledger.state(subscription: failing.id) == nil, !rig.parking.isParked(failing.id) else {
                throw TestFailure("still parked")
            }
        }
        // Parked no more: the next message goes straight to Zaqar.
        let direct = await rig.submitEach(ParkingRig.messages(failing, 25..<26))
        #expect(direct.delivered == 1 && direct.parked == 0, "\(direct)")
        #expect(try await rig.deadLetters.count() == 0)
        await rig.finish(draining, deleting: [failing, healthy], zaqar: zaqar)
    }

    /// How the parking queue of `orderAcrossFailedRetries` was declared.
    enum ParkingQueueShape: String, CaseIterable, CustomStringConvertible {
        case quorum, classic
        /// Declared by an older node: a quorum queue without `x-delivery-limit`, where RabbitMQ
        /// 3.10 puts a nacked (requeued) message at the back of the queue.
        case quorumWithoutDeliveryLimit
        var description: String { rawValue }
    }

    @Test(
        "retries that fail while more of the queue waits behind what the drainer took leave the taken ones at its head: every message arrives once, in order",
        arguments: ParkingQueueShape.allCases)
    func orderAcrossFailedRetries(shape: ParkingQueueShape) async throws {
        // Down while the lane parks; then every third request fails.
        let down = Atomic<Bool>(true)
        let calls = Atomic<Int>(0)
        let zaqar = try await HostileZaqar { _ in
            if down.load(ordering: .relaxed) { return .status(503) }
            return calls.add(1, ordering: .relaxed).newValue % 3 == 1 ? .status(503) : .accept
        }
        let subscription = Self.subscription(queue: "flaky", zaqar: zaqar)
        var settings = Self.fastSettings()
        settings.batchMessages = 10
        settings.retryBase = .milliseconds(50)
        settings.retryCap = .milliseconds(100)
        let rig = try await ParkingRig(
            settings: settings, subscriptions: [subscription], queueType: shape == .classic ? "classic" : "quorum")
        if shape == .quorumWithoutDeliveryLimit {
            let channel = try await rig.connection.openChannel()
            try await channel.declareQueue(
                rig.names.parkingQueue(subscription.id),
                options: AMQPQueueOptions(
                    durable: true,
                    arguments: ["x-queue-type": .string("quorum"), "x-single-active-consumer": .bool(true)]
                ))
            await channel.close()
        }
        #expect(await rig.submitEach(ParkingRig.messages(subscription, 0..<60)).parked == 60)
        down.store(false, ordering: .relaxed)
        let draining = Task { await rig.drainer.run() }
        try await untilArrived(60, at: zaqar, queue: "flaky")
        #expect(eventIDs(zaqar, queue: "flaky") == (0..<60).map { "e-\($0)" }, "in order, each once")
        #expect(calls.load(ordering: .relaxed) >= 9, "retries failed: \(calls.load(ordering: .relaxed)) requests")
        try await rig.untilUnparked(subscription)
        await rig.finish(draining, deleting: [subscription], zaqar: zaqar)
    }

    @Test(
        "parked messages are retried on their schedule: each failed retry is counted and the next one waits its backoff"
    )
    func retriedAfterDelay() async throws {
        let requests = Mutex<[ContinuousClock.Instant]>([])
        let zaqar = try await HostileZaqar { _ in
            requests.withLock { $0.append(.now) }
            return .status(503)
        }
        let subscription = Self.subscription(queue: "down", zaqar: zaqar)
        var settings = Self.fastSettings()
        settings.retryBase = .milliseconds(800)
        settings.retryCap = .milliseconds(800)
        let rig = try await ParkingRig(settings: settings, subscriptions: [subscription])
        let outcome = await rig.submitEach(ParkingRig.messages(subscription, 0..<3))
        #expect(outcome.parked == 3)
        let lane = requests.withLock { $0.count }
        #expect(lane == 2, "two attempts in the lane (HERALD_PARKING_AFTER_ATTEMPTS=2), then parked: \(lane)")
        let draining = Task { await rig.drainer.run() }
        try await eventually(timeout: .seconds(30)) {
            guard let state = try await rig.ledger.state(subscription: subscription.id), state.attempts >= 3 else {
                throw TestFailure("fewer than 3 retries")
            }
        }
        draining.cancel()
        await draining.value
        let times = requests.withLock { Array($0.dropFirst(lane)) }
        // Each retry waits between half and all of the 800 ms ceiling after the one before.
        for (earlier, later) in zip(times, times.dropFirst()) {
            #expect(later - earlier >= .milliseconds(400), "retries \(later - earlier) apart")
        }
        #expect(try await rig.queueDepth(subscription) == 3, "nothing left the queue while the target failed")
        #expect(try await rig.deadLetters.count() == 0)
        await rig.shutdown(deleting: [subscription])
        await zaqar.close()
    }

    @Test(
        "a target that never answers, or asks for a wait longer than a second, has its batch parked after that one attempt; a short Retry-After is waited out in the lane",
        arguments: [
            (HostileZaqar.Behaviour.silent, 1), (.status(503, retryAfter: 60), 1), (.status(429, retryAfter: 3600), 1),
            (.status(503, retryAfter: 1), 2),
        ])
    func parkedWithoutHoldingTheLane(behaviour: HostileZaqar.Behaviour, attempts: Int) async throws {
        let zaqar = try await HostileZaqar { _ in behaviour }
        let subscription = Self.subscription(queue: "slow", zaqar: zaqar)
        // Two attempts before parking otherwise (`fastSettings`).
        let rig = try await ParkingRig(settings: Self.fastSettings(), subscriptions: [subscription])
        let outcome = await rig.submitEach(ParkingRig.messages(subscription, 0..<3))
        #expect(outcome.parked == 3)
        #expect(zaqar.requests(queue: "slow") == attempts, "\(behaviour): \(zaqar.requests(queue: "slow")) requests")
        #expect(try await rig.queueDepth(subscription) == 3)
        if case .status(_, let retryAfter?) = behaviour, retryAfter > 1 {
            // Parking's first retry waits what the target asked for (cut to the 60 s cap).
            let state = try #require(try await rig.ledger.state(subscription: subscription.id))
            #expect(
                state.nextAttempt - state.since >= 55_000, "next attempt \(state.nextAttempt - state.since) ms after")
        }
        #expect(try await rig.deadLetters.count() == 0)
        await rig.shutdown(deleting: [subscription])
        await zaqar.close()
    }

    @Test(
        "a drainer whose batcher has stopped acks no parked message it could only dead-letter: they stay in their queue, none is lost"
    )
    func stoppingKeepsParked() async throws {
        let answer = Mutex(503)
        let zaqar = try await HostileZaqar { _ in .status(answer.withLock { $0 }) }
        let subscription = Self.subscription(queue: "vanishing", zaqar: zaqar)
        let rig = try await ParkingRig(settings: Self.fastSettings(), subscriptions: [subscription])
        #expect(await rig.submitEach(ParkingRig.messages(subscription, 0..<3)).parked == 3)
        // The queue is gone now (a 404 is permanent: dead letters), but the node is stopping.
        answer.withLock { $0 = 404 }
        let before = zaqar.requests(queue: "vanishing")
        rig.batcher.stop()
        let draining = Task { await rig.drainer.run() }
        try await eventually(timeout: .seconds(30)) {
            guard zaqar.requests(queue: "vanishing") > before else { throw TestFailure("not retried yet") }
        }
        // The drainer runs on: its attempt got the 404 and ended its turn; the channel it closed
        // gave all three back (the old code acked them, no letter written: none would be back).
        try await eventually(timeout: .seconds(20)) {
            let depth = try await rig.queueDepth(subscription)
            guard depth == 3 else { throw TestFailure("\(depth) in the queue") }
        }
        draining.cancel()
        await draining.value
        #expect(try await rig.deadLetters.count() == 0)
        await rig.shutdown(deleting: [subscription])
        await zaqar.close()
    }

    @Test(
        "past the retry horizon the parked messages become dead letters (retry_horizon), with the attempts counted; not before"
    )
    func horizon() async throws {
        let zaqar = try await HostileZaqar { _ in .status(503) }
        let subscription = Self.subscription(queue: "gone-for-good", zaqar: zaqar)
        var settings = Self.fastSettings()
        settings.horizon = .seconds(3)
        let rig = try await ParkingRig(settings: settings, subscriptions: [subscription])
        let parkedAt = Date().timeIntervalSince1970
        // The first two parked while it was an all-projects subscription (the index now has it as
        // a project's): their letters hold other projects' events and stay apart all the same.
        let messages = ParkingRig.messages(subscription, 0..<4).enumerated().map { index, message in
            var message = message
            message.allProjects = index < 2
            return message
        }
        #expect(await rig.submitEach(messages).parked == 4)
        let draining = Task { await rig.drainer.run() }
        let letters = try await eventually(timeout: .seconds(30)) {
            let letters = try await rig.deadLetters.recent(count: 10)
            guard letters.count == 4 else { throw TestFailure("\(letters.count) dead letters") }
            return letters
        }
        for letter in letters {
            #expect(letter.reason == .retryHorizon)
            #expect(letter.at >= parkedAt + 3, "dead-lettered \(letter.at - parkedAt) s after parking, horizon 3 s")
            #expect(
                letter.detail.contains("HERALD_DELIVERY_RETRY_HORIZON") && letter.detail.contains("attempts"),
                "\(letter.detail)")
        }
        #expect(Set(letters.filter { $0.allProjects == true }.compactMap(\.eventID)) == ["e-0", "e-1"])
        #expect(Set(try await rig.deadLetters.recent(.allProjects).compactMap(\.letter.eventID)) == ["e-0", "e-1"])
        #expect(Set(try await rig.deadLetters.recent(project: "p1").compactMap(\.letter.eventID)) == ["e-2", "e-3"])
        // Retried several times within the horizon (every 300 to 600 ms) before giving up.
        #expect(zaqar.requests(queue: "gone-for-good") >= 4, "\(zaqar.requests(queue: "gone-for-good")) requests")
        try await rig.untilUnparked(subscription)
        #expect(try await rig.queueDepth(subscription) == 0)
        await rig.finish(draining, deleting: [subscription], zaqar: zaqar)
    }

    @Test(
        "parked messages outlive the node that parked them: another node's drainer delivers them once the target is back"
    )
    func survivesTheNode() async throws {
        let down = Atomic<Bool>(true)
        let zaqar = try await HostileZaqar { _ in down.load(ordering: .relaxed) ? .reset : .accept }
        let subscription = Self.subscription(queue: "survivor", zaqar: zaqar)
        let prefix = TestServers.uniqueName("herald-test.parking") + ":"
        let first = try await ParkingRig(
            settings: Self.fastSettings(), subscriptions: [subscription], keyPrefix: prefix)
        #expect(await first.submitEach(ParkingRig.messages(subscription, 0..<10)).parked == 10)
        // The first node goes away: its connection closes, its liveness lapses; what remains is the broker's queue and Redis.
        await first.connection.close()
        try await first.die()
        await first.zaqar.shutdown()
        down.store(false, ordering: .relaxed)
        let second = try await ParkingRig(
            settings: Self.fastSettings(), subscriptions: [subscription], names: first.names, keyPrefix: prefix)
        let draining = Task { await second.drainer.run() }
        try await untilArrived(10, at: zaqar, queue: "survivor")
        #expect(eventIDs(zaqar, queue: "survivor") == (0..<10).map { "e-\($0)" })
        draining.cancel()
        await draining.value
        await second.shutdown(deleting: [subscription])
        await second.connection.close()
        await zaqar.close()
    }

    @Test("a deleted subscription's parked messages are dropped and counted, never delivered; its queue goes")
    func deletedSubscription() async throws {
        let (target, subscription, rig) = try await Self.parked(7, queue: "deleted")
        let zaqar = target.zaqar
        rig.index.withLock { $0 = SubscriptionIndex([], defaultZaqarURL: "http://127.0.0.1:1") }
        rig.registry.withLock { $0 = [:] }
        target.recover()
        let draining = Task { await rig.drainer.run() }
        try await rig.untilUnparked(subscription, timeout: .seconds(30))
        draining.cancel()
        await draining.value
        #expect(eventIDs(zaqar, queue: "deleted").isEmpty)
        await #expect(throws: (any Error).self, "the parking queue was deleted") {
            try await rig.queueDepth(subscription)
        }
        await rig.shutdown(deleting: [subscription])
        await zaqar.close()
    }

    @Test(
        "the ledger: per-project shares (messages and bytes), the cluster's byte bound over every project, and per-subscription bounds; releases never unpark; only a claimer that saw the queue empty does, and a count without messages is dropped after the window; only the claimer reschedules"
    )
    func ledger() async throws {
        let ledger = ParkingLedger(
            redis: try RedisClient(url: TestServers.redisURL()),
            keyPrefix: TestServers.uniqueName("herald-test.share") + ":")
        guard
            case .reserved = try await ledger.reserve(
                subscription: "s1", project: "p1", count: 80, projectMax: 100, subscriptionMax: 1000,
                delay: .seconds(1), error: "503")
        else {
            Issue.record("first reservation")
            return
        }
        #expect(
            try await ledger.reserve(
                subscription: "s2", project: "p1", count: 30, projectMax: 100, subscriptionMax: 1000, delay: .zero,
                error: "") == .projectFull(parked: 80))
        #expect(
            try await ledger.reserve(
                subscription: "s1", project: "p1", count: 20, projectMax: 1000, subscriptionMax: 90, delay: .zero,
                error: "") == .subscriptionFull(parked: 80))
        guard
            case .reserved = try await ledger.reserve(
                subscription: "s3", project: "p2", count: 30, projectMax: 100, subscriptionMax: 1000, delay: .zero,
                error: "")
        else {
            Issue.record("another project parks")
            return
        }
        #expect(try await ledger.release(subscription: "s1", count: 50) == 30)
        guard
            case .reserved = try await ledger.reserve(
                subscription: "s2", project: "p1", count: 30, projectMax: 100, subscriptionMax: 1000, delay: .zero,
                error: "")
        else {
            Issue.record("room again after a release")
            return
        }
        guard
            case .reserved = try await ledger.reserve(
                subscription: "s4", project: "p3", count: 1, bytes: 600, projectMax: 100, projectMaxBytes: 1000,
                subscriptionMax: 100, delay: .zero, error: "")
        else {
            Issue.record("bytes within the share")
            return
        }
        #expect(
            try await ledger.reserve(
                subscription: "s4", project: "p3", count: 1, bytes: 600, projectMax: 100, projectMaxBytes: 1000,
                subscriptionMax: 100, delay: .zero, error: "") == .projectBytesFull(parkedBytes: 600))
        // Every project's bytes together: 600 parked (p3's), so 500 more of another project pass
        // a cluster bound of 1,100 and the next 1 does not, whatever that project's own share.
        func withinCluster(
            _ subscription: String, _ project: String, bytes: Int
        ) async throws
            -> ParkingLedger.Reservation
        {
            try await ledger.reserve(
                subscription: subscription, project: project, count: 1, bytes: bytes, projectMax: 100,
                projectMaxBytes: 1000, clusterMaxBytes: 1100, subscriptionMax: 100, delay: .zero, error: "")
        }
        guard case .reserved = try await withinCluster("s5", "p4", bytes: 500) else {
            Issue.record("bytes within the cluster's bound")
            return
        }
        #expect(try await withinCluster("s6", "p5", bytes: 1) == .clusterBytesFull(parkedBytes: 1100))
        // Forgotten, its bytes leave the cluster's total too: room again.
        try await ledger.forget(subscription: "s5")
        guard case .reserved = try await withinCluster("s6", "p5", bytes: 1) else {
            Issue.record("room in the cluster's bound after a forget")
            return
        }
        #expect(try await ledger.release(subscription: "s6", count: 1, bytes: 1) == 0)
        try await ledger.forget(subscription: "s6")
        #expect(try await ledger.parkedSubscriptions() == ["s1", "s2", "s3", "s4"])
        #expect(try await ledger.release(subscription: "s1", count: 999) == 0, "a release never goes below zero")
        #expect(
            try await ledger.parkedSubscriptions().contains("s1"),
            "a count of zero does not unpark: only the queue seen empty does")

        // Claims: only the claimer reschedules; the others' calls change nothing.
        try await Task.sleep(for: .seconds(1.1))
        let claimed = try await ledger.claimDue(node: "node-a", lease: .seconds(60), limit: 10)
        #expect(Set(claimed) == ["s1", "s2", "s3", "s4"], "\(claimed)")
        #expect(try await ledger.retryLater(subscription: "s2", node: "node-b", delay: .zero, error: "x") < 0)
        #expect(try await ledger.renew(subscription: "s2", node: "node-b", lease: .seconds(1)) == false)
        #expect(try await ledger.state(subscription: "s2")?.claimedBy == "node-a")
        #expect(
            try await ledger.observeEmpty(subscription: "s1", node: "node-a", window: .seconds(3600), delay: .zero)
                == .unparked)
        #expect(
            try await ledger.observeEmpty(subscription: "s2", node: "node-a", window: .seconds(3600), delay: .zero)
                == .waiting, "30 counted: publishes may be under way")
        #expect(
            try await ledger.observeEmpty(subscription: "s2", node: "node-a", window: .zero, delay: .zero)
                == .reconciled(count: 30))
        #expect(try await ledger.parkedSubscriptions() == ["s3", "s4"])
        // The project's share came back with the dropped count.
        guard
            case .reserved = try await ledger.reserve(
                subscription: "s5", project: "p1", count: 100, projectMax: 100, subscriptionMax: 1000, delay: .zero,
                error: "")
        else {
            Issue.record("p1's share is whole again")
            return
        }
    }

    @Test(
        "retry slots are shared between projects: a project with many parked subscriptions due first takes one slot per round, not all of them"
    )
    func fairClaims() async throws {
        let ledger = ParkingLedger(
            redis: try RedisClient(url: TestServers.redisURL()),
            keyPrefix: TestServers.uniqueName("herald-test.fair") + ":")
        func park(_ subscription: String, _ project: String) async throws {
            guard
                case .reserved = try await ledger.reserve(
                    subscription: subscription, project: project, count: 1, projectMax: 100, subscriptionMax: 100,
                    delay: .zero, error: "503")
            else {
                Issue.record("\(subscription) reserved")
                return
            }
        }
        // The hog's eight are due before the others' (parked first).
        for index in 0..<8 { try await park("hog-\(index)", "hog") }
        try await Task.sleep(for: .milliseconds(20))
        try await park("b-0", "b")
        try await park("b-1", "b")
        try await park("c-0", "c")
        let first = try await ledger.claimDue(node: "n#1", lease: .seconds(60), limit: 3)
        #expect(first == ["hog-0", "b-0", "c-0"], "one per project, each project's oldest first: \(first)")
        let second = try await ledger.claimDue(node: "n#1", lease: .seconds(60), limit: 3)
        #expect(
            second == ["hog-1", "b-1", "hog-2"],
            "then the next of each, the hog again once the others ran out: \(second)")
    }

    @Test(
        "a count that fell below what the queue holds (an ack lost with a connection counts twice) keeps the subscription parked until its queue is really empty"
    )
    func countBelowQueue() async throws {
        let (target, subscription, rig) = try await Self.parked(5, queue: "undercounted")
        let zaqar = target.zaqar
        try await rig.ledger.release(subscription: subscription.id, count: 5)
        let draining = Task { await rig.drainer.run() }
        try await Task.sleep(for: .seconds(1.5))
        #expect(try await rig.ledger.state(subscription: subscription.id) != nil, "still parked: its queue holds 5")
        // Ready messages only: while the drainer's attempt holds them unacked the count is lower,
        // and they come back to the queue when the attempt fails.
        try await eventually(timeout: .seconds(20)) {
            let depth = try await rig.queueDepth(subscription)
            guard depth == 5 else { throw TestFailure("\(depth) of 5 ready in the parking queue") }
        }
        let behind = await rig.submitEach(ParkingRig.messages(subscription, 5..<6))
        #expect(behind.parked == 1, "new messages still queue behind")
        target.recover()
        try await untilArrived(6, at: zaqar, queue: "undercounted")
        #expect(eventIDs(zaqar, queue: "undercounted") == (0..<6).map { "e-\($0)" })
        try await rig.untilUnparked(subscription)
        await rig.finish(draining, deleting: [subscription], zaqar: zaqar)
    }

    @Test(
        "what a process that died left in the ledger (a count it never published, a closing, a claim) stops holding the subscription at once; what it published stays counted"
    )
    func deadProcesses() async throws {
        let redis = try RedisClient(url: TestServers.redisURL())
        let prefix = TestServers.uniqueName("herald-test.parking") + ":"
        let ledger = ParkingLedger(redis: redis, keyPrefix: prefix)
        func alive(_ owners: String...) async throws {
            for owner in owners { _ = try await redis.send("SET", prefix + "alive:" + owner, "n", "PX", 600_000) }
        }
        func dies(_ owner: String) async throws { _ = try await redis.send("DEL", prefix + "alive:" + owner) }
        /// Its `alive:` key has been missing for longer than the grace, as a record remembers it.
        func goneLongAgo(_ owner: String, from subscription: String) async throws {
            _ = try await redis.send("HSET", prefix + "park:" + subscription, "gone:" + owner, 0)
        }
        func reserve(_ subscription: String, _ count: Int, owner: String) async throws -> ParkingLedger.Reservation {
            try await ledger.reserve(
                subscription: subscription, project: "p1", count: count, projectMax: 1000, subscriptionMax: 1000,
                delay: .zero, error: "503", owner: owner)
        }
        try await alive("a#1", "b#1", "c#1", "d#1", "e#1", "f#1")

        // A reservation whose process is alive may still be published: waited for. Once it died: dropped.
        guard case .reserved = try await reserve("s1", 10, owner: "a#1") else {
            Issue.record("s1 reserved")
            return
        }
        #expect(try await ledger.claimDue(node: "b#1", lease: .seconds(60), limit: 10).contains("s1"))
        #expect(
            try await ledger.observeEmpty(subscription: "s1", node: "b#1", window: .seconds(3600), delay: .zero)
                == .waiting)
        try await dies("a#1")
        #expect(try await ledger.claimDue(node: "b#1", lease: .seconds(60), limit: 10).contains("s1"))
        #expect(
            try await ledger.observeEmpty(subscription: "s1", node: "b#1", window: .seconds(3600), delay: .zero)
                == .waiting,
            "a key just missing may be a live process' lapse (a slow beat, a failover): not taken for death yet")
        try await goneLongAgo("a#1", from: "s1")
        #expect(try await ledger.claimDue(node: "b#1", lease: .seconds(60), limit: 10).contains("s1"))
        #expect(
            try await ledger.observeEmpty(subscription: "s1", node: "b#1", window: .seconds(3600), delay: .zero)
                == .reconciled(count: 10))
        #expect(try await ledger.parkedSubscriptions().contains("s1") == false, "unparked")

        // Confirmed by the broker: in the queue as far as the ledger knows, counted after its publisher died.
        guard case .reserved = try await reserve("s2", 5, owner: "c#1") else {
            Issue.record("s2 reserved")
            return
        }
        #expect(try await ledger.confirm(subscription: "s2", project: "p1", count: 5, owner: "c#1") == false)
        try await dies("c#1")
        try await goneLongAgo("c#1", from: "s2")
        #expect(try await ledger.claimDue(node: "b#1", lease: .seconds(60), limit: 10).contains("s2"))
        #expect(
            try await ledger.observeEmpty(subscription: "s2", node: "b#1", window: .seconds(3600), delay: .zero)
                == .waiting)
        #expect(try await ledger.state(subscription: "s2")?.count == 5)

        // A live process' reservation that no confirm followed for two minutes is stale.
        guard case .reserved = try await reserve("s6", 3, owner: "b#1") else {
            Issue.record("s6 reserved")
            return
        }
        _ = try await redis.send(
            "HSET", prefix + "park:s6", "pending-at:b#1", Int64(Date().timeIntervalSince1970 * 1000) - 121_000)
        #expect(try await ledger.claimDue(node: "f#1", lease: .seconds(60), limit: 10).contains("s6"))
        #expect(
            try await ledger.observeEmpty(subscription: "s6", node: "f#1", window: .seconds(3600), delay: .zero)
                == .reconciled(count: 3))

        // Refused by the broker: uncounted by its own process.
        guard case .reserved = try await reserve("s3", 4, owner: "b#1") else {
            Issue.record("s3 reserved")
            return
        }
        try await ledger.unreserve(subscription: "s3", count: 4, owner: "b#1")
        #expect(try await ledger.state(subscription: "s3")?.count == 0)
        #expect(try await ledger.claimDue(node: "b#1", lease: .seconds(60), limit: 10).contains("s3"))
        #expect(
            try await ledger.observeEmpty(subscription: "s3", node: "b#1", window: .seconds(3600), delay: .zero)
                == .unparked)

        // Closed by a claimer that is alive: new messages wait. By one that died: they are parked again.
        guard case .reserved = try await reserve("s4", 1, owner: "b#1") else {
            Issue.record("s4 reserved")
            return
        }
        #expect(try await ledger.claimDue(node: "d#1", lease: .seconds(60), limit: 10).contains("s4"))
        #expect(try await ledger.close(subscription: "s4", node: "d#1"))
        #expect(try await reserve("s4", 1, owner: "b#1") == .closing)
        try await dies("d#1")
        #expect(try await reserve("s4", 1, owner: "b#1") == .closing, "a lapse is not a death")
        try await goneLongAgo("d#1", from: "s4")
        guard case .reserved = try await reserve("s4", 1, owner: "b#1") else {
            Issue.record("a dead claimer's closing holds no message")
            return
        }

        // A claim is another node's until its lease runs out, or at once when its holder died.
        guard case .reserved = try await reserve("s5", 1, owner: "b#1") else {
            Issue.record("s5 reserved")
            return
        }
        #expect(try await ledger.claimDue(node: "e#1", lease: .seconds(60), limit: 10).contains("s5"))
        #expect(
            try await ledger.claimDue(node: "f#1", lease: .seconds(60), limit: 10).contains("s5") == false,
            "e#1 holds it")
        try await dies("e#1")
        #expect(
            try await ledger.claimDue(node: "f#1", lease: .seconds(60), limit: 10).contains("s5") == false,
            "e#1's key lapsed: not dead yet")
        try await goneLongAgo("e#1", from: "s5")
        #expect(try await ledger.claimDue(node: "f#1", lease: .seconds(60), limit: 10).contains("s5"), "e#1 died")
        #expect(try await ledger.state(subscription: "s5")?.claimedBy == "f#1")
    }

    @Test(
        "a node killed between counting and publishing, after it closed the parking it was draining, does not hold the subscription: another node takes it over at once, its new messages arrive, it is unparked"
    )
    func killedMidParking() async throws {
        let zaqar = try await HostileZaqar { _ in .accept }
        let subscription = Self.subscription(queue: "orphaned", zaqar: zaqar)
        var settings = Self.fastSettings()
        // Neither the empty window nor the claim's lease may be what frees it.
        settings.emptyWindow = .seconds(3600)
        settings.claimLease = .seconds(600)
        let rig = try await ParkingRig(settings: settings, subscriptions: [subscription])
        // What the killed node left: 7 counted and never published, a claim, a closing.
        let dead = "node-x#dead"
        guard
            case .reserved = try await rig.ledger.reserve(
                subscription: subscription.id, project: subscription.project, count: 7, projectMax: 1000,
                subscriptionMax: 1000, delay: .zero, error: "timeout", owner: dead
            )
        else {
            Issue.record("reserved")
            return
        }
        #expect(try await rig.ledger.claimDue(node: dead, lease: .seconds(600), limit: 10) == [subscription.id])
        #expect(try await rig.ledger.close(subscription: subscription.id, node: dead))
        // Its liveness key has been missing past the grace (the record remembers since when).
        _ = try await rig.redis.send("HSET", rig.prefix + "park:" + subscription.id, "gone:" + dead, 0)
        await rig.drainer.refresh(gauges: false)
        #expect(rig.parking.isParked(subscription.id))

        let draining = Task { await rig.drainer.run() }
        let outcome = await rig.submitEach(ParkingRig.messages(subscription, 0..<3))
        #expect(outcome.delivered + outcome.parked == 3 && outcome.deadLettered == 0, "\(outcome)")
        try await untilArrived(3, at: zaqar, queue: "orphaned")
        try await rig.untilUnparked(subscription, timeout: .seconds(15))
        let direct = await rig.submitEach(ParkingRig.messages(subscription, 3..<4))
        #expect(direct.delivered == 1, "unparked: straight to Zaqar \(direct)")
        #expect(eventIDs(zaqar, queue: "orphaned") == (0..<4).map { "e-\($0)" })
        await rig.finish(draining, deleting: [subscription], zaqar: zaqar)
    }

    @Test(
        "parked messages whose record was lost are found by the leader's sweep, recorded again and delivered; a swept queue that is gone is forgotten"
    )
    func sweepFindsOrphans() async throws {
        let (target, subscription, rig) = try await Self.parked(5, queue: "orphans")
        let zaqar = target.zaqar
        #expect(try await rig.ledger.queuesWithoutRecord(cursor: "0").subscriptions.isEmpty, "recorded: no orphan")
        // The record goes, as a Redis failover that lost the writes would take it.
        _ = try await rig.redis.send("DEL", rig.prefix + "park:" + subscription.id)
        _ = try await rig.redis.send("ZREM", rig.prefix + "park-due", subscription.id)
        #expect(try await rig.ledger.queuesWithoutRecord(cursor: "0").subscriptions == [subscription.id])
        target.recover()
        // Nobody retries them now: nothing is due.
        #expect(try await rig.ledger.claimDue(node: rig.owner, lease: .seconds(1), limit: 10).isEmpty)
        await rig.drainer.sweep()
        let state = try #require(try await rig.ledger.state(subscription: subscription.id), "recorded again")
        #expect(state.count == 5)
        let draining = Task { await rig.drainer.run() }
        try await untilArrived(5, at: zaqar, queue: "orphans")
        #expect(eventIDs(zaqar, queue: "orphans") == (0..<5).map { "e-\($0)" })
        try await rig.untilUnparked(subscription)
        draining.cancel()
        await draining.value
        // A queue that went (with its subscription, by hand) is forgotten by the next sweep.
        await rig.shutdown(deleting: [subscription])
        await rig.drainer.sweep()
        #expect(try await rig.redis.send("SISMEMBER", rig.prefix + "park-queues", subscription.id).integer == 0)
        await zaqar.close()
    }

    @Test(
        "a subscription whose events keep coming is unparked once its retrier catches up: the queue is closed, later messages wait briefly and then go directly, all in order"
    )
    func unparkedUnderFlow() async throws {
        let (target, subscription, rig) = try await Self.parked(10, queue: "steady")
        let zaqar = target.zaqar
        target.recover()
        let draining = Task { await rig.drainer.run() }
        // A steady flow (a message every 50 ms for 4 s) while the backlog drains: a drain that
        // waited for a quiet queue would never end.
        var outcomes = DeliveryOutcome()
        for number in 10..<90 {
            let outcome = await rig.submitEach(ParkingRig.messages(subscription, number..<(number + 1)))
            outcomes.parked += outcome.parked
            outcomes.delivered += outcome.delivered
            try await Task.sleep(for: .milliseconds(50))
        }
        try await untilArrived(90, at: zaqar, queue: "steady")
        #expect(eventIDs(zaqar, queue: "steady") == (0..<90).map { "e-\($0)" }, "every message once, in order")
        #expect(outcomes.delivered > 0, "the flow went directly again before it ended: \(outcomes)")
        try await rig.untilUnparked(subscription)
        await rig.finish(draining, deleting: [subscription], zaqar: zaqar)
    }

    @Test("the inbox never keeps a taker waiting past its time, however the timer and the wait interleave")
    func inboxTimeouts() async {
        let inbox = DeliveryInbox()
        for _ in 0..<2_000 {
            let taken = await inbox.take(max: 10, firstWithin: .nanoseconds(1), moreWithin: .nanoseconds(1))
            #expect(taken.isEmpty)
        }
    }

    @Test(
        "a project over its parking share gets dead letters (parking_full) naming the share, instead of holding the partitions every tenant shares"
    )
    func shareFull() async throws {
        let zaqar = try await HostileZaqar { _ in .status(503) }
        let subscription = Self.subscription(queue: "full", zaqar: zaqar)
        var settings = Self.fastSettings()
        settings.projectMaxMessages = 4
        let rig = try await ParkingRig(settings: settings, subscriptions: [subscription])
        #expect(await rig.submitEach(ParkingRig.messages(subscription, 0..<4)).parked == 4)
        let over = await rig.submitEach(ParkingRig.messages(subscription, 4..<7))
        #expect(over.deadLettered == 3 && over.parked == 0, "\(over)")
        let letters = try await rig.deadLetters.recent(count: 10)
        #expect(
            letters.count == 3
                && letters.allSatisfy {
                    $0.reason == .parkingFull && $0.detail.contains("HERALD_PARKING_PROJECT_MAX_MESSAGES")
                }, "\(letters.map(\.detail))")
        #expect(try await rig.queueDepth(subscription) == 4)
        await rig.shutdown(deleting: [subscription])
        await zaqar.close()
    }
}

extension APISuites {
    @Suite("The delivery state of a subscription's target")
    struct DeliveryStateAPITests {
        @Test(
            "GET /v1/subscriptions/{id}/delivery answers healthy, failing (since, last error) or parked (messages, age, retries, next attempt, horizon); another project gets 404"
        )
        func states() async throws {
            let harness = try APIHarness()
            try await harness.test { client in
                var ids: [String] = []
                for queue in ["calm", "flaky", "down"] {
                    let created = try await client.call(
                        .post, "/v1/subscriptions", json: ["event_types": ["compute.*"], "target": ["queue": queue]])
                    #expect(created.status == .created, "\(created.text)")
                    ids.append(created.object["id"] as? String ?? "?")
                }
                try await harness.parking.noteFailure(subscription: ids[1], error: "HTTP 503: busy", ttl: .seconds(60))
                _ = try await harness.parking.reserve(
                    subscription: ids[2], project: "p1", count: 42, projectMax: 1000, subscriptionMax: 1000,
                    delay: .seconds(30), error: "HTTP 502: gateway")
                let calm = try await client.call(.get, "/v1/subscriptions/\(ids[0])/delivery")
                #expect(calm.status == .ok && calm.object["state"] as? String == "healthy", "\(calm.text)")
                let flaky = try await client.call(.get, "/v1/subscriptions/\(ids[1])/delivery")
                #expect(
                    flaky.object["state"] as? String == "failing"
                        && flaky.object["last_error"] as? String == "HTTP 503: busy", "\(flaky.text)")
                #expect(flaky.object["since"] is String)
                let down = try await client.call(.get, "/v1/subscriptions/\(ids[2])/delivery")
                #expect(down.object["state"] as? String == "parked", "\(down.text)")
                #expect(down.object["parked_messages"] as? Int == 42)
                #expect(down.object["attempts"] as? Int == 0)
                #expect(down.object["last_error"] as? String == "HTTP 502: gateway")
                #expect(down.object["next_attempt"] is String && down.object["given_up_after"] is String)
                let age = try #require(down.object["oldest_parked_age_seconds"] as? Double)
                #expect(age >= 0 && age < 60)
                let stranger = try await client.call(.get, "/v1/subscriptions/\(ids[2])/delivery", project: "p2")
                #expect(stranger.status == .notFound)
            }
        }
    }
}
