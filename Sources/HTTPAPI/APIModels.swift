import Coordination
import Delivery
import Foundation
import HeraldModel
import Hummingbird

/// The body of POST and PATCH `/v1/subscriptions`: every field optional here; the route
/// says which are required.
package struct SubscriptionInput: Decodable {
    var eventTypes: [String]?
    var conditions: [Condition]?
    var target: Target?
    var messageTTL: Int?
    var allProjects: Bool?
    var project: String?
    /// Whether Herald makes a Keystone trust from the caller (keystone mode only).
    var trust: Bool?
    var includeActor: Bool?
    var resourceID: String?
    var origin: Origin?
    var unredacted: Bool?
    var format: MessageFormat?

    enum CodingKeys: String, CodingKey {
        case conditions, target, project, trust, unredacted, format
        case includeActor = "include_actor"
        case resourceID = "resource_id"
        case origin
        case eventTypes = "event_types"
        case messageTTL = "message_ttl"
        case allProjects = "all_projects"
    }
}

/// A subscription as the API answers it: its fields, and `warnings` when something needs the
/// subscriber (a pre-signed URL about to expire with no trust to renew it).
package struct SubscriptionView: Encodable {
    var subscription: Subscription
    var warnings: [String]

    package func encode(to encoder: any Encoder) throws {
        try subscription.encode(to: encoder)
        if !warnings.isEmpty {
            var container = encoder.container(keyedBy: DeadLetterEntry.Key.self)
            try container.encode(warnings, forKey: DeadLetterEntry.Key(stringValue: "warnings")!)
        }
    }
}

/// `GET /v1/subscriptions/{id}/delivery`.
package struct DeliveryStateView: Encodable {
    var subscriptionID: String
    /// healthy, failing or parked.
    var state: String
    /// Failing or parked since (ISO 8601, UTC).
    var since: String?
    var lastError: String?
    /// Parked: the next retry, retries so far, messages waiting, the oldest one's age, and when
    /// the oldest would be given up (dead-lettered as retry_horizon) if the target still failed.
    var nextAttempt: String?
    var attempts: Int?
    var parkedMessages: Int?
    var oldestParkedAgeSeconds: Double?
    var givenUpAfter: String?
    /// Events matched, delivered and dead-lettered in the last hour and in all (counted by the
    /// nodes, written within a second or so).
    var lastHour: Counts?
    var total: Counts?
    var lastDeliveredAt: String?
    /// The last error delivering to its target (or why messages were dead-lettered), and when:
    /// kept after the target recovered, unlike `last_error` of a failing or parked state.
    var recentError: String?
    var recentErrorAt: String?
    /// What needs the subscriber (a pre-signed URL near expiry with no trust to renew it).
    var warnings: [String] = []

    struct Counts: Encodable {
        var matched: Int
        var delivered: Int
        var deadLettered: Int

        enum CodingKeys: String, CodingKey {
            case matched, delivered
            case deadLettered = "dead_lettered"
        }
    }

    enum CodingKeys: String, CodingKey {
        case state, since, attempts, total, warnings
        case lastHour = "last_hour"
        case lastDeliveredAt = "last_delivered_at"
        case recentError = "recent_error"
        case recentErrorAt = "recent_error_at"
        case subscriptionID = "subscription_id"
        case lastError = "last_error"
        case nextAttempt = "next_attempt"
        case parkedMessages = "parked_messages"
        case oldestParkedAgeSeconds = "oldest_parked_age_seconds"
        case givenUpAfter = "given_up_after"
    }
}

/// Instants in answers: ISO 8601, UTC, whole seconds.
package enum APIDates {
    static func format(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "" }
        return ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: seconds))
    }
}

package struct SubscriptionPage: Encodable {
    var subscriptions: [SubscriptionView]
    /// The next page's path, absent on the last page.
    var next: String?
}

/// The seed service's subscription: `source` is an event type prefix, `target` a queue
/// name (`my-events` or `zaqar://my-events`).
package struct AliasInput: Decodable {
    var source: String
    var target: String
    var messageTTL: Int?

    enum CodingKeys: String, CodingKey {
        case source, target
        case messageTTL = "message_ttl"
    }
}

