import Foundation
import HeraldModel
import Yams

/// Who may do what, the OpenStack way: one rule per operation in oslo.policy's syntax, with
/// defaults that follow Keystone's default roles (reader reads, member writes, admin acts
/// across projects), overridable by an oslo.policy YAML file (`HERALD_POLICY_FILE`).
///
/// The rule language (oslo.policy's): `@` (always), `!` (never), `role:<name>`,
/// `rule:<name>`, `<credential>:<value>` where the value is a literal or `%(<target key>)s`
/// (`project_id:%(project_id)s`, `user_id:%(trustor_id)s`), `system_scope:all`,
/// `is_admin_project:True`, combined with `and`, `or`, `not` and parentheses.
package struct Policy: Sendable {
    /// Every operation Herald checks, with its default rule and what it guards.
    static let operations: [(name: String, rule: String, description: String)] = [
        (
            "subscription:list", "rule:project_reader or rule:system_reader or rule:cloud_admin",
            "GET /v1/subscriptions, GET /v1/subscription"
        ),
        (
            "subscription:get", "rule:project_reader or rule:system_reader or rule:cloud_admin",
            "GET /v1/subscriptions/{id}"
        ),
        (
            "subscription:create", "rule:project_member or rule:cloud_admin",
            "POST /v1/subscriptions, POST /v1/subscription"
        ),
        ("subscription:update", "rule:project_member or rule:cloud_admin", "PATCH /v1/subscriptions/{id}"),
        ("subscription:delete", "rule:project_member or rule:cloud_admin", "DELETE /v1/subscriptions/{id}"),
        (
            "subscription:test", "rule:project_member or rule:cloud_admin",
            "POST /v1/subscriptions/{id}/test: post a test event to the target"
        ),
        (
            "event_type:list", "rule:project_reader or rule:cloud_admin",
            "GET /v1/event-types: the event types seen for the project, with a redacted sample"
        ),
        ("subscription:create_for_project", "rule:cloud_admin", "a subscription for another project than the caller's"),
        (
            "subscription:create_all_projects", "rule:cloud_admin",
            "create, change or delete a subscription to every project's events"
        ),
        (
            "subscription:update_trusted_target", "user_id:%(trustor_id)s or rule:cloud_admin",
            "change the target or credentials of a subscription that posts through someone's trust"
        ),
        // A project's actions on others' resources reach into their events: its admins decide.
        (
            "subscription:include_actor", "rule:project_admin or rule:cloud_admin",
            "ask for the events the project caused on other projects' resources"
        ),
        (
            "subscription:unredacted", "rule:cloud_admin",
            "take events with the fields OpenStack shows only to admins (all-projects subscriptions only)"
        ),
        ("dead_letter:list", "rule:project_reader or rule:system_reader or rule:cloud_admin", "GET /v1/dead-letters"),
        ("dead_letter:replay", "rule:project_member or rule:cloud_admin", "POST /v1/dead-letters/replay"),
        ("dead_letter:purge", "rule:project_member or rule:cloud_admin", "DELETE /v1/dead-letters"),
        // They hold every project's events, unredacted when the subscription takes them so.
        (
            "dead_letter:all_projects", "rule:cloud_admin",
            "list, replay or purge the dead letters of the all-projects subscriptions (?all_projects=true)"
        ),
        ("policy:get", "@", "GET /v1/policy"),
    ]

    /// Named building blocks, after Keystone's default roles; files may change these too.
    static let building: [(name: String, rule: String)] = [
        ("project_reader", "role:reader and project_id:%(project_id)s"),
        ("project_member", "role:member and project_id:%(project_id)s"),
        ("project_admin", "role:admin and project_id:%(project_id)s"),
        // Keystone's system reader reads every project's (with a system-scoped token).
        ("system_reader", "role:reader and system_scope:all"),
        // Admin across projects: system scope, or the admin role in Keystone's admin project.
        ("cloud_admin", "role:admin and (system_scope:all or is_admin_project:True)"),
    ]

    private(set) var rules: [String: PolicyRule]
    /// The text of each rule, as configured (for `GET /v1/policy` and `herald policy`).
    private(set) var texts: [String: String]
    /// Which rules a file changed.
    private(set) var overridden: Set<String> = []

    package init() {
        var rules: [String: PolicyRule] = [:]
        var texts: [String: String] = [:]
        for (name, text) in Self.building.map({ ($0.name, $0.rule) }) + Self.operations.map({ ($0.name, $0.rule) }) {
            // The defaults are constants the tests parse: a mistake there is Herald's bug.
            rules[name] = (try? PolicyRule(parsing: text)) ?? .never
            texts[name] = text
        }
        self.rules = rules
        self.texts = texts
    }

    /// The defaults with a file's rules over them.
    /// - Throws: `PolicyError` naming the file, the line and the rule (unknown names included).
    package static func load(path: String) throws -> Policy {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw PolicyError(message: "\(path): cannot be read (\(error.localizedDescription))")
        }
        guard text.utf8.count <= 1 << 20 else { throw PolicyError(message: "\(path): larger than 1 MiB") }
        var policy = Policy()
        let root: Yams.Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw PolicyError(message: "\(path): not YAML (\(SafeText.clean("\(error)", limit: 200)))")
        }
        guard let root else { return policy }
        guard let mapping = root.mapping else {
            throw PolicyError(
                message: "\(path): expected a mapping of rule names to rules, as oslo.policy's policy.yaml")
        }
        for (key, value) in mapping {
            let line = key.mark?.line ?? 0
            guard let name = key.string, let ruleText = value.string else {
                throw PolicyError(message: "\(path):\(line): each entry is \"name\": \"rule\"")
            }
            guard policy.texts[name] != nil else {
                let known = (building.map(\.name) + operations.map(\.name)).sorted().joined(separator: ", ")
                throw PolicyError(
                    message:
                        "\(path):\(line): unknown rule '\(SafeText.clean(name, limit: 80))'; Herald's rules are \(known)"
                )
            }
            do {
                policy.rules[name] = try PolicyRule(parsing: ruleText)
            } catch {
                throw PolicyError(message: "\(path):\(line): \(name): \(error)")
            }
            policy.texts[name] = ruleText
            policy.overridden.insert(name)
        }
        // A rule:x naming nothing would silently deny: refuse it.
        for (name, rule) in policy.rules {
            if let missing = rule.references.first(where: { policy.rules[$0] == nil }) {
                throw PolicyError(message: "\(path): \(name) refers to rule:\(missing), which does not exist")
            }
        }
        // A cycle of rule: references would cost exponential time per request (and `not` would
        // turn its cut-off into an allow): refuse it.
        for name in policy.rules.keys.sorted() {
            var visiting: [String] = []
            if let cycle = policy.cycle(from: name, visiting: &visiting) {
                throw PolicyError(
                    message: "\(path): the rules refer to each other in a cycle: \(cycle.joined(separator: " -> "))")
            }
        }
        return policy
    }

    private func cycle(from name: String, visiting: inout [String]) -> [String]? {
        if let start = visiting.firstIndex(of: name) { return Array(visiting[start...]) + [name] }
        guard visiting.count < 64, let rule = rules[name] else { return nil }
        visiting.append(name)
        defer { visiting.removeLast() }
        for reference in Set(rule.references).sorted() {
            if let found = cycle(from: reference, visiting: &visiting) { return found }
        }
        return nil
    }

    /// Whether `credentials` may do `operation` on `target`.
    package func allows(_ operation: String, credentials: PolicyCredentials, target: [String: String]) -> Bool {
        guard let rule = rules[operation] else { return false }
        return rule.holds(credentials, target, rules: rules, depth: 0)
    }

    /// The effective rules, for `GET /v1/policy` and `herald policy`.
    package var effective: [(name: String, rule: String, description: String, overridden: Bool)] {
        Self.building.map { ($0.name, texts[$0.name] ?? $0.rule, "building block", overridden.contains($0.name)) }
            + Self.operations.map { ($0.name, texts[$0.name] ?? $0.rule, $0.description, overridden.contains($0.name)) }
    }
}

