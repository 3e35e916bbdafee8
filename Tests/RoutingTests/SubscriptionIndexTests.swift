import Delivery
import HeraldModel
import Notifications
import Testing

@testable import Routing

@Suite("Matching events to subscriptions")
struct SubscriptionIndexTests {
    func event(
        _ type: String, project: String? = "p1", payload: [String: JSONValue] = [:], traits: [String: JSONValue] = [:]
    ) -> NotificationEvent {
        NotificationEvent(
            eventType: type, messageID: "m", project: project,
            body: .object(["event_type": .string(type), "payload": .object(payload)]), traits: traits)
    }

    func subscription(
        _ patterns: [String], project: String = "p1", allProjects: Bool = false, conditions: [Condition] = []
    ) -> Subscription {
        Subscription(
            project: project, allProjects: allProjects, eventTypes: patterns, conditions: conditions,
            target: Target(queue: "q"))
    }

    @Test(
        "globs in the fnmatch sense",
        arguments: [
            ("compute.instance.*", "compute.instance.create.end", true),
            ("compute.instance.*", "compute.instance", false),
            ("compute.*.end", "compute.instance.create.end", true),
            ("*", "anything.at.all", true),
            ("compute.instance.create.?nd", "compute.instance.create.end", true),
            ("compute.instance.create.end", "compute.instance.create.end", true),
            ("compute.instance.create.end", "compute.instance.create.start", false),
            ("volume*", "volume.attach.end", true),
            ("network.*", "compute.instance.create.end", false),
        ])
    func globs(pattern: String, type: String, matches: Bool) {
        let index = SubscriptionIndex([subscription([pattern])], defaultZaqarURL: "http://zaqar.test")
        #expect(index.matches(event(type)).count == (matches ? 1 : 0))
    }

    @Test("a leading ! excludes")
    func exclusion() {
        let index = SubscriptionIndex(
            [subscription(["compute.instance.*", "!compute.instance.exists"])], defaultZaqarURL: "http://zaqar.test")
        #expect(index.matches(event("compute.instance.create.end")).count == 1)
        #expect(index.matches(event("compute.instance.exists")).isEmpty)
    }

    @Test("tenant isolation: other projects' events never match; no project reaches only all-projects subscriptions")
    func isolation() {
        let own = subscription(["*"], project: "p1")
        let other = subscription(["*"], project: "p2")
        let admin = subscription(["*"], project: "admin", allProjects: true)
        let index = SubscriptionIndex([own, other, admin], defaultZaqarURL: "http://zaqar.test")
        #expect(Set(index.matches(event("a.b", project: "p1")).map(\.id)) == [own.id, admin.id])
        #expect(Set(index.matches(event("a.b", project: "p2")).map(\.id)) == [other.id, admin.id])
        #expect(index.matches(event("a.b", project: nil)).map(\.id) == [admin.id])
    }

    @Test("conditions on payload paths and traits, compared by type")
    func conditions() {
        let cases: [(Condition, NotificationEvent, Bool)] = [
            (
                Condition(field: "payload.state", op: .eq, value: .string("active")),
                event("x", payload: ["state": .string("active")]), true
            ),
            (
                Condition(field: "payload.state", op: .ne, value: .string("active")),
                event("x", payload: ["state": .string("error")]), true
            ),
            (
                Condition(field: "payload.memory_mb", op: .ge, value: .number(1024)),
                event("x", payload: ["memory_mb": .number(2048)]), true
            ),
            (
                Condition(field: "payload.memory_mb", op: .lt, value: .number(1024)),
                event("x", payload: ["memory_mb": .number(2048)]), false
            ),
            (
                Condition(field: "payload.memory_mb", op: .gt, value: .number(100)),
                event("x", payload: ["memory_mb": .string("512")]), true
            ),
            (
                Condition(field: "payload.state", op: .in, value: .array([.string("active"), .string("paused")])),
                event("x", payload: ["state": .string("paused")]), true
            ),
            (
                Condition(field: "payload.image_meta.os_distro", op: .exists),
                event("x", payload: ["image_meta": .object(["os_distro": .string("u")])]), true
            ),
            (Condition(field: "payload.missing", op: .exists, value: .bool(false)), event("x"), true),
            (
                Condition(field: "payload.host", op: .prefix, value: .string("compute-")),
                event("x", payload: ["host": .string("compute-7")]), true
            ),
            (
                Condition(field: "payload.launched_at", op: .gt, value: .string("2026-11-24T12:00:00")),
                event("x", payload: ["launched_at": .string("2026-11-24 16:37:41.367798")]), true
            ),
            (
                Condition(field: "payload.launched_at", op: .lt, value: .string("2026-11-24T12:00:00Z")),
                event("x", payload: ["launched_at": .string("2026-11-24 16:37:41.367798")]), false
            ),
            (
                Condition(field: "traits.memory_mb", op: .le, value: .number(4096)),
                event("x", traits: ["memory_mb": .number(2048)]), true
            ),
            (Condition(field: "payload.state", op: .eq, value: .string("active")), event("x"), false),
        ]
        for (condition, event, expected) in cases {
            let index = SubscriptionIndex(
                [subscription(["*"], conditions: [condition])], defaultZaqarURL: "http://zaqar.test")
            #expect(index.matches(event).isEmpty == !expected, "\(condition) on \(event.body)")
        }
    }

