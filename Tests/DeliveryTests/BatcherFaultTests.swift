import Coordination
import Delivery
import Foundation
import HeraldModel
import MetricsTestKit
import Synchronization
import TestSupport
import Testing

extension DeadLetterStore: DeadLetterSink {
    public func deadLetter(_ letters: [DeadLetter]) async throws {
        try await append(letters)
    }
}

/// A batcher whose dead letters go to a real Redis stream under a unique prefix.
struct DeliveryHarness {
    let batcher: DeliveryBatcher
    let deadLetters: DeadLetterStore
    let zaqar: ZaqarClient
    /// The batcher's metrics: the one place its counts are kept.
    let metrics = TestMetrics()

    init(
        configuration: DeliveryConfiguration = DeliveryConfiguration(), requestTimeout: Duration = .seconds(10),
        clock: ElapsedClock = .continuous
    ) throws {
        let redis = try RedisClient(url: TestServers.redisURL())
        deadLetters = DeadLetterStore(redis: redis, keyPrefix: TestServers.uniqueName("herald-test.delivery") + ":")
        // Validated first: a client dropped without shutdown() traps in AsyncHTTPClient.
        try configuration.validate()
        zaqar = ZaqarClient(requestTimeout: requestTimeout)
        batcher = try DeliveryBatcher(
            configuration: configuration, zaqar: zaqar, deadLetters: deadLetters, clock: clock, metrics: metrics)
    }

    static func messages(
        _ count: Int, to target: ZaqarTarget, label: String = "m", padding: Int = 0
    ) -> [ZaqarOutgoingMessage] {
        let pad = String(repeating: "x", count: padding)
        return (0..<count).map { index in
            let event = Array("{\"n\":\(index),\"label\":\"\(label)\",\"pad\":\"\(pad)\"}".utf8)
            let body = ZaqarMessageEncoding.message(
                event: event, ttl: 300, subscriptionID: "sub-\(label)", eventID: "\(label)-\(index)", partition: 0,
                epoch: 1)
            return ZaqarOutgoingMessage(
                target: target, body: body, subscriptionID: "sub-\(label)", eventID: "\(label)-\(index)")
        }
    }

    /// Submits each message on its own, as separate incoming deliveries would, and waits for all.
    func deliverEach(_ messages: [ZaqarOutgoingMessage]) async -> DeliveryOutcome {
        let tally = Tally(expected: messages.count)
        return await withCheckedContinuation { continuation in
            tally.whenDone = { continuation.resume(returning: $0) }
            Task {
                for message in messages {
                    await batcher.submit([message]) { tally.add($0) }
                }
            }
        }
    }

    /// A counter's total (all its dimensions), e.g. `herald_delivery_requests_total`.
    func count(_ label: String) -> Int {
        Int(metrics.counterTotal(label: label))
    }

    func shutdown() async {
        await zaqar.shutdown()
    }
}

final class Counter: Sendable {
    private let count = Mutex(0)
    var value: Int { count.withLock { $0 } }
    func increment() { count.withLock { $0 += 1 } }
}

/// Every outcome reported, in order.
final class Outcomes: Sendable {
    private let outcomes = Mutex([DeliveryOutcome]())
    var value: [DeliveryOutcome] { outcomes.withLock { $0 } }
    func append(_ outcome: DeliveryOutcome) { outcomes.withLock { $0.append(outcome) } }
}

/// Each named submission's outcome, once reported.
final class NamedOutcomes: Sendable {
    private let outcomes = Mutex([String: DeliveryOutcome]())
    subscript(name: String) -> DeliveryOutcome? { outcomes.withLock { $0[name] } }
    func set(_ name: String, _ outcome: DeliveryOutcome) { outcomes.withLock { $0[name] = outcome } }
}