/// What a caller brings to a policy check (from the Keystone token, or the trusted headers).
package struct PolicyCredentials: Sendable, Equatable {
    var roles: Set<String>
    var projectID: String?
    var userID: String?
    /// `all` for a system-scoped token.
    var systemScope: String?
    /// Keystone's `is_admin_project` (a token of the configured admin project).
    var isAdminProject: Bool

    func value(_ key: String) -> String? {
        switch key {
        case "project_id": return projectID
        case "user_id": return userID
        case "system_scope": return systemScope
        case "is_admin_project": return isAdminProject ? "True" : "False"
        default: return nil
        }
    }
}

package struct PolicyError: Error, CustomStringConvertible, Sendable {
    var message: String
    package var description: String { message }
}

/// One parsed rule.
indirect enum PolicyRule: Sendable, Equatable {
    case always
    case never
    case role(String)
    case reference(String)
    /// `key:value`; `value` is a literal, or `%{name}` (written `%(name)s`): the target's `name`.
    case match(key: String, value: String)
    case and([PolicyRule])
    case or([PolicyRule])
    case not(PolicyRule)

    /// - Throws: `PolicyError` naming what is wrong.
    init(parsing text: String) throws {
        guard text.utf8.count <= 4096 else { throw PolicyError(message: "a rule of more than 4096 bytes") }
        var parser = PolicyParser(tokens: try PolicyParser.tokenize(text))
        if parser.tokens.isEmpty {
            self = .always  // oslo.policy: an empty rule always passes
            return
        }
        let rule = try parser.expression(depth: 0)
        guard parser.position == parser.tokens.count else {
            throw PolicyError(
                message: "unexpected '\(parser.tokens[parser.position])' in '\(SafeText.clean(text, limit: 120))'")
        }
        self = rule
    }

    var references: [String] {
        switch self {
        case .reference(let name): return [name]
        case .and(let rules), .or(let rules): return rules.flatMap(\.references)
        case .not(let rule): return rule.references
        default: return []
        }
    }

    func holds(
        _ credentials: PolicyCredentials, _ target: [String: String], rules: [String: PolicyRule], depth: Int
    ) -> Bool {
        guard depth < 32 else { return false }  // a cycle of rule: references denies
        switch self {
        case .always: return true
        case .never: return false
        case .role(let name): return credentials.roles.contains(name.lowercased())
        case .reference(let name):
            return rules[name]?.holds(credentials, target, rules: rules, depth: depth + 1) ?? false
        case .match(let key, let value):
            guard let actual = credentials.value(key) else { return false }
            if value.hasPrefix("%{"), value.hasSuffix("}") {
                let name = String(value.dropFirst(2).dropLast())
                guard let wanted = target[name] else { return false }
                return actual == wanted
            }
            return actual.lowercased() == value.lowercased()
        case .and(let all): return all.allSatisfy { $0.holds(credentials, target, rules: rules, depth: depth + 1) }
        case .or(let any): return any.contains { $0.holds(credentials, target, rules: rules, depth: depth + 1) }
        case .not(let rule): return !rule.holds(credentials, target, rules: rules, depth: depth + 1)
        }
    }
}

