import ArgumentParser
import CBaseline
import Coordination
import Delivery
import Foundation
import HeraldModel
import Logging
import Messaging
import Notifications
import Routing

/// `herald-bench hotpath`: the per-event work of a partition owner, in one process, each part
/// against a baseline from the same run: decoding oslo.messaging v2 envelopes of realistic nova,
/// neutron and cinder notifications (vs Foundation's JSONSerialization on the same bytes),
/// matching against 10 to 100,000 subscriptions (vs 10), and building the Zaqar messages (vs
/// JSONSerialization of the same message).
struct HotPath: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hotpath", abstract: "Decode, match and encode per event, against baselines in the same run.")

    @Option(help: "Distinct notifications (each about --size bytes) cycled through.") var notifications: Int = 1_000
    @Option(help: "Approximate notification size in bytes.") var size: Int = 2_500
    @Option(help: "Events per decode and encode round.") var events: Int = 20_000
    @Option(help: "Events per match round.") var matchEvents: Int = 200_000
    @Option(help: "Projects the events and subscriptions belong to.") var projects: Int = 1_000
    @Option(help: "Rounds of each measurement; the median is reported.") var rounds: Int = 3
    @Option(help: "Which parts: decode, attribute, encode, match, worst, memory (comma-separated).")
    var parts: String = "decode,attribute,encode,match,worst,memory"
    @Option(help: "Subscription counts for match (comma-separated).") var subscriptionCounts: String =
        "10,1000,10000,100000"
    @Option(
        help:
            "Match: what the subscriptions past the first count are. same: more of the corpus (more matches per event); other-tenants: of projects no event comes from; other-types: of the events' projects, for event types none of them has. With the last two, every count meets the same matches per event."
    )
    var matchAdded: MatchAdded = .same

    enum MatchAdded: String, ExpressibleByArgument, CaseIterable {
        case same
        case otherTenants = "other-tenants"
        case otherTypes = "other-types"
    }

    func run() async throws {
        let corpus = NotificationCorpus(count: notifications, size: size, projects: projects)
        let bodies = corpus.envelopes
        let average = bodies.reduce(0) { $0 + $1.count } / bodies.count
        print(
            "Hot path: \(bodies.count) distinct messagingv2 envelopes, \(average) B on average, \(projects) projects; median of \(rounds) rounds"
        )

        let parts = Set(parts.split(separator: ",").map(String.init))
        if parts.contains("decode") { measureDecode(bodies) }
        if parts.contains("attribute") { measureAttribute(bodies) }
        if parts.contains("encode") { measureEncode(bodies) }
        if parts.contains("match") { measureMatch(corpus, bodies) }
        if parts.contains("worst") { measureWorst(corpus, bodies) }
        if parts.contains("memory") { measureMemory(corpus) }
    }

    /// The heap kept per subscription, for the largest of the subscription counts: the registry
    /// as decoded from Redis (held only while an index is built from it), the index built from
    /// it, and the index alone, which is what a node keeps. Subscriptions as Keystone deployments store them: 32-hex project,
    /// user and trust ids. The baseline is the stored JSON itself.
    func measureMemory(_ corpus: NotificationCorpus) {
        let count = subscriptionCounts.split(separator: ",").compactMap({ Int($0) }).max() ?? 10_000
        let records = corpus.subscriptions(count).enumerated().map { index, subscription in
            var subscription = subscription
            subscription.project = NotificationCorpus.hexID(subscription.project)
            subscription.trustID = NotificationCorpus.hexID("trust-\(index)")
            subscription.createdBy = NotificationCorpus.hexID("user-\(index % 997)")
            subscription.updatedBy = subscription.createdBy
            return StoredSubscription(id: subscription.id, bytes: Array(try! JSONEncoder().encode(subscription)))
        }
        let stored = records.map(\.bytes)
        let storedBytes = stored.reduce(0) { $0 + $1.count }
        func perSubscription(_ bytes: Int) -> String { String(format: "%6.0f B", Double(bytes) / Double(count)) }
        print(
            "  memory   \(count) subscriptions, per subscription: heap in use (glibc mallinfo2), resident after malloc_trim"
        )
        print("           stored JSON (the baseline)                            \(perSubscription(storedBytes))")

        // Warm-up: what the first decoding and the first index set up once (caches, metadata) is
        // not counted against either way.
        for _ in 0..<2 {
            let few = Array(stored.prefix(2_000))
            _ = SubscriptionIndex(
                few.map { try! JSONDecoder().decode(Subscription.self, from: Data($0)) }, defaultZaqarURL: "")
            _ = SubscriptionIndex(
                RegistryUpdate(version: 1, all: Array(records.prefix(2_000)), changed: [:]).subscriptions(
                    logger: Logger(label: "bench")),
                defaultZaqarURL: "")
        }

        // As nodes built it before: every subscription decoded first, the index built from them.
        var startResident = herald_heap_trim_and_resident()
        var start = herald_heap_in_use()
        var decoded: [Subscription]? = stored.map { try! JSONDecoder().decode(Subscription.self, from: Data($0)) }
        let registry = Int(herald_heap_in_use()) - Int(start)
        var index: SubscriptionIndex? = SubscriptionIndex(decoded ?? [], defaultZaqarURL: "http://zaqar.example:8888")
        decoded = nil
        let afterDecoded = (
            Int(herald_heap_in_use()) - Int(start), Int(herald_heap_trim_and_resident()) - Int(startResident)
        )
        index = nil
        // As a node builds it: the records decoded one at a time, only routes kept.
        startResident = herald_heap_trim_and_resident()
        start = herald_heap_in_use()
        index = SubscriptionIndex(
            RegistryUpdate(version: 1, all: records, changed: [:]).subscriptions(logger: Logger(label: "bench")),
            defaultZaqarURL: "http://zaqar.example:8888")
        let streamed = (
            Int(herald_heap_in_use()) - Int(start), Int(herald_heap_trim_and_resident()) - Int(startResident)
        )
        let kept = index?.count ?? 0
        index = nil

        print(
            "           the subscriptions decoded (held by nodes before)     \(perSubscription(registry))   ratio \(ratio(Double(registry), Double(storedBytes)))"
        )
        print(
            "           the index, records decoded one at a time (\(kept))   \(perSubscription(streamed.0))   resident \(perSubscription(streamed.1))   ratio \(ratio(Double(streamed.1), Double(storedBytes)))"
        )
        print(
            "           the same index, built after decoding them all        \(perSubscription(afterDecoded.0))   resident \(perSubscription(afterDecoded.1))   (the index's objects spread over the freed ones' pages)"
        )
    }

    /// The most one allowed subscription can cost per event: 10,000 ordinary subscriptions, then
    /// the same with one subscription at every limit of `Subscription.Limits` added (made for all
    /// projects, so it meets every event), on the same events. The difference is its cost.
    func measureWorst(_ corpus: NotificationCorpus, _ bodies: [[UInt8]]) {
        let sample = bodies.prefix(500).flatMap { try! NotificationDecoder.decode($0) }
        let ordinary = corpus.subscriptions(10_000)
        let worst = Self.worstSubscription()
        do { try worst.validate() } catch { fatalError("the worst subscription must be an allowed one: \(error)") }
        let without = SubscriptionIndex(ordinary, defaultZaqarURL: "")
        let with = SubscriptionIndex(ordinary + [worst], defaultZaqarURL: "")
        func speed(_ index: SubscriptionIndex) -> Double {
            rate(matchEvents / 4) { i in
                let event = sample[i % sample.count]
                _ = index.matches(
                    NotificationEvent(
                        eventType: event.eventType, messageID: event.messageID, project: event.project, json: event.json
                    ))
            }
        }
        let base = speed(without)
        let loaded = speed(with)
        let cost = 1e6 / loaded - 1e6 / base
        // The first event of a type runs the globs (then cached): every event here has a type the
        // index has not seen, so each pays the worst subscription's globs as well as its conditions.
        let typeRounds = 20_000
        let event = sample[0]
        let started = ContinuousClock.now
        for round in 0..<typeRounds {
            _ = with.matches(
                NotificationEvent(
                    eventType: "compute.instance.type\(round).end", messageID: "m", project: event.project,
                    json: event.json))
        }
        let firstOfType = (ContinuousClock.now - started).seconds / Double(typeRounds) * 1e6
        print(
            String(
                format:
                    "  worst    10,000 subscriptions: %.2f µs/event; with the worst allowed one added: %.2f µs/event; its cost %.2f µs/event (goal 20); an event of a type not seen before (globs, then cached) %.1f µs",
                1e6 / base, 1e6 / loaded, cost, firstOfType))
    }

    /// One subscription at every limit: the most patterns, each as long and wild as allowed (none
    /// matching except the last, `*`), the most conditions, each on a path that is present and
    /// comparing the longest operand string, ending with the largest `in` list that fits the
    /// operand's encoded limit.
    static func worstSubscription() -> Subscription {
        let limits = Subscription.Limits.self
        let wild = String(repeating: "*a", count: limits.wildcardsPerPattern - 1) + "*"
        var patterns = (0..<(limits.patterns - 1)).map { index in
            let body = "\(index)" + wild
            return body + String(repeating: "b", count: limits.patternBytes - body.utf8.count)
        }
        patterns.append("*")
        let long = String(repeating: "z", count: limits.operandStringCharacters - 3)
        var conditions = (0..<(limits.conditions - 1)).map { index in
            // Present in every event of the corpus, and never equal to the operand: all evaluated.
            Condition(field: "payload.metadata_\(index % 20)", op: .ne, value: .string(long + "\(index)"))
        }
        // As long as the items can be with the most of them inside the operand's encoded limit.
        let itemLength = limits.operandBytes / limits.inItems - 4
        let items = (0..<limits.inItems).map {
            JSONValue.string(String(repeating: "y", count: itemLength - 3) + String(format: "%03d", $0))
        }
        conditions.append(Condition(field: "payload.display_name", op: .in, value: .array(items)))
        return Subscription(
            project: "admin", allProjects: true, eventTypes: patterns, conditions: conditions,
            target: Target(queue: "worst"))
    }

    func measureDecode(_ bodies: [[UInt8]]) {
        let baseline = rate(events) { index in
            let body = bodies[index % bodies.count]
            let outer = try! JSONSerialization.jsonObject(with: Data(body)) as! [String: Any]
            _ = try! JSONSerialization.jsonObject(with: Data((outer["oslo.message"] as! String).utf8))
        }
        let decode = rate(events) { index in _ = try! NotificationDecoder.decode(bodies[index % bodies.count]) }
        print(
            "  decode   JSONSerialization (baseline) \(format(baseline)) /s   NotificationDecoder \(format(decode)) /s   ratio \(ratio(decode, baseline))"
        )

    }

    /// Owner, resource id and actor by the shipped event definitions (`EventDefinitions.attribute`)
    /// against the same rule applied one path at a time (a simdjson pass for each path tried), on
    /// the same events, each made anew from its bytes as the pipeline has it.
    func measureAttribute(_ bodies: [[UInt8]]) {
        let definitions = EventDefinitions.defaults
        let sample = bodies.prefix(500).flatMap { try! NotificationDecoder.decode($0) }
        func fresh(_ event: NotificationEvent) -> NotificationEvent {
            var copy = NotificationEvent(
                eventType: event.eventType, messageID: event.messageID, project: event.project, json: event.json)
            copy.contextProject = event.contextProject
            return copy
        }
        func firstOneAtATime(_ paths: [FieldPath], _ event: NotificationEvent) -> String? {
            for path in paths {
                let value =
                    EventDefinitions.isContext(path)
                    ? event.contextProject.map(JSONValue.string) : event.value(atPath: path.segments)
                if case .string(let text)? = value, !text.isEmpty, text.utf8.count <= EventDefinitions.maxIDBytes {
                    return text
                }
            }
            return nil
        }
        func oneAtATime(_ event: NotificationEvent) -> (String?, String?, String?) {
            guard let definition = definitions.definition(for: event.eventType) else {
                return (event.project, nil, firstOneAtATime(EventDefinitions.defaultActor, event))
            }
            return (
                firstOneAtATime(definition.owner, event) ?? event.project,
                firstOneAtATime(definition.resourceID, event),
                firstOneAtATime(definition.actor.isEmpty ? EventDefinitions.defaultActor : definition.actor, event)
            )
        }
        // Both ways give the same answers on these events.
        var differ = 0
        for event in sample {
            var attributed = fresh(event)
            definitions.attribute(&attributed)
            let expected = oneAtATime(fresh(event))
            if attributed.project != expected.0 || attributed.resourceID != expected.1
                || attributed.actorProject != expected.2
            {
                differ += 1
            }
        }
        let baseline = rate(events) { index in _ = oneAtATime(fresh(sample[index % sample.count])) }
        let together = rate(events) { index in
            var event = fresh(sample[index % sample.count])
            definitions.attribute(&event)
        }
        print(
            "  attribute  one path at a time (baseline) \(format(baseline)) /s   EventDefinitions.attribute \(format(together)) /s   ratio \(ratio(together, baseline)); answers differ on \(differ) of \(sample.count) events"
        )
    }

    /// The delivered message for one subscription.
    func measureEncode(_ bodies: [[UInt8]]) {
        let decoded = bodies.prefix(200).map { try! NotificationDecoder.decode($0)[0] }
        let encodeBaseline = rate(events) { index in
            let event = decoded[index % decoded.count]
            let object: [String: Any] = [
                "ttl": 3600,
                "body": [
                    "event": event.body.foundationObject,
                    "herald": [
                        "subscription_id": "3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11", "event_id": event.messageID,
                        "partition": 7, "epoch": 3,
                    ],
                ],
            ]
            _ = try! JSONSerialization.data(withJSONObject: object)
        }
        let encode = rate(events) { index in
            let event = decoded[index % decoded.count]
            let body = NotificationDecoder.encode(event)
            _ = ZaqarMessageEncoding.message(
                event: body, ttl: 3600, subscriptionID: "3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11",
                eventID: event.messageID, partition: 7, epoch: 3)
        }
        print(
            "  encode   JSONSerialization (baseline) \(format(encodeBaseline)) /s   event + message    \(format(encode)) /s   ratio \(ratio(encode, encodeBaseline))"
        )
        // What tenants receive: the same message with the admin-only fields cut (the shipped
        // rules), against the uncut message above.
        let rules = RedactionRules.defaults
        var cut = 0
        let redacted = rate(events) { index in
            let event = decoded[index % decoded.count]
            let body = NotificationDecoder.encode(event)
            let result = try! rules.redact(event)
            if result != nil { cut &+= 1 }
            _ = ZaqarMessageEncoding.message(
                event: result?.json ?? body, ttl: 3600, subscriptionID: "3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11",
                eventID: event.messageID, partition: 7, epoch: 3,
                redacted: result?.removed ?? [])
        }
        print(
            "  redact   event + message (baseline)   \(format(encode)) /s   redacted + message \(format(redacted)) /s   ratio \(ratio(redacted, encode))   (\(String(format: "%.1f", 1e6 / redacted - 1e6 / encode)) µs more per event; \(cut * 100 / max(1, events * rounds))% of events had something cut)"
        )
        // A CloudEvents subscription: the attributes from the event, the payload copied as raw JSON.
        let cloud = rate(events) { index in
            let event = decoded[index % decoded.count]
            let body = NotificationDecoder.encode(event)
            let attributes = ZaqarMessageEncoding.CloudEventAttributes.of(
                eventType: event.eventType, messageID: event.messageID,
                publisherID: event.value(at: "publisher_id")?.stringValue,
                timestamp: event.value(at: "timestamp")?.stringValue, resourceID: event.resourceID
            )
            let data = NotificationScanner.rawValue(body, path: ["payload"]) ?? body
            _ = ZaqarMessageEncoding.cloudEvent(
                data: data, attributes: attributes, ttl: 3600, subscriptionID: "3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11",
                partition: 7, epoch: 3)
        }
        print(
            "  cloud    event + message (baseline)   \(format(encode)) /s   CloudEvent         \(format(cloud)) /s   ratio \(ratio(cloud, encode))   (\(String(format: "%.1f", 1e6 / cloud - 1e6 / encode)) µs more per event)"
        )
        // What the health and event-type views cost the delivery path: counting per subscription
        // and per (project, event type), in memory (Redis is written once a second, elsewhere).
        let redis = RedisClient(configuration: try! RedisConfiguration(url: "redis://127.0.0.1:1/0"))
        let stats = SubscriptionStats(redis: redis)
        let catalog = EventTypeCatalog(redis: redis)
        let counted = rate(events) { index in
            let event = decoded[index % decoded.count]
            let body = NotificationDecoder.encode(event)
            if let project = event.project, catalog.seen(project: project, eventType: event.eventType) {
                catalog.sample(project: project, eventType: event.eventType, json: body)
            }
            _ = ZaqarMessageEncoding.message(
                event: body, ttl: 3600, subscriptionID: "3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11",
                eventID: event.messageID, partition: 7, epoch: 3)
            stats.count(CollectionOfOne("3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11"), \.matched)
            stats.count(CollectionOfOne("3f1c0c86-5d47-4a57-9a0c-0f1f3b2a9d11"), \.delivered)
        }
        print(
            "  count    event + message (baseline)   \(format(encode)) /s   + health, types    \(format(counted)) /s   ratio \(ratio(counted, encode))   (\(String(format: "%.2f", 1e6 / counted - 1e6 / encode)) µs more per event)"
        )

    }

    func measureMatch(_ corpus: NotificationCorpus, _ bodies: [[UInt8]]) {
        let sample = bodies.prefix(500).flatMap { try! NotificationDecoder.decode($0) }
        var base: Double?
        let counts = subscriptionCounts.split(separator: ",").compactMap { Int($0) }
        let first = counts.first ?? 0
        print(
            "  match    subscriptions   compile s   events/s     µs/event   matches/event   vs \(first) (added: \(matchAdded.rawValue))"
        )
        for count in counts {
            let subscriptions: [Subscription]
            switch matchAdded {
            case _ where count <= first, .same: subscriptions = corpus.subscriptions(count)
            case .otherTenants:
                subscriptions =
                    corpus.subscriptions(first) + corpus.subscriptions(count - first, tenant: "other-", seed: 11)
            case .otherTypes:
                subscriptions =
                    corpus.subscriptions(first) + corpus.subscriptions(count - first, seed: 11, otherTypes: true)
            }
            let started = ContinuousClock.now
            let index = SubscriptionIndex(subscriptions, defaultZaqarURL: "")
            let compile = (ContinuousClock.now - started).seconds
            var matched = 0
            // A fresh event each time, as in the pipeline: a condition's field is looked up anew.
            let speed = rate(matchEvents) { i in
                let event = sample[i % sample.count]
                matched &+=
                    index.matches(
                        NotificationEvent(
                            eventType: event.eventType, messageID: event.messageID, project: event.project,
                            json: event.json)
                    ).count
            }
            let perEvent = Double(matched) / Double(matchEvents * rounds)
            let reference = base ?? speed
            base = base ?? speed
            print(
                String(
                    format: "           %13d   %9.3f   %@   %8.2f   %13.2f   %.2fx slower", count, compile,
                    format(speed), 1e6 / speed, perEvent, reference / speed))
        }
    }

    /// Calls per second of `body(i)` for i in 0..<n: the median of `rounds` rounds.
    func rate(_ n: Int, _ body: (Int) -> Void) -> Double {
        var rates: [Double] = []
        for _ in 0..<rounds {
            let started = ContinuousClock.now
            for i in 0..<n { body(i) }
            rates.append(Double(n) / (ContinuousClock.now - started).seconds)
        }
        return median(rates)
    }

    func ratio(_ value: Double, _ baseline: Double) -> String {
        String(format: "%.2fx", value / baseline)
    }
}

