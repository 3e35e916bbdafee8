import Delivery
import Foundation
import HeraldModel
import Notifications

/// One subscription as the index keeps it: what delivering to it needs (made once, not per
/// message) and what matching reads, not the whole subscription (no audit fields, no pattern
/// text). Shared by every index that holds it, so a registry change recompiles only what changed.
public final class SubscriptionRoute: Sendable {
    public let id: String
    /// Where its messages go, with the credentials to post them.
    public let target: ZaqarTarget
    public var project: String { target.project }
    /// Seconds Zaqar keeps each message.
    public let messageTTL: Int
    /// It takes events as they came (an admin's all-projects subscription), not redacted.
    public let unredacted: Bool
    public let format: MessageFormat
    /// Made by an admin for every project's events.
    public let allProjects: Bool
    /// Also its project's actions on other projects' resources (`include_actor`).
    let includeActor: Bool
    /// The include patterns and the exclusions (without their `!`), as bytes.
    let includes: [[UInt8]]
    let exclusions: [[UInt8]]
    /// Its conditions, each path split and operand parsed once.
    let conditions: [CompiledCondition]
    let resourceID: String?
    let origin: Origin
    /// It takes every event its patterns take: no origin, resource id or condition to check, so
    /// a candidate list of such routes is the answer as it stands (no copy per event).
    let takesEveryCandidate: Bool

    /// - Parameter defaultZaqarURL: the node's Zaqar, for a subscription that names none.
    public convenience init(_ subscription: Subscription, defaultZaqarURL: String) {
        var patterns: [String: [UInt8]] = [:]
        var paths: [String: LookupPath] = [:]
        self.init(subscription, defaultZaqarURL: defaultZaqarURL, patterns: &patterns, paths: &paths)
    }

    /// - Parameters:
    ///   - patterns: byte forms of patterns other routes already use, shared instead of copied; the
    ///     new ones are added.
    ///   - paths: the same for the fields conditions read.
    init(
        _ subscription: Subscription, defaultZaqarURL: String, patterns: inout [String: [UInt8]],
        paths: inout [String: LookupPath]
    ) {
        func bytes(_ pattern: Substring) -> [UInt8] {
            let text = String(pattern)
            if let known = patterns[text] { return known }
            let made = Array(text.utf8)
            patterns[text] = made
            return made
        }
        id = subscription.id
        target = subscription.zaqarTarget(defaultURL: defaultZaqarURL)
        messageTTL = subscription.messageTTL
        unredacted = subscription.unredacted == true
        format = subscription.format ?? .herald
        allProjects = subscription.allProjects
        includeActor = subscription.includeActor == true && !subscription.allProjects
        includes = subscription.eventTypes.filter { !$0.hasPrefix("!") }.map { bytes(Substring($0)) }
        exclusions = subscription.eventTypes.filter { $0.hasPrefix("!") }.map { bytes($0.dropFirst()) }
        conditions = subscription.conditions.map { CompiledCondition($0, paths: &paths) }
        resourceID = subscription.resourceID
        origin = subscription.origin ?? .any
        takesEveryCandidate = origin == .any && resourceID == nil && conditions.isEmpty
    }

    /// Whether the event meets what the patterns do not decide: origin, resource id, conditions.
    @inline(__always)
    func takes(_ event: NotificationEvent, _ fields: inout EventFields) -> Bool {
        if takesEveryCandidate { return true }
        guard origin.takes(fromCeilometer: event.fromCeilometer),
            resourceID == nil || resourceID == event.resourceID
        else { return false }
        for condition in conditions where !condition.holds(&fields) { return false }
        return true
    }
}

/// The registry compiled for matching. A registry change makes a new index (`updated`) from
/// the routes of the old one and the changed subscriptions, and swaps it in: matching never
/// pauses, and neither the index nor the registry watch keeps decoded subscriptions.
///
/// Patterns are globs in the Ceilometer/Aodh (fnmatch) sense: `*` matches any run
/// of characters, dots included; `?` one character; a leading `!` excludes. Each
/// include pattern is filed under its literal leading dot-segments (those before the
/// first wildcard), per project, so an event looks only at the buckets named by its
/// own type's prefixes (`""`, `compute`, `compute.instance`, ...) of its own project
/// and of the all-projects subscriptions: the cost follows the patterns that could
/// match, not the number of subscriptions.
public struct SubscriptionIndex: Sendable {
    /// An include pattern of a route: `routes[route].includes[pattern]`.
    struct Entry: Sendable {
        var route: Int32
        var pattern: Int32
    }

