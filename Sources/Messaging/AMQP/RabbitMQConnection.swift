import CRabbitMQ
import Foundation
import HeraldModel

/// What reading the socket produced.
enum WireEvent {
    case delivery(AMQPDelivery)
    case confirm(channel: UInt16, tag: UInt64, multiple: Bool, ack: Bool)
    /// `sequence`: the publish's number on its channel, from the header the engine stamps on
    /// mandatory publishes in confirm mode (`publishSequenceHeader`); nil when absent.
    case returned(
        channel: UInt16, replyCode: Int, replyText: String, exchange: String, routingKey: String, sequence: UInt64?)
    /// The broker closed a channel; close-ok was already sent.
    case channelClosed(channel: UInt16, replyCode: Int, replyText: String)
    /// The broker cancelled a consumer (its queue was deleted, ...).
    case consumerCancelled(channel: UInt16, consumerTag: String)
    case blocked(reason: String)
    case unblocked

    /// The channel it came on; nil for the connection's own.
    var channelID: UInt16? {
        switch self {
        case .delivery(let delivery): return delivery.channelID
        case .confirm(let channel, _, _, _), .returned(let channel, _, _, _, _, _), .channelClosed(let channel, _, _),
            .consumerCancelled(let channel, _):
            return channel
        case .blocked, .unblocked: return nil
        }
    }
}

/// The one owner of a rabbitmq-c `amqp_connection_state_t`.
///
/// rabbitmq-c is not thread-safe and blocks on its socket: an instance is only
/// touched by the connection thread of the `AMQPEngine` that made it, which is
/// why it is `@unchecked Sendable`. Nothing outside this file calls rabbitmq-c.
final class RabbitMQConnection: @unchecked Sendable {
    private let state: amqp_connection_state_t
    private var isClosed = false
    let configuration: AMQPConfiguration

    private init(state: amqp_connection_state_t, configuration: AMQPConfiguration) {
        self.state = state
        self.configuration = configuration
    }

    deinit {
        amqp_destroy_connection(state)
    }

