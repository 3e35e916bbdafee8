import Foundation

/// The cluster as Redis holds it, read in one pipelined round trip, for operators
/// (`herald status`). Reading changes nothing.
public struct ClusterView: Sendable, Codable {
    public struct Lease: Sendable, Codable, Equatable {
        public var partition: Int
        /// The node id (without the process incarnation).
        public var node: String
        public var epoch: UInt64
    }

    public var members: [String: MemberInfo]
    /// The leader's node id, if any holds the lease.
    public var leader: String?
    public var partitionCount: Int
    public var leases: [Lease]
    public var assignmentEpoch: Int?
    /// Redis's clock, seconds since 1970, to judge member ages by.
    public var now: Double
}

public struct ClusterInspector: Sendable {
    let redis: RedisClient
    let prefix: String

    public init(redis: RedisClient, keyPrefix: String = "herald:") {
        self.redis = redis
        self.prefix = keyPrefix
    }

    /// - Parameter partitionCount: P; the stored assignment's count is used when there is one.
    public func view(partitionCount: Int) async throws -> ClusterView {
        let head = try await redis.pipeline([
            RedisCommand("HGETALL", prefix + "members"), RedisCommand("GET", prefix + "leader"),
            RedisCommand("GET", prefix + "assignment"), RedisCommand("GET", prefix + "assignment-epoch"),
            RedisCommand("TIME"),
        ])
        var members: [String: MemberInfo] = [:]
        let items = head[0].array ?? []
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if let node = items[index].string, let bytes = items[index + 1].bytes,
                let info = try? JSONDecoder().decode(MemberInfo.self, from: Data(bytes))
            {
                members[node] = info
            }
        }
        let leader = head[1].string.flatMap { $0.split(separator: "|").first }.map {
            String($0.split(separator: "#").first ?? $0)
        }
        // A node accepts 1 to 65,536 partitions: a stored count outside that is not read (the
        // caller's, which `herald status` checked, stands); one given outside it asks for no lease.
        let accepted = 1...65_536
        var count = accepted.contains(partitionCount) ? partitionCount : 0
        if let bytes = head[2].bytes,
            let assignment = try? JSONDecoder().decode(StoredAssignment.self, from: Data(bytes)),
            accepted.contains(assignment.owners.count)
        {
            count = assignment.owners.count
        }
        let time = head[4].array ?? []
        let now = (time.first?.string.flatMap(Double.init) ?? 0) + (time.last?.string.flatMap(Double.init) ?? 0) / 1e6
        let leaseReplies = try await redis.pipeline((0..<count).map { RedisCommand("GET", prefix + "lease:\($0)") })
        let leases = leaseReplies.enumerated().compactMap { partition, reply -> ClusterView.Lease? in
            guard let parts = reply.string?.split(separator: "|"), parts.count == 2, let epoch = UInt64(parts[1]) else {
                return nil
            }
            return ClusterView.Lease(
                partition: partition, node: String(parts[0].split(separator: "#").first ?? parts[0]), epoch: epoch)
        }
        return ClusterView(
            members: members, leader: leader, partitionCount: count, leases: leases,
            assignmentEpoch: head[3].integer.map(Int.init) ?? head[3].string.flatMap(Int.init), now: now)
    }
}