/// Realistic notifications (nova, neutron, cinder; 1-3 KB payloads) in a Zipf mix of event types,
/// and subscriptions over them (globs, exclusions, conditions), deterministic from a seed.
struct NotificationCorpus {
    static let eventTypes = [
        "compute.instance.update", "compute.instance.create.start", "compute.instance.create.end",
        "compute.instance.delete.start",
        "compute.instance.delete.end", "compute.instance.power_off.end", "compute.instance.power_on.end",
        "compute.instance.resize.end",
        "port.create.end", "port.update.end", "port.delete.end", "network.create.end", "subnet.create.end",
        "floatingip.update.end",
        "volume.create.start", "volume.create.end", "volume.attach.end", "volume.detach.end", "volume.delete.end",
        "snapshot.create.end",
    ]

    let count: Int
    let size: Int
    let projects: Int
    private(set) var envelopes: [[UInt8]] = []

    /// The event types each service's exchange carries (`eventTypes` by service).
    static let serviceEventTypes: [String: [String]] = [
        "nova": eventTypes.filter { $0.hasPrefix("compute.") },
        "neutron": eventTypes.filter { ["port.", "network.", "subnet.", "floatingip."].contains(where: $0.hasPrefix) },
        "cinder": eventTypes.filter { $0.hasPrefix("volume.") || $0.hasPrefix("snapshot.") },
    ]