    @Test(
        "conditions on 20 fields of one event, read through shared and unshared paths, each see their own field (what the event looked up kept inline, in a list and in a dictionary)"
    )
    func manyFields() throws {
        // 20 fields; subscription n wants payload.fn == n, which holds for even n only.
        var payload: [String] = []
        for n in 0..<20 { payload.append("\"f\(n)\": \(n % 2 == 0 ? n : -1)") }
        let json = Array("{\"event_type\": \"x\", \"payload\": {\(payload.joined(separator: ", "))}}".utf8)
        let event = NotificationEvent(eventType: "x", messageID: "m", project: "p1", json: json)
        // Routes are read in id order: f0 is kept inline, f1 to f8 listed, the rest in the dictionary.
        func wanting(_ n: Int, id: String) -> Subscription {
            Subscription(
                id: id, project: "p1", eventTypes: ["*"],
                conditions: [Condition(field: "payload.f\(n)", op: .eq, value: .number(Double(n)))],
                target: Target(queue: "q"))
        }
        let subscriptions = (0..<20).map { wanting($0, id: String(format: "a%02d", $0)) }
        var index = SubscriptionIndex(subscriptions.prefix(10), defaultZaqarURL: "http://zaqar.test")
        // The other ten come in a registry change, and three more read fields read before (the
        // inline one, a listed one, one in the dictionary) through paths of their own: compiled
        // apart, so other objects for the same fields.
        var changes: [String: Subscription?] = [:]
        for subscription in subscriptions.suffix(10) { changes[subscription.id] = subscription }
        for n in [0, 4, 15] { changes["b\(n)"] = wanting(n, id: "b\(n)") }
        index = index.updated(with: changes)
        let matched = Set(index.matches(event).map(\.id))
        let expected = Set((0..<20).filter { $0 % 2 == 0 }.map { subscriptions[$0].id } + ["b0", "b4"])
        #expect(matched == expected)
    }

