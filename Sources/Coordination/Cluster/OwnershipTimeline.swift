import Synchronization

/// Rebuilds, from every node's observations, when each node acted on each
/// partition, and checks the one rule that matters: never two actors at once.
///
/// A node acts on a partition from its `acquired` until its `released` or
/// `lost`, and never past the `until` of its latest `valid` (a paused or cut-off
/// node stops there even if it only says so later). Used by the tests and the
/// failover benchmark, with nodes in this process or in others (wall-clock
/// times on one machine).
public final class OwnershipTimeline: Sendable {
    public struct Interval: Sendable, Equatable {
        public var node: String
        public var partition: Int
        public var epoch: UInt64
        public var start: Double
        public var end: Double
    }

    private struct NodeLog {
        var observations: [ClusterObservation] = []
        /// Set when the process was killed: it acts on nothing after this.
        var diedAt: Double?
    }

    private let logs = Mutex<[String: NodeLog]>([:])

    public init() {}

    public func record(_ node: String, _ observation: ClusterObservation) {
        logs.withLock { $0[node, default: NodeLog()].observations.append(observation) }
    }

    /// The node's process was killed at `time` (kill -9): it cannot act after that.
    public func died(_ node: String, at time: Double) {
        logs.withLock { $0[node, default: NodeLog()].diedAt = time }
    }

    /// Every acting interval from the observations recorded so far; one still open ends
    /// where the node's validity (or its process) ends. `now` is when the caller looks.
    public func intervals(now: Double) -> [Interval] {
        let snapshot = logs.withLock { $0 }
        var result: [Interval] = []
        for (node, log) in snapshot {
            var validUntil = -Double.infinity
            var open: [Int: (epoch: UInt64, start: Double)] = [:]
            func close(_ partition: Int, at time: Double) {
                guard let entry = open.removeValue(forKey: partition) else { return }
                result.append(
                    Interval(
                        node: node, partition: partition, epoch: entry.epoch, start: entry.start,
                        end: min(time, validUntil)))
            }
            let ordered = log.observations.sorted { time(of: $0) < time(of: $1) }
            for observation in ordered {
                let at = time(of: observation)
                if at >= validUntil {
                    for partition in Array(open.keys) { close(partition, at: validUntil) }
                }
                switch observation {
                case .acquired(let partition, let epoch, _):
                    open[partition] = (epoch, at)
                case .released(let partition, _), .lost(let partition, _):
                    close(partition, at: at)
                case .valid(let until, _):
                    validUntil = max(validUntil, until)
                }
            }
            // Still open: acting until its validity runs out (or its process died), unless renewed later.
            let end = log.diedAt ?? Double.infinity
            for partition in Array(open.keys) { close(partition, at: end) }
        }
        return result.filter { $0.end > $0.start }
    }

    /// Partitions that had two actors at the same moment, with who and when.
    public func violations(now: Double) -> [String] {
        var problems: [String] = []
        let byPartition = Dictionary(grouping: intervals(now: now), by: \.partition)
        for (partition, intervals) in byPartition.sorted(by: { $0.key < $1.key }) {
            let sorted = intervals.sorted { $0.start < $1.start }
            var latest = sorted[0]
            for interval in sorted.dropFirst() {
                if interval.start < latest.end {
                    problems.append(
                        "partition \(partition): \(latest.node) (epoch \(latest.epoch)) until \(latest.end) and \(interval.node) (epoch \(interval.epoch)) from \(interval.start)"
                    )
                }
                if interval.end > latest.end { latest = interval }
            }
        }
        return problems
    }

    /// The partitions acted on by someone at `time`.
    public func covered(at time: Double, now: Double) -> Set<Int> {
        Set(intervals(now: now).filter { $0.start <= time && time < $0.end }.map(\.partition))
    }

    /// The first moment at or after `time` when all `partitionCount` partitions are acted on.
    public func fullCoverage(after time: Double, partitionCount: Int, now: Double) -> Double? {
        let all = intervals(now: now).filter { $0.end > time }
        let candidates = ([time] + all.map(\.start).filter { $0 > time }).sorted()
        for candidate in candidates {
            let covered = Set(all.filter { $0.start <= candidate && candidate < $0.end }.map(\.partition))
            if covered.count == partitionCount { return candidate }
        }
        return nil
    }

    /// Partitions per node acting at `time`.
    public func shares(at time: Double, now: Double) -> [String: Int] {
        intervals(now: now).filter { $0.start <= time && time < $0.end }.reduce(into: [:]) {
            $0[$1.node, default: 0] += 1
        }
    }

    private func time(of observation: ClusterObservation) -> Double {
        switch observation {
        case .acquired(_, _, let at), .released(_, let at), .lost(_, let at), .valid(_, let at): return at
        }
    }
}
