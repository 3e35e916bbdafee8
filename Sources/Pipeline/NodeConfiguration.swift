import Coordination
import Delivery
import Foundation
import HTTPAPI
import HeraldModel
import Identity
import Logging
import Messaging
import Notifications

/// Everything a node is configured with, read from `HERALD_*` environment variables.
/// An invalid value stops start-up with a message naming the variable and the value.
package struct NodeConfiguration: Sendable {
    /// HERALD_NODE_ID: this node's id (the pod name in Kubernetes). Default: the host name.
    package var nodeID: String
    /// HERALD_REDIS_URL. Default redis://127.0.0.1:6379/0.
    var redisURL: String
    /// HERALD_AMQP_URL. Default amqp://guest:guest@127.0.0.1:5672/%2F.
    var amqpURL: String
    /// HERALD_ZAQAR_URL: where subscriptions without their own endpoint deliver. Unset with
    /// Keystone configured: the catalog's (`zaqarCatalog`, resolved at start-up). Otherwise
    /// default http://127.0.0.1:8888.
    var zaqarURL: String
    /// Where to find Zaqar in Keystone's catalog when HERALD_ZAQAR_URL is not set:
    /// HERALD_ZAQAR_SERVICE_TYPE (messaging), HERALD_ZAQAR_INTERFACE (public, internal or admin;
    /// default public, as keystoneauth's), HERALD_ZAQAR_REGION (any when unset).
    var zaqarCatalog: ZaqarCatalogLookup?
    /// Whether HERALD_ZAQAR_ALLOWED_URLS was given (else it follows the Zaqar URL).
    var zaqarAllowedURLsGiven = false
    /// HERALD_PARTITIONS: P, fixed at cluster creation. Default 256.
    var partitions: Int
    /// HERALD_KEY_PREFIX: Redis key prefix. Default herald:.
    var keyPrefix: String
    /// HERALD_EXCHANGES: comma-separated notification exchanges, each bound to an ingest queue
    /// of its own (`<cluster>.ingest.<exchange>`; one `<cluster>.ingest` in an older cluster).
    var exchanges: [String]
    /// HERALD_EXCHANGES_DURABLE: declare them durable (must match how the services declare them). Default false.
    var exchangesDurable: Bool
    /// HERALD_CEILOMETER_EVENTS: also bind exchange `ceilometer`, key `event.sample`. Default false.
    var ceilometerEvents: Bool
    /// HERALD_INGEST_ORDERED: one node ingests at a time (herald.ingest is single-active-consumer,
    /// the others stand by), so events of a partition keep their publish order. `false` makes
    /// every node a competing consumer: more ingest throughput, no order across nodes. Fixed per
    /// cluster (RabbitMQ refuses to change a queue's arguments). Default true.
    var ingestOrdered: Bool
    /// HERALD_INGEST_PREFETCH. Default 200.
    var ingestPrefetch: UInt16
    /// HERALD_PARTITION_PREFETCH: unacked events per owned partition. Default 100.
    var partitionPrefetch: UInt16
    /// HERALD_QUEUE_TYPE (classic or quorum), HERALD_INGEST_QUEUE_MAX_MESSAGES and
    /// HERALD_PARTITION_QUEUE_MAX_MESSAGES, HERALD_INGEST_QUEUE_MAX_BYTES and
    /// HERALD_PARTITION_QUEUE_MAX_BYTES (0: no bound), HERALD_INGEST_LAYOUT (single or
    /// per-exchange), as set; unset, the cluster's record decides (`ClusterQueueShape`).
    var queueSettings: QueueShapeSettings
    /// What the queues are declared with: `HeraldNode.start` resolves it from `queueSettings`
    /// and the cluster's record before declaring anything; until then, a new cluster's shape.
    var queueShape: QueueShape
    /// HERALD_SHUTDOWN_BUDGET_SECONDS: how long a graceful stop may take. Default 20.
    var shutdownBudget: Duration
    /// HERALD_HANDOFF_DRAIN_SECONDS: how long a partition handed over in a rebalance may take
    /// to finish its in-flight events before the next owner gets them (again). Default 120.
    var handoffDrain: Duration
    /// HERALD_HANDOFF_GIVE_BACK_SECONDS: how long a partition handed over may send its queued
    /// messages as they are before what is not sent yet is given back for the next owner (which
    /// then delivers those events, and those of them partly sent a second time). Default 1; 0
    /// gives back at once.
    var handoffGiveBack: Duration
    /// HERALD_API_HOST: where the HTTP API (subscriptions, health, metrics) listens. Default 0.0.0.0.
    var apiHost: String
    /// HERALD_API_PORT: its port; 0 takes any free port (logged). Default 8090.
    var apiPort: Int
    /// HERALD_METRICS_PORT: `/metrics` on a port of its own (on HERALD_API_HOST), not on the
    /// API's; nil (unset): on the API's port.
    var metricsPort: Int? = nil
    /// HERALD_EVENT_TYPES_PER_PROJECT, HERALD_EVENT_TYPE_SAMPLE_BYTES, HERALD_EVENT_TYPE_DAYS: the
    /// event-type catalog's bounds in Redis (types a project keeps, bytes of a type's sample, 0
    /// for none; days a project's keys live after its last event). Defaults 200, 8192, 30.
    var eventTypesPerProject = 200
    var eventTypeSampleBytes = 8192
    var eventTypeDays = 30
    /// HERALD_API_AUTH: how callers are identified. `keystone` (tokens validated against
    /// Keystone) or `trusted-header` (development only: trusts `X-Project-Id` and `X-Roles`,
    /// logged as a warning at start-up). Default keystone.
    var apiAuth: APIAuthMode
    /// HERALD_KEYSTONE_*: Herald's service user, for validating callers' tokens (keystone mode).
    var keystone: KeystoneConfiguration?
    /// HERALD_INGEST_WATCH_SECONDS: how often a node checks that RabbitMQ still lists a consumer
    /// on herald.ingest (and consumes anew when it lists none while messages wait). Default 10.
    var ingestWatchInterval: Duration
    /// HERALD_DELIVERY_LINGER_MS: how long a batch waits for company on a busy lane
    /// before it is sent. While a queue's request is in flight its messages batch up anyway.
    /// Default 5.
    var deliveryLinger: Duration
    /// HERALD_SIGNED_URL_*: when pre-signed URLs are renewed (or warned about) and for how long
    /// a renewed one is made.
    var signedURLs: SignedURLPolicy
    /// HERALD_ZAQAR_ALLOWED_URLS: the Zaqar endpoints a subscription's `zaqar_url` may name
    /// (scheme, host, port and path prefix). Default: HERALD_ZAQAR_URL alone.
    var zaqarAllowedURLs: [String]
    /// HERALD_QUOTA_SUBSCRIPTIONS, HERALD_RATE_SUBSCRIPTION_CHANGES, HERALD_REPLAY_MAX, HERALD_RATE_REPLAYS.
    var limits: APILimits
    /// HERALD_DELIVERY_TIMEOUT_SECONDS: the deadline of one request to a target, whole. Default 10.
    var deliveryTimeout: Duration
    /// HERALD_ZAQAR_CONNECTIONS: connections a node keeps at most to one Zaqar host, one request
    /// each (every lane of that host shares them). Default 8.
    var zaqarConnections: Int
    /// HERALD_DELIVERY_PROJECT_MAX_MESSAGES: messages one project's queues may hold in a node's
    /// delivery buffers (of 50000 in all). Default 10000.
    var deliveryProjectMaxMessages: Int
    /// HERALD_DEAD_LETTERS_MAX, HERALD_DEAD_LETTERS_PROJECT_MAX, HERALD_DEAD_LETTER_BODY_BYTES,
    /// HERALD_DEAD_LETTERS_IDLE_DAYS: how much dead-letter storage the cluster uses.
    var deadLetterBudget: DeadLetterBudget
    /// HERALD_EVENT_DEFINITIONS: a YAML file of event definitions (who owns an event, its
    /// resource id and family), tried before the shipped ones or replacing them. Default: the shipped ones.
    var eventDefinitions: EventDefinitions
    /// HERALD_REDACTION_FILE: a YAML file of what to cut from events before tenants receive
    /// them, added to the shipped rules or replacing them. Default: the shipped rules
    /// (docs/security.md, "What tenants receive").
    var redaction: RedactionRules = .defaults
    /// HERALD_ZAQAR_CA_FILE: the CAs that sign the Zaqar endpoints' certificates; nil: the system's.
    var zaqarCAFile: String?
    /// HERALD_NOTIFICATION_TOPICS: oslo.messaging topics bound on every exchange. Default notifications,versioned_notifications.
    var notificationTopics: [String]
    /// HERALD_PRIORITIES: priorities bound, as `<topic>.<priority>`. Default every one but debug.
    var priorities: [String]
    /// HERALD_POLICY_FILE: oslo.policy-format YAML rules over the defaults (`Policy`). Default: none.
    var policy: Policy
    /// HERALD_CLUSTER: the cluster's name in its AMQP names (`<cluster>.ingest`, ...). Default:
    /// HERALD_KEY_PREFIX without its trailing `:` (`herald`).
    var names: ClusterNames
    /// HERALD_DELIVERY_RETRY_HORIZON, HERALD_PARKING_*: how failing targets are parked and retried.
    var parking: ParkingSettings
    /// HERALD_LOG_LEVEL: trace, debug, info, notice, warning, error, critical. Default info.
    package var logLevel: String
    /// HERALD_LOG_FORMAT: text or json (one JSON object per line). Default text.
    package var logFormat: String

    /// Every key a configuration file or `--set` may name.
    static let keys: Set<String> = [
        "HERALD_NODE_ID", "HERALD_REDIS_URL", "HERALD_AMQP_URL", "HERALD_ZAQAR_URL", "HERALD_PARTITIONS",
        "HERALD_KEY_PREFIX",
        "HERALD_EXCHANGES", "HERALD_EXCHANGES_DURABLE", "HERALD_CEILOMETER_EVENTS", "HERALD_INGEST_ORDERED",
        "HERALD_INGEST_PREFETCH",
        "HERALD_PARTITION_PREFETCH", "HERALD_QUEUE_TYPE", "HERALD_INGEST_QUEUE_MAX_MESSAGES", "HERALD_INGEST_LAYOUT",
        "HERALD_PARTITION_QUEUE_MAX_MESSAGES", "HERALD_INGEST_QUEUE_MAX_BYTES", "HERALD_PARTITION_QUEUE_MAX_BYTES",
        "HERALD_SHUTDOWN_BUDGET_SECONDS", "HERALD_HANDOFF_DRAIN_SECONDS",
        "HERALD_HANDOFF_GIVE_BACK_SECONDS",
        "HERALD_API_HOST", "HERALD_API_PORT", "HERALD_METRICS_PORT",
        "HERALD_API_AUTH", "HERALD_LOG_LEVEL", "HERALD_LOG_FORMAT", "HERALD_KEYSTONE_URL", "HERALD_KEYSTONE_USERNAME",
        "HERALD_KEYSTONE_PASSWORD", "HERALD_KEYSTONE_PROJECT", "HERALD_KEYSTONE_USER_DOMAIN",
        "HERALD_KEYSTONE_PROJECT_DOMAIN",
        "HERALD_KEYSTONE_CACHE_SECONDS", "HERALD_KEYSTONE_TRUST_ROLES", "HERALD_SIGNED_URL_RENEW_SECONDS",
        "HERALD_SIGNED_URL_LIFETIME_SECONDS", "HERALD_SIGNED_URL_CHECK_SECONDS", "HERALD_INGEST_WATCH_SECONDS",
        "HERALD_DELIVERY_LINGER_MS", "HERALD_ZAQAR_ALLOWED_URLS", "HERALD_QUOTA_SUBSCRIPTIONS",
        "HERALD_RATE_SUBSCRIPTION_CHANGES",
        "HERALD_REPLAY_MAX", "HERALD_RATE_REPLAYS", "HERALD_RATE_TESTS", "HERALD_API_PROJECT_REQUESTS_IN_FLIGHT",
        "HERALD_API_REQUESTS_IN_FLIGHT", "HERALD_QUOTA_SUBSCRIPTIONS_TOTAL",
        "HERALD_ZAQAR_SERVICE_TYPE", "HERALD_ZAQAR_INTERFACE", "HERALD_ZAQAR_REGION", "HERALD_DELIVERY_TIMEOUT_SECONDS",
        "HERALD_DELIVERY_PROJECT_MAX_MESSAGES", "HERALD_ZAQAR_CONNECTIONS",
        "HERALD_CLUSTER", "HERALD_DEAD_LETTERS_MAX", "HERALD_DEAD_LETTERS_PROJECT_MAX", "HERALD_DEAD_LETTER_BODY_BYTES",
        "HERALD_DEAD_LETTERS_IDLE_DAYS", "HERALD_EVENT_DEFINITIONS", "HERALD_NOTIFICATION_TOPICS", "HERALD_PRIORITIES",
        "HERALD_POLICY_FILE", "HERALD_ADMIN_PROJECT", "HERALD_DELIVERY_RETRY_HORIZON", "HERALD_PARKING_AFTER_ATTEMPTS",
        "HERALD_PARKING_RETRY_BASE_SECONDS", "HERALD_PARKING_RETRY_CAP_SECONDS", "HERALD_PARKING_PROJECT_MAX_MESSAGES",
        "HERALD_PARKING_PROJECT_MAX_BYTES", "HERALD_PARKING_MAX_BYTES",
        "HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES", "HERALD_PARKING_DRAINS", "HERALD_KEYSTONE_NEGATIVE_CACHE_SECONDS",
        "HERALD_KEYSTONE_VALIDATIONS_PER_SECOND", "HERALD_SERVICE_TYPE", "HERALD_REDACTION_FILE",
        "HERALD_TRUSTED_PROXIES", "HERALD_KEYSTONE_VALIDATIONS_IN_FLIGHT", "HERALD_ZAQAR_CA_FILE",
        "HERALD_KEYSTONE_CA_FILE", "HERALD_EVENT_TYPES_PER_PROJECT", "HERALD_EVENT_TYPE_SAMPLE_BYTES",
        "HERALD_EVENT_TYPE_DAYS",
    ]

    /// oslo.messaging's notification priorities (the routing key's last part).
    static let knownPriorities = ["audit", "debug", "info", "warn", "error", "critical", "sample"]

    /// `90`, `90s`, `15m`, `24h`, `2d`: nil when it is none of these.
    static func duration(_ text: String) -> Duration? {
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        var digits = Substring(text.trimmingCharacters(in: .whitespaces).lowercased())
        var unit = 1
        if let last = digits.last, let factor = units[last] {
            unit = factor
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.count <= 9, digits.allSatisfy(\.isASCII), let value = Int(digits), value >= 0
        else { return nil }
        return .seconds(value * unit)
    }

    /// An unknown key is a typo that would otherwise be ignored: it stops start-up.
    package static func checkKeys(_ values: [String: String], source: String) throws {
        if let unknown = values.keys.filter({ !keys.contains($0) }).sorted().first {
            throw ConfigurationError(
                key: unknown, value: values[unknown] ?? "",
                expected: "a known key (in \(source)); see `herald node --help` and the README's table")
        }
    }

    /// `HERALD_*` variables of the environment that are no setting: a misspelt key, which would
    /// otherwise be ignored without a word. Left out: `HERALD_CONFIG_FILE`, the tests'
    /// `HERALD_TEST_*`, and the variables Kubernetes makes for a Service named `herald...`
    /// (`HERALD_SERVICE_HOST`, `HERALD_PORT_8090_TCP_ADDR`, ...). At most `limit`, sorted.
    package static func unknownEnvironmentKeys(_ environment: [String: String], limit: Int = 20) -> [String] {
        // Kubernetes' service links: <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<port name>],
        // <NAME>_PORT=tcp://..., <NAME>_PORT_<n>_<PROTOCOL>[_ADDR|_PORT|_PROTO].
        func serviceLink(_ key: String, _ value: String) -> Bool {
            if key.hasSuffix("_SERVICE_HOST") || key.contains("_SERVICE_PORT") { return true }
            if key.hasSuffix("_PORT"), ["tcp://", "udp://", "sctp://"].contains(where: value.hasPrefix) { return true }
            let parts = key.split(separator: "_")
            guard
                let port = parts.indices.last(where: {
                    parts[$0] == "PORT" && $0 + 1 < parts.count && parts[$0 + 1].allSatisfy(\.isNumber)
                })
            else { return false }
            let tail = parts[(port + 1)...]
            guard tail.count == 2 || tail.count == 3, ["TCP", "UDP", "SCTP"].contains(parts[port + 2]) else {
                return false
            }
            return tail.count == 2 || ["ADDR", "PORT", "PROTO"].contains(parts[port + 3])
        }
        let unknown = environment.filter { key, value in
            key.hasPrefix("HERALD_") && !keys.contains(key) && key != "HERALD_CONFIG_FILE"
                && !key.hasPrefix("HERALD_TEST_") && !serviceLink(key, value)
        }.keys
        return Array(unknown.sorted().prefix(limit))
    }

    package static let defaultExchanges = [
        "nova", "neutron", "cinder", "glance", "heat", "keystone", "designate", "octavia", "ironic", "manila", "magnum",
    ]

    /// - Throws: `ConfigurationError` naming the variable and its bad value.
    package static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> NodeConfiguration {
        func string(_ key: String, _ fallback: String) -> String {
            environment[key].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
        }
        func integer(_ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
            guard let text = environment[key], !text.isEmpty else { return fallback }
            guard let value = Int(text), range.contains(value) else {
                throw ConfigurationError(
                    key: key, value: text, expected: "a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        }
        func boolean(_ key: String, _ fallback: Bool) throws -> Bool {
            guard let text = environment[key]?.lowercased(), !text.isEmpty else { return fallback }
            switch text {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off": return false
            default: throw ConfigurationError(key: key, value: text, expected: "true or false")
            }
        }
        func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ fallback: T) throws -> T
        where T.RawValue == String {
            guard let text = environment[key], !text.isEmpty else { return fallback }
            guard let value = T(rawValue: text) else {
                throw ConfigurationError(
                    key: key, value: text, expected: "one of " + T.allCases.map(\.rawValue).joined(separator: ", "))
            }
            return value
        }
        let trustedProxies: AddressRanges
        do {
            trustedProxies = try AddressRanges(
                string("HERALD_TRUSTED_PROXIES", "").split(separator: ",").map {
                    $0.trimmingCharacters(in: .whitespaces)
                }.filter { !$0.isEmpty })
        } catch {
            throw ConfigurationError(
                key: "HERALD_TRUSTED_PROXIES", value: string("HERALD_TRUSTED_PROXIES", ""),
                expected: "addresses or CIDR ranges, comma-separated, such as 10.42.0.0/16, fd00::/8 (\(error))")
        }
        let keystoneCacheSeconds = try integer("HERALD_KEYSTONE_CACHE_SECONDS", 60, 0...3600)
        let keystoneNegativeSeconds = try integer("HERALD_KEYSTONE_NEGATIVE_CACHE_SECONDS", 10, 0...300)
        let keystoneValidations = try integer("HERALD_KEYSTONE_VALIDATIONS_PER_SECOND", 10, 0...100_000)
        let keystoneInFlight = try integer("HERALD_KEYSTONE_VALIDATIONS_IN_FLIGHT", 64, 1...10_000)
        let serviceType = string("HERALD_SERVICE_TYPE", "events")
        guard (1...64).contains(serviceType.utf8.count),
            serviceType.utf8.allSatisfy({
                $0 == UInt8(ascii: "-") || (0x30...0x39).contains($0) || (0x61...0x7A).contains($0)
            })
        else {
            throw ConfigurationError(
                key: "HERALD_SERVICE_TYPE", value: serviceType,
                expected:
                    "Herald's service type in the Keystone catalog: lower-case letters, digits and -, such as events")
        }
        let trustRoles = string("HERALD_KEYSTONE_TRUST_ROLES", "member").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }
        guard !trustRoles.isEmpty else {
            throw ConfigurationError(
                key: "HERALD_KEYSTONE_TRUST_ROLES", value: environment["HERALD_KEYSTONE_TRUST_ROLES"] ?? "",
                expected: "a comma-separated list of role names, such as member")
        }
        let keystoneURL = environment["HERALD_KEYSTONE_URL"].flatMap { $0.isEmpty ? nil : $0 }
        let zaqarFromCatalog = keystoneURL != nil && (environment["HERALD_ZAQAR_URL"] ?? "").isEmpty
        let zaqarURL =
            zaqarFromCatalog ? ZaqarCatalogLookup.unresolved : string("HERALD_ZAQAR_URL", "http://127.0.0.1:8888")
        var zaqarCatalog: ZaqarCatalogLookup?
        if zaqarFromCatalog {
            let interface = string("HERALD_ZAQAR_INTERFACE", "public")
            guard ["public", "internal", "admin"].contains(interface) else {
                throw ConfigurationError(
                    key: "HERALD_ZAQAR_INTERFACE", value: interface,
                    expected: "public, internal or admin: the catalog endpoint Herald posts to")
            }
            let type = string("HERALD_ZAQAR_SERVICE_TYPE", "messaging")
            guard (1...64).contains(type.count) else {
                throw ConfigurationError(
                    key: "HERALD_ZAQAR_SERVICE_TYPE", value: type,
                    expected: "Zaqar's service type in the catalog, such as messaging")
            }
            zaqarCatalog = ZaqarCatalogLookup(
                type: type, interface: interface,
                region: environment["HERALD_ZAQAR_REGION"].flatMap { $0.isEmpty ? nil : $0 })
        }
        func optionalInteger(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let text = environment[key], !text.isEmpty else { return nil }
            return try integer(key, 0, range)
        }
        let layoutText = string("HERALD_INGEST_LAYOUT", "")
        var layout: IngestLayout?
        if !layoutText.isEmpty {
            guard let known = IngestLayout(rawValue: layoutText) else {
                throw ConfigurationError(
                    key: "HERALD_INGEST_LAYOUT", value: layoutText,
                    expected:
                        "single or per-exchange (or unset: the cluster's own, per-exchange for a new cluster)")
            }
            layout = known
        }
        let queueSettings = QueueShapeSettings(
            type: string("HERALD_QUEUE_TYPE", ""),
            ingestMaxMessages: try optionalInteger("HERALD_INGEST_QUEUE_MAX_MESSAGES", 0...1_000_000_000),
            partitionMaxMessages: try optionalInteger("HERALD_PARTITION_QUEUE_MAX_MESSAGES", 0...1_000_000_000),
            ingestLayout: layout,
            ingestMaxBytes: try optionalInteger("HERALD_INGEST_QUEUE_MAX_BYTES", 0...(1 << 50)),
            partitionMaxBytes: try optionalInteger("HERALD_PARTITION_QUEUE_MAX_BYTES", 0...(1 << 50))
        )
        let keyPrefix = string("HERALD_KEY_PREFIX", "herald:")
        let clusterName = string("HERALD_CLUSTER", ClusterNames.derived(fromKeyPrefix: keyPrefix))
        let names: ClusterNames
        do {
            names = try ClusterNames(cluster: clusterName)
        } catch {
            throw ConfigurationError(
                key: environment["HERALD_CLUSTER"].map { $0.isEmpty ? "HERALD_KEY_PREFIX" : "HERALD_CLUSTER" }
                    ?? "HERALD_KEY_PREFIX", value: clusterName, expected: "a cluster name for AMQP: \(error)")
        }
        var deadLetterBudget = DeadLetterBudget()
        deadLetterBudget.max = try integer("HERALD_DEAD_LETTERS_MAX", 20_000, 100...10_000_000)
        // Unset, a project's bound follows a cluster bound set below it.
        deadLetterBudget.projectMax = try integer(
            "HERALD_DEAD_LETTERS_PROJECT_MAX", min(1_000, deadLetterBudget.max), 10...1_000_000)
        guard deadLetterBudget.projectMax <= deadLetterBudget.max else {
            throw ConfigurationError(
                key: "HERALD_DEAD_LETTERS_PROJECT_MAX", value: "\(deadLetterBudget.projectMax)",
                expected:
                    "at most HERALD_DEAD_LETTERS_MAX (\(deadLetterBudget.max)): a project's letters are kept in the cluster-wide stream too"
            )
        }
        deadLetterBudget.bodyBytes = try integer("HERALD_DEAD_LETTER_BODY_BYTES", 16_384, 1_024...1_048_576)
        deadLetterBudget.projectIdle = .seconds(86_400 * (try integer("HERALD_DEAD_LETTERS_IDLE_DAYS", 14, 1...365)))
        let eventDefinitions: EventDefinitions
        if let path = environment["HERALD_EVENT_DEFINITIONS"], !path.isEmpty {
            do {
                eventDefinitions = try EventDefinitions.load(path: path)
            } catch {
                throw ConfigurationError(key: "HERALD_EVENT_DEFINITIONS", value: path, expected: "\(error)")
            }
        } else {
            eventDefinitions = .defaults
        }
        func caFile(_ key: String) throws -> String? {
            guard let path = environment[key], !path.isEmpty else { return nil }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw ConfigurationError(key: key, value: path, expected: "a readable file of PEM CA certificates")
            }
            return path
        }
        let zaqarCAFile = try caFile("HERALD_ZAQAR_CA_FILE")
        let keystoneCAFile = try caFile("HERALD_KEYSTONE_CA_FILE")
        var redaction = RedactionRules.defaults
        if let path = environment["HERALD_REDACTION_FILE"], !path.isEmpty {
            do {
                redaction = try RedactionRules.load(path: path)
            } catch {
                throw ConfigurationError(key: "HERALD_REDACTION_FILE", value: path, expected: "\(error)")
            }
        }
        func list(_ key: String, _ fallback: String) -> [String] {
            string(key, fallback).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                !$0.isEmpty
            }
        }
        let topics = list("HERALD_NOTIFICATION_TOPICS", "notifications,versioned_notifications")
        let topicCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        guard !topics.isEmpty,
            topics.allSatisfy({ !$0.isEmpty && $0.count <= 100 && $0.allSatisfy { topicCharacters.contains($0) } })
        else {
            throw ConfigurationError(
                key: "HERALD_NOTIFICATION_TOPICS", value: environment["HERALD_NOTIFICATION_TOPICS"] ?? "",
                expected: "comma-separated topic names such as notifications,versioned_notifications")
        }
        let priorities = list("HERALD_PRIORITIES", "audit,info,warn,error,critical,sample").map { $0.lowercased() }
        if let unknown = priorities.first(where: { !knownPriorities.contains($0) }) ?? (priorities.isEmpty ? "" : nil) {
            throw ConfigurationError(
                key: "HERALD_PRIORITIES", value: environment["HERALD_PRIORITIES"] ?? "",
                expected:
                    "comma-separated priorities of \(knownPriorities.joined(separator: ", ")) ('\(unknown)' is none)")
        }
        var parking = ParkingSettings()
        if let text = environment["HERALD_DELIVERY_RETRY_HORIZON"], !text.isEmpty {
            guard let horizon = Self.duration(text), horizon >= .seconds(10), horizon <= .seconds(14 * 86_400) else {
                throw ConfigurationError(
                    key: "HERALD_DELIVERY_RETRY_HORIZON", value: text,
                    expected: "a duration from 10s to 14d: seconds, or a number with s, m, h or d (24h)")
            }
            parking.horizon = horizon
        }
        parking.afterAttempts = try integer("HERALD_PARKING_AFTER_ATTEMPTS", 3, 1...100)
        parking.retryBase = .seconds(try integer("HERALD_PARKING_RETRY_BASE_SECONDS", 5, 1...3600))
        parking.retryCap = .seconds(try integer("HERALD_PARKING_RETRY_CAP_SECONDS", 60, 1...86_400))
        if parking.retryCap < parking.retryBase {
            throw ConfigurationError(
                key: "HERALD_PARKING_RETRY_CAP_SECONDS", value: "\(parking.retryCap.seconds)",
                expected: "at least HERALD_PARKING_RETRY_BASE_SECONDS (\(parking.retryBase.seconds))")
        }
        parking.projectMaxMessages = try integer("HERALD_PARKING_PROJECT_MAX_MESSAGES", 100_000, 100...100_000_000)
        parking.projectMaxBytes = try integer("HERALD_PARKING_PROJECT_MAX_BYTES", 1 << 30, 1 << 20...1 << 40)
        // Unset: 8 GiB, or a project's share where that is set higher (an older setting stays valid).
        parking.clusterMaxBytes = try integer(
            "HERALD_PARKING_MAX_BYTES", max(8 << 30, parking.projectMaxBytes), 0...1 << 44)
        guard parking.clusterMaxBytes == 0 || parking.clusterMaxBytes >= parking.projectMaxBytes else {
            throw ConfigurationError(
                key: "HERALD_PARKING_MAX_BYTES", value: "\(parking.clusterMaxBytes)",
                expected:
                    "0 (no bound) or at least HERALD_PARKING_PROJECT_MAX_BYTES (\(parking.projectMaxBytes)): every project's parked bytes together"
            )
        }
        parking.subscriptionMaxMessages = try integer(
            "HERALD_PARKING_SUBSCRIPTION_MAX_MESSAGES", 50_000, 100...100_000_000)
        parking.concurrentDrains = try integer("HERALD_PARKING_DRAINS", 4, 1...64)
        var policy = Policy()
        if let path = environment["HERALD_POLICY_FILE"], !path.isEmpty {
            do {
                policy = try Policy.load(path: path)
            } catch {
                throw ConfigurationError(key: "HERALD_POLICY_FILE", value: path, expected: "\(error)")
            }
        }
        var configuration = NodeConfiguration(
            nodeID: string("HERALD_NODE_ID", ProcessInfo.processInfo.hostName),
            redisURL: string("HERALD_REDIS_URL", "redis://127.0.0.1:6379/0"),
            amqpURL: string("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
            zaqarURL: zaqarURL,
            partitions: try integer("HERALD_PARTITIONS", 256, 1...65536),
            keyPrefix: keyPrefix,
            exchanges: string("HERALD_EXCHANGES", defaultExchanges.joined(separator: ",")).split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces)
            }.filter { !$0.isEmpty },
            exchangesDurable: try boolean("HERALD_EXCHANGES_DURABLE", false),
            ceilometerEvents: try boolean("HERALD_CEILOMETER_EVENTS", false),
            ingestOrdered: try boolean("HERALD_INGEST_ORDERED", true),
            ingestPrefetch: UInt16(try integer("HERALD_INGEST_PREFETCH", 200, 1...65535)),
            partitionPrefetch: UInt16(try integer("HERALD_PARTITION_PREFETCH", 100, 1...65535)),
            queueSettings: queueSettings,
            queueShape: try ClusterQueueShape.choose(configured: queueSettings, recorded: [:], clusterExists: false),
            shutdownBudget: .seconds(try integer("HERALD_SHUTDOWN_BUDGET_SECONDS", 20, 1...3600)),
            handoffDrain: .seconds(try integer("HERALD_HANDOFF_DRAIN_SECONDS", 120, 1...3600)),
            handoffGiveBack: .seconds(try integer("HERALD_HANDOFF_GIVE_BACK_SECONDS", 1, 0...3600)),
            apiHost: string("HERALD_API_HOST", "0.0.0.0"),
            apiPort: try integer("HERALD_API_PORT", 8090, 0...65535),
            apiAuth: try choice("HERALD_API_AUTH", .keystone),
            keystone: environment["HERALD_KEYSTONE_URL"].flatMap { $0.isEmpty ? nil : $0 }.map { url in
                KeystoneConfiguration(
                    url: url, username: string("HERALD_KEYSTONE_USERNAME", "herald"),
                    password: string("HERALD_KEYSTONE_PASSWORD", ""),
                    project: string("HERALD_KEYSTONE_PROJECT", "service"),
                    userDomain: string("HERALD_KEYSTONE_USER_DOMAIN", "Default"),
                    projectDomain: string("HERALD_KEYSTONE_PROJECT_DOMAIN", "Default"),
                    cacheTTL: .seconds(keystoneCacheSeconds),
                    trustRoles: trustRoles,
                    adminProject: environment["HERALD_ADMIN_PROJECT"].flatMap { $0.isEmpty ? nil : $0 },
                    negativeCacheTTL: .seconds(keystoneNegativeSeconds), validationsPerSecond: keystoneValidations,
                    serviceType: serviceType,
                    trustedProxies: trustedProxies,
                    caFile: keystoneCAFile, validationsInFlight: keystoneInFlight
                )
            },
            ingestWatchInterval: .seconds(try integer("HERALD_INGEST_WATCH_SECONDS", 10, 1...3600)),
            deliveryLinger: .milliseconds(try integer("HERALD_DELIVERY_LINGER_MS", 5, 0...1000)),
            signedURLs: SignedURLPolicy(
                renewBefore: .seconds(try integer("HERALD_SIGNED_URL_RENEW_SECONDS", 21_600, 60...2_592_000)),
                lifetime: .seconds(try integer("HERALD_SIGNED_URL_LIFETIME_SECONDS", 604_800, 300...31_536_000)),
                checkEvery: .seconds(try integer("HERALD_SIGNED_URL_CHECK_SECONDS", 60, 1...3600))
            ),
            zaqarAllowedURLs: string("HERALD_ZAQAR_ALLOWED_URLS", zaqarURL).split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces)
            }.filter { !$0.isEmpty },
            limits: APILimits(
                subscriptionsPerProject: try integer("HERALD_QUOTA_SUBSCRIPTIONS", 100, 1...100_000),
                subscriptionsInAll: try integer("HERALD_QUOTA_SUBSCRIPTIONS_TOTAL", 200_000, 1...100_000_000),
                changesPerMinute: try integer("HERALD_RATE_SUBSCRIPTION_CHANGES", 60, 1...100_000),
                replayPerCall: try integer("HERALD_REPLAY_MAX", 100, 1...1000),
                replaysPerMinute: try integer("HERALD_RATE_REPLAYS", 1000, 1...1_000_000),
                testsPerMinute: try integer("HERALD_RATE_TESTS", 10, 1...10_000),
                requestsInFlightPerProject: try integer("HERALD_API_PROJECT_REQUESTS_IN_FLIGHT", 16, 1...10_000),
                requestsInFlight: try integer("HERALD_API_REQUESTS_IN_FLIGHT", 128, 1...100_000)
            ),
            deliveryTimeout: .seconds(try integer("HERALD_DELIVERY_TIMEOUT_SECONDS", 10, 1...300)),
            zaqarConnections: try integer("HERALD_ZAQAR_CONNECTIONS", 8, 1...1_024),
            deliveryProjectMaxMessages: try integer("HERALD_DELIVERY_PROJECT_MAX_MESSAGES", 10_000, 5_000...50_000),
            deadLetterBudget: deadLetterBudget,
            eventDefinitions: eventDefinitions,
            redaction: redaction,
            zaqarCAFile: zaqarCAFile,
            notificationTopics: topics,
            priorities: priorities,
            policy: policy,
            names: names,
            parking: parking,
            logLevel: string("HERALD_LOG_LEVEL", "info"),
            logFormat: string("HERALD_LOG_FORMAT", "text")
        )
        configuration.zaqarCatalog = zaqarCatalog
        configuration.eventTypesPerProject = try integer("HERALD_EVENT_TYPES_PER_PROJECT", 200, 1...10_000)
        configuration.eventTypeSampleBytes = try integer("HERALD_EVENT_TYPE_SAMPLE_BYTES", 8192, 0...65_536)
        configuration.eventTypeDays = try integer("HERALD_EVENT_TYPE_DAYS", 30, 1...365)
        if let text = environment["HERALD_METRICS_PORT"], !text.isEmpty {
            configuration.metricsPort = try integer("HERALD_METRICS_PORT", 0, 0...65535)
            if configuration.metricsPort == configuration.apiPort, configuration.apiPort != 0 {
                throw ConfigurationError(
                    key: "HERALD_METRICS_PORT", value: text,
                    expected:
                        "a port other than HERALD_API_PORT (\(configuration.apiPort)); unset: /metrics on the API's port"
                )
            }
        }
        configuration.zaqarAllowedURLsGiven = !(environment["HERALD_ZAQAR_ALLOWED_URLS"] ?? "").isEmpty
        try configuration.validate()
        return configuration
    }

    func validate() throws {
        do { _ = try RedisConfiguration(url: redisURL) } catch {
            throw ConfigurationError(key: "HERALD_REDIS_URL", value: redisURL, expected: "\(error)")
        }
        do { _ = try AMQPConfiguration(url: amqpURL) } catch {
            throw ConfigurationError(key: "HERALD_AMQP_URL", value: amqpURL, expected: "\(error)")
        }
        // A Zaqar still to be found in the catalog is checked once it is (`resolvingZaqar`).
        if zaqarCatalog == nil {
            guard let zaqar = URL(string: zaqarURL), ["http", "https"].contains(zaqar.scheme ?? ""), zaqar.host != nil
            else {
                throw ConfigurationError(
                    key: "HERALD_ZAQAR_URL", value: zaqarURL, expected: "an http(s) URL such as http://zaqar:8888")
            }
            do {
                let endpoints = try ZaqarEndpoints(urls: zaqarAllowedURLs)
                guard endpoints.permits(zaqarURL) else {
                    throw ConfigurationError(
                        key: "HERALD_ZAQAR_ALLOWED_URLS", value: zaqarAllowedURLs.joined(separator: ","),
                        expected: "a list that includes HERALD_ZAQAR_URL (\(zaqarURL))")
                }
            } catch let error as DeliveryError {
                throw ConfigurationError(
                    key: "HERALD_ZAQAR_ALLOWED_URLS", value: zaqarAllowedURLs.joined(separator: ","),
                    expected: "comma-separated http(s) URLs: \(error.message)")
            }
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ConfigurationError(
                key: "HERALD_LOG_LEVEL", value: logLevel,
                expected: "one of " + Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))
        }
        guard ["text", "json"].contains(logFormat) else {
            throw ConfigurationError(key: "HERALD_LOG_FORMAT", value: logFormat, expected: "text or json")
        }
        guard !apiHost.isEmpty, !apiHost.contains(" ") else {
            throw ConfigurationError(
                key: "HERALD_API_HOST", value: apiHost,
                expected: "an address to listen on, such as 0.0.0.0 or 127.0.0.1")
        }
        if apiAuth == .keystone {
            guard let keystone else {
                throw ConfigurationError(
                    key: "HERALD_KEYSTONE_URL", value: "",
                    expected:
                        "Keystone's URL, e.g. http://keystone:5000/v3, since HERALD_API_AUTH=keystone (or HERALD_API_AUTH=trusted-header, for development only)"
                )
            }
            guard let url = URL(string: keystone.url), ["http", "https"].contains(url.scheme ?? ""), url.host != nil
            else {
                throw ConfigurationError(
                    key: "HERALD_KEYSTONE_URL", value: keystone.url,
                    expected: "an http(s) URL such as http://keystone:5000/v3")
            }
            guard !keystone.password.isEmpty else {
                throw ConfigurationError(
                    key: "HERALD_KEYSTONE_PASSWORD", value: "",
                    expected: "the password of Herald's service user \(keystone.username)")
            }
        }
        guard signedURLs.lifetime > signedURLs.renewBefore else {
            throw ConfigurationError(
                key: "HERALD_SIGNED_URL_LIFETIME_SECONDS", value: "\(Int(signedURLs.lifetime.seconds))",
                expected:
                    "more than HERALD_SIGNED_URL_RENEW_SECONDS (\(Int(signedURLs.renewBefore.seconds))), or every renewed URL would be due again at once"
            )
        }
        guard queueSettings.type.isEmpty || ClusterQueueShape.knownTypes.contains(queueSettings.type) else {
            throw ConfigurationError(
                key: "HERALD_QUEUE_TYPE", value: queueSettings.type,
                expected: "classic or quorum (or unset: the cluster's own, quorum for a new cluster)")
        }
        // An exchange names a queue of its own (`<cluster>.ingest.<exchange>`), at most 255 bytes.
        let exchangeCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
        for exchange in exchanges
        where exchange.count > 127 || !exchange.allSatisfy({ exchangeCharacters.contains($0) }) {
            throw ConfigurationError(
                key: "HERALD_EXCHANGES", value: exchanges.joined(separator: ","),
                expected:
                    "exchange names of 1 to 127 letters, digits, '_', '.', ':' and '-' ('\(SafeText.clean(exchange, limit: 60))' is not)"
            )
        }
        guard !exchanges.isEmpty || ceilometerEvents else {
            throw ConfigurationError(
                key: "HERALD_EXCHANGES", value: exchanges.joined(separator: ","),
                expected: "at least one exchange (or HERALD_CEILOMETER_EVENTS=true)")
        }
        do {
            try ClusterConfiguration(nodeID: nodeID, keyPrefix: keyPrefix, partitionCount: partitions).validate()
        } catch {
            throw ConfigurationError(key: "HERALD_NODE_ID", value: nodeID, expected: "\(error)")
        }
    }
}

