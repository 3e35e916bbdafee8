/// A message Herald could not deliver, kept with everything needed to understand
/// and replay it. Nothing is dropped silently: what is not delivered ends up here.
public struct DeadLetter: Codable, Sendable, Equatable {
    public enum Reason: String, Codable, Sendable, CaseIterable {
        /// Zaqar answered 400 for this very message.
        case rejected
        /// Zaqar answered 404: unknown project or queue, or a bad, expired or wrong-method signed URL.
        case notFound = "not_found"
        /// The signed URL's expiry had passed before sending.
        case signedURLExpired = "signed_url_expired"
        /// Zaqar answered 401 or 403, or Keystone would not issue a token for the subscription's trust.
        case unauthorized
        /// One message larger than a whole request may be.
        case tooLarge = "too_large"
        /// Retries ran out (5xx, 429, timeouts, connection errors).
        case retriesExhausted = "retries_exhausted"
        /// The notification could not be decoded (bad JSON, no event type, ...), or could not be
        /// routed for a reason of its own (a field too long for an AMQP header, ...).
        case malformed
        /// The subscription's Zaqar endpoint is not one the operator allows (HERALD_ZAQAR_ALLOWED_URLS).
        case targetNotAllowed = "target_not_allowed"
        /// Parked and retried until HERALD_DELIVERY_RETRY_HORIZON passed (a target down that long).
        case retryHorizon = "retry_horizon"
        /// The target failed and the project's parking share (HERALD_PARKING_PROJECT_MAX_*) was full.
        case parkingFull = "parking_full"
    }

    public var reason: Reason
    /// Words for a person: what happened and, where known, what to do.
    public var detail: String
    public var httpStatus: Int?
    /// Zaqar's own error description, when it gave one.
    public var zaqarMessage: String?
    /// `zaqar-url project/queue`.
    public var target: String?
    public var subscriptionID: String?
    public var eventID: String?
    public var project: String?
    /// The message as it would have been posted, or the raw notification for `malformed`.
    public var body: String
    /// The body was cut to the dead-letter budget when stored (it cannot be replayed).
    public var bodyTruncated: Bool?
    /// A letter of an admin's all-projects subscription (`project` is then the admin project):
    /// it holds another project's event, so it is kept apart from the project's own letters and
    /// only the cloud's admins list, replay or purge it (`?all_projects=true`).
    public var allProjects: Bool?
    public var at: Double

    public init(
        reason: Reason, detail: String, httpStatus: Int? = nil, zaqarMessage: String? = nil, target: String? = nil,
        subscriptionID: String? = nil, eventID: String? = nil, project: String? = nil, body: String, at: Double,
        allProjects: Bool = false
    ) {
        self.reason = reason
        self.detail = detail
        self.httpStatus = httpStatus
        self.zaqarMessage = zaqarMessage
        self.target = target
        self.subscriptionID = subscriptionID
        self.eventID = eventID
        self.project = project
        self.body = body
        self.at = at
        self.allProjects = allProjects ? true : nil
    }

    enum CodingKeys: String, CodingKey {
        case reason, detail, target, project, body, at
        case httpStatus = "http_status"
        case zaqarMessage = "zaqar_message"
        case subscriptionID = "subscription_id"
        case eventID = "event_id"
        case bodyTruncated = "body_truncated"
        case allProjects = "all_projects"
    }
}