    /// One scope's include patterns: literal prefix → entries. Its number keys the candidate
    /// cache, which so hashes a number instead of a project id.
    struct Scope: Sendable {
        var number: Int32
        var byPrefix: [String: [Entry]] = [:]
    }

    /// project (nil: all-projects subscriptions) → its patterns.
    private var buckets: [String?: Scope] = [:]
    /// `buckets[nil]`, kept apart: every event looks at it.
    private var allProjectsScope: Scope?
    /// The same for subscriptions that also take their project's actions on other projects'
    /// resources (`include_actor`), by that project: matched against the event's actor.
    private var actorBuckets: [String?: Scope] = [:]
    /// Every subscription, in id order (looked up by binary search).
    private let routes: [SubscriptionRoute]
    /// The node's Zaqar, for subscriptions that name none.
    public let defaultZaqarURL: String
    /// Which subscriptions' patterns take an event type, for the scopes an event meets (its
    /// owner's, the all-projects ones, its acting project's): globs are run once per (scopes,
    /// event type), not once per event, and an event costs one cache lookup. OpenStack has a few
    /// hundred event types and only events that meet a scope with subscriptions are cached; the
    /// cache keeps two generations (`BoundedCache`): what is asked for again stays.
    private let candidates = CandidateCache()

    /// - Parameters:
    ///   - subscriptions: read once, one at a time: a lazy sequence that decodes each as it is
    ///     read never holds them all (the index keeps only routes).
    ///   - defaultZaqarURL: the node's Zaqar, for subscriptions that name none.
    public init(_ subscriptions: some Sequence<Subscription>, defaultZaqarURL: String) {
        var patterns: [String: [UInt8]] = [:]
        var paths: [String: LookupPath] = [:]
        var routes: [SubscriptionRoute] = []
        routes.reserveCapacity(subscriptions.underestimatedCount)
        for subscription in subscriptions {
            routes.append(
                SubscriptionRoute(subscription, defaultZaqarURL: defaultZaqarURL, patterns: &patterns, paths: &paths))
        }
        self.init(routes: routes, defaultZaqarURL: defaultZaqarURL)
    }

    private init(routes unsorted: [SubscriptionRoute], defaultZaqarURL: String) {
        self.defaultZaqarURL = defaultZaqarURL
        // One route per id (the registry has no two; a record written around it could).
        var routes: [SubscriptionRoute] = []
        routes.reserveCapacity(unsorted.count)
        for route in unsorted.sorted(by: { $0.id < $1.id }) where routes.last?.id != route.id { routes.append(route) }
        self.routes = routes
        for (index, route) in routes.enumerated() {
            let scope: String? = route.allProjects ? nil : route.project
            for (number, pattern) in route.includes.enumerated() {
                let entry = Entry(route: Int32(truncatingIfNeeded: index), pattern: Int32(truncatingIfNeeded: number))
                let prefix = Self.literalPrefix(pattern)
                // A new scope is numbered by how many came before it (the default is used only then).
                let scopeNumber = Int32(truncatingIfNeeded: buckets.count)
                buckets[scope, default: Scope(number: scopeNumber)].byPrefix[prefix, default: []].append(entry)
                if route.includeActor {
                    let actorScopeNumber = Int32(truncatingIfNeeded: actorBuckets.count)
                    actorBuckets[route.project, default: Scope(number: actorScopeNumber)].byPrefix[prefix, default: []]
                        .append(entry)
                }
            }
        }
        allProjectsScope = buckets[nil]
    }

    /// This index with the registry's changes applied: `changes` by id, nil for a deleted
    /// subscription. Unchanged subscriptions keep their routes; nothing is decoded again.
    public func updated(with changes: [String: Subscription?]) -> SubscriptionIndex {
        var patterns: [String: [UInt8]] = [:]
        var paths: [String: LookupPath] = [:]
        var routes = self.routes.filter { changes[$0.id] == nil }
        for case let subscription? in changes.values {
            routes.append(
                SubscriptionRoute(subscription, defaultZaqarURL: defaultZaqarURL, patterns: &patterns, paths: &paths))
        }
        return SubscriptionIndex(routes: routes, defaultZaqarURL: defaultZaqarURL)
    }

