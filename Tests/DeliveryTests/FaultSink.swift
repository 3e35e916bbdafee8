import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A Zaqar-compatible HTTP sink for tests that answers on a script: 201, 400, 404,
/// 429 with Retry-After, 503, a stall, or a reset connection. It records what it
/// accepted per path. Real HTTP on 127.0.0.1; only the answers are scripted.
final class FaultSink: Sendable {
    enum Answer: Sendable {
        case created
        case status(Int, retryAfter: Int? = nil)
        /// Hold the request until `releaseStalls()` (then answer 503); once released, a stall answers 201.
        case stall
        /// Close the connection without answering.
        case reset
    }

    struct Request: Sendable {
        var index: Int
        var path: String
        var body: String
    }

    struct Recorded {
        var requests = 0
        var accepted: [String: [String]] = [:]
        var stallsReleased = false
    }

    let recorded = Mutex(Recorded())
    private let script: @Sendable (Request) -> Answer
    private let channel: any Channel
    let port: Int

    var url: String { "http://127.0.0.1:\(port)" }

    init(script: @escaping @Sendable (Request) -> Answer) async throws {
        self.script = script
        // Handlers need the sink, which exists only once the channel is bound: hand it over in a box.
        let box = Box()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(SinkHandler(sink: box.value!))
                }
            }
        channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress!.port!
        box.value = self
    }

    /// Accepted messages, in arrival order, for a queue path.
    func accepted(_ path: String) -> [String] { recorded.withLock { $0.accepted[path] ?? [] } }
    var requests: Int { recorded.withLock { $0.requests } }

    func releaseStalls() { recorded.withLock { $0.stallsReleased = true } }

    func answer(path: String, body: String) -> Answer {
        let index = recorded.withLock { state -> Int in
            state.requests += 1
            return state.requests
        }
        var answer = script(Request(index: index, path: path, body: body))
        // A stall lasts until released; after that the path works.
        if case .stall = answer, recorded.withLock({ $0.stallsReleased }) { answer = .created }
        if case .created = answer {
            let messages = FaultSink.messages(in: body)
            recorded.withLock { $0.accepted[path, default: []] += messages }
        }
        return answer
    }

    /// The `body` of each message in a `{"messages": [...]}` request, re-serialised.
    static func messages(in body: String) -> [String] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
              let messages = object["messages"] as? [[String: Any]]
        else { return [] }
        return messages.compactMap { message in
            guard let body = message["body"] else { return nil }
            if let text = body as? String { return text }
            return (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) }
        }
    }

    func close() async {
        releaseStalls()
        try? await channel.close()
    }

    final class Box: @unchecked Sendable {
        var value: FaultSink?
    }
}

private final class SinkHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let sink: FaultSink
    var head: HTTPRequestHead?
    var body = ByteBuffer()

    init(sink: FaultSink) {
        self.sink = sink
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
            let answer = sink.answer(path: path, body: String(buffer: body))
            respond(context: context, answer: answer, keepAlive: head?.isKeepAlive ?? true)
        }
    }

    private func respond(context: ChannelHandlerContext, answer: FaultSink.Answer, keepAlive: Bool) {
        switch answer {
        case .created:
            write(context: context, status: 201, body: "{\"resources\": []}", retryAfter: nil)
        case .status(let code, let retryAfter):
            write(context: context, status: code, body: "{\"title\": \"Scripted\", \"description\": \"the sink answered \(code)\"}", retryAfter: retryAfter)
        case .reset:
            context.close(promise: nil)
        case .stall:
            holdUntilReleased(NIOLoopBound(context, eventLoop: context.eventLoop))
        }
    }

    /// Answers 503 once the test releases the stall, checking every 10 ms.
    private func holdUntilReleased(_ context: NIOLoopBound<ChannelHandlerContext>) {
        if sink.recorded.withLock({ $0.stallsReleased }) {
            write(context: context.value, status: 503, body: "{\"description\": \"released from a stall\"}", retryAfter: nil)
        } else {
            context.value.eventLoop.scheduleTask(in: .milliseconds(10)) { self.holdUntilReleased(context) }
        }
    }

    private func write(context: ChannelHandlerContext, status: Int, body: String, retryAfter: Int?) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        if let retryAfter { headers.add(name: "Retry-After", value: "\(retryAfter)") }
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
