import ArgumentParser
import Coordination
import Foundation

/// `herald-bench failover`: N member processes against a real Redis, and rounds of
/// kill -9, SIGTERM, SIGSTOP (then SIGCONT) and scale-out. For each round: the time
/// until every partition is acted on again, and for scale-out the partitions moved
/// against the ideal. An `OwnershipTimeline` checks all along that no partition
/// ever has two actors; any violation fails the run.
struct Failover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Failover rounds with member processes; p50/p99 recovery and moved/ideal.")

    @Option(help: "Redis URL (default: $HERALD_TEST_REDIS_URL).")
    var redisURL: String = ProcessInfo.processInfo.environment["HERALD_TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379/0"
    @Option(help: "Rounds per scenario.") var rounds: Int = 20
    @Option(help: "Members before each round.") var nodes: Int = 4
    @Option(help: "Partition count.") var partitions: Int = 256
    @Option(help: "Scenarios, comma-separated: kill9, sigterm, sigstop, scaleout.") var scenarios: String =
        "kill9,sigterm,sigstop,scaleout"
    @Option(help: "Write the results as JSON here.") var json: String?

    func run() async throws {
        var run = try FailoverRun(redisURL: redisURL, partitions: partitions)
        let result: FailoverResult
        do {
            result = try await run.execute(
                nodes: nodes, rounds: rounds, scenarios: scenarios.split(separator: ",").map(String.init))
        } catch {
            await run.stopAll()
            throw error
        }
        await run.stopAll()
        result.print(partitions: partitions, nodes: nodes)
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(result).write(to: URL(fileURLWithPath: json))
        }
        if !result.violations.isEmpty { throw ExitCode(2) }
    }
}

/// `herald-bench cluster-load`: Redis commands per second per member in steady state.
struct ClusterLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster-load", abstract: "Redis commands per second per member, steady state.")

    @Option(help: "Redis URL (default: $HERALD_TEST_REDIS_URL).")
    var redisURL: String = ProcessInfo.processInfo.environment["HERALD_TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379/0"
    @Option(help: "Members.") var nodes: Int = 4
    @Option(help: "Partition count.") var partitions: Int = 1024
    @Option(help: "Seconds to measure.") var seconds: Int = 10

    func run() async throws {
        var run = try FailoverRun(redisURL: redisURL, partitions: partitions)
        for _ in 0..<nodes { _ = try run.spawn() }
        do {
            try await run.waitBalanced()
            try await Task.sleep(for: .seconds(2))
            let redis = try RedisClient(url: redisURL)
            let before = try await Self.counters(redis)
            try await Task.sleep(for: .seconds(seconds))
            let after = try await Self.counters(redis)
            let perNode = { (value: Double) in value / Double(seconds) / Double(nodes) }
            print("Cluster steady state: \(nodes) members, \(partitions) partitions, \(seconds) s")
            print(
                String(
                    format: "  Redis commands per member per second (total_commands_processed, Lua's included): %.1f",
                    perNode(after.processed - before.processed)))
            print(
                String(format: "  the same from commandstats: %.1f, by command:", perNode(after.calls - before.calls)))
            for (name, calls) in after.byCommand.sorted(by: { $0.key < $1.key }) {
                let delta = calls - (before.byCommand[name] ?? 0)
                if delta > 0 { print(String(format: "    %-22@ %.1f", name, perNode(delta))) }
            }
        } catch {
            await run.stopAll()
            throw error
        }
        await run.stopAll()
    }

    /// total_commands_processed (what clients sent) and commandstats (every command run, Lua's included).
    static func counters(
        _ redis: RedisClient
    ) async throws -> (processed: Double, calls: Double, byCommand: [String: Double]) {
        let stats = try await redis.send("INFO", "stats").string ?? ""
        let commands = try await redis.send("INFO", "commandstats").string ?? ""
        let processed =
            stats.split(separator: "\r\n").first { $0.hasPrefix("total_commands_processed:") }.flatMap {
                Double($0.split(separator: ":")[1])
            } ?? 0
        var byCommand: [String: Double] = [:]
        for line in commands.split(separator: "\r\n") where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst("cmdstat_".count).prefix { $0 != ":" }
            if let calls = line.split(separator: "calls=").dropFirst().first?.prefix(while: { $0.isNumber }) {
                byCommand[String(name)] = Double(calls) ?? 0
            }
        }
        // The INFO calls of this measurement are not the members'.
        byCommand["info"] = nil
        return (processed, byCommand.values.reduce(0, +), byCommand)
    }
}