package struct ConfigurationError: Error, CustomStringConvertible {
    var key: String
    var value: String
    var expected: String

    package init(key: String, value: String, expected: String) {
        self.key = key
        self.value = value
        self.expected = expected
    }
    /// Never a password: a URL's is replaced by `***`, a password setting's whole value too, and
    /// the `expected` text (which may quote the value) is cleaned the same way.
    package var description: String {
        let shown = key.contains("PASSWORD") ? (value.isEmpty ? "" : "***") : Self.redacted(value)
        return
            "invalid configuration: \(key)=\(SafeText.quoted(shown, limit: 300)): \(SafeText.clean(Self.redacted(expected), limit: 600))"
    }

    /// The passwords of the URLs in `text` replaced by `***` (`SafeText.hidingPasswords`).
    static func redacted(_ text: String) -> String { SafeText.hidingPasswords(text) }
}

/// How API callers are identified.
package enum APIAuthMode: String, CaseIterable, Sendable {
    case keystone
    case trustedHeader = "trusted-header"
}

/// The `KEY=VALUE` lines of a configuration file (`herald node --config FILE`): the same
/// keys as the environment; blank lines and `#` comments are skipped.
package enum ConfigurationFile {
    package static func read(_ path: String) throws -> [String: String] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(
                key: "--config", value: path, expected: "a readable file (\(error.localizedDescription))")
        }
        var values: [String: String] = [:]
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "="), line[..<equals].hasPrefix("HERALD_") else {
                throw ConfigurationError(
                    key: "--config", value: "\(path):\(number + 1)",
                    expected: "KEY=VALUE with a HERALD_ key, found '\(line)'")
            }
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            values[line[..<equals].trimmingCharacters(in: .whitespaces)] = value
        }
        return values
    }
}

