import Testing

@testable import Messaging

@Suite("Coalescing acks")
struct AckTrackerTests {
    @Test("a contiguous run becomes one multiple ack naming its highest tag")
    func contiguous() {
        var tracker = AckTracker()
        tracker.pending = [3, 1, 2, 4]
        let plan = tracker.plan()
        #expect(plan.multipleThrough == 4)
        #expect(plan.singles.isEmpty)
        #expect(tracker.settledThrough == 4)
    }

    @Test("acks above a gap go out singly, and the run closes once the gap is acked")
    func gap() {
        var tracker = AckTracker()
        tracker.pending = [1, 2, 4, 5]
        var plan = tracker.plan()
        #expect(plan.multipleThrough == 2)
        #expect(plan.singles == [4, 5])
        tracker.pending = [3]
        plan = tracker.plan()
        // 3 closes the gap; 4 and 5 were already sent, so the multiple ack names 3, the newest acked tag.
        #expect(plan.multipleThrough == 3)
        #expect(plan.singles.isEmpty)
        #expect(tracker.settledThrough == 5)
    }

    @Test("a rejected tag counts as settled but is never named by an ack")
    func rejectedInBetween() {
        var tracker = AckTracker()
        tracker.settled(2)  // rejected before the acks were flushed
        tracker.pending = [1, 3]
        let plan = tracker.plan()
        #expect(plan.multipleThrough == 3)
        #expect(plan.singles.isEmpty)
    }

    @Test("a rejected highest tag is not named: the multiple ack stops at the last acked one")
    func rejectedAtTheEnd() {
        var tracker = AckTracker()
        tracker.pending = [1, 2]
        tracker.settled(3)
        let plan = tracker.plan()
        #expect(plan.multipleThrough == 2)
        #expect(tracker.settledThrough == 3)
    }

    @Test("duplicate and stale acks are dropped")
    func duplicates() {
        var tracker = AckTracker()
        tracker.pending = [1, 1, 2]
        #expect(tracker.plan().multipleThrough == 2)
        tracker.pending = [2, 1]
        let plan = tracker.plan()
        #expect(plan.multipleThrough == nil)
        #expect(plan.singles.isEmpty)
    }

    @Test("a multiple nack or ack settles everything up to its tag")
    func settledAll() {
        var tracker = AckTracker()
        tracker.pending = [7]
        tracker.settledAll(through: 5)
        let plan = tracker.plan()
        #expect(plan.multipleThrough == nil)
        #expect(plan.singles == [7])
        tracker.pending = [6]
        #expect(tracker.plan().multipleThrough == 6)
        #expect(tracker.settledThrough == 7)
    }
}
