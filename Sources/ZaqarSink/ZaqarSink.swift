import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A Zaqar-like HTTP/1.1 server on 127.0.0.1, the one the tests and the benchmarks share: real
/// HTTP, with every request answered as the caller's script says: as Zaqar would (201; 4xx/5xx
/// with Zaqar's error body and `Retry-After`), as a broken target would (a reset, silence, an
/// answer that comes late), or as a hostile one would (a redirect, a huge or non-JSON body, any
/// header). What a script records (requests, messages, latencies) is its own business.
public final class ZaqarSink: Sendable {
    /// One request as the script sees it.
    public struct Request: Sendable {
        /// 1 for the first request the server took.
        public var index: Int
        public var method: HTTPMethod
        /// The target as sent, query included.
        public var uri: String
        /// The path without its query.
        public var path: String
        /// The queue of `/v2/queues/{queue}/...` (the path when it is not that).
        public var queue: String
        public var headers: HTTPHeaders
        public var body: ByteBuffer

        public var text: String { String(buffer: body) }
        /// Zaqar's project header.
        public var project: String? { headers.first(name: "X-Project-ID") }
    }

    public enum Answer: Sendable {
        /// 201 with Zaqar's answer to a post (`{"resources": []}`).
        case accept
        /// Zaqar's error body (`{"title", "description"}`) with this status, and `Retry-After` when given.
        case status(Int, retryAfter: Int? = nil)
        /// This status, with these headers and this body.
        case answer(status: Int, headers: [String: String] = [:], body: String = "")
        /// 302 to `location`.
        case redirect(location: String)
        /// This status with a body of `bytes` bytes of "x", sent at once.
        case huge(status: Int, bytes: Int, contentType: String = "text/html")
        /// Closes the connection without answering.
        case reset
        /// Reads the request and never answers.
        case silent
        /// The answer comes when `decide` returns: a stall, a slow target, a forward to a real
        /// Zaqar. The connection waits; the server's other connections do not.
        case later(@Sendable () async -> Answer)
    }

    private let channel: any Channel
    private let script: Script
    /// The server's port on 127.0.0.1.
    public let port: Int

    public var url: String { "http://127.0.0.1:\(port)" }

    /// - Parameters:
    ///   - accepting: false closes every new connection at once (a target that is down).
    ///   - answer: how to answer each request; called on the connection's event loop, so it must
    ///     not block (return `.later` for anything that waits).
    /// - Throws: when 127.0.0.1 has no free port to bind.
    public init(
        accepting: @escaping @Sendable () -> Bool = { true },
        answer: @escaping @Sendable (Request) -> Answer
    ) async throws {
        let script = Script(accepting: accepting, answer: answer)
        self.script = script
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(SinkHandler(script: script))
                }
            }
        channel = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        guard let port = channel.localAddress?.port else {
            try? await channel.close()
            throw ZaqarSinkError(description: "the sink's socket has no port")
        }
        self.port = port
    }

    /// Requests the server has taken.
    public var requestCount: Int { script.requests.load(ordering: .relaxed) }

    /// Stops listening (open connections end with their peers).
    public func close() async {
        try? await channel.close()
    }
}

public struct ZaqarSinkError: Error, CustomStringConvertible {
    public var description: String
}

/// What every connection's handler shares: the caller's script and the request counter.
private final class Script: Sendable {
    let accepting: @Sendable () -> Bool
    let answer: @Sendable (ZaqarSink.Request) -> ZaqarSink.Answer
    let requests = Atomic<Int>(0)

    init(accepting: @escaping @Sendable () -> Bool, answer: @escaping @Sendable (ZaqarSink.Request) -> ZaqarSink.Answer)
    {
        self.accepting = accepting
        self.answer = answer
    }
}

private final class SinkHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let script: Script
    var head: HTTPRequestHead?
    var body = ByteBuffer()

    init(script: Script) {
        self.script = script
    }

    func channelActive(context: ChannelHandlerContext) {
        guard script.accepting() else {
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
        case .body(var chunk):
            body.writeBuffer(&chunk)
        case .end:
            guard let head else { return }
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            let parts = path.split(separator: "/")
            let queue = parts.count >= 3 && parts[0] == "v2" && parts[1] == "queues" ? String(parts[2]) : path
            let request = ZaqarSink.Request(
                index: script.requests.add(1, ordering: .relaxed).newValue, method: head.method, uri: head.uri,
                path: path, queue: queue, headers: head.headers,
                body: body)
            send(script.answer(request), context: context)
        }
    }

    private func send(_ answer: ZaqarSink.Answer, context: ChannelHandlerContext) {
        switch answer {
        case .accept:
            write(
                context: context, status: 201, headers: ["Content-Type": "application/json"],
                body: ByteBuffer(string: #"{"resources": []}"#))
        case .status(let code, let retryAfter):
            var headers = ["Content-Type": "application/json"]
            if let retryAfter { headers["Retry-After"] = "\(retryAfter)" }
            write(
                context: context, status: code, headers: headers,
                body: ByteBuffer(string: #"{"title": "Scripted", "description": "the sink answered \#(code)"}"#))
        case .answer(let status, let headers, let text):
            write(context: context, status: status, headers: headers, body: ByteBuffer(string: text))
        case .redirect(let location):
            write(context: context, status: 302, headers: ["Location": location], body: ByteBuffer())
        case .huge(let status, let bytes, let contentType):
            write(
                context: context, status: status, headers: ["Content-Type": contentType],
                body: ByteBuffer(repeating: UInt8(ascii: "x"), count: bytes))
        case .reset:
            context.close(promise: nil)
        case .silent:
            break
        case .later(let decide):
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let decided = context.eventLoop.makePromise(of: ZaqarSink.Answer.self)
            // The task is the answer's: its result is written back to this connection, on its loop.
            decided.completeWithTask { await decide() }
            decided.futureResult.whenSuccess { answer in bound.value.0.send(answer, context: bound.value.1) }
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
