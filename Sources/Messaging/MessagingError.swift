/// The one error type of the Messaging module.
///
/// For a channel or connection the broker closed, `replyCode` and `replyText`
/// carry what RabbitMQ said (`406`, `PRECONDITION_FAILED - inequivalent arg ...`).
public struct MessagingError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// An `amqp://` URL or another setting could not be understood.
        case invalidConfiguration
        /// The socket could not be opened or the login was refused.
        case connectionFailed
        /// The connection broke (socket error, missed heartbeats); the client reconnects by itself.
        case connectionLost
        /// The broker closed the connection (`connection.close`, e.g. 320 CONNECTION_FORCED).
        case connectionClosed
        /// The broker closed the channel (`channel.close`, e.g. 406 PRECONDITION_FAILED, 404 NOT_FOUND);
        /// the client re-opens the channel.
        case channelClosed
        /// The operation needs a connection and there is none right now (reconnecting).
        case notConnected
        /// The broker refused a published message (`basic.nack`).
        case publishNacked
        /// A reply did not have the shape the protocol promises.
        case protocolError
        /// The connection, channel or consumer was closed by this process.
        case closed
    }

    public var code: Code
    public var message: String
    public var replyCode: Int?
    public var replyText: String?

    public init(_ code: Code, _ message: String, replyCode: Int? = nil, replyText: String? = nil) {
        self.code = code
        self.message = message
        self.replyCode = replyCode
        self.replyText = replyText
    }

    public var description: String {
        var text = "\(code.rawValue): \(message)"
        if let replyCode, let replyText {
            text += " (\(replyCode) \(replyText))"
        } else if let replyText {
            text += " (\(replyText))"
        }
        return text
    }
}
