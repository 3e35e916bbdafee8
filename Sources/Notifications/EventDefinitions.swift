import Foundation
import HeraldModel
import Yams

/// Who an event belongs to, in the spirit of Ceilometer's `event_definitions.yaml`: a list of
/// definitions, each for some event type patterns (globs, a leading `!` excludes), naming where
/// the resource's owning project, the resource's id and the acting project live, and the
/// resource family. The first definition whose patterns take an event's type applies.
///
/// ```yaml
/// - event_type: ["compute.instance.*"]
///   family: compute.instance
///   owner: ["payload.tenant_id", "payload.project_id"]
///   resource_id: ["payload.instance_id"]
///   actor: ["_context_project_id"]          # the default
/// ```
///
/// Paths are dot-separated from the notification's top level; a segment holding dots is
/// quoted (`payload.'nova_object.data'.tenant_id`); `_context_project_id` and `_context_tenant`
/// name the request context's project; `traits.x` a Ceilometer event's trait. The first
/// non-empty string (of at most 255 bytes) found along a list wins. With no owner found, the
/// decoder's guess stands (the payload's or traits' `project_id`/`tenant_id`, else the context's
/// project): the rule wave 1 used for everything.
public struct EventDefinitions: Sendable {
    public struct Definition: Sendable, Equatable {
        public var patterns: [String]
        /// nil: the event type stands for the family (and no resource id is used for partitions).
        public var family: String?
        public var owner: [FieldPath]
        public var resourceID: [FieldPath]
        public var actor: [FieldPath]
        /// Where it was written (`defaults:12`, `/etc/herald/events.yaml:3`), for messages.
        public var origin: String

        var includes: [[UInt8]] { patterns.filter { !$0.hasPrefix("!") }.map { Array($0.utf8) } }
        var excludes: [[UInt8]] { patterns.filter { $0.hasPrefix("!") }.map { Array($0.dropFirst().utf8) } }

        func takes(_ type: [UInt8]) -> Bool {
            includes.contains { Glob.matches($0, type) } && !excludes.contains { Glob.matches($0, type) }
        }
    }

    public let definitions: [Definition]
    /// Each definition's owner, resource id and actor paths, compiled for lookups.
    private let plans: [Plans]
    /// The definition index per event type seen (-1: none), bounded (`BoundedCache`), shared by
    /// copies.
    private let chosen = BoundedCache<String, Int>(limit: 10_000)

    /// Where one answer is looked for, in order: the request context's project (kept by the
    /// decoder), or a run of paths into the event, looked up together.
    struct PathPlan: Sendable {
        enum Step: Sendable {
            case context
            case event(LookupPathList)
        }
        let steps: [Step]

        init(_ paths: [FieldPath]) {
            var steps: [Step] = []
            var run: [LookupPath] = []
            for path in paths {
                if EventDefinitions.isContext(path) {
                    if !run.isEmpty { steps.append(.event(LookupPathList(run))) }
                    run = []
                    steps.append(.context)
                } else {
                    run.append(LookupPath(path.segments))
                }
            }
            if !run.isEmpty { steps.append(.event(LookupPathList(run))) }
            self.steps = steps
        }
    }

    struct Plans: Sendable {
        let owner: PathPlan
        let resourceID: PathPlan
        let actor: PathPlan
    }

    static let defaultActorPlan = PathPlan(defaultActor)

    /// Tells these definitions from others (a hash of what they say and of how this build reads
    /// them, `attributionVersion`): nodes whose fingerprints agree attribute every event alike
    /// (the ingest's headers then speak for the owner).
    public let fingerprint: String
    /// Changed with any change to how events are attributed beyond the definitions themselves
    /// (the decoder's fallbacks, `defaultActor`, `maxIDBytes`): nodes of builds that differ there
    /// then have different fingerprints.
    static let attributionVersion = 1
    /// The acting project when a definition names none.
    public static let defaultActor: [FieldPath] = [FieldPath(["_context_project_id"]), FieldPath(["_context_tenant"])]
    /// The longest project or resource id taken from an event (an AMQP header holds it).
    public static let maxIDBytes = 255

