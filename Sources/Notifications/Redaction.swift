import Foundation
import HeraldModel
import Yams

/// What is cut from an event before a tenant sees it: members OpenStack's own APIs show to
/// admins only (the host a server runs on, a port's binding), and what Ceilometer adds for
/// itself (the raw notification with the caller's token, its signature).
///
/// ```yaml
/// defaults: true                            # the shipped rules apply too (the default)
/// rules:
///   - event_types: ["compute.instance.*"]   # globs; a leading ! excludes
///     remove: ["payload.image_meta"]        # the member goes
///     strip_host: ["publisher_id"]          # "compute.host1" -> "compute"
///     keep: ["payload.node"]                # never removed for these types
/// ```
///
/// Paths are written as the event definitions write them (`payload.'nova_object.data'.host`),
/// and each segment is a glob over object keys (`payload.*.binding:*`). An array on the way is
/// transparent: the segment applies to each element, so `payload.ports.binding:*` reaches every
/// port of a list. In a Ceilometer event, `traits.<glob>` names traits (`[name, dtype, value]`
/// elements of the top-level `traits` list): `remove` drops the trait, `strip_host` cuts its
/// value. Paths do not reach into a Ceilometer event's traits otherwise.
///
/// The event's JSON is copied in one pass, byte for byte except what is cut: numbers, key
/// order, whitespace and escapes stay as they came.
public struct RedactionRules: Sendable {
    public struct Rule: Sendable, Equatable {
        /// Event type globs; a leading `!` excludes.
        public var patterns: [String]
        /// Members removed whole.
        public var remove: [FieldPath]
        /// String members cut before their first `.` or `:` (the host part of `service.host`).
        public var stripHost: [FieldPath]
        /// Paths no rule removes or strips for the event types this rule takes.
        public var keep: [FieldPath]
        /// Where it was written (`defaults:5`, `/etc/herald/redaction.yaml:3`), for messages.
        public var origin: String

        public init(
            patterns: [String], remove: [FieldPath] = [], stripHost: [FieldPath] = [], keep: [FieldPath] = [],
            origin: String
        ) {
            self.patterns = patterns
            self.remove = remove
            self.stripHost = stripHost
            self.keep = keep
            self.origin = origin
        }

        /// Whether some include pattern matches the event type and no `!` pattern does.
        func takes(_ type: [UInt8]) -> Bool {
            var included = false
            for pattern in patterns {
                if pattern.hasPrefix("!") {
                    if Glob.matches(Array(pattern.utf8.dropFirst()), type) { return false }
                } else if !included {
                    included = Glob.matches(Array(pattern.utf8), type)
                }
            }
            return included
        }
    }

    public let rules: [Rule]
    /// The compiled paths per event type seen, bounded (`BoundedCache`), shared by copies.
    private let plans = BoundedCache<RedactionPlanKey, RedactionPlan>(limit: 10_000)

    public init(_ rules: [Rule]) {
        self.rules = rules
    }

    /// The shipped rules (`DefaultRedactionRules.yaml`).
    public static let defaults: RedactionRules = {
        do {
            return try RedactionRules(yaml: DefaultRedactionRules.yaml, origin: "defaults", includeDefaults: false)
        } catch {
            // The defaults are a constant checked by the tests; a mistake there is Herald's bug.
            fatalError("the shipped redaction rules do not parse: \(error)")
        }
    }()

    /// The rules of an operator's file (`HERALD_REDACTION_FILE`), with the shipped ones unless
    /// the file says `defaults: false`.
    /// - Parameter path: The file, at most 1 MiB of YAML.
    /// - Throws: `RedactionRulesError` naming the file, the line and what is wrong.
    public static func load(path: String) throws -> RedactionRules {
        let text: String
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            if let size = attributes[.size] as? Int, size > maxFileBytes {
                throw RedactionRulesError(origin: path, line: nil, message: "the file is \(size) bytes; at most 1 MiB")
            }
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch let error as RedactionRulesError {
            throw error
        } catch {
            throw RedactionRulesError(
                origin: path, line: nil, message: "cannot be read (\(SafeText.clean(error.localizedDescription)))")
        }
        return try RedactionRules(yaml: text, origin: path, includeDefaults: true)
    }

    /// Rules from YAML text in the operator file's format.
    /// - Parameters:
    ///   - yaml: The text.
    ///   - origin: Where it comes from (a path, or `defaults`), for messages and `Rule.origin`.
    ///   - includeDefaults: Whether the shipped rules are added, unless the text says `defaults: false`.
    /// - Throws: `RedactionRulesError` naming the origin, the line and the field.
    public init(yaml: String, origin: String, includeDefaults: Bool) throws {
        let (rules, defaults) = try Self.parse(yaml: yaml, origin: origin)
        self.init(includeDefaults && defaults ? rules + Self.defaults.rules : rules)
    }

    // MARK: Redaction

    /// The event's JSON without what the rules for its type cut.
    /// - Parameter event: The event; its `json` is what the decoder accepted.
    /// - Returns: nil when nothing in the event is removed or changed.
    /// - Throws: `RedactionError` when the JSON cannot be walked (malformed, or nested deeper
    ///   than `RedactionRules.maxDepth`).
    public func redact(_ event: NotificationEvent) throws(RedactionError) -> Redacted? {
        let plan = plan(for: event.eventType, ceilometer: event.fromCeilometer)
        guard !plan.isEmpty else { return nil }
        return try event.json.withUnsafeBufferPointer { (input) throws(RedactionError) -> Redacted? in
            var walker = RedactionWalker(input: input, plan: plan, ceilometer: event.fromCeilometer)
            return try walker.run()
        }
    }

