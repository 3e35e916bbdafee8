import AsyncHTTPClient
import Foundation
import HeraldModel
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Reads queues back from the real Zaqar and creates pre-signed URLs there.
public struct ZaqarReader: Sendable {
    public init(baseURL: String) {
        self.baseURL = baseURL
    }

    public let baseURL: String
    let http = HTTPClient.shared
    let clientID = UUID().uuidString.lowercased()

    public func request(_ path: String, project: String, method: HTTPMethod = .GET, body: [String: Any]? = nil) async throws -> (Int, Any?) {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        request.headers.add(name: "Client-ID", value: clientID)
        request.headers.add(name: "X-Project-ID", value: project)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        }
        let response = try await http.execute(request, timeout: .seconds(10))
        let data = try await response.body.collect(upTo: 16 << 20)
        let json = data.readableBytes > 0 ? try? JSONSerialization.jsonObject(with: Data(buffer: data)) : nil
        return (Int(response.status.code), json)
    }

    /// Every message body in the queue, oldest first (following the `next` links).
    public func bodies(queue: String, project: String) async throws -> [[String: Any]] {
        var path = "/v2/queues/\(queue)/messages?echo=true&limit=10"
        var bodies: [[String: Any]] = []
        while true {
            let (status, json) = try await request(path, project: project)
            if status == 204 { return bodies }
            let object = json as? [String: Any]
            let messages = object?["messages"] as? [[String: Any]] ?? []
            if messages.isEmpty { return bodies }
            bodies += messages.compactMap { $0["body"] as? [String: Any] }
            guard let next = (object?["links"] as? [[String: Any]])?.first(where: { $0["rel"] as? String == "next" })?["href"] as? String else { return bodies }
            path = next
        }
    }

    /// `POST /v2/queues/{queue}/share`: a pre-signed URL for POSTing messages, expiring at `expires`.
    public func share(queue: String, project: String, expires: Date) async throws -> SignedURL {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        let (status, json) = try await request("/v2/queues/\(queue)/share", project: project, method: .POST, body: [
            "methods": ["POST"], "paths": ["messages"], "expires": formatter.string(from: expires),
        ])
        guard status == 200, let object = json as? [String: Any], let signature = object["signature"] as? String,
              let expiresText = object["expires"] as? String, let methods = object["methods"] as? [String],
              let paths = object["paths"] as? [String], let signedProject = object["project"] as? String
        else {
            throw TestServers.Missing(variable: "Zaqar's share answered \(status): \(String(describing: json));")
        }
        return SignedURL(signature: signature, expires: expiresText, methods: methods, paths: paths, project: signedProject)
    }
}

