import Coordination
import Testing

/// The lease state machine driven by hand-fed time: no sleeps.
@Suite("Ownership state machine")
struct OwnershipStateTests {
    typealias Lease = OwnershipState.Lease

    func ms(_ value: Int) -> Duration { .milliseconds(value) }

    /// A node that has beaten once at t=0 and holds partitions 1 and 2 (epochs 5 and 6).
    func holding() -> OwnershipState {
        var state = OwnershipState(aliveTTL: ms(1500), margin: ms(250))
        _ = state.beatSucceeded(sentAt: ms(0), intact: false, now: ms(2))
        let asks = state.setTarget([1, 2], now: ms(3))
        #expect(asks == [.acquire([1, 2])])
        let events = state.acquired([Lease(partition: 1, epoch: 5), Lease(partition: 2, epoch: 6)], now: ms(4))
        #expect(events == [.emit(.acquired(partition: 1, epoch: 5)), .emit(.acquired(partition: 2, epoch: 6))])
        return state
    }

    @Test("a node acts only until the alive TTL minus the margin after its last beat was sent")
    func expiryMargin() {
        var state = holding()
        #expect(state.acting(at: ms(1249)) == [1: 5, 2: 6])
        #expect(state.acting(at: ms(1250)).isEmpty, "1500 ms TTL - 250 ms margin: stop at 1250 ms")
        #expect(state.check(now: ms(1249)).isEmpty)
        #expect(state.check(now: ms(1250)) == [.emit(.lost(partition: 1)), .emit(.lost(partition: 2))])
    }

    @Test("the loop's next wake-up on the clock: the end of validity while leases are held, none otherwise")
    func deadline() {
        var fresh = OwnershipState(aliveTTL: ms(1500), margin: ms(250))
        #expect(fresh.deadline == nil, "nothing held: nothing lapses")
        _ = fresh.beatSucceeded(sentAt: ms(0), intact: false, now: ms(2))
        #expect(fresh.deadline == nil, "valid, but holding nothing")
        var state = holding()
        #expect(state.deadline == ms(1250))
        _ = state.beatSucceeded(sentAt: ms(500), intact: true, now: ms(600))
        #expect(state.deadline == ms(1750), "a renewal moves it")
        _ = state.check(now: ms(1750))
        #expect(state.deadline == nil, "dropped at the deadline: nothing left to lapse")
    }

