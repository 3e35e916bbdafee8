import Foundation
import HeraldModel
import Synchronization

/// One destination: a queue of a project on a Zaqar endpoint, with the credentials
/// to post there. Each distinct target is one lane of the batcher.
public struct ZaqarTarget: Hashable, Sendable, CustomStringConvertible {
    public enum Credentials: Hashable, Sendable {
        /// A Zaqar without Keystone (development): `X-Project-ID` is taken as given.
        case noAuth
        /// A Keystone trust from the subscriber to Herald's service user: each request carries a
        /// trust-scoped token from the client's `ZaqarTokenSource` (Zaqar takes the project from it).
        case trust(String)
        /// The four headers of a pre-signed URL from `/v2/queues/{queue}/share`; past its expiry
        /// the trust, when there is one, carries the request instead. Boxed (`indirect`): few
        /// subscriptions have one, and every target would otherwise carry its size inline.
        indirect case signedURL(SignedURL, trust: String?)
    }

    /// `http://zaqar.example:8888`, no trailing slash.
    public var baseURL: String
    public var project: String
    public var queue: String
    public var credentials: Credentials

    public init(baseURL: String, project: String, queue: String, credentials: Credentials = .noAuth) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.project = project
        self.queue = queue
        self.credentials = credentials
    }

    public var description: String { "\(baseURL) \(project)/\(queue)" }

    /// When a signed URL's credentials stop working, if this target uses one.
    public var signedURLExpiry: Date? {
        guard case .signedURL(let signed, _) = credentials else { return nil }
        return ZaqarDates.parse(signed.expires)
    }

    /// The trust that can post here when nothing else can.
    public var trust: String? {
        switch credentials {
        case .noAuth: return nil
        case .trust(let trust): return trust
        case .signedURL(_, let trust): return trust
        }
    }
}

/// Zaqar writes expiries as `2026-11-25T16:37:41` (UTC, sometimes with fractions or a zone);
/// Keystone as `2026-11-24T23:05:21.000000Z`.
public enum ZaqarDates {
    /// Built once (a signed URL's expiry is read for every request to its queue), used under a lock.
    private static let parsers = Mutex(
        [
            "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS", "yyyy-MM-dd'T'HH:mm:ssXXXXX",
            "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXXXX",
        ].map(formatter))
    private static let writer = Mutex(formatter("yyyy-MM-dd'T'HH:mm:ss"))

    private static func formatter(_ format: String) -> DateFormatter {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = format
        return formatter
    }

    public static func parse(_ text: String) -> Date? {
        parsers.withLock { parsers in parsers.lazy.compactMap { $0.date(from: text) }.first }
    }

    /// The form Zaqar takes for a new pre-signed URL's `expires` (UTC, whole seconds).
    public static func format(_ date: Date) -> String {
        writer.withLock { $0.string(from: date) }
    }
}

/// One message for one target, its JSON encoded once.
public struct ZaqarOutgoingMessage: Sendable {
    public var target: ZaqarTarget
    /// `{"ttl": ..., "body": {...}}`, as it goes into the request's `messages` array.
    public var body: [UInt8]
    public var subscriptionID: String
    public var eventID: String
    /// For an admin's all-projects subscription: every project's events, so a dead letter of it
    /// is kept apart from the admin project's own (`DeadLetter.allProjects`).
    public var allProjects: Bool

    public init(target: ZaqarTarget, body: [UInt8], subscriptionID: String, eventID: String, allProjects: Bool = false)
    {
        self.target = target
        self.body = body
        self.subscriptionID = subscriptionID
        self.eventID = eventID
        self.allProjects = allProjects
    }
}