    @Test(
        "a field read as text first is read as a number or instant when a later condition compares one",
        arguments: [0, 3, 12])
    func parsedOnDemand(fieldsReadBefore: Int) {
        var payload = [#""launched_at": "2026-11-24 16:37:41.367798""#, #""memory": "512""#]
        for n in 0..<fieldsReadBefore { payload.append("\"f\(n)\": \(n)") }
        let json = Array("{\"event_type\": \"x\", \"payload\": {\(payload.joined(separator: ", "))}}".utf8)
        let event = NotificationEvent(eventType: "x", messageID: "m", project: "p1", json: json)
        func wanting(_ id: String, _ field: String, _ op: Condition.Operator, _ value: JSONValue) -> Subscription {
            Subscription(
                id: id, project: "p1", eventTypes: ["*"], conditions: [Condition(field: field, op: op, value: value)],
                target: Target(queue: "q"))
        }
        // Routes are read in id order: the "a" fields first (so the two strings land inline, in
        // the list or in the dictionary), then each string as text, then as an instant or number.
        var subscriptions = (0..<fieldsReadBefore).map {
            wanting(String(format: "a%02d", $0), "payload.f\($0)", .exists, .bool(true))
        }
        subscriptions += [
            wanting("b1", "payload.launched_at", .prefix, .string("2026-11-24 ")),
            wanting("b2", "payload.launched_at", .gt, .string("2026-11-24T16:00:00Z")),
            wanting("b3", "payload.launched_at", .eq, .string("2026-11-24T16:37:41.367798Z")),
            wanting("b4", "payload.launched_at", .lt, .string("2026-11-24T16:00:00Z")),
            wanting("b5", "payload.memory", .prefix, .string("5")),
            wanting("b6", "payload.memory", .eq, .number(512)),
            wanting("b7", "payload.memory", .eq, .string("512")),
            wanting("b8", "payload.memory", .gt, .number(1024)),
        ]
        let index = SubscriptionIndex(subscriptions, defaultZaqarURL: "http://zaqar.test")
        let matched = Set(index.matches(event).map(\.id))
        // As text "2026-11-24 16..." sorts before "2026-11-24T16..."; as instants it is later.
        let expected = Set(subscriptions.prefix(fieldsReadBefore).map(\.id) + ["b1", "b2", "b3", "b5", "b6", "b7"])
        #expect(matched == expected)
    }

    @Test("a registry change compiles only what changed: the others keep their routes, deleted ones go")
    func updated() {
        let (a, b, c, d) = (
            subscription(["compute.*"]), subscription(["volume.*"]), subscription(["port.*"]),
            subscription(["image.*"])
        )
        let index = SubscriptionIndex([a, b, d], defaultZaqarURL: "http://zaqar.test")
        var changed = b
        changed.eventTypes = ["network.*"]
        let changes: [String: Subscription?] = [a.id: nil, changed.id: changed, c.id: c]
        let next = index.updated(with: changes)
        #expect(next.count == 3)
        #expect(next.route(id: a.id) == nil)
        #expect(next.matches(event("compute.instance.create.end")).isEmpty)
        #expect(next.matches(event("volume.create.end")).isEmpty)
        #expect(next.matches(event("network.create.end")).map(\.id) == [b.id])
        #expect(next.matches(event("port.create.end")).map(\.id) == [c.id])
        #expect(next.route(id: d.id) === index.route(id: d.id), "an unchanged subscription is not compiled again")
        #expect(index.matches(event("compute.instance.create.end")).map(\.id) == [a.id], "the old index is untouched")
    }

    @Test("a route carries the target: the subscription's Zaqar or the node's, with its trust")
    func routeTarget() {
        var own = subscription(["*"])
        own.target = Target(queue: "mine", zaqarURL: "https://zaqar.other:8888/")
        own.trustID = "t-1"
        let plain = subscription(["*"])
        let index = SubscriptionIndex([own, plain], defaultZaqarURL: "http://zaqar.test")
        let ownRoute = index.route(id: own.id)
        #expect(
            ownRoute?.target
                == ZaqarTarget(
                    baseURL: "https://zaqar.other:8888", project: "p1", queue: "mine", credentials: .trust("t-1")))
        #expect(
            index.route(id: plain.id)?.target == ZaqarTarget(baseURL: "http://zaqar.test", project: "p1", queue: "q"))
        #expect(index.route(id: "missing") == nil)
    }

    @Test("each subscription matches an event once, even through several patterns")
    func once() {
        let index = SubscriptionIndex(
            [subscription(["compute.*", "compute.instance.*", "*"])], defaultZaqarURL: "http://zaqar.test")
        #expect(index.matches(event("compute.instance.create.end")).count == 1)
    }

    @Test(
        "a route that refuses one event (its condition) drops out of that answer alone, first, middle or last in the list: the event type's shared candidate list is not changed for the next events",
        arguments: [0, 1, 2])
    func refusalsDoNotStick(refusing position: Int) {
        // Fixed ids: the index keeps routes in id order, so `position` is the refusing one's place.
        let ids = ["a-first", "b-middle", "c-last"]
        let all = ids.enumerated().map { index, id in
            Subscription(
                id: id, project: "p1", eventTypes: ["compute.*"],
                conditions: index == position
                    ? [Condition(field: "payload.state", op: .eq, value: .string("active"))] : [],
                target: Target(queue: "q"))
        }
        let admin = Subscription(
            id: "z-admin", project: "admin", allProjects: true, eventTypes: ["compute.*"], target: Target(queue: "q"))
        for withAdmin in [false, true] {
            let index = SubscriptionIndex(all + (withAdmin ? [admin] : []), defaultZaqarURL: "http://zaqar.test")
            let extra = withAdmin ? [admin.id] : []
            for state in ["active", "building", "active", "deleted", "active"] {
                let matched = index.matches(event("compute.instance.update", payload: ["state": .string(state)])).map(
                    \.id)
                let expected =
                    state == "active" ? ids : ids.enumerated().filter { $0.offset != position }.map(\.element)
                #expect(matched == expected + extra, "\(state), refusing \(ids[position])")
            }
        }
    }
}