package struct AliasSubscription: Encodable {
    var id: String
    var source: String
    var target: String
    var messageTTL: Int
    var projectID: String
    /// What Herald made of `source`, and the patterns of subscriptions made through `/v1/subscriptions`.
    var eventTypes: [String]

    enum CodingKeys: String, CodingKey {
        case id, source, target
        case messageTTL = "message_ttl"
        case projectID = "project_id"
        case eventTypes = "event_types"
    }

    init(_ subscription: Subscription) {
        id = subscription.id
        let first = subscription.eventTypes.first { !$0.hasPrefix("!") } ?? ""
        let prefix = first.hasSuffix("*") ? String(first.dropLast()) : first
        // A pinned subscription reads back as it was written: the prefix, a dot, the instance id.
        source = subscription.resourceID.map { (prefix.hasSuffix(".") ? prefix : prefix + ".") + $0 } ?? prefix
        target = "zaqar://" + subscription.target.queue
        messageTTL = subscription.messageTTL
        projectID = subscription.project
        eventTypes = subscription.eventTypes
    }

    /// `compute.instance` matches every event type that starts with it. nabu's instance pinning,
    /// a prefix followed by an instance id (`compute.instance.<uuid>`), is the prefix's events of
    /// that resource only: the pattern and a resource id filter.
    static func pattern(fromSource source: String) throws -> (pattern: String, resourceID: String?) {
        let trimmed = source.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else {
            throw HTTPError(.badRequest, message: "source: must be an event type prefix such as \"compute.instance\"")
        }
        if let dot = trimmed.lastIndex(of: "."), isResourceID(trimmed[trimmed.index(after: dot)...]) {
            let prefix = String(trimmed[..<dot])
            guard !prefix.isEmpty else {
                throw HTTPError(
                    .badRequest,
                    message:
                        "source: an instance id needs an event type prefix before it, such as compute.instance.<id>")
            }
            return (prefix + ".*", String(trimmed[trimmed.index(after: dot)...]))
        }
        return (trimmed.hasSuffix("*") ? trimmed : trimmed + "*", nil)
    }

    /// A uuid as OpenStack writes them: 8-4-4-4-12 hex digits, or 32 hex digits.
    static func isResourceID(_ text: Substring) -> Bool {
        let hex = Set("0123456789abcdefABCDEF")
        let groups = text.split(separator: "-", omittingEmptySubsequences: false).map(\.count)
        guard text.allSatisfy({ hex.contains($0) || $0 == "-" }) else { return false }
        return groups == [8, 4, 4, 4, 12] || groups == [32]
    }

    static func queue(fromTarget target: String) throws -> String {
        let queue = target.hasPrefix("zaqar://") ? String(target.dropFirst("zaqar://".count)) : target
        guard !queue.isEmpty, !queue.contains("/") else {
            throw HTTPError(
                .badRequest,
                message:
                    "target: \(SafeText.quoted(target, limit: 80)) must be a Zaqar queue name, as my-events or zaqar://my-events"
            )
        }
        return queue
    }
}

package struct AliasPage: Encodable {
    var subscriptions: [AliasSubscription]
    var next: String?
}

package struct DeadLetterEntry: Encodable {
    var id: String
    var letter: DeadLetter

    package func encode(to encoder: any Encoder) throws {
        try letter.encode(to: encoder)
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(id, forKey: Key(stringValue: "id")!)
    }

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}

package struct DeadLetterPage: Encodable {
    var deadLetters: [DeadLetterEntry]
    var next: String?

    enum CodingKeys: String, CodingKey {
        case next
        case deadLetters = "dead_letters"
    }
}

package struct ReplayInput: Decodable {
    var ids: [String]
}

/// `GET /v1/event-types`.
package struct EventTypesView: Encodable {
    struct Entry: Encodable {
        var eventType: String
        var count: Int
        var lastSeen: String?
        /// The latest event of the type, as the project's subscribers receive it (redacted).
        var sample: JSONValue?

        enum CodingKeys: String, CodingKey {
            case count, sample
            case eventType = "event_type"
            case lastSeen = "last_seen"
        }
    }

    var eventTypes: [Entry]
    /// The most event types kept per project.
    var limit: Int

    enum CodingKeys: String, CodingKey {
        case limit
        case eventTypes = "event_types"
    }
}

