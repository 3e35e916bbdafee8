import Foundation
import HeraldModel
import Notifications
import Testing

// The decoder's two paths (the simdjson scan and Foundation) held against each other over a
// generated corpus: valid notifications of both drivers, Ceilometer lists, hostile ones for every
// rule of `NotificationDecoder`, and byte-level mutations of valid ones. For every input: nothing
// traps; an event of the fast path is the general path's one event; what the general path refuses
// `decode` refuses with a reason (a dead letter's). The corpus is the same on every run for a seed:
// HERALD_DECODER_SEED=<n> runs another one, and every failure names its seed and index.

/// SplitMix64: small, and the same sequence for a seed on every platform.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// JSON to write out, well-formed or not.
indirect enum JSONText: Sendable {
    case null
    case bool(Bool)
    /// The literal as written.
    case number(String)
    case string(String)
    case array([JSONText])
    /// Keys are `.string` or `.raw`.
    case object([Member])
    /// Bytes written as they are: what a well-formed writer never writes.
    case raw([UInt8])

    struct Member: Sendable {
        var key: JSONText
        var value: JSONText

        init(_ key: String, _ value: JSONText) {
            self.key = .string(key)
            self.value = value
        }

        init(rawKey: [UInt8], _ value: JSONText) {
            key = .raw(rawKey)
            self.value = value
        }
    }

    static func raw(_ text: String) -> JSONText { .raw(Array(text.utf8)) }
}

/// What the rules say of an input.
enum Expectation: Sendable, CustomStringConvertible {
    /// Decoded, into these events (type, id, project).
    case accepted([ExpectedEvent])
    /// Refused, the reason naming one of these.
    case refused([String])
    /// Either (a mutation): the paths must only agree.
    case either

    var description: String {
        switch self {
        case .accepted(let events): return "accepted as \(events)"
        case .refused(let reasons): return "refused (\(reasons.joined(separator: " | ")))"
        case .either: return "either"
        }
    }
}

struct ExpectedEvent: Sendable, Equatable, CustomStringConvertible {
    var type: String
    var id: String
    var project: String?

    var description: String { "(\(type), \(id), \(project ?? "nil"))" }
}

struct Sample: Sendable {
    var category: String
    var body: [UInt8]
    var expectation: Expectation
}

/// A notification before it is written: its members and the events the rules make of it.
struct NotificationSpec {
    var members: [JSONText.Member]
    var events: [ExpectedEvent]
    /// The project the `_context_` keys name: the event's when the payload names none.
    var contextProject: String?

    mutating func remove(_ key: String) {
        members.removeAll { member in if case .string(key) = member.key { return true } else { return false } }
    }
}

/// Writes and generates the corpus. Mutating methods draw from one generator, in order.
struct CorpusGenerator {
    var rng: SplitMix64

    init(seed: UInt64) {
        rng = SplitMix64(seed: seed)
    }

    // MARK: drawing

    // Plain modulo (its bias does not matter here): the generic `random(in:using:)` is slow in debug builds.
    mutating func below(_ count: Int) -> Int { Int(rng.next() % UInt64(count)) }
    mutating func chance(_ oneIn: Int) -> Bool { below(oneIn) == 0 }
    mutating func int(_ range: ClosedRange<Int>) -> Int { range.lowerBound + below(range.count) }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
    mutating func shuffled<T>(_ items: [T]) -> [T] { items.shuffled(using: &rng) }