/// Builds the delivered message of DESIGN.md by copying the event's JSON bytes in
/// place, without parsing or re-encoding it:
/// `{"ttl": T, "body": {"event": <event>, "herald": {"subscription_id", "event_id", "partition", "epoch",
/// "project", "actor_project", "resource_id", "redacted"}}}` (the last four when known; `redacted`
/// lists the rule paths that removed or cut something from the event).
public enum ZaqarMessageEncoding {
    /// - Parameters:
    ///   - event: the event as JSON (the notification without `_context_*` keys).
    ///   - project: the resource's owner, as the event definitions found it.
    ///   - actorProject: the project that acted.
    ///   - resourceID: the resource the event is about.
    ///   - redacted: what redaction removed from `event` (rule paths), if anything.
    public static func message(
        event: [UInt8], ttl: Int, subscriptionID: String, eventID: String, partition: Int, epoch: UInt64,
        project: String? = nil, actorProject: String? = nil, resourceID: String? = nil, redacted: [String] = []
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(event.count + 160 + subscriptionID.utf8.count + eventID.utf8.count)
        out += Array("{\"ttl\":\(ttl),\"body\":{\"event\":".utf8)
        out += event
        out += Array(",\"herald\":{\"subscription_id\":".utf8)
        appendString(subscriptionID, to: &out)
        out += Array(",\"event_id\":".utf8)
        appendString(eventID, to: &out)
        out += Array(",\"partition\":\(partition),\"epoch\":\(epoch)".utf8)
        for (key, value) in [("project", project), ("actor_project", actorProject), ("resource_id", resourceID)] {
            guard let value else { continue }
            out += Array(",\"\(key)\":".utf8)
            appendString(value, to: &out)
        }
        if !redacted.isEmpty {
            out += Array(",\"redacted\":[".utf8)
            for (index, path) in redacted.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                appendString(path, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        }
        out += Array("}}}".utf8)
        return out
    }

    /// The attributes of a CloudEvents 1.0 event besides `data`, from the notification.
    public struct CloudEventAttributes: Sendable, Equatable {
        public var id: String
        /// A URI reference: `/openstack/<service>`.
        public var source: String
        public var type: String
        /// RFC 3339, or nil when the notification's timestamp is missing or not a timestamp.
        public var time: String?
        public var subject: String?

        public init(id: String, source: String, type: String, time: String?, subject: String?) {
            self.id = id
            self.source = source
            self.type = type
            self.time = time
            self.subject = subject
        }

        /// From a notification: `source` is `/openstack/` and the service that published it (its
        /// `publisher_id` up to the first character that is not a letter, digit, `-` or `_`:
        /// `compute` of `compute.host1`, `nova-compute` of nova's `nova-compute:cmp-3.example.org`,
        /// so the host never shows; else the event type's first word); `time` its `timestamp` (or a
        /// Ceilometer event's `generated`), which oslo writes as `2024-05-01 12:00:00.123456` in UTC.
        public static func of(
            eventType: String, messageID: String, publisherID: String?, timestamp: String?, resourceID: String?
        ) -> CloudEventAttributes {
            func service(_ text: String) -> String? {
                let name = text.utf8.prefix { byte in
                    (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
                        || byte == 0x2D || byte == 0x5F
                }.prefix(64)
                return name.isEmpty ? nil : String(decoding: name, as: UTF8.self)
            }
            let name = publisherID.flatMap(service) ?? service(eventType) ?? "unknown"
            return CloudEventAttributes(
                id: messageID, source: "/openstack/" + name, type: eventType, time: timestamp.flatMap(rfc3339),
                subject: resourceID)
        }

        /// `2024-05-01 12:00:00.123456` (oslo, UTC), `2024-05-01T12:00:00Z` or with an offset, as
        /// RFC 3339; nil for anything else.
        public static func rfc3339(_ text: String) -> String? {
            let bytes = Array(text.utf8)
            guard bytes.count >= 19, bytes.count <= 40 else { return nil }
            func digits(_ range: Range<Int>) -> Bool { range.allSatisfy { (48...57).contains(bytes[$0]) } }
            guard digits(0..<4), bytes[4] == 45, digits(5..<7), bytes[7] == 45, digits(8..<10),
                bytes[10] == 32 || bytes[10] == 84, digits(11..<13), bytes[13] == 58, digits(14..<16), bytes[16] == 58,
                digits(17..<19)
            else { return nil }
            // A date and time that exist (a leap second allowed), or none: strict readers refuse the whole event otherwise.
            func number(_ range: Range<Int>) -> Int { range.reduce(0) { $0 * 10 + Int(bytes[$1] - 48) } }
            guard (1...12).contains(number(5..<7)), (1...31).contains(number(8..<10)), number(11..<13) <= 23,
                number(14..<16) <= 59, number(17..<19) <= 60
            else { return nil }
            var index = 19
            if index < bytes.count, bytes[index] == 46 {
                index += 1
                let start = index
                while index < bytes.count, (48...57).contains(bytes[index]) { index += 1 }
                guard index > start, index - start <= 9 else { return nil }
            }
            var zone = "Z"
            if index < bytes.count {
                let rest = Array(bytes[index...])
                if rest == [90] {
                    zone = ""
                } else if rest.count == 6, rest[0] == 43 || rest[0] == 45, (48...57).contains(rest[1]),
                    (48...57).contains(rest[2]), rest[3] == 58,
                    (48...57).contains(rest[4]), (48...57).contains(rest[5]),
                    Int(rest[1] - 48) * 10 + Int(rest[2] - 48) <= 23,
                    Int(rest[4] - 48) * 10 + Int(rest[5] - 48) <= 59
                {
                    zone = ""
                } else {
                    return nil
                }
            }
            var out = bytes
            out[10] = 84
            return String(decoding: out, as: UTF8.self) + zone
        }
    }

    /// A message whose body is a CloudEvents 1.0 event in structured JSON mode:
    /// `{"ttl": T, "body": {"specversion": "1.0", "id", "source", "type", "time", "subject",
    /// "datacontenttype": "application/json", "data": <data>, "heraldsubscription",
    /// "heraldpartition", "heraldepoch", "heraldproject", "heraldactorproject", "heraldredacted"}}`.
    /// Herald's fields are extension attributes (lowercase letters, at most 20 characters; an
    /// epoch beyond CloudEvents' 32-bit Integer goes as a string; `heraldredacted` is the rule
    /// paths joined by commas, since attributes cannot be arrays).
    /// - Parameter data: JSON, copied as it is (the payload, redacted as the subscription takes it).
    public static func cloudEvent(
        data: [UInt8], attributes: CloudEventAttributes, ttl: Int, subscriptionID: String, partition: Int,
        epoch: UInt64,
        project: String? = nil, actorProject: String? = nil, redacted: [String] = []
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 400 + attributes.type.utf8.count + subscriptionID.utf8.count)
        out += Array("{\"ttl\":\(ttl),\"body\":{\"specversion\":\"1.0\",\"id\":".utf8)
        appendString(attributes.id, to: &out)
        for (key, value) in [
            ("source", attributes.source), ("type", attributes.type), ("time", attributes.time),
            ("subject", attributes.subject),
        ] {
            guard let value else { continue }
            out += Array(",\"\(key)\":".utf8)
            appendString(value, to: &out)
        }
        out += Array(",\"datacontenttype\":\"application/json\",\"data\":".utf8)
        out += data
        out += Array(",\"heraldsubscription\":".utf8)
        appendString(subscriptionID, to: &out)
        out += Array(",\"heraldpartition\":\(partition)".utf8)
        out += Array((epoch <= UInt64(Int32.max) ? ",\"heraldepoch\":\(epoch)" : ",\"heraldepoch\":\"\(epoch)\"").utf8)
        for (key, value) in [
            ("heraldproject", project), ("heraldactorproject", actorProject),
            ("heraldredacted", redacted.isEmpty ? nil : redacted.joined(separator: ",")),
        ] {
            guard let value else { continue }
            out += Array(",\"\(key)\":".utf8)
            appendString(value, to: &out)
        }
        out += Array("}}".utf8)
        return out
    }

    /// Appends `text` as a JSON string literal.
    static func appendString(_ text: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0..<0x20: out += Array(String(format: "\\u%04x", byte).utf8)
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Bytes a request adds around its messages: `{"messages":[` ... `]}`.
    static let envelopeBytes = 15

    /// The body of `POST /v2/queues/{queue}/messages`: `{"messages":[...]}` around messages
    /// already encoded.
    public static func requestBody(_ messages: [[UInt8]]) -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(messages.reduce(envelopeBytes) { $0 + $1.count + 1 })
        body += "{\"messages\":[".utf8
        for (index, message) in messages.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += message
        }
        body += "]}".utf8
        return body
    }
}

extension Subscription {
    /// Where this subscription's messages go, with the credentials to post them.
    public func zaqarTarget(defaultURL: String) -> ZaqarTarget {
        let credentials: ZaqarTarget.Credentials =
            if let signed = target.signedURL { .signedURL(signed, trust: trustID) } else if let trustID {
                .trust(trustID)
            } else { .noAuth }
        return ZaqarTarget(
            baseURL: target.zaqarURL ?? defaultURL, project: project, queue: target.queue, credentials: credentials)
    }
}
