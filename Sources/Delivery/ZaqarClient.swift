import Foundation
import HeraldModel

/// What Zaqar answered to one POST.
public struct ZaqarResponse: Sendable {
    public var status: Int
    /// A short, sanitised reason for an error: Zaqar's `title: description`, or only what kind
    /// of body came (`TargetAnswer.reason`); never the raw body.
    public var message: String?
    /// `Retry-After`, when given and usable (429, 503), cut to the client's `retryAfterCap`.
    public var retryAfter: Duration?
    /// A 401 or 403 that cannot pass later: Keystone itself refused a token for the subscription's
    /// trust (deleted, expired, its trustor gone), or the request carried no trust's token (no
    /// credentials at all, or a pre-signed URL Zaqar refuses, with no trust to fall back on). Other
    /// 401s and 403s may (roles given back, Keystone recovering) and are parked and retried.
    public var credentialsGone: Bool

    public init(status: Int, message: String? = nil, retryAfter: Duration? = nil, credentialsGone: Bool = false) {
        self.status = status
        self.message = message
        self.retryAfter = retryAfter
        self.credentialsGone = credentialsGone
    }
}

/// Where trust-scoped tokens come from (Keystone, in the node).
public protocol ZaqarTokenSource: Sendable {
    /// A token scoped through `trust` to the trustor's project, valid for a while yet.
    /// - Throws: `ZaqarTokenError`.
    func token(trust: String) async throws(ZaqarTokenError) -> String
    /// Zaqar refused `token`: the next `token(trust:)` fetches a new one.
    func refused(trust: String, token: String)
}

public enum ZaqarTokenError: Error, CustomStringConvertible {
    /// Keystone will not issue a token for the trust (deleted, expired, trustor gone): permanent.
    case refused(String)
    /// Keystone could not be asked, or refused Herald's own service user (a rotated password, a
    /// locked account): worth retrying, not the trust's end.
    case unavailable(String)

    public var description: String {
        switch self {
        case .refused(let text), .unavailable(let text): return text
        }
    }
}

/// Posts batches of messages into Zaqar queues over libcurl (`CurlTransport`: keep-alive
/// connections, at most `poolSize` a host, on a thread of its own).
///
/// Targets are treated as hostile: redirects are never followed (a 3xx is the target's
/// error: following one would carry `X-Project-ID` and tokens to wherever it points), every
/// request has a deadline for the whole exchange (a target that answers its head and then
/// drips its body cannot hold a lane), at most `TargetAnswer.maxBodyBytes` of an answer are
/// read, and only a status and a sanitised reason are kept.
public final class ZaqarClient: Sendable {
    private let transport: CurlTransport
    private let tokens: (any ZaqarTokenSource)?
    /// Zaqar wants a `Client-ID` (a UUID) on every request; one per node.
    public let clientID: String
    private let requestTimeout: Duration
    private let retryAfterCap: Duration

    /// - Parameters:
    ///   - requestTimeout: the deadline of one whole exchange (connect, send, answer, body).
    ///   - retryAfterCap: the longest `Retry-After` honoured; longer ones are cut to it.
    ///   - tokens: trust-scoped tokens for targets with `.trust` credentials; without it
    ///     such targets are refused (401) as if the trust were gone.
    ///   - caFile: the CAs that sign the targets' certificates (HERALD_ZAQAR_CA_FILE); nil: the
    ///     system's. Certificates and host names are always checked.
    public init(
        clientID: UUID = UUID(), connectTimeout: Duration = .seconds(2), requestTimeout: Duration = .seconds(10),
        poolSize: Int = 8,
        retryAfterCap: Duration = .seconds(60), tokens: (any ZaqarTokenSource)? = nil, caFile: String? = nil
    ) {
        self.tokens = tokens
        transport = CurlTransport(
            connectionsPerHost: poolSize, connectTimeout: connectTimeout, requestTimeout: requestTimeout,
            caFile: caFile)
        self.clientID = clientID.uuidString.lowercased()
        self.requestTimeout = requestTimeout
        self.retryAfterCap = retryAfterCap
    }

