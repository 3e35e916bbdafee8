import AsyncHTTPClient
import Coordination
import Foundation
import HeraldModel
import Pipeline
import TestSupport
import Testing

/// One delivered message as read back from Zaqar.
struct Delivered {
    var seq: Int
    var eventType: String
    var eventID: String
    var subscriptionID: String
    var partition: Int
    /// The fencing epoch of the owner that delivered it.
    var epoch: Int
}

extension Delivered {
    /// A message body in Herald's format (`{"event": ..., "herald": ...}`, the event numbered by
    /// `seq` in its payload); nil for anything else.
    init?(body: [String: Any]) {
        guard let event = body["event"] as? [String: Any], let herald = body["herald"] as? [String: Any],
            let payload = event["payload"] as? [String: Any], let seq = payload["seq"] as? Int,
            let eventID = herald["event_id"] as? String,
            let subscriptionID = herald["subscription_id"] as? String,
            let partition = herald["partition"] as? Int, let epoch = herald["epoch"] as? Int
        else { return nil }
        self.init(
            seq: seq, eventType: event["event_type"] as? String ?? "", eventID: eventID,
            subscriptionID: subscriptionID, partition: partition, epoch: epoch)
    }

    /// The same, from the body's JSON text (as a `HostileZaqar` keeps it).
    init?(json: String) {
        guard let body = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            return nil
        }
        self.init(body: body)
    }
}

/// The sum of an integer field (`key=N`, the nodes' text log format) over the log's lines that
/// `including` accepts.
func loggedSum(_ log: String, field key: String, including: (Substring) -> Bool = { _ in true }) -> Int {
    log.split(separator: "\n").filter(including).reduce(0) { total, line in
        let field = line.split(separator: " ").first { $0.hasPrefix(key + "=") }
        return total + (field.flatMap { Int($0.dropFirst(key.count + 1)) } ?? 0)
    }
}

/// A cluster of `herald node` processes in a RabbitMQ vhost and Redis key prefix of
/// their own, with the publisher and the Zaqar reader the end-to-end tests use.
final class PipelineRun: @unchecked Sendable {
    /// One node of the run: a `herald node` process, or a node built in the test process by
    /// `buildNode` (`InProcessNode`). Either writes its log to `log`.
    final class NodeHandle {
        enum Runner {
            case process(ChildProcess)
            case inProcess(InProcessNode)
        }

        let name: String
        let runner: Runner
        /// Where its API listens, on 127.0.0.1.
        let apiPort: Int
        let log: String
        var exitStatus: Int32?

        init(name: String, runner: Runner, apiPort: Int, log: String) {
            self.name = name
            self.runner = runner
            self.apiPort = apiPort
            self.log = log
        }

        /// The process, for a node that is one.
        var process: ChildProcess? {
            if case .process(let process) = runner { process } else { nil }
        }

        /// The last lines of its log.
        func tail(_ lines: Int = 20) -> String {
            ChildProcess.tail(of: log, lines: lines)
        }
    }

    /// How a test's nodes run: in the test process (the default: nothing to spawn, the same code
    /// as `herald node` but the command line), or as processes, for what only a process has: a
    /// signal (kill -9, SIGTERM), an exit status, the command's own start-up (the catalog lookup).
    enum NodeKind {
        case inProcess
        case process
    }

    let partitions: Int
    /// HERALD_SHUTDOWN_BUDGET_SECONDS of the nodes.
    static let shutdownBudget = 15
    let prefix = TestServers.uniqueName("herald-e2e") + ":"
    /// The nodes' AMQP names, derived from the prefix as the nodes derive them.
    var names: ClusterNames {
        get throws { try ClusterNames(cluster: ClusterNames.derived(fromKeyPrefix: prefix)) }
    }
    /// Names this run's vhost and Zaqar queues, so a run cut short leaves nothing in the next one's way.
    let id = String(UUID().uuidString.prefix(8).lowercased())
    let vhost: String
    let amqpURL: String
    /// On the RabbitMQ cluster: the nodes then use quorum queues.
    let onCluster: Bool
    let redisURL: String
    let zaqar: ZaqarReader
    let registry: SubscriptionRegistry
    let deadLetters: DeadLetterStore
    let redis: RedisClient
    let directory: String
    var nodes: [String: NodeHandle] = [:]
    private var counter = 0
    private var publisherLog: String?
    private var vhostDeleted = false
    private var queues: [(project: String, queue: String)] = []