    /// The remove and strip paths for an event type: those of every rule taking it, without
    /// those any of them keeps.
    public func paths(for eventType: String) -> (remove: [FieldPath], stripHost: [FieldPath]) {
        let type = Array(eventType.utf8)
        var remove: [FieldPath] = []
        var stripHost: [FieldPath] = []
        var keep: [FieldPath] = []
        for rule in rules where rule.takes(type) {
            remove += rule.remove
            stripHost += rule.stripHost
            keep += rule.keep
        }
        func effective(_ paths: [FieldPath]) -> [FieldPath] {
            var result: [FieldPath] = []
            for path in paths where !keep.contains(path) && !result.contains(path) { result.append(path) }
            return result
        }
        return (effective(remove), effective(stripHost))
    }

    func plan(for eventType: String, ceilometer: Bool) -> RedactionPlan {
        let key = RedactionPlanKey(eventType: eventType, ceilometer: ceilometer)
        if let plan = plans.get(key) { return plan }
        let paths = paths(for: eventType)
        let plan = RedactionPlan(remove: paths.remove, stripHost: paths.stripHost, ceilometer: ceilometer)
        plans.put(key, plan)
        return plan
    }

    /// The deepest nesting of arrays and objects walked, the outermost included.
    public static let maxDepth = 130

    // MARK: Parsing

    static let maxFileBytes = 1 << 20
    static let maxRules = 1_000
    static let maxPatterns = 64
    static let maxPaths = 64

    static func parse(yaml: String, origin: String) throws -> (rules: [Rule], defaults: Bool) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw RedactionRulesError(
                origin: origin, line: Self.line(of: error),
                message: "not YAML: \(SafeText.clean("\(error)", limit: 200))")
        } catch {
            throw RedactionRulesError(
                origin: origin, line: nil, message: "not YAML: \(SafeText.clean("\(error)", limit: 200))")
        }
        guard let root else { return ([], true) }
        guard let mapping = root.mapping else {
            throw RedactionRulesError(
                origin: origin, line: root.mark?.line,
                message: "a redaction file is a mapping with 'rules' and optionally 'defaults'")
        }
        var rules: [Rule] = []
        var defaults = true
        var seen: Set<String> = []
        for (key, value) in mapping {
            let name = key.string ?? "?"
            guard seen.insert(name).inserted else {
                throw RedactionRulesError(
                    origin: origin, line: key.mark?.line, message: "'\(SafeText.clean(name, limit: 60))' is given twice"
                )
            }
            switch name {
            case "defaults":
                guard value.scalar != nil, let flag = value.bool else {
                    throw RedactionRulesError(
                        origin: origin, line: value.mark?.line, message: "defaults must be true or false")
                }
                defaults = flag
            case "rules":
                guard let sequence = value.sequence else {
                    throw RedactionRulesError(
                        origin: origin, line: value.mark?.line, message: "rules must be a list of rules")
                }
                guard sequence.count <= maxRules else {
                    throw RedactionRulesError(
                        origin: origin, line: value.mark?.line, message: "\(sequence.count) rules; at most \(maxRules)")
                }
                rules = try sequence.enumerated().map { index, node in try rule(node, index: index, origin: origin) }
            default:
                throw RedactionRulesError(
                    origin: origin, line: key.mark?.line,
                    message:
                        "unknown key '\(SafeText.clean(name, limit: 60))'; a redaction file has 'rules' and 'defaults'")
            }
        }
        return (rules, defaults)
    }

    private static func rule(_ node: Node, index: Int, origin: String) throws -> Rule {
        let field = "rules[\(index)]"
        let line = node.mark?.line
        func fail(_ message: String, at node: Node? = nil) -> RedactionRulesError {
            RedactionRulesError(origin: origin, line: node?.mark?.line ?? line, message: message)
        }
        guard let mapping = node.mapping else {
            throw fail("\(field): a rule is a mapping with event_types and remove, strip_host or keep")
        }
        var patterns: [(text: String, node: Node)]?
        var remove: [FieldPath] = []
        var stripHost: [FieldPath] = []
        var keep: [FieldPath] = []
        var seen: Set<String> = []
        for (key, value) in mapping {
            let name = key.string ?? "?"
            guard seen.insert(name).inserted else {
                throw fail("\(field): '\(SafeText.clean(name, limit: 60))' is given twice", at: key)
            }
            switch name {
            case "event_types":
                patterns = try strings(value, field: "\(field).event_types", limit: maxPatterns, origin: origin)
            case "remove": remove = try paths(value, field: "\(field).remove", origin: origin)
            case "strip_host": stripHost = try paths(value, field: "\(field).strip_host", origin: origin)
            case "keep": keep = try paths(value, field: "\(field).keep", origin: origin)
            default:
                throw fail(
                    "\(field): unknown key '\(SafeText.clean(name, limit: 60))'; known: event_types, remove, strip_host, keep",
                    at: key)
            }
        }
        guard let patterns else {
            throw fail("\(field): event_types is required: a list of patterns such as [\"compute.instance.*\"]")
        }
        guard !patterns.isEmpty else { throw fail("\(field).event_types: at least one pattern") }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-*?:")
        for (position, pattern) in patterns.enumerated() {
            let body = pattern.text.hasPrefix("!") ? pattern.text.dropFirst() : Substring(pattern.text)
            guard !body.isEmpty, body.count <= 255, body.allSatisfy({ allowed.contains($0) }) else {
                throw fail(
                    "\(field).event_types[\(position)]: '\(SafeText.clean(pattern.text, limit: 60))' must be letters, digits, '.', '_', '-', ':' and the wildcards '*' '?', optionally after '!'",
                    at: pattern.node)
            }
        }
        guard patterns.contains(where: { !$0.text.hasPrefix("!") }) else {
            throw fail("\(field).event_types has only exclusions")
        }
        guard !(remove.isEmpty && stripHost.isEmpty && keep.isEmpty) else {
            throw fail("\(field): a rule needs at least one path in remove, strip_host or keep")
        }
        return Rule(
            patterns: patterns.map(\.text), remove: remove, stripHost: stripHost, keep: keep,
            origin: "\(origin):\(line ?? 0)")
    }

    private static func strings(
        _ node: Node, field: String, limit: Int, origin: String
    ) throws -> [(text: String, node: Node)] {
        guard let sequence = node.sequence else {
            throw RedactionRulesError(
                origin: origin, line: node.mark?.line, message: "\(field) must be a list of strings")
        }
        guard sequence.count <= limit else {
            throw RedactionRulesError(
                origin: origin, line: node.mark?.line,
                message: "\(field) has \(sequence.count) entries; at most \(limit)")
        }
        return try sequence.enumerated().map { position, item in
            guard item.scalar != nil, let text = item.string else {
                throw RedactionRulesError(
                    origin: origin, line: item.mark?.line, message: "\(field)[\(position)] must be a string")
            }
            return (text, item)
        }
    }

    private static func paths(_ node: Node, field: String, origin: String) throws -> [FieldPath] {
        try strings(node, field: field, limit: maxPaths, origin: origin).enumerated().map { position, item in
            do {
                return try FieldPath(parsing: item.text)
            } catch {
                throw RedactionRulesError(
                    origin: origin, line: item.node.mark?.line, message: "\(field)[\(position)]: \(error)")
            }
        }
    }

    private static func line(of error: YamlError) -> Int? {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _): return mark.line
        default: return nil
        }
    }
}