    /// Opens the socket and logs in.
    /// - Throws: `MessagingError.connectionFailed` with rabbitmq-c's or the broker's reason.
    static func open(_ configuration: AMQPConfiguration) throws -> RabbitMQConnection {
        guard let state = amqp_new_connection() else {
            throw MessagingError(.connectionFailed, "cannot allocate an AMQP connection")
        }
        let connection = RabbitMQConnection(state: state, configuration: configuration)
        let where_ = "\(configuration.host):\(configuration.port)"
        let socket: OpaquePointer?
        if configuration.tls {
            socket = amqp_ssl_socket_new(state)
            if let socket {
                if configuration.verifyPeer {
                    let ca = configuration.caCertificatePath ?? AMQPConfiguration.systemCABundle
                    if amqp_ssl_socket_set_cacert(socket, ca) != statusOK {
                        throw MessagingError(
                            .connectionFailed,
                            "cannot read the CA certificates '\(ca)' to check RabbitMQ's certificate with (set cacertfile= in the AMQP URL)"
                        )
                    }
                    amqp_ssl_socket_set_verify_peer(socket, 1)
                    amqp_ssl_socket_set_verify_hostname(socket, 1)
                } else {
                    amqp_ssl_socket_set_verify_peer(socket, 0)
                    amqp_ssl_socket_set_verify_hostname(socket, 0)
                }
            }
        } else {
            socket = amqp_tcp_socket_new(state)
        }
        guard let socket else {
            throw MessagingError(.connectionFailed, "cannot create a socket for \(where_)")
        }
        var timeout = configuration.connectTimeout.timeval
        let opened = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &timeout)
        if opened != statusOK {
            if configuration.tls, configuration.verifyPeer {
                let ca = configuration.caCertificatePath ?? "the system's CAs (\(AMQPConfiguration.systemCABundle))"
                throw MessagingError(
                    .connectionFailed,
                    "cannot connect to RabbitMQ at \(where_) over TLS: its certificate must be valid for that host name and signed by a CA in \(ca) (set cacertfile= in the AMQP URL)",
                    replyText: errorString(opened))
            }
            throw MessagingError(
                .connectionFailed, "cannot connect to RabbitMQ at \(where_)", replyText: errorString(opened))
        }
        var handshake = configuration.connectTimeout.timeval
        _ = amqp_set_handshake_timeout(state, &handshake)
        let reply = herald_amqp_login_plain(
            state,
            configuration.virtualHost,
            0,
            Int32(configuration.frameMax),
            Int32(clamping: configuration.heartbeat.components.seconds),
            configuration.user,
            configuration.password
        )
        if reply.reply_type != AMQP_RESPONSE_NORMAL {
            let (code, text) = describe(reply)
            throw MessagingError(
                .connectionFailed,
                "RabbitMQ at \(where_) refused the login of '\(configuration.user)' to vhost '\(configuration.virtualHost)'",
                replyCode: code, replyText: text)
        }
        var rpc = configuration.rpcTimeout.timeval
        _ = amqp_set_rpc_timeout(state, &rpc)
        return connection
    }

    var socketDescriptor: Int32 { amqp_get_sockfd(state) }

    /// Whether complete frames or unread bytes are already in rabbitmq-c's buffers,
    /// in which case polling the socket would wait for nothing.
    var hasBufferedInput: Bool {
        amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0
    }

    var hasQueuedFrames: Bool { amqp_frames_enqueued(state) != 0 }

    /// Whether the socket is corked (`cork()`).
    private var corked = false

    /// Holds what is written next in the kernel, as one stream, until `uncork()`: the frames of
    /// one wake-up of the connection's thread (publishes of three frames each, acks) leave in as
    /// few TCP segments as fit, instead of a segment per publish and per ack, each of which costs
    /// a loopback or network send and the broker a read. Every RPC uncorks first (its request
    /// must go out before it waits for the answer). The kernel sends a full segment at once (64
    /// KiB on loopback, about 25 notifications; one notification or less on a network's 1,448
    /// bytes), so a long wake-up holds its first publish back by little, and what is corked
    /// after 200 ms or so (Linux's probe timer) in any case.
    func cork() {
        guard !corked, setCork(true) else { return }
        corked = true
    }

    /// Sends what `cork()` held back.
    func uncork() {
        guard corked else { return }
        corked = false
        _ = setCork(false)
    }

    /// Whether the kernel holds back what is written (TCP_CORK as the socket has it; for tests).
    var isCorked: Bool {
        var value: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(socketDescriptor, Int32(IPPROTO_TCP), TCP_CORK, &value, &size) == 0 && value != 0
    }

    private func setCork(_ on: Bool) -> Bool {
        var value: Int32 = on ? 1 : 0
        // Refused on a socket already closed (rabbitmq-c sets its number to -1): nothing is held then.
        return setsockopt(
            socketDescriptor, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size)) == 0
    }

    /// Sends `connection.close` and waits briefly for close-ok.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        uncork()
        _ = amqp_connection_close(state, Int32(AMQP_REPLY_SUCCESS))
    }

    // MARK: Channels

    func openChannel(_ channel: UInt16) throws {
        uncork()
        _ = amqp_channel_open(state, channel)
        try check(amqp_get_rpc_reply(state), channel: channel, "channel.open \(channel)")
    }

    func closeChannel(_ channel: UInt16) throws {
        uncork()
        let reply = amqp_channel_close(state, channel, Int32(AMQP_REPLY_SUCCESS))
        try check(reply, channel: channel, "channel.close \(channel)")
    }

    func qos(_ channel: UInt16, prefetch: UInt16) throws {
        uncork()
        _ = amqp_basic_qos(state, channel, 0, prefetch, 0)
        try check(amqp_get_rpc_reply(state), channel: channel, "basic.qos \(prefetch)")
    }

    func confirmSelect(_ channel: UInt16) throws {
        uncork()
        _ = amqp_confirm_select(state, channel)
        try check(amqp_get_rpc_reply(state), channel: channel, "confirm.select")
    }

    // MARK: Topology

    func declareExchange(_ channel: UInt16, name: String, options: AMQPExchangeOptions, passive: Bool) throws {
        uncork()
        try withBytes(name) { nameBytes in
            try withBytes(options.type) { typeBytes in
                try withTable(options.arguments) { arguments in
                    _ = amqp_exchange_declare(
                        state, channel, nameBytes, typeBytes,
                        passive ? 1 : 0, options.durable ? 1 : 0, options.autoDelete ? 1 : 0, options.internal ? 1 : 0,
                        arguments
                    )
                    try check(amqp_get_rpc_reply(state), channel: channel, "exchange.declare '\(name)'")
                }
            }
        }
    }

    func deleteExchange(_ channel: UInt16, name: String) throws {
        uncork()
        try withBytes(name) { nameBytes in
            _ = amqp_exchange_delete(state, channel, nameBytes, 0)
            try check(amqp_get_rpc_reply(state), channel: channel, "exchange.delete '\(name)'")
        }
    }

    func declareQueue(
        _ channel: UInt16, name: String, options: AMQPQueueOptions, passive: Bool
    ) throws -> AMQPQueueState {
        uncork()
        return try withBytes(name) { nameBytes in
            try withTable(options.arguments) { arguments in
                let ok = amqp_queue_declare(
                    state, channel, nameBytes,
                    passive ? 1 : 0, options.durable ? 1 : 0, options.exclusive ? 1 : 0, options.autoDelete ? 1 : 0,
                    arguments
                )
                try check(amqp_get_rpc_reply(state), channel: channel, "queue.declare '\(name)'")
                guard let ok else {
                    throw MessagingError(.protocolError, "queue.declare '\(name)' returned no queue.declare-ok")
                }
                return AMQPQueueState(
                    name: string(ok.pointee.queue),
                    messageCount: Int(ok.pointee.message_count),
                    consumerCount: Int(ok.pointee.consumer_count)
                )
            }
        }
    }

    func deleteQueue(_ channel: UInt16, name: String, ifEmpty: Bool = false) throws -> Int {
        uncork()
        return try withBytes(name) { nameBytes in
            let ok = amqp_queue_delete(state, channel, nameBytes, 0, ifEmpty ? 1 : 0)
            try check(amqp_get_rpc_reply(state), channel: channel, "queue.delete '\(name)'")
            return Int(ok?.pointee.message_count ?? 0)
        }
    }

    func purgeQueue(_ channel: UInt16, name: String) throws -> Int {
        uncork()
        return try withBytes(name) { nameBytes in
            let ok = amqp_queue_purge(state, channel, nameBytes)
            try check(amqp_get_rpc_reply(state), channel: channel, "queue.purge '\(name)'")
            return Int(ok?.pointee.message_count ?? 0)
        }
    }

    func bindQueue(_ channel: UInt16, queue: String, exchange: String, routingKey: String, arguments: AMQPTable) throws
    {
        uncork()
        try withBytes(queue) { queueBytes in
            try withBytes(exchange) { exchangeBytes in
                try withBytes(routingKey) { keyBytes in
                    try withTable(arguments) { table in
                        _ = amqp_queue_bind(state, channel, queueBytes, exchangeBytes, keyBytes, table)
                        try check(
                            amqp_get_rpc_reply(state), channel: channel,
                            "queue.bind '\(queue)' to '\(exchange)' with '\(routingKey)'")
                    }
                }
            }
        }
    }

    func unbindQueue(
        _ channel: UInt16, queue: String, exchange: String, routingKey: String, arguments: AMQPTable
    ) throws {
        uncork()
        try withBytes(queue) { queueBytes in
            try withBytes(exchange) { exchangeBytes in
                try withBytes(routingKey) { keyBytes in
                    try withTable(arguments) { table in
                        _ = amqp_queue_unbind(state, channel, queueBytes, exchangeBytes, keyBytes, table)
                        try check(
                            amqp_get_rpc_reply(state), channel: channel, "queue.unbind '\(queue)' from '\(exchange)'")
                    }
                }
            }
        }
    }

    // MARK: Consuming

    func consume(_ channel: UInt16, queue: String, consumerTag: String, exclusive: Bool, arguments: AMQPTable) throws {
        uncork()
        try withBytes(queue) { queueBytes in
            try withBytes(consumerTag) { tagBytes in
                try withTable(arguments) { table in
                    _ = amqp_basic_consume(state, channel, queueBytes, tagBytes, 0, 0, exclusive ? 1 : 0, table)
                    try check(amqp_get_rpc_reply(state), channel: channel, "basic.consume on '\(queue)'")
                }
            }
        }
    }

    func cancel(_ channel: UInt16, consumerTag: String) throws {
        uncork()
        try withBytes(consumerTag) { tagBytes in
            _ = amqp_basic_cancel(state, channel, tagBytes)
            try check(amqp_get_rpc_reply(state), channel: channel, "basic.cancel '\(consumerTag)'")
        }
    }

    func ack(_ channel: UInt16, tag: UInt64, multiple: Bool) throws {
        try checkStatus(amqp_basic_ack(state, channel, tag, multiple ? 1 : 0), "basic.ack")
    }

    func nack(_ channel: UInt16, tag: UInt64, multiple: Bool, requeue: Bool) throws {
        try checkStatus(amqp_basic_nack(state, channel, tag, multiple ? 1 : 0, requeue ? 1 : 0), "basic.nack")
    }

    func reject(_ channel: UInt16, tag: UInt64, requeue: Bool) throws {
        try checkStatus(amqp_basic_reject(state, channel, tag, requeue ? 1 : 0), "basic.reject")
    }

    // MARK: Publishing

    /// The header naming a mandatory publish's number on its channel, so that a `basic.return`
    /// is charged to its own publish: RabbitMQ may send another publish's confirm between a
    /// return and the returned one's.
    static let publishSequenceHeader = "x-herald-publish-sequence"

    func publish(_ channel: UInt16, _ message: AMQPOutgoingMessage, mandatory: Bool) throws {
        try withProperties(message.properties) { properties in
            try withBytes(message.exchange) { exchangeBytes in
                try withBytes(message.routingKey) { keyBytes in
                    try message.body.withUnsafeBytes { body in
                        let bodyBytes = amqp_bytes_t(
                            len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
                        let status = amqp_basic_publish(
                            state, channel, exchangeBytes, keyBytes, mandatory ? 1 : 0, 0, properties, bodyBytes)
                        try checkStatus(status, "basic.publish to '\(message.exchange)'")
                    }
                }
            }
        }
    }

    // MARK: Reading

    /// Reads the next event without waiting; `nil` when nothing complete has arrived.
    /// Sends heartbeats when they are due and notices missed ones.
    /// - Throws: `MessagingError.connectionLost` or `.connectionClosed`.
    func nextEvent() throws -> WireEvent? {
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        // Releasing walks every channel's pool against each frame rabbitmq-c holds queued (those
        // an RPC read for other channels while it waited for its reply), so with thousands queued
        // after an RPC under a flood of deliveries, a release before each event was quadratic: 65%
        // of a lone node's CPU (BENCHMARKS.md, "Three nodes against one under a CPU quota"). A queued
        // frame's channel keeps its memory until it is handled anyway: released once none is left.
        if !hasQueuedFrames { amqp_maybe_release_buffers(state) }
        var envelope = amqp_envelope_t()
        let reply = amqp_consume_message(state, &envelope, &zero, 0)
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            defer { amqp_destroy_envelope(&envelope) }
            return .delivery(
                AMQPDelivery(
                    body: body(envelope.message.body),
                    bodyLength: envelope.message.body.len,
                    exchange: string(envelope.exchange),
                    routingKey: string(envelope.routing_key),
                    redelivered: envelope.redelivered != 0,
                    deliveryTag: envelope.delivery_tag,
                    consumerTag: string(envelope.consumer_tag),
                    properties: decodeProperties(envelope.message.properties),
                    channelID: envelope.channel,
                    incarnation: 0
                ))
        case AMQP_RESPONSE_LIBRARY_EXCEPTION where reply.library_error == Int32(AMQP_STATUS_TIMEOUT.rawValue):
            return nil
        case AMQP_RESPONSE_LIBRARY_EXCEPTION where reply.library_error == Int32(AMQP_STATUS_UNEXPECTED_STATE.rawValue):
            var frame = amqp_frame_t()
            let status = amqp_simple_wait_frame_noblock(state, &frame, &zero)
            if status == Int32(AMQP_STATUS_TIMEOUT.rawValue) { return nil }
            try checkStatus(status, "reading a frame")
            return try methodEvent(frame)
        default:
            let (code, text) = describe(reply)
            throw MessagingError(
                .connectionLost, "reading from RabbitMQ at \(configuration.host):\(configuration.port) failed",
                replyCode: code, replyText: text)
        }
    }

    private func methodEvent(_ frame: amqp_frame_t) throws -> WireEvent? {
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { return nil }
        let method = frame.payload.method
        switch method.id {
        case AMQP_BASIC_ACK_METHOD:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            return .confirm(channel: frame.channel, tag: ack.delivery_tag, multiple: ack.multiple != 0, ack: true)
        case AMQP_BASIC_NACK_METHOD:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            return .confirm(channel: frame.channel, tag: nack.delivery_tag, multiple: nack.multiple != 0, ack: false)
        case AMQP_BASIC_RETURN_METHOD:
            let returned = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let (code, text) = (Int(returned.reply_code), string(returned.reply_text))
            let (exchange, routingKey) = (string(returned.exchange), string(returned.routing_key))
            // The returned message's header and body follow; read them off the wire, and its
            // publish number (a confirm that follows need not be its own).
            var message = amqp_message_t()
            let reply = amqp_read_message(state, frame.channel, &message, 0)
            var sequence: UInt64?
            if reply.reply_type == AMQP_RESPONSE_NORMAL {
                if case .int(let number)? = decodeProperties(message.properties).headers[Self.publishSequenceHeader],
                    number > 0
                {
                    sequence = UInt64(number)
                }
                amqp_destroy_message(&message)
            }
            return .returned(
                channel: frame.channel, replyCode: code, replyText: text, exchange: exchange, routingKey: routingKey,
                sequence: sequence)
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            sendChannelCloseOK(frame.channel)
            return .channelClosed(
                channel: frame.channel, replyCode: Int(close.reply_code), replyText: string(close.reply_text))
        case AMQP_CONNECTION_CLOSE_METHOD:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            sendConnectionCloseOK()
            throw MessagingError(
                .connectionClosed, "RabbitMQ closed the connection", replyCode: Int(close.reply_code),
                replyText: string(close.reply_text))
        case AMQP_BASIC_CANCEL_METHOD:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            return .consumerCancelled(channel: frame.channel, consumerTag: string(cancel.consumer_tag))
        case AMQP_CONNECTION_BLOCKED_METHOD:
            let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            return .blocked(reason: string(blocked.reason))
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            return .unblocked
        default:
            return nil
        }
    }

    private func sendChannelCloseOK(_ channel: UInt16) {
        var ok = amqp_channel_close_ok_t(dummy: 0)
        _ = amqp_send_method(state, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
    }

    private func sendConnectionCloseOK() {
        isClosed = true
        var ok = amqp_connection_close_ok_t(dummy: 0)
        _ = amqp_send_method(state, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
    }

    // MARK: Replies and errors

    /// Turns an RPC reply into success or a `MessagingError`; answers the
    /// broker's close with close-ok so the channel id can be opened again.
    private func check(_ reply: amqp_rpc_reply_t, channel: UInt16, _ what: String) throws {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            switch reply.reply.id {
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                sendChannelCloseOK(channel)
                throw MessagingError(
                    .channelClosed, "\(what) failed; RabbitMQ closed channel \(channel)",
                    replyCode: Int(close.reply_code), replyText: string(close.reply_text))
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                sendConnectionCloseOK()
                throw MessagingError(
                    .connectionClosed, "\(what) failed; RabbitMQ closed the connection",
                    replyCode: Int(close.reply_code), replyText: string(close.reply_text))
            default:
                throw MessagingError(
                    .protocolError, "\(what) failed with an unexpected method 0x\(String(reply.reply.id, radix: 16))")
            }
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw MessagingError(.connectionLost, "\(what) failed", replyText: Self.errorString(reply.library_error))
        default:
            throw MessagingError(.protocolError, "\(what) got no reply")
        }
    }

    private func checkStatus(_ status: Int32, _ what: String) throws {
        if status != Self.statusOK {
            throw MessagingError(.connectionLost, "\(what) failed", replyText: Self.errorString(status))
        }
    }

    private static let statusOK = Int32(AMQP_STATUS_OK.rawValue)

    private static func errorString(_ status: Int32) -> String {
        String(cString: amqp_error_string2(status))
    }

    private static func describe(_ reply: amqp_rpc_reply_t) -> (Int?, String) {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            return (Int(close.reply_code), stringOf(close.reply_text))
        case AMQP_RESPONSE_SERVER_EXCEPTION where reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD:
            let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            return (Int(close.reply_code), stringOf(close.reply_text))
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return (nil, errorString(reply.library_error))
        default:
            return (nil, "no reply")
        }
    }

    private func describe(_ reply: amqp_rpc_reply_t) -> (Int?, String) { Self.describe(reply) }
    private func errorString(_ status: Int32) -> String { Self.errorString(status) }
    private static func stringOf(_ bytes: amqp_bytes_t) -> String {
        guard bytes.len > 0, let base = bytes.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }

    // MARK: Conversions

    private func string(_ bytes: amqp_bytes_t) -> String { Self.stringOf(bytes) }

    private func bytes(_ value: amqp_bytes_t) -> [UInt8] {
        guard value.len > 0, let base = value.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: base, count: value.len))
    }

    /// A message body: with spare capacity, so that the notification scanner reads it in place;
    /// only its start when it is longer than `maxBodyBytes`.
    private func body(_ value: amqp_bytes_t) -> [UInt8] {
        guard value.len > 0, let base = value.bytes else { return [] }
        var kept = value.len
        if let most = configuration.maxBodyBytes, value.len > most {
            kept = max(0, min(most, AMQPConfiguration.partialBodyBytes))
        }
        return DocumentBytes.copy(UnsafeRawBufferPointer(start: base, count: kept))
    }

    private func withBytes<R>(_ text: String, _ body: (amqp_bytes_t) throws -> R) rethrows -> R {
        var utf8 = Array(text.utf8)
        return try utf8.withUnsafeMutableBytes { raw in
            try body(amqp_bytes_t(len: raw.count, bytes: raw.baseAddress))
        }
    }

    private func decodeProperties(_ properties: amqp_basic_properties_t) -> AMQPMessageProperties {
        let flags = properties._flags
        func has(_ flag: Int32) -> Bool { flags & amqp_flags_t(flag) != 0 }
        var result = AMQPMessageProperties()
        if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { result.contentType = string(properties.content_type) }
        if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { result.contentEncoding = string(properties.content_encoding) }
        if has(AMQP_BASIC_HEADERS_FLAG) { result.headers = decodeTable(properties.headers) }
        if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { result.persistent = properties.delivery_mode == 2 }
        if has(AMQP_BASIC_PRIORITY_FLAG) { result.priority = properties.priority }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { result.correlationID = string(properties.correlation_id) }
        if has(AMQP_BASIC_EXPIRATION_FLAG) { result.expiration = string(properties.expiration) }
        if has(AMQP_BASIC_MESSAGE_ID_FLAG) { result.messageID = string(properties.message_id) }
        if has(AMQP_BASIC_TIMESTAMP_FLAG) { result.timestamp = properties.timestamp }
        if has(AMQP_BASIC_TYPE_FLAG) { result.type = string(properties.type) }
        if has(AMQP_BASIC_APP_ID_FLAG) { result.appID = string(properties.app_id) }
        return result
    }

    private func decodeTable(_ table: amqp_table_t) -> AMQPTable {
        var result: AMQPTable = [:]
        guard table.num_entries > 0, let entries = table.entries else { return result }
        for index in 0..<Int(table.num_entries) {
            let entry = entries[index]
            result[string(entry.key)] = decodeValue(entry.value)
        }
        return result
    }

    private func decodeValue(_ value: amqp_field_value_t) -> AMQPFieldValue {
        switch UInt32(value.kind) {
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return .bool(value.value.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: return .int(Int64(value.value.i8))
        case AMQP_FIELD_KIND_U8.rawValue: return .int(Int64(value.value.u8))
        case AMQP_FIELD_KIND_I16.rawValue: return .int(Int64(value.value.i16))
        case AMQP_FIELD_KIND_U16.rawValue: return .int(Int64(value.value.u16))
        case AMQP_FIELD_KIND_I32.rawValue: return .int(Int64(value.value.i32))
        case AMQP_FIELD_KIND_U32.rawValue: return .int(Int64(value.value.u32))
        case AMQP_FIELD_KIND_I64.rawValue: return .int(value.value.i64)
        case AMQP_FIELD_KIND_U64.rawValue, AMQP_FIELD_KIND_TIMESTAMP.rawValue:
            return .int(Int64(truncatingIfNeeded: value.value.u64))
        case AMQP_FIELD_KIND_F32.rawValue: return .double(Double(value.value.f32))
        case AMQP_FIELD_KIND_F64.rawValue: return .double(value.value.f64)
        case AMQP_FIELD_KIND_UTF8.rawValue: return .string(string(value.value.bytes))
        case AMQP_FIELD_KIND_BYTES.rawValue: return .bytes(bytes(value.value.bytes))
        case AMQP_FIELD_KIND_TABLE.rawValue: return .table(decodeTable(value.value.table))
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            let array = value.value.array
            guard array.num_entries > 0, let entries = array.entries else { return .array([]) }
            return .array((0..<Int(array.num_entries)).map { decodeValue(entries[$0]) })
        default: return .void
        }
    }

    /// Builds a C `amqp_table_t` whose memory lives for the duration of `body`.
    private func withTable<R>(_ table: AMQPTable, _ body: (amqp_table_t) throws -> R) rethrows -> R {
        let arena = CArena()
        return try body(arena.table(table))
    }

    private func withProperties<R>(
        _ properties: AMQPMessageProperties, _ body: (UnsafePointer<amqp_basic_properties_t>) throws -> R
    ) rethrows -> R {
        let arena = CArena()
        var flags: Int32 = 0
        var value = amqp_basic_properties_t()
        if let contentType = properties.contentType {
            flags |= AMQP_BASIC_CONTENT_TYPE_FLAG
            value.content_type = arena.bytes(contentType)
        }
        if let contentEncoding = properties.contentEncoding {
            flags |= AMQP_BASIC_CONTENT_ENCODING_FLAG
            value.content_encoding = arena.bytes(contentEncoding)
        }
        if !properties.headers.isEmpty {
            flags |= AMQP_BASIC_HEADERS_FLAG
            value.headers = arena.table(properties.headers)
        }
        flags |= AMQP_BASIC_DELIVERY_MODE_FLAG
        value.delivery_mode = properties.persistent ? 2 : 1
        if let priority = properties.priority {
            flags |= AMQP_BASIC_PRIORITY_FLAG
            value.priority = priority
        }
        if let correlationID = properties.correlationID {
            flags |= AMQP_BASIC_CORRELATION_ID_FLAG
            value.correlation_id = arena.bytes(correlationID)
        }
        if let expiration = properties.expiration {
            flags |= AMQP_BASIC_EXPIRATION_FLAG
            value.expiration = arena.bytes(expiration)
        }
        if let messageID = properties.messageID {
            flags |= AMQP_BASIC_MESSAGE_ID_FLAG
            value.message_id = arena.bytes(messageID)
        }
        if let timestamp = properties.timestamp {
            flags |= AMQP_BASIC_TIMESTAMP_FLAG
            value.timestamp = timestamp
        }
        if let type = properties.type {
            flags |= AMQP_BASIC_TYPE_FLAG
            value.type = arena.bytes(type)
        }
        if let appID = properties.appID {
            flags |= AMQP_BASIC_APP_ID_FLAG
            value.app_id = arena.bytes(appID)
        }
        value._flags = amqp_flags_t(flags)
        return try withUnsafePointer(to: &value) { try body($0) }
    }
}