    /// `POST /v2/queues/{queue}/messages` with `{"messages": [...]}` built from already-encoded messages.
    /// A trust-scoped token Zaqar refuses is replaced once; a trust Keystone refuses is a 401 answer.
    /// - Throws: transport errors (connection refused or reset, timeouts, the deadline) and
    ///   Keystone being unreachable: the caller retries those.
    public func post(_ target: ZaqarTarget, messages: [[UInt8]]) async throws -> ZaqarResponse {
        var request = CurlTransport.Request(
            url: "\(target.baseURL)/v2/queues/\(target.queue)/messages",
            headers: ["Content-Type: application/json", "Client-ID: \(clientID)"],
            body: ZaqarMessageEncoding.requestBody(messages),
            maxBody: TargetAnswer.maxBodyBytes)
        var trust: String?
        switch target.credentials {
        case .noAuth:
            request.headers.append("X-Project-ID: \(target.project)")
        case .trust(let id):
            trust = id
        case .signedURL(let signed, let fallback):
            if let fallback, let expiry = target.signedURLExpiry, expiry <= Date() {
                trust = fallback  // expired and not yet renewed: the trust still reaches the queue
            } else {
                request.headers += [
                    "X-Project-ID: \(signed.project)", "URL-Signature: \(signed.signature)",
                    "URL-Expires: \(signed.expires)", "URL-Methods: \(signed.methods.joined(separator: ","))",
                    "URL-Paths: \(signed.paths.joined(separator: ","))",
                ]
            }
        }
        // libcurl bounds the exchange itself (the request timeout covers it whole).
        guard let trust else {
            var response = try await send(request)
            // Refused without credentials, or with a pre-signed URL and no trust to fall back on: no
            // retry brings others. (Parked for the retry horizon, a tenant could fill the broker
            // with what no request will ever deliver.)
            switch target.credentials {
            case .noAuth, .signedURL(_, trust: .none):
                if response.status == 401 || response.status == 403 { response.credentialsGone = true }
            case .trust, .signedURL(_, trust: .some):
                break  // a renewed pre-signed URL may pass (the keeper renews it with the trust)
            }
            return response
        }
        // A node without Keystone is misconfigured, the trust may be fine: not "gone".
        guard let tokens else {
            return ZaqarResponse(status: 401, message: "this node has no Keystone to get a token for trust \(trust)")
        }
        request.headers.append("X-Project-ID: \(target.project)")
        let withoutToken = request.headers
        for attempt in 0..<2 {
            let token: String
            do {
                // Keystone is asked within the same deadline a whole request has.
                token = try await withDeadline(requestTimeout) { try await tokens.token(trust: trust) }
            } catch let error as ZaqarTokenError {
                guard case .refused(let reason) = error else { throw error }
                return ZaqarResponse(
                    status: 401,
                    message:
                        "Keystone refused a token for trust \(trust): \(TargetAnswer.cut(TargetAnswer.sanitise(reason)))",
                    credentialsGone: true)
            }
            request.headers = withoutToken + ["X-Auth-Token: \(token)"]
            let response = try await send(request)
            guard response.status == 401, attempt == 0 else { return response }
            tokens.refused(trust: trust, token: token)
        }
        // The loop returns on its second pass at the latest.
        return ZaqarResponse(status: 401, message: "Zaqar refused two trust-scoped tokens for trust \(trust)")
    }

    private func send(_ request: CurlTransport.Request) async throws -> ZaqarResponse {
        let answer = try await transport.post(request)
        let status = answer.status
        guard !(200..<300).contains(status) else { return ZaqarResponse(status: status) }
        if (300..<400).contains(status) {
            return ZaqarResponse(
                status: status, message: "the target answered \(status) (a redirect, which Herald never follows)")
        }
        return ZaqarResponse(
            status: status,
            message: TargetAnswer.reason(
                body: answer.body, contentType: answer.contentType, truncated: answer.truncated),
            retryAfter: TargetAnswer.retryAfter(answer.retryAfter, now: Date(), cap: retryAfterCap)
        )
    }

    /// A new pre-signed URL for posting into `queue` (`POST /v2/queues/{queue}/share`), made
    /// with a token of the queue's project.
    /// - Throws: `ZaqarShareError` naming Zaqar's answer, or a transport error.
    public func share(
        baseURL: String, queue: String, project: String, token: String, expires: Date
    ) async throws -> SignedURL {
        let base = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        let document: [String: Any] = [
            "methods": ["POST"], "paths": ["messages"], "expires": ZaqarDates.format(expires),
        ]
        let answer = try await transport.post(
            CurlTransport.Request(
                url: "\(base)/v2/queues/\(queue)/share",
                headers: [
                    "Content-Type: application/json", "Client-ID: \(clientID)", "X-Project-ID: \(project)",
                    "X-Auth-Token: \(token)",
                ], body: Array(try JSONSerialization.data(withJSONObject: document)), maxBody: 1 << 20))
        guard answer.status == 200 || answer.status == 201, !answer.truncated,
            let object = try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any],
            let signature = object["signature"] as? String, let expiresText = object["expires"] as? String,
            let methods = object["methods"] as? [String], let paths = object["paths"] as? [String],
            let owner = object["project"] as? String
        else {
            throw ZaqarShareError(
                status: answer.status,
                message: TargetAnswer.reason(
                    body: answer.body, contentType: answer.contentType, truncated: answer.truncated) ?? "no body"
            )
        }
        return SignedURL(signature: signature, expires: expiresText, methods: methods, paths: paths, project: owner)
    }

    public func shutdown() async {
        await transport.shutdown()
    }
}

/// Zaqar would not make a pre-signed URL.
public struct ZaqarShareError: Error, CustomStringConvertible {
    public var status: Int
    public var message: String

    public var description: String { "Zaqar answered \(status) to the share request: \(message)" }
}

/// Runs `operation` and throws `DeliveryError.deadlineExceeded` when it has not finished after
/// `timeout` (it is cancelled then).
func withDeadline<T: Sendable>(
    _ timeout: Duration, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DeliveryError(.deadlineExceeded, "no complete answer within \(timeout.seconds) s")
        }
        return value
    }
}