    /// - Parameter clusterURL: a RabbitMQ cluster's URL (all its hosts) to run on, in a vhost of
    ///   the run's own there, instead of one of the test RabbitMQ's.
    /// - Parameter redisURL: the Redis to coordinate in (e.g. a Sentinel URL) instead of the test Redis.
    init(partitions: Int, clusterURL: String? = nil, redisURL: String? = nil) async throws {
        self.partitions = partitions
        // HERALD_TEST_E2E_ON_CLUSTER=1: every run on the three-node cluster, with quorum queues.
        let clusterURL =
            try clusterURL
            ?? (ProcessInfo.processInfo.environment["HERALD_TEST_E2E_ON_CLUSTER"] == "1"
                ? TestServers.value("HERALD_TEST_AMQP_CLUSTER_URL") : nil)
        onCluster = clusterURL != nil
        // A vhost of its own on the cluster too: a run's queues stay bound to the shared
        // exchanges after it ends, and in a shared vhost every later run's notifications
        // would pile up in them (on a cluster, each into a quorum queue on three nodes).
        vhost = "herald-e2e-" + id
        // What can fail first, so that a vhost is made only when the run will exist to remove it.
        amqpURL = try (clusterURL ?? TestServers.amqpURL()).replacingOccurrences(of: "/%2F", with: "/" + vhost)
        self.redisURL = try redisURL ?? TestServers.redisURL()
        zaqar = ZaqarReader(baseURL: try TestServers.pipelineZaqarURL())
        let redisConfiguration = try RedisConfiguration(url: self.redisURL)
        registry = SubscriptionRegistry(redis: redisConfiguration, keyPrefix: prefix)
        redis = RedisClient(configuration: redisConfiguration)
        deadLetters = DeadLetterStore(redis: redis, keyPrefix: prefix)
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-e2e-" + id).path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try await Self.rabbitmqctl(onCluster: onCluster, ["add_vhost", vhost])
        do {
            try await Self.rabbitmqctl(
                onCluster: onCluster, ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])
        } catch {
            try? await Self.rabbitmqctl(onCluster: onCluster, ["delete_vhost", vhost])
            throw error
        }
    }

    var environment: [String: String] {
        get throws {
            [
                "HERALD_REDIS_URL": redisURL, "HERALD_AMQP_URL": amqpURL, "HERALD_ZAQAR_URL": zaqar.baseURL,
                "HERALD_KEY_PREFIX": prefix, "HERALD_PARTITIONS": "\(partitions)",
                "HERALD_EXCHANGES": "nova,neutron,cinder",
                "HERALD_LOG_LEVEL": ProcessInfo.processInfo.environment["HERALD_TEST_NODE_LOG_LEVEL"] ?? "warning",
                "HERALD_SHUTDOWN_BUDGET_SECONDS": "\(Self.shutdownBudget)",
                "HERALD_API_HOST": "127.0.0.1", "HERALD_API_AUTH": "trusted-header",
            ].merging(onCluster ? ["HERALD_QUEUE_TYPE": "quorum"] : [:]) { $1 }
                .merging(Self.experimentSettings) { $1 }
        }
    }

    /// For experiments: `HERALD_E2E_NODE_<NAME>=<value>` in the test's environment gives every
    /// node `<NAME>=<value>` (e.g. HERALD_E2E_NODE_HERALD_DELIVERY_TIMEOUT_SECONDS=1: a Zaqar that
    /// times out often).
    static var experimentSettings: [String: String] {
        let prefix = "HERALD_E2E_NODE_"
        return ProcessInfo.processInfo.environment.reduce(into: [:]) { settings, variable in
            if variable.key.hasPrefix(prefix) {
                settings[String(variable.key.dropFirst(prefix.count))] = variable.value
            }
        }
    }

    /// A Zaqar queue name of this run's own.
    func queue(_ name: String) -> String {
        "\(name)-\(id)"
    }

    func startNodes(_ count: Int, extra: [String: String] = [:], as kind: NodeKind = .process) async throws {
        for _ in 0..<count {
            counter += 1
            let name = "node-\(counter)"
            var environment = try environment
            let port = try TestServers.freePort()
            environment["HERALD_NODE_ID"] = name
            environment["HERALD_API_PORT"] = "\(port)"
            environment.merge(extra) { _, new in new }
            let log = "\(directory)/\(name).log"
            let runner: NodeHandle.Runner
            switch kind {
            case .process:
                let binary = try TestServers.value("HERALD_TEST_BIN_DIR") + "/herald"
                runner = .process(
                    try ChildProcess(name: name, argv: [binary, "node"], environment: environment, log: log))
            case .inProcess:
                runner = .inProcess(try InProcessNode(environment: environment, log: log))
            }
            nodes[name] = NodeHandle(name: name, runner: runner, apiPort: port, log: log)
        }
    }

    /// The node ids holding a partition lease now.
    func leaseHolders() async throws -> Set<String> {
        let leases = try await redis.pipeline((0..<partitions).map { RedisCommand("GET", prefix + "lease:\($0)") })
        return Set(
            leases.compactMap { $0.string?.split(separator: "|").first?.split(separator: "#").first.map(String.init) })
    }

    /// The nodes holding the ingest queues' leases (one lease per exchange, `<prefix>ingest:<fingerprint>:lease:<n>`),
    /// by lease key.
    func ingestLeaseHolders() async throws -> [String: String] {
        let keys = try await redis.send("KEYS", prefix + "ingest:*:lease:*").array?.compactMap(\.string) ?? []
        guard !keys.isEmpty else { return [:] }
        let values = try await redis.pipeline(keys.map { RedisCommand("GET", $0) })
        var holders: [String: String] = [:]
        for (key, value) in zip(keys, values) {
            if let node = value.string?.split(separator: "|").first?.split(separator: "#").first {
                holders[key] = String(node)
            }
        }
        return holders
    }

    /// Waits until every partition's lease is held by a live owner.
    func waitAllPartitionsHeld(timeout: Duration = .seconds(60)) async throws {
        try await eventually(timeout: timeout) {
            let leases = try await redis.pipeline((0..<partitions).map { RedisCommand("GET", prefix + "lease:\($0)") })
            let owners = leases.compactMap { $0.string?.split(separator: "|").first.map(String.init) }
            guard owners.count == partitions else {
                throw TestFailure("\(owners.count) of \(partitions) partitions held")
            }
            let alive = try await redis.pipeline(Set(owners).map { RedisCommand("EXISTS", prefix + "alive:" + $0) })
            guard alive.allSatisfy({ $0 == .integer(1) }) else { throw TestFailure("a lease holder is not alive") }
        }
    }

    /// `rabbitmqctl ARGS` on the RabbitMQ this run uses (its output goes to the test's).
    func rabbitmqctl(_ arguments: String...) async throws {
        try await Self.rabbitmqctl(onCluster: onCluster, arguments)
    }

    private static func rabbitmqctl(onCluster: Bool, _ arguments: [String]) async throws {
        try await TestServers.control(
            arguments: (onCluster ? ["cluster", "rabbitmqctl"] : ["rabbitmqctl"]) + arguments)
    }

    func publish(_ lines: [[String: Any]]) throws -> ChildProcess {
        let input = "\(directory)/notifications.jsonl"
        let text = try lines.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }
            .joined(separator: "\n")
        try text.write(toFile: input, atomically: true, encoding: .utf8)
        let log = "\(directory)/publisher.log"
        publisherLog = log
        let script = URL(fileURLWithPath: try TestServers.value("HERALD_TEST_SERVERS")).deletingLastPathComponent()
            .appendingPathComponent("publish-notifications.py").path
        return try ChildProcess(
            name: "publisher",
            argv: [try TestServers.value("HERALD_TEST_PYTHON"), script, "--url", amqpURL, "--input", input],
            environment: [:], log: log)
    }

    /// Waits until the publisher reports `count` published. When it does not, prints what
    /// the publisher said last, the broker's alarms and this run's queues.
    func waitForIngested(_ count: Int, timeout: Duration) async throws {
        do {
            try await eventually(timeout: timeout) {
                let progress =
                    publisherOutput.split(separator: "\n").last { $0.hasPrefix("progress ") }.flatMap {
                        Int($0.dropFirst(9))
                    } ?? 0
                guard progress >= count else { throw TestFailure("published \(progress) of \(count)") }
            }
        } catch {
            print(
                "publisher stalled; its last lines:\n"
                    + publisherOutput.split(separator: "\n").suffix(20).map { "  " + $0.prefix(400) }.joined(
                        separator: "\n"))
            // rabbitmqctl has no list_alarms (that is rabbitmq-diagnostics); its status lists them.
            try? await rabbitmqctl("status")
            try? await rabbitmqctl(
                "list_queues", "-p", vhost, "name", "type", "messages_ready", "messages_unacknowledged", "consumers")
            throw error
        }
    }

    private var publisherOutput: String {
        publisherLog.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
    }

    /// Whether a node has ended (a process reaped without waiting when it has).
    func exited(_ name: String) async -> Bool {
        guard let node = nodes[name] else { return true }
        if node.exitStatus != nil { return true }
        switch node.runner {
        case .process(let process):
            var status: Int32 = 0
            let reaped = waitpid(process.pid, &status, WNOHANG)
            if reaped == process.pid { node.exitStatus = status }
            return reaped == process.pid
        case .inProcess(let inProcess):
            return inProcess.hasEnded
        }
    }

    /// Sends `signal` to a node's process and waits for its end; an in-process node takes only
    /// SIGTERM (its group's graceful shutdown).
    func stop(_ name: String, signal: Int32) async throws {
        guard let node = nodes[name] else { return }
        switch node.runner {
        case .process(let process):
            process.send(signal)
            node.exitStatus = await process.wait()
        case .inProcess(let inProcess):
            guard signal == SIGTERM else {
                throw TestFailure(
                    "\(name) runs in the test process: only SIGTERM can stop it (start it `as: .process`)")
            }
            node.exitStatus = await inProcess.stop()
        }
    }

    /// Waits until every queue holds at least what is expected (Zaqar's queue stats),
    /// then reads everything back once.
    func readUntil(expected: [(Subscription, Set<Int>)], timeout: Duration) async throws -> [String: [Delivered]] {
        queues = expected.map { ($0.0.project, $0.0.target.queue) }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var short = 0
            for (subscription, wanted) in expected {
                let (_, json) = try await zaqar.request(
                    "/v2/queues/\(subscription.target.queue)/stats", project: subscription.project)
                let total = ((json as? [String: Any])?["messages"] as? [String: Any])?["total"] as? Int ?? 0
                if total < wanted.count { short += 1 }
            }
            if short == 0 { break }
            try await Task.sleep(for: .seconds(1))
        }
        // A little longer, so late duplicates show up too.
        try await Task.sleep(for: .seconds(2))
        var result: [String: [Delivered]] = [:]
        for (subscription, _) in expected {
            let bodies = try await zaqar.bodies(queue: subscription.target.queue, project: subscription.project)
            result[subscription.target.queue] = bodies.compactMap(Delivered.init(body:))
        }
        return result
    }

    /// Notifications for `project`, numbered by `seq` in their payload (nova's, 40 servers).
    func numberedLines(project: String, _ range: Range<Int>) -> [[String: Any]] {
        range.map { seq in
            [
                "exchange": "nova", "event_type": "compute.instance.update", "project": project,
                "payload": ["tenant_id": project, "instance_id": "i-\(seq % 40)", "seq": seq],
            ]
        }
    }

    /// The `seq`s in `queue` now.
    func numbered(queue: String, project: String) async throws -> Set<Int> {
        Set(
            try await zaqar.bodies(queue: queue, project: project).compactMap { body -> Int? in
                ((body["event"] as? [String: Any])?["payload"] as? [String: Any])?["seq"] as? Int
            })
    }

    /// Waits until `queue` holds every `seq` of `0..<count` at least once; returns those seen.
    func waitForNumbered(
        queue: String, project: String, count: Int, timeout: Duration = .seconds(120)
    ) async throws -> Set<Int> {
        try await eventually(timeout: timeout) {
            let seqs = try await numbered(queue: queue, project: project).filter { (0..<count).contains($0) }
            guard seqs.count >= count else {
                throw TestFailure(
                    "\(seqs.count) of \(count) events arrived; missing e.g. \(Set(0..<count).subtracting(seqs).sorted().prefix(5))"
                )
            }
            return seqs
        }
    }

    /// A node's `/metrics`, as `name{labels}` -> value (Prometheus' text format; comments left out).
    func metrics(of name: String) async throws -> [String: Double] {
        let port = try #require(nodes[name]?.apiPort)
        let response = try await HTTPClient.shared.execute(
            HTTPClientRequest(url: "http://127.0.0.1:\(port)/metrics"), timeout: .seconds(10))
        return Self.metricValues(String(buffer: try await response.body.collect(upTo: 4 << 20)))
    }

    /// Prometheus' text format as `name{labels}` -> value (comments left out).
    static func metricValues(_ text: String) -> [String: Double] {
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            values[String(line[..<space])] = value
        }
        return values
    }

    /// Queues to delete at the end.
    func trackQueues(_ more: [(project: String, queue: String)]) {
        queues += more
    }

    /// Runs `body` with a new run, then stops its nodes and removes its vhost and queues, awaited,
    /// whether `body` threw or not (the next test starts on a clean machine).
    static func with<Result>(
        partitions: Int, clusterURL: String? = nil, redisURL: String? = nil,
        _ body: (PipelineRun) async throws -> Result
    ) async throws -> Result {
        let run = try await PipelineRun(partitions: partitions, clusterURL: clusterURL, redisURL: redisURL)
        do {
            let result = try await body(run)
            await run.stopAll()
            return result
        } catch {
            await run.stopAll()
            throw error
        }
    }

    /// SIGTERM every node still running, then clean up the vhost and the queues.
    func stopAll() async {
        // All at once, as a rollout's SIGTERMs would come.
        let stopping = nodes.values.filter { $0.exitStatus == nil }
        let statuses = await withTaskGroup(of: (String, Int32).self) { group in
            for node in stopping {
                let name = node.name
                switch node.runner {
                case .process(let process):
                    process.send(SIGTERM)
                    group.addTask { (name, await process.wait()) }
                case .inProcess(let inProcess):
                    group.addTask { (name, await inProcess.stop()) }
                }
            }
            return await group.reduce(into: [String: Int32]()) { $0[$1.0] = $1.1 }
        }
        for node in stopping { node.exitStatus = statuses[node.name] }
        for (project, queue) in queues {
            _ = try? await zaqar.request("/v2/queues/\(queue)", project: project, method: .DELETE)
        }
        queues = []
        if !vhostDeleted {
            vhostDeleted = true
            try? await rabbitmqctl("delete_vhost", vhost)
        }
        // The logs stay for a look after a failure; the input (15 MB in the end-to-end test) goes.
        try? FileManager.default.removeItem(atPath: "\(directory)/notifications.jsonl")
    }
}