/// Memory for C tables and strings handed to rabbitmq-c for one call; freed with the arena.
private final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit {
        for pointer in allocations { free(pointer) }
    }

    func bytes(_ text: String) -> amqp_bytes_t {
        bytes(Array(text.utf8))
    }

    func bytes(_ data: [UInt8]) -> amqp_bytes_t {
        guard let pointer = malloc(max(data.count, 1)) else { return amqp_empty_bytes }
        allocations.append(pointer)
        data.withUnsafeBytes { raw in
            if let base = raw.baseAddress { memcpy(pointer, base, data.count) }
        }
        return amqp_bytes_t(len: data.count, bytes: pointer)
    }

    func table(_ table: AMQPTable) -> amqp_table_t {
        guard !table.isEmpty else { return amqp_empty_table }
        let count = table.count
        guard let raw = malloc(MemoryLayout<amqp_table_entry_t>.stride * count) else { return amqp_empty_table }
        allocations.append(raw)
        let entries = raw.bindMemory(to: amqp_table_entry_t.self, capacity: count)
        for (index, (key, value)) in table.sorted(by: { $0.key < $1.key }).enumerated() {
            entries[index] = amqp_table_entry_t(key: bytes(key), value: field(value))
        }
        return amqp_table_t(num_entries: Int32(count), entries: entries)
    }

    private func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        switch value {
        case .bool(let flag):
            field.kind = UInt8(AMQP_FIELD_KIND_BOOLEAN.rawValue)
            field.value.boolean = flag ? 1 : 0
        case .int(let number):
            field.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
            field.value.i64 = number
        case .double(let number):
            field.kind = UInt8(AMQP_FIELD_KIND_F64.rawValue)
            field.value.f64 = number
        case .string(let text):
            field.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
            field.value.bytes = bytes(text)
        case .bytes(let data):
            field.kind = UInt8(AMQP_FIELD_KIND_BYTES.rawValue)
            field.value.bytes = bytes(data)
        case .table(let nested):
            field.kind = UInt8(AMQP_FIELD_KIND_TABLE.rawValue)
            field.value.table = table(nested)
        case .array(let items):
            field.kind = UInt8(AMQP_FIELD_KIND_ARRAY.rawValue)
            if items.isEmpty {
                field.value.array = amqp_array_t(num_entries: 0, entries: nil)
            } else if let raw = malloc(MemoryLayout<amqp_field_value_t>.stride * items.count) {
                allocations.append(raw)
                let entries = raw.bindMemory(to: amqp_field_value_t.self, capacity: items.count)
                for (index, item) in items.enumerated() { entries[index] = self.field(item) }
                field.value.array = amqp_array_t(num_entries: Int32(items.count), entries: entries)
            }
        case .void:
            field.kind = UInt8(AMQP_FIELD_KIND_VOID.rawValue)
        }
        return field
    }
}
