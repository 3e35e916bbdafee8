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

/// Posts batches of messages into Zaqar queues over one owned AsyncHTTPClient
/// (keep-alive pool, connect and read timeouts).
public final class ZaqarClient: Sendable {
    private let http: HTTPClient
    /// Zaqar wants a `Client-ID` (a UUID) on every request; one per node.
    public let clientID: String
    private let requestTimeout: Duration

    public init(clientID: UUID = UUID(), connectTimeout: Duration = .seconds(2), requestTimeout: Duration = .seconds(10), poolSize: Int = 8) {
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .milliseconds(connectTimeout.milliseconds), read: .milliseconds(requestTimeout.milliseconds))
        )
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: poolSize)
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.clientID = clientID.uuidString.lowercased()
        self.requestTimeout = requestTimeout
    }

    /// `POST /v2/queues/{queue}/messages` with `{"messages": [...]}` built from already-encoded messages.
    /// - Throws: transport errors (connection refused or reset, timeouts): the caller retries those.
    public func post(_ target: ZaqarTarget, messages: [[UInt8]]) async throws -> ZaqarResponse {
        var request = HTTPClientRequest(url: "\(target.baseURL)/v2/queues/\(target.queue)/messages")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Client-ID", value: clientID)
        switch target.credentials {
        case .noAuth:
            request.headers.add(name: "X-Project-ID", value: target.project)
        case .token(let token):
            request.headers.add(name: "X-Project-ID", value: target.project)
            request.headers.add(name: "X-Auth-Token", value: token)
        case .signedURL(let signed):
            request.headers.add(name: "X-Project-ID", value: signed.project)
            request.headers.add(name: "URL-Signature", value: signed.signature)
            request.headers.add(name: "URL-Expires", value: signed.expires)
            request.headers.add(name: "URL-Methods", value: signed.methods.joined(separator: ","))
            request.headers.add(name: "URL-Paths", value: signed.paths.joined(separator: ","))
        }
        var body = ByteBuffer()
        body.reserveCapacity(messages.reduce(ZaqarMessageEncoding.envelopeBytes) { $0 + $1.count + 1 })
        body.writeString("{\"messages\":[")
        for (index, message) in messages.enumerated() {
            if index > 0 { body.writeInteger(UInt8(ascii: ",")) }
            body.writeBytes(message)
        }
        body.writeString("]}")
        request.body = .bytes(body)
        let response = try await http.execute(request, timeout: .milliseconds(requestTimeout.milliseconds))
        let status = Int(response.status.code)
        let retryAfter = response.headers.first(name: "Retry-After").flatMap(Double.init)
        let collected = try await response.body.collect(upTo: 1 << 20)
        guard !(200..<300).contains(status) else { return ZaqarResponse(status: status, message: nil, retryAfter: nil) }
        return ZaqarResponse(status: status, message: Self.errorDescription(collected), retryAfter: retryAfter)
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
