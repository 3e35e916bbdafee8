import ArgumentParser
import Coordination
import Foundation
import HeraldModel
import Notifications

/// `herald-bench partitions`: how evenly a realistic mix of events spreads over partitions and
/// nodes, keyed by event type (wave 1) and by resource family + resource id (now). A cloud has
/// few families and many resources; each resource's events follow its lifecycle.
struct PartitionBalance: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "partitions",
        abstract: "Balance of events over partitions and nodes, by event type and by resource.")

    @Option(help: "Partitions (P).") var partitions: Int = 256
    @Option(help: "Nodes the partitions are assigned to (comma-separated counts).") var nodes: String = "3,6,12"
    @Option(help: "Resources in the mix.") var resources: Int = 20_000
    @Option(help: "Events generated.") var events: Int = 400_000

    /// Families with their share of resources and the event types of one lifecycle.
    static let families: [(family: String, share: Double, types: [String])] = [
        (
            "compute.instance", 0.35,
            [
                "compute.instance.create.start", "compute.instance.create.end", "compute.instance.update",
                "compute.instance.power_off.end", "compute.instance.power_on.end", "compute.instance.delete.end",
                "compute.instance.exists",
            ]
        ),
        ("network.port", 0.30, ["port.create.end", "port.update.end", "port.delete.end"]),
        (
            "volume.volume", 0.15,
            ["volume.create.start", "volume.create.end", "volume.attach.end", "volume.detach.end", "volume.delete.end"]
        ),
        ("network.floatingip", 0.08, ["floatingip.create.end", "floatingip.update.end", "floatingip.delete.end"]),
        ("image.image", 0.07, ["image.create", "image.upload", "image.update", "image.delete"]),
        (
            "orchestration.stack", 0.05,
            ["orchestration.stack.create.end", "orchestration.stack.update.end", "orchestration.stack.delete.end"]
        ),
    ]

    func run() throws {
        var random = SplitMix(seed: 11)
        var byType = Array(repeating: 0, count: partitions)
        var byResource = Array(repeating: 0, count: partitions)
        // Resources per family, and events drawn: a resource picked uniformly, one of its family's types.
        var owners: [(family: Int, id: String)] = []
        for index in 0..<resources {
            var pick = Double(random.next() % 1_000_000) / 1_000_000
            var family = 0
            for (offset, entry) in Self.families.enumerated() {
                pick -= entry.share
                if pick <= 0 {
                    family = offset
                    break
                }
                family = offset
            }
            owners.append((family, "r-\(index)"))
        }
        for _ in 0..<events {
            let owner = owners[Int(random.next() % UInt64(owners.count))]
            let entry = Self.families[owner.family]
            let type = entry.types[Int(random.next() % UInt64(entry.types.count))]
            byType[PartitionHash.partition(of: type, count: partitions)] += 1
            byResource[PartitionHash.partition(of: entry.family + "/" + owner.id, count: partitions)] += 1
        }
        print(
            "Partition balance: \(events) events of \(resources) resources in \(Self.families.count) families (\(Self.families.reduce(0) { $0 + $1.types.count }) event types), P = \(partitions)"
        )
        print(
            "  keyed by      busiest partition / mean   partitions with events   "
                + nodes.split(separator: ",").map { "busiest of \($0) nodes / mean" }.joined(separator: "   "))
        for (name, loads) in [("event type", byType), ("resource", byResource)] {
            let mean = Double(events) / Double(partitions)
            var line = String(
                format: "  %-12@  %22.2f   %22d", name as NSString, Double(loads.max() ?? 0) / mean,
                loads.filter { $0 > 0 }.count)
            for count in nodes.split(separator: ",").compactMap({ Int($0) }) {
                let members = (0..<count).map { "node-\($0)" }
                let assignment = PartitionAssignor.assign(
                    partitionCount: partitions, current: Array(repeating: nil, count: partitions), members: members)
                var perNode: [String: Int] = [:]
                for (partition, node) in assignment.enumerated() { perNode[node, default: 0] += loads[partition] }
                let nodeMean = Double(events) / Double(count)
                line += String(format: "   %27.2f", Double(perNode.values.max() ?? 0) / nodeMean)
            }
            print(line)
        }
    }
}
