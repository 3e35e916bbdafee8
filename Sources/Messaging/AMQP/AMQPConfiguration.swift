import Foundation

/// Where and how to reach RabbitMQ.
///
/// Built from `amqp://user:password@host:port/vhost` (or `amqps://` for TLS).
/// The vhost is the URL path, percent-decoded: `/` is written `%2F`, and an
/// empty path means `/`.
public struct AMQPConfiguration: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var virtualHost: String
    public var user: String
    public var password: String
    /// TLS via rabbitmq-c's OpenSSL socket.
    public var tls: Bool
    /// CA bundle used to verify the broker; `nil` means do not verify (development only).
    public var caCertificatePath: String?
    /// AMQP heartbeat interval negotiated with the broker. Default 10 s.
    public var heartbeat: Duration
    /// How long opening the socket and logging in may take. Default 5 s.
    public var connectTimeout: Duration
    /// How long a synchronous method (declare, qos, consume) may wait for its reply. Default 30 s.
    public var rpcTimeout: Duration
    /// First wait before reconnecting; doubles up to `reconnectMaxDelay`. Default 100 ms.
    public var reconnectBaseDelay: Duration
    /// Longest wait between reconnect attempts. Default 5 s.
    public var reconnectMaxDelay: Duration
    /// Largest frame to negotiate. Default 131072 (RabbitMQ's default).
    public var frameMax: Int

    public init(
        host: String = "127.0.0.1",
        port: Int = 5672,
        virtualHost: String = "/",
        user: String = "guest",
        password: String = "guest",
        tls: Bool = false,
        caCertificatePath: String? = nil,
        heartbeat: Duration = .seconds(10),
        connectTimeout: Duration = .seconds(5),
        rpcTimeout: Duration = .seconds(30),
        reconnectBaseDelay: Duration = .milliseconds(100),
        reconnectMaxDelay: Duration = .seconds(5),
        frameMax: Int = 131_072
    ) {
        self.host = host
        self.port = port
        self.virtualHost = virtualHost
        self.user = user
        self.password = password
        self.tls = tls
        self.caCertificatePath = caCertificatePath
        self.heartbeat = heartbeat
        self.connectTimeout = connectTimeout
        self.rpcTimeout = rpcTimeout
        self.reconnectBaseDelay = reconnectBaseDelay
        self.reconnectMaxDelay = reconnectMaxDelay
        self.frameMax = frameMax
    }

    /// Parses an `amqp://` or `amqps://` URL.
    /// - Throws: `MessagingError.invalidConfiguration` naming the bad part.
    public init(url: String) throws {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)' is not a URL; expected amqp://user:password@host:port/vhost")
        }
        guard scheme == "amqp" || scheme == "amqps" else {
            throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)': scheme '\(scheme)' is not amqp:// or amqps://")
        }
        guard let host = components.host, !host.isEmpty else {
            throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)' has no host")
        }
        let tls = scheme == "amqps"
        let port = components.port ?? (tls ? 5671 : 5672)
        guard (1...65535).contains(port) else {
            throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)': port \(port) is out of range")
        }
        var vhost = "/"
        let rawPath = components.percentEncodedPath
        if rawPath.count > 1 {
            guard let decoded = String(rawPath.dropFirst()).removingPercentEncoding else {
                throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)': vhost '\(rawPath)' is not valid percent-encoding")
            }
            vhost = decoded
        }
        self.init(
            host: host,
            port: port,
            virtualHost: vhost,
            user: components.user?.removingPercentEncoding ?? "guest",
            password: components.password?.removingPercentEncoding ?? "guest",
            tls: tls
        )
        for item in components.queryItems ?? [] {
            switch item.name {
            case "heartbeat":
                guard let seconds = item.value.flatMap(Int.init), seconds >= 0 else {
                    throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)': heartbeat '\(item.value ?? "")' is not a number of seconds")
                }
                heartbeat = .seconds(seconds)
            case "connection_timeout":
                guard let millis = item.value.flatMap(Int.init), millis > 0 else {
                    throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)': connection_timeout '\(item.value ?? "")' is not a number of milliseconds")
                }
                connectTimeout = .milliseconds(millis)
            case "cacertfile":
                caCertificatePath = item.value
            default:
                throw MessagingError(.invalidConfiguration, "AMQP URL '\(url)': unknown option '\(item.name)' (known: heartbeat, connection_timeout, cacertfile)")
            }
        }
    }

    /// The URL without its password, for logs.
    public var redactedDescription: String {
        let vhost = virtualHost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? virtualHost
        return "\(tls ? "amqps" : "amqp")://\(user)@\(host):\(port)/\(vhost)"
    }
}