@Suite("Matching by owner, actor and resource")
struct AttributionMatchingTests {
    func event(_ type: String, owner: String?, actor: String?, resource: String? = nil) -> NotificationEvent {
        var event = NotificationEvent(
            eventType: type, messageID: "m", project: owner, body: .object(["event_type": .string(type)]))
        event.actorProject = actor
        event.resourceID = resource
        return event
    }

    @Test("an event goes to the owner's subscriptions; the actor's only with include_actor; never to a third project")
    func ownerAndActor() {
        let tenant = Subscription(project: "tenant", eventTypes: ["port.*"], target: Target(queue: "q"))
        let admin = Subscription(project: "admin", eventTypes: ["port.*"], target: Target(queue: "q"))
        let adminActions = Subscription(
            project: "admin", eventTypes: ["port.*"], target: Target(queue: "q"), includeActor: true)
        let other = Subscription(
            project: "other", eventTypes: ["port.*"], target: Target(queue: "q"), includeActor: true)
        let index = SubscriptionIndex([tenant, admin, adminActions, other], defaultZaqarURL: "http://zaqar.test")
        // An admin creates a port for the tenant.
        #expect(
            Set(index.matches(event("port.create.end", owner: "tenant", actor: "admin")).map(\.id)) == [
                tenant.id, adminActions.id,
            ])
        // The tenant acts on its own port: no actor subscription twice.
        #expect(Set(index.matches(event("port.update.end", owner: "tenant", actor: "tenant")).map(\.id)) == [tenant.id])
        // The admin acts on its own port: its subscriptions once each.
        #expect(
            Set(index.matches(event("port.update.end", owner: "admin", actor: "admin")).map(\.id)) == [
                admin.id, adminActions.id,
            ])
    }

    @Test(
        "one owner and event type, with and without another project acting, one after the other: each gets its own candidates, in order"
    )
    func sameOwnerOtherActors() {
        let tenant = Subscription(id: "a-tenant", project: "tenant", eventTypes: ["port.*"], target: Target(queue: "q"))
        let everyone = Subscription(
            id: "b-all", project: "admin", allProjects: true, eventTypes: ["port.*"], target: Target(queue: "q"))
        let adminActions = Subscription(
            id: "c-admin", project: "admin", eventTypes: ["port.*"], target: Target(queue: "q"), includeActor: true)
        let otherActions = Subscription(
            id: "d-other", project: "other", eventTypes: ["port.create.*"], target: Target(queue: "q"),
            includeActor: true)
        let index = SubscriptionIndex(
            [otherActions, adminActions, everyone, tenant], defaultZaqarURL: "http://zaqar.test")
        // Twice each, so that the second of each comes from the cache; owner first, then all
        // projects, then the acting project's.
        for _ in 0..<2 {
            #expect(
                index.matches(event("port.create.end", owner: "tenant", actor: nil)).map(\.id) == ["a-tenant", "b-all"])
            #expect(
                index.matches(event("port.create.end", owner: "tenant", actor: "admin")).map(\.id) == [
                    "a-tenant", "b-all", "c-admin",
                ])
            #expect(
                index.matches(event("port.create.end", owner: "tenant", actor: "other")).map(\.id) == [
                    "a-tenant", "b-all", "d-other",
                ])
            #expect(
                index.matches(event("port.update.end", owner: "tenant", actor: "other")).map(\.id) == [
                    "a-tenant", "b-all",
                ])
            #expect(
                index.matches(event("port.create.end", owner: nil, actor: "admin")).map(\.id) == ["b-all", "c-admin"])
            #expect(index.matches(event("port.create.end", owner: "nobody", actor: nil)).map(\.id) == ["b-all"])
        }
    }

    @Test(
        "mayMatch says whether projects and patterns alone can take an event: never false where matches is not empty, and true where a filterless subscription takes it"
    )
    func mayMatchAgreesWithMatches() {
        let filterless = [
            Subscription(project: "tenant", eventTypes: ["port.*", "!port.delete.*"], target: Target(queue: "q")),
            Subscription(
                project: "admin", eventTypes: ["compute.instance.*"], target: Target(queue: "q"), includeActor: true),
            Subscription(
                project: "admin", allProjects: true, eventTypes: ["volume.attach.*"], target: Target(queue: "q")),
        ]
        let filtered = Subscription(
            project: "tenant", eventTypes: ["compute.*"],
            conditions: [Condition(field: "payload.state", op: .eq, value: .string("active"))],
            target: Target(queue: "q"))
        let types = [
            "port.create.end", "port.delete.end", "compute.instance.update", "volume.attach.end", "volume.detach.end",
            "image.upload",
        ]
        let projects: [String?] = ["tenant", "admin", "other", nil]
        for subscriptions in [filterless, filterless + [filtered]] {
            let index = SubscriptionIndex(subscriptions, defaultZaqarURL: "http://zaqar.test")
            for type in types {
                for owner in projects {
                    for actor in projects {
                        let event = event(type, owner: owner, actor: actor)
                        let may = index.mayMatch(eventType: type, project: owner, actorProject: actor)
                        let matched = index.matches(event)
                        #expect(may || matched.isEmpty, "\(type) \(owner ?? "-") \(actor ?? "-")")
                        if subscriptions.count == filterless.count {
                            #expect(may == !matched.isEmpty, "\(type) \(owner ?? "-") \(actor ?? "-")")
                        }
                    }
                }
            }
        }
        let index = SubscriptionIndex(filterless + [filtered], defaultZaqarURL: "http://zaqar.test")
        // Known at once only when no pattern must run: no scope met, or the candidates cached.
        let projectOnly = SubscriptionIndex([filtered], defaultZaqarURL: "http://zaqar.test")
        #expect(
            projectOnly.mayMatchIfKnown(eventType: "image.upload", project: "other", actorProject: nil) == false,
            "no subscription of that project, none of all projects")
        #expect(
            index.mayMatchIfKnown(eventType: "image.upload", project: "other", actorProject: nil) == nil,
            "an all-projects subscription's patterns must run")
        #expect(index.mayMatchIfKnown(eventType: "port.create.end", project: "tenant", actorProject: nil) == nil)
        #expect(
            index.mayMatchIfKnown(eventType: "port.create.end", project: "tenant", actorProject: nil) == nil,
            "asking fills nothing: still unknown")
        #expect(index.mayMatch(eventType: "port.create.end", project: "tenant", actorProject: nil))
        #expect(index.mayMatchIfKnown(eventType: "port.create.end", project: "tenant", actorProject: nil) == true)
        _ = index.mayMatch(eventType: "image.upload", project: "tenant", actorProject: nil)
        #expect(index.mayMatchIfKnown(eventType: "image.upload", project: "tenant", actorProject: nil) == false)
        #expect(
            index.mayMatch(eventType: "compute.instance.update", project: "tenant", actorProject: nil),
            "a subscription with a condition may take it: decoded to know")
        #expect(!index.mayMatch(eventType: "image.upload", project: "tenant", actorProject: "admin"))
    }

    @Test("resource_id keeps only that resource's events")
    func resource() {
        let pinned = Subscription(
            project: "p", eventTypes: ["compute.instance.*"], target: Target(queue: "q"), resourceID: "i-1")
        let index = SubscriptionIndex([pinned], defaultZaqarURL: "http://zaqar.test")
        #expect(index.matches(event("compute.instance.create.end", owner: "p", actor: "p", resource: "i-1")).count == 1)
        #expect(index.matches(event("compute.instance.create.end", owner: "p", actor: "p", resource: "i-2")).isEmpty)
        #expect(index.matches(event("compute.instance.create.end", owner: "p", actor: "p", resource: nil)).isEmpty)
    }
}
