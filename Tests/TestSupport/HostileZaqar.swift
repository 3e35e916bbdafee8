import Foundation
import Synchronization
@_exported import ZaqarSink

/// The tests' scripted Zaqar: a `ZaqarSink` that answers on a script, per request, as Zaqar
/// would (201, recording the messages; 4xx/5xx with Zaqar's error body and `Retry-After`), as a
/// broken one would (a stall, a reset connection) or as a hostile target would (`Retry-After:
/// inf`, redirects, silence, huge or non-JSON bodies), and counts what reached each queue.
public final class HostileZaqar: Sendable {
    public typealias Request = ZaqarSink.Request

    public enum Behaviour: Sendable {
        /// 201, messages recorded.
        case accept
        /// Zaqar's error body (`{"title", "description"}`) with this status, and `Retry-After` when given.
        case status(Int, retryAfter: Int? = nil)
        /// Holds the request until `releaseStalls()`, then answers 503; once released, a stall accepts.
        case stall
        /// Closes the connection without answering.
        case reset
        /// This status, with these headers and this body.
        case answer(status: Int, headers: [String: String] = [:], body: String = "")
        /// 302 to `location`.
        case redirect(location: String)
        /// Reads the request and never answers.
        case silent
        /// This status with a body of `bytes` bytes of "x", sent at once.
        case huge(status: Int, bytes: Int, contentType: String = "text/html")
    }

    private struct State {
        var requests: [String: Int] = [:]
        var accepted: [String: [String]] = [:]
        var acceptedRequests: [String: [[String]]] = [:]
        var stallsReleased = false
        var stalled: [CheckedContinuation<Void, Never>] = []
    }

    /// What the script records, shared with it by reference.
    private final class Books: Sendable {
        let state = Mutex(State())
    }

    private let books: Books
    private let sink: ZaqarSink
    public let port: Int

    public var url: String { "http://127.0.0.1:\(port)" }

    /// - Parameter behaviour: how to answer each request.
    public init(_ behaviour: @escaping @Sendable (Request) -> Behaviour) async throws {
        let books = Books()
        sink = try await ZaqarSink { request in
            var chosen = behaviour(request)
            let released = books.state.withLock { state in
                state.requests[request.queue, default: 0] += 1
                return state.stallsReleased
            }
            if case .stall = chosen, released { chosen = .accept }
            switch chosen {
            case .accept:
                let messages = Self.messages(in: request.text)
                books.state.withLock {
                    $0.accepted[request.queue, default: []] += messages
                    $0.acceptedRequests[request.queue, default: []].append(messages)
                }
                return .accept
            case .status(let code, let retryAfter): return .status(code, retryAfter: retryAfter)
            case .stall:
                return .later {
                    await withCheckedContinuation { continuation in
                        let open = books.state.withLock { state in
                            if !state.stallsReleased { state.stalled.append(continuation) }
                            return state.stallsReleased
                        }
                        if open { continuation.resume() }
                    }
                    return .answer(
                        status: 503, headers: ["Content-Type": "application/json"],
                        body: #"{"description": "released from a stall"}"#)
                }
            case .reset: return .reset
            case .answer(let status, let headers, let body):
                return .answer(status: status, headers: headers, body: body)
            case .redirect(let location): return .redirect(location: location)
            case .silent: return .silent
            case .huge(let status, let bytes, let contentType):
                return .huge(status: status, bytes: bytes, contentType: contentType)
            }
        }
        port = sink.port
        self.books = books
    }

    /// Requests that reached a queue (any answer).
    public func requests(queue: String) -> Int { books.state.withLock { $0.requests[queue] ?? 0 } }
    /// Requests that reached the server at all.
    public var totalRequests: Int { sink.requestCount }
    /// Message bodies accepted into a queue, in arrival order.
    public func accepted(queue: String) -> [String] { books.state.withLock { $0.accepted[queue] ?? [] } }
    /// The same, one list per accepted request.
    public func acceptedRequests(queue: String) -> [[String]] {
        books.state.withLock { $0.acceptedRequests[queue] ?? [] }
    }

    /// Ends every stall: held requests are answered 503, later stalls accept.
    public func releaseStalls() {
        let held = books.state.withLock { state in
            state.stallsReleased = true
            defer { state.stalled = [] }
            return state.stalled
        }
        for continuation in held { continuation.resume() }
    }

    /// The `body` of each message in a `{"messages": [...]}` request, re-serialised with sorted keys.
    static func messages(in body: String) -> [String] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let messages = object["messages"] as? [[String: Any]]
        else { return [] }
        return messages.compactMap { message in
            guard let body = message["body"] else { return nil }
            return (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])).map {
                String(decoding: $0, as: UTF8.self)
            }
        }
    }

    public func close() async {
        releaseStalls()
        await sink.close()
    }
}
