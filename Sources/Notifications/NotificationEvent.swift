import Foundation
import HeraldModel
import Synchronization

/// `partition = FNV-1a-64(event_type as UTF-8) mod P`: documented, stable, and
/// tested against the FNV reference vectors, so every node and every version
/// agrees where an event type lives.
public enum PartitionHash {
    public static func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }

    /// The partition of a key (an event's `partitionKey`: its family and resource id, or its type).
    public static func partition(of key: String, count: Int) -> Int {
        Int(fnv1a64(key.utf8) % UInt64(max(1, count)))
    }
}

/// One event as Herald sees it: from an oslo.messaging notification, or one element
/// of a Ceilometer event list.
public struct NotificationEvent: Sendable, Equatable {
    public var eventType: String
    /// The idempotency key delivered as `event_id`.
    public var messageID: String
    /// The project it belongs to: the owner of the resource it is about, as the event definitions
    /// find it (`EventDefinitions.attribute`), or as the decoder guessed it before that (see
    /// `NotificationDecoder` for the order).
    public var project: String?
    /// The project that acted (the request context's project, or what the definitions name, such
    /// as nova's `action_initiator_project`); nil when unknown.
    public var actorProject: String?
    /// The context's project as the notification carried it (`_context_project_id`, else
    /// `_context_tenant`): kept aside because `_context_*` keys never leave Herald.
    public var contextProject: String?
    /// The id of the resource the event is about, when the definitions name where it is.
    public var resourceID: String?
    /// Built from one element of a Ceilometer event list (Ceilometer's `notifier://` publisher),
    /// not from the service's own notification. The two share one message id.
    public var fromCeilometer = false
    /// The resource family (`compute.instance` for `compute.instance.power_off.end`), from the
    /// definitions; nil when they give none (the event type then stands for it).
    public var family: String?
    /// The event as delivered, as JSON bytes: the oslo message without any `_context_*` key, or
    /// the Ceilometer event. Copied from the notification, never re-encoded on the fast path.
    public let json: [UInt8]
    /// Ceilometer traits by name (empty for oslo notifications).
    public var traits: [String: JSONValue]
    private let parsed: ParsedJSON

    /// What decides the event's partition: its family and resource id when the definitions
    /// give both (so one resource's events share a partition and keep their order), else the
    /// event type.
    public var partitionKey: String {
        if let resourceID, let family { return family + "/" + resourceID }
        return eventType
    }

    /// An event from its JSON bytes; `body` is parsed from them only when something asks
    /// (a condition on a payload field).
    public init(
        eventType: String, messageID: String, project: String?, json: [UInt8], traits: [String: JSONValue] = [:]
    ) {
        self.eventType = eventType
        self.messageID = messageID
        self.project = project
        self.json = json
        self.traits = traits
        parsed = ParsedJSON(json)
    }

    /// An event from a parsed value (encoded once, keys sorted).
    public init(
        eventType: String, messageID: String, project: String?, body: JSONValue, traits: [String: JSONValue] = [:]
    ) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        self.init(
            eventType: eventType, messageID: messageID, project: project,
            json: Array((try? encoder.encode(body)) ?? Data("{}".utf8)), traits: traits)
        parsed.store(body)
    }

    /// The event as a JSON value, parsed from `json` on first use (`null` if it were not JSON).
    public var body: JSONValue { parsed.value }

    public static func == (lhs: NotificationEvent, rhs: NotificationEvent) -> Bool {
        lhs.eventType == rhs.eventType && lhs.messageID == rhs.messageID && lhs.project == rhs.project
            && lhs.traits == rhs.traits && lhs.body == rhs.body
            && lhs.contextProject == rhs.contextProject
    }

    /// The value at a dotted path: `payload.state`, `payload.image_meta.os_distro`,
    /// `payload.fixed_ips.0.address` (an index into an array), `traits.memory_mb`, `publisher_id`.
    public func value(at path: String) -> JSONValue? {
        value(atPath: path.split(separator: ".").map(String.init))
    }

    /// The value at a path made once for many lookups (a compiled condition's field), looked up
    /// anew each call: the caller keeps what it needs (matching keeps it for one event).
    public func value(at path: LookupPath) -> JSONValue? {
        fields.value(at: path)
    }

    /// What `value(at:)` reads, apart from the rest of the event: kept for one event's lookups
    /// without copying the whole event (its strings, ids and projects).
    public var fields: Fields { Fields(traits: traits, parsed: parsed) }

    /// An event's traits and JSON, for lookups by `LookupPath`.
    public struct Fields: Sendable {
        let traits: [String: JSONValue]
        let parsed: ParsedJSON

        /// The value at `path` (see `NotificationEvent.value(at:)`).
        public func value(at path: LookupPath) -> JSONValue? {
            // No segments is no field (an empty pointer would be the whole document).
            if path.segments.isEmpty { return nil }
            if path.isTrait { return traits[path.traitName] }
            return parsed.lookup(path)
        }
    }

    /// The first of `paths` whose value is a string of 1 to `maxBytes` bytes (the event
    /// definitions' rule for an id): in one pass over the JSON when it was not parsed whole.
    public func firstString(at paths: LookupPathList, maxBytes: Int) -> String? {
        func fits(_ text: String) -> Bool { !text.isEmpty && text.utf8.count <= maxBytes }
        if paths.scannable, !parsed.isWhole {
            let found = NotificationScanner.firstString(
                json, joinedPointers: paths.joinedPointers, lengths: paths.pointerLengths, maxBytes: maxBytes)
            guard let found else { return nil }
            // Measured again as Swift has it: only a byte sequence Swift repairs could change its
            // length, and then the paths are tried one at a time below, as they were before.
            if fits(found) { return found }
        }
        for path in paths.paths {
            if case .string(let text)? = value(at: path), fits(text) { return text }
        }
        return nil
    }

    /// `value(at:)` with the path already split at its dots.
    public func value(atPath segments: [String]) -> JSONValue? {
        guard let first = segments.first else { return nil }
        if first == "traits", segments.count >= 2 {
            return traits[segments.dropFirst().joined(separator: ".")]
        }
        return parsed.value(at: segments)
    }
}