extension DeliveryBatcher {
    /// Submissions `first`, `a` and `b` to `target`, their outcomes in `outcomes`: first's one
    /// message goes out alone and stalls (`sink` must stall its first request), a's and b's three
    /// each queue behind it, and first is given back before the stall ends, so that a and b go
    /// out together as the lane's next batch (sent when this returns).
    /// - Returns: the origins by name.
    func stalledBehindFirst(
        to target: ZaqarTarget, sink: HostileZaqar, outcomes: NamedOutcomes
    ) async throws -> [String: Origin] {
        var origins: [String: Origin] = [:]
        var submissions: [String: Submission] = [:]
        for name in ["first", "a", "b"] {
            let origin = Origin()
            origins[name] = origin
            submissions[name] = submission(origin: origin) { outcomes.set(name, $0) }
        }
        await submissions["first"]?.add(DeliveryHarness.messages(1, to: target, label: "first"))
        try await eventually(timeout: .seconds(10)) {
            guard sink.requests(queue: target.queue) == 1 else { throw TestFailure("the first request not sent") }
        }
        // Queued behind the stalled request: they go out together as the lane's next batch.
        await submissions["a"]?.add(DeliveryHarness.messages(3, to: target, label: "a"))
        await submissions["b"]?.add(DeliveryHarness.messages(3, to: target, label: "b"))
        for submission in submissions.values { submission.close() }
        giveBack(try #require(origins["first"]))
        sink.releaseStalls()
        try await eventually(timeout: .seconds(10)) {
            guard sink.requests(queue: target.queue) == 2 else { throw TestFailure("a and b not sent") }
        }
        return origins
    }
}

/// Adds up outcomes and reports once all are in.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var total = DeliveryOutcome()
    private var count = 0
    private let expected: Int
    // Set before the first submission, read under the lock.
    var whenDone: (@Sendable (DeliveryOutcome) -> Void)?

    init(expected: Int) {
        self.expected = expected
    }

    func add(_ outcome: DeliveryOutcome) {
        lock.lock()
        total.delivered += outcome.delivered
        total.deadLettered += outcome.deadLettered
        count += 1
        let done = count == expected ? total : nil
        lock.unlock()
        if let done { whenDone?(done) }
    }
}

/// Delivery suites that use the real servers, one at a time (the lane-throughput comparison wants a quiet machine).
@Suite("Delivery against real servers", .serialized)
enum RedisBackedDeliveryTests {}

extension RedisBackedDeliveryTests {
    @Suite("Batcher against a fault-injecting HTTP sink", .timeLimit(.minutes(2)))
    struct BatcherFaultTests {
        /// Batches of 10, 50 messages a lane, 80 in all (with `fastRetries`).
        func smallBounds() -> DeliveryConfiguration {
            var configuration = fastRetries()
            configuration.maxBatchMessages = 10
            configuration.laneMaxMessages = 50
            configuration.globalMaxMessages = 80
            return configuration
        }

        func fastRetries() -> DeliveryConfiguration {
            var configuration = DeliveryConfiguration()
            configuration.retryBase = .milliseconds(10)
            configuration.retryCap = .milliseconds(50)
            return configuration
        }

        @Test(
            "stop() lets a submitter that waits for room in a full lane go on, its messages left unsettled (a stopping node's consumer must end)"
        )
        func stopReleasesWaitingSubmitters() async throws {
            // A target that never answers: the lane's first batch stays in flight, the lane full.
            let sink = try await HostileZaqar { _ in .silent }
            var configuration = DeliveryConfiguration()
            configuration.maxBatchMessages = 2
            configuration.laneMaxMessages = 2
            // A short timeout: the silent request ends (and is retried, the lane still full) soon after the test.
            let harness = try DeliveryHarness(configuration: configuration, requestTimeout: .seconds(2))
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "q")
            let settled = Counter()
            await harness.batcher.submit(DeliveryHarness.messages(2, to: target, label: "first")) { _ in
                settled.increment()
            }
            let returned = Mutex(false)
            let blocked = Task {
                await harness.batcher.submit(DeliveryHarness.messages(1, to: target, label: "second")) { _ in
                    settled.increment()
                }
                returned.withLock { $0 = true }
            }
            try await eventually(timeout: .seconds(10)) {
                guard sink.totalRequests >= 1 else { throw TestFailure("the first batch was not sent yet") }
            }
            try await Task.sleep(for: .milliseconds(200))
            #expect(!returned.withLock { $0 }, "the second submit waits for room while the lane is full")
            harness.batcher.stop()
            await blocked.value
            #expect(returned.withLock { $0 })
            // A submit after the stop does not wait either.
            await harness.batcher.submit(DeliveryHarness.messages(3, to: target, label: "late")) { _ in
                settled.increment()
            }
            #expect(settled.value == 0, "nothing was settled: the broker gives it to the next owner")
            await sink.close()
            await harness.shutdown()
        }