    /// - Parameters:
    ///   - messageID: one message id for every envelope (a placeholder the load harness replaces).
    ///   - services: none, a Zipf mix of every event type; else template `i` is an event of
    ///     service `services[i % services.count]` (Zipf within its types): an even mix of exchanges.
    ///   - unsubscribedFraction: about this share of the envelopes belong to projects no
    ///     subscription of `subscriptions(_:)` has (`quiet-N`).
    init(
        count: Int, size: Int, projects: Int, messageID: String? = nil, services: [String] = [],
        unsubscribedFraction: Double = 0
    ) {
        self.count = count
        self.size = size
        self.projects = projects
        var random = SplitMix(seed: 42)
        envelopes = (0..<count).map { index in
            let types =
                services.isEmpty ? Self.eventTypes : Self.serviceEventTypes[services[index % services.count]] ?? []
            let type = types[Self.zipf(&random, types.count)]
            var project = "project-\(random.next() % UInt64(projects))"
            // Without the option, the same draws as before: the same corpus.
            if unsubscribedFraction > 0, Double(random.next() % 1_000_000) < unsubscribedFraction * 1_000_000 {
                project = "quiet-" + project.dropFirst("project-".count)
            }
            return Self.envelope(
                type: type, project: project, index: index, size: size, messageID: messageID ?? UUID().uuidString)
        }
    }