/// A field's dotted path made once for many lookups (a compiled condition's field): its
/// segments and its RFC 6901 JSON pointer, which is what simdjson looks up.
public final class LookupPath: Sendable {
    public let segments: [String]
    public let pointer: String
    /// `traits.<name>`: a Ceilometer trait, by its name (dots and all).
    let isTrait: Bool
    let traitName: String

    public init(_ segments: [String]) {
        self.segments = segments
        pointer = NotificationScanner.jsonPointer(segments)
        isTrait = segments.first == "traits" && segments.count >= 2
        traitName = isTrait ? segments.dropFirst().joined(separator: ".") : ""
    }

    /// Two paths to the same field (made apart, or the same one).
    public func same(as other: LookupPath) -> Bool {
        self === other || pointer == other.pointer
    }
}

/// Paths tried in order for one answer (`NotificationEvent.firstString`), with their pointers
/// laid out once for simdjson.
public struct LookupPathList: Sendable {
    public let paths: [LookupPath]
    let joinedPointers: [UInt8]
    let pointerLengths: [Int]
    /// More than one, none a trait and none empty: looked up in one pass over the bytes.
    let scannable: Bool

    public init(_ paths: [LookupPath]) {
        self.paths = paths
        joinedPointers = paths.flatMap { Array($0.pointer.utf8) }
        pointerLengths = paths.map { $0.pointer.utf8.count }
        scannable = paths.count > 1 && !paths.contains { $0.isTrait || $0.segments.isEmpty }
    }
}

/// The event's JSON, read on demand: a condition's field is looked up in the bytes with
/// simdjson (`NotificationScanner.lookup`) and only that value is decoded, once per path;
/// the whole tree is decoded only when something asks for `body`.
final class ParsedJSON: Sendable {
    private struct State {
        var whole: JSONValue?
        var fields: [[String]: JSONValue?] = [:]
    }

    private let json: [UInt8]
    private let state = Mutex(State())

    init(_ json: [UInt8]) {
        self.json = json
    }

    /// The whole tree was parsed (or given): lookups walk it instead of the bytes.
    var isWhole: Bool { state.withLock { $0.whole != nil } }

    func store(_ value: JSONValue) {
        state.withLock { $0.whole = value }
    }

    var value: JSONValue {
        if let value = state.withLock({ $0.whole }) { return value }
        let value = (try? JSONDecoder().decode(JSONValue.self, from: Data(json))) ?? .null
        state.withLock { $0.whole = value }
        return value
    }

    /// The value at a path: from the whole tree when it was parsed, else from the bytes (not
    /// kept: `LookupPath` callers keep what they need).
    func lookup(_ path: LookupPath) -> JSONValue? {
        if let whole = state.withLock({ $0.whole }) { return Self.walk(whole, path.segments) }
        return NotificationScanner.lookup(json, pointer: path.pointer)
    }

    func value(at segments: [String]) -> JSONValue? {
        let cached = state.withLock { state -> JSONValue?? in
            if let whole = state.whole { return .some(Self.walk(whole, segments)) }
            return state.fields[segments]
        }
        if let cached { return cached }
        let found = NotificationScanner.lookup(json, path: segments)
        state.withLock { $0.fields[segments] = .some(found) }
        return found
    }

    static func walk(_ value: JSONValue, _ segments: [String]) -> JSONValue? {
        var current = value
        for segment in segments {
            switch current {
            case .object(let object):
                guard let next = object[segment] else { return nil }
                current = next
            case .array(let items):
                // As a JSON pointer reads it: a decimal index.
                guard let index = Int(segment), index >= 0, index < items.count, String(index) == segment else {
                    return nil
                }
                current = items[index]
            default:
                return nil
            }
        }
        return current
    }
}
