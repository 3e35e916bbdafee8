/// The sticky, balanced partition assignment (in the spirit of Kafka's KIP-848):
/// a pure function of the current owners and the live members.
///
/// - Every live member gets `floor(P/n)` or `ceil(P/n)` partitions.
/// - The `P mod n` larger shares go to the members that own the most today,
///   so nobody has to give up a partition only to take another.
/// - A member keeps what it owns up to its share (its lowest-numbered ones).
/// - Everything else (over-share, owned by members that left, never owned) goes,
///   in partition order, to the least-loaded member with room (ties: member id).
///
/// So a join moves exactly the new member's share, and a leave moves exactly the
/// leaver's partitions: the minimum any balanced assignment can move.
public enum PartitionAssignor {
    /// - Parameters:
    ///   - partitionCount: P.
    ///   - current: the owner of each partition today (`nil` or a departed member: unowned);
    ///     shorter than P is fine.
    ///   - members: the live members; order does not matter.
    /// - Returns: the owner of each of the P partitions; empty when there are no members.
    public static func assign(partitionCount: Int, current: [String?], members: [String]) -> [String] {
        let members = Array(Set(members)).sorted()
        guard !members.isEmpty, partitionCount > 0 else { return [] }
        let live = Set(members)
        var owned: [String: [Int]] = [:]
        for partition in 0..<min(partitionCount, current.count) {
            if let owner = current[partition], live.contains(owner) {
                owned[owner, default: []].append(partition)
            }
        }
        let base = partitionCount / members.count
        let larger = partitionCount % members.count
        let byHoldings = members.sorted { a, b in
            let (ca, cb) = (owned[a]?.count ?? 0, owned[b]?.count ?? 0)
            return ca != cb ? ca > cb : a < b
        }
        var share: [String: Int] = [:]
        for (rank, member) in byHoldings.enumerated() {
            share[member] = base + (rank < larger ? 1 : 0)
        }

        var result = [String?](repeating: nil, count: partitionCount)
        var load: [String: Int] = [:]
        for member in members {
            for partition in (owned[member] ?? []).prefix(share[member]!) {
                result[partition] = member
            }
            load[member] = min(owned[member]?.count ?? 0, share[member]!)
        }
        // Least loaded first; ties by id. A small sorted list beats a heap at these sizes.
        var open = members.filter { load[$0]! < share[$0]! }
        for partition in 0..<partitionCount where result[partition] == nil {
            open.sort { a, b in load[a]! != load[b]! ? load[a]! < load[b]! : a < b }
            let member = open[0]
            result[partition] = member
            load[member]! += 1
            if load[member]! == share[member]! { open.removeFirst() }
        }
        return result.map { $0! }
    }
}