struct ScenarioResult: Codable {
    var recoveries: [Double] = []
    var movedOverIdeal: [Double] = []

    var p50: Double { percentile(0.50) }
    var p99: Double { percentile(0.99) }

    func percentile(_ q: Double) -> Double {
        guard !recoveries.isEmpty else { return .nan }
        let sorted = recoveries.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)]
    }
}

struct FailoverResult: Codable {
    var scenarios: [String: ScenarioResult] = [:]
    var violations: [String] = []

    func print(partitions: Int, nodes: Int) {
        Swift.print(
            "Failover: \(partitions) partitions, \(nodes) member processes, time until every partition is acted on again"
        )
        Swift.print("  scenario   rounds   p50 s    p99 s    max s    moved/ideal (max)   goal")
        let goals = [
            "kill9": "p99 <= 2 s", "sigterm": "p99 <= 1 s", "sigstop": "p99 <= 6 s",
            "scaleout": "<= 3 s, moved/ideal <= 1.1",
        ]
        for name in ["kill9", "sigterm", "sigstop", "scaleout"] {
            guard let result = scenarios[name] else { continue }
            let moved = result.movedOverIdeal.max().map { String(format: "%.2f", $0) } ?? "-"
            let numbers = String(
                format: "%6d   %6.3f   %6.3f   %6.3f", result.recoveries.count, result.p50, result.p99,
                result.recoveries.max() ?? .nan)
            Swift.print(
                "  \(name.padding(toLength: 9, withPad: " ", startingAt: 0))  \(numbers)   \(moved.padding(toLength: 18, withPad: " ", startingAt: 0))  \(goals[name] ?? "")"
            )
        }
        Swift.print("  two actors on one partition at once: \(violations.count)")
        for violation in violations.prefix(10) { Swift.print("    \(violation)") }
    }
}

struct FailoverRun {
    let redisURL: String
    let partitions: Int
    let prefix = "herald-bench.failover.\(UUID().uuidString.prefix(8).lowercased()):"
    let timeline = OwnershipTimeline()
    let executable: String
    var live: [String: MemberProcess] = [:]
    var stopped: [MemberProcess] = []
    var counter = 0

    init(redisURL: String, partitions: Int) throws {
        self.redisURL = redisURL
        self.partitions = partitions
        // This same executable, for the `member` subcommand.
        self.executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    }

    var now: Double { Date().timeIntervalSince1970 }

    mutating func spawn() throws -> String {
        counter += 1
        let name = "node-\(counter)"
        live[name] = try MemberProcess(
            executable: executable, name: name, redisURL: redisURL, prefix: prefix, partitions: partitions,
            timeline: timeline)
        return name
    }