    @Test("leaving revokes everything, and an assignment read before it cannot give partitions back")
    func leavingIgnoresAssignments() {
        var state = holding()
        #expect(
            state.beginLeaving(now: ms(10)) == [.emit(.revoke(partition: 1)), .emit(.revoke(partition: 2))])
        #expect(state.isLeaving)
        #expect(state.setTarget([1, 2, 3], now: ms(11)).isEmpty, "no acquire, no un-revoke")
        #expect(state.target.isEmpty)
        #expect(state.missing(now: ms(12)).isEmpty)
        #expect(state.confirmRevoked(1) == [.release([Lease(partition: 1, epoch: 5)])], "drains still release")
    }

    @Test(
        "a partition is revoking from its revoke until the confirm, and only under the epoch it was held by (a consumer not yet started need not start)"
    )
    func revokingUntilConfirmed() {
        var state = holding()
        #expect(!state.isRevoking(1, epoch: 5) && !state.isRevoking(2, epoch: 6))
        #expect(state.setTarget([2], now: ms(10)) == [.emit(.revoke(partition: 1))])
        #expect(state.isRevoking(1, epoch: 5))
        #expect(!state.isRevoking(1, epoch: 4), "another epoch's acquire is not this one")
        #expect(!state.isRevoking(2, epoch: 6), "kept")
        #expect(state.confirmRevoked(1) == [.release([Lease(partition: 1, epoch: 5)])])
        #expect(!state.isRevoking(1, epoch: 5), "released: nothing held")
    }

    @Test("a renewal extends validity from when it was sent, not when it came back")
    func renewalFromSendTime() {
        var state = holding()
        _ = state.beatSucceeded(sentAt: ms(500), intact: true, now: ms(1100))
        #expect(state.acting(at: ms(1749)) == [1: 5, 2: 6])
        #expect(state.acting(at: ms(1750)).isEmpty)
    }

    @Test("when renewals fail, the node stops acting before its leases could expire")
    func renewFailureStopsActing() {
        var state = holding()
        // Beats at 500 and 1000 fail (Redis unreachable): only check() runs.
        #expect(state.check(now: ms(500)).isEmpty)
        #expect(state.check(now: ms(1000)).isEmpty)
        let actions = state.check(now: ms(1300))
        #expect(actions == [.emit(.lost(partition: 1)), .emit(.lost(partition: 2))])
        #expect(state.acting(at: ms(1300)).isEmpty)
        // Redis is back: the next beat re-asks for the target partitions.
        let next = state.beatSucceeded(sentAt: ms(1500), intact: false, now: ms(1501))
        #expect(next == [.acquire([1, 2])])
    }

    @Test("a beat that finds the alive key gone drops every lease, even if local time had not run out")
    func aliveKeyLost() {
        var state = holding()
        let actions = state.beatSucceeded(sentAt: ms(500), intact: false, now: ms(501))
        #expect(actions == [.emit(.lost(partition: 1)), .emit(.lost(partition: 2)), .acquire([1, 2])])
    }

    @Test("a paused node resumes acting on nothing it lost")
    func resumedAfterPause() {
        var state = holding()
        // Paused from 100 ms to 6 s: the first look at the clock after resuming drops everything.
        #expect(state.acting(at: ms(6000)).isEmpty)
        #expect(state.check(now: ms(6000)) == [.emit(.lost(partition: 1)), .emit(.lost(partition: 2))])
    }

    @Test("revoke, drain, confirm, then release: the lease stays held while draining")
    func handoff() {
        var state = holding()
        let revoke = state.setTarget([1], now: ms(100))
        #expect(revoke == [.emit(.revoke(partition: 2))])
        #expect(state.acting(at: ms(100)) == [1: 5, 2: 6], "still acting on 2 while draining")
        #expect(state.setTarget([1], now: ms(150)).isEmpty, "no second revoke")
        #expect(state.confirmRevoked(2) == [.release([Lease(partition: 2, epoch: 6)])])
        #expect(state.acting(at: ms(200)) == [1: 5])
        #expect(state.confirmRevoked(2).isEmpty, "a second confirm releases nothing")
    }

    @Test("leases won after validity ran out are handed straight back")
    func lateAcquire() {
        var state = OwnershipState(aliveTTL: ms(1500), margin: ms(250))
        _ = state.beatSucceeded(sentAt: ms(0), intact: false, now: ms(1))
        _ = state.setTarget([3], now: ms(2))
        let actions = state.acquired([Lease(partition: 3, epoch: 9)], now: ms(1300))
        #expect(actions == [.release([Lease(partition: 3, epoch: 9)])])
        #expect(state.acting(at: ms(1300)).isEmpty)
    }

    @Test("a lease won for a partition the target no longer names is released")
    func targetMovedDuringAcquire() {
        var state = OwnershipState(aliveTTL: ms(1500), margin: ms(250))
        _ = state.beatSucceeded(sentAt: ms(0), intact: false, now: ms(1))
        _ = state.setTarget([3, 4], now: ms(2))
        _ = state.setTarget([4], now: ms(3))
        let actions = state.acquired([Lease(partition: 3, epoch: 1), Lease(partition: 4, epoch: 2)], now: ms(4))
        #expect(actions == [.emit(.acquired(partition: 4, epoch: 2)), .release([Lease(partition: 3, epoch: 1)])])
    }

    @Test("leaving releases everything held")
    func leave() {
        var state = holding()
        #expect(state.leave() == [.release([Lease(partition: 1, epoch: 5), Lease(partition: 2, epoch: 6)])])
        #expect(state.acting(at: ms(5)).isEmpty)
    }
}
