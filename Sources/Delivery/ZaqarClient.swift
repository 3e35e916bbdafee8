import AsyncHTTPClient
import Foundation
import HeraldModel
import NIOCore
import NIOFoundationCompat
import NIOSSL

/// What Zaqar answered to one POST.
public struct ZaqarResponse: Sendable {
    public var status: Int
    /// A short, sanitised reason for an error: Zaqar's `title: description`, or only what kind
    /// of body came (`TargetAnswer.reason`); never the raw body.
    public var message: String?
    /// `Retry-After`, when given and usable (429, 503), cut to the client's `retryAfterCap`.
    public var retryAfter: Duration?
    /// A 401 that cannot pass later: Keystone itself refused a token for the subscription's trust
    /// (deleted, expired, its trustor gone). Other 401s and 403s may (roles given back, Keystone
    /// recovering) and are parked and retried.
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
    /// Keystone could not be asked: worth retrying.
    case unavailable(String)

    public var description: String {
        switch self {
        case .refused(let text), .unavailable(let text): return text
        }
    }
}

/// Posts batches of messages into Zaqar queues over one owned AsyncHTTPClient
/// (keep-alive pool, connect and read timeouts).
///
/// Targets are treated as hostile: redirects are never followed (a 3xx is the target's
/// error: following one would carry `X-Project-ID` and tokens to wherever it points), every
/// request has a deadline for the whole exchange (a target that answers its head and then
/// drips its body cannot hold a lane), at most `TargetAnswer.maxBodyBytes` of an answer are
/// read, and only a status and a sanitised reason are kept.
public final class ZaqarClient: Sendable {
    private let http: HTTPClient
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
        var configuration = HTTPClient.Configuration(
            timeout: .init(
                connect: .milliseconds(connectTimeout.milliseconds), read: .milliseconds(requestTimeout.milliseconds))
        )
        if let caFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(caFile)
            configuration.tlsConfiguration = tls
        }
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: poolSize)
        configuration.redirectConfiguration = .disallow
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.clientID = clientID.uuidString.lowercased()
        self.requestTimeout = requestTimeout
        self.retryAfterCap = retryAfterCap
    }

    /// `POST /v2/queues/{queue}/messages` with `{"messages": [...]}` built from already-encoded messages.
    /// A trust-scoped token Zaqar refuses is replaced once; a trust Keystone refuses is a 401 answer.
    /// - Throws: transport errors (connection refused or reset, timeouts, the deadline) and
    ///   Keystone being unreachable: the caller retries those.
    public func post(_ target: ZaqarTarget, messages: [[UInt8]]) async throws -> ZaqarResponse {
        try await withDeadline(requestTimeout) { try await self.postWithoutDeadline(target, messages: messages) }
    }

    private func postWithoutDeadline(_ target: ZaqarTarget, messages: [[UInt8]]) async throws -> ZaqarResponse {
        var body = ByteBuffer()
        body.reserveCapacity(messages.reduce(ZaqarMessageEncoding.envelopeBytes) { $0 + $1.count + 1 })
        body.writeString("{\"messages\":[")
        for (index, message) in messages.enumerated() {
            if index > 0 { body.writeInteger(UInt8(ascii: ",")) }
            body.writeBytes(message)
        }
        body.writeString("]}")
        var request = HTTPClientRequest(url: "\(target.baseURL)/v2/queues/\(target.queue)/messages")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Client-ID", value: clientID)
        request.body = .bytes(body)
        var trust: String?
        switch target.credentials {
        case .noAuth:
            request.headers.add(name: "X-Project-ID", value: target.project)
        case .trust(let id):
            trust = id
        case .signedURL(let signed, let fallback):
            if let fallback, let expiry = target.signedURLExpiry, expiry <= Date() {
                trust = fallback  // expired and not yet renewed: the trust still reaches the queue
            } else {
                request.headers.add(name: "X-Project-ID", value: signed.project)
                request.headers.add(name: "URL-Signature", value: signed.signature)
                request.headers.add(name: "URL-Expires", value: signed.expires)
                request.headers.add(name: "URL-Methods", value: signed.methods.joined(separator: ","))
                request.headers.add(name: "URL-Paths", value: signed.paths.joined(separator: ","))
            }
        }
        guard let trust else { return try await send(request) }
        // A node without Keystone is misconfigured, the trust may be fine: not "gone".
        guard let tokens else {
            return ZaqarResponse(status: 401, message: "this node has no Keystone to get a token for trust \(trust)")
        }
        request.headers.add(name: "X-Project-ID", value: target.project)
        for attempt in 0..<2 {
            let token: String
            do {
                token = try await tokens.token(trust: trust)
            } catch .refused(let reason) {
                return ZaqarResponse(
                    status: 401,
                    message:
                        "Keystone refused a token for trust \(trust): \(TargetAnswer.cut(TargetAnswer.sanitise(reason)))",
                    credentialsGone: true)
            } catch {
                throw error
            }
            request.headers.replaceOrAdd(name: "X-Auth-Token", value: token)
            let response = try await send(request)
            guard response.status == 401, attempt == 0 else { return response }
            tokens.refused(trust: trust, token: token)
        }
        // The loop returns on its second pass at the latest.
        return ZaqarResponse(status: 401, message: "Zaqar refused two trust-scoped tokens for trust \(trust)")
    }

    private func send(_ request: HTTPClientRequest) async throws -> ZaqarResponse {
        let response = try await http.execute(request, timeout: .milliseconds(requestTimeout.milliseconds))
        let status = Int(response.status.code)
        var body: [UInt8] = []
        var truncated = false
        for try await chunk in response.body {
            let room = TargetAnswer.maxBodyBytes - body.count
            if chunk.readableBytes > room {
                body += chunk.readableBytesView.prefix(room)
                truncated = true
                break  // the rest is not read: the connection is closed instead of reused
            }
            body += chunk.readableBytesView
        }
        guard !(200..<300).contains(status) else { return ZaqarResponse(status: status) }
        if (300..<400).contains(status) {
            return ZaqarResponse(
                status: status, message: "the target answered \(status) (a redirect, which Herald never follows)")
        }
        return ZaqarResponse(
            status: status,
            message: TargetAnswer.reason(
                body: body, contentType: response.headers.first(name: "Content-Type"), truncated: truncated),
            retryAfter: TargetAnswer.retryAfter(
                response.headers.first(name: "Retry-After"), now: Date(), cap: retryAfterCap)
        )
    }

    /// A new pre-signed URL for posting into `queue` (`POST /v2/queues/{queue}/share`), made
    /// with a token of the queue's project.
    /// - Throws: `ZaqarShareError` naming Zaqar's answer, or a transport error.
    public func share(
        baseURL: String, queue: String, project: String, token: String, expires: Date
    ) async throws -> SignedURL {
        let base = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        var request = HTTPClientRequest(url: "\(base)/v2/queues/\(queue)/share")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Client-ID", value: clientID)
        request.headers.add(name: "X-Project-ID", value: project)
        request.headers.add(name: "X-Auth-Token", value: token)
        let document: [String: Any] = [
            "methods": ["POST"], "paths": ["messages"], "expires": ZaqarDates.format(expires),
        ]
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: document)))
        let response = try await http.execute(request, timeout: .milliseconds(requestTimeout.milliseconds))
        let collected = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok || response.status == .created,
            let object = try? JSONSerialization.jsonObject(with: Data(buffer: collected)) as? [String: Any],
            let signature = object["signature"] as? String, let expiresText = object["expires"] as? String,
            let methods = object["methods"] as? [String], let paths = object["paths"] as? [String],
            let owner = object["project"] as? String
        else {
            throw ZaqarShareError(
                status: Int(response.status.code),
                message: TargetAnswer.reason(
                    body: Array(collected.readableBytesView), contentType: response.headers.first(name: "Content-Type"),
                    truncated: false) ?? "no body"
            )
        }
        return SignedURL(signature: signature, expires: expiresText, methods: methods, paths: paths, project: owner)
    }

    public func shutdown() async {
        try? await http.shutdown()
    }
}

/// Zaqar would not make a pre-signed URL.
public struct ZaqarShareError: Error, CustomStringConvertible {
    public var status: Int
    public var message: String

    public var description: String { "Zaqar answered \(status) to the share request: \(message)" }
}

/// Runs `operation` and throws `DeliveryError.deadlineExceeded` when it has not finished after
/// `timeout` (it is cancelled then: AsyncHTTPClient closes the request's connection).
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