/// Where Zaqar is in Keystone's catalog, when HERALD_ZAQAR_URL does not say.
package struct ZaqarCatalogLookup: Sendable, Equatable {
    /// What `zaqarURL` holds until the catalog answered (never contacted: start-up resolves it first).
    static let unresolved = "http://zaqar-from-the-keystone-catalog.invalid"

    var type: String
    var interface: String
    var region: String?

    var described: String { "service type \(type), interface \(interface)" + (region.map { ", region \($0)" } ?? "") }
}

extension NodeConfiguration {
    /// The configuration with Zaqar's URL from the catalog: it also becomes the allowed endpoint
    /// when HERALD_ZAQAR_ALLOWED_URLS was not given.
    func resolvingZaqar(_ url: String) throws -> NodeConfiguration {
        var resolved = self
        resolved.zaqarURL = url
        resolved.zaqarCatalog = nil
        if !zaqarAllowedURLsGiven { resolved.zaqarAllowedURLs = [url] }
        do {
            try resolved.validate()
        } catch let error as ConfigurationError {
            throw ConfigurationError(
                key: "HERALD_ZAQAR_URL (from the Keystone catalog)", value: url, expected: error.expected)
        }
        return resolved
    }

    /// Asks Keystone's catalog for Zaqar, a few times (Keystone may be starting too); a clear
    /// error when it has none or cannot be asked.
    package func resolvingZaqarFromCatalog(logger: Logger, attempts: Int = 6) async throws -> NodeConfiguration {
        guard let lookup = zaqarCatalog, let keystoneConfiguration = keystone else { return self }
        let client = KeystoneClient(configuration: keystoneConfiguration, logger: logger)
        let result: Result<NodeConfiguration, any Error>
        do {
            result = .success(
                try await resolvingZaqar(from: client, lookup: lookup, logger: logger, attempts: attempts))
        } catch {
            result = .failure(error)
        }
        await client.shutdown()
        return try result.get()
    }