    public var count: Int { routes.count }

    /// The subscription with this id, if the registry has it.
    public func route(id: String) -> SubscriptionRoute? {
        var low = 0
        var high = routes.count
        while low < high {
            let middle = (low + high) / 2
            if routes[middle].id < id { low = middle + 1 } else { high = middle }
        }
        return low < routes.count && routes[low].id == id ? routes[low] : nil
    }

    /// The subscriptions this event reaches: its owner's, the all-projects ones (an event with
    /// no owner reaches only those), and, when another project acted, that project's
    /// subscriptions with `include_actor`; whose patterns, resource id and conditions hold.
    public func matches(_ event: NotificationEvent) -> [SubscriptionRoute] {
        guard let taken = scopeCandidates(eventType: event.eventType, project: event.project, actor: event.actorProject)
        else { return [] }
        // The event's fields as conditions read them, parsed once per event however many read them.
        var fields = EventFields(event: event)
        // One scope with candidates (the usual case): its list, shared by every event of the type,
        // is the answer unless one of its routes refuses the event.
        if taken.everyProject.isEmpty, taken.actor.isEmpty { return Self.taking(taken.owner, event, &fields) }
        if taken.owner.isEmpty, taken.actor.isEmpty { return Self.taking(taken.everyProject, event, &fields) }
        if taken.owner.isEmpty, taken.everyProject.isEmpty { return Self.taking(taken.actor, event, &fields) }
        var result: [SubscriptionRoute] = []
        result.reserveCapacity(taken.owner.count + taken.everyProject.count + taken.actor.count)
        for route in taken.owner where route.takes(event, &fields) { result.append(route) }
        for route in taken.everyProject where route.takes(event, &fields) { result.append(route) }
        for route in taken.actor where route.takes(event, &fields) { result.append(route) }
        return result
    }

    /// Whether an event of this type, owner and acting project can meet a subscription at all,
    /// by the subscriptions' projects and patterns alone (no condition, origin or resource id is
    /// asked): false lets a node settle the event without decoding it. `matches` of such an
    /// event is never empty for this reason alone.
    public func mayMatch(eventType: String, project: String?, actorProject: String?) -> Bool {
        scopeCandidates(eventType: eventType, project: project, actor: actorProject).map { !$0.isEmpty } ?? false
    }

    /// `mayMatch` when it is known without running a pattern (the scopes, then the candidate
    /// cache); nil when the patterns would have to be run. For a thread that must not wait.
    public func mayMatchIfKnown(eventType: String, project: String?, actorProject: String?) -> Bool? {
        switch scopeCandidates(eventType: eventType, project: project, actor: actorProject, computing: false) {
        case .none: return false
        case .some(.none): return nil
        case .some(.some(let taken)): return !taken.isEmpty
        }
    }

    /// The routes whose projects and patterns take an event of this type, owner and acting
    /// project, per scope; nil when no scope it meets has a subscription.
    private func scopeCandidates(eventType: String, project: String?, actor: String?) -> CandidateCache.Candidates? {
        scopeCandidates(eventType: eventType, project: project, actor: actor, computing: true) ?? nil
    }

    /// As above; without `computing`, `.some(nil)` where the patterns would have to be run.
    private func scopeCandidates(
        eventType: String, project: String?, actor: String?, computing: Bool
    ) -> CandidateCache.Candidates?? {
        let owner = project.flatMap { buckets[$0] }
        let everyProject = allProjectsScope
        var acting: Scope?
        if let actor, actor != project { acting = actorBuckets[actor] }
        // Most events of a large cloud meet no subscription: no cache, no allocation.
        if owner == nil, everyProject == nil, acting == nil { return .none }
        let key = CandidateCache.Key(owner: owner?.number ?? -1, actor: acting?.number ?? -1, eventType: eventType)
        // Without computing (the AMQP connection's thread), a look that moves nothing.
        if let known = computing ? candidates.get(key) : candidates.peek(key) { return .some(known) }
        guard computing else { return .some(nil) }
        return .some(candidates.put(key, patternCandidates(owner, everyProject, acting, eventType)))
    }

