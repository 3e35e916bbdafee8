import ArgumentParser
import AsyncHTTPClient
import ChildProcesses
import Coordination
import Delivery
import Foundation
import HeraldModel
import Histogram
import Messaging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Notifications
import Routing
import Synchronization

/// A `herald node` process of the load run, its log in the output directory.
final class LoadNode: @unchecked Sendable {
    let name: String
    let process: ChildProcess
    let apiPort: Int
    /// The last CPU seconds read from /proc (kept after the process is gone).
    var cpuSeconds = 0.0
    /// CPU seconds when the load began (0 for a node started during it: its start-up counts).
    var cpuAtStart = 0.0

    init(name: String, executable: String, environment: [String: String], log: String) throws {
        self.name = name
        apiPort = Int(environment["HERALD_API_PORT"] ?? "0") ?? 0
        process = try ChildProcess(
            [executable, "node"], name: name, environment: .exactly(environment), output: .file(log))
    }

    var pid: pid_t { process.pid }

    func signal(_ signal: Int32) { process.send(signal) }

    /// utime + stime of a running process, from /proc/PID/stat.
    func sampleCPU() {
        guard process.isRunning, let seconds = LoadNode.cpuSeconds(pid: pid) else { return }
        cpuSeconds = seconds
    }

    static func cpuSeconds(pid: pid_t) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// One load run: servers' vhost and key prefix of its own, nodes, subscriptions, publisher,
/// sink, sampler and scenario.
final class LoadRun: @unchecked Sendable {
    let options: Load
    let id = String(UUID().uuidString.prefix(8).lowercased())
    let prefix: String
    /// The nodes' AMQP names (HERALD_CLUSTER unset: derived from the key prefix, as the nodes do).
    var clusterNames: ClusterNames {
        get throws { try ClusterNames(cluster: ClusterNames.derived(fromKeyPrefix: prefix)) }
    }
    /// The ingest queue notifications published to `exchange` wait in: the cluster's one
    /// `<cluster>.ingest` when it has it (HERALD_INGEST_LAYOUT=single, or an older cluster), else
    /// the exchange's own.
    func ingestQueue(exchange: String, connection: AMQPConnection) async throws -> String {
        let names = try clusterNames
        let single = ((try? await connection.queueState(names.ingest)) ?? nil) != nil
        return single ? names.ingest : names.ingestQueue(exchange: exchange)
    }

    let vhost: String
    let vhostURL: String
    let executable: String
    let corpus: NotificationCorpus
    /// Per template: its bytes around the message id, and how many subscriptions it reaches.
    var templates: [(head: [UInt8], tail: [UInt8], matches: [Int])] = []
    var nodes: [String: LoadNode] = [:]
    var nodeCounter = 0
    var subscriptionIDs: [String] = []
    var subscriptionProjects: [String] = []
    let published = Atomic<Int>(0)
    let expectedSoFar = Atomic<Int>(0)
    var intervals: [LoadResult.Interval] = []
    let redis: RedisClient
    var sink: RecordingSink?
    static let placeholder = "HERALD-LOAD-MESSAGE-ID"
    /// The Client-ID of the harness's own requests to Zaqar (Zaqar wants a UUID on each).
    static let clientID = "5e1f5b4c-6b8e-4a3c-9a51-3f6a2d7c9b10"
    /// The scenario, in time order (validated by `Load.validate`).
    let scenario: [ScenarioEvent]

    init(options: Load) async throws {
        self.options = options
        scenario = try options.events.map(ScenarioEvent.init).sorted { $0.at < $1.at }
        if options.attach != nil {
            // The running cluster's own vhost and prefix, used as they are.
            prefix = options.keyPrefix
            vhost = ""
            vhostURL = options.amqpURL
        } else {
            prefix = "herald-load-\(id):"
            vhost = "herald-load-\(id)"
            guard options.amqpURL.hasSuffix("/%2F") || options.amqpURL.hasSuffix("/") else {
                throw ValidationError(
                    "--amqp-url \(options.amqpURL): give the broker's root vhost URL (…/%2F); the run makes a vhost of its own"
                )
            }
            vhostURL =
                options.amqpURL.replacingOccurrences(of: "/%2F", with: "").trimmingCharacters(
                    in: CharacterSet(charactersIn: "/")) + "/" + vhost
        }
        executable =
            try options.herald
            ?? URL(fileURLWithPath: FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .deletingLastPathComponent().appendingPathComponent("herald").path
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw ValidationError(
                "--herald \(executable): not an executable; build it with swift build -c release --product herald")
        }
        let exchanges = options.exchangeList
        corpus = NotificationCorpus(
            count: options.templates, size: options.size, projects: options.projects, messageID: Self.placeholder,
            services: exchanges.count > 1 ? exchanges : [], unsubscribedFraction: options.unsubscribedFraction)
        redis = RedisClient(configuration: try RedisConfiguration(url: options.redisURL))
    }

