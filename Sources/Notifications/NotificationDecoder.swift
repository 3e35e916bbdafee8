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
/// the payload's `project_id` then `tenant_id`; `_context_project_id` (then `_context_tenant`),
/// each only when it is a non-empty string. A trait named twice: the last one counts.
/// `_context_*` keys (every key whose UTF-8 begins with `_context_`) never leave: they carry user
/// names, roles and addresses.
///
/// Two paths decode, and they follow one set of rules: the fast path (`NotificationScanner`,
/// simdjson) returns an event only where the general path (Foundation) returns the same one, and
/// hands everything else over to it, so `decode` answers by these rules either way. What breaks
/// one is refused with a `NotificationDecodingError` naming it, and dead-lettered with that reason:
///
/// - JSON as RFC 8259 has it, in UTF-8, and nothing else: no byte order mark and no other encoding
///   (Foundation guesses UTF-16 and UTF-32 from NUL bytes), no `NaN` or `Infinity`, no trailing
///   comma (Foundation's decoder takes one), no control character unescaped in a string, no
///   invalid escape, no lone UTF-16 surrogate in a `\u` escape, and nothing but whitespace after
///   the value. Anywhere in the document, also in members Herald never reads: the fast path
///   delivers them byte for byte.
/// - A key twice in one object, at any depth, is refused: JSON parsers differ on which one counts
///   (Foundation's decoder takes the first, the fast path took the last, as many parsers do), so
///   the event Herald matched and the one its subscriber reads could differ. Keys are the same when Swift's strings are
///   (canonical equivalence: `"\u00e9"` and `"e\u0301"` are one key).
/// - At most `NotificationScanner.maxDepth` (128) arrays and objects nested in one another, the
///   outermost included, in each document (the envelope and its `oslo.message` apart):
///   notifications nest a few levels, and Foundation's decoding of `JSONValue` recurses.
/// - A number must fit in a double: one beyond the largest double (`1e400`), or nonzero but
///   nearer zero than the smallest (`1e-400`), is refused. Other numbers are read as the
///   nearest double (an integer past 2^53 loses digits in `value(at:)`, not in the delivered bytes
///   of the fast path).
/// - An object with `oslo.version` or `oslo.message` is an envelope and needs both, `oslo.message`
///   a string holding the notification; its other members are ignored. Inside, `oslo.*` keys
///   are ordinary members.
/// - The notification is an object with a non-empty string `event_type`; unless it is a
///   Ceilometer list, a non-empty string `message_id`.
public enum NotificationDecoder {
    /// Default largest body accepted: 1 MiB.
    public static let defaultMaxBytes = 1 << 20

    /// - Throws: `NotificationDecodingError` naming what is wrong (size, UTF-8, JSON, missing or mistyped field).
    public static func decode(_ body: [UInt8], maxBytes: Int = defaultMaxBytes) throws -> [NotificationEvent] {
        guard body.count <= maxBytes else {
            throw NotificationDecodingError("the notification is \(body.count) bytes; at most \(maxBytes) are accepted")
        }
        let events = try NotificationScanner.scan(body).map { [$0] } ?? decodeSlowly(body)
        // Before anything caches or splits them (definitions, the index, AMQP headers): an event
        // type or id longer than an AMQP short string is refused whole.
        for event in events {
            for (field, value) in [("event_type", event.eventType), ("message_id", event.messageID)]
            where value.utf8.count > maxIDBytes {
                throw NotificationDecodingError(
                    "\(field) is \(value.utf8.count) bytes; at most \(maxIDBytes) fit an AMQP header")
            }
        }
        return events
    }

    /// The longest event type or message id accepted (an AMQP short string).
    public static let maxIDBytes = 255

