import Foundation
import HeraldModel

/// The registry compiled for matching, rebuilt on every registry change (build a
/// new one and swap it in; matching never pauses).
///
/// Patterns are globs in the Ceilometer/Aodh (fnmatch) sense: `*` matches any run
/// of characters, dots included; `?` one character; a leading `!` excludes. Each
/// include pattern is filed under its literal leading dot-segments (those before the
/// first wildcard), per project, so an event looks only at the buckets named by its
/// own type's prefixes (`""`, `compute`, `compute.instance`, ...) of its own project
/// and of the all-projects subscriptions: the cost follows the patterns that could
/// match, not the number of subscriptions.
public struct SubscriptionIndex: Sendable {
    struct Entry: Sendable {
        var subscription: Int
        var pattern: [UInt8]
    }

    /// project (nil: all-projects subscriptions) → literal prefix → entries.
    private var buckets: [String?: [String: [Entry]]] = [:]
    public let subscriptions: [Subscription]
    private let exclusions: [[[UInt8]]]
    /// Each subscription's condition fields, split once: `payload.state` → [payload, state].
    private let conditionPaths: [[[String]]]

    public init(_ subscriptions: [Subscription]) {
        self.subscriptions = subscriptions
        conditionPaths = subscriptions.map { $0.conditions.map { $0.field.split(separator: ".").map(String.init) } }
        var exclusions: [[[UInt8]]] = []
        for (index, subscription) in subscriptions.enumerated() {
            exclusions.append(subscription.eventTypes.filter { $0.hasPrefix("!") }.map { Array($0.dropFirst().utf8) })
            let scope: String? = subscription.allProjects ? nil : subscription.project
            for pattern in subscription.eventTypes where !pattern.hasPrefix("!") {
                buckets[scope, default: [:]][Self.literalPrefix(pattern), default: []].append(Entry(subscription: index, pattern: Array(pattern.utf8)))
            }
        }
        self.exclusions = exclusions
    }

    public var count: Int { subscriptions.count }

    /// The subscriptions this event reaches: its project's and the all-projects ones
    /// (an event with no project reaches only the latter), whose patterns and conditions hold.
    public func matches(_ event: NotificationEvent) -> [Subscription] {
        let type = Array(event.eventType.utf8)
        // "", then every dot-prefix of the type: "compute", "compute.instance", ...
        var prefixes = [""]
        for (offset, byte) in type.enumerated() where byte == UInt8(ascii: ".") {
            prefixes.append(String(decoding: type[..<offset], as: UTF8.self))
        }
        prefixes.append(event.eventType)
        // A subscription with several include patterns can come up more than once.
        var seen: [Int] = []
        var result: [Subscription] = []
        let scopes: [String?] = event.project.map { [$0, nil] } ?? [nil]
        for scope in scopes {
            guard let byPrefix = buckets[scope] else { continue }
            for prefix in prefixes {
                for entry in byPrefix[prefix] ?? [] where !seen.contains(entry.subscription) {
                    guard Glob.matches(entry.pattern, type) else { continue }
                    seen.append(entry.subscription)
                    if exclusions[entry.subscription].contains(where: { Glob.matches($0, type) }) { continue }
                    let subscription = subscriptions[entry.subscription]
                    let paths = conditionPaths[entry.subscription]
                    if subscription.conditions.indices.allSatisfy({ ConditionEvaluator.holds(subscription.conditions[$0], actual: event.value(atPath: paths[$0])) }) {
                        result.append(subscription)
                    }
                }
            }
        }
        return result
    }

    /// The dot-segments before the first one with a wildcard: `compute.instance.*` → `compute.instance`.
    static func literalPrefix(_ pattern: String) -> String {
        var literal: [Substring] = []
        let segments = pattern.split(separator: ".", omittingEmptySubsequences: false)
        for (index, segment) in segments.enumerated() {
            if segment.contains("*") || segment.contains("?") { break }
            // The last segment is literal only if the whole pattern is: `compute.instance` files under itself.
            if index == segments.count - 1 { literal.append(segment); break }
            literal.append(segment)
        }
        return literal.joined(separator: ".")
    }
}