    private func resolvingZaqar(
        from client: KeystoneClient, lookup: ZaqarCatalogLookup, logger: Logger, attempts: Int
    ) async throws -> NodeConfiguration {
        var lastError = ""
        for attempt in 0..<attempts {
            do {
                guard
                    let url = try await client.catalogURL(
                        type: lookup.type, interface: lookup.interface, region: lookup.region)
                else {
                    throw ConfigurationError(
                        key: "HERALD_ZAQAR_URL", value: "",
                        expected:
                            "a Zaqar URL: it is not set, and Keystone's catalog has no endpoint for \(lookup.described) (HERALD_ZAQAR_SERVICE_TYPE, HERALD_ZAQAR_INTERFACE, HERALD_ZAQAR_REGION)"
                    )
                }
                logger.info(
                    "Zaqar from the Keystone catalog",
                    metadata: [LogKey.zaqarUrl: "\(url)", LogKey.keystoneCatalog: "\(lookup.described)"])
                return try resolvingZaqar(url)
            } catch let error as ConfigurationError {
                throw error
            } catch {
                lastError = "\(error)"
                logger.warning(
                    "cannot read Keystone's catalog yet",
                    metadata: [LogKey.error: "\(lastError)", LogKey.heraldAttempt: "\(attempt + 1)"])
                try await Task.sleep(for: .seconds(2))
            }
        }
        throw ConfigurationError(
            key: "HERALD_ZAQAR_URL", value: "",
            expected: "a Zaqar URL: it is not set, and Keystone's catalog could not be read (\(lastError))")
    }
}