    /// The general path: Foundation's JSONDecoder over the whole notification. Ceilometer's
    /// event lists and every malformed notification (for its exact error) come this way.
    static func decodeSlowly(_ body: [UInt8]) throws -> [NotificationEvent] {
        guard String(validating: body, as: UTF8.self) != nil else {
            throw NotificationDecodingError("the notification is not valid UTF-8")
        }
        var message = try parse(body, what: "the notification")
        if case .object(let envelope) = message, envelope["oslo.version"] != nil || envelope["oslo.message"] != nil {
            guard let version = envelope["oslo.version"] else {
                throw NotificationDecodingError(
                    "an envelope needs both 'oslo.version' and 'oslo.message'; this one has no 'oslo.version'")
            }
            guard case .string(let inner) = envelope["oslo.message"] else {
                throw NotificationDecodingError("oslo.version \(version) envelope without an 'oslo.message' string")
            }
            message = try parse(Array(inner.utf8), what: "oslo.message")
        }
        guard case .object(var fields) = message else {
            throw NotificationDecodingError("the notification is a JSON \(message.kind), not an object")
        }
        guard case .string(let eventType) = fields["event_type"], !eventType.isEmpty else {
            throw NotificationDecodingError(
                fields["event_type"] == nil
                    ? "the notification has no event_type" : "event_type is not a non-empty string")
        }
        let contextProject = fields["_context_project_id"]?.nonEmptyString ?? fields["_context_tenant"]?.nonEmptyString
        // By bytes, as the fast path does: `hasPrefix` compares characters, and a combining mark
        // after `_context_` would make the key another one there.
        for key in fields.keys where key.utf8.starts(with: "_context_".utf8) { fields[key] = nil }

        if eventType.utf8.elementsEqual("event".utf8), case .array(let events)? = fields["payload"] {
            return try events.enumerated().map { index, element in
                try ceilometerEvent(element, index: index, contextProject: contextProject)
            }
        }
        guard case .string(let messageID) = fields["message_id"], !messageID.isEmpty else {
            throw NotificationDecodingError("the notification '\(eventType)' has no message_id")
        }
        var project: String?
        if case .object(let payload)? = fields["payload"] {
            project = payload["project_id"]?.nonEmptyString ?? payload["tenant_id"]?.nonEmptyString
        }
        var event = NotificationEvent(
            eventType: eventType, messageID: messageID, project: project ?? contextProject, body: .object(fields))
        event.contextProject = contextProject
        return [event]
    }

