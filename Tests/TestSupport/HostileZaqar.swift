import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A Zaqar-compatible HTTP server on 127.0.0.1 that answers on a script, per request: as Zaqar
/// would (201, recording the messages; 4xx/5xx with Zaqar's error body and `Retry-After`), as a
/// broken one would (a stall, a reset connection) or as a hostile target would (`Retry-After:
/// inf`, redirects, silence, huge or non-JSON bodies). Real HTTP; only the answers are scripted.
/// The one recording server of the tests.
public final class HostileZaqar: Sendable {
    /// One request as the script sees it.
    public struct Request: Sendable {
        /// 1 for the first request the server took.
        public var index: Int
        public var path: String
        /// The queue of `/v2/queues/{queue}/messages` (the path when it is not that).
        public var queue: String
        public var body: String
    }

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
        /// This status with a body of `bytes` bytes of `filler`, sent at once.
        case huge(status: Int, bytes: Int, contentType: String = "text/html")
    }

    struct State {
        var index = 0
        var requests: [String: Int] = [:]
        var accepted: [String: [String]] = [:]
        var stallsReleased = false
    }

    private let state = Mutex(State())
    private let behaviour: @Sendable (Request) -> Behaviour
    private let channel: any Channel
    public let port: Int

    public var url: String { "http://127.0.0.1:\(port)" }

    /// - Parameter behaviour: how to answer each request.
    public init(_ behaviour: @escaping @Sendable (Request) -> Behaviour) async throws {
        self.behaviour = behaviour
        let box = Box()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(HostileHandler(server: box.value!))
                }
            }
        channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress!.port!
        box.value = self
    }

    /// Requests that reached a queue (any answer).
    public func requests(queue: String) -> Int { state.withLock { $0.requests[queue] ?? 0 } }
    /// Requests that reached the server at all.
    public var totalRequests: Int { state.withLock { $0.requests.values.reduce(0, +) } }
    /// Message bodies accepted into a queue, in arrival order.
    public func accepted(queue: String) -> [String] { state.withLock { $0.accepted[queue] ?? [] } }

    /// Ends every stall: held requests are answered 503, later stalls accept.
    public func releaseStalls() { state.withLock { $0.stallsReleased = true } }
    var stallsReleased: Bool { state.withLock { $0.stallsReleased } }

    func answer(path: String, body: String) -> Behaviour {
        // /v2/queues/{queue}/messages
        let parts = path.split(separator: "/")
        let queue = parts.count >= 3 && parts[0] == "v2" && parts[1] == "queues" ? String(parts[2]) : path
        let index = state.withLock { state -> Int in
            state.index += 1
            return state.index
        }
        var chosen = behaviour(Request(index: index, path: path, queue: queue, body: body))
        if case .stall = chosen, stallsReleased { chosen = .accept }
        state.withLock { state in
            state.requests[queue, default: 0] += 1
            if case .accept = chosen {
                state.accepted[queue, default: []] += Self.messages(in: body)
            }
        }
        return chosen
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
        try? await channel.close()
    }

    final class Box: @unchecked Sendable {
        var value: HostileZaqar?
    }
}

private final class HostileHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let server: HostileZaqar
    var head: HTTPRequestHead?
    var body = ByteBuffer()

    init(server: HostileZaqar) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
        case .body(var chunk):
            body.writeBuffer(&chunk)
        case .end:
            let path = head.map { String($0.uri.split(separator: "?").first ?? "") } ?? ""
            switch server.answer(path: path, body: String(buffer: body)) {
            case .accept:
                write(
                    context: context, status: 201, headers: ["Content-Type": "application/json"],
                    body: ByteBuffer(string: "{\"resources\": []}"))
            case .status(let code, let retryAfter):
                var headers = ["Content-Type": "application/json"]
                if let retryAfter { headers["Retry-After"] = "\(retryAfter)" }
                write(
                    context: context, status: code, headers: headers,
                    body: ByteBuffer(
                        string: "{\"title\": \"Scripted\", \"description\": \"the sink answered \(code)\"}"))
            case .stall:
                holdUntilReleased(NIOLoopBound(context, eventLoop: context.eventLoop))
            case .reset:
                context.close(promise: nil)
            case .answer(let status, let headers, let text):
                write(context: context, status: status, headers: headers, body: ByteBuffer(string: text))
            case .redirect(let location):
                write(context: context, status: 302, headers: ["Location": location], body: ByteBuffer())
            case .silent:
                break
            case .huge(let status, let bytes, let contentType):
                write(
                    context: context, status: status, headers: ["Content-Type": contentType],
                    body: ByteBuffer(repeating: UInt8(ascii: "x"), count: bytes))
            }
        }
    }

    /// Answers 503 once the test releases the stalls, checking every 10 ms.
    private func holdUntilReleased(_ context: NIOLoopBound<ChannelHandlerContext>) {
        if server.stallsReleased {
            write(
                context: context.value, status: 503, headers: ["Content-Type": "application/json"],
                body: ByteBuffer(string: "{\"description\": \"released from a stall\"}"))
        } else {
            context.value.eventLoop.scheduleTask(in: .milliseconds(10)) { self.holdUntilReleased(context) }
        }
    }

    private func write(context: ChannelHandlerContext, status: Int, headers: [String: String], body: ByteBuffer) {
        var fields = HTTPHeaders()
        for (name, value) in headers { fields.add(name: name, value: value) }
        fields.add(name: "Content-Length", value: "\(body.readableBytes)")
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: fields)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
