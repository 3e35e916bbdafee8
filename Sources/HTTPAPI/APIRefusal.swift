import HTTPTypes
import HeraldModel
import Hummingbird

/// The API's longer refusals, each built by name next to the reason it explains; the handlers
/// throw them (`throw APIRefusal.noSubscription(id, project: p)`). A message names the field
/// first (`trust: ...`, `all_projects: ...`) and says what to do instead.
enum APIRefusal {
    /// 404 for a subscription that is not the caller project's (another project's looks the same).
    static func noSubscription(_ id: String, project: String) -> HTTPError {
        HTTPError(.notFound, message: "no subscription \(id) in project \(project)")
    }

    /// 404 for GET /v1/feed before one was made.
    static func noFeed(project: String) -> HTTPError {
        HTTPError(
            .notFound, message: "project \(project) has no feed; PUT /v1/feed {\"queue\": \"events\"} turns it on")
    }

    /// 503 when Redis cannot answer a read now (`what`: "the delivery state", ...).
    static func unreadable(_ what: String) -> HTTPError {
        HTTPError(.serviceUnavailable, message: "\(what) cannot be read from Redis now; try again")
    }

    /// 403 naming the operation (and the field that asked for it) when the policy says no.
    static func policyDenies(_ operation: String, project: String, roles: Set<String>, field: String?) -> HTTPError {
        let roles = roles.sorted().joined(separator: ", ")
        return HTTPError(
            .forbidden,
            message:
                "\(field.map { "\($0): " } ?? "")policy does not allow \(operation) on project \(project) for your roles (\(roles.isEmpty ? "none" : roles)); GET /v1/policy shows the rules"
        )
    }

    /// A trust asked for where Herald cannot make one: no Keystone behind the API.
    static let trustNeedsKeystone = HTTPError(
        .badRequest,
        message: "trust: Herald makes a Keystone trust only with HERALD_API_AUTH=keystone and a Keystone token")

    /// A trust asked for with a system-scoped token, which has no project roles to delegate.
    static func trustFromSystemScope(project: String) -> HTTPError {
        HTTPError(
            .badRequest,
            message:
                "trust: a system-scoped token holds no project's roles to delegate; use a token scoped to project \(project), or a pre-signed URL"
        )
    }

    /// A trust asked for into another project than the token's.
    static func trustOutsideScope(scope: String, project: String) -> HTTPError {
        HTTPError(
            .badRequest,
            message:
                "trust: your token is scoped to \(scope), so a trust can only reach that project, not \(project)")
    }

    /// A subscription with a trust cannot be deleted by a node without Keystone.
    static func trustUndeletable(subscription: String, trust: String) -> HTTPError {
        HTTPError(
            .serviceUnavailable,
            message:
                "subscription \(subscription) has Keystone trust \(trust), and this node has no Keystone to delete it with (HERALD_KEYSTONE_URL)"
        )
    }

    /// Keystone refused or failed to delete the trust: the subscription is kept.
    static func trustNotDeleted(_ trust: String, error: any Error) -> HTTPError {
        HTTPError(
            .serviceUnavailable,
            message: "the subscription's trust \(trust) could not be deleted, so the subscription stays: \(error)")
    }

    /// A condition that tests a field tenants never receive (a redaction rule covers it).
    static func conditionOnRedacted(index: Int, field: String, rule: String, within: Bool) -> HTTPError {
        HTTPError(
            .badRequest,
            message:
                "conditions[\(index)].field: '\(SafeText.clean(field, limit: 120))' is \(within ? "" : "around ")what tenants do not receive (redaction rule \(rule)); only 'exists' may test it"
        )
    }

    /// A target's `zaqar_url` outside HERALD_ZAQAR_ALLOWED_URLS.
    static func endpointNotAllowed(_ url: String, allowed: String) -> HTTPError {
        HTTPError(
            .badRequest,
            message: "target.zaqar_url: \(SafeText.quoted(url)) is not an allowed Zaqar endpoint; allowed: \(allowed)")
    }

    /// An all-projects subscription made with a system-scoped token for another project than the admin one.
    static func allProjectsOutsideAdmin(adminProjectSet: Bool) -> HTTPError {
        HTTPError(
            .badRequest,
            message:
                "all_projects: with a system-scoped token, an all-projects subscription may only belong to the cloud's admin project (HERALD_ADMIN_PROJECT\(adminProjectSet ? "" : ", which is not set"))"
        )
    }

    /// An all-projects subscription for another project than the maker's.
    static let allProjectsForOther = HTTPError(
        .badRequest,
        message: "all_projects: an all-projects subscription belongs to the admin who makes it; leave out project")

    /// 429 with `Retry-After` in whole seconds (1 to a day; the wait comes from Redis' answers).
    static func tooManyRequests(_ wait: Duration, _ message: String) -> HTTPError {
        let asked = wait.seconds.rounded(.up)
        let seconds = asked.isFinite ? Int(min(max(asked, 1), 86_400)) : 1
        var headers = HTTPFields()
        headers[.retryAfter] = "\(seconds)"
        return HTTPError(.tooManyRequests, headers: headers, message: "\(message); try again in \(seconds) s")
    }
}