    /// Rank 0 most often: P(k) ∝ 1 / (k + 1).
    static func zipf(_ random: inout SplitMix, _ n: Int) -> Int {
        let total = (1...n).reduce(0.0) { $0 + 1 / Double($1) }
        var pick = Double(random.next() % 1_000_000) / 1_000_000 * total
        for k in 0..<n {
            pick -= 1 / Double(k + 1)
            if pick <= 0 { return k }
        }
        return n - 1
    }

    static func envelope(
        type: String, project: String, index: Int, size: Int, messageID: String = UUID().uuidString
    ) -> [UInt8] {
        var payload: [String: Any] = [
            "project_id": project, "tenant_id": project, "user_id": "user-\(index % 97)",
            "state": index % 3 == 0 ? "active" : "building", "host": "compute-\(index % 40)",
            "availability_zone": "nova",
            "instance_id": UUID().uuidString, "display_name": "server-\(index)",
            "flavor": ["name": "m1.small", "vcpus": 1, "memory_mb": 2048, "root_gb": 20],
            "image_meta": [
                "os_distro": index % 2 == 0 ? "ubuntu" : "fedora", "min_disk": "20", "container_format": "bare",
            ],
            "created_at": "2026-11-24 10:00:00+00:00", "launched_at": "2026-11-24 10:01:\(10 + index % 50)+00:00",
            "fixed_ips": [
                [
                    "address": "10.0.\(index % 250).\(index % 200 + 2)", "version": 4, "type": "fixed",
                    "label": "private",
                ]
            ],
        ]
        var filler = 0
        while (try! JSONSerialization.data(withJSONObject: payload)).count < size - 600 {
            payload["metadata_\(filler)"] = String(repeating: "x", count: 60)
            filler += 1
        }
        let message: [String: Any] = [
            "message_id": messageID, "event_type": type, "priority": "INFO",
            "publisher_id": "compute.host-\(index % 40)",
            "timestamp": "2026-11-24 10:01:00.000000", "payload": payload,
            "_context_project_id": project, "_context_user_name": "someone", "_context_roles": ["member"],
            "_context_request_id": "req-\(index)",
        ]
        let inner = String(decoding: try! JSONSerialization.data(withJSONObject: message), as: UTF8.self)
        return Array(try! JSONSerialization.data(withJSONObject: ["oslo.version": "2.0", "oslo.message": inner]))
    }

