import Foundation

/// A user's request: these events, into this Zaqar queue.
///
/// JSON uses snake_case keys (`event_types`, `message_ttl`, `all_projects`, ...).
public struct Subscription: Codable, Sendable, Equatable, Identifiable {
    public var id: String
    /// The project that owns the subscription; it receives only its own events
    /// unless an admin made it for all projects.
    public var project: String
    /// Made by an admin to receive every project's events (and events with no project).
    public var allProjects: Bool
    /// Event type patterns in the Ceilometer/Aodh sense: `*` any run, `?` one character,
    /// a leading `!` excludes. At least one pattern must include.
    public var eventTypes: [String]
    /// All must hold for an event to match.
    public var conditions: [Condition]
    public var target: Target
    /// Seconds Zaqar keeps each delivered message: 60 to 1209600.
    public var messageTTL: Int
    /// The Keystone trust from the subscriber to Herald's service user, made by Herald when the
    /// subscription was created (never taken from a request): it posts into a Keystone-protected
    /// Zaqar and renews the pre-signed URL.
    public var trustID: String?
    /// Also the events this project caused on other projects' resources (an admin acting for a
    /// tenant, a member on a shared network): matched by the acting project. nil: no.
    public var includeActor: Bool?
    /// Only the events about this resource (the definitions' resource id: a server's uuid, a
    /// port's id, ...). nil: any.
    public var resourceID: String?
    /// Which of two copies of one event: the service's own notification, the Ceilometer event
    /// built from it (when Herald binds Ceilometer's events too), or both (the default, nil).
    /// The two share one message id, so a consumer that drops duplicates by `event_id` keeps
    /// whichever came first: a subscription that wants one kind says so.
    public var origin: Origin?
    /// The events as they came, with the fields OpenStack shows only to admins (hosts,
    /// hypervisors, port bindings, Ceilometer's raw notification): an admin's all-projects
    /// subscription only. nil or false: redacted, as every tenant receives them.
    public var unredacted: Bool?
    /// The shape of each message's body: Herald's envelope (nil or `herald`) or a CloudEvents 1.0
    /// event in structured JSON mode (`cloudevents`).
    public var format: MessageFormat?
    /// The user who made it (with Keystone: the trust's trustor) and who changed it last.
    public var createdBy: String?
    public var updatedBy: String?
    public var createdAt: Double
    public var updatedAt: Double

    public init(
        id: String = UUID().uuidString.lowercased(),
        project: String,
        allProjects: Bool = false,
        eventTypes: [String],
        conditions: [Condition] = [],
        target: Target,
        messageTTL: Int = 3600,
        trustID: String? = nil,
        includeActor: Bool? = nil,
        resourceID: String? = nil,
        origin: Origin? = nil,
        createdAt: Double = Date().timeIntervalSince1970,
        updatedAt: Double? = nil
    ) {
        self.id = id
        self.project = project
        self.allProjects = allProjects
        self.eventTypes = eventTypes
        self.conditions = conditions
        self.target = target
        self.messageTTL = messageTTL
        self.trustID = trustID
        self.includeActor = includeActor
        self.resourceID = resourceID
        self.origin = origin
        self.createdAt = createdAt
        self.updatedAt = updatedAt ?? createdAt
    }

    enum CodingKeys: String, CodingKey {
        case id, project, conditions, target
        case allProjects = "all_projects"
        case eventTypes = "event_types"
        case messageTTL = "message_ttl"
        case trustID = "trust_id"
        case includeActor = "include_actor"
        case resourceID = "resource_id"
        case origin, unredacted, format
        case createdBy = "created_by"
        case updatedBy = "updated_by"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    public static let ttlRange = 60...1_209_600

    /// The bounds every subscription is held to, so that no allowed subscription can cost
    /// much per event or much memory (docs/security.md has the measured worst case).
    public enum Limits {
        public static let patterns = 20
        public static let patternBytes = 128
        public static let wildcardsPerPattern = 8
        public static let conditions = 12
        public static let fieldBytes = 255
        public static let fieldSegments = 16
        public static let inItems = 100
        public static let operandStringCharacters = 256
        /// An `eq`/`ne`/`in` operand, encoded as JSON.
        public static let operandBytes = 4096
        public static let zaqarURLBytes = 1024
        public static let signedURLFieldBytes = 512
        public static let signedURLListItems = 8
        /// The whole subscription, encoded as stored.
        public static let encodedBytes = 32 << 10
    }

