/// A value in an AMQP field table (queue arguments, message headers).
public enum AMQPFieldValue: Sendable, Equatable, CustomStringConvertible {
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case bytes([UInt8])
    case table(AMQPTable)
    case array([AMQPFieldValue])
    case void

    public var string: String? {
        switch self {
        case .string(let text): return text
        case .bytes(let bytes): return String(decoding: bytes, as: UTF8.self)
        default: return nil
        }
    }

    public var int: Int64? {
        if case .int(let value) = self { return value }
        return nil
    }

    public var description: String {
        switch self {
        case .bool(let value): return "\(value)"
        case .int(let value): return "\(value)"
        case .double(let value): return "\(value)"
        case .string(let value): return value
        case .bytes(let value): return "<\(value.count) bytes>"
        case .table(let value): return "\(value)"
        case .array(let value): return "\(value)"
        case .void: return "void"
        }
    }
}

public typealias AMQPTable = [String: AMQPFieldValue]

/// The `basic` properties of a message that Herald uses.
public struct AMQPMessageProperties: Sendable, Equatable {
    public var contentType: String?
    public var contentEncoding: String?
    public var headers: AMQPTable
    /// `true` for delivery mode 2 (written to disk by durable queues).
    public var persistent: Bool
    public var messageID: String?
    public var correlationID: String?
    public var timestamp: UInt64?
    public var type: String?
    public var appID: String?
    public var expiration: String?
    public var priority: UInt8?

    public init(
        contentType: String? = nil,
        contentEncoding: String? = nil,
        headers: AMQPTable = [:],
        persistent: Bool = false,
        messageID: String? = nil,
        correlationID: String? = nil,
        timestamp: UInt64? = nil,
        type: String? = nil,
        appID: String? = nil,
        expiration: String? = nil,
        priority: UInt8? = nil
    ) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.persistent = persistent
        self.messageID = messageID
        self.correlationID = correlationID
        self.timestamp = timestamp
        self.type = type
        self.appID = appID
        self.expiration = expiration
        self.priority = priority
    }
}

/// A message to publish.
public struct AMQPOutgoingMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    public var body: [UInt8]
    public var properties: AMQPMessageProperties

    public init(
        exchange: String, routingKey: String, body: [UInt8], properties: AMQPMessageProperties = AMQPMessageProperties()
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
    }
}

/// A message received by a consumer. Ack, nack or reject it through the channel
/// that consumed it.
public struct AMQPDelivery: Sendable {
    /// The body, or its first `AMQPConfiguration.partialBodyBytes` when it was longer than the
    /// connection's `maxBodyBytes` (`isPartial`).
    public var body: [UInt8]
    /// The body's whole length, as the broker sent it.
    public var bodyLength: Int
    /// Whether `body` is only the start of a body longer than the connection keeps.
    public var isPartial: Bool { bodyLength > body.count }
    public var exchange: String
    public var routingKey: String
    public var redelivered: Bool
    public var deliveryTag: UInt64
    public var consumerTag: String
    public var properties: AMQPMessageProperties
    /// The channel it came on and that channel's incarnation: an ack for a
    /// delivery of an earlier incarnation (before a reconnect) is meaningless
    /// to the broker and is skipped; the broker redelivers such messages.
    let channelID: UInt16
    let incarnation: UInt64

    /// Grows with every delivery of one consumer, across reconnects: the channel's incarnation
    /// (which grows with each open of a channel of the connection) above the delivery tag (which
    /// grows within one), the tag's lowest 40 bits. (After 2^24 channel opens on one connection
    /// the incarnation's high bits are lost: then it grows within one incarnation only.)
    public var arrivalOrder: UInt64 { (incarnation &<< 40) | (deliveryTag & ((1 &<< 40) - 1)) }
}

/// What a channel received and has not acked (`AMQPChannel.deliveryCounts(of:)`).
public struct AMQPDeliveryCounts: Sendable, Equatable {
    /// The channel's incarnation: counts restart when it is reopened (after a reconnect).
    public var incarnation: UInt64
    /// The highest delivery tag received on this incarnation.
    public var received: UInt64
    /// How many of those the broker holds no ack (or nack, reject) for.
    public var unacked: UInt64
    /// Whether the consumer asked about still consumes on the open channel.
    public var consuming: Bool
}

/// What `queue.declare` answers.
public struct AMQPQueueState: Sendable, Equatable {
    public var name: String
    public var messageCount: Int
    public var consumerCount: Int
}

/// Options of `queue.declare`.
public struct AMQPQueueOptions: Sendable, Equatable {
    public var durable: Bool
    public var exclusive: Bool
    public var autoDelete: Bool
    public var arguments: AMQPTable

    public init(durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false, arguments: AMQPTable = [:]) {
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments
    }
}

/// Options of `exchange.declare`.
public struct AMQPExchangeOptions: Sendable, Equatable {
    public var type: String
    public var durable: Bool
    public var autoDelete: Bool
    public var `internal`: Bool
    public var arguments: AMQPTable

    public init(
        type: String = "topic", durable: Bool = false, autoDelete: Bool = false, internal: Bool = false,
        arguments: AMQPTable = [:]
    ) {
        self.type = type
        self.durable = durable
        self.autoDelete = autoDelete
        self.internal = `internal`
        self.arguments = arguments
    }
}