    /// A 32-hex id (Keystone's shape) derived from `seed`.
    static func hexID(_ seed: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in seed.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return String(format: "%016llx%016llx", hash, hash &* 0x9E37_79B9_7F4A_7C15)
    }

    /// `count` subscriptions spread over the projects: most a glob of one service's events,
    /// some an exact type, some with an exclusion or a condition.
    /// - Parameters:
    ///   - tenant: the projects' prefix; the events' projects are `project-N` (or `quiet-N`), so
    ///     another prefix makes subscriptions of the same shapes that no event matches.
    ///   - seed: the draws of projects and patterns.
    ///   - otherTypes: patterns of services the events never come from (glance, heat, designate,
    ///     octavia, keystone), in the same shapes: subscriptions of the events' projects that no
    ///     event matches.
    func subscriptions(
        _ count: Int, tenant: String = "project-", seed: UInt64 = 7, otherTypes: Bool = false
    )
        -> [Subscription]
    {
        var random = SplitMix(seed: seed)
        let globs =
            otherTypes
            ? [
                "image.*", "image.upload.*", "orchestration.stack.*", "orchestration.stack.create.*", "dns.zone.*",
                "dns.recordset.*", "octavia.loadbalancer.*", "identity.project.*",
            ]
            : [
                "compute.instance.*", "compute.instance.create.*", "compute.instance.delete.*", "port.*",
                "network.*", "volume.*", "volume.attach.*", "snapshot.*",
            ]
        let exact =
            otherTypes
            ? [
                "image.update", "image.delete", "orchestration.stack.update.end", "dns.zone.create",
                "identity.user.created",
            ]
            : Self.eventTypes
        return (0..<count).map { index in
            let project = "\(tenant)\(random.next() % UInt64(projects))"
            var types: [String]
            switch index % 4 {
            case 0: types = [globs[Int(random.next() % UInt64(globs.count))]]
            case 1: types = [exact[Int(random.next() % UInt64(exact.count))]]
            case 2:
                types = otherTypes ? ["image.*", "!image.update"] : ["compute.instance.*", "!compute.instance.update"]
            default: types = [globs[Int(random.next() % UInt64(globs.count))], otherTypes ? "dns.*" : "volume.*"]
            }
            let conditions =
                index % 5 == 0 ? [Condition(field: "payload.state", op: .eq, value: .string("active"))] : []
            return Subscription(
                project: project, eventTypes: types, conditions: conditions, target: Target(queue: "q\(index)"))
        }
    }
}

/// A small deterministic generator, so every run measures the same corpus.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension JSONValue {
    /// The same value as Foundation objects, for the JSONSerialization baseline.
    var foundationObject: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let value): return value
        case .number(let value): return value
        case .string(let value): return value
        case .array(let items): return items.map(\.foundationObject)
        case .object(let fields): return fields.mapValues(\.foundationObject)
        }
    }
}