    /// Checks every field; the error names the first bad one.
    /// - Throws: `SubscriptionValidationError`.
    public func validate() throws {
        func fail(_ field: String, _ message: String) -> SubscriptionValidationError {
            SubscriptionValidationError(field: field, message: message)
        }
        guard !project.isEmpty else { throw fail("project", "is empty") }
        guard project.utf8.count <= 255 else { throw fail("project", "is \(project.utf8.count) bytes; at most 255") }
        guard !eventTypes.isEmpty else {
            throw fail("event_types", "needs at least one pattern, e.g. \"compute.instance.*\"")
        }
        guard eventTypes.count <= Limits.patterns else {
            throw fail("event_types", "has \(eventTypes.count) patterns; at most \(Limits.patterns)")
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-*?:")
        for (index, pattern) in eventTypes.enumerated() {
            let body = pattern.hasPrefix("!") ? pattern.dropFirst() : Substring(pattern)
            guard body.utf8.count <= Limits.patternBytes else {
                throw fail("event_types[\(index)]", "is \(body.utf8.count) bytes; at most \(Limits.patternBytes)")
            }
            guard !body.isEmpty, body.allSatisfy({ allowed.contains($0) }) else {
                throw fail(
                    "event_types[\(index)]",
                    "\(SafeText.quoted(pattern, limit: 64)) must be letters, digits, '.', '_', '-', ':' and the wildcards '*' '?', optionally after one leading '!'"
                )
            }
            let wildcards = body.filter { $0 == "*" || $0 == "?" }.count
            guard wildcards <= Limits.wildcardsPerPattern else {
                throw fail("event_types[\(index)]", "has \(wildcards) wildcards; at most \(Limits.wildcardsPerPattern)")
            }
        }
        guard eventTypes.contains(where: { !$0.hasPrefix("!") }) else {
            throw fail("event_types", "has only exclusions ('!...'); add a pattern that includes events")
        }
        guard conditions.count <= Limits.conditions else {
            throw fail("conditions", "has \(conditions.count) conditions; at most \(Limits.conditions)")
        }
        for (index, condition) in conditions.enumerated() {
            try condition.validate(field: "conditions[\(index)]")
        }
        try target.validate(field: "target")
        if unredacted == true, !allProjects {
            throw fail(
                "unredacted",
                "only an all-projects subscription (an admin's) may take events unredacted; tenants receive them as OpenStack's APIs show them"
            )
        }
        guard Self.ttlRange.contains(messageTTL) else {
            throw fail("message_ttl", "\(messageTTL) is outside Zaqar's range of 60 to 1209600 seconds")
        }
        if let resourceID {
            guard !resourceID.isEmpty, resourceID.utf8.count <= 255 else {
                throw fail("resource_id", "must be 1 to 255 bytes")
            }
        }
        let encoded = (try? JSONEncoder().encode(self).count) ?? Int.max
        guard encoded <= Limits.encodedBytes else {
            throw fail("subscription", "is \(encoded) bytes encoded; at most \(Limits.encodedBytes)")
        }
    }
}

/// What a delivered message's body is (see `Subscription.format`).
public enum MessageFormat: String, Codable, Sendable, CaseIterable {
    /// `{"event": <the notification>, "herald": {...}}` (DESIGN.md).
    case herald
    /// A CloudEvents 1.0 event, structured JSON mode: `data` is the payload.
    case cloudevents
}

/// Where an event came from (see `Subscription.origin`).
public enum Origin: String, Codable, Sendable, CaseIterable {
    case notification
    case ceilometer
    case any

    /// Whether an event of this provenance is taken.
    public func takes(fromCeilometer: Bool) -> Bool {
        switch self {
        case .any: return true
        case .notification: return !fromCeilometer
        case .ceilometer: return fromCeilometer
        }
    }
}

/// A test on one field of the event.
public struct Condition: Codable, Sendable, Equatable, Hashable {
    public enum Operator: String, Codable, Sendable, CaseIterable {
        case eq, ne, lt, le, gt, ge, `in`, exists, prefix
    }