/// oslo.policy's grammar: `or` binds loosest, then `and`, then `not`; parentheses group.
package struct PolicyParser {
    var tokens: [String]
    var position = 0

    static func tokenize(_ text: String) throws -> [String] {
        // `%(project_id)s` holds parentheses of its own: written `%{project_id}` while splitting.
        var protected = text
        if let pattern = try? NSRegularExpression(pattern: "%\\(([A-Za-z0-9_.]+)\\)s") {
            protected = pattern.stringByReplacingMatches(
                in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "%{$1}")
        }
        var tokens: [String] = []
        var current = ""
        for character in protected {
            if character == "(" || character == ")" {
                if !current.isEmpty {
                    tokens.append(current)
                    current = ""
                }
                tokens.append(String(character))
            } else if character.isWhitespace {
                if !current.isEmpty {
                    tokens.append(current)
                    current = ""
                }
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { tokens.append(current) }
        return tokens
    }

    mutating func expression(depth: Int) throws -> PolicyRule {
        guard depth < 64 else { throw PolicyError(message: "rule nested too deeply") }
        var terms = [try conjunction(depth: depth)]
        while position < tokens.count, tokens[position].lowercased() == "or" {
            position += 1
            terms.append(try conjunction(depth: depth))
        }
        return terms.count == 1 ? terms[0] : .or(terms)
    }

    mutating func conjunction(depth: Int) throws -> PolicyRule {
        var terms = [try negation(depth: depth)]
        while position < tokens.count, tokens[position].lowercased() == "and" {
            position += 1
            terms.append(try negation(depth: depth))
        }
        return terms.count == 1 ? terms[0] : .and(terms)
    }

    mutating func negation(depth: Int) throws -> PolicyRule {
        if position < tokens.count, tokens[position].lowercased() == "not" {
            position += 1
            return .not(try negation(depth: depth + 1))
        }
        return try atom(depth: depth)
    }

    mutating func atom(depth: Int) throws -> PolicyRule {
        guard position < tokens.count else { throw PolicyError(message: "the rule ends where a check was expected") }
        let token = tokens[position]
        position += 1
        switch token {
        case "(":
            let inner = try expression(depth: depth + 1)
            guard position < tokens.count, tokens[position] == ")" else {
                throw PolicyError(message: "a '(' is not closed")
            }
            position += 1
            return inner
        case "@": return .always
        case "!": return .never
        case ")", "and", "or": throw PolicyError(message: "unexpected '\(token)'")
        default:
            guard let colon = token.firstIndex(of: ":") else {
                throw PolicyError(message: "'\(SafeText.clean(token, limit: 60))' is not a check (kind:value)")
            }
            let kind = String(token[..<colon])
            let value = String(token[token.index(after: colon)...])
            guard !kind.isEmpty, !value.isEmpty else {
                throw PolicyError(message: "'\(SafeText.clean(token, limit: 60))' is not a check (kind:value)")
            }
            switch kind {
            case "role": return .role(value)
            case "rule": return .reference(value)
            case "http", "https": throw PolicyError(message: "remote (http) checks are not supported")
            default: return .match(key: kind, value: value)
            }
        }
    }
}