    /// Runs `scripts/servers ARGUMENTS...` to its end (`ChildProcess`: `restart redis` leaves a
    /// daemon holding the descriptors Foundation's Process watches, whose waitUntilExit then
    /// never returned).
    func control(_ arguments: String...) async throws {
        try await control(arguments)
    }

    func control(_ arguments: [String]) async throws {
        let argv = ["/usr/bin/env", "bash", options.servers] + arguments
        let code: Int32
        do {
            code = try await ChildProcess.run(argv, input: .null, output: .null)
        } catch {
            throw ValidationError("\(options.servers) \(arguments.joined(separator: " ")): \(error)")
        }
        guard code == 0 else {
            throw ValidationError(
                "\(options.servers) \(arguments.joined(separator: " ")) failed (\(code > 128 ? "signal \(code - 128)" : "exit status \(code)"))"
            )
        }
    }

    func log(_ text: String) {
        FileHandle.standardError.write(Data("load: \(text)\n".utf8))
    }

    /// Starts a node: a new one, or `name` again (its log is appended to).
    func startNode(name given: String? = nil) throws -> String {
        let name: String
        if let given {
            name = given
        } else {
            nodeCounter += 1
            name = "node-\(nodeCounter)"
        }
        let port = try LoopbackPort.pick()
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("HERALD_") }
        environment.merge([
            "HERALD_NODE_ID": name, "HERALD_REDIS_URL": options.redisURL, "HERALD_AMQP_URL": vhostURL,
            "HERALD_ZAQAR_URL": sink!.url,
            "HERALD_KEY_PREFIX": prefix, "HERALD_PARTITIONS": "\(options.partitions)",
            "HERALD_EXCHANGES": "nova,neutron,cinder",
            "HERALD_API_HOST": "127.0.0.1", "HERALD_API_PORT": "\(port)", "HERALD_API_AUTH": "trusted-header",
            "HERALD_LOG_LEVEL": options.nodeLogLevel,
        ]) { _, new in new }
        // Persistent notifications come with durable exchanges (oslo.messaging's
        // amqp_durable_queues): only then do Herald's bindings survive a broker restart.
        if options.persistent { environment["HERALD_EXCHANGES_DURABLE"] = "true" }
        environment.merge(options.nodeEnvironment) { _, new in new }
        try FileManager.default.createDirectory(atPath: options.out, withIntermediateDirectories: true)
        // A node started again (the baselines' drains restart every node) keeps its earlier logs:
        // node-1.log is the latest, node-1.1.log the first, node-1.2.log the next, ...
        let log = "\(options.out)/\(name).log"
        if nodes[name] != nil, FileManager.default.fileExists(atPath: log) {
            let out = options.out
            let earlier = (1...).lazy.map { "\(out)/\(name).\($0).log" }.first {
                !FileManager.default.fileExists(atPath: $0)
            }
            if let earlier { try? FileManager.default.moveItem(atPath: log, toPath: earlier) }
        }
        nodes[name] = try LoadNode(name: name, executable: executable, environment: environment, log: log)
        return name
    }

    /// Node → partitions whose lease it holds.
    func partitionsByNode() async -> [String: Int] {
        guard
            let view = try? await ClusterInspector(redis: redis, keyPrefix: prefix).view(
                partitionCount: options.partitions)
        else { return [:] }
        return view.leases.reduce(into: [:]) { counts, lease in counts[lease.node, default: 0] += 1 }
    }