/// fnmatch-style matching of `*` and `?` over bytes.
enum Glob {
    static func matches(_ pattern: [UInt8], _ text: [UInt8]) -> Bool {
        var p = 0, t = 0
        var star = -1, mark = 0
        while t < text.count {
            if p < pattern.count && (pattern[p] == UInt8(ascii: "?") || pattern[p] == text[t]) {
                p += 1
                t += 1
            } else if p < pattern.count && pattern[p] == UInt8(ascii: "*") {
                star = p
                mark = t
                p += 1
            } else if star >= 0 {
                p = star + 1
                mark += 1
                t = mark
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == UInt8(ascii: "*") { p += 1 }
        return p == pattern.count
    }
}

/// Conditions compared by type: numbers as numbers, datetimes as instants (when both
/// sides read as one), other strings as text.
enum ConditionEvaluator {
    static func holds(_ condition: Condition, for event: NotificationEvent) -> Bool {
        holds(condition, actual: event.value(at: condition.field))
    }

    /// - Parameter actual: the event's value at the condition's field, nil when absent.
    static func holds(_ condition: Condition, actual: JSONValue?) -> Bool {
        switch condition.op {
        case .exists:
            let wanted: Bool
            if case .bool(let flag)? = condition.value { wanted = flag } else { wanted = true }
            return (actual != nil && actual != .null) == wanted
        case .eq:
            guard let actual, let expected = condition.value else { return false }
            return equal(actual, expected)
        case .ne:
            guard let expected = condition.value else { return false }
            guard let actual else { return true }
            return !equal(actual, expected)
        case .in:
            guard let actual, case .array(let options)? = condition.value else { return false }
            return options.contains { equal(actual, $0) }
        case .prefix:
            guard case .string(let text)? = actual, case .string(let prefix)? = condition.value else { return false }
            return text.hasPrefix(prefix)
        case .lt, .le, .gt, .ge:
            guard let actual, let expected = condition.value, let order = compare(actual, expected) else { return false }
            switch condition.op {
            case .lt: return order < 0
            case .le: return order <= 0
            case .gt: return order > 0
            default: return order >= 0
            }
        }
    }

    static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        if let order = compare(a, b) { return order == 0 }
        return a == b
    }

    /// -1, 0, 1, or nil when the two are not comparable.
    static func compare(_ a: JSONValue, _ b: JSONValue) -> Int? {
        switch (a, b) {
        case (.number(let x), .number(let y)):
            return x < y ? -1 : (x > y ? 1 : 0)
        case (.string(let x), .number(let y)):
            guard let value = Double(x) else { return nil }
            return value < y ? -1 : (value > y ? 1 : 0)
        case (.number(let x), .string(let y)):
            guard let value = Double(y) else { return nil }
            return x < value ? -1 : (x > value ? 1 : 0)
        case (.string(let x), .string(let y)):
            if let dx = Timestamps.parse(x), let dy = Timestamps.parse(y) {
                return dx < dy ? -1 : (dx > dy ? 1 : 0)
            }
            return x < y ? -1 : (x > y ? 1 : 0)
        case (.bool(let x), .bool(let y)):
            return x == y ? 0 : nil
        default:
            return nil
        }
    }
}

/// OpenStack timestamps: `2026-11-24 16:37:41.367798` (space, no zone: UTC) and ISO 8601 forms.
enum Timestamps {
    static func parse(_ text: String) -> Double? {
        guard text.count >= 10, text.utf8.first.map({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) == true else { return nil }
        var normalized = text.replacingOccurrences(of: " ", with: "T")
        if normalized.count == 10 { normalized += "T00:00:00" }
        var fraction = 0.0
        if let dot = normalized.firstIndex(of: ".") {
            let digits = normalized[normalized.index(after: dot)...].prefix { $0.isNumber }
            fraction = Double("0." + digits) ?? 0
            normalized = String(normalized[..<dot]) + normalized[normalized.index(after: dot)...].drop { $0.isNumber }
        }
        if !(normalized.hasSuffix("Z") || normalized.dropFirst(19).contains("+") || normalized.dropFirst(19).contains("-")) {
            normalized += "Z"
        }
        guard let date = ISO8601DateFormatter().date(from: normalized) else { return nil }
        return date.timeIntervalSince1970 + fraction
    }
}