    public init(_ definitions: [Definition]) {
        self.definitions = definitions
        // What attributes an event, not where it was written; paths as their segments (quoted
        // when printed: `a, b` in one segment is not two paths).
        let said = definitions.map {
            ($0.patterns, $0.family, $0.owner.map(\.segments), $0.resourceID.map(\.segments), $0.actor.map(\.segments))
        }
        fingerprint = String(
            PartitionHash.fnv1a64("\(Self.attributionVersion) \(String(reflecting: said))".utf8), radix: 16)
        plans = definitions.map {
            Plans(
                owner: PathPlan($0.owner), resourceID: PathPlan($0.resourceID),
                actor: $0.actor.isEmpty ? Self.defaultActorPlan : PathPlan($0.actor))
        }
    }

    /// The shipped defaults (`DefaultEventDefinitions.yaml`).
    public static let defaults: EventDefinitions = {
        do {
            return try EventDefinitions(yaml: DefaultEventDefinitions.yaml, origin: "defaults")
        } catch {
            // The defaults are a constant checked by the tests; a mistake there is Herald's bug.
            fatalError("the shipped event definitions do not parse: \(error)")
        }
    }()

    /// The definitions of an operator's file (`HERALD_EVENT_DEFINITIONS`): a list, tried before
    /// the defaults; or `{replace_defaults: true, definitions: [...]}`, used alone.
    /// - Throws: `EventDefinitionsError` naming the file, the line and what is wrong.
    public static func load(path: String) throws -> EventDefinitions {
        let text: String
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            if let size = attributes[.size] as? Int, size > 1 << 20 {
                throw EventDefinitionsError(
                    origin: path, line: nil, message: "the file is \(size) bytes; at most 1 MiB")
            }
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch let error as EventDefinitionsError {
            throw error
        } catch {
            throw EventDefinitionsError(
                origin: path, line: nil, message: "cannot be read (\(error.localizedDescription))")
        }
        let (definitions, replace) = try parse(yaml: text, origin: path)
        return EventDefinitions(replace ? definitions : definitions + Self.defaults.definitions)
    }

    /// Definitions from YAML text (a list of definitions).
    public init(yaml: String, origin: String) throws {
        let (definitions, _) = try Self.parse(yaml: yaml, origin: origin)
        self.init(definitions)
    }

    // MARK: Attribution

    /// The definition for an event type, if any takes it.
    public func definition(for eventType: String) -> Definition? {
        index(for: eventType).map { definitions[$0] }
    }

    private func index(for eventType: String) -> Int? {
        if let index = chosen.get(eventType) { return index >= 0 && index < definitions.count ? index : nil }
        let type = Array(eventType.utf8)
        let index = definitions.firstIndex { $0.takes(type) } ?? -1
        chosen.put(eventType, index)
        return index >= 0 ? index : nil
    }

    /// Sets the event's owner (`project`), actor, resource id and family from its definition.
    /// The owner falls back to the context's project; without a definition, the decoder's guess
    /// (payload `project_id`/`tenant_id`, then the context) stays and only the actor is set.
    public func attribute(_ event: inout NotificationEvent) {
        guard let index = index(for: event.eventType) else {
            event.actorProject = first(Self.defaultActorPlan, in: event)
            return
        }
        let plans = plans[index]
        event.actorProject = first(plans.actor, in: event)
        // Without an owner in the definition's paths: the decoder's guess (payload or trait
        // project_id/tenant_id, else the context's project).
        event.project = first(plans.owner, in: event) ?? event.project
        event.resourceID = first(plans.resourceID, in: event)
        event.family = definitions[index].family
    }

