import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A Zaqar-compatible HTTP server on 127.0.0.1 that answers each queue as a hostile or broken
/// target would: `Retry-After: inf`, redirects, silence, huge or non-JSON bodies. Queues it has
/// no behaviour for are answered 201 and their messages recorded. Real HTTP; only the answers
/// are scripted.
public final class HostileZaqar: Sendable {
    public enum Behaviour: Sendable {
        /// 201, messages recorded.
        case accept
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
        var requests: [String: Int] = [:]
        var accepted: [String: [String]] = [:]
    }

    private let state = Mutex(State())
    private let behaviour: @Sendable (_ queue: String) -> Behaviour
    private let channel: any Channel
    public let port: Int

    public var url: String { "http://127.0.0.1:\(port)" }

    /// - Parameter behaviour: how to answer a POST into a queue, by queue name.
    public init(behaviour: @escaping @Sendable (_ queue: String) -> Behaviour) async throws {
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

    func answer(path: String, body: String) -> Behaviour {
        // /v2/queues/{queue}/messages
        let parts = path.split(separator: "/")
        let queue = parts.count >= 3 && parts[0] == "v2" && parts[1] == "queues" ? String(parts[2]) : path
        let chosen = behaviour(queue)
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
            return (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) }
        }
    }

    public func close() async {
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
                write(context: context, status: 201, headers: ["Content-Type": "application/json"], body: ByteBuffer(string: "{\"resources\": []}"))
            case .answer(let status, let headers, let text):
                write(context: context, status: status, headers: headers, body: ByteBuffer(string: text))
            case .redirect(let location):
                write(context: context, status: 302, headers: ["Location": location], body: ByteBuffer())
            case .silent:
                break
            case .huge(let status, let bytes, let contentType):
                write(context: context, status: status, headers: ["Content-Type": contentType], body: ByteBuffer(repeating: UInt8(ascii: "x"), count: bytes))
            }
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
