import Foundation
import HeraldModel
import Synchronization

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
    /// The same for subscriptions that also take their project's actions on other projects'
    /// resources (`include_actor`), by that project: matched against the event's actor.
    private var actorBuckets: [String?: [String: [Entry]]] = [:]
    /// Each subscription's resource id filter.
    private let resourceIDs: [String?]
    /// Each subscription's choice of notifications, Ceilometer events or both.
    private let origins: [Origin]
    public let subscriptions: [Subscription]
    private let byID: [String: Int]
    private let exclusions: [[[UInt8]]]
    /// Each subscription's conditions with their paths split and operands parsed, once.
    private let conditions: [[CompiledCondition]]
    /// Which subscriptions' patterns take an event type, per scope: globs are run once per
    /// (scope, event type), not once per event. OpenStack has a few hundred event types and
    /// only scopes with subscriptions are cached; the cache is emptied when it reaches its size.
    private let candidates = CandidateCache()

    public init(_ subscriptions: [Subscription]) {
        self.subscriptions = subscriptions
        byID = Dictionary(subscriptions.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { first, _ in first })
        conditions = subscriptions.map { $0.conditions.map(CompiledCondition.init) }
        resourceIDs = subscriptions.map(\.resourceID)
        origins = subscriptions.map { $0.origin ?? .any }
        var exclusions: [[[UInt8]]] = []
        for (index, subscription) in subscriptions.enumerated() {
            exclusions.append(subscription.eventTypes.filter { $0.hasPrefix("!") }.map { Array($0.dropFirst().utf8) })
            let scope: String? = subscription.allProjects ? nil : subscription.project
            for pattern in subscription.eventTypes where !pattern.hasPrefix("!") {
                let entry = Entry(subscription: index, pattern: Array(pattern.utf8))
                buckets[scope, default: [:]][Self.literalPrefix(pattern), default: []].append(entry)
                if subscription.includeActor == true, !subscription.allProjects {
                    actorBuckets[subscription.project, default: [:]][Self.literalPrefix(pattern), default: []].append(
                        entry)
                }
            }
        }
        self.exclusions = exclusions
    }

    public var count: Int { subscriptions.count }

    /// The subscription with this id, if the registry has it.
    public func subscription(id: String) -> Subscription? {
        byID[id].map { subscriptions[$0] }
    }

    /// The subscriptions this event reaches: its owner's, the all-projects ones (an event with
    /// no owner reaches only those), and, when another project acted, that project's
    /// subscriptions with `include_actor`; whose patterns, resource id and conditions hold.
    public func matches(_ event: NotificationEvent) -> [Subscription] {
        var result: [Subscription] = []
        // The event's fields as conditions read them, parsed once per event however many read them.
        var fields = EventFields(event: event)
        var scopes: [(scope: String?, actor: Bool)] =
            event.project.map { [($0, false), (nil, false)] } ?? [(nil, false)]
        if let actor = event.actorProject, actor != event.project { scopes.append((actor, true)) }
        for (scope, actor) in scopes {
            guard let byPrefix = actor ? actorBuckets[scope] : buckets[scope] else { continue }
            let key = CandidateCache.Key(scope: scope, actor: actor, eventType: event.eventType)
            let taken = candidates.get(key) ?? candidates.put(key, patternMatches(byPrefix, eventType: event.eventType))
            for index in taken
            where origins[index].takes(fromCeilometer: event.fromCeilometer)
                && (resourceIDs[index] == nil || resourceIDs[index] == event.resourceID)
                && conditions[index].allSatisfy({ $0.holds(&fields) })
            {
                result.append(subscriptions[index])
            }
        }
        return result
    }

    /// The subscriptions of one scope whose include patterns take `eventType` and whose
    /// exclusions do not, each once, in index order.
    private func patternMatches(_ byPrefix: [String: [Entry]], eventType: String) -> [Int] {
        let type = Array(eventType.utf8)
        // "", then every dot-prefix of the type: "compute", "compute.instance", ...
        var prefixes = [""]
        for (offset, byte) in type.enumerated() where byte == UInt8(ascii: ".") {
            prefixes.append(String(decoding: type[..<offset], as: UTF8.self))
        }
        prefixes.append(eventType)
        // A subscription with several include patterns can come up more than once.
        var seen = Set<Int>()
        var taken: [Int] = []
        for prefix in prefixes {
            for entry in byPrefix[prefix] ?? [] where !seen.contains(entry.subscription) {
                guard Glob.matches(entry.pattern, type) else { continue }
                seen.insert(entry.subscription)
                if exclusions[entry.subscription].contains(where: { Glob.matches($0, type) }) { continue }
                taken.append(entry.subscription)
            }
        }
        return taken.sorted()
    }

    /// The dot-segments before the first one with a wildcard: `compute.instance.*` → `compute.instance`.
    static func literalPrefix(_ pattern: String) -> String {
        var literal: [Substring] = []
        let segments = pattern.split(separator: ".", omittingEmptySubsequences: false)
        for (index, segment) in segments.enumerated() {
            if segment.contains("*") || segment.contains("?") { break }
            // The last segment is literal only if the whole pattern is: `compute.instance` files under itself.
            if index == segments.count - 1 {
                literal.append(segment)
                break
            }
            literal.append(segment)
        }
        return literal.joined(separator: ".")
    }
}

/// Pattern results per (scope, event type), shared by the copies of one index.
final class CandidateCache: Sendable {
    struct Key: Hashable, Sendable {
        var scope: String?
        /// The scope is the acting project (subscriptions with include_actor).
        var actor: Bool
        var eventType: String
    }

    /// Entries kept before the cache starts over: a bound on memory whatever the bus carries.
    static let limit = 20_000
    private let entries = Mutex<[Key: [Int]]>([:])

    func get(_ key: Key) -> [Int]? {
        entries.withLock { $0[key] }
    }

    @discardableResult
    func put(_ key: Key, _ value: [Int]) -> [Int] {
        entries.withLock { entries in
            if entries.count >= Self.limit { entries.removeAll(keepingCapacity: true) }
            entries[key] = value
        }
        return value
    }
}