    /// A path that names the request context's project, which the decoder kept aside (it is not
    /// in the event's JSON).
    public static func isContext(_ path: FieldPath) -> Bool {
        switch path.segments.first {
        // Not in the event's JSON (context keys never leave Herald): the decoder kept it.
        case "_context_project_id", "_context_tenant", "_context_tenant_id": return true
        default: return false
        }
    }

    /// The first non-empty string of at most `maxIDBytes` bytes along the plan's paths.
    private func first(_ plan: PathPlan, in event: NotificationEvent) -> String? {
        for step in plan.steps {
            switch step {
            case .context:
                if let text = event.contextProject, !text.isEmpty, text.utf8.count <= Self.maxIDBytes { return text }
            case .event(let paths):
                if let text = event.firstString(at: paths, maxBytes: Self.maxIDBytes) { return text }
            }
        }
        return nil
    }

    // MARK: Parsing

    static let maxDefinitions = 2_000

    static func parse(yaml: String, origin: String) throws -> ([Definition], Bool) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw EventDefinitionsError(
                origin: origin, line: Self.line(of: error),
                message: "not YAML: \(SafeText.clean("\(error)", limit: 200))")
        } catch {
            throw EventDefinitionsError(
                origin: origin, line: nil, message: "not YAML: \(SafeText.clean("\(error)", limit: 200))")
        }
        guard let root else { return ([], false) }
        var list = root
        var replace = false
        if let mapping = root.mapping {
            for (key, value) in mapping {
                switch key.string {
                case "definitions": list = value
                case "replace_defaults":
                    guard let flag = value.bool else {
                        throw EventDefinitionsError(
                            origin: origin, line: value.mark?.line, message: "replace_defaults must be true or false")
                    }
                    replace = flag
                default:
                    throw EventDefinitionsError(
                        origin: origin, line: key.mark?.line,
                        message:
                            "unknown key '\(SafeText.clean(key.string ?? "?", limit: 60))'; a definitions file is a list, or has 'definitions' and 'replace_defaults'"
                    )
                }
            }
        }
        guard let sequence = list.sequence else {
            throw EventDefinitionsError(
                origin: origin, line: list.mark?.line, message: "expected a list of definitions")
        }
        guard sequence.count <= maxDefinitions else {
            throw EventDefinitionsError(
                origin: origin, line: list.mark?.line,
                message: "\(sequence.count) definitions; at most \(maxDefinitions)")
        }
        return (try sequence.map { try definition($0, origin: origin) }, replace)
    }

    private static func definition(_ node: Node, origin: String) throws -> Definition {
        let line = node.mark?.line
        func fail(_ message: String, at node: Node? = nil) -> EventDefinitionsError {
            EventDefinitionsError(origin: origin, line: node?.mark?.line ?? line, message: message)
        }
        guard let mapping = node.mapping else { throw fail("a definition is a mapping with event_type, owner, ...") }
        var patterns: [String]?
        var family: String?
        var owner: [FieldPath] = []
        var resourceID: [FieldPath] = []
        var actor: [FieldPath] = []
        for (key, value) in mapping {
            switch key.string {
            case "event_type":
                patterns = try strings(value, field: "event_type", origin: origin)
            case "family":
                if value.null == nil {
                    guard let text = value.string, !text.isEmpty, text.count <= 128 else {
                        throw fail("family must be a name such as compute.instance, or null", at: value)
                    }
                    family = text
                }
            case "owner": owner = try paths(value, field: "owner", origin: origin)
            case "resource_id": resourceID = try paths(value, field: "resource_id", origin: origin)
            case "actor": actor = try paths(value, field: "actor", origin: origin)
            default:
                throw fail(
                    "unknown key '\(SafeText.clean(key.string ?? "?", limit: 60))'; known: event_type, family, owner, resource_id, actor",
                    at: key)
            }
        }
        guard let patterns, !patterns.isEmpty else {
            throw fail("event_type is required: a list of patterns such as [\"compute.instance.*\"]")
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-*?:")
        for pattern in patterns {
            let body = pattern.hasPrefix("!") ? pattern.dropFirst() : Substring(pattern)
            guard !body.isEmpty, body.count <= 255, body.allSatisfy({ allowed.contains($0) }) else {
                throw fail(
                    "event_type '\(SafeText.clean(pattern, limit: 60))' must be letters, digits, '.', '_', '-', ':' and the wildcards '*' '?', optionally after '!'"
                )
            }
        }
        guard patterns.contains(where: { !$0.hasPrefix("!") }) else { throw fail("event_type has only exclusions") }
        return Definition(
            patterns: patterns, family: family, owner: owner, resourceID: resourceID, actor: actor,
            origin: "\(origin):\(line ?? 0)")
    }

    private static func strings(_ node: Node, field: String, origin: String) throws -> [String] {
        if let text = node.string, node.sequence == nil { return [text] }
        guard let sequence = node.sequence, sequence.count <= 100 else {
            throw EventDefinitionsError(
                origin: origin, line: node.mark?.line, message: "\(field) must be a list of at most 100 strings")
        }
        return try sequence.map { item in
            guard let text = item.string else {
                throw EventDefinitionsError(
                    origin: origin, line: item.mark?.line, message: "\(field) must hold strings")
            }
            return text
        }
    }

    private static func paths(_ node: Node, field: String, origin: String) throws -> [FieldPath] {
        try strings(node, field: field, origin: origin).map { text in
            do {
                return try FieldPath(parsing: text)
            } catch {
                throw EventDefinitionsError(origin: origin, line: node.mark?.line, message: "\(field): \(error)")
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

/// A path into a notification: `payload.'nova_object.data'.tenant_id` → [payload, nova_object.data, tenant_id].
public struct FieldPath: Sendable, Equatable, CustomStringConvertible {
    public var segments: [String]

    public init(_ segments: [String]) {
        self.segments = segments
    }

    /// - Throws: `FieldPathError` naming what is wrong.
    public init(parsing text: String) throws {
        guard !text.isEmpty, text.count <= 255 else {
            throw FieldPathError(text: text, message: "must be 1 to 255 characters")
        }
        var segments: [String] = []
        var current = ""
        var quoted = false
        var justClosed = false
        for character in text {
            if quoted {
                if character == "'" {
                    quoted = false
                    justClosed = true
                } else {
                    current.append(character)
                }
                continue
            }
            switch character {
            case "'":
                guard current.isEmpty, !justClosed else {
                    throw FieldPathError(text: text, message: "a quote may only open a segment")
                }
                quoted = true
            case ".":
                guard !current.isEmpty else { throw FieldPathError(text: text, message: "has an empty segment") }
                segments.append(current)
                current = ""
                justClosed = false
            default:
                guard !justClosed else {
                    throw FieldPathError(text: text, message: "a quoted segment must end at a dot")
                }
                current.append(character)
            }
        }
        guard !quoted else { throw FieldPathError(text: text, message: "has an unclosed quote") }
        guard !current.isEmpty else { throw FieldPathError(text: text, message: "has an empty segment") }
        segments.append(current)
        guard segments.count <= 16 else { throw FieldPathError(text: text, message: "has more than 16 segments") }
        self.segments = segments
    }

    public var description: String {
        segments.map { $0.contains(".") ? "'\($0)'" : $0 }.joined(separator: ".")
    }
}

public struct FieldPathError: Error, CustomStringConvertible, Sendable {
    public var text: String
    public var message: String
    public var description: String { "'\(SafeText.clean(text, limit: 80))' \(message)" }
}

/// A definitions file (or the defaults) that cannot be used: where and why.
public struct EventDefinitionsError: Error, CustomStringConvertible, Sendable {
    public var origin: String
    public var line: Int?
    public var message: String

    public var description: String {
        "\(origin)\(line.map { ":\($0)" } ?? ""): \(message)"
    }
}