        @Test("503s are retried until Zaqar takes the batch: nothing lost, nothing duplicated")
        func retriesAfter503() async throws {
            let sink = try await HostileZaqar { $0.index <= 3 ? .status(503) : .accept }
            let harness = try DeliveryHarness(configuration: fastRetries())
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "q")
            let outcome = await harness.batcher.deliver(DeliveryHarness.messages(50, to: target))
            #expect(outcome == DeliveryOutcome(delivered: 50, deadLettered: 0))
            let accepted = sink.accepted(queue: "q")
            #expect(accepted.count == 50)
            #expect(Set(accepted).count == 50)
            #expect(harness.count("herald_delivery_retries_total") == 3)
            #expect(try await harness.deadLetters.count() == 0)
            await sink.close()
            await harness.shutdown()
        }

        @Test("a 400 is narrowed down to the one message Zaqar refuses, which is dead-lettered once")
        func poisonMessage() async throws {
            let sink = try await HostileZaqar { $0.text.contains("poison") ? .status(400) : .accept }
            let harness = try DeliveryHarness(configuration: fastRetries())
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "q")
            var messages = DeliveryHarness.messages(20, to: target)
            messages[7] = DeliveryHarness.messages(1, to: target, label: "poison")[0]
            let outcome = await harness.batcher.deliver(messages)
            #expect(outcome == DeliveryOutcome(delivered: 19, deadLettered: 1))
            #expect(sink.accepted(queue: "q").count == 19)
            let letters = try await harness.deadLetters.recent()
            #expect(letters.count == 1)
            #expect(letters.first?.reason == .rejected)
            #expect(letters.first?.httpStatus == 400)
            #expect(letters.first?.eventID == "poison-0")
            #expect(letters.first?.zaqarMessage?.contains("the sink answered 400") == true)
            await sink.close()
            await harness.shutdown()
        }

        @Test("a 404 is permanent: dead-lettered with the reason, not retried")
        func notFound() async throws {
            let sink = try await HostileZaqar { _ in .status(404) }
            let harness = try DeliveryHarness(configuration: fastRetries())
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "gone")
            let outcome = await harness.batcher.deliver(DeliveryHarness.messages(5, to: target))
            #expect(outcome == DeliveryOutcome(delivered: 0, deadLettered: 5))
            #expect(sink.totalRequests == 1)
            #expect(
                try await harness.deadLetters.recent().allSatisfy {
                    $0.reason == .notFound && $0.detail.contains("404")
                })
            await sink.close()
            await harness.shutdown()
        }

        @Test("429 with Retry-After waits as told, on the batcher's clock")
        func retryAfter() async throws {
            let sink = try await HostileZaqar { $0.index == 1 ? .status(429, retryAfter: 1) : .accept }
            let clock = ManualClock()
            let harness = try DeliveryHarness(configuration: fastRetries(), clock: ElapsedClock(clock))
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "q")
            let delivering = Task { await harness.batcher.deliver(DeliveryHarness.messages(3, to: target)) }
            try await clock.waitForSleepers()
            try #require(clock.requested == [.seconds(1)], "Retry-After: 1, not the backoff's delay")
            clock.advance(by: .milliseconds(999))
            try #require(clock.sleepers == 1, "still waiting a millisecond before the time it was told")
            #expect(sink.totalRequests == 1)
            clock.advance(by: .milliseconds(1))
            let outcome = await delivering.value
            #expect(outcome.delivered == 3)
            #expect(sink.totalRequests == 2)
            await sink.close()
            await harness.shutdown()
        }

        @Test("a reset connection is retried")
        func reset() async throws {
            let sink = try await HostileZaqar { $0.index <= 2 ? .reset : .accept }
            let harness = try DeliveryHarness(configuration: fastRetries())
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "q")
            let outcome = await harness.batcher.deliver(DeliveryHarness.messages(10, to: target))
            #expect(outcome.delivered == 10)
            #expect(sink.accepted(queue: "q").count == 10)
            await sink.close()
            await harness.shutdown()
        }

        @Test(
            "the circuit opens after repeated failures, sends nothing for its cooldown, and closes after a good probe")
        func circuit() async throws {
            let failing = Counter()
            let sink = try await HostileZaqar { _ in failing.value == 0 ? .status(503) : .accept }
            var configuration = fastRetries()
            configuration.circuitThreshold = 3
            configuration.circuitCooldown = .seconds(30)
            configuration.maxAttempts = 100
            let clock = ManualClock()
            let harness = try DeliveryHarness(configuration: configuration, clock: ElapsedClock(clock))
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "q")
            let delivering = Task { await harness.batcher.deliver(DeliveryHarness.messages(5, to: target)) }
            // Each failure waits its backoff on the clock: moved past each until the third opens the circuit.
            try await clock.waitForSleepers()
            while true {
                if case .open = harness.batcher.circuit(for: target) { break }
                clock.advance(by: clock.requested.last ?? .zero)
                try await clock.waitForSleepers()
            }
            #expect(sink.totalRequests == 3)
            // The backoff after the third failure, then the rest of the cooldown: 30 s from the failure.
            let backoff = clock.requested.last ?? .zero
            clock.advance(by: backoff)
            try await clock.waitForSleepers()
            try #require(clock.requested.last == .seconds(30) - backoff, "\(clock.requested)")
            clock.advance(by: .seconds(30) - backoff - .milliseconds(1))
            try #require(clock.sleepers == 1)
            #expect(sink.totalRequests == 3, "nothing is sent while the circuit is open")
            failing.increment()
            clock.advance(by: .milliseconds(1))
            let outcome = await delivering.value
            #expect(outcome.delivered == 5)
            #expect(sink.totalRequests == 4, "one probe, which closes it")
            #expect(harness.batcher.circuit(for: target) == .closed)
            #expect(harness.count("herald_delivery_circuit_openings_total") == 1)
            await sink.close()
            await harness.shutdown()
        }

        @Test("an idle lane with a clean circuit is forgotten; one with failures is kept")
        func idleLanesForgotten() async throws {
            let sink = try await HostileZaqar { request in request.path.contains("/failing/") ? .status(503) : .accept }
            var configuration = fastRetries()
            configuration.circuitThreshold = 100
            configuration.maxAttempts = 2
            let harness = try DeliveryHarness(configuration: configuration)
            let targets = (0..<40).map { ZaqarTarget(baseURL: sink.url, project: "p", queue: "q\($0)") }
            let outcome = await harness.deliverEach(
                targets.flatMap { DeliveryHarness.messages(3, to: $0, label: $0.queue) })
            #expect(outcome.delivered == 120)
            try await eventually {
                guard harness.batcher.laneCount == 0 else {
                    throw DeliveryError(.closed, "\(harness.batcher.laneCount) lanes left")
                }
            }
            let failing = ZaqarTarget(baseURL: sink.url, project: "p", queue: "failing")
            let failed = await harness.batcher.deliver(DeliveryHarness.messages(1, to: failing, label: "f"))
            #expect(failed.deadLettered == 1)
            try await Task.sleep(for: .milliseconds(100))
            #expect(harness.batcher.laneCount == 1, "the failing target's lane keeps its circuit's failures")
            await sink.close()
            await harness.shutdown()
        }

        @Test(
            "a lane whose target failed is forgotten once idle for ten minutes, when a new lane comes (not before)",
            arguments: [(Duration.seconds(540), 1), (.seconds(601), 0)])
        func failedLanesForgottenInTime(idle: Duration, left: Int) async throws {
            let sink = try await HostileZaqar { request in request.path.contains("/failing/") ? .status(503) : .accept }
            var configuration = fastRetries()
            configuration.circuitThreshold = 100
            configuration.maxAttempts = 2
            // Every new lane has the idle ones looked over.
            configuration.laneSweepFloor = 1
            let clock = ManualClock()
            let harness = try DeliveryHarness(configuration: configuration, clock: ElapsedClock(clock))
            let failing = ZaqarTarget(baseURL: sink.url, project: "p", queue: "failing")
            let failed = Task { await harness.batcher.deliver(DeliveryHarness.messages(1, to: failing, label: "f")) }
            // The backoff after its first failure, then the second failure: dead-lettered.
            try await clock.waitForSleepers()
            clock.advance(by: clock.requested.last ?? .zero)
            #expect(await failed.value.deadLettered == 1)
            // Its worker has found it empty and stopped (its idle time counts from that stamp, on
            // the manual clock: only then may the clock move).
            try await eventually {
                guard harness.batcher.laneCount == 1, harness.batcher.hasIdleLane(for: failing) else {
                    throw TestFailure("\(harness.batcher.laneCount) lanes, the failing one not idle yet")
                }
            }
            clock.advance(by: idle)
            let fine = ZaqarTarget(baseURL: sink.url, project: "p", queue: "fine")
            #expect(await harness.batcher.deliver(DeliveryHarness.messages(1, to: fine, label: "ok")).delivered == 1)
            // The fine lane goes as soon as it is idle (a clean circuit); what is left is the failing one, or not.
            try await eventually {
                guard harness.batcher.laneCount == left, harness.batcher.hasLane(for: fine) == false else {
                    throw TestFailure("\(harness.batcher.laneCount) lanes, \(left) expected")
                }
            }
            #expect(harness.batcher.hasLane(for: failing) == (left == 1))
            await sink.close()
            await harness.shutdown()
        }

        @Test("a stalled lane leaves another lane's throughput unchanged")
        func stalledLane() async throws {
            let sink = try await HostileZaqar { $0.path.contains("/stalled/") ? .stall : .accept }
            let harness = try DeliveryHarness(configuration: fastRetries(), requestTimeout: .seconds(60))
            let healthy = ZaqarTarget(baseURL: sink.url, project: "p", queue: "healthy")
            let stalled = ZaqarTarget(baseURL: sink.url, project: "p", queue: "stalled")

            var started = ContinuousClock.now
            _ = await harness.deliverEach(DeliveryHarness.messages(2000, to: healthy, label: "alone"))
            let alone = ContinuousClock.now - started

            let stuck = Task {
                await harness.batcher.deliver(DeliveryHarness.messages(300, to: stalled, label: "stuck"))
            }
            try await Task.sleep(for: .milliseconds(100))
            started = ContinuousClock.now
            let outcome = await harness.deliverEach(DeliveryHarness.messages(2000, to: healthy, label: "beside"))
            let beside = ContinuousClock.now - started
            #expect(outcome.delivered == 2000)
            // Compared in the same run: with a stalled neighbour the healthy lane is not slower
            // than twice its time alone (noise allowance; head-of-line blocking would never finish).
            #expect(beside < alone * 2 + .milliseconds(200), "alone \(alone), beside a stalled lane \(beside)")
            sink.releaseStalls()
            #expect(await stuck.value.delivered == 300, "the stalled lane delivers once the stall ends")
            await sink.close()
            await harness.shutdown()
        }

        @Test("a submission's completion runs once, after close, when every part is settled")
        func submissionSettlesAfterClose() async throws {
            let sink = try await HostileZaqar { _ in .accept }
            let harness = try DeliveryHarness(configuration: fastRetries())
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "parts")
            let outcomes = Outcomes()
            let submission = harness.batcher.submission { outcomes.append($0) }
            await submission.add(DeliveryHarness.messages(10, to: target, label: "a"))
            await submission.add(DeliveryHarness.messages(5, to: target, label: "b"))
            #expect(await harness.batcher.drain(timeout: .seconds(30)))
            #expect(outcomes.value.isEmpty, "delivered, but more parts may come: not complete")
            submission.close()
            #expect(outcomes.value.count == 1)
            #expect(outcomes.value.first?.delivered == 15)
            submission.close()
            #expect(outcomes.value.count == 1, "a second close does nothing")
            await sink.close()
            await harness.shutdown()
        }

        @Test("a submission's parts wait for room like single messages; nothing is lost")
        func submissionPartsWaitForRoom() async throws {
            let sink = try await HostileZaqar { _ in .stall }
            let harness = try DeliveryHarness(configuration: smallBounds(), requestTimeout: .seconds(60))
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "parts")
            let outcomes = Outcomes()
            let partsAdded = Counter()
            let submitter = Task {
                let submission = harness.batcher.submission { outcomes.append($0) }
                for part in 0..<4 {
                    await submission.add(DeliveryHarness.messages(50, to: target, label: "part\(part)"))
                    partsAdded.increment()
                }
                submission.close()
            }
            try await Task.sleep(for: .milliseconds(500))
            #expect(harness.batcher.statistics.peakLaneMessages <= 50)
            #expect(partsAdded.value <= 1, "the second part waits for room in the lane")
            #expect(outcomes.value.isEmpty)
            sink.releaseStalls()
            await submitter.value
            #expect(await harness.batcher.drain(timeout: .seconds(30)))
            #expect(outcomes.value.count == 1)
            let outcome = try #require(outcomes.value.first)
            #expect(outcome.delivered + outcome.deadLettered == 200)
            #expect(harness.batcher.statistics.peakLaneMessages <= 50)
            await sink.close()
            await harness.shutdown()
        }

        @Test(
            "giveBack takes back an origin's queued and waiting messages at once, frees their room, and gives back what it submits later; its batch in flight is not retried with them; other origins' messages are delivered"
        )
        func giveBackTakesQueuedMessages() async throws {
            let sink = try await HostileZaqar { _ in .stall }
            var configuration = fastRetries()
            configuration.maxBatchMessages = 2
            configuration.laneMaxMessages = 6
            let harness = try DeliveryHarness(configuration: configuration, requestTimeout: .seconds(60))
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "handover")
            let handedOver = DeliveryBatcher.Origin()
            let staying = DeliveryBatcher.Origin()
            let outcomes = NamedOutcomes()
            let batcher = harness.batcher
            let submission: @Sendable (String, DeliveryBatcher.Origin) -> DeliveryBatcher.Submission = { name, origin in
                batcher.submission(origin: origin) { outcomes.set(name, $0) }
            }
            // The first two go out (and stall); the next three queue behind them.
            let first = submission("first", handedOver)
            await first.add(DeliveryHarness.messages(2, to: target, label: "sent"))
            try await eventually(timeout: .seconds(10)) {
                guard sink.totalRequests >= 1 else { throw TestFailure("the first batch was not sent yet") }
            }
            await first.add(DeliveryHarness.messages(3, to: target, label: "queued"))
            first.close()
            let other = submission("other", staying)
            await other.add(DeliveryHarness.messages(1, to: target, label: "other"))
            other.close()
            // The lane is full (6): this one waits for room, and another origin's behind it.
            let waiting = Task {
                let late = submission("waiting", handedOver)
                await late.add(DeliveryHarness.messages(2, to: target, label: "waiting"))
                late.close()
            }
            try await eventually(timeout: .seconds(10)) {
                guard harness.batcher.waitingSubmitters == 1 else { throw TestFailure("not waiting yet") }
            }
            let behind = Task {
                let late = submission("behind", staying)
                await late.add(DeliveryHarness.messages(1, to: target, label: "behind"))
                late.close()
            }
            try await eventually(timeout: .seconds(10)) {
                guard harness.batcher.waitingSubmitters == 2 else { throw TestFailure("not waiting yet") }
            }
            #expect(outcomes["waiting"] == nil, "it waits for room")
            #expect(harness.batcher.statistics.bufferedMessages == 6)
            #expect(harness.batcher.bufferedMessages(project: "p") == 6)

            // Three queued and the waiting part's first message (its second waits to be added after it).
            #expect(harness.batcher.giveBack(handedOver) == 4)
            await waiting.value
            await behind.value
            #expect(outcomes["waiting"] == DeliveryOutcome(givenBack: 2))
            #expect(harness.batcher.waitingSubmitters == 0, "the other origin's waiter took the room freed")
            #expect(
                harness.batcher.statistics.bufferedMessages == 4,
                "the batch in flight and the other origin's two")
            #expect(harness.batcher.bufferedMessages(project: "p") == 4)
            #expect(outcomes["first"] == nil, "two of its messages are still in flight")
            // What the origin submits from now on comes back at once.
            let after = submission("after", handedOver)
            await after.add(DeliveryHarness.messages(1, to: target, label: "after"))
            after.close()
            #expect(outcomes["after"] == DeliveryOutcome(givenBack: 1))

            // Released, the held request fails (503): its retry leaves the origin's two out as well.
            sink.releaseStalls()
            #expect(await harness.batcher.drain(timeout: .seconds(30)))
            #expect(outcomes["first"] == DeliveryOutcome(givenBack: 5))
            #expect(outcomes["other"] == DeliveryOutcome(delivered: 1))
            #expect(outcomes["behind"] == DeliveryOutcome(delivered: 1))
            let labels = sink.accepted(queue: "handover").map { body in
                ["sent", "queued", "other", "waiting", "behind", "after"].first {
                    body.contains(#""label":"\#($0)""#)
                } ?? body
            }
            #expect(labels == ["other", "behind"], "nothing given back was sent: \(labels)")
            #expect(harness.batcher.bufferedMessages(project: "p") == 0)
            await sink.close()
            await harness.shutdown()
        }

        /// Retries of 50 ms (the batch is mostly on the wire), or an hour's Retry-After (it is
        /// asleep in its backoff).
        @Test(
            "a batch being retried leaves out what was given back, whether on the wire or in its backoff: the retries end for those messages, given back, not dead-lettered",
            arguments: [(50, nil as Int?, 2), (3_600_000, 3600, 1)])
        func giveBackEndsRetries(retryMilliseconds: Int, retryAfter: Int?, requestsBefore: Int) async throws {
            let sink = try await HostileZaqar { _ in .status(503, retryAfter: retryAfter) }
            var configuration = DeliveryConfiguration()
            configuration.retryBase = .milliseconds(retryMilliseconds)
            configuration.retryCap = .milliseconds(retryMilliseconds)
            configuration.maxAttempts = 1_000
            let harness = try DeliveryHarness(configuration: configuration)
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "failing")
            let origin = DeliveryBatcher.Origin()
            let outcome = Mutex<DeliveryOutcome?>(nil)
            let submission = harness.batcher.submission(origin: origin) { result in outcome.withLock { $0 = result } }
            await submission.add(DeliveryHarness.messages(3, to: target, label: "failing"))
            submission.close()
            try await eventually(timeout: .seconds(10)) {
                guard sink.requests(queue: "failing") >= requestsBefore else { throw TestFailure("not retried yet") }
            }
            // Past its answer: with an hour's Retry-After it is in its backoff now (or about to be).
            try await Task.sleep(for: .milliseconds(200))
            #expect(outcome.withLock { $0 } == nil, "still retried")
            #expect(harness.batcher.giveBack(origin) == 0, "nothing queued: the three are in the batch in flight")
            try await eventually(timeout: .seconds(10)) {
                guard outcome.withLock({ $0 }) != nil else { throw TestFailure("still retried") }
            }
            #expect(outcome.withLock { $0 } == DeliveryOutcome(givenBack: 3))
            #expect(await harness.batcher.drain(timeout: .seconds(5)), "nothing left in the buffers")
            #expect(harness.count("herald_dead_letters_total") == 0)
            let requests = sink.requests(queue: "failing")
            try await Task.sleep(for: .milliseconds(300))
            #expect(sink.requests(queue: "failing") == requests, "no retry after the give-back")
            await sink.close()
            await harness.shutdown()
        }

        @Test(
            "a batch of two partitions in its backoff: the one given back is settled at once, the other still waits out Retry-After"
        )
        func giveBackKeepsOthersBackoff() async throws {
            // The first request stalls (so that what comes next queues behind it), the others get
            // 503 with an hour's Retry-After.
            let seen = Atomic<Int>(0)
            let sink = try await HostileZaqar { _ in
                seen.add(1, ordering: .relaxed).newValue == 1 ? .stall : .status(503, retryAfter: 3600)
            }
            var configuration = DeliveryConfiguration()
            configuration.retryBase = .seconds(3600)
            configuration.retryCap = .seconds(3600)
            configuration.maxAttempts = 1_000
            let harness = try DeliveryHarness(configuration: configuration)
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "mixed")
            let outcomes = NamedOutcomes()
            let origins = try await harness.batcher.stalledBehindFirst(to: target, sink: sink, outcomes: outcomes)
            #expect(outcomes["first"] == DeliveryOutcome(givenBack: 1))
            // The batch of a and b is in its hour's backoff now (or about to be).
            try await Task.sleep(for: .milliseconds(200))
            harness.batcher.giveBack(try #require(origins["a"]))
            try await eventually(timeout: .seconds(10)) {
                guard outcomes["a"] != nil else { throw TestFailure("a still in its backoff") }
            }
            #expect(outcomes["a"] == DeliveryOutcome(givenBack: 3))
            try await Task.sleep(for: .milliseconds(500))
            #expect(sink.requests(queue: "mixed") == 2, "b is not posted again before its Retry-After")
            #expect(outcomes["b"] == nil, "b still waits")
            harness.batcher.giveBack(try #require(origins["b"]))
            try await eventually(timeout: .seconds(10)) {
                guard outcomes["b"] != nil else { throw TestFailure("b still in its backoff") }
            }
            #expect(outcomes["b"] == DeliveryOutcome(givenBack: 3))
            #expect(sink.requests(queue: "mixed") == 2)
            #expect(await harness.batcher.drain(timeout: .seconds(5)), "nothing left in the buffers")
            await sink.close()
            await harness.shutdown()
        }

        @Test(
            "dead letters held while their store refuses them: a give-back takes out its messages and their letters, and only the others' letters are stored when the store comes back"
        )
        func giveBackWhileLettersHeld() async throws {
            /// The real store behind a switch: refuses while `refusing` (Redis down, as the batcher sees it).
            final class SwitchedStore: DeadLetterSink {
                let store: DeadLetterStore
                let refusing = Atomic<Bool>(true)
                let refused = Atomic<Int>(0)
                init(_ store: DeadLetterStore) { self.store = store }
                func deadLetter(_ letters: [DeadLetter]) async throws {
                    guard !refusing.load(ordering: .relaxed) else {
                        refused.add(1, ordering: .relaxed)
                        throw TestFailure("the store refuses")
                    }
                    try await store.append(letters)
                }
            }
            // The first request stalls (so that a and b queue behind it and go out together), the others get 404.
            let seen = Atomic<Int>(0)
            let sink = try await HostileZaqar { _ in
                seen.add(1, ordering: .relaxed).newValue == 1 ? .stall : .status(404)
            }
            let harness = try DeliveryHarness()
            let store = SwitchedStore(harness.deadLetters)
            let batcher = try DeliveryBatcher(
                configuration: DeliveryConfiguration(), zaqar: harness.zaqar, deadLetters: store)
            let target = ZaqarTarget(baseURL: sink.url, project: "p", queue: "gone")
            let outcomes = NamedOutcomes()
            let origins = try await batcher.stalledBehindFirst(to: target, sink: sink, outcomes: outcomes)
            // a and b's 404: their six letters refused twice, so they are held and retried.
            try await eventually(timeout: .seconds(10)) {
                guard store.refused.load(ordering: .relaxed) >= 2 else { throw TestFailure("no letters refused yet") }
            }
            #expect(sink.requests(queue: "gone") == 2)
            batcher.giveBack(try #require(origins["a"]))
            try await eventually(timeout: .seconds(10)) {
                guard outcomes["a"] != nil else { throw TestFailure("a still held") }
            }
            #expect(outcomes["a"] == DeliveryOutcome(givenBack: 3))
            #expect(outcomes["b"] == nil, "b's letters still held")
            store.refusing.store(false, ordering: .relaxed)
            try await eventually(timeout: .seconds(10)) {
                guard outcomes["b"] != nil else { throw TestFailure("b's letters not stored yet") }
            }
            #expect(outcomes["b"] == DeliveryOutcome(deadLettered: 3))
            let stored = try await harness.deadLetters.recent().compactMap(\.eventID)
            #expect(stored.sorted() == ["b-0", "b-1", "b-2"], "b's letters, each with its own message; none of a's")
            #expect(await batcher.drain(timeout: .seconds(5)))
            batcher.stop()
            await sink.close()
            await harness.shutdown()
        }

        @Test("with the sink stalled, buffered messages never exceed the bounds and submitters wait")
        func boundedMemory() async throws {
            let sink = try await HostileZaqar { _ in .stall }
            let harness = try DeliveryHarness(configuration: smallBounds(), requestTimeout: .seconds(60))
            let targets = (0..<3).map { ZaqarTarget(baseURL: sink.url, project: "p", queue: "lane\($0)") }
            let submitted = Counter()
            let submitters = Task {
                await withTaskGroup(of: Void.self) { group in
                    for target in targets {
                        group.addTask {
                            for message in DeliveryHarness.messages(200, to: target) {
                                await harness.batcher.submit([message]) { _ in }
                                submitted.increment()
                            }
                        }
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(500))
            let statistics = harness.batcher.statistics
            #expect(statistics.peakLaneMessages <= 50)
            #expect(statistics.peakBufferedMessages <= 80)
            #expect(statistics.bufferedMessages == 80, "the global bound is reached and held")
            #expect(submitted.value <= 80, "submitters wait for room instead of buffering more")
            sink.releaseStalls()
            await submitters.value
            #expect(await harness.batcher.drain(timeout: .seconds(30)))
            #expect(harness.batcher.statistics.peakBufferedMessages <= 80)
            #expect(
                harness.count("herald_delivered_messages_total") == 600
                    - harness.count("herald_dead_letters_total"))
            await sink.close()
            await harness.shutdown()
        }
    }
}