/// The body of `PUT /v1/feed`.
package struct FeedInput: Decodable {
    var queue: String?
    var eventTypes: [String]?
    var format: MessageFormat?
    var messageTTL: Int?

    enum CodingKeys: String, CodingKey {
        case queue, format
        case eventTypes = "event_types"
        case messageTTL = "message_ttl"
    }
}

/// The id of a project's feed subscription: `feed-` and 32 hex digits of two FNV-1a hashes of
/// the project id, the same on every node and in every release (Swift's `Hasher` is seeded
/// per process). A collision cannot hand one project another's feed: ids are looked up with
/// their project, and a create over an existing id fails.
package enum FeedID {
    static func of(_ project: String) -> String {
        func fnv(_ basis: UInt64) -> UInt64 {
            var hash = basis
            for byte in project.utf8 {
                hash ^= UInt64(byte)
                hash = hash &* 0x0000_0100_0000_01b3
            }
            return hash
        }
        let hex = { (value: UInt64) -> String in
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return "feed-" + hex(fnv(0xcbf2_9ce4_8422_2325)) + hex(fnv(0x6c62_272e_07bb_0142))
    }
}

/// `POST /v1/subscriptions/{id}/test`: what the target said to the test event.
package struct TestEventResult: Encodable {
    /// Zaqar took it (2xx).
    var delivered: Bool
    /// The test event's id (`herald.event_id`, or the CloudEvent's `id`): the message to look for.
    var eventID: String
    var queue: String
    var zaqarURL: String
    /// Zaqar's HTTP status; absent when it did not answer.
    var status: Int?
    /// Why not, as the target put it (cut and cleaned).
    var error: String?

    enum CodingKeys: String, CodingKey {
        case delivered, queue, status, error
        case eventID = "event_id"
        case zaqarURL = "zaqar_url"
    }
}

/// The test event a user asks for: a `herald.test` notification, marked as such in its type,
/// its publisher and its payload, in the subscription's format.
package enum TestEvent {
    static func message(
        for subscription: Subscription, eventID: String, requestedBy user: String?, now: Date = Date()
    ) -> [UInt8] {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSSSSS"
        let timestamp = formatter.string(from: now)
        var payload: [String: Any] = [
            "test": true, "subscription_id": subscription.id,
            "message": "A test event sent by POST /v1/subscriptions/\(subscription.id)/test; not an OpenStack event.",
        ]
        if let user { payload["requested_by"] = user }
        let encode = { (value: Any) -> [UInt8] in
            Array(
                (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes]))
                    ?? Data("{}".utf8))
        }
        switch subscription.format ?? .herald {
        case .cloudevents:
            let attributes = ZaqarMessageEncoding.CloudEventAttributes(
                id: eventID, source: "/herald", type: "herald.test",
                time: ZaqarMessageEncoding.CloudEventAttributes.rfc3339(timestamp), subject: nil
            )
            return ZaqarMessageEncoding.cloudEvent(
                data: encode(payload), attributes: attributes, ttl: subscription.messageTTL,
                subscriptionID: subscription.id,
                partition: 0, epoch: 0, project: subscription.project)
        case .herald:
            let event: [String: Any] = [
                "event_type": "herald.test", "message_id": eventID, "priority": "INFO", "publisher_id": "herald",
                "timestamp": timestamp, "payload": payload,
            ]
            return ZaqarMessageEncoding.message(
                event: encode(event), ttl: subscription.messageTTL, subscriptionID: subscription.id, eventID: eventID,
                partition: 0, epoch: 0, project: subscription.project)
        }
    }
}

package struct ReplayResult: Encodable {
    struct Failure: Encodable {
        var id: String
        var reason: String
    }

    var replayed: [String]
    var failed: [Failure]
}

package struct ReadinessBody: Encodable {
    var ready: Bool
    var checks: [String: Bool]
}

/// `GET /v1/policy`: the rules in force.
package struct PolicyView: Encodable {
    struct Rule: Encodable {
        var name: String
        var rule: String
        var description: String
        /// Changed by HERALD_POLICY_FILE.
        var overridden: Bool
    }

    var rules: [Rule]
}