    /// `payload.state`, `payload.image_meta.os_distro`, `traits.project_id`, `publisher_id`, ...
    public var field: String
    public var op: Operator
    /// The operand: any JSON for eq/ne; a number, or a string (text or datetime) for lt/le/gt/ge;
    /// an array for `in`; a boolean (or nothing, meaning true) for `exists`; a string for `prefix`.
    public var value: JSONValue?

    public init(field: String, op: Operator, value: JSONValue? = nil) {
        self.field = field
        self.op = op
        self.value = value
    }

    public func validate(field name: String) throws {
        func fail(_ message: String) -> SubscriptionValidationError {
            SubscriptionValidationError(field: name, message: message)
        }
        guard field.utf8.count <= Subscription.Limits.fieldBytes else {
            throw fail("field is \(field.utf8.count) bytes; at most \(Subscription.Limits.fieldBytes)")
        }
        let segments = field.split(separator: ".", omittingEmptySubsequences: false)
        guard !field.isEmpty, segments.allSatisfy({ !$0.isEmpty }) else {
            throw fail(
                "field \(SafeText.quoted(field, limit: 64)) must be a dotted path such as payload.state or traits.project_id"
            )
        }
        guard segments.count <= Subscription.Limits.fieldSegments else {
            throw fail("field has \(segments.count) segments; at most \(Subscription.Limits.fieldSegments)")
        }
        if let value {
            let bytes = (try? JSONEncoder().encode(value).count) ?? Int.max
            guard bytes <= Subscription.Limits.operandBytes else {
                throw fail("value is \(bytes) bytes encoded; at most \(Subscription.Limits.operandBytes)")
            }
            if let long = value.longestString, long > Subscription.Limits.operandStringCharacters {
                throw fail(
                    "value has a string of \(long) characters; at most \(Subscription.Limits.operandStringCharacters)")
            }
        }
        switch op {
        case .eq, .ne:
            guard value != nil else { throw fail("\(op.rawValue) needs a value") }
        case .lt, .le, .gt, .ge:
            switch value {
            case .number, .string: break
            default:
                throw fail(
                    "\(op.rawValue) needs a number or a string (text or datetime), not \(value?.kind ?? "nothing")")
            }
        case .in:
            guard case .array(let items) = value, !items.isEmpty else {
                throw fail("in needs a non-empty array of values")
            }
            guard items.count <= Subscription.Limits.inItems else {
                throw fail("in has \(items.count) items; at most \(Subscription.Limits.inItems)")
            }
        case .exists:
            switch value {
            case nil, .bool: break
            case let other?: throw fail("exists takes true, false or nothing, not \(other.kind)")
            }
        case .prefix:
            guard case .string = value else { throw fail("prefix needs a string, not \(value?.kind ?? "nothing")") }
        }
    }
}

/// Where matching events go.
public struct Target: Codable, Sendable, Equatable, Hashable {
    /// The Zaqar queue name: letters, digits, `_` and `-`, up to 64.
    public var queue: String
    /// The Zaqar endpoint; `nil` means the node's configured one.
    public var zaqarURL: String?
    /// A pre-signed URL's credentials (from Zaqar's `/v2/queues/{q}/share`), if the subscriber gave one.
    public var signedURL: SignedURL?

    public init(queue: String, zaqarURL: String? = nil, signedURL: SignedURL? = nil) {
        self.queue = queue
        self.zaqarURL = zaqarURL
        self.signedURL = signedURL
    }

    enum CodingKeys: String, CodingKey {
        case queue
        case zaqarURL = "zaqar_url"
        case signedURL = "signed_url"
    }

    public func validate(field name: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        guard !queue.isEmpty, queue.utf8.count <= 64, queue.allSatisfy({ allowed.contains($0) }) else {
            throw SubscriptionValidationError(
                field: "\(name).queue",
                message:
                    "\(SafeText.quoted(queue, limit: 64)) must be 1 to 64 of letters, digits, '_' and '-' (Zaqar's rule)"
            )
        }
        if let zaqarURL {
            guard zaqarURL.utf8.count <= Subscription.Limits.zaqarURLBytes else {
                throw SubscriptionValidationError(
                    field: "\(name).zaqar_url",
                    message: "is \(zaqarURL.utf8.count) bytes; at most \(Subscription.Limits.zaqarURLBytes)")
            }
            guard let url = URL(string: zaqarURL), let scheme = url.scheme, ["http", "https"].contains(scheme),
                url.host != nil
            else {
                throw SubscriptionValidationError(
                    field: "\(name).zaqar_url",
                    message: "\(SafeText.quoted(zaqarURL, limit: 120)) is not an http(s) URL")
            }
        }
        try signedURL?.validate(field: "\(name).signed_url")
    }
}

/// The four headers of a Zaqar pre-signed URL, plus the project it was made in.
public struct SignedURL: Codable, Sendable, Equatable, Hashable {
    public var signature: String
    /// When it stops working, as Zaqar wrote it (`2026-11-25T16:37:41`).
    public var expires: String
    public var methods: [String]
    public var paths: [String]
    public var project: String

