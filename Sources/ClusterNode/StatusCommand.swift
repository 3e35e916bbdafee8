import ArgumentParser
import Coordination
import Foundation
import HeraldModel
import Identity
import Logging
import Messaging
import Pipeline

/// `herald status`: the cluster at a glance, from Redis and RabbitMQ.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the cluster: members, partitions per member, leases, leader, queue depths, dead letters.",
        discussion:
            "Reads HERALD_REDIS_URL, HERALD_AMQP_URL, HERALD_KEY_PREFIX and HERALD_PARTITIONS like a node; changes nothing."
    )

    @OptionGroup var servers: ServerOptions
    @Option(help: "Redis key prefix. Env: HERALD_KEY_PREFIX.")
    var keyPrefix: String =
        ProcessInfo.processInfo.environment["HERALD_KEY_PREFIX"].flatMap { $0.isEmpty ? nil : $0 } ?? "herald:"
    @Option(help: "The cluster's name in its AMQP names. Env: HERALD_CLUSTER; default: the key prefix without its ':'.")
    var cluster: String?
    @Option(help: "P, when no assignment is stored yet. Env: HERALD_PARTITIONS.")
    var partitions: Int = Int(ProcessInfo.processInfo.environment["HERALD_PARTITIONS"] ?? "") ?? 256
    @Option(
        help:
            "The notification exchanges, whose ingest queues (<cluster>.ingest.<exchange>) are shown. Env: HERALD_EXCHANGES."
    )
    var exchanges: String =
        ProcessInfo.processInfo.environment["HERALD_EXCHANGES"].flatMap { $0.isEmpty ? nil : $0 }
        ?? NodeConfiguration.defaultExchanges.joined(separator: ",")
    @Option(help: "How many of the deepest partition queues to show.")
    var top: Int = 10
    @Option(
        help: "Pre-signed URLs expiring sooner than this many seconds are listed. Env: HERALD_SIGNED_URL_RENEW_SECONDS."
    )
    var signedURLWindow: Int =
        Int(ProcessInfo.processInfo.environment["HERALD_SIGNED_URL_RENEW_SECONDS"] ?? "") ?? 21_600
    @Flag(help: "Print JSON, for scripts.")
    var json = false

    func validate() throws {
        guard (0...100_000).contains(top) else { throw ValidationError("--top: from 0 to 100000, not \(top)") }
        guard (1...65_536).contains(partitions) else {
            throw ValidationError("--partitions (HERALD_PARTITIONS): from 1 to 65536, not \(partitions)")
        }
        guard signedURLWindow >= 0 else {
            throw ValidationError(
                "--signed-url-window (HERALD_SIGNED_URL_RENEW_SECONDS): 0 or more, not \(signedURLWindow)")
        }
    }

    struct Report: Codable {
        struct Member: Codable {
            var node: String
            var address: String
            var version: String
            var ageSeconds: Double
            var partitions: [Int]
            var epochs: [UInt64]
            var leader: Bool
        }

        struct Queue: Codable {
            var name: String
            var messages: Int
            var consumers: Int
        }

        /// A pre-signed URL near or past expiry.
        struct SignedURLRow: Codable {
            var subscription: String
            var project: String
            var queue: String
            var expires: String
            /// renewing (the trust renews it), expiring, expired, unreadable
            var state: String
        }

        var members: [Member]
        var leader: String?
        var partitionCount: Int
        var partitionsHeld: Int
        var assignmentEpoch: Int?
        /// The ingest queues: the cluster's one `<cluster>.ingest`, or one per exchange.
        var ingest: [Queue]
        var deepestPartitions: [Queue]
        var partitionMessages: Int
        var deadLetters: [String: Int]
        /// Older letters trimmed to keep within the budget, by reason, since the cluster began.
        var deadLettersDropped: [String: Int]
        /// Subscriptions with a pre-signed URL, and those of them near or past expiry. (Spelt
        /// `Url` so that the snake-case JSON keys come out as signed_url_count and signed_urls.)
        var signedUrlCount: Int
        var signedUrls: [SignedURLRow]
        /// Subscriptions whose target failed and whose messages wait in parking, oldest first.
        var parked: [ParkedRow]
        var parkedMessages: Int
        var problems: [String]
    }

    /// One parked subscription (docs/pipeline.md, "Outages").
    struct ParkedRow: Codable {
        var subscription: String
        var project: String
        var messages: Int
        var oldestAgeSeconds: Double
        var attempts: Int
        /// Seconds until the next retry (negative: due, or being retried now).
        var nextAttemptInSeconds: Double
        var lastError: String
        var retryingNode: String?
    }

    func run() async throws {
        var logger = Logger(label: "herald.status")
        logger.logLevel = .error
        let report: Report
        do {
            report = try await gather(logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.text(report), terminator: "")
        }
    }

    func gather(logger: Logger) async throws -> Report {
        let redis = RedisClient(configuration: try RedisConfiguration(url: servers.redisURL), logger: logger)
        return try await withClosing(redis, close: { await $0.close() }) { try await gather(redis: $0, logger: logger) }
    }

    private func gather(redis: RedisClient, logger: Logger) async throws -> Report {
        let view = try await ClusterInspector(redis: redis, keyPrefix: keyPrefix).view(partitionCount: partitions)
        let store = DeadLetterStore(redis: redis, keyPrefix: keyPrefix)
        let letters = try await store.countsByReason()
        let dropped = try await store.droppedByReason()
        var problems: [String] = []

        var ingest: [Report.Queue] = []
        var partitionQueues: [Report.Queue] = []
        do {
            let connection = try await AMQPConnection.connect(
                try AMQPConfiguration(url: servers.amqpURL), logger: logger)
            try await withClosing(connection, close: { await $0.close() }) { connection in
                let channel = try await connection.openChannel()
                let named =
                    cluster ?? ProcessInfo.processInfo.environment["HERALD_CLUSTER"].flatMap { $0.isEmpty ? nil : $0 }
                let names = try ClusterNames(cluster: named ?? ClusterNames.derived(fromKeyPrefix: keyPrefix))
                // Whichever ingest queues exist.
                let candidates =
                    [names.ingest]
                    + (exchanges.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } + ["ceilometer"])
                    .filter { !$0.isEmpty }.map { names.ingestQueue(exchange: $0) }
                for name in Set(candidates).sorted() {
                    if let state = try? await connection.queueState(name) {
                        ingest.append(
                            Report.Queue(name: name, messages: state.messageCount, consumers: state.consumerCount))
                    }
                }
                if ingest.isEmpty {
                    problems.append("no ingest queue found (\(names.ingest) or \(names.ingest).<exchange>)")
                }
                for name in (0..<view.partitionCount).map(names.partitionQueue) {
                    do {
                        let state = try await channel.declareQueuePassive(name)
                        partitionQueues.append(
                            Report.Queue(name: name, messages: state.messageCount, consumers: state.consumerCount))
                    } catch {
                        problems.append("\(name): \(error)")
                    }
                }
            }
        } catch {
            problems.append("RabbitMQ: \(error)")
        }

        var byNode: [String: [ClusterView.Lease]] = [:]
        for lease in view.leases { byNode[lease.node, default: []].append(lease) }
        let members = Set(view.members.keys).union(byNode.keys).sorted().map { node in
            let info = view.members[node]
            let leases = byNode[node] ?? []
            return Report.Member(
                node: node, address: info?.address ?? "-", version: info?.version ?? "-",
                ageSeconds: info.map { max(0, view.now - $0.started) } ?? 0,
                partitions: leases.map(\.partition), epochs: leases.map(\.epoch), leader: node == view.leader
            )
        }
        for member in members where view.members[member.node] == nil {
            problems.append("\(member.node) holds leases but is not a member (its leases run out within the alive TTL)")
        }
        if view.leases.count < view.partitionCount {
            problems.append(
                "\(view.partitionCount - view.leases.count) of \(view.partitionCount) partitions have no lease holder")
        }
        if view.leader == nil { problems.append("no leader") }
        let subscriptions = try await SubscriptionRegistry(
            redis: try RedisConfiguration(url: servers.redisURL), keyPrefix: keyPrefix, logger: logger
        )
        .snapshot().subscriptions
        var signedURLs: [Report.SignedURLRow] = []
        var signedURLCount = 0
        let now = Date()
        for subscription in subscriptions {
            guard let standing = SignedURLStanding(subscription, now: now, renewBefore: .seconds(signedURLWindow))
            else { continue }
            signedURLCount += 1
            let state: String
            switch standing {
            case .fine: continue
            case .renewable: state = "renewing"
            case .expiring: state = "expiring"
            case .expired: state = "expired"
            case .unreadable: state = "unreadable"
            }
            signedURLs.append(
                .init(
                    subscription: subscription.id, project: subscription.project, queue: subscription.target.queue,
                    expires: subscription.target.signedURL?.expires ?? "", state: state
                ))
            if let warning = standing.warning(now: now) {
                problems.append("subscription \(subscription.id) (project \(subscription.project)): \(warning)")
            }
        }
        let nowMilliseconds = now.timeIntervalSince1970 * 1000
        let parked = try await ParkingLedger(redis: redis, keyPrefix: keyPrefix).allStates().map { state in
            ParkedRow(
                subscription: state.subscription, project: state.project, messages: state.count,
                oldestAgeSeconds: max(0, (nowMilliseconds - Double(state.since)) / 1000), attempts: state.attempts,
                nextAttemptInSeconds: (Double(state.nextAttempt) - nowMilliseconds) / 1000, lastError: state.lastError,
                retryingNode: state.claimedBy
            )
        }
        let deepest = partitionQueues.sorted { ($0.messages, $1.name) > ($1.messages, $0.name) }.prefix(top)
        return Report(
            members: members, leader: view.leader, partitionCount: view.partitionCount,
            partitionsHeld: view.leases.count,
            assignmentEpoch: view.assignmentEpoch, ingest: ingest, deepestPartitions: Array(deepest),
            partitionMessages: partitionQueues.reduce(0) { $0 &+ $1.messages },
            deadLetters: Dictionary(uniqueKeysWithValues: letters.map { ($0.key.rawValue, $0.value) }),
            deadLettersDropped: dropped,
            signedUrlCount: signedURLCount,
            signedUrls: signedURLs.sorted { ($0.expires, $0.subscription) < ($1.expires, $1.subscription) },
            parked: parked, parkedMessages: parked.reduce(0) { $0 &+ $1.messages }, problems: problems
        )
    }

    /// `1 message`, `2 messages`.
    static func counted(_ count: Int, _ noun: String) -> String {
        "\(count) \(noun)" + (count == 1 ? "" : "s")
    }

    static func text(_ report: Report) -> String {
        var out = "Herald cluster: \(report.members.count) members, leader \(report.leader ?? "none"), "
        out +=
            "\(report.partitionsHeld) of \(report.partitionCount) partitions held, assignment epoch \(report.assignmentEpoch.map(String.init) ?? "-")\n\n"
        out +=
            pad("member", 24) + pad("address", 28) + pad("version", 9) + pad("age", 10) + pad("partitions", 11)
            + "lease epochs\n"
        for member in report.members {
            let epochs = member.epochs.isEmpty ? "-" : "\(member.epochs.min()!)..\(member.epochs.max()!)"
            out += pad(member.node + (member.leader ? " *" : ""), 24) + pad(member.address, 28) + pad(member.version, 9)
            out += pad(age(member.ageSeconds), 10) + pad("\(member.partitions.count)", 11) + epochs + "\n"
        }
        out += "\nqueues\n"
        // As wide as the longest name: a cluster's name is part of each.
        let nameWidth = max(22, (report.ingest.map(\.name.count).max() ?? 0) + 2)
        for ingest in report.ingest {
            out +=
                "  " + pad(ingest.name, nameWidth) + pad(counted(ingest.messages, "message"), 18)
                + counted(ingest.consumers, "consumer") + "\n"
        }
        let deepest = report.deepestPartitions.filter { $0.messages > 0 }
        out +=
            "  " + pad("partition queues", nameWidth) + counted(report.partitionMessages, "message") + " in all"
            + (deepest.isEmpty ? "\n" : "; deepest:\n")
        for queue in deepest {
            out += "    " + pad(queue.name, nameWidth - 2) + "\(queue.messages)\n"
        }
        out += "\ndead letters (newest 10000, by reason)\n"
        if report.deadLetters.isEmpty { out += "  none\n" }
        for (reason, count) in report.deadLetters.sorted(by: { $0.key < $1.key }) {
            out += "  " + pad(reason, 22) + "\(count)\n"
        }
        if !report.deadLettersDropped.isEmpty {
            out +=
                "dead letters trimmed to keep within the budget (HERALD_DEAD_LETTERS_MAX, HERALD_DEAD_LETTERS_PROJECT_MAX)\n"
            for (reason, count) in report.deadLettersDropped.sorted(by: { $0.key < $1.key }) {
                out += "  " + pad(reason, 22) + "\(count)\n"
            }
        }
        out += "\npre-signed URLs: \(report.signedUrlCount) in use, \(report.signedUrls.count) near or past expiry\n"
        for row in report.signedUrls {
            out +=
                "  " + pad(row.subscription, 38) + pad(row.project, 34) + pad(row.queue, 20) + pad(row.expires, 21)
                + row.state + "\n"
        }
        out +=
            "\nparked (failing targets, retried until HERALD_DELIVERY_RETRY_HORIZON): \(report.parked.count) subscriptions, \(report.parkedMessages) messages\n"
        if !report.parked.isEmpty {
            out +=
                "  " + pad("subscription", 38) + pad("project", 34) + pad("messages", 10) + pad("oldest", 8)
                + pad("retries", 9) + pad("next", 8) + "last error\n"
        }
        for row in report.parked.prefix(50) {
            let next =
                row.retryingNode != nil
                ? "now" : (row.nextAttemptInSeconds <= 0 ? "due" : age(row.nextAttemptInSeconds))
            out +=
                "  " + pad(row.subscription, 38) + pad(row.project, 34) + pad("\(row.messages)", 10)
                + pad(age(row.oldestAgeSeconds), 8)
            out += pad("\(row.attempts)", 9) + pad(next, 8) + SafeText.clean(row.lastError, limit: 80) + "\n"
        }
        if report.parked.count > 50 { out += "  ... and \(report.parked.count - 50) more (--json lists every one)\n" }
        if !report.problems.isEmpty {
            out += "\nproblems\n" + report.problems.map { "  " + $0 + "\n" }.joined()
        }
        // Every field above may carry text from outside (project ids, queue names, node ids,
        // reasons): no line of the report may hold a control character that forges a line or
        // moves the terminal. Cleaned line by line, so the report's own new lines stay.
        return out.split(separator: "\n", omittingEmptySubsequences: false).map {
            SafeText.clean(String($0), limit: 1_000)
        }.joined(separator: "\n")
    }

    private static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }

    private static func age(_ seconds: Double) -> String {
        // From Redis: a clock gone wrong must not trap the report.
        guard seconds.isFinite, seconds >= 0, seconds < 1e12 else { return "?" }
        let whole = Int(seconds)
        if whole < 120 { return "\(whole)s" }
        if whole < 7200 { return "\(whole / 60)m" }
        return "\(whole / 3600)h\((whole % 3600) / 60)m"
    }
}
