import Foundation

/// Where and how to reach RabbitMQ.
///
/// Built from `amqp://user:password@host:port/vhost` (or `amqps://` for TLS).
/// The vhost is the URL path, percent-decoded: `/` is written `%2F`, and an
/// empty path means `/`. Several hosts, comma-separated as oslo.messaging's
/// `transport_url` has them (`amqp://u:p@h1:5672,u:p@h2:5672,u:p@h3:5672/vhost`), are the
/// nodes of one cluster: the connection uses one, and moves to the next when it is lost or
/// cannot be reached.
public struct AMQPConfiguration: Sendable, Equatable {
    /// One node of the cluster, with the credentials its part of the URL gave.
    public struct Endpoint: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var user: String
        public var password: String

        public init(host: String, port: Int, user: String, password: String) {
            self.host = host
            self.port = port
            self.user = user
            self.password = password
        }
    }

    /// Every node, the first being the one `host`, `port`, `user` and `password` name.
    public var endpoints: [Endpoint] {
        get { [Endpoint(host: host, port: port, user: user, password: password)] + alternates }
        set {
            guard let first = newValue.first else { return }
            host = first.host
            port = first.port
            user = first.user
            password = first.password
            alternates = Array(newValue.dropFirst())
        }
    }

    /// The nodes after the first.
    public var alternates: [Endpoint] = []

    /// This configuration aimed at `endpoints[index % endpoints.count]`, with the others after it.
    public func aimed(at index: Int) -> AMQPConfiguration {
        var aimed = self
        let all = endpoints
        let start = index % all.count
        aimed.endpoints = Array(all[start...] + all[..<start])
        return aimed
    }

    /// At most this many hosts in one URL.
    public static let maxHosts = 16

    public var host: String
    public var port: Int
    public var virtualHost: String
    public var user: String
    public var password: String
    /// TLS via rabbitmq-c's OpenSSL socket.
    public var tls: Bool
    /// CA bundle used to verify the broker (`cacertfile=` in the URL); nil: the system's CAs
    /// (`systemCABundle`).
    public var caCertificatePath: String?
    /// Whether the broker's certificate and host name are checked (`verify=false` in the URL
    /// turns it off, for development only: the connection logs a warning).
    public var verifyPeer = true
    /// Debian's bundle of the system's CAs (the `ca-certificates` package).
    public static let systemCABundle = "/etc/ssl/certs/ca-certificates.crt"
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
    /// Largest frame to negotiate. Default 32768: rabbitmq-c decodes each channel's frames into a
    /// memory pool of pages of this size and keeps a page per channel that has received one (a
    /// node has a channel per partition it owns: at RabbitMQ's 131072, 47 channels held 6.2 MB).
    /// A notification is 1 to 3 KB; a larger body comes in several frames.
    public var frameMax: Int
    /// Bodies longer than this are kept in part: the delivery carries their first
    /// `partialBodyBytes` (or `maxBodyBytes`, when smaller) and their whole length
    /// (`AMQPDelivery.bodyLength`, `isPartial`). A consumer's unacked deliveries then hold at most
    /// prefetch x that prefix of oversized messages, instead of prefetch x the broker's largest
    /// message (128 MiB by default on RabbitMQ 3, 16 MiB on 4). nil: bodies kept whole.
    public var maxBodyBytes: Int?
    /// What is kept of a body longer than `maxBodyBytes`, at most.
    public static let partialBodyBytes = 64 << 10

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
        frameMax: Int = 32_768
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

    /// Parses an `amqp://` or `amqps://` URL, with one host or several (comma-separated, each
    /// `[user[:password]@]host[:port]`; the path and options after the last one apply to all).
    /// - Throws: `MessagingError.invalidConfiguration` naming the bad part.
    public init(url: String) throws {
        guard let schemeEnd = url.range(of: "://") else {
            throw MessagingError(
                .invalidConfiguration,
                "AMQP URL '\(Self.hidingPasswords(url))' is not a URL; expected amqp://user:password@host:port/vhost")
        }
        let afterScheme = url[schemeEnd.upperBound...]
        let authorityEnd = afterScheme.firstIndex { $0 == "/" || $0 == "?" } ?? afterScheme.endIndex
        let hosts = afterScheme[..<authorityEnd].split(separator: ",", omittingEmptySubsequences: false)
        guard hosts.count <= Self.maxHosts else {
            throw MessagingError(.invalidConfiguration, "AMQP URL names \(hosts.count) hosts; at most \(Self.maxHosts)")
        }
        if hosts.count > 1 {
            let prefix = url[..<schemeEnd.upperBound]
            let rest = afterScheme[authorityEnd...]
            var parsed: [AMQPConfiguration] = []
            for (index, host) in hosts.enumerated() {
                guard !host.isEmpty else {
                    throw MessagingError(
                        .invalidConfiguration,
                        "AMQP URL '\(Self.hidingPasswords(url))': host \(index + 1) of \(hosts.count) is empty")
                }
                parsed.append(try AMQPConfiguration(single: String(prefix + host + rest)))
            }
            self = parsed[0]
            alternates = parsed.dropFirst().map { $0.endpoints[0] }
            return
        }
        try self.init(single: url)
    }

    /// One host's URL.
    private init(single url: String) throws {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw MessagingError(
                .invalidConfiguration,
                "AMQP URL '\(Self.hidingPasswords(url))' is not a URL; expected amqp://user:password@host:port/vhost")
        }
        guard scheme == "amqp" || scheme == "amqps" else {
            throw MessagingError(
                .invalidConfiguration,
                "AMQP URL '\(Self.hidingPasswords(url))': scheme '\(scheme)' is not amqp:// or amqps://")
        }
        guard let host = components.host, !host.isEmpty else {
            throw MessagingError(.invalidConfiguration, "AMQP URL '\(Self.hidingPasswords(url))' has no host")
        }
        let tls = scheme == "amqps"
        let port = components.port ?? (tls ? 5671 : 5672)
        guard (1...65535).contains(port) else {
            throw MessagingError(
                .invalidConfiguration, "AMQP URL '\(Self.hidingPasswords(url))': port \(port) is out of range")
        }
        var vhost = "/"
        let rawPath = components.percentEncodedPath
        if rawPath.count > 1 {
            guard let decoded = String(rawPath.dropFirst()).removingPercentEncoding else {
                throw MessagingError(
                    .invalidConfiguration,
                    "AMQP URL '\(Self.hidingPasswords(url))': vhost '\(rawPath)' is not valid percent-encoding")
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
                // AMQP carries the heartbeat in a short: 0 (none) to 65,535 s.
                guard let seconds = item.value.flatMap(Int.init), (0...65_535).contains(seconds) else {
                    throw MessagingError(
                        .invalidConfiguration,
                        "AMQP URL '\(Self.hidingPasswords(url))': heartbeat '\(item.value ?? "")' is not a number of seconds from 0 to 65535"
                    )
                }
                heartbeat = .seconds(seconds)
            case "connection_timeout":
                guard let millis = item.value.flatMap(Int.init), (1...3_600_000).contains(millis) else {
                    throw MessagingError(
                        .invalidConfiguration,
                        "AMQP URL '\(Self.hidingPasswords(url))': connection_timeout '\(item.value ?? "")' is not a number of milliseconds from 1 to 3600000"
                    )
                }
                connectTimeout = .milliseconds(millis)
            case "cacertfile":
                guard let path = item.value, !path.isEmpty else {
                    throw MessagingError(
                        .invalidConfiguration, "AMQP URL '\(Self.hidingPasswords(url))': cacertfile needs a path")
                }
                caCertificatePath = path
            case "verify":
                switch item.value?.lowercased() {
                case "true", "1", "yes": verifyPeer = true
                case "false", "0", "no": verifyPeer = false
                default:
                    throw MessagingError(
                        .invalidConfiguration,
                        "AMQP URL '\(Self.hidingPasswords(url))': verify '\(item.value ?? "")' is not true or false")
                }
            default:
                throw MessagingError(
                    .invalidConfiguration,
                    "AMQP URL '\(Self.hidingPasswords(url))': unknown option '\(item.name)' (known: heartbeat, connection_timeout, cacertfile, verify)"
                )
            }
        }
    }

    /// `url` with every password replaced by `***`, for messages.
    static func hidingPasswords(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://") else { return url }
        let afterScheme = url[schemeEnd.upperBound...]
        let authorityEnd = afterScheme.firstIndex { $0 == "/" || $0 == "?" } ?? afterScheme.endIndex
        let hosts = afterScheme[..<authorityEnd].split(separator: ",", omittingEmptySubsequences: false).map {
            host -> String in
            guard let at = host.lastIndex(of: "@") else { return String(host) }
            let credentials = host[..<at]
            guard let colon = credentials.firstIndex(of: ":") else { return String(host) }
            return String(credentials[..<colon]) + ":***" + String(host[at...])
        }
        return String(url[..<schemeEnd.upperBound]) + hosts.joined(separator: ",")
            + String(afterScheme[authorityEnd...])
    }

    /// The URL without its password, for logs.
    public var redactedDescription: String {
        let vhost = virtualHost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? virtualHost
        return "\(tls ? "amqps" : "amqp")://"
            + endpoints.map { "\($0.user)@\($0.host):\($0.port)" }.joined(separator: ",") + "/\(vhost)"
    }
}
