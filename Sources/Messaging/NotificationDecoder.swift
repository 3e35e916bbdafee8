import Foundation
import HeraldModel

/// Why a notification could not be used; it is dead-lettered with this.
public struct NotificationDecodingError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public var description: String { message }

    public init(_ message: String) {
        self.message = message
    }
}

/// Decodes what OpenStack services and Ceilometer publish.
///
/// - oslo.messaging driver `messaging`: the notification is the JSON body itself.
/// - driver `messagingv2`: `{"oslo.version": "2.0", "oslo.message": "<the notification as a JSON string>"}`.
/// - Ceilometer's `notifier://` publisher: a notification whose `event_type` is `event`
///   and whose payload is a list of events `{message_id, event_type, generated, traits:
///   [[name, dtype, value]], raw, message_signature}`; each element is an event of its own.
///
/// The project is, in this order: the Ceilometer traits `project_id` then `tenant_id`;
/// the payload's `project_id` then `tenant_id`; `_context_project_id` (then `_context_tenant`).
/// `_context_*` keys never leave: they carry user names, roles and addresses.
public enum NotificationDecoder {
    /// Default largest body accepted: 1 MiB.
    public static let defaultMaxBytes = 1 << 20

    /// - Throws: `NotificationDecodingError` naming what is wrong (size, UTF-8, JSON, missing or mistyped field).
    public static func decode(_ body: [UInt8], maxBytes: Int = defaultMaxBytes) throws -> [NotificationEvent] {
        guard body.count <= maxBytes else {
            throw NotificationDecodingError("the notification is \(body.count) bytes; at most \(maxBytes) are accepted")
        }
        if let event = NotificationScanner.scan(body) { return [event] }
        return try decodeSlowly(body)
    }

    /// The general path: Foundation's JSONDecoder over the whole notification. Ceilometer's
    /// event lists and every malformed notification (for its exact error) come this way.
    static func decodeSlowly(_ body: [UInt8]) throws -> [NotificationEvent] {
        guard String(validating: body, as: UTF8.self) != nil else {
            throw NotificationDecodingError("the notification is not valid UTF-8")
        }
        var message = try parse(body, what: "the notification")
        if case .object(let envelope) = message, let version = envelope["oslo.version"] {
            guard case .string(let inner) = envelope["oslo.message"] else {
                throw NotificationDecodingError("oslo.version \(version) envelope without an 'oslo.message' string")
            }
            message = try parse(Array(inner.utf8), what: "oslo.message")
        }
        guard case .object(var fields) = message else {
            throw NotificationDecodingError("the notification is a JSON \(message.kind), not an object")
        }
        guard case .string(let eventType) = fields["event_type"], !eventType.isEmpty else {
            throw NotificationDecodingError(fields["event_type"] == nil ? "the notification has no event_type" : "event_type is not a non-empty string")
        }
        let contextProject = fields["_context_project_id"]?.nonEmptyString ?? fields["_context_tenant"]?.nonEmptyString
        for key in fields.keys where key.hasPrefix("_context_") { fields[key] = nil }

        if eventType == "event", case .array(let events)? = fields["payload"] {
            return try events.enumerated().map { index, element in try ceilometerEvent(element, index: index, contextProject: contextProject) }
        }
        guard case .string(let messageID) = fields["message_id"], !messageID.isEmpty else {
            throw NotificationDecodingError("the notification '\(eventType)' has no message_id")
        }
        var project: String?
        if case .object(let payload)? = fields["payload"] {
            project = payload["project_id"]?.nonEmptyString ?? payload["tenant_id"]?.nonEmptyString
        }
        return [NotificationEvent(eventType: eventType, messageID: messageID, project: project ?? contextProject, body: .object(fields))]
    }

    private static func ceilometerEvent(_ element: JSONValue, index: Int, contextProject: String?) throws -> NotificationEvent {
        guard case .object(let event) = element else {
            throw NotificationDecodingError("Ceilometer event \(index) is a JSON \(element.kind), not an object")
        }
        guard case .string(let eventType) = event["event_type"], !eventType.isEmpty else {
            throw NotificationDecodingError("Ceilometer event \(index) has no event_type")
        }
        guard case .string(let messageID) = event["message_id"], !messageID.isEmpty else {
            throw NotificationDecodingError("Ceilometer event \(index) ('\(eventType)') has no message_id")
        }
        var traits: [String: JSONValue] = [:]
        if case .array(let list)? = event["traits"] {
            for trait in list {
                guard case .array(let parts) = trait, parts.count == 3, case .string(let name) = parts[0] else {
                    throw NotificationDecodingError("Ceilometer event \(index) ('\(eventType)') has a trait that is not [name, dtype, value]")
                }
                traits[name] = parts[2]
            }
        }
        let project = traits["project_id"]?.nonEmptyString ?? traits["tenant_id"]?.nonEmptyString ?? contextProject
        return NotificationEvent(eventType: eventType, messageID: messageID, project: project, body: .object(event), traits: traits)
    }

    private static func parse(_ bytes: [UInt8], what: String) throws -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            throw NotificationDecodingError("\(what) is not JSON (\(String(describing: error).prefix(200)))")
        }
    }

    /// The fast path alone (nil where it hands over to the general path), for tests.
    public static func decodeFastlyForTesting(_ body: [UInt8]) -> NotificationEvent? {
        NotificationScanner.scan(body)
    }

    /// The general path alone, for tests that hold the fast path against it.
    public static func decodeSlowlyForTesting(_ body: [UInt8]) throws -> [NotificationEvent] {
        try decodeSlowly(body)
    }

    /// The event as JSON bytes, for the delivered message: the bytes it came with.
    public static func encode(_ event: NotificationEvent) -> [UInt8] {
        event.json
    }
}

extension JSONValue {
    var nonEmptyString: String? {
        if case .string(let text) = self, !text.isEmpty { return text }
        return nil
    }
}
