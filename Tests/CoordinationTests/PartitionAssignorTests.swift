import Coordination
import Testing

/// A small deterministic generator, so a failing case can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Sticky balanced partition assignment")
struct PartitionAssignorTests {
    static let partitionCounts = [16, 256, 1024]

    func counts(_ owners: [String]) -> [String: Int] {
        owners.reduce(into: [:]) { $0[$1, default: 0] += 1 }
    }

    func moved(_ before: [String], _ after: [String]) -> Int {
        zip(before, after).filter { $0 != $1 }.count
    }

    @Test("every partition has one live owner and shares differ by at most one", arguments: partitionCounts)
    func balanced(partitions: Int) {
        var random = SplitMix64(state: UInt64(partitions))
        for _ in 0..<60 {
            let n = Int.random(in: 1...100, using: &random)
            let members = (0..<n).map { "node-\($0)" }
            // Start from a random, unbalanced current assignment that also names departed members.
            let current: [String?] = (0..<partitions).map { _ in
                Bool.random(using: &random) ? "node-\(Int.random(in: 0..<(n + 20), using: &random))" : nil
            }
            let result = PartitionAssignor.assign(partitionCount: partitions, current: current, members: members)
            #expect(result.count == partitions)
            #expect(Set(result).isSubset(of: Set(members)))
            let shares = counts(result)
            let expectedMembers = min(n, partitions)
            #expect(shares.count == expectedMembers, "P=\(partitions) n=\(n): \(shares.count) members got partitions")
            let low = members.map { shares[$0] ?? 0 }.min()!
            let high = members.map { shares[$0] ?? 0 }.max()!
            #expect(high - low <= 1, "P=\(partitions) n=\(n): shares from \(low) to \(high)")
        }
    }

    @Test("a join moves at most 1.1 x ceil(P/(n+1)) partitions", arguments: partitionCounts)
    func join(partitions: Int) {
        var random = SplitMix64(state: 7 &* UInt64(partitions))
        for _ in 0..<60 {
            let n = Int.random(in: 1...99, using: &random)
            let members = (0..<n).map { "node-\($0)" }
            let before = PartitionAssignor.assign(partitionCount: partitions, current: [], members: members)
            let after = PartitionAssignor.assign(
                partitionCount: partitions, current: before, members: members + ["joiner"])
            let minimum = (partitions + n) / (n + 1)  // ceil(P/(n+1))
            #expect(
                Double(moved(before, after)) <= 1.1 * Double(minimum),
                "P=\(partitions) n=\(n): moved \(moved(before, after)), minimum \(minimum)")
            #expect(after.filter { $0 == "joiner" }.count >= partitions / (n + 1))
        }
    }

    @Test("a leave moves only the leaver's partitions", arguments: partitionCounts)
    func leave(partitions: Int) {
        var random = SplitMix64(state: 13 &* UInt64(partitions))
        for _ in 0..<60 {
            let n = Int.random(in: 2...100, using: &random)
            let members = (0..<n).map { "node-\($0)" }
            let before = PartitionAssignor.assign(partitionCount: partitions, current: [], members: members)
            let leaver = members[Int.random(in: 0..<n, using: &random)]
            let after = PartitionAssignor.assign(
                partitionCount: partitions, current: before, members: members.filter { $0 != leaver })
            let minimum = before.filter { $0 == leaver }.count
            #expect(
                Double(moved(before, after)) <= 1.1 * Double(minimum),
                "P=\(partitions) n=\(n): moved \(moved(before, after)), leaver had \(minimum)")
            #expect(!after.contains(leaver))
        }
    }

    @Test("same input, same output, whatever the member order", arguments: partitionCounts)
    func deterministic(partitions: Int) {
        var random = SplitMix64(state: 99)
        let members = (0..<17).map { "node-\($0)" }
        let current: [String?] = (0..<partitions).map { _ in "node-\(Int.random(in: 0..<25, using: &random))" }
        let first = PartitionAssignor.assign(partitionCount: partitions, current: current, members: members)
        let again = PartitionAssignor.assign(
            partitionCount: partitions, current: current, members: members.shuffled(using: &random))
        #expect(first == again)
    }

    @Test("a balanced assignment is kept as it is")
    func stable() {
        let members = ["a", "b", "c"]
        let first = PartitionAssignor.assign(partitionCount: 256, current: [], members: members)
        #expect(PartitionAssignor.assign(partitionCount: 256, current: first, members: members) == first)
    }

    @Test("no members, no assignment")
    func empty() {
        #expect(PartitionAssignor.assign(partitionCount: 16, current: [], members: []).isEmpty)
    }
}
