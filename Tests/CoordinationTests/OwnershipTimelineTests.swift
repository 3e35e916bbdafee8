import Coordination
import Testing

@Suite("The ownership checker")
struct OwnershipTimelineTests {
    @Test("two nodes acting on one partition at once is a violation")
    func overlap() {
        let timeline = OwnershipTimeline()
        timeline.record("a", .valid(until: 100, at: 0))
        timeline.record("a", .acquired(partition: 7, epoch: 1, at: 1))
        timeline.record("b", .valid(until: 100, at: 0))
        timeline.record("b", .acquired(partition: 7, epoch: 2, at: 5))
        let violations = timeline.violations(now: 10)
        #expect(violations.count == 1)
        #expect(violations.first?.contains("partition 7") == true)
    }

    @Test("a release before the next acquire is a clean handoff")
    func handoff() {
        let timeline = OwnershipTimeline()
        timeline.record("a", .valid(until: 100, at: 0))
        timeline.record("a", .acquired(partition: 7, epoch: 1, at: 1))
        timeline.record("a", .released(partition: 7, at: 4))
        timeline.record("b", .valid(until: 100, at: 0))
        timeline.record("b", .acquired(partition: 7, epoch: 2, at: 4.5))
        #expect(timeline.violations(now: 10).isEmpty)
        #expect(timeline.covered(at: 4.2, now: 10).isEmpty)
        #expect(timeline.fullCoverage(after: 4, partitionCount: 1, now: 10) == 4.5)
    }

    @Test("a paused node stops acting at its validity, even though it reports the loss later")
    func pausedNode() {
        let timeline = OwnershipTimeline()
        timeline.record("a", .valid(until: 2.25, at: 1))
        timeline.record("a", .acquired(partition: 3, epoch: 1, at: 1.1))
        // Paused from 1.2 to 9: b takes the partition at 6.5; a says "lost" only at 9.
        timeline.record("b", .valid(until: 100, at: 6))
        timeline.record("b", .acquired(partition: 3, epoch: 2, at: 6.5))
        timeline.record("a", .lost(partition: 3, at: 9))
        #expect(timeline.violations(now: 10).isEmpty)
        let intervals = timeline.intervals(now: 10).filter { $0.node == "a" }
        #expect(intervals.map(\.end) == [2.25])
    }

    @Test("a killed node acts on nothing after its death")
    func killed() {
        let timeline = OwnershipTimeline()
        timeline.record("a", .valid(until: 3, at: 1))
        timeline.record("a", .acquired(partition: 1, epoch: 1, at: 1.1))
        timeline.died("a", at: 2)
        timeline.record("b", .valid(until: 100, at: 2.5))
        timeline.record("b", .acquired(partition: 1, epoch: 2, at: 2.6))
        #expect(timeline.violations(now: 10).isEmpty)
        #expect(timeline.shares(at: 5, now: 10) == ["b": 1])
    }
}
