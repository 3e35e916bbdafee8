/// What the consumer side is told about partitions.
public enum OwnershipEvent: Sendable, Equatable {
    /// The node holds lease `partition` with fencing `epoch` and may start consuming it.
    case acquired(partition: Int, epoch: UInt64)
    /// The partition is moving away: stop consuming, finish in-flight work, ack, then call
    /// `confirmRevoked(partition)`. The lease is kept (and renewed) until then.
    case revoke(partition: Int)
    /// The lease is gone (expired, or taken after this node was cut off): stop acting on it now.
    case lost(partition: Int)
}

/// A node's view of its leases, as a value type whose methods return what to do.
///
/// Time is passed in (a monotonic instant as a `Duration` since any origin), so
/// tests drive it by hand. Every lease of a node hangs on the node's one alive
/// key in Redis: a successful beat sent at `t` keeps them all valid in Redis
/// until at least `t + aliveTTL`; the node acts on them only until
/// `t + aliveTTL - margin`, so it stops before anyone else could take them.
public struct OwnershipState: Sendable {
    public enum Action: Sendable, Equatable {
        /// Try to take these leases (free, or held by an owner whose alive key is gone).
        case acquire([Int])
        /// Compare-and-delete these leases.
        case release([Lease])
        case emit(OwnershipEvent)
    }

    public struct Lease: Sendable, Equatable, Hashable {
        public var partition: Int
        public var epoch: UInt64

        public init(partition: Int, epoch: UInt64) {
            self.partition = partition
            self.epoch = epoch
        }
    }

    struct Held: Sendable, Equatable {
        var epoch: UInt64
        var revoking: Bool
    }

    public let aliveTTL: Duration
    public let margin: Duration
    /// The partitions the current assignment gives this node.
    public private(set) var target: Set<Int> = []
    private(set) var held: [Int: Held] = [:]
    /// Until when (monotonic) this node may act; `nil` before the first successful beat.
    public private(set) var validUntil: Duration?
    /// Set by `beginLeaving`: no assignment gives this node partitions any more.
    public private(set) var isLeaving = false

    public init(aliveTTL: Duration, margin: Duration) {
        precondition(margin < aliveTTL, "the margin must be shorter than the alive TTL")
        self.aliveTTL = aliveTTL
        self.margin = margin
    }

    /// Whether the alive key is known fresh at `now`.
    public func isValid(at now: Duration) -> Bool {
        guard let validUntil else { return false }
        return now < validUntil
    }

    /// When the clock alone next changes something (`check` drops the leases): the end of this
    /// node's validity while it holds any; nil when nothing waits on time.
    public var deadline: Duration? { held.isEmpty ? nil : validUntil }

    /// The partitions this node may act on at `now`, with their epochs (revoking ones included: they are draining).
    public func acting(at now: Duration) -> [Int: UInt64] {
        guard isValid(at: now) else { return [:] }
        return held.mapValues(\.epoch)
    }

    /// Whether this node may act on `partition` under `epoch` at `now` (`acting(at:)` for one).
    public func isActing(_ partition: Int, epoch: UInt64, at now: Duration) -> Bool {
        isValid(at: now) && held[partition]?.epoch == epoch
    }

    /// Whether the partition is held under `epoch` (valid or not, revoking or not).
    public func holds(_ partition: Int, epoch: UInt64) -> Bool {
        held[partition]?.epoch == epoch
    }

    /// Whether the partition, held under `epoch`, is revoked already (its revoke emitted, not yet
    /// confirmed).
    public func isRevoking(_ partition: Int, epoch: UInt64) -> Bool {
        held[partition].map { $0.epoch == epoch && $0.revoking } ?? false
    }

    /// A beat sent at `sentAt` came back. `intact` is false when the alive key had
    /// expired before it (this node was cut off or paused): every lease may be someone else's now.
    public mutating func beatSucceeded(sentAt: Duration, intact: Bool, now: Duration) -> [Action] {
        var actions: [Action] = []
        if !intact || !isValid(at: now) {
            actions += dropAll()
        }
        validUntil = sentAt + aliveTTL - margin
        return actions + wanted(now: now)
    }

    /// A beat failed (Redis unreachable): nothing changes but the clock.
    public mutating func check(now: Duration) -> [Action] {
        guard !held.isEmpty, !isValid(at: now) else { return [] }
        return dropAll()
    }

    /// Leaving: revoke everything, as an empty assignment would, and ignore assignments from
    /// now on (one read before the node began leaving may still arrive).
    public mutating func beginLeaving(now: Duration) -> [Action] {
        let actions = setTarget([], now: now)
        isLeaving = true
        return actions
    }

    /// A new assignment: revoke what moved away, ask for what came. Ignored once leaving.
    public mutating func setTarget(_ partitions: Set<Int>, now: Duration) -> [Action] {
        if isLeaving { return [] }
        target = partitions
        var actions: [Action] = []
        for (partition, lease) in held.sorted(by: { $0.key < $1.key })
        where !partitions.contains(partition) && !lease.revoking {
            held[partition]!.revoking = true
            actions.append(.emit(.revoke(partition: partition)))
        }
        // A partition that came back while still draining stays revoking; it is re-acquired after release.
        return actions + wanted(now: now)
    }

    /// What an acquire attempt sent at `sentAt` won. Leases won after the node's validity ran out are not used.
    public mutating func acquired(_ leases: [Lease], now: Duration) -> [Action] {
        guard isValid(at: now) else {
            // Won while cut off: hand them straight back rather than act on them.
            return leases.isEmpty ? [] : [.release(leases)]
        }
        var actions: [Action] = []
        var surplus: [Lease] = []
        for lease in leases {
            if held[lease.partition] != nil { continue }
            if target.contains(lease.partition) {
                held[lease.partition] = Held(epoch: lease.epoch, revoking: false)
                actions.append(.emit(.acquired(partition: lease.partition, epoch: lease.epoch)))
            } else {
                surplus.append(lease)  // the target moved on while the request was in flight
            }
        }
        if !surplus.isEmpty { actions.append(.release(surplus)) }
        return actions
    }

    /// The consumer finished draining a revoked partition: release its lease.
    public mutating func confirmRevoked(_ partition: Int) -> [Action] {
        guard let lease = held[partition], lease.revoking else { return [] }
        held[partition] = nil
        return [.release([Lease(partition: partition, epoch: lease.epoch)])]
    }

    /// Leaving the group: every lease not yet released, to release now (the consumer
    /// side has already been drained by then).
    public mutating func leave() -> [Action] {
        let leases = held.map { Lease(partition: $0.key, epoch: $0.value.epoch) }.sorted { $0.partition < $1.partition }
        held.removeAll()
        target = []
        validUntil = nil
        return leases.isEmpty ? [] : [.release(leases)]
    }

    /// Target partitions not held yet, when this node may take leases.
    public func missing(now: Duration) -> [Int] {
        guard isValid(at: now) else { return [] }
        return target.filter { held[$0] == nil }.sorted()
    }

    private func wanted(now: Duration) -> [Action] {
        let partitions = missing(now: now)
        return partitions.isEmpty ? [] : [.acquire(partitions)]
    }

    private mutating func dropAll() -> [Action] {
        let lost = held.keys.sorted()
        held.removeAll()
        return lost.map { .emit(.lost(partition: $0)) }
    }
}
