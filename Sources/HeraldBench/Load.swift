import ArgumentParser
import AsyncHTTPClient
import Coordination
import Delivery
import Foundation
import HeraldModel
import Histogram
import Messaging
import NIOCore
import Pipeline
import Synchronization
import ZaqarSink

/// `herald-bench load`: open-loop load through the real brokers into N `herald node` processes
/// and a built-in Zaqar-compatible sink, with scenario events at given times; writes a JSON
/// result and an HTML report with plots.
struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Open-loop load through RabbitMQ and herald nodes into a recording sink, with failure scenarios; JSON and HTML out.",
        discussion: """
            Events (--event, repeatable) are SECONDS:ACTION[:ARGS]: add-node, sigterm:NODE, kill9:NODE, \
            pause:NODE:SECONDS (SIGSTOP, then SIGCONT), restart-redis, restart-rabbitmq, sink-fail:SECONDS \
            (503s), sink-stall:SECONDS (answers held back), zaqar-outage:SECONDS (every connection to the sink, \
            or through it to the real Zaqar, is closed unanswered), target-fail:PROJECT:SECONDS (that project's \
            queues answer 503), slow-target:PROJECT:SECONDS (that project's queues answer after 5 s), \
            redis-outage:SECONDS (Redis stopped, its data kept, then started again), \
            rabbitmq-node-kill:N:SECONDS (node N of `scripts/servers cluster` stopped, then started again; \
            give --amqp-url all three hosts), redis-failover:SECONDS (the master of `scripts/servers sentinel` \
            killed, started again as a replica later; give --redis-url the sentinel URL). Latency is \
            measured from each event's intended send time (no coordinated omission), in all and per project.
            """
    )

    @Option(
        help:
            "Exchanges the notifications are published to (nova, neutron, cinder): with more than one, each gets an even share, its own service's event types (the nodes' ingest spreads over one queue per exchange)."
    )
    var exchanges: String = "nova"
    /// `--exchanges`, split.
    var exchangeList: [String] { exchanges.split(separator: ",").map { String($0) } }
    @Option(help: "Events published per second (open loop).") var rate: Int = 1_000
    @Option(help: "Seconds of publishing.") var duration: Int = 30
    @Option(help: "herald node processes started at the beginning.") var nodes: Int = 3
    @Option(help: "Subscriptions created through the API.") var subscriptions: Int = 100
    @Option(help: "Projects the events and subscriptions belong to.") var projects: Int = 10
    @Option(help: "HERALD_PARTITIONS of the nodes.") var partitions: Int = 64
    @Option(help: "Distinct notification templates (about --size bytes each).") var templates: Int = 200
    @Option(help: "Approximate notification size in bytes.") var size: Int = 2_500
    @Option(
        help:
            "Fraction (0 to 1) of the notification templates whose project has no subscription: most events of a real cloud meet none."
    )
    var unsubscribedFraction: Double = 0
    @Option(name: .customLong("event"), help: "A scenario event, SECONDS:ACTION[:ARGS].") var events: [String] = []
    @Option(help: "Seconds to wait after publishing for the last deliveries.") var drain: Int = 60
    @Flag(
        help:
            "Publish the notifications persistent (delivery mode 2) to durable exchanges, and run the nodes with HERALD_EXCHANGES_DURABLE=true (oslo.messaging's amqp_durable_queues). By default oslo.messaging sends transient messages to transient exchanges: a RabbitMQ restart loses the messages and the exchanges' bindings, so notifications published before Herald binds again are dropped. A restart-rabbitmq run needs this to expect nothing lost."
    )
    var persistent = false
    @Option(help: "HERALD_LOG_LEVEL of the nodes (their logs are in --out).") var nodeLogLevel: String = "warning"
    @Option(
        name: .customLong("node-set"),
        help: "A HERALD_ setting for every node, KEY=VALUE (repeatable), e.g. HERALD_QUEUE_TYPE=quorum.")
    var nodeSettings: [String] = []
    @Option(
        help:
            "Where the nodes deliver: builtin (answers 201 at once), zaqar (the local Zaqar at $HERALD_TEST_ZAQAR_URL), or a Zaqar URL. Into a Zaqar the built-in sink forwards each request and records the messages of those Zaqar answered 201; the run ends by checking Zaqar's queue stats against that."
    )
    var sink: String = "builtin"
    @Option(
        help:
            "Use running herald nodes instead of starting them: their API URLs, comma-separated (HERALD_API_AUTH=trusted-header). --amqp-url is then their vhost's URL, --key-prefix their HERALD_KEY_PREFIX and --partitions their HERALD_PARTITIONS. The subscriptions carry the sink's URL as their zaqar_url and are deleted at the end; nothing else of the cluster is touched. Node events, add-node and --baselines need nodes the harness started."
    )
    var attach: String?
    @Option(help: "With --attach: the running nodes' HERALD_KEY_PREFIX.") var keyPrefix: String = "herald:"
    @Option(help: "Directory for result.json, report.html and node logs.") var out: String = "bench-results/load"
    @Option(help: "The herald executable (default: next to herald-bench).") var herald: String?
    @Option(help: "RabbitMQ URL (default: $HERALD_TEST_AMQP_URL); a vhost of the run's own is made on it.")
    var amqpURL: String =
        ProcessInfo.processInfo.environment["HERALD_TEST_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
    @Option(help: "Redis URL (default: $HERALD_TEST_REDIS_URL).")
    var redisURL: String = ProcessInfo.processInfo.environment["HERALD_TEST_REDIS_URL"] ?? "redis://127.0.0.1:6379/0"
    @Option(help: "scripts/servers, for vhosts and restarts (default: $HERALD_TEST_SERVERS).")
    var servers: String = ProcessInfo.processInfo.environment["HERALD_TEST_SERVERS"] ?? "scripts/servers"

    func validate() throws {
        guard rate > 0 else { throw ValidationError("--rate \(rate): must be above 0") }
        guard duration > 0 else { throw ValidationError("--duration \(duration): must be above 0") }
        guard nodes > 0 else { throw ValidationError("--nodes \(nodes): must be above 0") }
        guard !exchangeList.isEmpty, Set(exchangeList).count == exchangeList.count,
            exchangeList.allSatisfy({ NotificationCorpus.serviceEventTypes[$0] != nil })
        else {
            throw ValidationError("--exchanges \(exchanges): one to three of nova, neutron, cinder, each once")
        }
        guard subscriptions > 0 else { throw ValidationError("--subscriptions \(subscriptions): must be above 0") }
        guard (0...1).contains(unsubscribedFraction) else {
            throw ValidationError("--unsubscribed-fraction \(unsubscribedFraction): must be between 0 and 1")
        }
        for event in events { _ = try ScenarioEvent(event) }
        // The broker ceiling fills one ingest queue with them, bounded as the nodes' are.
        let ingestBound = nodesQueueShape.ingestMaxMessages
        guard !baselines || ingestBound <= 0 || baselineEvents <= ingestBound else {
            throw ValidationError(
                "--baseline-events \(baselineEvents): more than the ingest queues hold (HERALD_INGEST_QUEUE_MAX_MESSAGES \(ingestBound)); fewer events, or a larger bound with --node-set"
            )
        }
        guard drainNodes.isEmpty || baselines else {
            throw ValidationError("--drain-nodes \(drainNodes): only with --baselines (it is one of their phases)")
        }
        guard drainNodeCounts.allSatisfy({ (1...nodes).contains($0) }),
            drainNodeCounts.count == drainNodes.split(separator: ",").count
        else { throw ValidationError("--drain-nodes \(drainNodes): node counts between 1 and --nodes \(nodes)") }
        guard baselineEvents >= 1_000 else {
            throw ValidationError("--baseline-events \(baselineEvents): at least 1000")
        }
        guard onePostEvents > 0, onePostConnections > 0 else {
            throw ValidationError("--one-post-events and --one-post-connections must be above 0")
        }
        if let rateOfMax {
            guard baselines else {
                throw ValidationError("--rate-of-max needs --baselines (the maximum is measured there)")
            }
            guard rateOfMax > 0 && rateOfMax <= 2 else {
                throw ValidationError("--rate-of-max \(rateOfMax): expected a fraction above 0, at most 2")
            }
        }
        _ = try zaqarURL
        if let attach {
            for url in attachedAPIs where URL(string: url)?.host == nil || !url.hasPrefix("http") {
                throw ValidationError("--attach '\(attach)': '\(url)' is not a node's API URL (http://host:port)")
            }
            guard !baselines else {
                throw ValidationError(
                    "--attach: --baselines stops and restarts the nodes; it needs nodes the harness started")
            }
            for event in try events.map(ScenarioEvent.init)
            where [.addNode, .sigterm, .kill9, .pause].contains(event.action) {
                throw ValidationError(
                    "--event '\(event.label)': with --attach the harness has no node processes to start or signal")
            }
        }
        for setting in nodeSettings where !setting.hasPrefix("HERALD_") || !setting.contains("=") {
            throw ValidationError("--node-set '\(setting)': expected HERALD_KEY=VALUE")
        }
        if nodeSettings.contains(where: { $0.hasPrefix("HERALD_METRICS_PORT=") }) {
            throw ValidationError(
                "--node-set HERALD_METRICS_PORT: the harness reads each node's /metrics on its API port (and every node would take the same port)"
            )
        }
    }

    /// The real Zaqar of `--sink`, nil for the built-in sink.
    var zaqarURL: String? {
        get throws {
            switch sink {
            case "builtin": return nil
            case "zaqar":
                guard let url = ProcessInfo.processInfo.environment["HERALD_TEST_ZAQAR_URL"] else {
                    throw ValidationError(
                        "--sink zaqar: HERALD_TEST_ZAQAR_URL is not set (scripts/bench sets it; or give the URL)")
                }
                return url
            default:
                guard sink.hasPrefix("http://") || sink.hasPrefix("https://"), URL(string: sink)?.host != nil else {
                    throw ValidationError("--sink '\(sink)': expected builtin, zaqar or a Zaqar URL (http://host:port)")
                }
                return sink
            }
        }
    }

    /// The running nodes' API URLs of --attach (none: the harness starts its own).
    var attachedAPIs: [String] {
        (attach ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.map
        { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
    }

    /// --node-set as the nodes' environment sees it (a later setting of a key wins).
    var nodeEnvironment: [String: String] {
        nodeSettings.reduce(into: [:]) { environment, setting in
            let parts = setting.split(separator: "=", maxSplits: 1).map(String.init)
            environment[parts[0]] = parts.count > 1 ? parts[1] : ""
        }
    }

    @Option(help: "Only write report.html next to this earlier result.json (no run).") var reportFrom: String?
    @Flag(
        help:
            "Before the open-loop run: the broker's ceiling for Herald's topology (a plain rabbitmq-c loop), the nodes' maximum on the same notifications, one POST per delivery into the same sink, ready time, idle RSS, CPU and Redis commands per notification."
    )
    var baselines = false
    @Option(help: "Notifications for each saturation phase of --baselines.") var baselineEvents: Int = 50_000
    @Option(
        help:
            "With --baselines: also drain the pre-filled ingest queues with only this many of the nodes running, for each count given (e.g. 1,3), and print the throughput of each against the first (the cluster's ingest scaling; use --exchanges nova,neutron,cinder)."
    )
    var drainNodes: String = ""
    /// `--drain-nodes`, parsed.
    var drainNodeCounts: [Int] { drainNodes.split(separator: ",").compactMap { Int($0) } }
    @Option(help: "Notifications whose deliveries the one-POST baseline sends (at most --baseline-events).")
    var onePostEvents: Int = 10_000
    @Option(help: "Concurrent connections of the one-POST baseline (a node's pool has 8).") var onePostConnections:
        Int = 8
    @Option(help: "With --baselines: publish at this fraction of the nodes' measured maximum instead of --rate.")
    var rateOfMax: Double?

    func run() async throws {
        if let reportFrom {
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let result = try decoder.decode(LoadResult.self, from: Data(contentsOf: URL(fileURLWithPath: reportFrom)))
            let html = URL(fileURLWithPath: reportFrom).deletingLastPathComponent().appendingPathComponent(
                "report.html"
            ).path
            try LoadReport.html(result).write(toFile: html, atomically: true, encoding: .utf8)
            print("wrote \(html)")
            return
        }
        let run = try await LoadRun(options: self)
        do {
            let result = try await run.execute()
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            try encoder.encode(result).write(to: URL(fileURLWithPath: out + "/result.json"))
            try LoadReport.html(result).write(toFile: out + "/report.html", atomically: true, encoding: .utf8)
            await run.cleanUp()
            result.printSummary()
            print("wrote \(out)/result.json and \(out)/report.html")
            if result.lost > 0 { throw ExitCode(2) }
        } catch {
            await run.cleanUp()
            throw error
        }
    }
}

/// One scenario event: what happens to the cluster, and when.
struct ScenarioEvent: Codable, Sendable {
    enum Action: String, Codable, Sendable {
        case addNode = "add-node"
        case sigterm, kill9, pause
        case restartRedis = "restart-redis"
        case restartRabbitMQ = "restart-rabbitmq"
        case sinkFail = "sink-fail"
        case sinkStall = "sink-stall"
        case zaqarOutage = "zaqar-outage"
        case targetFail = "target-fail"
        case slowTarget = "slow-target"
        case redisOutage = "redis-outage"
        case rabbitmqNodeKill = "rabbitmq-node-kill"
        case redisFailover = "redis-failover"
    }

    var at: Double
    var action: Action
    var node: String?
    var seconds: Double?
    /// The project of target-fail and slow-target (`project-N`, as the run names them).
    var project: String?
    var label: String

    init(_ text: String) throws {
        let parts = text.split(separator: ":").map(String.init)
        guard parts.count >= 2, let at = Double(parts[0]), at >= 0, let action = Action(rawValue: parts[1]) else {
            throw ValidationError(
                "--event '\(text)': expected SECONDS:ACTION[:ARGS], ACTION one of add-node, sigterm, kill9, pause, restart-redis, restart-rabbitmq, sink-fail, sink-stall, zaqar-outage, target-fail, slow-target, redis-outage, rabbitmq-node-kill, redis-failover"
            )
        }
        self.at = at
        self.action = action
        label = parts.dropFirst().joined(separator: " ")
        switch action {
        case .sigterm, .kill9:
            guard parts.count == 3 else {
                throw ValidationError(
                    "--event '\(text)': \(action.rawValue) needs a node, e.g. 20:\(action.rawValue):node-2")
            }
            node = parts[2]
        case .pause:
            guard parts.count == 4, let seconds = Double(parts[3]) else {
                throw ValidationError("--event '\(text)': pause needs a node and seconds, e.g. 20:pause:node-2:5")
            }
            node = parts[2]
            self.seconds = seconds
        case .sinkFail, .sinkStall, .zaqarOutage, .redisOutage:
            guard parts.count == 3, let seconds = Double(parts[2]), seconds > 0 else {
                throw ValidationError(
                    "--event '\(text)': \(action.rawValue) needs seconds, e.g. 20:\(action.rawValue):5")
            }
            self.seconds = seconds
        case .targetFail, .slowTarget:
            guard parts.count == 4, !parts[2].isEmpty, let seconds = Double(parts[3]), seconds > 0 else {
                throw ValidationError(
                    "--event '\(text)': \(action.rawValue) needs a project and seconds, e.g. 20:\(action.rawValue):project-3:120"
                )
            }
            project = parts[2]
            self.seconds = seconds
        case .rabbitmqNodeKill:
            guard parts.count == 4, ["1", "2", "3"].contains(parts[2]), let seconds = Double(parts[3]), seconds > 0
            else {
                throw ValidationError(
                    "--event '\(text)': rabbitmq-node-kill needs the cluster node (1-3) and seconds until it starts again, e.g. 60:rabbitmq-node-kill:1:30"
                )
            }
            node = parts[2]
            self.seconds = seconds
        case .redisFailover:
            guard parts.count == 3, let seconds = Double(parts[2]), seconds > 0 else {
                throw ValidationError(
                    "--event '\(text)': redis-failover needs seconds until the killed master starts again (as a replica), e.g. 60:redis-failover:20"
                )
            }
            self.seconds = seconds
        case .addNode, .restartRedis, .restartRabbitMQ:
            guard parts.count == 2 else {
                throw ValidationError("--event '\(text)': \(action.rawValue) takes no arguments")
            }
        }
    }
}

/// The result of one run, as written to result.json.
struct LoadResult: Codable {
    struct Interval: Codable {
        var second: Int
        var published: Int
        var delivered: Int
        /// Deliveries expected for what was published so far, less those seen.
        var backlog: Int
        var latencyMs: Percentiles?
        var partitions: [String: Int]
    }

    /// Latency per project of the deliveries (from intended send time), and of every project
    /// but the ones a target-fail or slow-target event hit.
    struct ProjectLatency: Codable {
        var byProject: [String: Percentiles]
        var faulted: [String]
        var others: Percentiles?
    }

    struct Percentiles: Codable {
        var p50, p75, p95, p99, p999, p9999, max: Double
        var count: Int
    }

    /// CPU used while the load ran (from the start of publishing to the end of the drain).
    struct Process: Codable {
        var name: String
        var cpuSeconds: Double
        var cpuMicrosecondsPerEvent: Double
        var exitStatus: Int32?
    }

    var rate: Int
    var duration: Int
    var nodes: Int
    var subscriptions: Int
    var projects: Int
    var partitions: Int
    var averageEventBytes: Int
    var published: Int
    var expectedDeliveries: Int
    var delivered: Int
    /// Expected (subscription, event) deliveries that never arrived by the end of the run.
    var lost: Int
    var duplicates: Int
    /// First deliveries below one delivered before, per (subscription, partition, exchange);
    /// nil in results written before it was counted.
    var outOfOrder: Int?
    /// Notifications still in Herald's queues when the run ended (ingest, partitions, dead):
    /// nonzero means `lost` counts work the cluster had not finished, not work it dropped;
    /// -1: they could not be counted (the run's log says why).
    var stillQueued: Int
    /// Dead letters Herald recorded (a reason for every undelivered message it gave up on).
    var deadLetters: Int
    var latencyMs: Percentiles?
    var projectLatency: ProjectLatency?
    var intervals: [Interval]
    var events: [ScenarioEvent]
    var processes: [Process]
    /// With --baselines: the same run's ceilings and costs.
    var baselines: LoadBaselines?
    /// With --sink into a Zaqar: what Zaqar's queue stats say against what the sink saw it take.
    var zaqar: ZaqarCheck?

    struct ZaqarCheck: Codable {
        var url: String
        /// Messages in the run's queues (sum of `GET /v2/queues/{q}/stats` totals) before the
        /// open loop and after its drain; nil where a queue's stats could not be read.
        var storedBefore: Int?
        var storedAfter: Int?
        /// Messages of the open loop's requests Zaqar answered 201 (deliveries + duplicates).
        var accepted: Int
        /// Requests Zaqar refused during the whole run (baselines included), by HTTP status.
        var refusedByStatus: [String: Int]

        var grew: Int? {
            guard let storedBefore, let storedAfter else { return nil }
            return storedAfter - storedBefore
        }
    }

    func printSummary() {
        if let b = baselines {
            print(
                String(
                    format:
                        "baselines (%d notifications each): broker ceiling %.0f/s; herald %.0f/s (%.0f deliveries/s) = %.2fx the ceiling (goal >= 0.7)",
                    b.events, b.brokerCeilingPerSecond, b.heraldPerSecond, b.heraldDeliveriesPerSecond,
                    b.heraldToBrokerCeiling))
            print(
                String(
                    format:
                        "  one POST per delivery: %.0f deliveries/s; herald %.2fx that (goal >= 10 into Zaqar); %.1f deliveries per request",
                    b.onePostDeliveriesPerSecond, b.heraldToOnePost, b.messagesPerRequest ?? .nan))
            print(
                String(
                    format:
                        "  batches of %d straight into the sink: %.0f deliveries/s; herald %.2fx that (goal >= 0.9 into Zaqar)",
                    b.sameBatchSize, b.sameBatchDeliveriesPerSecond, b.heraldToSameBatch))
            print(
                String(
                    format:
                        "  cpu %.1f µs per notification (goal <= 10; the plain rabbitmq-c loop alone %.1f µs); Redis %.4f commands per notification (goal <= 0.05)",
                    b.cpuMicrosecondsPerEvent, b.brokerLoopCPUMicrosecondsPerEvent, b.redisCommandsPerEvent))
            print(
                "  ready after " + b.readySeconds.map { String(format: "%.2f s", $0) }.joined(separator: ", ")
                    + " (goal <= 2 s); idle RSS "
                    + zip(b.idleRSSMegabytes, b.idleAnonymousMegabytes).map {
                        String(format: "%.1f MB (%.1f anonymous)", $0, $1)
                    }.joined(separator: ", ") + " (goal <= 50 MB)")
        }
        if let zaqar {
            let stored = zaqar.grew.map { "\($0)" } ?? "unknown"
            print(
                "zaqar \(zaqar.url): took \(zaqar.accepted) messages of the open loop; its queue stats grew by \(stored)"
                    + (zaqar.refusedByStatus.isEmpty
                        ? ""
                        : "; refused requests by status: "
                            + zaqar.refusedByStatus.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
                                separator: " ")))
        }
        print(
            String(
                format:
                    "published %d at %d/s for %d s; deliveries %d of %d expected, not delivered %d, duplicates %d, out of order %d; still queued in RabbitMQ %d, dead letters %d",
                published, rate, duration, delivered, expectedDeliveries, lost, duplicates, outOfOrder ?? -1,
                stillQueued, deadLetters))
        if let latency = latencyMs {
            print(
                String(
                    format:
                        "latency from intended send time (ms): p50 %.1f  p75 %.1f  p95 %.1f  p99 %.1f  p99.9 %.1f  p99.99 %.1f  max %.1f",
                    latency.p50, latency.p75, latency.p95, latency.p99, latency.p999, latency.p9999, latency.max))
        }
        if let projects = projectLatency, !projects.faulted.isEmpty {
            for project in projects.faulted {
                if let p = projects.byProject[project] {
                    print(
                        String(
                            format: "latency of faulted %@ (ms): p50 %.1f  p99 %.1f  max %.1f (%d deliveries)", project,
                            p.p50, p.p99, p.max, p.count))
                }
            }
            if let p = projects.others {
                print(
                    String(
                        format:
                            "latency of every other project (ms): p50 %.1f  p95 %.1f  p99 %.1f  p99.9 %.1f  max %.1f (%d deliveries)",
                        p.p50, p.p95, p.p99, p.p999, p.max, p.count))
            }
        }
        for process in processes {
            print(
                "cpu " + process.name.padding(toLength: 10, withPad: " ", startingAt: 0)
                    + String(
                        format: " %7.2f s  %7.1f µs per published event", process.cpuSeconds,
                        process.cpuMicrosecondsPerEvent))
        }
        let nodes = processes.filter { $0.name != "harness" }
        if nodes.isEmpty {
            print("cpu of the nodes: not measured (running nodes, --attach)")
        } else {
            print(
                String(
                    format: "cpu of all nodes: %.1f µs per published event (publishing to the end of the drain)",
                    nodes.reduce(0) { $0 + $1.cpuMicrosecondsPerEvent }))
        }
    }
}

/// Deliveries as the sink saw them: which (subscription, event) pairs, how often, how late.
final class DeliveryRecorder: Sendable {
    struct State {
        var counts: [Int: UInt16] = [:]
        var delivered = 0
        var duplicates = 0
        var perSecond: [Int: Int] = [:]
        var latency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        var latencyPerSecond: [Int: Histogram<UInt64>] = [:]
        /// By the project of the delivery's subscription.
        var latencyByProject: [String: Histogram<UInt64>] = [:]
        var malformed = 0
        /// First deliveries of a (subscription, partition, exchange) whose seq is below one
        /// delivered before: what one ingest queue carries into one partition must keep its order.
        var outOfOrder = 0
        var lastSeq: [Int: Int] = [:]
    }

    let start: UInt64
    /// The index of the exchange notification `seq` was published to.
    let exchangeOf: @Sendable (Int) -> Int
    let rate: Int
    let subscriptionIndex: [String: Int]
    let subscriptionCount: Int
    /// Each subscription's project, by its index.
    let subscriptionProjects: [String]
    let state = Mutex(State())

    /// What the message ids of the recorded events begin with (then a sequence number).
    let eventMarker: [UInt8]

    init(
        start: UInt64, rate: Int, subscriptionIndex: [String: Int], subscriptionProjects: [String] = [],
        eventPrefix: String = "load-", exchangeOf: @escaping @Sendable (Int) -> Int = { _ in 0 }
    ) {
        self.exchangeOf = exchangeOf
        self.subscriptionProjects = subscriptionProjects
        self.start = start
        self.rate = rate
        eventMarker = Array(#""event_id":""#.utf8) + Array(eventPrefix.utf8)
        self.subscriptionIndex = subscriptionIndex
        subscriptionCount = subscriptionIndex.count
    }

    /// The event's intended send time: the open loop's schedule, whatever the publisher managed.
    func intended(_ seq: Int) -> UInt64 {
        start + UInt64(seq) * 1_000_000_000 / UInt64(rate)
    }

    /// Records one request's messages (`"subscription_id":"..","event_id":"load-<seq>"` each).
    func record(_ body: ByteBuffer, now: UInt64) {
        let bytes = Array(body.readableBytesView)
        var found: [(Int, Int, Int)] = []  // subscription, seq, partition (-1: not found)
        var malformed = 0
        var cursor = 0
        let marker = Array(#""subscription_id":""#.utf8)
        let partitionMarker = Array(#""partition":"#.utf8)
        while let at = Self.find(marker, in: bytes, from: cursor) {
            let idStart = at + marker.count
            guard let idEnd = bytes[idStart...].firstIndex(of: UInt8(ascii: "\"")),
                let eventAt = Self.find(eventMarker, in: bytes, from: idEnd),
                let seqEnd = bytes[(eventAt + eventMarker.count)...].firstIndex(of: UInt8(ascii: "\""))
            else {
                malformed += 1
                break
            }
            let id = String(decoding: bytes[idStart..<idEnd], as: UTF8.self)
            let seq = Int(String(decoding: bytes[(eventAt + eventMarker.count)..<seqEnd], as: UTF8.self))
            var partition = -1
            if let at = Self.find(partitionMarker, in: bytes, from: seqEnd), at - seqEnd < 8 {
                var value = 0
                var index = at + partitionMarker.count
                while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57, value < 1_000_000 {
                    value = value * 10 + Int(bytes[index] - 48)
                    index += 1
                }
                partition = value
            }
            if let index = subscriptionIndex[id], let seq {
                found.append((index, seq, partition))
            } else {
                malformed += 1
            }
            cursor = seqEnd
        }
        let second = Int((now - start) / 1_000_000_000)
        state.withLock { state in
            state.malformed += malformed
            for (subscription, seq, partition) in found {
                let key = seq * subscriptionCount + subscription
                let count = state.counts[key, default: 0]
                state.counts[key] = count &+ 1
                if count > 0 {
                    state.duplicates += 1
                    continue
                }
                state.delivered += 1
                if partition >= 0 {
                    let stream = (subscription * 1_000_003 + partition) * 8 + exchangeOf(seq)
                    if let last = state.lastSeq[stream], seq < last { state.outOfOrder += 1 }
                    state.lastSeq[stream] = max(seq, state.lastSeq[stream] ?? -1)
                }
                state.perSecond[second, default: 0] += 1
                let micros = now > intended(seq) ? (now - intended(seq)) / 1_000 : 0
                _ = state.latency.record(min(micros, 3_600_000_000))
                _ = state.latencyPerSecond[
                    second,
                    default: Histogram<UInt64>(
                        highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .two)
                ].record(min(micros, 3_600_000_000))
                if subscription < subscriptionProjects.count {
                    _ = state.latencyByProject[
                        subscriptionProjects[subscription],
                        default: Histogram<UInt64>(
                            highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
                    ]
                    .record(min(micros, 3_600_000_000))
                }
            }
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard needle.count <= haystack.count, start <= haystack.count - needle.count else { return nil }
        var index = start
        let first = needle[0]
        while index <= haystack.count - needle.count {
            if haystack[index] == first && haystack[index..<(index + needle.count)].elementsEqual(needle) {
                return index
            }
            index += 1
        }
        return nil
    }

    static func percentiles(_ histogram: Histogram<UInt64>) -> LoadResult.Percentiles? {
        guard histogram.totalCount > 0 else { return nil }
        func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }
        return LoadResult.Percentiles(
            p50: ms(50), p75: ms(75), p95: ms(95), p99: ms(99), p999: ms(99.9), p9999: ms(99.99),
            max: Double(histogram.max) / 1000, count: Int(histogram.totalCount))
    }
}

/// The load harness's Zaqar (a `ZaqarSink`): takes `POST /v2/queues/{q}/messages`, records each
/// message's subscription and event, answers 201 (or 503 while failing, late while stalled).
/// With an upstream (a real Zaqar) it forwards each request there and records its messages
/// when Zaqar answered 201, passing Zaqar's answer back to the node.
final class RecordingSink: Sendable {
    enum Mode: Int {
        case normal = 0
        case failing = 1
        case stalling = 2
        case down = 3
    }

    /// What one project's queues do (target-fail, slow-target).
    enum ProjectFault: Sendable { case failing, slow }

    /// How long a slow target takes to answer.
    static let slowAnswer: Duration = .seconds(5)

    /// A real Zaqar the sink forwards to.
    struct Upstream: Sendable {
        let url: String
        let client: HTTPClient
    }

    /// What the sink's script reads and records, shared with it by reference.
    final class Books: Sendable {
        let recorder = Mutex<DeliveryRecorder?>(nil)
        let mode = Atomic<Int>(0)
        let projectFaults = Mutex<[String: ProjectFault]>([:])
        /// Forwarded requests Zaqar refused (or the sink could not forward: 502), by status.
        let refused = Mutex<[Int: Int]>([:])

        var current: Mode { Mode(rawValue: mode.load(ordering: .relaxed)) ?? .normal }

        /// Records the messages of a request the sink (or Zaqar behind it) took.
        func record(_ request: ZaqarSink.Request) {
            recorder.withLock { $0 }?.record(request.body, now: DispatchTime.now().uptimeNanoseconds)
        }
    }

    private let server: ZaqarSink
    private let books: Books
    let upstream: Upstream?
    /// Forwarded requests Zaqar refused (or the sink could not forward: 502), by status.
    var refusedByStatus: [Int: Int] { books.refused.withLock { $0 } }
    var url: String { server.url }

    private init(server: ZaqarSink, books: Books, upstream: Upstream?) {
        self.server = server
        self.books = books
        self.upstream = upstream
    }

    /// Where deliveries are recorded from now on (before: answered, not recorded).
    func use(_ recorder: DeliveryRecorder) { books.recorder.withLock { $0 = recorder } }
    var recorder: DeliveryRecorder? { books.recorder.withLock { $0 } }

    /// `upstream`: a Zaqar URL to forward to (nil: answer 201 at once).
    static func start(upstream url: String? = nil) async throws -> RecordingSink {
        let upstream = url.map { url in
            var configuration = HTTPClient.Configuration()
            configuration.connectionPool = .init(
                idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 8)
            return Upstream(
                url: url.hasSuffix("/") ? String(url.dropLast()) : url,
                client: HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration))
        }
        let books = Books()
        // During a zaqar-outage every new connection is closed at once, and every request on an open one.
        let server = try await ZaqarSink(accepting: { books.current != .down }) { request in
            if books.current == .down { return .reset }
            switch request.project.flatMap({ project in books.projectFaults.withLock { $0[project] } }) {
            case .failing:
                return .answer(
                    status: 503, headers: ["Content-Type": "application/json"],
                    body:
                        #"{"title": "Service Unavailable", "description": "this project's target is failing on purpose"}"#
                )
            case .slow:
                return .later {
                    try? await Task.sleep(for: slowAnswer)
                    return await take(request, books: books, upstream: upstream)
                }
            case nil:
                break
            }
            switch books.current {
            case .failing:
                return .answer(
                    status: 503, headers: ["Content-Type": "application/json"],
                    body: #"{"title": "Service Unavailable", "description": "the load sink is failing on purpose"}"#)
            case .stalling:
                // Held back until the stall ends, then taken.
                return .later {
                    while books.current == .stalling { try? await Task.sleep(for: .milliseconds(50)) }
                    return await take(request, books: books, upstream: upstream)
                }
            case .normal, .down:
                guard upstream != nil else { return take(request, books: books) }
                return .later { await take(request, books: books, upstream: upstream) }
            }
        }
        return RecordingSink(server: server, books: books, upstream: upstream)
    }

    func set(_ newMode: Mode) { books.mode.store(newMode.rawValue, ordering: .relaxed) }
    func set(_ fault: ProjectFault?, project: String) { books.projectFaults.withLock { $0[project] = fault } }
    var current: Mode { books.current }

    func stop() async {
        await server.close()
        try? await upstream?.client.shutdown()
    }

    /// Records and answers 201.
    private static func take(_ request: ZaqarSink.Request, books: Books) -> ZaqarSink.Answer {
        books.record(request)
        return .accept
    }

    /// Records and answers 201, or forwards to Zaqar and records what Zaqar took.
    private static func take(
        _ request: ZaqarSink.Request, books: Books, upstream: Upstream?
    ) async
        -> ZaqarSink.Answer
    {
        guard let upstream else { return take(request, books: books) }
        var forwarded = HTTPClientRequest(url: upstream.url + request.uri)
        forwarded.method = request.method
        forwarded.headers = request.headers
        for name in ["Host", "Content-Length", "Connection", "Transfer-Encoding"] {
            forwarded.headers.remove(name: name)
        }
        forwarded.body = .bytes(request.body)
        do {
            let response = try await upstream.client.execute(forwarded, timeout: .seconds(60))
            // Zaqar's status decides; its answer's body is passed back when it can be read.
            if response.status == .created {
                books.record(request)
            } else {
                books.refused.withLock { $0[Int(response.status.code), default: 0] += 1 }
            }
            let body = (try? await response.body.collect(upTo: 1 << 20)).map { String(buffer: $0) } ?? ""
            return .answer(
                status: Int(response.status.code), headers: ["Content-Type": "application/json"], body: body)
        } catch {
            books.refused.withLock { $0[502, default: 0] += 1 }
            return .answer(
                status: 502, headers: ["Content-Type": "application/json"],
                body: #"{"title": "Bad Gateway", "description": "the load sink could not reach Zaqar: \#(error)"}"#)
        }
    }
}