    private static func ceilometerEvent(
        _ element: JSONValue, index: Int, contextProject: String?
    ) throws -> NotificationEvent {
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
                    throw NotificationDecodingError(
                        "Ceilometer event \(index) ('\(eventType)') has a trait that is not [name, dtype, value]")
                }
                traits[name] = parts[2]
            }
        }
        let project = traits["project_id"]?.nonEmptyString ?? traits["tenant_id"]?.nonEmptyString ?? contextProject
        var decoded = NotificationEvent(
            eventType: eventType, messageID: messageID, project: project, body: .object(event), traits: traits)
        decoded.contextProject = contextProject
        decoded.fromCeilometer = true
        return decoded
    }

    /// `bytes` (valid UTF-8) as a JSON value: checked by `StrictJSON` first, which also bounds
    /// the depth Foundation's recursive decoding reaches.
    private static func parse(_ bytes: [UInt8], what: String) throws -> JSONValue {
        try StrictJSON.check(bytes, what: what)
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

    /// Events of one Ceilometer list as a list of their own (`event_type` "event", the list's
    /// `_context_project_id`, the events as `payload`), which `decode` reads back as the same
    /// events: the ingest publishes each partition only its part of a list that spans several.
    /// nil when the part would be longer than `maxBytes` (an event re-encoded can be longer than
    /// it came: `1e300` becomes `1e+300`).
    public static func ceilometerList(_ events: [NotificationEvent], maxBytes: Int = defaultMaxBytes) -> [UInt8]? {
        var body = Array(#"{"event_type":"event","#.utf8)
        if let project = events.first?.contextProject {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .withoutEscapingSlashes
            guard let quoted = try? encoder.encode(project) else { return nil }
            body += #""_context_project_id":"#.utf8
            body += quoted
            body.append(UInt8(ascii: ","))
        }
        body += #""payload":["#.utf8
        for (index, event) in events.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += event.json
            if body.count > maxBytes { return nil }
        }
        body += "]}".utf8
        return body.count <= maxBytes ? body : nil
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

/// The decoder's JSON rules (see `NotificationDecoder`), checked on the bytes before Foundation
/// decodes them: Foundation's `JSONDecoder` takes trailing commas, a byte order mark, UTF-16 and
/// UTF-32, and a key twice (the first one counts), and recurses as deep as 512 levels. One pass,
/// no values built but the keys; recursion no deeper than `maxDepth`.
enum StrictJSON {
    static let maxDepth = NotificationScanner.maxDepth

    /// - Throws: `NotificationDecodingError` naming the first rule `bytes` break, and where.
    static func check(_ bytes: [UInt8], what: String) throws {
        let refusal = bytes.withUnsafeBufferPointer { buffer -> Refusal? in
            var reader = Reader(bytes: buffer)
            do throws(Refusal) {
                try reader.document()
                return nil
            } catch {
                return error
            }
        }
        if let refusal { throw NotificationDecodingError(refusal.message(what)) }
    }

    struct Refusal: Error {
        enum Kind {
            case syntax(String)
            case duplicateKey(String)
            case tooDeep
            case number(String)
        }

        var kind: Kind
        var offset: Int

        func message(_ what: String) -> String {
            switch kind {
            case .syntax(let detail):
                return "\(what) is not JSON: \(detail) at byte \(offset)"
            case .duplicateKey(let key):
                return
                    "\(what) has the key \(String(key.prefix(64)).debugDescription) twice in one object (at byte \(offset)); "
                    + "refused, as JSON parsers differ on which one counts"
            case .tooDeep:
                return
                    "\(what) nests arrays and objects more than \(StrictJSON.maxDepth) deep (at byte \(offset)); \(StrictJSON.maxDepth) is the limit"
            case .number(let text):
                return "\(what) has the number \(text.prefix(40)) at byte \(offset), which does not fit in a double"
            }
        }
    }

    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0
        var depth = 0

        init(bytes: UnsafeBufferPointer<UInt8>) {
            self.bytes = bytes
        }

        private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        private func syntax(_ detail: String, at offset: Int? = nil) -> Refusal {
            Refusal(kind: .syntax(detail), offset: offset ?? index)
        }

        private func describe(_ byte: UInt8?) -> String {
            guard let byte else { return "the end" }
            if byte > 0x20, byte < 0x7f { return "'\(Character(Unicode.Scalar(byte)))'" }
            return "byte 0x" + String(byte, radix: 16, uppercase: true)
        }

        private mutating func skipWhitespace() {
            while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 {
                index += 1
            }
        }

        private mutating func skipDigits() {
            while let byte = current, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                index += 1
            }
        }

        mutating func document() throws(Refusal) {
            if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { throw syntax("a byte order mark") }
            skipWhitespace()
            try value()
            skipWhitespace()
            if index < bytes.count { throw syntax("\(describe(current)) after the value") }
        }

        private mutating func value() throws(Refusal) {
            guard let byte = current else { throw syntax("the end where a value should be") }
            switch byte {
            case UInt8(ascii: "{"): try object()
            case UInt8(ascii: "["): try array()
            case UInt8(ascii: "\""): _ = try string(keeping: false)
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
            default: throw syntax("\(describe(current)) where a value should be")
            }
        }

        /// Steps into an array or object (at its bracket).
        private mutating func enter() throws(Refusal) {
            depth += 1
            if depth > StrictJSON.maxDepth { throw Refusal(kind: .tooDeep, offset: index) }
            index += 1
            skipWhitespace()
        }

        private mutating func object() throws(Refusal) {
            try enter()
            if current == UInt8(ascii: "}") {
                index += 1
                depth -= 1
                return
            }
            var keys = Set<String>()
            while true {
                guard current == UInt8(ascii: "\"") else {
                    throw syntax("\(describe(current)) where a key in quotes should be")
                }
                let offset = index
                let key = try string(keeping: true)
                guard keys.insert(key).inserted else { throw Refusal(kind: .duplicateKey(key), offset: offset) }
                skipWhitespace()
                guard current == UInt8(ascii: ":") else { throw syntax("\(describe(current)) where ':' should be") }
                index += 1
                skipWhitespace()
                try value()
                skipWhitespace()
                switch current {
                case UInt8(ascii: ","):
                    index += 1
                    skipWhitespace()
                case UInt8(ascii: "}"):
                    index += 1
                    depth -= 1
                    return
                default:
                    throw syntax("\(describe(current)) where ',' or '}' should be")
                }
            }
        }

        private mutating func array() throws(Refusal) {
            try enter()
            if current == UInt8(ascii: "]") {
                index += 1
                depth -= 1
                return
            }
            while true {
                try value()
                skipWhitespace()
                switch current {
                case UInt8(ascii: ","):
                    index += 1
                    skipWhitespace()
                case UInt8(ascii: "]"):
                    index += 1
                    depth -= 1
                    return
                default:
                    throw syntax("\(describe(current)) where ',' or ']' should be")
                }
            }
        }

        private mutating func literal(_ word: StaticString) throws(Refusal) {
            let start = index
            let expected = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
            guard bytes.count - index >= expected.count, bytes[index..<index + expected.count].elementsEqual(expected)
            else {
                throw syntax("\(describe(current)) where a value should be", at: start)
            }
            index += expected.count
        }

        /// A number as RFC 8259 writes it, which must fit in a double.
        private mutating func number() throws(Refusal) {
            let start = index
            if current == UInt8(ascii: "-") { index += 1 }
            guard let first = current, first >= UInt8(ascii: "0"), first <= UInt8(ascii: "9") else {
                throw syntax("a number without digits", at: start)
            }
            index += 1
            if first != UInt8(ascii: "0") { skipDigits() }
            if current == UInt8(ascii: ".") {
                index += 1
                guard let digit = current, digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else {
                    throw syntax("a number without digits after its point", at: start)
                }
                skipDigits()
            }
            let mantissaEnd = index
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                guard let digit = current, digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else {
                    throw syntax("a number without digits in its exponent", at: start)
                }
                skipDigits()
            }
            // Only an exponent or some 300 digits take a number out of a double's range.
            guard mantissaEnd < index || index - start > 300 else { return }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            let nonzero = bytes[start..<mantissaEnd].contains { $0 >= UInt8(ascii: "1") && $0 <= UInt8(ascii: "9") }
            guard let number = Double(text), number.isFinite, number != 0 || !nonzero else {
                throw Refusal(kind: .number(text), offset: start)
            }
        }

        /// A string (at its quote); its value when `keeping`, else "".
        private mutating func string(keeping: Bool) throws(Refusal) -> String {
            let start = index
            index += 1
            var run = index
            var unescaped: [UInt8] = []
            var escaped = false
            while true {
                guard let byte = current else { throw syntax("a string that does not end", at: start) }
                switch byte {
                case UInt8(ascii: "\""):
                    defer { index += 1 }
                    guard keeping else { return "" }
                    guard escaped else { return String(decoding: bytes[run..<index], as: UTF8.self) }
                    unescaped.append(contentsOf: bytes[run..<index])
                    return String(decoding: unescaped, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    if keeping { unescaped.append(contentsOf: bytes[run..<index]) }
                    escaped = true
                    index += 1
                    try escape(into: &unescaped, keeping: keeping)
                    run = index
                case 0x00..<0x20:
                    throw syntax("an unescaped control character (\(describe(byte))) in a string")
                default:
                    index += 1
                }
            }
        }

        /// One escape, after its backslash.
        private mutating func escape(into out: inout [UInt8], keeping: Bool) throws(Refusal) {
            let start = index - 1
            let simple: UInt8
            switch current {
            case UInt8(ascii: "\""): simple = UInt8(ascii: "\"")
            case UInt8(ascii: "\\"): simple = UInt8(ascii: "\\")
            case UInt8(ascii: "/"): simple = UInt8(ascii: "/")
            case UInt8(ascii: "b"): simple = 0x08
            case UInt8(ascii: "f"): simple = 0x0C
            case UInt8(ascii: "n"): simple = 0x0A
            case UInt8(ascii: "r"): simple = 0x0D
            case UInt8(ascii: "t"): simple = 0x09
            case UInt8(ascii: "u"):
                index += 1
                var code = try hex(at: start)
                if (0xDC00...0xDFFF).contains(code) {
                    throw syntax("a lone UTF-16 surrogate (\\u\(String(code, radix: 16))) in a string", at: start)
                }
                if (0xD800...0xDBFF).contains(code) {
                    guard current == UInt8(ascii: "\\"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u")
                    else {
                        throw syntax("a lone UTF-16 surrogate (\\u\(String(code, radix: 16))) in a string", at: start)
                    }
                    index += 2
                    let low = try hex(at: start)
                    guard (0xDC00...0xDFFF).contains(low) else {
                        throw syntax("a lone UTF-16 surrogate (\\u\(String(code, radix: 16))) in a string", at: start)
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                if keeping, let scalar = Unicode.Scalar(code) {
                    UTF8.encode(scalar) { out.append($0) }
                }
                return
            default:
                throw syntax("an invalid escape \\\(describe(current))", at: start)
            }
            index += 1
            if keeping { out.append(simple) }
        }

        /// Four hex digits (of a `\u` escape that starts at `start`).
        private mutating func hex(at start: Int) throws(Refusal) -> UInt32 {
            var code: UInt32 = 0
            for _ in 0..<4 {
                guard let byte = current else { throw syntax("a \\u escape cut short", at: start) }
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw syntax("a \\u escape with \(describe(byte)) among its four hex digits", at: start)
                }
                code = code << 4 | UInt32(digit)
                index += 1
            }
            return code
        }
    }
}
