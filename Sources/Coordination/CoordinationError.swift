/// The one error type of the Coordination module.
///
/// `code` says what kind of failure it is (so callers can decide whether to
/// retry), `message` says what happened in words a user can act on, and
/// `underlying` keeps the server's or the system's own text where there is one.
public struct CoordinationError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A `redis://` URL or another setting could not be understood.
        case invalidConfiguration
        /// The TCP or unix-socket connection could not be made.
        case connectionFailed
        /// The connection broke during a command; the command may or may not have run.
        case connectionLost
        /// The client is waiting out its reconnect backoff; retry later.
        case reconnecting
        /// Redis answered with an error reply (`-ERR ...`, `-NOSCRIPT ...`, `-WRONGPASS ...`).
        case serverError
        /// A reply did not have the shape the caller expected.
        case unexpectedReply
        /// The client was closed.
        case closed
    }

    public var code: Code
    public var message: String
    public var underlying: String?

    public init(_ code: Code, _ message: String, underlying: String? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        if let underlying {
            return "\(code.rawValue): \(message): \(underlying)"
        }
        return "\(code.rawValue): \(message)"
    }
}
