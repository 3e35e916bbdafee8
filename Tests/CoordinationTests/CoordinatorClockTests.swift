import Coordination
import HeraldModel
import Synchronization
import TestSupport
import Testing

extension RedisServerTests {
    /// One coordinator against the real Redis, its own time on a manual clock: when it beats,
    /// how long it acts on its leases and how long a leave waits for drains follow that clock, so
    /// they are asserted without sleeping. (Redis judges expiry by its own TIME: the lease times
    /// here are long enough that nothing expires there while a test runs.)
    @Suite("The coordinator's timers on a manual clock", .timeLimit(.minutes(2)))
    struct CoordinatorClockTests {
        final class Solo: Sendable {
            /// Successful beats, as the coordinator's observer reports them.
            final class Beats: Sendable { let count = Mutex(0) }
            let clock = ManualClock()
            let beats = Beats()
            let coordinator: ClusterCoordinator
            static let heartbeat = Duration.seconds(1)
            static let aliveTTL = Duration.seconds(60)
            static let margin = Duration.seconds(5)

            init() throws {
                let beats = beats
                coordinator = try ClusterCoordinator(
                    configuration: ClusterConfiguration(
                        nodeID: "solo", keyPrefix: TestServers.uniqueName("herald-test.clock") + ":",
                        partitionCount: 4, heartbeat: Self.heartbeat, memberDeadline: .seconds(90),
                        aliveTTL: Self.aliveTTL,
                        margin: Self.margin, leaderTTL: Self.aliveTTL),
                    redis: try RedisConfiguration(url: TestServers.redisURL()),
                    observer: { if case .valid = $0 { beats.count.withLock { $0 += 1 } } },
                    clock: ElapsedClock(clock))
            }

            var beatCount: Int { beats.count.withLock { $0 } }

            /// The consumer side: every revoke confirmed at once (cancel the task to stop).
            func confirmingRevokes() -> Task<Void, Never> {
                Task { [coordinator] in
                    for await event in coordinator.events {
                        if case .revoke(let partition) = event { coordinator.confirmRevoked(partition) }
                    }
                }
            }

            /// Joins and waits until it acts on all four partitions (its first round needs no
            /// time to pass: it beats once joining and takes the free leases at once).
            func joinAndAct() async throws {
                try await coordinator.start()
                try await eventually(timeout: .seconds(10)) {
                    guard coordinator.acting().count == 4 else {
                        throw TestFailure("acting on \(coordinator.acting().count) of 4")
                    }
                }
            }
        }

        @Test("it sleeps exactly until the next heartbeat on its clock, and beats when the clock gets there")
        func beatsOnTheClock() async throws {
            let solo = try Solo()
            let confirming = solo.confirmingRevokes()
            try await solo.joinAndAct()
            try await solo.clock.waitForSleepers(1)
            let before = solo.beatCount
            // Its clock has not moved since it beat joining: the next beat is a heartbeat away.
            let asked = try #require(solo.clock.requested.last)
            #expect(asked == Solo.heartbeat, "the loop sleeps until the next heartbeat, asked \(asked)")
            solo.clock.advance(by: Solo.heartbeat)
            try await eventually(timeout: .seconds(10)) {
                guard solo.beatCount > before else { throw TestFailure("no beat after the clock reached it") }
            }
            await solo.coordinator.leave(drainTimeout: .zero)
            confirming.cancel()
        }

        @Test("a node that cannot beat stops acting when its validity ends on its own clock")
        func validityOnTheClock() async throws {
            let solo = try Solo()
            let confirming = solo.confirmingRevokes()
            try await solo.joinAndAct()
            try await solo.clock.waitForSleepers(1)
            solo.coordinator.pause()  // no beats from here, as under SIGSTOP
            let validity = Solo.aliveTTL - Solo.margin
            solo.clock.advance(by: validity - .milliseconds(10))
            #expect(solo.coordinator.acting().count == 4, "still valid 10 ms before the end")
            #expect(solo.coordinator.isMembershipCurrent)
            solo.clock.advance(by: .milliseconds(10))
            #expect(solo.coordinator.acting().isEmpty, "acts on nothing once its validity ended")
            #expect(!solo.coordinator.isMembershipCurrent, "and says so to the readiness check")
            solo.coordinator.resume()
            try await eventually(timeout: .seconds(10)) {
                guard solo.coordinator.acting().count == 4 else { throw TestFailure("not acting again") }
            }
            await solo.coordinator.leave(drainTimeout: .zero)
            confirming.cancel()
        }

        @Test("a leave waits for unconfirmed drains until its timeout on the clock, then releases")
        func leaveTimesOutOnTheClock() async throws {
            let solo = try Solo()
            // Nobody confirms a revoke: every partition's drain hangs.
            try await solo.joinAndAct()
            try await solo.clock.waitForSleepers(1)
            // The loop waits for a signal alone from here (its rounds would wake the leave too):
            // only the leave's own timeout can end its wait.
            solo.coordinator.pause()
            solo.clock.advance(by: Solo.heartbeat)
            try await eventually(timeout: .seconds(10)) {
                guard solo.clock.sleepers == 0 else { throw TestFailure("the paused loop still sleeps on the clock") }
            }
            let left = Mutex(false)
            let leaving = Task {
                await solo.coordinator.leave(drainTimeout: .seconds(30))
                left.withLock { $0 = true }
            }
            try await eventually(timeout: .seconds(10)) {
                guard solo.clock.requested.last == .seconds(30) else {
                    throw TestFailure("the leave does not sleep yet")
                }
            }
            solo.clock.advance(by: .seconds(29))
            try await solo.clock.waitForSleepers(1)
            #expect(!left.withLock { $0 }, "still waiting for the drains a second before the timeout")
            #expect(solo.coordinator.acting().count == 4)
            solo.clock.advance(by: .seconds(1))
            await leaving.value
            #expect(solo.coordinator.acting().isEmpty)
        }
    }
}