    /// The routes of `list` that take the event: `list` itself when every one does.
    private static func taking(
        _ list: [SubscriptionRoute], _ event: NotificationEvent, _ fields: inout EventFields
    ) -> [SubscriptionRoute] {
        var index = 0
        while index < list.count, list[index].takes(event, &fields) { index += 1 }
        if index == list.count { return list }
        var result = Array(list[..<index])
        result.reserveCapacity(list.count - 1)
        for route in list[(index + 1)...] where route.takes(event, &fields) { result.append(route) }
        return result
    }

    /// The routes whose patterns take `eventType`, per scope an event meets. The all-projects
    /// list is made once per event type and shared by every entry that holds it.
    private func patternCandidates(
        _ owner: Scope?, _ everyProject: Scope?, _ acting: Scope?, _ eventType: String
    ) -> CandidateCache.Candidates {
        var shared: [SubscriptionRoute] = []
        if let everyProject {
            shared =
                candidates.everyProject(eventType)
                ?? candidates.putEveryProject(eventType, patternMatches(everyProject.byPrefix, eventType: eventType))
        }
        return CandidateCache.Candidates(
            owner: owner.map { patternMatches($0.byPrefix, eventType: eventType) } ?? [], everyProject: shared,
            actor: acting.map { patternMatches($0.byPrefix, eventType: eventType) } ?? [])
    }

    /// The subscriptions of one scope whose include patterns take `eventType` and whose
    /// exclusions do not, each once, in index order.
    private func patternMatches(_ byPrefix: [String: [Entry]], eventType: String) -> [SubscriptionRoute] {
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
            for entry in byPrefix[prefix] ?? [] where !seen.contains(Int(entry.route)) {
                let route = routes[Int(entry.route)]
                guard Glob.matches(route.includes[Int(entry.pattern)], type) else { continue }
                seen.insert(Int(entry.route))
                if route.exclusions.contains(where: { Glob.matches($0, type) }) { continue }
                taken.append(Int(entry.route))
            }
        }
        return taken.sorted().map { routes[$0] }
    }

    /// The dot-segments before the first one with a wildcard: `compute.instance.*` → `compute.instance`.
    static func literalPrefix(_ pattern: [UInt8]) -> String {
        literalPrefix(String(decoding: pattern, as: UTF8.self))
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

/// Pattern results per (owner's scope, acting project's scope, event type), shared by the copies
/// of one index.
final class CandidateCache: Sendable {
    struct Key: Hashable, Sendable {
        /// The owner's scope number in its index (`SubscriptionIndex.Scope`), -1 for none.
        var owner: Int32
        /// The acting project's scope number among the `include_actor` scopes, -1 for none.
        var actor: Int32
        var eventType: String
    }

    /// The routes whose patterns take an event type, by scope, in the order events get them: the
    /// owner's subscriptions, the all-projects ones, the acting project's `include_actor` ones.
    /// No route is in two of these (an all-projects subscription has no `include_actor`, and the
    /// acting project is not the owner).
    struct Candidates: Sendable {
        var owner: [SubscriptionRoute]
        /// The same array (storage) in every entry of one event type.
        var everyProject: [SubscriptionRoute]
        var actor: [SubscriptionRoute]

        /// No route of any scope: no subscription's project and patterns take the event.
        var isEmpty: Bool { owner.isEmpty && everyProject.isEmpty && actor.isEmpty }
    }

    /// Entries kept at most, in each of the two tables: a bound on memory whatever
    /// the bus carries (an entry holds a project's routes; the all-projects routes are held once
    /// per event type).
    static let limit = 20_000
    private let byKey = BoundedCache<Key, Candidates>(limit: CandidateCache.limit)
    private let everyProjectByType = BoundedCache<String, [SubscriptionRoute]>(limit: CandidateCache.limit)

    func get(_ key: Key) -> Candidates? { byKey.get(key) }
    func peek(_ key: Key) -> Candidates? { byKey.peek(key) }

    @discardableResult
    func put(_ key: Key, _ value: Candidates) -> Candidates { byKey.put(key, value) }

    func everyProject(_ eventType: String) -> [SubscriptionRoute]? { everyProjectByType.get(eventType) }

    func putEveryProject(_ eventType: String, _ value: [SubscriptionRoute]) -> [SubscriptionRoute] {
        everyProjectByType.put(eventType, value)
    }
}