/// An event's JSON after redaction.
public struct Redacted: Sendable, Equatable {
    public var json: [UInt8]
    /// The rule paths (`FieldPath.description`) that removed or changed something, sorted, each once.
    public var removed: [String]

    public init(json: [UInt8], removed: [String]) {
        self.json = json
        self.removed = removed
    }
}

/// An event's JSON that redaction cannot walk: malformed, or nested too deep. The event cannot
/// be delivered safely and is dead-lettered.
public struct RedactionError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    /// The byte of the event's JSON where it was found.
    public var offset: Int

    public init(_ message: String, offset: Int) {
        self.message = message
        self.offset = offset
    }

    public var description: String { "cannot redact the event: \(message) at byte \(offset)" }
}

/// A redaction file (or the defaults) that cannot be used: where and why.
public struct RedactionRulesError: Error, CustomStringConvertible, Sendable {
    public var origin: String
    public var line: Int?
    public var message: String

    public init(origin: String, line: Int?, message: String) {
        self.origin = origin
        self.line = line
        self.message = message
    }

    public var description: String {
        "\(origin)\(line.map { ":\($0)" } ?? ""): \(message)"
    }
}

/// Herald's shipped redaction rules. An operator's `HERALD_REDACTION_FILE` adds rules, takes
/// paths back with `keep`, or replaces these (`defaults: false`).
public enum DefaultRedactionRules {
    public static let yaml = #"""
        # What OpenStack's APIs show to admins only, cut from every event before delivery.
        rules:
          - event_types: ["*"]
            remove:
              # nova, legacy notifications: the compute host and the hypervisor node a server runs
              # on (the API shows OS-EXT-SRV-ATTR:host / :hypervisor_hostname to admins only).
              - payload.host
              - payload.node
              # nova, versioned notifications: the same two, inside the nova object.
              - "payload.'nova_object.data'.host"
              - "payload.'nova_object.data'.node"
              # neutron: a port's binding:host_id, binding:profile, binding:vif_type and
              # binding:vif_details name the host and its plumbing (admin-only in neutron's policy).
              - "payload.*.binding:*"
              # Ceilometer events: `raw` is the original notification, with the acting user's
              # context and token; `message_signature` is Ceilometer's internal HMAC.
              - raw
              - message_signature
              # Ceilometer traits holding the host and node above.
              - traits.host
              - traits.node
            strip_host:
              # "<service>.<host>" or "<binary>:<host>": the host part names the hypervisor or agent
              # host (compute.compute-3 -> compute, nova-compute:compute-3 -> nova-compute).
              - publisher_id
              - traits.service
          - event_types: ["*"]
            remove:
              # nova: an instance fault's traceback (the API shows a 500 fault's details to admins
              # only), and the legacy payload's image URL, which names the internal glance endpoint.
              - "payload.'nova_object.data'.fault.'nova_object.data'.traceback"
              - payload.image_ref_url
              # neutron: a network's provider attributes and segments (physical network, VLAN id)
              # are admin-only in neutron's policy.
              - "payload.*.provider:*"
              - payload.network.segments
              - payload.networks.segments
              # ironic: a node's driver-internal state (admin-only).
              - "payload.'ironic_object.data'.driver_internal_info"
          - event_types: ["scheduler.*", "compute_task.*"]
            remove:
              # nova's request spec: the hosts and nodes a server was steered to or away from, and
              # the hosts already tried (hypervisor host names), at the top of scheduler events and
              # inside compute_task events; compute_task's reason carries a traceback.
              - "payload.'nova_object.data'.ignore_hosts"
              - "payload.'nova_object.data'.force_hosts"
              - "payload.'nova_object.data'.force_nodes"
              - "payload.'nova_object.data'.requested_destination"
              - "payload.'nova_object.data'.retry"
              - "payload.'nova_object.data'.request_spec.'nova_object.data'.ignore_hosts"
              - "payload.'nova_object.data'.request_spec.'nova_object.data'.force_hosts"
              - "payload.'nova_object.data'.request_spec.'nova_object.data'.force_nodes"
              - "payload.'nova_object.data'.request_spec.'nova_object.data'.requested_destination"
              - "payload.'nova_object.data'.request_spec.'nova_object.data'.retry"
              - "payload.'nova_object.data'.reason.'nova_object.data'.traceback"
          - event_types: ["router.*"]
            remove:
              # neutron: whether a router is distributed or highly available (admin-only).
              - payload.router.distributed
              - payload.router.ha
          - event_types: ["identity.*", "magnum.*"]
            remove:
              # keystone and magnum, CADF: the initiator's client address and user agent (an
              # admin's workstation when an admin changed the tenant's project or its roles),
              # and its credential when one is given; no API shows these to the project.
              - payload.initiator.host
              - payload.initiator.credential
        """#
}

// MARK: - The walk

/// A plan's key: the event type, and whether the event is a Ceilometer event.
struct RedactionPlanKey: Hashable, Sendable {
    var eventType: String
    var ceilometer: Bool
}

/// One event type's paths as a trie of segments, so each key is matched once per path prefix.
/// Nodes are numbered breadth first: node 0 is the root, and node n's children are the nodes
/// `firstChild[n] ..< firstChild[n] + childCount[n]`.
final class RedactionPlan: Sendable {
    enum Action: UInt8, Sendable {
        case none, remove, stripHost
    }

    /// How a segment or trait name is matched.
    enum Pattern: UInt8, Sendable {
        /// Byte for byte.
        case literal
        /// Only `*`: every key.
        case any
        /// With `Glob.matches`.
        case glob

        init(_ pattern: [UInt8]) {
            if pattern.allSatisfy({ $0 == UInt8(ascii: "*") }) {
                self = .any
            } else if pattern.contains(UInt8(ascii: "*")) || pattern.contains(UInt8(ascii: "?")) {
                self = .glob
            } else {
                self = .literal
            }
        }
    }

    struct Trait: Sendable {
        var name: [UInt8]
        var pattern: Pattern
        var action: Action
        var description: String
    }

    let segments: [[UInt8]]
    let patterns: [Pattern]
    let action: [Action]
    let firstChild: [Int32]
    let childCount: [Int32]
    /// The path ending at each node, as `Redacted.removed` names it.
    let descriptions: [String]
    /// A Ceilometer event's `traits.<glob>` paths.
    let traits: [Trait]

    var isEmpty: Bool { childCount[0] == 0 && traits.isEmpty }

    init(remove: [FieldPath], stripHost: [FieldPath], ceilometer: Bool) {
        var segments: [[UInt8]] = [[]]
        var actions: [Action] = [.none]
        var children: [[Int]] = [[]]
        var descriptions = [""]
        var traits: [Trait] = []
        func insert(_ path: FieldPath, _ action: Action) {
            if ceilometer, path.segments.count >= 2, path.segments[0] == "traits" {
                let name = Array(path.segments.dropFirst().joined(separator: ".").utf8)
                if let index = traits.firstIndex(where: { $0.name == name }) {
                    // Removing wins over stripping.
                    if action == .remove { traits[index].action = .remove }
                } else {
                    traits.append(
                        Trait(name: name, pattern: Pattern(name), action: action, description: path.description))
                }
                return
            }
            var node = 0
            for segment in path.segments {
                let bytes = Array(segment.utf8)
                if let next = children[node].first(where: { segments[$0] == bytes }) {
                    node = next
                } else {
                    segments.append(bytes)
                    actions.append(.none)
                    children.append([])
                    descriptions.append("")
                    children[node].append(segments.count - 1)
                    node = segments.count - 1
                }
            }
            if action == .remove || actions[node] == .none { actions[node] = action }
            descriptions[node] = path.description
        }
        for path in remove { insert(path, .remove) }
        for path in stripHost { insert(path, .stripHost) }

        var order = [0]
        var next = 0
        while next < order.count {
            order.append(contentsOf: children[order[next]])
            next += 1
        }
        var renumbered = [Int](repeating: 0, count: order.count)
        for (new, old) in order.enumerated() { renumbered[old] = new }
        self.segments = order.map { segments[$0] }
        patterns = order.map { Pattern(segments[$0]) }
        action = order.map { actions[$0] }
        firstChild = order.map { Int32(children[$0].first.map { renumbered[$0] } ?? 0) }
        childCount = order.map { Int32(children[$0].count) }
        self.descriptions = order.map { descriptions[$0] }
        self.traits = traits
    }

}

/// One pass over an event's JSON: copies what no path reaches in whole ranges, descends only
/// where a path still leads, and drops or rewrites the members the plan names. Recursion is
/// bounded by `RedactionRules.maxDepth`; what lies outside the paths is skipped by a
/// string-aware bracket scanner.
struct RedactionWalker {
    let input: UnsafeBufferPointer<UInt8>
    let plan: RedactionPlan
    let ceilometer: Bool
    // The plan's trie, held here so the walk reads it without going through the class.
    let segments: [[UInt8]]
    let patterns: [RedactionPlan.Pattern]
    let action: [RedactionPlan.Action]
    let firstChild: [Int32]
    let childCount: [Int32]
    var out: [UInt8] = []
    /// `out` holds `input[..<copied]` as redacted so far.
    var copied = 0
    /// A stack of trie nodes; each object walked gets a range of it: the nodes whose children
    /// its keys are matched with.
    var reached: [Int32] = [0]
    /// Trie nodes and traits that removed or changed something.
    var hits: [Int32] = []
    var traitHits: [Int32] = []
    /// The strip paths that matched the member at hand.
    var strips: [Int32] = []
    /// The key at hand: `input[keyRange]` as written; `key` holds its text once unescaped or
    /// once a glob needs it as an array (`keyCopied`).
    var keyRange = 0..<0
    var keyEscaped = false
    var keyCopied = false
    var key: [UInt8] = []
    var text: [UInt8] = []
    /// The open brackets of the value being skipped.
    var brackets: [UInt8]

    init(input: UnsafeBufferPointer<UInt8>, plan: RedactionPlan, ceilometer: Bool) {
        self.input = input
        self.plan = plan
        self.ceilometer = ceilometer
        segments = plan.segments
        patterns = plan.patterns
        action = plan.action
        firstChild = plan.firstChild
        childCount = plan.childCount
        brackets = [UInt8](repeating: 0, count: RedactionRules.maxDepth + 1)
    }

    mutating func run() throws(RedactionError) -> Redacted? {
        out.reserveCapacity(input.count)
        let start = skipSpace(0)
        let end = try value(at: start, depth: 0, reach: 0..<1)
        guard skipSpace(end) == input.count else {
            throw RedactionError("bytes after the JSON value", offset: skipSpace(end))
        }
        guard !hits.isEmpty || !traitHits.isEmpty else { return nil }
        flush(to: input.count)
        var removed: Set<String> = []
        for hit in hits { removed.insert(plan.descriptions[Int(hit)]) }
        for hit in traitHits { removed.insert(plan.traits[Int(hit)].description) }
        return Redacted(json: out, removed: removed.sorted())
    }

    // MARK: Output

    /// Copies the input up to `end`.
    mutating func flush(to end: Int) {
        if end > copied { out.append(contentsOf: UnsafeBufferPointer(rebasing: input[copied..<end])) }
        copied = end
    }

    /// Leaves the input up to `end` out.
    mutating func skip(to end: Int) {
        copied = end
    }

    /// The members of an object (or elements of an array) being walked, for the commas: a
    /// member removed takes the separator before it along, or, before any member is kept, the
    /// one after it; an object left with none is `{}`.
    struct Members {
        let open: Int
        var first = -1
        var previousEnd = -1
        var kept = false
        var removed = false
    }

    mutating func keepMember(_ members: inout Members, start: Int) {
        if members.first < 0 { members.first = start }
        if members.removed && !members.kept {
            // Everything before was removed: the whitespace after the bracket, then this one.
            out.append(contentsOf: UnsafeBufferPointer(rebasing: input[(members.open + 1)..<members.first]))
            skip(to: start)
        }
        members.kept = true
    }

    mutating func dropMember(_ members: inout Members, start: Int, end: Int) {
        if members.first < 0 { members.first = start }
        if members.kept {
            flush(to: members.previousEnd)
        } else if !members.removed {
            flush(to: members.open + 1)
        }
        skip(to: end)
        members.removed = true
    }

    mutating func closeMembers(_ members: Members, at close: Int) {
        if members.removed && !members.kept { skip(to: close) }
    }

    // MARK: Walking

    /// Walks the value at `start` with the trie nodes `reach` (a range of `reached`) leading
    /// into it; returns where it ends.
    mutating func value(at start: Int, depth: Int, reach: Range<Int>) throws(RedactionError) -> Int {
        guard start < input.count else { throw RedactionError("the JSON ends early", offset: start) }
        switch input[start] {
        case UInt8(ascii: "{"): return try object(at: start, depth: depth + 1, reach: reach)
        case UInt8(ascii: "["): return try array(at: start, depth: depth + 1, reach: reach)
        default: return try skipValue(at: start, depth: depth)
        }
    }

    mutating func object(at open: Int, depth: Int, reach: Range<Int>) throws(RedactionError) -> Int {
        guard depth <= RedactionRules.maxDepth else {
            throw RedactionError("nested deeper than \(RedactionRules.maxDepth)", offset: open)
        }
        var members = Members(open: open)
        var i = skipSpace(open + 1)
        guard i < input.count else { throw RedactionError("the JSON ends early", offset: i) }
        if input[i] == UInt8(ascii: "}") { return i + 1 }
        while true {
            guard i < input.count, input[i] == UInt8(ascii: "\"") else {
                throw RedactionError("expected a key", offset: i)
            }
            let keyStart = i
            let (keyEnd, escaped) = try stringEnd(from: i)
            try readKey(from: keyStart + 1, to: keyEnd - 1, escaped: escaped)
            i = skipSpace(keyEnd)
            guard i < input.count, input[i] == UInt8(ascii: ":") else {
                throw RedactionError("expected ':'", offset: i)
            }
            i = skipSpace(i + 1)
            guard i < input.count else { throw RedactionError("the JSON ends early", offset: i) }
            let valueStart = i

            let childStart = reached.count
            var remove = false
            if !strips.isEmpty { strips.removeAll(keepingCapacity: true) }
            for index in reach {
                let node = Int(reached[index])
                let first = Int(firstChild[node])
                for child in first..<(first + Int(childCount[node])) where keyMatches(segments[child], patterns[child])
                {
                    switch action[child] {
                    case .remove:
                        remove = true
                        if !hits.contains(Int32(child)) { hits.append(Int32(child)) }
                    case .stripHost: strips.append(Int32(child))
                    case .none: break
                    }
                    if childCount[child] > 0 { reached.append(Int32(child)) }
                }
            }

            let valueEnd: Int
            let byte = input[valueStart]
            if remove {
                valueEnd = try skipValue(at: valueStart, depth: depth)
                dropMember(&members, start: keyStart, end: valueEnd)
            } else {
                keepMember(&members, start: keyStart)
                if !strips.isEmpty, byte == UInt8(ascii: "\"") {
                    let (end, changed) = try stripHost(at: valueStart)
                    if changed {
                        for strip in strips where !hits.contains(strip) { hits.append(strip) }
                    }
                    valueEnd = end
                } else if depth == 1, ceilometer, !plan.traits.isEmpty, byte == UInt8(ascii: "["),
                    keyMatches(Self.traitsKey, .literal)
                {
                    valueEnd = try traits(at: valueStart, depth: depth + 1)
                } else if reached.count > childStart, byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                    valueEnd = try value(at: valueStart, depth: depth, reach: childStart..<reached.count)
                } else {
                    valueEnd = try skipValue(at: valueStart, depth: depth)
                }
            }
            if reached.count > childStart { reached.removeLast(reached.count - childStart) }
            members.previousEnd = valueEnd

            let (next, more) = try separator(after: valueEnd, closing: UInt8(ascii: "}"))
            i = next
            if more { continue }
            closeMembers(members, at: i)
            return i + 1
        }
    }

    /// An array on a path: transparent, each element walked with the same nodes.
    mutating func array(at open: Int, depth: Int, reach: Range<Int>) throws(RedactionError) -> Int {
        guard depth <= RedactionRules.maxDepth else {
            throw RedactionError("nested deeper than \(RedactionRules.maxDepth)", offset: open)
        }
        var i = skipSpace(open + 1)
        guard i < input.count else { throw RedactionError("the JSON ends early", offset: i) }
        if input[i] == UInt8(ascii: "]") { return i + 1 }
        while true {
            let (next, more) = try separator(
                after: try value(at: i, depth: depth, reach: reach), closing: UInt8(ascii: "]"))
            i = next
            if more { continue }
            return i + 1
        }
    }

    /// A Ceilometer event's `traits`: `[[name, dtype, value], ...]`.
    mutating func traits(at open: Int, depth: Int) throws(RedactionError) -> Int {
        guard depth <= RedactionRules.maxDepth else {
            throw RedactionError("nested deeper than \(RedactionRules.maxDepth)", offset: open)
        }
        var members = Members(open: open)
        var i = skipSpace(open + 1)
        guard i < input.count else { throw RedactionError("the JSON ends early", offset: i) }
        if input[i] == UInt8(ascii: "]") { return i + 1 }
        while true {
            let start = i
            var end: Int
            var remove = false
            var traitValue: Int?
            if !strips.isEmpty { strips.removeAll(keepingCapacity: true) }
            if input[i] == UInt8(ascii: "[") {
                guard depth + 1 <= RedactionRules.maxDepth else {
                    throw RedactionError("nested deeper than \(RedactionRules.maxDepth)", offset: i)
                }
                var j = skipSpace(i + 1)
                guard j < input.count else { throw RedactionError("the JSON ends early", offset: j) }
                if input[j] == UInt8(ascii: "]") {
                    end = j + 1
                } else {
                    var position = 0
                    while true {
                        guard j < input.count else { throw RedactionError("the JSON ends early", offset: j) }
                        let itemStart = j
                        let itemEnd: Int
                        if position == 0, input[j] == UInt8(ascii: "\"") {
                            let (nameEnd, escaped) = try stringEnd(from: j)
                            try readKey(from: j + 1, to: nameEnd - 1, escaped: escaped)
                            for (index, trait) in plan.traits.enumerated() where keyMatches(trait.name, trait.pattern) {
                                switch trait.action {
                                case .remove:
                                    remove = true
                                    if !traitHits.contains(Int32(index)) { traitHits.append(Int32(index)) }
                                case .stripHost: strips.append(Int32(index))
                                case .none: break
                                }
                            }
                            itemEnd = nameEnd
                        } else {
                            itemEnd = try skipValue(at: j, depth: depth + 1)
                            if position == 2, input[itemStart] == UInt8(ascii: "\"") { traitValue = itemStart }
                        }
                        position += 1
                        let (next, more) = try separator(after: itemEnd, closing: UInt8(ascii: "]"))
                        j = next
                        if more { continue }
                        end = j + 1
                        break
                    }
                }
            } else {
                end = try skipValue(at: i, depth: depth)
            }
            if remove {
                dropMember(&members, start: start, end: end)
            } else {
                keepMember(&members, start: start)
                if !strips.isEmpty, let traitValue {
                    let (_, changed) = try stripHost(at: traitValue)
                    if changed {
                        for strip in strips where !traitHits.contains(strip) { traitHits.append(strip) }
                    }
                }
            }
            members.previousEnd = end

            let (next, more) = try separator(after: end, closing: UInt8(ascii: "]"))
            i = next
            if more {
                guard i < input.count else { throw RedactionError("the JSON ends early", offset: i) }
                continue
            }
            closeMembers(members, at: i)
            return i + 1
        }
    }

    /// Cuts the string at `start` before its first `.` or `:`; unchanged without either.
    mutating func stripHost(at start: Int) throws(RedactionError) -> (end: Int, changed: Bool) {
        let (end, escaped) = try stringEnd(from: start)
        let close = end - 1
        if !escaped {
            var i = start + 1
            while i < close, input[i] != UInt8(ascii: "."), input[i] != UInt8(ascii: ":") { i += 1 }
            guard i < close else { return (end, false) }
            flush(to: i)
            out.append(UInt8(ascii: "\""))
            skip(to: end)
            return (end, true)
        }
        text.removeAll(keepingCapacity: true)
        try Self.unescape(input, from: start + 1, to: close, into: &text)
        guard let cut = text.firstIndex(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: ":") }) else {
            return (end, false)
        }
        flush(to: start)
        out.append(UInt8(ascii: "\""))
        for byte in text[..<cut] {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                out.append(UInt8(ascii: "\\"))
                out.append(byte)
            case 0x08:
                out.append(UInt8(ascii: "\\"))
                out.append(UInt8(ascii: "b"))
            case 0x0C:
                out.append(UInt8(ascii: "\\"))
                out.append(UInt8(ascii: "f"))
            case 0x0A:
                out.append(UInt8(ascii: "\\"))
                out.append(UInt8(ascii: "n"))
            case 0x0D:
                out.append(UInt8(ascii: "\\"))
                out.append(UInt8(ascii: "r"))
            case 0x09:
                out.append(UInt8(ascii: "\\"))
                out.append(UInt8(ascii: "t"))
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [
                    UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)],
                    hex[Int(byte & 0xF)],
                ])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
        skip(to: end)
        return (end, true)
    }

    // MARK: Scanning

    /// After a member or an element: past the `,` and the space after it (`more`), or at the
    /// `closing` byte.
    /// - Throws: `RedactionError` when the JSON ends, or has something else there.
    func separator(after start: Int, closing: UInt8) throws(RedactionError) -> (index: Int, more: Bool) {
        let i = skipSpace(start)
        guard i < input.count else { throw RedactionError("the JSON ends early", offset: i) }
        if input[i] == UInt8(ascii: ",") { return (skipSpace(i + 1), true) }
        guard input[i] == closing else {
            throw RedactionError("expected ',' or '\(Character(UnicodeScalar(closing)))'", offset: i)
        }
        return (i, false)
    }

    func skipSpace(_ start: Int) -> Int {
        var i = start
        while i < input.count {
            switch input[i] {
            case 0x20, 0x0A, 0x0D, 0x09: i += 1
            default: return i
            }
        }
        return i
    }

    /// The end (after the closing quote) of the string opening at `start`, and whether it holds
    /// a backslash.
    func stringEnd(from start: Int) throws(RedactionError) -> (end: Int, escaped: Bool) {
        var i = start + 1
        var escaped = false
        while i < input.count {
            let byte = input[i]
            if byte == UInt8(ascii: "\"") { return (i + 1, escaped) }
            if byte == UInt8(ascii: "\\") {
                escaped = true
                i += 2
                continue
            }
            guard byte >= 0x20 else { throw RedactionError("a control character in a string", offset: i) }
            i += 1
        }
        throw RedactionError("a string is not closed", offset: start)
    }

    /// The end of the value at `start`, inside `depth` levels, without walking it.
    mutating func skipValue(at start: Int, depth: Int) throws(RedactionError) -> Int {
        guard start < input.count else { throw RedactionError("the JSON ends early", offset: start) }
        switch input[start] {
        case UInt8(ascii: "\""): return try stringEnd(from: start).end
        case UInt8(ascii: "{"), UInt8(ascii: "["): return try compositeEnd(from: start, depth: depth)
        case UInt8(ascii: "t"): return try literal("true", at: start)
        case UInt8(ascii: "f"): return try literal("false", at: start)
        case UInt8(ascii: "n"): return try literal("null", at: start)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            var i = start + 1
            while i < input.count {
                switch input[i] {
                case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"),
                    UInt8(ascii: "+"), UInt8(ascii: "-"):
                    i += 1
                default: return i
                }
            }
            return i
        default:
            throw RedactionError("unexpected byte 0x\(String(input[start], radix: 16))", offset: start)
        }
    }

    func literal(_ word: StaticString, at start: Int) throws(RedactionError) -> Int {
        let count = word.utf8CodeUnitCount
        guard start + count <= input.count else { throw RedactionError("the JSON ends early", offset: start) }
        for k in 0..<count where input[start + k] != word.utf8Start[k] {
            throw RedactionError("unexpected byte 0x\(String(input[start + k], radix: 16))", offset: start + k)
        }
        return start + count
    }

    /// The end of the object or array at `start`: brackets counted outside strings, each
    /// closed by its own kind.
    mutating func compositeEnd(from start: Int, depth: Int) throws(RedactionError) -> Int {
        var level = 0
        var i = start
        while i < input.count {
            let byte = input[i]
            switch byte {
            case UInt8(ascii: "\""):
                i = try stringEnd(from: i).end
                continue
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                guard depth + level + 1 <= RedactionRules.maxDepth else {
                    throw RedactionError("nested deeper than \(RedactionRules.maxDepth)", offset: i)
                }
                brackets[level] = byte
                level += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                guard level > 0,
                    brackets[level - 1] == (byte == UInt8(ascii: "}") ? UInt8(ascii: "{") : UInt8(ascii: "["))
                else {
                    throw RedactionError("unbalanced '\(Character(Unicode.Scalar(byte)))'", offset: i)
                }
                level -= 1
                if level == 0 { return i + 1 }
            case 0x20, 0x0A, 0x0D, 0x09, UInt8(ascii: ","), UInt8(ascii: ":"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"),
                UInt8(ascii: "t"), UInt8(ascii: "r"), UInt8(ascii: "u"), UInt8(ascii: "f"), UInt8(ascii: "a"),
                UInt8(ascii: "l"), UInt8(ascii: "s"), UInt8(ascii: "n"):
                break
            default:
                throw RedactionError("unexpected byte 0x\(String(byte, radix: 16))", offset: i)
            }
            i += 1
        }
        throw RedactionError("the JSON ends early", offset: i)
    }

    static let traitsKey = Array("traits".utf8)

    /// Takes the string between `start` and `end` (the closing quote) as the key at hand,
    /// unescaped only when it holds a backslash.
    mutating func readKey(from start: Int, to end: Int, escaped: Bool) throws(RedactionError) {
        keyRange = start..<end
        keyEscaped = escaped
        keyCopied = escaped
        if escaped {
            key.removeAll(keepingCapacity: true)
            try Self.unescape(input, from: start, to: end, into: &key)
        }
    }

    /// Whether the key at hand matches a path segment or trait name.
    mutating func keyMatches(_ pattern: [UInt8], _ kind: RedactionPlan.Pattern) -> Bool {
        switch kind {
        case .any:
            return true
        case .literal where !keyEscaped:
            return pattern.count == keyRange.count
                && UnsafeBufferPointer(rebasing: input[keyRange]).elementsEqual(pattern)
        case .literal:
            return pattern == key
        case .glob:
            if !keyCopied {
                key.removeAll(keepingCapacity: true)
                key.append(contentsOf: UnsafeBufferPointer(rebasing: input[keyRange]))
                keyCopied = true
            }
            return Glob.matches(pattern, key)
        }
    }

    /// The UTF-8 text of a JSON string's contents (`start..<end`, between the quotes).
    static func unescape(
        _ input: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, into text: inout [UInt8]
    ) throws(RedactionError) {
        func hex(at i: Int) -> UInt32? {
            guard i + 4 <= end else { return nil }
            var value: UInt32 = 0
            for k in i..<(i + 4) {
                let byte = input[k]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: return nil
                }
                value = value << 4 | UInt32(digit)
            }
            return value
        }
        var i = start
        while i < end {
            let byte = input[i]
            guard byte == UInt8(ascii: "\\") else {
                text.append(byte)
                i += 1
                continue
            }
            guard i + 1 < end else { throw RedactionError("an escape is cut short", offset: i) }
            switch input[i + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(input[i + 1])
            case UInt8(ascii: "b"): text.append(0x08)
            case UInt8(ascii: "f"): text.append(0x0C)
            case UInt8(ascii: "n"): text.append(0x0A)
            case UInt8(ascii: "r"): text.append(0x0D)
            case UInt8(ascii: "t"): text.append(0x09)
            case UInt8(ascii: "u"):
                guard var scalar = hex(at: i + 2) else { throw RedactionError("an invalid \\u escape", offset: i) }
                i += 6
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 1 < end, input[i] == UInt8(ascii: "\\"), input[i + 1] == UInt8(ascii: "u"),
                        let low = hex(at: i + 2), (0xDC00...0xDFFF).contains(low)
                    else {
                        throw RedactionError("a lone UTF-16 surrogate in a \\u escape", offset: i - 6)
                    }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw RedactionError("a lone UTF-16 surrogate in a \\u escape", offset: i - 6)
                }
                switch scalar {
                case 0..<0x80:
                    text.append(UInt8(scalar))
                case 0x80..<0x800:
                    text.append(UInt8(0xC0 | scalar >> 6))
                    text.append(UInt8(0x80 | scalar & 0x3F))
                case 0x800..<0x10000:
                    text.append(UInt8(0xE0 | scalar >> 12))
                    text.append(UInt8(0x80 | scalar >> 6 & 0x3F))
                    text.append(UInt8(0x80 | scalar & 0x3F))
                default:
                    text.append(UInt8(0xF0 | scalar >> 18))
                    text.append(UInt8(0x80 | scalar >> 12 & 0x3F))
                    text.append(UInt8(0x80 | scalar >> 6 & 0x3F))
                    text.append(UInt8(0x80 | scalar & 0x3F))
                }
                continue
            default:
                throw RedactionError("an invalid escape", offset: i)
            }
            i += 2
        }
    }
}

// MARK: Conditions on redacted fields

extension RedactionRules {
    /// The rule path that removes or cuts `field` (a condition's dotted path, such as
    /// `payload.port.binding:host_id`) or something in it: `within` when the field is at or
    /// under what the rule cuts, false when the field holds it (an object around it); nil
    /// when no rule reaches the field.
    ///
    /// A subscription's conditions are evaluated on the event as it came: one on a field
    /// tenants never receive would tell them its value by whether their subscription fires.
    /// Judged across every rule, whatever its event types, and with quoted segments split at
    /// their dots and array indexes left out (arrays are transparent to the rules), so it
    /// errs on refusing.
    public func covering(_ field: String) -> (path: String, within: Bool)? {
        let segments = field.split(separator: ".", omittingEmptySubsequences: false)
            .filter { !$0.isEmpty && !$0.allSatisfy(\.isNumber) }
            .map { Array($0.utf8) }
        var around: String?
        for rule in rules {
            for path in rule.remove + rule.stripHost {
                let pattern = path.segments.flatMap { $0.split(separator: ".").map { Array($0.utf8) } }
                let shared = min(pattern.count, segments.count)
                guard (0..<shared).allSatisfy({ Glob.matches(pattern[$0], segments[$0]) }) else { continue }
                if segments.count >= pattern.count { return (path.description, true) }
                around = around ?? path.description
            }
        }
        return around.map { ($0, false) }
    }

    /// The first of `subscription`'s conditions that reads what tenants never receive, and the
    /// rule path it meets: at or under a redacted field anything but `exists`; on an object
    /// around one, a structured operand (it would compare the hidden member too). nil when none,
    /// or when the subscription takes events unredacted (an admin's). The API refuses such a
    /// condition; a node leaves out of its index a stored subscription that has one (made
    /// before the rule that covers it).
    public func conditionOnRedacted(
        _ subscription: Subscription
    ) -> (index: Int, field: String, rule: String, within: Bool)? {
        guard subscription.unredacted != true else { return nil }
        for (index, condition) in subscription.conditions.enumerated() {
            guard condition.op != .exists, let (path, within) = covering(condition.field) else { continue }
            let structured: Bool
            switch condition.value {
            case .object?: structured = true
            case .array(let items)?:
                structured = items.contains {
                    if case .object = $0 { return true } else if case .array = $0 { return true } else { return false }
                }
            default: structured = false
            }
            if within || structured { return (index, condition.field, path, within) }
        }
        return nil
    }
}
