import Coordination
import Delivery
import Foundation
import HTTPTypes
import HeraldModel
import Hummingbird
import Identity
import Logging
import Notifications

/// What the API needs from the node it runs in; tests give it the same parts over the real servers.
package struct APIServices: Sendable {
    var registry: SubscriptionRegistry
    var deadLetters: DeadLetterStore
    /// Where a subscription without a Zaqar URL of its own delivers (HERALD_ZAQAR_URL).
    var defaultZaqarURL: String
    /// Posts one message into a target (a dead letter's replay).
    var deliver: @Sendable (ZaqarTarget, [UInt8]) async throws -> ZaqarResponse
    /// Whether the node may take traffic, check by check.
    var readiness: @Sendable () async -> [String: Bool]
    /// The Prometheus text exposition of the node's metrics.
    var metrics: @Sendable () -> String
    /// `/metrics` is served on the API's port (false: on a port of its own, `metricsRouter`).
    package var metricsOnAPIPort = true
    /// Keystone, for subscribers' trusts (keystone mode).
    var keystone: KeystoneClient? = nil
    /// When a pre-signed URL without a trust is flagged in answers.
    var signedURLs = SignedURLPolicy()
    /// The Zaqar endpoints a subscription may name (HERALD_ZAQAR_ALLOWED_URLS); nil: any (tests only).
    var endpoints: ZaqarEndpoints? = nil
    /// Quotas and rates per project.
    var limits = APILimits()
    /// Where the per-project rates are counted (shared by every node); nil: rates are not limited.
    var rates: RateLimiter? = nil
    /// Who may do what (HERALD_POLICY_FILE over the defaults).
    var policy = Policy()
    /// Which subscriptions' targets fail or have messages parked; nil: every target shows healthy.
    var parking: ParkingLedger? = nil
    /// Each subscription's counts, last delivery and last error; nil: none shown.
    var stats: SubscriptionStats? = nil
    /// The event types seen per project; nil: none listed.
    var catalog: EventTypeCatalog? = nil
    /// HERALD_DELIVERY_RETRY_HORIZON, to say when parked messages would be given up.
    var retryHorizon: Duration = .seconds(86_400)
    /// What tenants never receive (HERALD_REDACTION_FILE over the shipped rules): conditions
    /// may not read it either.
    var redaction: RedactionRules = .defaults

    package init(
        registry: SubscriptionRegistry, deadLetters: DeadLetterStore, defaultZaqarURL: String,
        deliver: @escaping @Sendable (ZaqarTarget, [UInt8]) async throws -> ZaqarResponse,
        readiness: @escaping @Sendable () async -> [String: Bool], metrics: @escaping @Sendable () -> String,
        keystone: KeystoneClient? = nil, signedURLs: SignedURLPolicy = SignedURLPolicy(),
        endpoints: ZaqarEndpoints? = nil, limits: APILimits = APILimits(), rates: RateLimiter? = nil,
        policy: Policy = Policy(), parking: ParkingLedger? = nil, stats: SubscriptionStats? = nil,
        catalog: EventTypeCatalog? = nil, retryHorizon: Duration = .seconds(86_400),
        redaction: RedactionRules = .defaults
    ) {
        self.registry = registry
        self.deadLetters = deadLetters
        self.defaultZaqarURL = defaultZaqarURL
        self.deliver = deliver
        self.readiness = readiness
        self.metrics = metrics
        self.keystone = keystone
        self.signedURLs = signedURLs
        self.endpoints = endpoints
        self.limits = limits
        self.rates = rates
        self.policy = policy
        self.parking = parking
        self.stats = stats
        self.catalog = catalog
        self.retryHorizon = retryHorizon
        self.redaction = redaction
    }
}

/// What one project may do through the API (docs/security.md).
package struct APILimits: Sendable {
    /// HERALD_QUOTA_SUBSCRIPTIONS: subscriptions per project. Default 100.
    var subscriptionsPerProject = 100
    /// HERALD_RATE_SUBSCRIPTION_CHANGES: creates and updates per project per minute. Default 60.
    var changesPerMinute = 60
    /// HERALD_REPLAY_MAX: dead letters one replay call takes. Default 100.
    var replayPerCall = 100
    /// HERALD_RATE_REPLAYS: dead letters replayed per project per minute. Default 1000.
    var replaysPerMinute = 1000
    /// HERALD_RATE_TESTS: test events (`POST /v1/subscriptions/{id}/test`) per project per minute. Default 10.
    var testsPerMinute = 10
    /// HERALD_QUOTA_SUBSCRIPTIONS_TOTAL: every project's subscriptions together. Default 200,000.
    var subscriptionsInAll = 200_000
    /// HERALD_API_PROJECT_REQUESTS_IN_FLIGHT: one project's requests a node serves at once. Default 16.
    var requestsInFlightPerProject = 16
    /// HERALD_API_REQUESTS_IN_FLIGHT: requests a node serves at once, every project together. Default 128.
    var requestsInFlight = 128

    package init(
        subscriptionsPerProject: Int = 100, subscriptionsInAll: Int = 200_000, changesPerMinute: Int = 60,
        replayPerCall: Int = 100, replaysPerMinute: Int = 1000, testsPerMinute: Int = 10,
        requestsInFlightPerProject: Int = 16, requestsInFlight: Int = 128
    ) {
        self.subscriptionsPerProject = subscriptionsPerProject
        self.subscriptionsInAll = subscriptionsInAll
        self.changesPerMinute = changesPerMinute
        self.replayPerCall = replayPerCall
        self.replaysPerMinute = replaysPerMinute
        self.testsPerMinute = testsPerMinute
        self.requestsInFlightPerProject = requestsInFlightPerProject
        self.requestsInFlight = requestsInFlight
    }
}