    /// Waits until the live members act on every partition with shares within one of each other.
    func waitBalanced(timeout: Double = 30) async throws {
        let deadline = now + timeout
        while now < deadline {
            let t = now
            let shares = timeline.shares(at: t, now: t)
            let counts = live.keys.map { shares[$0] ?? 0 }
            if counts.reduce(0, +) == partitions, shares.keys.allSatisfy({ live[$0] != nil }),
                counts.max()! - counts.min()! <= 1
            {
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ValidationError(
            "members \(live.keys.sorted()) did not balance within \(timeout) s: \(timeline.shares(at: now, now: now))")
    }

    /// Waits until `victim` acts on nothing, then until every partition is acted on; returns that moment.
    func waitRecovered(victim: String, timeout: Double = 30) async throws -> Double {
        let deadline = now + timeout
        while now < deadline {
            let t = now
            let victimEnd = timeline.intervals(now: t).filter { $0.node == victim }.map(\.end).max() ?? 0
            if victimEnd < t - 0.01,
                let full = timeline.fullCoverage(after: victimEnd, partitionCount: partitions, now: t)
            {
                return full
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ValidationError("partitions of \(victim) were not all taken over within \(timeout) s")
    }

    func owners(at time: Double) -> [Int: String] {
        Dictionary(
            timeline.intervals(now: time).filter { $0.start <= time && time < $0.end }.map { ($0.partition, $0.node) },
            uniquingKeysWith: { a, _ in a })
    }

    mutating func execute(nodes: Int, rounds: Int, scenarios: [String]) async throws -> FailoverResult {
        for _ in 0..<nodes { _ = try spawn() }
        try await waitBalanced()
        var result = FailoverResult()
        for scenario in scenarios {
            var outcome = ScenarioResult()
            for round in 1...rounds {
                let victim = live.keys.sorted().randomElement()!
                let process = live[victim]!
                let start: Double
                switch scenario {
                case "kill9":
                    start = now
                    process.send(SIGKILL)
                    timeline.died(victim, at: now)
                    live[victim] = nil
                    _ = await process.wait()
                    outcome.recoveries.append(try await waitRecovered(victim: victim) - start)
                    _ = try spawn()
                case "sigterm":
                    start = now
                    process.send(SIGTERM)
                    live[victim] = nil
                    let status = await process.wait()
                    if status != 0 { throw ValidationError("\(victim) exited with status \(status) after SIGTERM") }
                    outcome.recoveries.append(try await waitRecovered(victim: victim) - start)
                    _ = try spawn()
                case "sigstop":
                    start = now
                    process.send(SIGSTOP)
                    live[victim] = nil
                    outcome.recoveries.append(try await waitRecovered(victim: victim) - start)
                    process.send(SIGCONT)
                    live[victim] = process  // it rejoins
                case "scaleout":
                    let before = owners(at: now)
                    start = now
                    let joiner = try spawn()
                    let fair = partitions / live.count
                    var reached: Double?
                    while reached == nil && now < start + 30 {
                        let t = now
                        if (timeline.shares(at: t, now: t)[joiner] ?? 0) >= fair,
                            timeline.covered(at: t, now: t).count == partitions
                        {
                            reached = t
                        } else {
                            try await Task.sleep(for: .milliseconds(10))
                        }
                    }
                    guard let reached else {
                        throw ValidationError("\(joiner) did not reach its fair share \(fair) within 30 s")
                    }
                    outcome.recoveries.append(reached - start)
                    try await waitBalanced()
                    let after = owners(at: now)
                    let moved = (0..<partitions).filter { before[$0] != nil && after[$0] != before[$0] }.count
                    let ideal = (partitions + live.count - 1) / live.count
                    outcome.movedOverIdeal.append(Double(moved) / Double(ideal))
                    // Back to the starting size for the next round.
                    let leaving = live.removeValue(forKey: joiner)!
                    leaving.send(SIGTERM)
                    _ = await leaving.wait()
                default:
                    throw ValidationError("unknown scenario '\(scenario)' (known: kill9, sigterm, sigstop, scaleout)")
                }
                try await waitBalanced()
                FileHandle.standardError.write(
                    Data(
                        "failover: \(scenario) round \(round)/\(rounds): \(String(format: "%.3f", outcome.recoveries.last!)) s\n"
                            .utf8))
            }
            result.scenarios[scenario] = outcome
        }
        result.violations = timeline.violations(now: now)
        return result
    }

    mutating func stopAll() async {
        for process in live.values {
            process.send(SIGCONT)
            process.send(SIGTERM)
        }
        for process in live.values { _ = await process.wait() }
        live.removeAll()
    }
}