    mutating func uuid() -> String {
        let hex = Array("0123456789abcdef".utf8)
        var bytes: [UInt8] = []
        for count in [8, 4, 4, 4, 12] {
            if !bytes.isEmpty { bytes.append(UInt8(ascii: "-")) }
            var random = rng.next()
            for _ in 0..<count {
                bytes.append(hex[Int(random & 15)])
                random >>= 4
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: writing

    /// Optional whitespace between tokens: JSON's four kinds only.
    mutating func space(_ out: inout [UInt8]) {
        guard chance(4) else { return }
        out += Array(pick([" ", "\n", "\t", "\r\n", "  ", " \t "]).utf8)
    }

    mutating func write(_ text: JSONText, into out: inout [UInt8]) {
        switch text {
        case .null: out += Array("null".utf8)
        case .bool(let flag): out += Array((flag ? "true" : "false").utf8)
        case .number(let literal): out += Array(literal.utf8)
        case .string(let string): write(string: string, into: &out)
        case .raw(let bytes): out += bytes
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                space(&out)
                write(item, into: &out)
                space(&out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            space(&out)
            for (index, member) in members.enumerated() {
                if index > 0 {
                    out.append(UInt8(ascii: ","))
                    space(&out)
                }
                write(member.key, into: &out)
                space(&out)
                out.append(UInt8(ascii: ":"))
                space(&out)
                write(member.value, into: &out)
                space(&out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// A JSON string, each character escaped or not at random where JSON allows both.
    mutating func write(string: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += Array(#"\""#.utf8)
            case "\\": out += Array(#"\\"#.utf8)
            case "\n" where chance(2): out += Array(#"\n"#.utf8)
            case "\t" where chance(2): out += Array(#"\t"#.utf8)
            case "/" where chance(2): out += Array(#"\/"#.utf8)
            default:
                if scalar.value < 0x20 || chance(12) {
                    out += escaped(scalar)
                } else if scalar.isASCII {
                    out.append(UInt8(scalar.value))
                } else {
                    UTF8.encode(scalar) { out.append($0) }
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// `\uXXXX`, a surrogate pair past the BMP, upper or lower case hex.
    mutating func escaped(_ scalar: Unicode.Scalar) -> [UInt8] {
        let upper = chance(2)
        func unit(_ value: UInt32) -> String {
            let hex = String(value, radix: 16, uppercase: upper)
            return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        }
        if scalar.value > 0xFFFF {
            let value = scalar.value - 0x10000
            return Array((unit(0xD800 + (value >> 10)) + unit(0xDC00 + (value & 0x3FF))).utf8)
        }
        return Array(unit(scalar.value).utf8)
    }

    /// The bytes of a JSON document as a JSON string (an `oslo.message`), byte for byte: only
    /// quotes, backslashes and control characters escaped, and a letter now and then.
    mutating func jsonString(of bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "\"")]
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""): out += Array(#"\""#.utf8)
            case UInt8(ascii: "\\"): out += Array(#"\\"#.utf8)
            case 0..<0x20: out += escaped(Unicode.Scalar(byte))
            case UInt8(ascii: "a")...UInt8(ascii: "z") where chance(40): out += escaped(Unicode.Scalar(byte))
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
        return out
    }

    /// The notification written bare (driver `messaging`) or in an envelope (`messagingv2`).
    mutating func body(_ members: [JSONText.Member], envelope: Bool, extraEnvelopeMember: Bool = false) -> [UInt8] {
        var inner: [UInt8] = []
        write(.object(members), into: &inner)
        if chance(6) { space(&inner) }
        guard envelope else { return inner }
        var outer = [
            JSONText.Member("oslo.version", .string("2.0")),
            JSONText.Member("oslo.message", .raw(jsonString(of: inner))),
        ]
        if extraEnvelopeMember { outer.append(JSONText.Member("publisher", .string("ignored"))) }
        var out: [UInt8] = []
        write(.object(shuffled(outer)), into: &out)
        return out
    }

    // MARK: values

    static let words = ["active", "building", "deleted", "compute", "host1", "m1.small", "", "x"]
    static let oddStrings = [
        "café", "e\u{301}", "日本語", "😀", "quote \" inside", "back\\slash", "line\nbreak", "tab\there", "nul\u{0}byte",
        "ctl\u{1F}", "slash/es", "del\u{7F}", "\u{FEFF}bom", "line\u{2028}sep", "kelvin \u{212A}", "\u{10FFFF}", "NaN",
        "1e400",
    ]
    static let numbers = [
        "0", "-0", "1", "-1", "42", "-1.5e3", "1E+2", "1e-2", "0.1", "3.141592653589793",
        "123456789012345678901234567890",
        "9007199254740993", "1e308", "1.7976931348623157e308", "4.9e-324", "2.4703282292062328e-324", "0e-400",
        "-0.0e-999",
        "0.000e999", "2.5E-8", "1e-05", "-0.0",
    ]
    /// Keys for generated objects: ASCII ones (the fast path's), and a few past ASCII (handed over);
    /// no two canonically equivalent.
    static let keys = [
        "state", "name", "size", "host", "id", "uuid", "metadata", "tags", "a", "b", "with space", "quote\"d",
        "back\\slash",
        "ctl\u{1}", "", "nul\u{0}", "slash/", "project_id", "tenant_id", "_context_x", "oslo.message", "oslo.version",
        "event_type",
        "nova_object.data", "k", "K",
    ]
    static let wideKeys = ["\u{E9}", "日本", "😀", "\u{212B}ngstr\u{F6}m"]

    mutating func scalar() -> JSONText {
        switch int(0...9) {
        case 0...2: return .string(chance(3) ? pick(Self.oddStrings) : pick(Self.words))
        case 3: return .string(uuid())
        case 4, 5:
            return .number(
                chance(2)
                    ? pick(Self.numbers)
                    : chance(2) ? "\(int(-1_000_000...1_000_000))" : "\(Double.random(in: -1e6...1e6, using: &rng))")
        case 6, 7: return .bool(chance(2))
        default: return .null
        }
    }

    mutating func value(depth: Int) -> JSONText {
        guard depth < 5, !chance(2) else { return scalar() }
        if chance(2) {
            return .array((0..<int(0...4)).map { _ in value(depth: depth + 1) })
        }
        return .object(object(depth: depth + 1, count: int(0...5)))
    }

    mutating func object(depth: Int, count: Int, excluding: Set<String> = []) -> [JSONText.Member] {
        var keys = Array(shuffled(Self.keys.filter { !excluding.contains($0) }).prefix(count))
        if count > 0, chance(25) { keys[0] = pick(Self.wideKeys) }
        return keys.map { JSONText.Member($0, value(depth: depth)) }
    }

    // MARK: notifications

    static let eventTypes = [
        "compute.instance.create.end", "compute.instance.update", "port.update.end", "volume.attach.end",
        "image.upload",
        "identity.project.deleted", "x", "événement.créé", "😀.type", "a\"b\\c", "event", "events", "nul\u{0}type",
    ]

    /// A project id candidate and what the rules make of it (only a non-empty string counts).
    mutating func projectCandidate(_ name: String) -> (value: JSONText?, counts: String?) {
        switch int(0...9) {
        case 0...3: return (nil, nil)
        case 4...6:
            let id = "\(name)-\(int(0...999))"
            return (.string(id), id)
        case 7: return (.string(""), nil)
        case 8: return (.null, nil)
        default: return (pick([.number("5"), .object([]), .array([.string("p")]), .bool(true)]), nil)
        }
    }

    /// A valid oslo.messaging notification and the event it makes.
    mutating func oslo() -> NotificationSpec {
        let eventType = pick(Self.eventTypes)
        let messageID = chance(8) ? pick(["m", "é", "id with \"quotes\"", "\u{0}"]) : uuid()
        var members: [JSONText.Member] = [
            .init("event_type", .string(eventType)),
            .init("message_id", .string(messageID)),
            .init("publisher_id", .string("compute.host\(int(1...9))")),
            .init("priority", .string(pick(["INFO", "ERROR", "WARN"]))),
            .init("timestamp", .string("2026-11-24 16:37:41.\(int(100_000...999_999))")),
        ]
        var project: String?
        switch int(0...9) {
        case 0: break  // no payload
        case 1:
            members.append(
                .init("payload", chance(2) ? scalar() : .array((0..<int(0...3)).map { _ in value(depth: 1) })))
        default:
            var payload = object(depth: 2, count: int(0...6), excluding: ["project_id", "tenant_id"])
            let projectID = projectCandidate("p")
            let tenantID = projectCandidate("t")
            if let value = projectID.value { payload.append(.init("project_id", value)) }
            if let value = tenantID.value { payload.append(.init("tenant_id", value)) }
            project = projectID.counts ?? tenantID.counts
            members.append(.init("payload", .object(shuffled(payload))))
        }
        if eventType == "event", case .array? = members.last?.value {
            members.removeLast()  // that would be a Ceilometer list
        }
        let contextProject = projectCandidate("ctx")
        let contextTenant = projectCandidate("ctxt")
        if let value = contextProject.value { members.append(.init("_context_project_id", value)) }
        if let value = contextTenant.value { members.append(.init("_context_tenant", value)) }
        project = project ?? contextProject.counts ?? contextTenant.counts
        for (key, value) in [
            ("_context_user_name", JSONText.string("alice")),
            ("_context_roles", .array([.string("admin"), .string("member")])),
            ("_context_auth_token", .string("secret")), ("_context_is_admin", .bool(true)),
            ("_context_request_id", .null),
        ] where chance(2) {
            members.append(.init(key, value))
        }
        for member in object(
            depth: 2, count: int(0...2),
            excluding: ["event_type", "message_id", "payload", "oslo.message", "oslo.version", "_context_x"])
        {
            members.append(member)
        }
        return NotificationSpec(
            members: shuffled(members), events: [ExpectedEvent(type: eventType, id: messageID, project: project)],
            contextProject: contextProject.counts ?? contextTenant.counts)
    }

    /// A Ceilometer `event.sample` notification: the payload a list of events.
    mutating func ceilometer() -> NotificationSpec {
        let contextProject = projectCandidate("ctx")
        var members: [JSONText.Member] = [
            .init("event_type", .string("event")), .init("publisher_id", .string("ceilometer.notification")),
            .init("priority", .string("SAMPLE")), .init("timestamp", .string("2026-11-24 16:37:41.367798")),
        ]
        if chance(4) == false { members.append(.init("message_id", .string(uuid()))) }
        if let value = contextProject.value { members.append(.init("_context_project_id", value)) }
        var events: [ExpectedEvent] = []
        var list: [JSONText] = []
        for _ in 0..<int(0...4) {
            let type = pick(Self.eventTypes.filter { $0 != "event" })
            let id = uuid()
            var traits: [JSONText] = []
            var named: [String: JSONText] = [:]
            for name in shuffled(["project_id", "tenant_id", "memory_mb", "state", "project_id"]).prefix(int(0...5)) {
                let value: JSONText =
                    name.hasSuffix("_id")
                    ? (projectCandidate(name).value ?? .string("\(name)-\(int(0...9))")) : scalar()
                traits.append(.array([.string(name), .number(pick(["1", "2", "3", "4"])), value]))
                named[name] = value  // the last one counts
            }
            func nonEmpty(_ value: JSONText?) -> String? {
                if case .string(let text)? = value, !text.isEmpty { return text }
                return nil
            }
            let project = nonEmpty(named["project_id"]) ?? nonEmpty(named["tenant_id"]) ?? contextProject.counts
            events.append(ExpectedEvent(type: type, id: id, project: project))
            list.append(
                .object(
                    shuffled([
                        .init("message_id", .string(id)), .init("event_type", .string(type)),
                        .init("generated", .string("2026-11-24T16:37:41.367798")),
                        .init("traits", .array(traits)), .init("raw", .object([])),
                        .init("message_signature", .string("sig")),
                    ])))
        }
        members.append(.init("payload", .array(list)))
        return NotificationSpec(members: shuffled(members), events: events, contextProject: contextProject.counts)
    }

    mutating func valid() -> Sample {
        let envelope = chance(2)
        let ceilometer = chance(8)
        let spec = ceilometer ? self.ceilometer() : oslo()
        return Sample(
            category: ceilometer ? "valid Ceilometer list" : envelope ? "valid messagingv2" : "valid messaging",
            body: body(spec.members, envelope: envelope, extraEnvelopeMember: chance(10)),
            expectation: .accepted(spec.events)
        )
    }

    // MARK: hostile inputs, one rule each

    /// Puts `value` somewhere in the notification: at the top, in a `_context_` member, or deep in
    /// the payload (all of which the fast path used to skip unread).
    mutating func plant(_ value: JSONText, in spec: inout NotificationSpec) {
        switch int(0...3) {
        case 0: spec.members.insert(.init("publisher_extra", value), at: int(0...spec.members.count))
        case 1: spec.members.insert(.init("_context_planted", value), at: int(0...spec.members.count))
        default:
            var nested = value
            for _ in 0..<int(0...3) {
                nested = chance(2) ? .array([.number("1"), nested]) : .object([.init("k", nested)])
            }
            spec.remove("payload")
            spec.members.append(
                .init("payload", .object(shuffled([.init("project_id", .string("p")), .init("deep", nested)]))))
            spec.events[0].project = "p"
        }
    }

    static let invalidFragments = [
        "[1,2,]", #"{"a":1,}"#, #"{"a" 1}"#, "tru", "nul", "nulll", "truex", "01", "-01", "1.", ".5", "-", "+1", "0x10",
        #""\x""#, #""\u12""#,
        #""\u12g4""#, "[1 2]", "{1:2}", "'str'", "[}", "{]", #"{"a":}"#, "[,1]", "1e", "1e+", "--1", "[", "{",
        #""unterminated"#, "//c\n1",
        "/*c*/1", "undefined", "True", "None", "1_000", "\u{0C}1", "\u{0B}1", "1 2", "[1]]", #"{"a":1}}"#,
    ]
    static let nonFinite = ["NaN", "-NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf", "-inf", "Inf"]
    static let hugeNumbers: [(String, Bool)] = [
        ("1e400", false), ("-1e400", false), ("1e-400", false), ("-2e-324", false), ("1.7976931348623159e308", false),
        ("2.4703282292062327e-324", false), ("1" + String(repeating: "0", count: 400), false),
        ("0." + String(repeating: "0", count: 330) + "1", false),
        ("10e-325", false), ("1.7976931348623157e308", true), ("4.9e-324", true), ("2.4703282292062328e-324", true),
        ("0e-400", true),
        ("0.000e999", true), ("-0.0e-999", true), ("1" + String(repeating: "0", count: 300), true),
        ("0." + String(repeating: "0", count: 300) + "1", true),
        ("100000000000000000000000000000000000000e-360", true), ("1e-320", true),
    ]
    static let invalidUTF8: [[UInt8]] = [
        [0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0xF4, 0x90, 0x80, 0x80], [0x80],
        [0xF8, 0x88, 0x80, 0x80, 0x80],
    ]
    static let loneSurrogates = [
        #"\ud800"#, #"\udc00"#, #"\ud800\u0041"#, #"\ud800\ud800"#, #"\uDBFF"#, #"\udfff\ud800"#, #"\ud83d"#,
    ]

    mutating func hostile() -> Sample {
        var spec = oslo()
        let envelope = chance(2)
        func sample(_ category: String, _ expectation: Expectation) -> Sample {
            Sample(category: category, body: body(spec.members, envelope: envelope), expectation: expectation)
        }
        switch int(0...14) {
        case 0:
            // The same key twice, with different values.
            switch int(0...6) {
            case 0: spec.members.insert(.init("event_type", .string("other.type")), at: int(0...spec.members.count))
            case 1: spec.members.insert(.init("message_id", .string("other-id")), at: int(0...spec.members.count))
            case 2:
                spec.members.insert(
                    .init(rawKey: Array(#""\u0065vent_type""#.utf8), .string("escaped.key")),
                    at: int(0...spec.members.count))
            case 3:
                spec.remove("_context_project_id")
                spec.members += [
                    .init("_context_project_id", .string("a")),
                    .init("_context_project_id", .string(pick(["a", "b", ""]))),
                ]
            case 4:
                let pair = pick([
                    ("\u{E9}", "e\u{301}"), ("K", "\u{212A}"), ("\u{C5}", "\u{212B}"), ("k", "k"), ("", ""),
                ])
                plant(.object([.init(pair.0, .number("1")), .init(pair.1, .number("2"))]), in: &spec)
            case 5:
                spec.remove("payload")
                let first = pick(["p1", "", "p2"])
                spec.members.append(
                    .init(
                        "payload",
                        .object([
                            .init("project_id", .string(first)), .init("state", .null),
                            .init("project_id", .string("p2")),
                        ])))
            default:
                plant(
                    .array([
                        .object([.init("state", .string("a")), .init("name", .null), .init("state", .string("b"))])
                    ]), in: &spec)
            }
            return sample("duplicate key", .refused(["twice"]))
        case 1:
            // Half an envelope.
            var inner: [UInt8] = []
            write(.object(spec.members), into: &inner)
            var outer: [JSONText.Member] =
                chance(2)
                ? [.init("oslo.message", .raw(jsonString(of: inner)))] : [.init("oslo.version", .string("2.0"))]
            if chance(2) {
                outer += spec.members.filter { member in
                    if case .string(let key) = member.key { return key == "event_type" || key == "message_id" }
                    return false
                }
            }
            var out: [UInt8] = []
            write(.object(shuffled(outer)), into: &out)
            return Sample(
                category: "half an envelope", body: out, expectation: .refused(["oslo.version", "oslo.message"]))
        case 2:
            // Data after the object (or after the notification inside the envelope's string).
            let trailing = Array(
                pick(["x", "{}", ",", "]", "}", "\u{0}", #" {"a":1}"#, "null", "\u{FEFF}", "0", " \u{0C}", #"""#]).utf8)
            if envelope, chance(2) {
                var inner: [UInt8] = []
                write(.object(spec.members), into: &inner)
                var out: [UInt8] = []
                write(
                    .object(
                        shuffled([
                            .init("oslo.version", .string("2.0")),
                            .init("oslo.message", .raw(jsonString(of: inner + trailing))),
                        ])), into: &out)
                return Sample(category: "trailing data", body: out, expectation: .refused(["after the value"]))
            }
            return Sample(
                category: "trailing data", body: body(spec.members, envelope: envelope) + trailing,
                expectation: .refused(["after the value"]))
        case 3:
            // Nesting around the limit, or far past it; the outermost object is one level, the payload another.
            let depth =
                chance(2) ? int(NotificationScanner.maxDepth - 3...NotificationScanner.maxDepth + 2) : int(3...3000)
            let arrays = chance(2)
            let inPayload = chance(2)
            let nested = depth - (inPayload ? 2 : 1)
            let open = arrays ? "[" : #"{"a":"#
            let close = arrays ? "]" : "}"
            let text = JSONText.raw(
                String(repeating: open, count: nested) + (arrays ? "" : "1") + String(repeating: close, count: nested))
            if inPayload {
                spec.remove("payload")
                spec.members.append(.init("payload", .object([.init("deep", text)])))
                spec.events[0].project = spec.contextProject
            } else {
                spec.members.append(.init(chance(2) ? "deep" : "_context_deep", text))
            }
            return sample(
                "deep nesting",
                depth <= NotificationScanner.maxDepth
                    ? .accepted(spec.events) : .refused(["\(NotificationScanner.maxDepth) deep"]))
        case 4:
            plant(.raw(pick(Self.invalidFragments)), in: &spec)
            return sample("invalid JSON in a member", .refused(["not JSON"]))
        case 5:
            plant(.raw(pick(Self.nonFinite)), in: &spec)
            return sample("NaN and Infinity", .refused(["not JSON"]))
        case 6:
            let (number, fits) = pick(Self.hugeNumbers)
            plant(.number(number), in: &spec)
            return sample(
                "huge and tiny numbers", fits ? .accepted(spec.events) : .refused(["does not fit in a double"]))
        case 7:
            let bad = pick(Self.invalidUTF8)
            if chance(3) {
                spec.members.append(.init(rawKey: [UInt8(ascii: "\"")] + bad + [UInt8(ascii: "\"")], .number("1")))
            } else {
                plant(
                    .raw([UInt8(ascii: "\"")] + Array("bad ".utf8) + bad + Array(" utf8".utf8) + [UInt8(ascii: "\"")]),
                    in: &spec)
            }
            return sample("invalid UTF-8", .refused(["UTF-8"]))
        case 8:
            let escape = pick(Self.loneSurrogates)
            switch int(0...2) {
            case 0:
                spec.remove("event_type")
                spec.members.append(.init("event_type", .raw("\"compute.\(escape).end\"")))
            case 1: spec.members.append(.init(rawKey: Array("\"key\(escape)\"".utf8), .number("1")))
            default: plant(.raw("\"text \(escape) text\""), in: &spec)
            }
            return sample("lone surrogate", .refused(["surrogate"]))
        case 9:
            // event_type or message_id: empty, not a string, absent.
            let field = chance(2) ? "event_type" : "message_id"
            spec.remove(field)
            if !chance(5) {
                spec.members.append(
                    .init(
                        field,
                        pick([.string(""), .number("42"), .null, .bool(true), .array([.string("a.b")]), .object([])])))
            }
            return sample("empty or mistyped ids", .refused([field]))
        case 10:
            // A control character unescaped in a string, or one that is not JSON whitespace between tokens.
            let control = UInt8(int(0...0x1F))
            if chance(2) {
                plant(
                    .raw([UInt8(ascii: "\""), UInt8(ascii: "a"), control, UInt8(ascii: "b"), UInt8(ascii: "\"")]),
                    in: &spec)
            } else if [0x09, 0x0A, 0x0D].contains(control) {
                plant(.raw([control, UInt8(ascii: "1")]), in: &spec)
                return sample("control characters", .accepted(spec.events))
            } else {
                plant(.raw([control, UInt8(ascii: "1")]), in: &spec)
            }
            return sample("control characters", .refused(["not JSON"]))
        case 11:
            // Another encoding than UTF-8, or a byte order mark.
            let text = String(decoding: body(spec.members, envelope: envelope), as: UTF8.self)
            let encoded: [UInt8]
            switch int(0...4) {
            case 0: encoded = [0xEF, 0xBB, 0xBF] + Array(text.utf8)
            case 1: encoded = text.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
            case 2: encoded = text.utf16.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
            case 3: encoded = [0xFF, 0xFE] + text.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
            default:
                encoded = text.unicodeScalars.flatMap {
                    [UInt8($0.value & 0xFF), UInt8(($0.value >> 8) & 0xFF), UInt8($0.value >> 16), 0]
                }
            }
            return Sample(category: "other encodings", body: encoded, expectation: .refused(["not JSON", "UTF-8"]))
        case 12:
            // Not an object.
            var out: [UInt8] = []
            write(
                pick([.array([.object(spec.members)]), .string("notification"), .number("5"), .null, .bool(false)]),
                into: &out)
            return Sample(category: "not an object", body: out, expectation: .refused(["not an object"]))
        case 13:
            // `_context_` is a prefix of bytes: a combining mark after it does not make another key.
            spec.members.append(.init("_context_\u{301}combining", .string("secret")))
            spec.members.append(.init("_CONTEXT_upper", .string("kept")))
            return sample("context keys", .accepted(spec.events))
        default:
            // A Ceilometer list with a broken event in it.
            var list = ceilometer()
            list.remove("payload")
            let broken: JSONText = pick([
                .object([.init("event_type", .string("x"))]), .object([.init("message_id", .string("m"))]),
                .string("event"),
                .object([
                    .init("event_type", .string("x")), .init("message_id", .string("m")),
                    .init("traits", .array([.array([.number("1"), .number("1"), .number("1")])])),
                ]),
                .object([.init("event_type", .string("")), .init("message_id", .string("m"))]),
            ])
            list.members.append(.init("payload", .array([broken])))
            return Sample(
                category: "broken Ceilometer list", body: body(list.members, envelope: envelope),
                expectation: .refused(["Ceilometer event 0"]))
        }
    }

    // MARK: mutations

    static let insertions: [[UInt8]] =
        [
            "{", "}", "[", "]", "\"", "\\", ":", ",", "0", "1", "-", "e", ".", "n", " ", "\n", #","event_type":"dup""#,
            #"\u"#, #"\ud800"#, "NaN", "1e400",
            #""_context_project_id":"x","#, "\u{0}", "\u{1F}", "\u{7F}",
        ].map { Array($0.utf8) } + [[0x80], [0xBF], [0xC3], [0xED], [0xF0], [0xFF]]

    /// A valid notification with bytes flipped, inserted, deleted, repeated or cut off.
    mutating func mutated() -> Sample {
        var bytes = valid().body
        for _ in 0..<int(1...3) where !bytes.isEmpty {
            let at = int(0...bytes.count - 1)
            switch int(0...6) {
            case 0: bytes[at] ^= UInt8(1) << UInt8(int(0...7))
            case 1: bytes[at] = pick(Self.insertions)[0]
            case 2: bytes.insert(contentsOf: pick(Self.insertions), at: at)
            case 3: bytes.removeSubrange(at..<min(bytes.count, at + int(1...8)))
            case 4: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + int(1...16))], at: int(0...bytes.count))
            case 5: bytes.removeSubrange(at...)
            default: bytes.swapAt(at, int(0...bytes.count - 1))
            }
        }
        return Sample(category: "mutation", body: bytes, expectation: .either)
    }
}

/// How one input went.
enum Verdict: String, CaseIterable {
    case fast = "fast path"
    case slow = "general path"
    case refused
}

/// Holds the decoders to the rules for one input; a description of each broken one.
func disagreements(_ sample: Sample) -> (verdict: Verdict, problems: [String]) {
    var problems: [String] = []
    let body = sample.body
    let fast = NotificationDecoder.decodeFastlyForTesting(body)
    let slow = Result { try NotificationDecoder.decodeSlowlyForTesting(body) }
    let decoded = Result { try NotificationDecoder.decode(body) }
    let verdict: Verdict

    func reason(_ error: any Error) -> String? {
        guard let error = error as? NotificationDecodingError else {
            problems.append("refused with \(type(of: error)), not a NotificationDecodingError: \(error)")
            return nil
        }
        if error.message.isEmpty { problems.append("refused without a reason") }
        return error.message
    }

    switch (slow, decoded) {
    case (.success(let events), .success(let decodedEvents)):
        verdict = fast == nil ? .slow : .fast
        if let fast {
            if events != [fast] {
                problems.append(
                    "the fast path's event \(describe(fast)) is not the general path's \(events.map(describe))")
            }
            // The delivered bytes: JSON with the same value, no `_context_` key, and (without the
            // context) the same notification again.
            if let value = try? JSONDecoder().decode(JSONValue.self, from: Data(fast.json)),
                case .object(let object) = value
            {
                if value != events.first?.body {
                    problems.append("the delivered bytes are another value than the general path's body")
                }
                if object.keys.contains(where: { $0.utf8.starts(with: "_context_".utf8) }) {
                    problems.append("a _context_ key is delivered")
                }
            } else {
                problems.append("the delivered bytes are not a JSON object: \(preview(fast.json))")
            }
            switch Result(catching: { try NotificationDecoder.decodeSlowlyForTesting(fast.json) }) {
            case .success(let again)
            where again.count == 1 && again[0].eventType == fast.eventType && again[0].messageID == fast.messageID
                && again[0].body == fast.body:
                break
            case .success(let again): problems.append("the delivered bytes decode to \(again.map(describe))")
            case .failure(let error):
                // oslo.* keys inside the message are ordinary members, but make an envelope of the delivered event.
                if case .object(let object)? = events.first?.body,
                    object["oslo.message"] != nil || object["oslo.version"] != nil
                {
                    break
                }
                problems.append("the delivered bytes are refused: \(error)")
            }
            for path in [
                "payload.project_id", "payload", "publisher_id", "payload.deep", "payload.a.0", "event_type",
                "_context_project_id",
            ] {
                if fast.value(at: path) != events.first?.value(at: path) {
                    problems.append(
                        "value(at: \(path)) differs: \(String(describing: fast.value(at: path))) / \(String(describing: events.first?.value(at: path)))"
                    )
                }
            }
        }
        if decodedEvents != events {
            problems.append("decode gave \(decodedEvents.map(describe)), the general path \(events.map(describe))")
        }
        for event in events {
            if event.eventType.isEmpty || event.messageID.isEmpty {
                problems.append("an event without a type or id: \(describe(event))")
            }
            if event.traits.isEmpty, case .object(let object) = event.body,
                object.keys.contains(where: { $0.utf8.starts(with: "_context_".utf8) })
            {
                problems.append("a _context_ key is in the event of the general path")
            }
        }
        switch sample.expectation {
        case .accepted(let expected):
            let got = events.map { ExpectedEvent(type: $0.eventType, id: $0.messageID, project: $0.project) }
            if got != expected { problems.append("expected \(expected), got \(got)") }
        case .refused(let reasons):
            problems.append(
                "accepted, but the rules refuse it (\(reasons.joined(separator: " | "))): \(events.map(describe))")
        case .either: break
        }
    case (.failure(let slowError), .failure(let decodeError)):
        verdict = .refused
        if let fast {
            problems.append(
                "the fast path took what the general path refuses: \(describe(fast)); refused: \(slowError)")
        }
        let slowReason = reason(slowError)
        let decodeReason = reason(decodeError)
        if slowReason != decodeReason {
            problems.append("decode's reason '\(decodeReason ?? "")' is not the general path's '\(slowReason ?? "")'")
        }
        if let decodeReason {
            // What the ingest makes of it: a dead letter that says why.
            let letter = DeadLetter(
                reason: .malformed, detail: "\(decodeError)", target: "openstack/notifications.info",
                body: String(decoding: body.prefix(64 << 10), as: UTF8.self), at: 0)
            if letter.detail != decodeReason || (try? JSONEncoder().encode(letter)) == nil {
                problems.append("the dead letter does not carry the reason")
            }
        }
        switch sample.expectation {
        case .accepted(let expected):
            problems.append("refused (\(decodeReason ?? "")), but the rules accept it as \(expected)")
        case .refused(let reasons):
            if let decodeReason, !reasons.contains(where: { decodeReason.contains($0) }) {
                problems.append("refused for another reason than \(reasons): \(decodeReason)")
            }
        case .either: break
        }
    case (.success(let events), .failure(let error)):
        verdict = .refused
        problems.append("the general path accepts \(events.map(describe)) but decode refuses: \(error)")
    case (.failure(let error), .success(let events)):
        verdict = .fast
        problems.append("decode accepts \(events.map(describe)) but the general path refuses: \(error)")
    }
    return (verdict, problems)
}

func describe(_ event: NotificationEvent) -> String {
    "(\(event.eventType), \(event.messageID), \(event.project ?? "nil"))"
}

/// The first bytes of an input, readable.
func preview(_ bytes: [UInt8], limit: Int = 300) -> String {
    let text = String(decoding: bytes.prefix(limit), as: UTF8.self).debugDescription
    return bytes.count > limit ? text + "... (\(bytes.count) bytes)" : text
}

@Suite("The decoder's two paths agree on a generated corpus")
struct DecoderDifferentialTests {
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["HERALD_DECODER_SEED"].flatMap { UInt64($0) } ?? 2026_11_24

    /// Runs `count` samples of one kind; records every disagreement with the seed and index that make it again.
    func run(_ kind: String, count: Int, seedOffset: UInt64, _ make: (inout CorpusGenerator) -> Sample) {
        var generator = CorpusGenerator(seed: Self.seed &+ seedOffset)
        var byCategory: [String: [Verdict: Int]] = [:]
        var failures = 0
        for index in 0..<count {
            let sample = make(&generator)
            let (verdict, problems) = disagreements(sample)
            byCategory[sample.category, default: [:]][verdict, default: 0] += 1
            guard !problems.isEmpty else { continue }
            failures += 1
            if failures <= 20 {
                Issue.record(
                    """
                    \(kind) #\(index) (seed \(Self.seed), HERALD_DECODER_SEED=\(Self.seed)), \(sample.category), expected \(sample.expectation):
                    \(problems.joined(separator: "\n"))
                    input: \(preview(sample.body))
                    """)
            }
        }
        let summary = byCategory.sorted { $0.key < $1.key }.map { category, verdicts in
            "  \(category): " + Verdict.allCases.map { "\($0.rawValue) \(verdicts[$0] ?? 0)" }.joined(separator: ", ")
        }
        print(
            "\(kind), seed \(Self.seed): \(count) inputs, \(failures) with a disagreement\n"
                + summary.joined(separator: "\n"))
    }

    @Test("valid notifications of both drivers and Ceilometer lists: the fast path takes the oslo ones, both agree")
    func valid() {
        run("valid", count: 3000, seedOffset: 1) { $0.valid() }
    }

    @Test("hostile notifications, one rule broken each: both paths refuse, with the rule's reason")
    func hostile() {
        run("hostile", count: 3000, seedOffset: 2) { $0.hostile() }
    }

    @Test("byte-level mutations of valid notifications: no trap, the paths agree")
    func mutations() {
        run("mutated", count: 4000, seedOffset: 3) { $0.mutated() }
    }
}

/// One input per rule, written out, with what the rule says of it.
@Suite("The decoder's rules, case by case")
struct DecoderRuleTests {
    static let inner = #"{"event_type":"compute.instance.update","message_id":"m1","payload":{"project_id":"p1"}}"#

    static func envelope(_ message: String) -> String {
        var generator = CorpusGenerator(seed: 1)
        let string = String(decoding: generator.jsonString(of: Array(message.utf8)), as: UTF8.self)
        return #"{"oslo.version":"2.0","oslo.message":"# + string + "}"
    }

    static let accepted = [ExpectedEvent(type: "compute.instance.update", id: "m1", project: "p1")]

    static let cases: [(String, String, Expectation)] = [
        ("bare", inner, .accepted(accepted)),
        ("envelope", envelope(inner), .accepted(accepted)),
        ("trailing whitespace", inner + " \n\t\r", .accepted(accepted)),
        (
            "event_type twice", #"{"event_type":"a","message_id":"m","event_type":"b"}"#,
            .refused([#""event_type" twice"#])
        ),
        (
            "event_type twice, once escaped", #"{"event_type":"a","message_id":"m","\u0065vent_type":"b"}"#,
            .refused(["twice"])
        ),
        ("message_id twice", #"{"event_type":"a","message_id":"m","message_id":"n"}"#, .refused(["twice"])),
        (
            "payload.project_id twice",
            #"{"event_type":"a","message_id":"m","payload":{"project_id":"p","project_id":"q"}}"#, .refused(["twice"])
        ),
        (
            "a key twice deep down", #"{"event_type":"a","message_id":"m","payload":{"x":[{"k":1,"k":1}]}}"#,
            .refused(["twice"])
        ),
        (
            "canonically equivalent keys",
            "{\"event_type\":\"a\",\"message_id\":\"m\",\"payload\":{\"\u{E9}\":1,\"e\u{301}\":2}}", .refused(["twice"])
        ),
        ("oslo.message twice", #"{"oslo.version":"2.0","oslo.message":"{}","oslo.message":"{}"}"#, .refused(["twice"])),
        (
            "envelope without oslo.version", #"{"oslo.message":"{\"event_type\":\"a\",\"message_id\":\"m\"}"}"#,
            .refused(["no 'oslo.version'"])
        ),
        (
            "envelope without oslo.version, ids outside", #"{"event_type":"a","message_id":"m","oslo.message":"{}"}"#,
            .refused(["no 'oslo.version'"])
        ),
        (
            "envelope without oslo.message", #"{"oslo.version":"2.0","event_type":"a","message_id":"m"}"#,
            .refused(["'oslo.message'"])
        ),
        (
            "oslo.message not a string", #"{"oslo.version":"2.0","oslo.message":{"event_type":"a","message_id":"m"}}"#,
            .refused(["'oslo.message'"])
        ),
        (
            "oslo.* inside the envelope: ordinary members",
            envelope(#"{"event_type":"a","message_id":"m","oslo.message":"x","oslo.version":1}"#),
            .accepted([ExpectedEvent(type: "a", id: "m", project: nil)])
        ),
        ("trailing data", inner + "x", .refused(["after the value"])),
        ("trailing object", inner + "{}", .refused(["after the value"])),
        (
            "trailing data inside the envelope", envelope(inner + "]"),
            .refused(["oslo.message is not JSON", "after the value"])
        ),
        ("trailing NUL", inner + "\u{0}", .refused(["after the value"])),
        (
            "nesting at the limit",
            #"{"event_type":"a","message_id":"m","x":"# + String(repeating: "[", count: 127)
                + String(repeating: "]", count: 127) + "}",
            .accepted([ExpectedEvent(type: "a", id: "m", project: nil)])
        ),
        (
            "nesting one past the limit",
            #"{"event_type":"a","message_id":"m","x":"# + String(repeating: "[", count: 128)
                + String(repeating: "]", count: 128) + "}",
            .refused(["more than 128 deep"])
        ),
        (
            "2,000 nested arrays in the payload",
            #"{"event_type":"a","message_id":"m","payload":"# + String(repeating: "[", count: 2000)
                + String(repeating: "]", count: 2000) + "}",
            .refused(["more than 128 deep"])
        ),
        (
            "100,000 nested arrays, unclosed",
            #"{"event_type":"a","message_id":"m","payload":"# + String(repeating: "[", count: 100_000),
            .refused(["more than 128 deep"])
        ),
        (
            "trailing comma in a member never read", #"{"event_type":"a","message_id":"m","publisher_id":[1,2,]}"#,
            .refused(["not JSON"])
        ),
        (
            "invalid literal in a _context_ member", #"{"event_type":"a","message_id":"m","_context_roles":[tru]}"#,
            .refused(["not JSON"])
        ),
        (
            "invalid escape deep in the payload", #"{"event_type":"a","message_id":"m","payload":{"a":{"b":"\x"}}}"#,
            .refused(["not JSON"])
        ),
        ("leading zero", #"{"event_type":"a","message_id":"m","x":01}"#, .refused(["not JSON"])),
        ("NaN", #"{"event_type":"a","message_id":"m","payload":{"v":NaN}}"#, .refused(["not JSON"])),
        ("-Infinity", #"{"event_type":"a","message_id":"m","_context_x":-Infinity}"#, .refused(["not JSON"])),
        (
            "1e400", #"{"event_type":"a","message_id":"m","payload":{"v":1e400}}"#,
            .refused(["does not fit in a double"])
        ),
        (
            "1e-400", #"{"event_type":"a","message_id":"m","payload":{"v":1e-400}}"#,
            .refused(["does not fit in a double"])
        ),
        (
            "0e-400 is zero", #"{"event_type":"a","message_id":"m","payload":{"v":0e-400}}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: nil)])
        ),
        (
            "a 30-digit integer",
            #"{"event_type":"a","message_id":"m","payload":{"v":123456789012345678901234567890}}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: nil)])
        ),
        (
            "lone high surrogate", #"{"event_type":"a","message_id":"m","payload":{"v":"\ud800"}}"#,
            .refused(["surrogate"])
        ),
        (
            "lone low surrogate in a key", #"{"event_type":"a","message_id":"m","payload":{"\udc00":1}}"#,
            .refused(["surrogate"])
        ),
        (
            "surrogate pair", #"{"event_type":"\ud83d\ude00","message_id":"m"}"#,
            .accepted([ExpectedEvent(type: "😀", id: "m", project: nil)])
        ),
        ("empty event_type", #"{"event_type":"","message_id":"m"}"#, .refused(["event_type"])),
        ("empty message_id", #"{"event_type":"a","message_id":""}"#, .refused(["message_id"])),
        ("numeric event_type", #"{"event_type":5,"message_id":"m"}"#, .refused(["event_type"])),
        ("null message_id", #"{"event_type":"a","message_id":null}"#, .refused(["message_id"])),
        (
            "_context_project_id when the payload has none",
            #"{"event_type":"a","message_id":"m","_context_tenant":"t","_context_project_id":"c"}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: "c")])
        ),
        (
            "empty _context_project_id: _context_tenant",
            #"{"event_type":"a","message_id":"m","_context_project_id":"","_context_tenant":"t"}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: "t")])
        ),
        (
            "_context_project_id not a string", #"{"event_type":"a","message_id":"m","_context_project_id":7}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: nil)])
        ),
        (
            "payload.project_id over tenant_id and context",
            #"{"event_type":"a","message_id":"m","payload":{"tenant_id":"t","project_id":"p"},"_context_project_id":"c"}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: "p")])
        ),
        (
            "empty payload.project_id: tenant_id",
            #"{"event_type":"a","message_id":"m","payload":{"project_id":"","tenant_id":"t"},"_context_project_id":"c"}"#,
            .accepted([ExpectedEvent(type: "a", id: "m", project: "t")])
        ),
        ("unescaped control character", "{\"event_type\":\"a\u{1}\",\"message_id\":\"m\"}", .refused(["not JSON"])),
        ("form feed between tokens", "{\"event_type\":\"a\",\u{0C}\"message_id\":\"m\"}", .refused(["not JSON"])),
        ("byte order mark", "\u{FEFF}" + inner, .refused(["byte order mark"])),
        (
            "_context_ and a combining mark: still a _context_ key (bytes decide)",
            "{\"event_type\":\"a\",\"message_id\":\"m\",\"_context_\u{301}x\":\"s\"}",
            .accepted([ExpectedEvent(type: "a", id: "m", project: nil)])
        ),
        (
            "event type 'event' with an object payload: an oslo notification",
            #"{"event_type":"event","message_id":"m","payload":{"project_id":"p"}}"#,
            .accepted([ExpectedEvent(type: "event", id: "m", project: "p")])
        ),
    ]

    @Test("each rule, both paths", arguments: cases)
    func rule(_ name: String, _ text: String, _ expectation: Expectation) {
        let (_, problems) = disagreements(Sample(category: name, body: Array(text.utf8), expectation: expectation))
        #expect(problems.isEmpty, "\(name): \(problems.joined(separator: "; "))")
    }

    @Test("invalid UTF-8 and UTF-16 are refused by both paths")
    func encodings() {
        let utf16 = Array(Self.inner.utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] })
        let invalid =
            Array(#"{"event_type":"a","message_id":"m","payload":{"v":""#.utf8) + [0xED, 0xA0, 0x80]
            + Array(#""}}"#.utf8)
        for (name, body) in [("UTF-16", utf16), ("a UTF-8 surrogate", invalid)] {
            let (_, problems) = disagreements(
                Sample(category: name, body: body, expectation: .refused(["UTF-8", "not JSON"])))
            #expect(problems.isEmpty, "\(name): \(problems.joined(separator: "; "))")
        }
    }

    @Test("a notification at the depth limit decodes on a 512 KiB stack, both ways and in an envelope")
    func smallStack() async {
        // The outermost object, 63 pairs of an object and an array, and an empty array: 128 levels.
        let pairs = (NotificationScanner.maxDepth - 2) / 2
        let deep =
            #"{"event_type":"a","message_id":"m","x":"# + String(repeating: #"{"a":["#, count: pairs) + "[]"
            + String(repeating: "]}", count: pairs) + "}"
        let bodies = [Array(deep.utf8), Array(Self.envelope(deep).utf8)]
        let decoded = await withCheckedContinuation { (continuation: CheckedContinuation<[Int], Never>) in
            let thread = Thread {
                let counts = bodies.map { body -> Int in
                    let events =
                        ((try? NotificationDecoder.decode(body)) ?? [])
                        + ((try? NotificationDecoder.decodeSlowlyForTesting(body)) ?? [])
                    // `body` decodes the whole tree with Foundation, recursively.
                    return events.filter { $0.body != .null }.count
                }
                continuation.resume(returning: counts)
            }
            thread.stackSize = 512 << 10
            thread.start()
        }
        #expect(decoded == [2, 2])
    }
}