/// One route: its method and OpenAPI-style path, whether it needs a caller, and its handler.
/// The table is what the router serves and what the OpenAPI test compares the document with.
package struct APIRoute: Sendable {
    var method: HTTPRequest.Method
    var path: String
    var authenticated: Bool
    var handler: @Sendable (Request, APIContext) async throws -> Response
}

/// Herald's HTTP API: subscriptions (and the seed service's alias), dead letters, health,
/// metrics and the OpenAPI document. Every subscription route is scoped to the caller's project.
package struct HeraldAPI: Sendable {
    let services: APIServices
    /// The requests this API serves at once, per project and in all.
    let inFlight: InFlightLimit

    package init(services: APIServices) {
        self.services = services
        inFlight = InFlightLimit(
            perProject: services.limits.requestsInFlightPerProject, total: services.limits.requestsInFlight)
    }

    static let subscriptionFields: Set<String> = [
        "event_types", "conditions", "target", "message_ttl", "all_projects", "project", "trust", "include_actor",
        "resource_id", "origin", "unredacted", "format",
    ]
    static let patchFields: Set<String> = [
        "event_types", "conditions", "target", "message_ttl", "all_projects", "include_actor", "resource_id", "origin",
        "unredacted", "format",
    ]
    static let aliasFields: Set<String> = ["source", "target", "message_ttl"]

    /// What the API's port serves (`/metrics` only while `services.metricsOnAPIPort`).
    var routes: [APIRoute] {
        let all = [
            APIRoute(method: .get, path: "/healthz", authenticated: false) { _, _ in
                try APIJSON.response(["status": "alive"])
            },
            APIRoute(method: .get, path: "/readyz", authenticated: false, handler: readyz),
            APIRoute(method: .get, path: "/metrics", authenticated: false) { [services] _, _ in
                Self.metricsResponse(services)
            },
            APIRoute(method: .get, path: "/v1/openapi.json", authenticated: false) { _, _ in
                var headers = HTTPFields()
                headers[.contentType] = "application/json"
                return Response(
                    status: .ok, headers: headers,
                    body: ResponseBody(byteBuffer: ByteBuffer(string: OpenAPIDocument.json)))
            },
            APIRoute(method: .post, path: "/v1/subscriptions", authenticated: true, handler: createSubscription),
            APIRoute(method: .get, path: "/v1/subscriptions", authenticated: true, handler: listSubscriptions),
            APIRoute(method: .get, path: "/v1/subscriptions/{id}", authenticated: true, handler: getSubscription),
            APIRoute(method: .patch, path: "/v1/subscriptions/{id}", authenticated: true, handler: patchSubscription),
            APIRoute(method: .delete, path: "/v1/subscriptions/{id}", authenticated: true, handler: deleteSubscription),
            APIRoute(method: .get, path: "/v1/subscriptions/{id}/delivery", authenticated: true, handler: getDelivery),
            APIRoute(
                method: .post, path: "/v1/subscriptions/{id}/test", authenticated: true, handler: testSubscription),
            APIRoute(method: .get, path: "/v1/event-types", authenticated: true, handler: listEventTypes),
            APIRoute(method: .get, path: "/v1/feed", authenticated: true, handler: getFeed),
            APIRoute(method: .put, path: "/v1/feed", authenticated: true, handler: putFeed),
            APIRoute(method: .delete, path: "/v1/feed", authenticated: true, handler: deleteFeed),
            APIRoute(method: .post, path: "/v1/subscription", authenticated: true, handler: createAlias),
            APIRoute(method: .get, path: "/v1/subscription", authenticated: true, handler: listAlias),
            APIRoute(method: .get, path: "/v1/subscription/{id}", authenticated: true, handler: getAlias),
            APIRoute(method: .delete, path: "/v1/subscription/{id}", authenticated: true, handler: deleteSubscription),
            APIRoute(method: .get, path: "/v1/dead-letters", authenticated: true, handler: listDeadLetters),
            APIRoute(method: .post, path: "/v1/dead-letters/replay", authenticated: true, handler: replayDeadLetters),
            APIRoute(method: .delete, path: "/v1/dead-letters", authenticated: true, handler: purgeDeadLetters),
            APIRoute(method: .get, path: "/v1/policy", authenticated: true, handler: getPolicy),
        ]
        return services.metricsOnAPIPort ? all : all.filter { $0.path != "/metrics" }
    }

    /// The router: open routes as they are, the others behind `authenticator`.
    package func router<Authenticator: RouterMiddleware>(authenticator: Authenticator) -> Router<APIContext>
    where Authenticator.Context == APIContext {
        let router = Router(context: APIContext.self)
        // Request counts and durations by method, route pattern and status (bounded labels).
        router.add(middleware: MetricsMiddleware())
        let protected = router.group()
        protected.add(middleware: authenticator)
        protected.add(middleware: InFlightMiddleware(limit: inFlight))
        for route in routes {
            let handler = route.handler
            if route.authenticated {
                protected.on(RouterPath(route.path), method: route.method) {
                    (request: Request, context: APIContext) async throws -> Response in
                    try await handler(request, context)
                }
            } else {
                router.on(RouterPath(route.path), method: route.method) {
                    (request: Request, context: APIContext) async throws -> Response in
                    try await handler(request, context)
                }
            }
        }
        return router
    }

    /// `/metrics` alone, for a port of its own (HERALD_METRICS_PORT): Prometheus reaches it
    /// where the API's clients do not.
    package func metricsRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.get("/metrics") { [services] _, _ in Self.metricsResponse(services) }
        return router
    }

    private static func metricsResponse(_ services: APIServices) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
        return Response(
            status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: services.metrics())))
    }

    // MARK: Health

    @Sendable func readyz(_ request: Request, _ context: APIContext) async throws -> Response {
        let checks = await services.readiness()
        let ready = !checks.isEmpty && checks.values.allSatisfy { $0 }
        return try APIJSON.response(
            ReadinessBody(ready: ready, checks: checks), status: ready ? .ok : .serviceUnavailable)
    }

    // MARK: Subscriptions

    @Sendable func createSubscription(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        let (data, _) = try await APIJSON.object(request, allowed: Self.subscriptionFields)
        let input = try APIJSON.decode(SubscriptionInput.self, from: data)
        guard let eventTypes = input.eventTypes else {
            throw HTTPError(.badRequest, message: "event_types: required, e.g. [\"compute.instance.*\"]")
        }
        guard let target = input.target else {
            throw HTTPError(.badRequest, message: "target: required, e.g. {\"queue\": \"my-events\"}")
        }
        let project = input.project ?? caller.project
        try authorize("subscription:create", caller, project: project, context: context)
        if project != caller.project {
            try authorize(
                "subscription:create_for_project", caller, project: project, field: "project", context: context)
        }
        if input.allProjects == true {
            try checkAllProjectsOwner(project, caller: caller)
            try authorize(
                "subscription:create_all_projects", caller, project: project, field: "all_projects", context: context)
        }
        if input.includeActor == true {
            try authorize(
                "subscription:include_actor", caller, project: project, field: "include_actor", context: context)
        }
        if input.unredacted == true {
            try authorize("subscription:unredacted", caller, project: project, field: "unredacted", context: context)
        }
        var subscription = Subscription(
            project: project, allProjects: input.allProjects ?? false, eventTypes: eventTypes,
            conditions: input.conditions ?? [],
            target: target, messageTTL: input.messageTTL ?? 3600, includeActor: input.includeActor,
            resourceID: input.resourceID, origin: input.origin
        )
        subscription.unredacted = input.unredacted
        subscription.format = input.format
        subscription.createdBy = caller.userID
        subscription.updatedBy = caller.userID
        // A trust by default in keystone mode, unless the subscriber brought a pre-signed URL.
        let created = try await audited("create", caller, context: context) {
            try await create(
                subscription, caller: caller,
                trust: input.trust ?? (caller.token != nil && caller.systemScope == nil && target.signedURL == nil))
        }
        var headers = HTTPFields()
        headers[.location] = "/v1/subscriptions/\(created.id)"
        return try APIJSON.response(view(created), status: .created, headers: headers)
    }

    /// Validates, makes the subscriber's trust when asked, stores; a trust whose subscription
    /// could not be stored is deleted again.
    private func create(_ subscription: Subscription, caller: Caller, trust: Bool) async throws -> Subscription {
        var subscription = subscription
        _ = try await store { try subscription.validate() }
        try checkConditions(subscription)
        try checkEndpoint(subscription.target)
        try await takeChange(subscription.project)
        if trust {
            guard let keystone = services.keystone, caller.token != nil else {
                throw APIRefusal.trustNeedsKeystone
            }
            guard caller.systemScope == nil else {
                throw APIRefusal.trustFromSystemScope(project: subscription.project)
            }
            guard subscription.project == caller.project else {
                throw APIRefusal.trustOutsideScope(scope: caller.project, project: subscription.project)
            }
            do {
                subscription.trustID = try await keystone.createTrust(for: caller)
            } catch .invalid(let reason) {
                throw HTTPError(.forbidden, message: "trust: \(reason)")
            } catch .unavailable(let reason) {
                throw HTTPError(.serviceUnavailable, message: "trust: \(reason)")
            }
        }
        do {
            return try await store {
                try await services.registry.create(
                    subscription, quota: services.limits.subscriptionsPerProject,
                    total: services.limits.subscriptionsInAll)
            }
        } catch {
            if let trust = subscription.trustID { try? await services.keystone?.deleteTrust(trust) }
            throw error
        }
    }

    /// A subscription as answered: itself, plus warnings a subscriber should act on.
    private func view(_ subscription: Subscription) -> SubscriptionView {
        let now = Date()
        var warnings: [String] = []
        if let warning = SignedURLStanding(subscription, now: now, renewBefore: services.signedURLs.renewBefore)?
            .warning(now: now)
        {
            warnings.append(warning)
        }
        // Stored before the redaction rule that now covers its field: the nodes leave it out.
        if let found = services.redaction.conditionOnRedacted(subscription) {
            warnings.append(
                "conditions[\(found.index)].field: \(SafeText.quoted(found.field, limit: 200)) reads what tenants never receive (redaction rule \(found.rule)); this subscription receives nothing until the condition is changed or removed"
            )
        }
        return SubscriptionView(subscription: subscription, warnings: warnings)
    }

    @Sendable func listSubscriptions(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("subscription:list", caller, project: caller.project, context: context)
        let (limit, marker) = try page(request)
        let (subscriptions, next) = try await services.registry.list(
            project: caller.project, limit: limit, marker: marker)
        return try APIJSON.response(
            SubscriptionPage(
                subscriptions: subscriptions.map(view),
                next: next.map { "/v1/subscriptions?limit=\(limit)&marker=\($0)" + carried(caller) }))
    }

    @Sendable func getSubscription(_ request: Request, _ context: APIContext) async throws -> Response {
        let subscription = try await owned(context)
        try authorize("subscription:get", try context.requireCaller(), project: subscription.project, context: context)
        return try APIJSON.response(view(subscription))
    }

    /// The subscription's health: how its target is doing (healthy, failing: a lane's recent
    /// errors, or parked: messages waiting in its parking queue, retried on a schedule until the
    /// horizon), its counts (last hour and total), last delivery, last error, and warnings.
    @Sendable func getDelivery(_ request: Request, _ context: APIContext) async throws -> Response {
        let subscription = try await owned(context)
        try authorize("subscription:get", try context.requireCaller(), project: subscription.project, context: context)
        var view = DeliveryStateView(subscriptionID: subscription.id, state: "healthy")
        view.warnings = self.view(subscription).warnings
        if let stats = services.stats {
            do {
                let health = try await stats.health(subscription: subscription.id)
                func counts(_ counts: SubscriptionStats.Counts) -> DeliveryStateView.Counts {
                    .init(matched: counts.matched, delivered: counts.delivered, deadLettered: counts.deadLettered)
                }
                view.lastHour = counts(health.lastHour)
                view.total = counts(health.total)
                view.lastDeliveredAt = health.lastDeliveredAt.map { APIDates.format(Double($0) / 1000) }
                view.recentError = health.lastError
                view.recentErrorAt = health.lastErrorAt.map { APIDates.format(Double($0) / 1000) }
            } catch {
                throw APIRefusal.unreadable("the subscription's counts")
            }
        }
        guard let parking = services.parking else { return try APIJSON.response(view) }
        let now = Date().timeIntervalSince1970
        do {
            if let parked = try await parking.state(subscription: subscription.id) {
                view.state = "parked"
                view.parkedMessages = parked.count
                view.oldestParkedAgeSeconds = max(0, now - Double(parked.since) / 1000)
                view.since = APIDates.format(Double(parked.since) / 1000)
                view.attempts = parked.attempts
                view.lastError = parked.lastError.isEmpty ? nil : parked.lastError
                view.nextAttempt = APIDates.format(Double(parked.nextAttempt) / 1000)
                view.givenUpAfter = APIDates.format(Double(parked.since) / 1000 + Double(services.retryHorizon.seconds))
            } else if let failing = try await parking.failure(subscription: subscription.id) {
                view.state = "failing"
                view.since = APIDates.format(Double(failing.since) / 1000)
                view.lastError = failing.error
            }
        } catch {
            throw APIRefusal.unreadable("the delivery state")
        }
        return try APIJSON.response(view)
    }

    /// Posts one clearly marked test event (`herald.test`, in the subscription's format) to the
    /// subscription's target with its credentials, and answers what the target said: a user
    /// checks a queue, a trust or a pre-signed URL at once instead of waiting for an event.
    @Sendable func testSubscription(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        let subscription = try await owned(context)
        try authorize("subscription:test", caller, project: subscription.project, context: context)
        try authorizeAllProjects(subscription, caller, context: context)
        if let rates = services.rates,
            let wait = try await rates.take(
                "test:" + caller.project, limit: services.limits.testsPerMinute, per: .seconds(60))
        {
            throw tooManyRequests(
                wait,
                "test: project \(caller.project) sent \(services.limits.testsPerMinute) test events this minute, its limit (HERALD_RATE_TESTS)"
            )
        }
        let target = subscription.zaqarTarget(defaultURL: services.defaultZaqarURL)
        var result = TestEventResult(
            delivered: false, eventID: UUID().uuidString.lowercased(), queue: target.queue, zaqarURL: target.baseURL)
        if let endpoints = services.endpoints, !endpoints.permits(target.baseURL) {
            result.error =
                "the subscription's Zaqar endpoint is not one the operator allows (HERALD_ZAQAR_ALLOWED_URLS); nothing was sent"
            audit(
                "test", caller, outcome: "failure",
                detail: "subscription \(subscription.id): endpoint not allowed, nothing sent", context: context)
            return try APIJSON.response(result)
        }
        let message = TestEvent.message(for: subscription, eventID: result.eventID, requestedBy: caller.userID)
        do {
            let response = try await services.deliver(target, message)
            result.status = response.status
            result.delivered = (200..<300).contains(response.status)
            if !result.delivered {
                result.error = "Zaqar answered \(response.status)\(response.message.map { ": \($0)" } ?? "")"
            }
        } catch {
            result.error = TargetAnswer.cut(TargetAnswer.sanitise("\(error)"))
        }
        audit(
            "test", caller, outcome: result.delivered ? "success" : "failure",
            detail: "subscription \(subscription.id): \(result.status.map(String.init) ?? "no answer")",
            context: context)
        return try APIJSON.response(result)
    }

    // MARK: What events exist

    /// The event types Herald has seen for the caller's project, most frequent first, each with
    /// its count, when it was last seen and the latest one as the project's subscribers receive it.
    @Sendable func listEventTypes(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("event_type:list", caller, project: caller.project, context: context)
        guard let catalog = services.catalog else {
            return try APIJSON.response(EventTypesView(eventTypes: [], limit: 0))
        }
        let entries: [EventTypeCatalog.Entry]
        do {
            entries = try await catalog.list(project: caller.project)
        } catch {
            throw APIRefusal.unreadable("the event types")
        }
        return try APIJSON.response(
            EventTypesView(
                eventTypes: entries.map { entry in
                    EventTypesView.Entry(
                        eventType: entry.eventType, count: entry.count,
                        lastSeen: entry.lastSeen.map { APIDates.format(Double($0) / 1000) },
                        sample: entry.sample.flatMap { try? JSONDecoder().decode(JSONValue.self, from: Data($0.utf8)) }
                    )
                }, limit: catalog.maxTypesPerProject))
    }

    // MARK: The project's feed

    static let feedFields: Set<String> = ["queue", "event_types", "format", "message_ttl"]

    /// The project's feed: every event of the project (or those of `event_types`) into one queue,
    /// without writing subscriptions. It is a subscription like any other (it lists, counts
    /// against the quota, has a trust and a health), with an id derived from the project, so
    /// that every node finds the same one.
    @Sendable func getFeed(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("subscription:get", caller, project: caller.project, context: context)
        guard let feed = try await services.registry.get(id: FeedID.of(caller.project), project: caller.project) else {
            throw APIRefusal.noFeed(project: caller.project)
        }
        return try APIJSON.response(view(feed))
    }

    /// Turns the feed on (201) or changes it (200): `queue` is required; `event_types` defaults to
    /// every event (`["*"]`).
    @Sendable func putFeed(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        let (data, keys) = try await APIJSON.object(request, allowed: Self.feedFields)
        let input = try APIJSON.decode(FeedInput.self, from: data)
        guard let queue = input.queue else { throw HTTPError(.badRequest, message: "queue: required, e.g. \"events\"") }
        let target = Target(queue: queue)
        if let feed = try await services.registry.get(id: FeedID.of(caller.project), project: caller.project) {
            let updated = try await update(
                feed, targetChanged: true, caller: caller, context: context,
                gone: "project \(caller.project)'s feed went meanwhile; PUT again"
            ) { stored in
                var feed = stored
                try authorize("subscription:update", caller, project: feed.project, context: context)
                try authorizeAllProjects(feed, caller, context: context)
                if feed.target != target, feed.trustID != nil {
                    try authorize(
                        "subscription:update_trusted_target", caller, project: feed.project, field: "queue",
                        extra: feed.createdBy.map { ["trustor_id": $0] } ?? [:], context: context)
                }
                feed.target = target
                if keys.contains("event_types") { feed.eventTypes = try present(input.eventTypes, "event_types") }
                if keys.contains("format") { feed.format = try present(input.format, "format") }
                if keys.contains("message_ttl") { feed.messageTTL = try present(input.messageTTL, "message_ttl") }
                feed.updatedBy = caller.userID
                return feed
            }
            return try APIJSON.response(view(updated))
        }
        try authorize("subscription:create", caller, project: caller.project, context: context)
        var feed = Subscription(
            id: FeedID.of(caller.project), project: caller.project, eventTypes: input.eventTypes ?? ["*"],
            target: target,
            messageTTL: input.messageTTL ?? 3600)
        feed.format = input.format
        feed.createdBy = caller.userID
        feed.updatedBy = caller.userID
        let created = try await audited("create", caller, context: context) {
            try await create(feed, caller: caller, trust: caller.token != nil && caller.systemScope == nil)
        }
        var headers = HTTPFields()
        headers[.location] = "/v1/feed"
        return try APIJSON.response(view(created), status: .created, headers: headers)
    }

    @Sendable func deleteFeed(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        guard let feed = try await services.registry.get(id: FeedID.of(caller.project), project: caller.project) else {
            throw HTTPError(.notFound, message: "project \(caller.project) has no feed")
        }
        try authorize("subscription:delete", caller, project: feed.project, context: context)
        try authorizeAllProjects(feed, caller, context: context)
        try await audited("delete", caller, subscription: feed.id, context: context) {
            try await remove(feed, caller: caller)
        }
        return Response(status: .noContent)
    }

    @Sendable func patchSubscription(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        let subscription = try await owned(context)
        let (data, keys) = try await APIJSON.object(request, allowed: Self.patchFields)
        let input = try APIJSON.decode(SubscriptionInput.self, from: data)
        let updated = try await update(
            subscription, targetChanged: keys.contains("target"), caller: caller, context: context,
            gone: "no subscription \(subscription.id) in project \(caller.project)"
        ) { stored in
            try patched(stored, keys: keys, input: input, caller: caller, context: context)
        }
        return try APIJSON.response(view(updated))
    }

    /// `stored` with a PATCH's fields, once the caller may change each of them.
    private func patched(
        _ stored: Subscription, keys: Set<String>, input: SubscriptionInput, caller: Caller, context: APIContext
    ) throws -> Subscription {
        var subscription = stored
        try authorize("subscription:update", caller, project: subscription.project, context: context)
        if subscription.allProjects || input.allProjects == true {
            if input.allProjects == true, !subscription.allProjects {
                try checkAllProjectsOwner(subscription.project, caller: caller)
            }
            try authorize(
                "subscription:create_all_projects", caller, project: subscription.project, field: "all_projects",
                context: context)
        }
        if input.includeActor == true {
            try authorize(
                "subscription:include_actor", caller, project: subscription.project, field: "include_actor",
                context: context)
        }
        if input.unredacted == true {
            try authorize(
                "subscription:unredacted", caller, project: subscription.project, field: "unredacted", context: context)
        }
        // Whoever changes where a trust-backed subscription posts would have Herald post, as the
        // trust's owner, wherever they point it: only the trustor (or a cloud admin) may.
        if keys.contains("target"), subscription.trustID != nil {
            // Without a recorded trustor, only the rule's other branches (a cloud admin) can pass.
            try authorize(
                "subscription:update_trusted_target", caller, project: subscription.project, field: "target",
                extra: subscription.createdBy.map { ["trustor_id": $0] } ?? [:], context: context)
        }
        for key in keys.sorted() {
            // A field given as null is a 400 too: only conditions may be emptied, and with [].
            switch key {
            case "event_types": subscription.eventTypes = try present(input.eventTypes, key)
            case "conditions": subscription.conditions = try present(input.conditions, key)
            case "target": subscription.target = try present(input.target, key)
            case "message_ttl": subscription.messageTTL = try present(input.messageTTL, key)
            case "include_actor": subscription.includeActor = try present(input.includeActor, key)
            // null removes the filter.
            case "resource_id": subscription.resourceID = input.resourceID
            case "origin": subscription.origin = try present(input.origin, key)
            case "unredacted": subscription.unredacted = try present(input.unredacted, key)
            case "format": subscription.format = try present(input.format, key)
            case "all_projects":
                subscription.allProjects = try present(input.allProjects, key)
            default: break
            }
        }
        subscription.updatedBy = caller.userID
        return subscription
    }

    /// Changes a stored subscription (PATCH, and PUT /v1/feed) and stores it, audited: the
    /// change's checks, its conditions, its endpoint when the target changed, the project's rate
    /// of changes. Two changes made at once from the same record never lose one: when the record
    /// changed after it was read, it is read again and the change (its authorization too) made
    /// again from it, up to three times, then 409.
    /// - Parameters:
    ///   - stored: the record as read.
    ///   - gone: the 404's message when the subscription went meanwhile.
    ///   - change: the change, made from a stored record (throws when the caller may not make it).
    private func update(
        _ stored: Subscription, targetChanged: Bool, caller: Caller, context: APIContext, gone: String,
        _ change: (Subscription) throws -> Subscription
    ) async throws -> Subscription {
        var original = stored
        var changed = try change(original)
        return try await audited("update", caller, subscription: stored.id, context: context) {
            () async throws -> Subscription in
            for attempt in 1...Self.updateAttempts {
                _ = try await store { try changed.validate() }
                try checkConditions(changed)
                if targetChanged { try checkEndpoint(changed.target) }
                if attempt == 1 { try await takeChange(changed.project) }
                switch try await store({ try await services.registry.update(changed, from: original) }) {
                case .updated(let updated): return updated
                case .missing: throw HTTPError(.notFound, message: gone)
                case .changedMeanwhile:
                    guard attempt < Self.updateAttempts else { break }
                    guard let again = try await services.registry.get(id: stored.id, project: stored.project) else {
                        throw HTTPError(.notFound, message: gone)
                    }
                    original = again
                    changed = try change(original)
                }
            }
            throw HTTPError(
                .conflict,
                message:
                    "subscription \(stored.id) was changed by other requests \(Self.updateAttempts) times while this one was made; send it again"
            )
        }
    }

    /// How many times a change is made again from a record changed meanwhile before a 409.
    static let updateAttempts = 3

    /// An all-projects subscription is changed or deleted only by whoever may make one
    /// (`subscription:create_all_projects`), whatever route names it (its id, or `/v1/feed`).
    private func authorizeAllProjects(_ subscription: Subscription, _ caller: Caller, context: APIContext) throws {
        guard subscription.allProjects else { return }
        try authorize(
            "subscription:create_all_projects", caller, project: subscription.project, field: "all_projects",
            context: context)
    }

    /// Deletes the subscription and its trust; while Keystone cannot be reached, neither (503).
    @Sendable func deleteSubscription(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        let subscription = try await owned(context)
        try authorize("subscription:delete", caller, project: subscription.project, context: context)
        try authorizeAllProjects(subscription, caller, context: context)
        try await audited("delete", caller, subscription: subscription.id, context: context) {
            try await remove(subscription, caller: caller)
        }
        return Response(status: .noContent)
    }

    private func remove(_ subscription: Subscription, caller: Caller) async throws {
        if let trust = subscription.trustID {
            guard let keystone = services.keystone else {
                throw APIRefusal.trustUndeletable(subscription: subscription.id, trust: trust)
            }
            do {
                try await keystone.deleteTrust(trust)
            } catch {
                throw APIRefusal.trustNotDeleted(trust, error: error)
            }
        }
        guard try await services.registry.delete(id: subscription.id, project: caller.project) else {
            throw APIRefusal.noSubscription(subscription.id, project: caller.project)
        }
    }

    // MARK: The seed service's alias

    @Sendable func createAlias(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        let (data, _) = try await APIJSON.object(request, allowed: Self.aliasFields)
        let input = try APIJSON.decode(AliasInput.self, from: data)
        let queue = try AliasSubscription.queue(fromTarget: input.target)
        let (pattern, resourceID) = try AliasSubscription.pattern(fromSource: input.source)
        try authorize("subscription:create", caller, project: caller.project, context: context)
        var subscription = Subscription(
            project: caller.project, eventTypes: [pattern],
            target: Target(queue: queue), messageTTL: input.messageTTL ?? 3600, resourceID: resourceID
        )
        subscription.createdBy = caller.userID
        subscription.updatedBy = caller.userID
        let created = try await audited("create", caller, context: context) {
            try await create(subscription, caller: caller, trust: caller.token != nil && caller.systemScope == nil)
        }
        var headers = HTTPFields()
        headers[.location] = "/v1/subscription/\(created.id)"
        return try APIJSON.response(AliasSubscription(created), status: .created, headers: headers)
    }

    @Sendable func listAlias(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("subscription:list", caller, project: caller.project, context: context)
        let (limit, marker) = try page(request)
        let (subscriptions, next) = try await services.registry.list(
            project: caller.project, limit: limit, marker: marker)
        return try APIJSON.response(
            AliasPage(
                subscriptions: subscriptions.map(AliasSubscription.init),
                next: next.map { "/v1/subscription?limit=\(limit)&marker=\($0)" + carried(caller) }))
    }

    @Sendable func getAlias(_ request: Request, _ context: APIContext) async throws -> Response {
        let subscription = try await owned(context)
        try authorize("subscription:get", try context.requireCaller(), project: subscription.project, context: context)
        return try APIJSON.response(AliasSubscription(subscription))
    }

    // MARK: Dead letters

    @Sendable func listDeadLetters(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("dead_letter:list", caller, project: caller.project, context: context)
        let scope = try deadLetterScope(request, caller, context: context)
        let (limit, marker) = try page(request, most: 100)
        let entries = try await services.deadLetters.recent(scope, count: limit, before: marker)
        let next =
            entries.count == limit
            ? entries.last.map { "/v1/dead-letters?limit=\(limit)&marker=\($0.id)" + carried(caller, scope: scope) }
            : nil
        return try APIJSON.response(
            DeadLetterPage(deadLetters: entries.map { DeadLetterEntry(id: $0.id, letter: $0.letter) }, next: next))
    }

    /// Posts letters again, to their subscription's current target; each one Zaqar takes
    /// leaves the list, the others stay with the reason they failed again.
    @Sendable func replayDeadLetters(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("dead_letter:replay", caller, project: caller.project, context: context)
        let scope = try deadLetterScope(request, caller, context: context)
        var ids: [String]?
        // Read whatever came, with a length or chunked: ids sent without a Content-Length must
        // not be taken for "replay the most recent".
        if let body = try await APIJSON.optionalObject(request, allowed: ["ids"]) {
            // Each letter once, however often it is named (it would be posted as often).
            var seen = Set<String>()
            ids = try APIJSON.decode(ReplayInput.self, from: body.data).ids.filter { seen.insert($0).inserted }
        }
        let perCall = services.limits.replayPerCall
        let entries: [(id: String, letter: DeadLetter)]
        if let ids {
            guard ids.count <= perCall else {
                throw HTTPError(
                    .badRequest, message: "ids: \(ids.count) ids; at most \(perCall) at once (HERALD_REPLAY_MAX)")
            }
            entries = try await services.deadLetters.letters(scope, ids: ids)
            if let missing = Set(ids).subtracting(entries.map(\.id)).sorted().first {
                throw HTTPError(.notFound, message: "ids: no dead letter \(SafeText.quoted(missing)) of \(scope)")
            }
        } else {
            entries = try await services.deadLetters.recent(scope, count: perCall)
        }
        if let rates = services.rates, !entries.isEmpty,
            let wait = try await rates.take(
                "replay:" + caller.project, amount: entries.count, limit: services.limits.replaysPerMinute,
                per: .seconds(60))
        {
            throw tooManyRequests(
                wait,
                "ids: replaying \(entries.count) would pass project \(caller.project)'s \(services.limits.replaysPerMinute) replays a minute (HERALD_RATE_REPLAYS)"
            )
        }
        var result = ReplayResult(replayed: [], failed: [])
        for (id, letter) in entries.reversed() {
            if letter.bodyTruncated == true {
                result.failed.append(
                    .init(
                        id: id,
                        reason:
                            "its body was cut to the dead-letter budget when it was stored (HERALD_DEAD_LETTER_BODY_BYTES), so it cannot be posted again"
                    ))
                continue
            }
            // An all-projects subscription belongs to the project that made it (the letter's).
            let owner = scope == .allProjects ? letter.project ?? caller.project : caller.project
            guard let subscriptionID = letter.subscriptionID,
                let subscription = try await services.registry.get(id: subscriptionID, project: owner)
            else {
                result.failed.append(
                    .init(id: id, reason: "its subscription \(letter.subscriptionID ?? "-") no longer exists"))
                continue
            }
            let target = subscription.zaqarTarget(defaultURL: services.defaultZaqarURL)
            if let endpoints = services.endpoints, !endpoints.permits(target.baseURL) {
                result.failed.append(
                    .init(
                        id: id,
                        reason:
                            "its subscription's Zaqar endpoint is not one the operator allows (HERALD_ZAQAR_ALLOWED_URLS)"
                    ))
                continue
            }
            do {
                let response = try await services.deliver(target, Array(letter.body.utf8))
                if (200..<300).contains(response.status) {
                    result.replayed.append(id)
                } else {
                    result.failed.append(
                        .init(
                            id: id,
                            reason: "Zaqar answered \(response.status)\(response.message.map { ": \($0)" } ?? "")"))
                }
            } catch {
                result.failed.append(.init(id: id, reason: TargetAnswer.cut(TargetAnswer.sanitise("\(error)"))))
            }
        }
        try await services.deadLetters.remove(scope, ids: result.replayed)
        audit(
            "replay", caller, outcome: "success",
            detail: "\(result.replayed.count) replayed, \(result.failed.count) failed, of \(scope)", context: context)
        return try APIJSON.response(result)
    }

    @Sendable func purgeDeadLetters(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("dead_letter:purge", caller, project: caller.project, context: context)
        let scope = try deadLetterScope(request, caller, context: context)
        let purged = try await audited("purge", caller, detail: "of \(scope)", context: context) {
            try await services.deadLetters.purge(scope)
        }
        return try APIJSON.response(["purged": purged])
    }

    /// The query a next page needs besides its limit and marker: the scope, and the project a
    /// system-scoped token names (it has none of its own, so a link without it is a 400; the
    /// authenticator checked it is letters, digits, `-` and `_`).
    private func carried(_ caller: Caller, scope: DeadLetterStore.Scope? = nil) -> String {
        (scope == .allProjects ? "&all_projects=true" : "")
            + (caller.systemScope != nil ? "&project_id=\(caller.project)" : "")
    }

    /// Whose dead letters a call means: the caller's project's, or with `?all_projects=true`
    /// those of the all-projects subscriptions, which hold every project's events and so are the
    /// cloud's admins' alone (`dead_letter:all_projects`), not the admin project's readers'.
    private func deadLetterScope(
        _ request: Request, _ caller: Caller, context: APIContext
    ) throws -> DeadLetterStore.Scope {
        guard let text = request.uri.queryParameters.get("all_projects") else { return .project(caller.project) }
        switch text.lowercased() {
        case "false", "0", "no": return .project(caller.project)
        case "true", "1", "yes": break
        default:
            throw HTTPError(
                .badRequest, message: "all_projects: \(SafeText.quoted(String(text), limit: 20)) must be true or false")
        }
        try authorize(
            "dead_letter:all_projects", caller, project: caller.project, field: "all_projects", context: context)
        return .allProjects
    }

    // MARK: Policy

    /// The effective rules: the defaults, and which a policy file changed.
    @Sendable func getPolicy(_ request: Request, _ context: APIContext) async throws -> Response {
        let caller = try context.requireCaller()
        try authorize("policy:get", caller, project: caller.project, context: context)
        return try APIJSON.response(
            PolicyView(
                rules: services.policy.effective.map {
                    PolicyView.Rule(
                        name: $0.name, rule: $0.rule, description: $0.description, overridden: $0.overridden)
                }))
    }

    /// 403 naming the operation (and the field that asked for it) when the policy says no.
    private func authorize(
        _ operation: String, _ caller: Caller, project: String, field: String? = nil, extra: [String: String] = [:],
        context: APIContext
    ) throws {
        var target = ["project_id": project]
        target.merge(extra) { $1 }
        guard services.policy.allows(operation, credentials: caller.credentials, target: target) else {
            audit(operation, caller, outcome: "denied", detail: "policy", context: context)
            throw APIRefusal.policyDenies(operation, project: project, roles: caller.roles, field: field)
        }
    }

    /// Runs a change and writes its audit line, whatever the outcome.
    @discardableResult
    private func audited<T>(
        _ action: String, _ caller: Caller, subscription: String? = nil, detail: String? = nil, context: APIContext,
        _ body: () async throws -> T
    ) async throws -> T {
        do {
            let result = try await body()
            let id = (result as? Subscription)?.id ?? subscription
            audit(action, caller, outcome: "success", subscription: id, detail: detail, context: context)
            return result
        } catch {
            let status = (error as? HTTPError)?.status.code.description ?? "error"
            audit(
                action, caller, outcome: "failure", subscription: subscription,
                detail: detail.map { "\($0): \(status)" } ?? status, context: context)
            throw error
        }
    }

    /// One structured line per change, CADF-shaped (`action`, `outcome`, `initiator`, `target`);
    /// never a token.
    private func audit(
        _ action: String, _ caller: Caller, outcome: String, subscription: String? = nil, detail: String? = nil,
        context: APIContext
    ) {
        var metadata: Logger.Metadata = [
            LogKey.auditAction: "\(action)", LogKey.auditOutcome: "\(outcome)",
            LogKey.auditInitiatorProject: "\(caller.project)", LogKey.auditInitiatorUser: "\(caller.userID ?? "-")",
        ]
        if let subscription { metadata[LogKey.auditTargetSubscription] = "\(subscription)" }
        if let detail { metadata[LogKey.auditReason] = "\(detail)" }
        context.logger.notice("audit", metadata: metadata)
    }

    // MARK: Helpers

    /// A condition must not read what tenants never receive: at or under a redacted field,
    /// only `exists`; on an object around one, no structured operand (it would compare the
    /// hidden member too). An unredacted subscription (an admin's) may.
    private func checkConditions(_ subscription: Subscription) throws {
        if let found = services.redaction.conditionOnRedacted(subscription) {
            throw APIRefusal.conditionOnRedacted(
                index: found.index, field: found.field, rule: found.rule, within: found.within)
        }
    }

    /// A target's `zaqar_url` must be one the operator allows (400 naming the field and the list).
    private func checkEndpoint(_ target: Target) throws {
        guard let endpoints = services.endpoints, let url = target.zaqarURL else { return }
        guard endpoints.permits(url) else {
            throw APIRefusal.endpointNotAllowed(url, allowed: "\(endpoints)")
        }
    }

    /// A feed of every project belongs to the cloud's admins, never to another project: a
    /// project-scoped admin's own project; with a system-scoped token, only the cloud's admin
    /// project (HERALD_ADMIN_PROJECT), since the token has no project of its own.
    private func checkAllProjectsOwner(_ project: String, caller: Caller) throws {
        if caller.systemScope != nil {
            guard let admin = services.keystone?.configuration.adminProject, project == admin else {
                throw APIRefusal.allProjectsOutsideAdmin(
                    adminProjectSet: services.keystone?.configuration.adminProject != nil)
            }
        } else if project != caller.project {
            throw APIRefusal.allProjectsForOther
        }
    }

    /// One create or update of the project's, within HERALD_RATE_SUBSCRIPTION_CHANGES a minute.
    private func takeChange(_ project: String) async throws {
        guard let rates = services.rates else { return }
        let limit = services.limits.changesPerMinute
        if let wait = try await rates.take("changes:" + project, limit: limit, per: .seconds(60)) {
            throw tooManyRequests(
                wait,
                "subscriptions: project \(project) made \(limit) creates and updates this minute, its limit (HERALD_RATE_SUBSCRIPTION_CHANGES)"
            )
        }
    }

    private func tooManyRequests(_ wait: Duration, _ message: String) -> HTTPError {
        APIRefusal.tooManyRequests(wait, message)
    }

    /// The subscription `{id}` of the caller's project; 404 when it is another project's or none.
    private func owned(_ context: APIContext) async throws -> Subscription {
        let caller = try context.requireCaller()
        let id = try context.parameters.require("id")
        guard let subscription = try await services.registry.get(id: id, project: caller.project) else {
            throw APIRefusal.noSubscription(id, project: caller.project)
        }
        return subscription
    }

    /// Runs a registry write; a validation error becomes a 400 naming the field.
    private func store<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as SubscriptionValidationError {
            throw HTTPError(.badRequest, message: "\(error)")
        } catch let error as SubscriptionQuotaExceeded {
            throw HTTPError(.forbidden, message: "subscriptions: \(error)")
        }
    }

    private func present<T>(_ value: T?, _ key: String) throws -> T {
        guard let value else { throw HTTPError(.badRequest, message: "\(key): must not be null") }
        return value
    }

    /// `limit` (1 to 1000, default 100) and `marker` from the query.
    /// - Parameter most: the largest page asked for (dead letters, up to tens of KiB each, take
    ///   at most 100 a page, so that a few calls cannot hold gigabytes of a node's memory).
    private func page(_ request: Request, most: Int = 1000) throws -> (Int, String?) {
        let query = request.uri.queryParameters
        var limit = min(100, most)
        if let text = query.get("limit") {
            guard let value = Int(text), (1...most).contains(value) else {
                throw HTTPError(
                    .badRequest,
                    message:
                        "limit: \(SafeText.quoted(String(text), limit: 20)) must be a whole number from 1 to \(most)")
            }
            limit = value
        }
        let marker = query.get("marker").flatMap { $0.isEmpty ? nil : $0 }
        return (limit, marker)
    }
}
