import Foundation
import HeraldModel

/// What the batcher's dead letters say, one builder per reason (`DeadLetter.Reason`), kept together
/// so that the texts tenants read in `GET /v1/dead-letters` can be read and changed in one place.
/// Each says what happened and, where the tenant can act, what to do.
enum DeadLetterDetail {
    /// `too_large`: the message alone is over what one request to Zaqar may carry.
    static func tooLarge(bytes: Int, limit: Int) -> String {
        "the message is \(bytes) bytes; a request to Zaqar may carry at most \(limit) (max_messages_post_size)"
    }

    /// `unauthorized`: Zaqar refused the subscription's credentials (401 or 403).
    static func unauthorized(status: Int, target: ZaqarTarget, zaqar: String?) -> String {
        "Zaqar answered \(status) for \(target): the subscription's credentials do not reach this queue"
            + " (\(zaqar ?? "no reason given")); a trust deleted in Keystone or a user without the trust's roles ends here"
    }

    /// `unauthorized`: Zaqar refused a request that carried no credentials.
    static func noCredentials(status: Int, target: ZaqarTarget, zaqar: String?) -> String {
        "Zaqar answered \(status) for \(target) to a request without credentials (\(zaqar ?? "no reason given")):"
            + " the subscription has no trust and no pre-signed URL; give it a signed_url, or create it again with a trust"
    }

    /// `unauthorized`: Keystone no longer gives a token through the subscription's trust.
    static func trustGone(zaqar: String?) -> String {
        "the subscription's trust no longer gives a token (\(zaqar ?? "no reason given"));"
            + " create the subscription again with a new trust"
    }

    /// `not_found`: Zaqar answered 404.
    static func notFound(target: ZaqarTarget, zaqar: String?) -> String {
        "Zaqar answered 404 for \(target): the project or queue is unknown, or the signed URL is bad,"
            + " expired or lacks POST (\(zaqar ?? "no reason given"))"
    }

    /// `signed_url_expired`: the pre-signed URL expired and there is no trust to renew it.
    static func signedURLExpired(queue: String, at expiry: Date) -> String {
        "the pre-signed URL for \(queue) expired at \(ISO8601DateFormatter().string(from: expiry));"
            + " create a new one with an explicit 'expires', or give the subscription a Keystone trust"
    }

    /// `parking_full`: the target failed and the project's parking share is used up.
    static func parkingFull(failure: String, full: ParkingFull) -> String {
        "the target failed (\(SafeText.clean(failure, limit: 200))) and its messages cannot be parked: \(full.description)"
    }

    /// `target_not_allowed`: the subscription names a Zaqar the operator does not allow.
    static func endpointNotAllowed(_ target: ZaqarTarget) -> String {
        "the subscription's Zaqar endpoint \(target.baseURL) is not one the operator allows"
            + " (HERALD_ZAQAR_ALLOWED_URLS); nothing was sent there"
    }
}
