import AsyncHTTPClient
import Foundation
import HeraldModel
import NIOCore
import NIOFoundationCompat

/// What Zaqar answered to one POST.
public struct ZaqarResponse: Sendable {
    public var status: Int
    /// Zaqar's `description` (or the raw body) for an error.
    public var message: String?
    /// `Retry-After` in seconds, when given (429, 503).
    public var retryAfter: Double?
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
public final class ZaqarClient: Sendable {
    private let http: HTTPClient
    private let tokens: (any ZaqarTokenSource)?
    /// Zaqar wants a `Client-ID` (a UUID) on every request; one per node.
    public let clientID: String
    private let requestTimeout: Duration

    /// - Parameter tokens: trust-scoped tokens for targets with `.trust` credentials; without it
    ///   such targets are refused (401) as if the trust were gone.
    public init(
        clientID: UUID = UUID(), connectTimeout: Duration = .seconds(2), requestTimeout: Duration = .seconds(10), poolSize: Int = 8,
        tokens: (any ZaqarTokenSource)? = nil
    ) {
        self.tokens = tokens
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .milliseconds(connectTimeout.milliseconds), read: .milliseconds(requestTimeout.milliseconds))
        )
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: poolSize)
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.clientID = clientID.uuidString.lowercased()
        self.requestTimeout = requestTimeout
    }

    /// `POST /v2/queues/{queue}/messages` with `{"messages": [...]}` built from already-encoded messages.
    /// A trust-scoped token Zaqar refuses is replaced once; a trust Keystone refuses is a 401 answer.
    /// - Throws: transport errors (connection refused or reset, timeouts) and Keystone being
    ///   unreachable: the caller retries those.
    public func post(_ target: ZaqarTarget, messages: [[UInt8]]) async throws -> ZaqarResponse {
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
        guard let tokens else { return ZaqarResponse(status: 401, message: "this node has no Keystone to get a token for trust \(trust)", retryAfter: nil) }
        request.headers.add(name: "X-Project-ID", value: target.project)
        for attempt in 0..<2 {
            let token: String
            do {
                token = try await tokens.token(trust: trust)
            } catch .refused(let reason) {
                return ZaqarResponse(status: 401, message: "Keystone refused a token for trust \(trust): \(reason)", retryAfter: nil)
            } catch {
                throw error
            }
            request.headers.replaceOrAdd(name: "X-Auth-Token", value: token)
            let response = try await send(request)
            guard response.status == 401, attempt == 0 else { return response }
            tokens.refused(trust: trust, token: token)
        }
        preconditionFailure("unreachable")
    }

    private func send(_ request: HTTPClientRequest) async throws -> ZaqarResponse {
        let response = try await http.execute(request, timeout: .milliseconds(requestTimeout.milliseconds))
        let status = Int(response.status.code)
        let retryAfter = response.headers.first(name: "Retry-After").flatMap(Double.init)
        let collected = try await response.body.collect(upTo: 1 << 20)
        guard !(200..<300).contains(status) else { return ZaqarResponse(status: status, message: nil, retryAfter: nil) }
        return ZaqarResponse(status: status, message: Self.errorDescription(collected), retryAfter: retryAfter)
    }

    /// A new pre-signed URL for posting into `queue` (`POST /v2/queues/{queue}/share`), made
    /// with a token of the queue's project.
    /// - Throws: `ZaqarShareError` naming Zaqar's answer, or a transport error.
    public func share(baseURL: String, queue: String, project: String, token: String, expires: Date) async throws -> SignedURL {
        let base = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        var request = HTTPClientRequest(url: "\(base)/v2/queues/\(queue)/share")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Client-ID", value: clientID)
        request.headers.add(name: "X-Project-ID", value: project)
        request.headers.add(name: "X-Auth-Token", value: token)
        let document: [String: Any] = ["methods": ["POST"], "paths": ["messages"], "expires": ZaqarDates.format(expires)]
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: document)))
        let response = try await http.execute(request, timeout: .milliseconds(requestTimeout.milliseconds))
        let collected = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok || response.status == .created,
              let object = try? JSONSerialization.jsonObject(with: Data(buffer: collected)) as? [String: Any],
              let signature = object["signature"] as? String, let expiresText = object["expires"] as? String,
              let methods = object["methods"] as? [String], let paths = object["paths"] as? [String], let owner = object["project"] as? String
        else {
            throw ZaqarShareError(status: Int(response.status.code), message: Self.errorDescription(collected) ?? "no body")
        }
        return SignedURL(signature: signature, expires: expiresText, methods: methods, paths: paths, project: owner)
    }

    /// Zaqar's errors are `{"title": "...", "description": "..."}`.
    static func errorDescription(_ body: ByteBuffer) -> String? {
        guard body.readableBytes > 0 else { return nil }
        if let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] {
            let title = object["title"] as? String
            let description = object["description"] as? String
            switch (title, description) {
            case (let title?, let description?): return "\(title): \(description)"
            case (nil, let description?): return description
            case (let title?, nil): return title
            default: break
            }
        }
        return String(buffer: body).prefix(500).description
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