    public init(signature: String, expires: String, methods: [String], paths: [String], project: String) {
        self.signature = signature
        self.expires = expires
        self.methods = methods
        self.paths = paths
        self.project = project
    }

    /// Set (true) in an encoder's `userInfo` for what callers read: the signature is left out, as
    /// it lets whoever holds it post into the queue, which reading a subscription must not grant.
    public static let withoutSignature = CodingUserInfoKey(rawValue: "herald.signed-url.without-signature")

    enum CodingKeys: String, CodingKey {
        case signature, expires, methods, paths, project
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        if let key = Self.withoutSignature, encoder.userInfo[key] as? Bool == true {
            // Left out.
        } else {
            try container.encode(signature, forKey: .signature)
        }
        try container.encode(expires, forKey: .expires)
        try container.encode(methods, forKey: .methods)
        try container.encode(paths, forKey: .paths)
        try container.encode(project, forKey: .project)
    }

    public func validate(field name: String) throws {
        let limit = Subscription.Limits.signedURLFieldBytes
        for (key, text) in [("signature", signature), ("expires", expires), ("project", project)]
        where text.utf8.count > limit {
            throw SubscriptionValidationError(
                field: "\(name).\(key)", message: "is \(text.utf8.count) bytes; at most \(limit)")
        }
        for (key, list) in [("methods", methods), ("paths", paths)] {
            guard list.count <= Subscription.Limits.signedURLListItems else {
                throw SubscriptionValidationError(
                    field: "\(name).\(key)",
                    message: "has \(list.count) items; at most \(Subscription.Limits.signedURLListItems)")
            }
            if let long = list.first(where: { $0.utf8.count > 64 }) {
                throw SubscriptionValidationError(
                    field: "\(name).\(key)", message: "\(SafeText.quoted(long, limit: 20)) is longer than 64 bytes")
            }
        }
        // Each goes into a request header (lists joined with commas): a line end, NUL or other
        // control character would only make every delivery fail, so it is refused here.
        func headerSafe(_ text: String) -> Bool { !text.utf8.contains { $0 < 0x20 || $0 == 0x7F } }
        for (key, text) in [("signature", signature), ("expires", expires), ("project", project)]
        where !headerSafe(text) {
            throw SubscriptionValidationError(
                field: "\(name).\(key)", message: "\(SafeText.quoted(text, limit: 20)) holds a control character")
        }
        for (key, list) in [("methods", methods), ("paths", paths)] {
            if let bad = list.first(where: { !headerSafe($0) || $0.utf8.contains(UInt8(ascii: ",")) || $0.isEmpty }) {
                throw SubscriptionValidationError(
                    field: "\(name).\(key)",
                    message: "\(SafeText.quoted(bad, limit: 20)) is empty or holds a comma or a control character")
            }
        }
        guard !signature.isEmpty else {
            throw SubscriptionValidationError(field: "\(name).signature", message: "is empty")
        }
        guard !expires.isEmpty else { throw SubscriptionValidationError(field: "\(name).expires", message: "is empty") }
        guard methods.contains("POST") else {
            throw SubscriptionValidationError(
                field: "\(name).methods",
                message:
                    "\(SafeText.quoted(methods.joined(separator: ","), limit: 40)) does not include POST, which delivery needs"
            )
        }
        guard !paths.isEmpty else { throw SubscriptionValidationError(field: "\(name).paths", message: "is empty") }
        guard !project.isEmpty else { throw SubscriptionValidationError(field: "\(name).project", message: "is empty") }
    }
}

/// A subscription field with a bad value; `field` is its JSON path (`conditions[2]`).
public struct SubscriptionValidationError: Error, CustomStringConvertible, Sendable, Equatable {
    public var field: String
    public var message: String

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }

    public var description: String { "\(field): \(message)" }
}