    func waitReady(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let held = await partitionsByNode()
            if held.values.reduce(0, +) == options.partitions {
                var ready = true
                for api in nodeAPIs where !(await isReady(api: api, timeout: .seconds(2))) { ready = false }
                if ready { return }
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw ValidationError(
            "the nodes did not become ready with every partition held within \(timeout)"
                + (options.attach == nil
                    ? "; see \(options.out)/node-*.log"
                    : " (are --key-prefix \(prefix) and --partitions \(options.partitions) the nodes' own?)"))
    }

    /// The API of every node: those the harness started, or those of --attach.
    var nodeAPIs: [String] {
        options.attach == nil
            ? nodes.values.sorted { $0.name < $1.name }.map { "http://127.0.0.1:\($0.apiPort)" } : options.attachedAPIs
    }

    /// Whether the node's /readyz answers 200.
    func isReady(_ node: LoadNode, timeout: Duration) async -> Bool {
        await isReady(api: "http://127.0.0.1:\(node.apiPort)", timeout: timeout)
    }

    func isReady(api: String, timeout: Duration) async -> Bool {
        var request = HTTPClientRequest(url: "\(api)/readyz")
        request.method = .GET
        return (try? await HTTPClient.shared.execute(request, timeout: .milliseconds(timeout.milliseconds)).status)
            == .ok
    }

    /// Template `seq % templates` with message id `<prefix>-<seq, 12 digits>`.
    /// The exchange notification `seq` is published to: its template's service's.
    func exchange(_ seq: Int) -> String {
        let exchanges = options.exchangeList
        return exchanges.count > 1 ? exchanges[(seq % templates.count) % exchanges.count] : (exchanges.first ?? "nova")
    }

    func envelope(_ seq: Int, prefix: String) -> [UInt8] {
        let template = templates[seq % templates.count]
        return template.head + Array((prefix + String(format: "-%012d", seq)).utf8) + template.tail
    }

    /// A recorder of the run's subscriptions for events whose ids begin with `eventPrefix`.
    func recorder(start: UInt64, rate: Int, eventPrefix: String = "load-") -> DeliveryRecorder {
        DeliveryRecorder(
            start: start, rate: rate,
            subscriptionIndex: Dictionary(uniqueKeysWithValues: subscriptionIDs.enumerated().map { ($1, $0) }),
            subscriptionProjects: subscriptionProjects, eventPrefix: eventPrefix,
            exchangeOf: { [templates, exchanges = options.exchangeList] seq in
                (seq % max(1, templates.count)) % max(1, exchanges.count)
            }
        )
    }

    /// Creates the subscriptions through the first node's API, 16 at a time. Into running
    /// nodes (--attach) each names the sink as its Zaqar.
    func createSubscriptions(_ subscriptions: [Subscription]) async throws {
        let api = nodeAPIs[0]
        let zaqarURL = options.attach == nil ? nil : sink!.url
        var ids = [String](repeating: "", count: subscriptions.count)
        try await withThrowingTaskGroup(of: (Int, String).self) { group in
            var next = 0
            func add() {
                guard next < subscriptions.count else { return }
                let index = next
                let subscription = subscriptions[index]
                next += 1
                group.addTask {
                    var request = HTTPClientRequest(url: "\(api)/v1/subscriptions")
                    request.method = .POST
                    request.headers.add(name: "X-Project-Id", value: subscription.project)
                    request.headers.add(name: "Content-Type", value: "application/json")
                    let body: [String: Any] = [
                        "event_types": subscription.eventTypes,
                        "target": [
                            "queue": subscription.target.queue, "zaqar_url": zaqarURL.map { $0 as Any } ?? NSNull(),
                        ],
                        "conditions": subscription.conditions.map {
                            ["field": $0.field, "op": $0.op.rawValue, "value": $0.value?.foundationObject ?? NSNull()]
                        },
                    ]
                    request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                    let data = try await response.body.collect(upTo: 1 << 20)
                    guard response.status == .created,
                        let object = try? JSONSerialization.jsonObject(with: Data(buffer: data)) as? [String: Any],
                        let id = object["id"] as? String
                    else {
                        throw ValidationError(
                            "creating subscription \(index): \(response.status) \(String(buffer: data))")
                    }
                    return (index, id)
                }
            }
            for _ in 0..<16 { add() }
            while let (index, id) = try await group.next() {
                ids[index] = id
                add()
            }
        }
        subscriptionIDs = ids
        subscriptionProjects = subscriptions.map(\.project)
    }

    /// Deletes the subscriptions the run created (--attach: the cluster is not the run's own).
    func deleteSubscriptions() async {
        var failed = 0
        for (id, project) in zip(subscriptionIDs, subscriptionProjects) where !id.isEmpty {
            var request = HTTPClientRequest(url: "\(nodeAPIs[0])/v1/subscriptions/\(id)")
            request.method = .DELETE
            request.headers.add(name: "X-Project-Id", value: project)
            let status = try? await HTTPClient.shared.execute(request, timeout: .seconds(30)).status
            if status != .noContent && status != .ok { failed += 1 }
        }
        if failed > 0 {
            log(
                "could not delete \(failed) of the run's \(subscriptionIDs.count) subscriptions; delete them through the API"
            )
        }
    }

    func execute() async throws -> LoadResult {
        let options = options
        if options.attach == nil {
            // Several hosts: the cluster of `scripts/servers cluster`.
            let broker = options.amqpURL.contains(",") ? ["cluster", "rabbitmqctl"] : ["rabbitmqctl"]
            try await control(broker + ["add_vhost", vhost])
            try await control(broker + ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])
        }

        // What each template reaches, by the same index the nodes use.
        let subscriptions = corpus.subscriptions(options.subscriptions)
        // Only which subscriptions an event reaches is read here, not where they deliver.
        let index = SubscriptionIndex(subscriptions, defaultZaqarURL: "")
        let position = Dictionary(
            subscriptions.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { first, _ in first })
        let placeholder = Array(Self.placeholder.utf8)
        templates = try corpus.envelopes.map { envelope in
            guard let at = DeliveryRecorder.find(placeholder, in: envelope, from: 0) else {
                throw ValidationError("template without its message id placeholder")
            }
            let event = try NotificationDecoder.decode(envelope)[0]
            return (
                Array(envelope[..<at]), Array(envelope[(at + placeholder.count)...]),
                index.matches(event).compactMap { position[$0.id] }
            )
        }
        let averageBytes = corpus.envelopes.reduce(0) { $0 + $1.count } / corpus.envelopes.count

        // The sink first (the nodes need its URL); it records once the clock starts.
        let zaqarURL = try options.zaqarURL
        sink = try await RecordingSink.start(upstream: zaqarURL)
        if options.attach == nil {
            for _ in 0..<options.nodes { _ = try startNode() }
            log(
                "\(options.nodes) nodes starting (\(executable)), vhost \(vhost), key prefix \(prefix), sink \(sink!.url)"
            )
        } else {
            log("using the running nodes \(nodeAPIs.joined(separator: ", ")), key prefix \(prefix), sink \(sink!.url)")
        }
        try await waitReady(timeout: .seconds(60))
        log("creating \(options.subscriptions) subscriptions through the API")
        try await createSubscriptions(subscriptions)
        try await Task.sleep(for: .seconds(2))  // the nodes' registry watch picks them up
        var baselines: LoadBaselines?
        var rate = options.rate
        if options.baselines {
            let measured = try await measureBaselines()
            baselines = measured
            if let fraction = options.rateOfMax { rate = max(1, Int(measured.heraldPerSecond * fraction)) }
            try await Task.sleep(for: .seconds(2))
        }
        // A clock that starts now.
        let start = DispatchTime.now().uptimeNanoseconds + 500_000_000
        let recorder = recorder(start: start, rate: rate)
        sink!.use(recorder)
        let storedBefore = zaqarURL == nil ? nil : await zaqarStored(subscriptions, url: zaqarURL!)
        let deadLettersBefore = await deadLetterCount()

        let expectedPerTemplate = templates.map(\.matches.count)
        let total = rate * options.duration
        log(
            String(
                format:
                    "publishing %d events at %d/s for %d s (%d B each on average); %.2f deliveries per event expected",
                total, rate, options.duration, averageBytes,
                Double(templates.reduce(0) { $0 + $1.matches.count }) / Double(templates.count)))
        for node in nodes.values {
            node.sampleCPU()
            node.cpuAtStart = node.cpuSeconds
        }
        let harnessAtStart = LoadNode.cpuSeconds(pid: getpid()) ?? 0
        let publisher = Task {
            try await self.publish(total: total, recorder: recorder, expectedPerTemplate: expectedPerTemplate)
        }
        let scenarioTask = Task { await self.runScenario(start: start) }
        let sampler = Task { await self.sample(start: start, recorder: recorder, until: { false }) }
        try await publisher.value
        // Drain: until every expected delivery came, or nothing moved for --drain seconds.
        var last = -1
        var still = ContinuousClock.now
        while true {
            let delivered = recorder.state.withLock { $0.delivered }
            if delivered >= expectedSoFar.load(ordering: .relaxed) { break }
            if delivered != last {
                last = delivered
                still = .now
            }
            if ContinuousClock.now - still > .seconds(options.drain) {
                log("no progress for \(options.drain) s: giving up on the rest")
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        try await Task.sleep(for: .seconds(1))  // late duplicates
        scenarioTask.cancel()
        sampler.cancel()
        // What is left in Herald's queues, and what it dead-lettered.
        // -1 when it cannot be known (the log says why), never counted as empty.
        var stillQueued = 0
        var connection: AMQPConnection?
        do {
            connection = try await AMQPConnection.connect(url: vhostURL)
            let names = try clusterNames
            var ingest: [String] = []
            for exchange in ["nova", "neutron", "cinder"] {
                ingest.append(try await ingestQueue(exchange: exchange, connection: connection!))
            }
            let channel = try await connection!.openChannel()
            for name in Set(ingest).sorted() + [names.dead] + (0..<options.partitions).map(names.partitionQueue) {
                stillQueued += try await channel.declareQueuePassive(name).messageCount
            }
        } catch {
            log("cannot count what is left in Herald's queues: \(error)")
            stillQueued = -1
        }
        await connection?.close()
        var zaqar: LoadResult.ZaqarCheck?
        if let zaqarURL {
            let accepted = recorder.state.withLock { $0.delivered + $0.duplicates }
            zaqar = LoadResult.ZaqarCheck(
                url: zaqarURL, storedBefore: storedBefore, storedAfter: await zaqarStored(subscriptions, url: zaqarURL),
                accepted: accepted,
                refusedByStatus: Dictionary(
                    uniqueKeysWithValues: sink!.refusedByStatus.map { ("\($0.key)", $0.value) }))
        }
        let deadLetters = await deadLetterCount() - deadLettersBefore
        _ = await sampler.value
        for node in nodes.values { node.sampleCPU() }
        for node in nodes.values where node.process.isRunning { node.signal(SIGTERM) }
        for node in nodes.values { _ = await node.process.wait() }

        // Lost: expected pairs never seen. Unexpected pairs would show as delivered beyond the expected.
        let publishedCount = published.load(ordering: .relaxed)
        let state = recorder.state.withLock { $0 }
        var lost = 0
        for seq in 0..<publishedCount {
            for subscription in templates[seq % templates.count].matches
            where state.counts[seq * subscriptions.count + subscription] == nil { lost += 1 }
        }
        let harnessCPU = (LoadNode.cpuSeconds(pid: getpid()) ?? 0) - harnessAtStart
        var processes = nodes.values.sorted { $0.name < $1.name }.map {
            LoadResult.Process(
                name: $0.name, cpuSeconds: $0.cpuSeconds - $0.cpuAtStart,
                cpuMicrosecondsPerEvent: ($0.cpuSeconds - $0.cpuAtStart) * 1e6 / Double(max(publishedCount, 1)),
                exitStatus: $0.process.exitStatus)
        }
        processes.append(
            .init(
                name: "harness", cpuSeconds: harnessCPU,
                cpuMicrosecondsPerEvent: harnessCPU * 1e6 / Double(max(publishedCount, 1)), exitStatus: nil))
        return LoadResult(
            rate: rate, duration: options.duration, nodes: options.attach == nil ? options.nodes : nodeAPIs.count,
            subscriptions: options.subscriptions, projects: options.projects,
            partitions: options.partitions, averageEventBytes: averageBytes, published: publishedCount,
            expectedDeliveries: expectedSoFar.load(ordering: .relaxed),
            delivered: state.delivered, lost: lost, duplicates: state.duplicates, outOfOrder: state.outOfOrder,
            stillQueued: stillQueued,
            deadLetters: deadLetters, latencyMs: DeliveryRecorder.percentiles(state.latency),
            projectLatency: projectLatency(state),
            intervals: intervals, events: scenario, processes: processes, baselines: baselines, zaqar: zaqar
        )
    }

    /// Latency per project, and of the projects no per-project fault hit, together.
    func projectLatency(_ state: DeliveryRecorder.State) -> LoadResult.ProjectLatency? {
        guard !state.latencyByProject.isEmpty else { return nil }
        let faulted = Set(scenario.compactMap { [.targetFail, .slowTarget].contains($0.action) ? $0.project : nil })
        var others = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        // Same settings for all (add() requires it).
        for (project, histogram) in state.latencyByProject where !faulted.contains(project) { others.add(histogram) }
        return LoadResult.ProjectLatency(
            byProject: state.latencyByProject.compactMapValues(DeliveryRecorder.percentiles), faulted: faulted.sorted(),
            others: DeliveryRecorder.percentiles(others)
        )
    }

    /// Dead letters under the run's key prefix (the whole cluster's with --attach).
    func deadLetterCount() async -> Int {
        (try? await DeadLetterStore(redis: redis, keyPrefix: prefix).countsByReason().values.reduce(0, +)) ?? 0
    }

    /// Messages Zaqar holds in the subscriptions' queues (its stats' totals, summed); nil if a
    /// queue's stats could not be read (logged).
    func zaqarStored(_ subscriptions: [Subscription], url: String) async -> Int? {
        // Each (project, queue) once.
        let queues = Set(subscriptions.map { [$0.project, $0.target.queue] })
        var total = 0
        for key in queues {
            let (project, queue) = (key[0], key[1])
            var request = HTTPClientRequest(url: "\(url)/v2/queues/\(queue)/stats")
            request.headers.add(name: "Client-ID", value: Self.clientID)
            request.headers.add(name: "X-Project-ID", value: project)
            do {
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                let body = try await response.body.collect(upTo: 1 << 20)
                guard response.status == .ok,
                    let object = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
                    let messages = object["messages"] as? [String: Any], let count = messages["total"] as? Int
                else { throw ValidationError("\(response.status) \(String(buffer: body))") }
                total += count
            } catch {
                log("cannot read Zaqar's stats of queue \(queue) in project \(project): \(error)")
                return nil
            }
        }
        return total
    }

    /// The open loop: event `seq` is due at start + seq/rate; whatever is due goes out now.
    func publish(total: Int, recorder: DeliveryRecorder, expectedPerTemplate: [Int]) async throws {
        let connection = try await AMQPConnection.connect(url: vhostURL)
        defer { Task { await connection.close() } }
        // Confirms: a batch the broker did not confirm (it went down) is published again, so a
        // notification counted as published is one the broker took.
        var channel = try await connection.openChannel()
        try await channel.enableConfirms()
        for exchange in options.exchangeList {
            try await channel.declareExchange(
                exchange, options: AMQPExchangeOptions(type: "topic", durable: options.persistent))
        }
        var seq = 0
        while seq < total {
            let now = DispatchTime.now().uptimeNanoseconds
            let due = recorder.intended(seq)
            if due > now {
                try await Task.sleep(for: .nanoseconds(Int64(min(due - now, 2_000_000))))
                continue
            }
            var batch: [AMQPOutgoingMessage] = []
            var expected = 0
            while seq < total && recorder.intended(seq) <= now && batch.count < 500 {
                batch.append(
                    AMQPOutgoingMessage(
                        exchange: exchange(seq), routingKey: "notifications.info", body: envelope(seq, prefix: "load"),
                        properties: AMQPMessageProperties(
                            contentType: "application/json", persistent: options.persistent)))
                expected += expectedPerTemplate[seq % templates.count]
                seq += 1
            }
            while true {
                do {
                    try await channel.publish(batch)
                    break
                } catch {
                    // The broker restarting: the same batch again (may duplicate what got through).
                    log("publish failed (\(error)); retrying")
                    try await Task.sleep(for: .milliseconds(500))
                    if let fresh = try? await connection.openChannel(), (try? await fresh.enableConfirms()) != nil {
                        channel = fresh
                    }
                }
            }
            published.add(batch.count, ordering: .relaxed)
            expectedSoFar.add(expected, ordering: .relaxed)
        }
    }

    func runScenario(start: UInt64) async {
        for event in scenario {
            let due = start + UInt64(event.at * 1e9)
            let now = DispatchTime.now().uptimeNanoseconds
            if due > now { try? await Task.sleep(for: .nanoseconds(Int64(due - now))) }
            if Task.isCancelled { return }
            log("t=\(Int(event.at)) s: \(event.label)")
            do {
                switch event.action {
                case .addNode: _ = try startNode()
                case .sigterm: nodes[event.node!]?.signal(SIGTERM)
                case .kill9:
                    nodes[event.node!]?.sampleCPU()
                    nodes[event.node!]?.signal(SIGKILL)
                case .pause:
                    let node = nodes[event.node!]
                    node?.signal(SIGSTOP)
                    Task {
                        try? await Task.sleep(for: .seconds(event.seconds!))
                        node?.signal(SIGCONT)
                    }
                case .restartRedis: try await control("restart", "redis")
                case .restartRabbitMQ: try await control("restart", "rabbitmq")
                case .sinkFail, .sinkStall, .zaqarOutage:
                    sink?.set(event.action == .sinkFail ? .failing : event.action == .sinkStall ? .stalling : .down)
                    let sink = sink
                    Task {
                        try? await Task.sleep(for: .seconds(event.seconds!))
                        sink?.set(.normal)
                    }
                case .redisOutage:
                    try await control("stop", "redis", "keep")
                    let seconds = event.seconds ?? 0
                    Task {
                        try? await Task.sleep(for: .seconds(seconds))
                        do { try await self.control("start", "redis") } catch {
                            self.log("starting Redis again failed: \(error)")
                        }
                    }
                case .rabbitmqNodeKill:
                    let node = event.node ?? "1"
                    try await control("cluster", "stop", node)
                    let seconds = event.seconds ?? 0
                    Task {
                        try? await Task.sleep(for: .seconds(seconds))
                        do { try await self.control("cluster", "start", node) } catch {
                            self.log("starting RabbitMQ node \(node) again failed: \(error)")
                        }
                    }
                case .redisFailover:
                    try await control("sentinel", "kill-master")
                    let seconds = event.seconds ?? 0
                    Task {
                        try? await Task.sleep(for: .seconds(seconds))
                        do { try await self.control("sentinel", "restart-old") } catch {
                            self.log("starting the old Redis master again failed: \(error)")
                        }
                    }
                case .targetFail, .slowTarget:
                    let project = event.project ?? ""
                    sink?.set(event.action == .targetFail ? .failing : .slow, project: project)
                    let sink = sink
                    Task {
                        try? await Task.sleep(for: .seconds(event.seconds!))
                        sink?.set(nil, project: project)
                    }
                }
            } catch {
                log("scenario event \(event.label) failed: \(error)")
            }
        }
    }

    /// Once a second: rates, backlog, latency of the second, partitions per node, CPU; a progress line.
    func sample(start: UInt64, recorder: DeliveryRecorder, until: () -> Bool) async {
        var second = 0
        var lastPublished = 0
        var lastDelivered = 0
        while !Task.isCancelled {
            let due = start + UInt64(second + 1) * 1_000_000_000
            let now = DispatchTime.now().uptimeNanoseconds
            if due > now { try? await Task.sleep(for: .nanoseconds(Int64(due - now))) }
            if Task.isCancelled { break }
            let publishedNow = published.load(ordering: .relaxed)
            let (delivered, histogram) = recorder.state.withLock { ($0.delivered, $0.latencyPerSecond[second]) }
            let partitions = await partitionsByNode()
            for node in nodes.values { node.sampleCPU() }
            let interval = LoadResult.Interval(
                second: second, published: publishedNow - lastPublished, delivered: delivered - lastDelivered,
                backlog: expectedSoFar.load(ordering: .relaxed) - delivered,
                latencyMs: histogram.flatMap(DeliveryRecorder.percentiles), partitions: partitions
            )
            intervals.append(interval)
            let p99 = interval.latencyMs.map { String(format: "%.1f", $0.p99) } ?? "-"
            FileHandle.standardError.write(
                Data(
                    String(
                        format: "t=%3d s  published %6d/s  delivered %6d/s  backlog %7d  p99 %8@ ms  partitions %@\n",
                        second, interval.published, interval.delivered, interval.backlog, p99,
                        partitions.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                    ).utf8))
            lastPublished = publishedNow
            lastDelivered = delivered
            second += 1
        }
    }

    func cleanUp() async {
        if options.attach != nil {
            // Not the run's own cluster: only its subscriptions go.
            await deleteSubscriptions()
            await sink?.stop()
            return
        }
        for node in nodes.values where node.process.isRunning {
            node.signal(SIGCONT)
            node.signal(SIGKILL)
        }
        await sink?.stop()
        try? await control("rabbitmqctl", "delete_vhost", vhost)
        _ = try? await redis.pipeline([
            RedisCommand(
                "EVAL", "for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end return 1",
                "0", prefix)
        ])
    }
}
