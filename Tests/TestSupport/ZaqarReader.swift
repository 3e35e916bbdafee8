import AsyncHTTPClient
import Foundation
import HeraldModel
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Reads queues back from the real Zaqar and creates pre-signed URLs there.
public struct ZaqarReader: Sendable {
    /// - Parameter token: a Keystone token for a Zaqar behind Keystone (the project then comes from it).
    public init(baseURL: String, token: String? = nil) {
        self.baseURL = baseURL
        self.token = token
    }

    public let baseURL: String
    public let token: String?
    let http = HTTPClient.shared
    let clientID = UUID().uuidString.lowercased()

    /// One request. GETs are retried on transport errors (a connect or deadline lost to a busy
    /// single-threaded Zaqar whose listen backlog is full), up to five attempts.
    public func request(
        _ path: String, project: String, method: HTTPMethod = .GET, body: [String: Any]? = nil
    ) async throws -> (Int, Any?) {
        var attempt = 1
        while true {
            do {
                return try await requestOnce(path, project: project, method: method, body: body)
            } catch let error as HTTPClientError where method == .GET && attempt < 5 {
                attempt += 1
                print("zaqar reader: GET \(path) failed (\(error)); attempt \(attempt) of 5")
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    func requestOnce(
        _ path: String, project: String, method: HTTPMethod, body: [String: Any]?
    ) async throws -> (Int, Any?) {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        request.headers.add(name: "Client-ID", value: clientID)
        request.headers.add(name: "X-Project-ID", value: project)
        if let token { request.headers.add(name: "X-Auth-Token", value: token) }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        }
        let response = try await http.execute(request, timeout: .seconds(30))
        let data = try await response.body.collect(upTo: 16 << 20)
        let json = data.readableBytes > 0 ? try? JSONSerialization.jsonObject(with: Data(buffer: data)) : nil
        return (Int(response.status.code), json)
    }

    /// Every message body in the queue, oldest first (following the `next` links).
    ///
    /// A page shorter than the limit is the last: Zaqar's Redis store restarts from the head
    /// when the marker is the queue's first message (`start = rank + 1 if rank else 0`), so
    /// following `next` after a one-message page would return that message forever.
    public func bodies(queue: String, project: String) async throws -> [[String: Any]] {
        let limit = 10
        var path = "/v2/queues/\(queue)/messages?echo=true&limit=\(limit)"
        var bodies: [[String: Any]] = []
        var seen = Set<String>()
        while true {
            let (status, json) = try await request(path, project: project)
            if status == 204 { return bodies }
            let object = json as? [String: Any]
            let messages = (object?["messages"] as? [[String: Any]] ?? []).filter { message in
                guard let id = message["id"] as? String else { return true }
                return seen.insert(id).inserted
            }
            if messages.isEmpty { return bodies }
            bodies += messages.compactMap { $0["body"] as? [String: Any] }
            if messages.count < limit { return bodies }
            guard
                let next = (object?["links"] as? [[String: Any]])?.first(where: { $0["rel"] as? String == "next" })?[
                    "href"] as? String
            else { return bodies }
            path = next
        }
    }

    /// `POST /v2/queues/{queue}/share`: a pre-signed URL for POSTing messages, expiring at `expires`.
    public func share(queue: String, project: String, expires: Date) async throws -> SignedURL {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        let (status, json) = try await request(
            "/v2/queues/\(queue)/share", project: project, method: .POST,
            body: [
                "methods": ["POST"], "paths": ["messages"], "expires": formatter.string(from: expires),
            ])
        guard status == 200, let object = json as? [String: Any], let signature = object["signature"] as? String,
            let expiresText = object["expires"] as? String, let methods = object["methods"] as? [String],
            let paths = object["paths"] as? [String], let signedProject = object["project"] as? String
        else {
            throw TestServers.Missing(variable: "Zaqar's share answered \(status): \(String(describing: json));")
        }
        return SignedURL(
            signature: signature, expires: expiresText, methods: methods, paths: paths, project: signedProject)
    }
}
