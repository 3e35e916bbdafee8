import Foundation
import HeraldModel

/// Where and how to reach Redis.
///
/// Built from a URL:
/// - `redis://[[user]:password@]host[:port][/db]`: TCP; `db` selects the database.
/// - `unix:///path/to/redis.sock[?db=N&user=U&password=P]`: a unix socket.
public struct RedisConfiguration: Sendable, Equatable {
    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)

        public var description: String {
            switch self {
            case .tcp(let host, let port): return "\(host):\(port)"
            case .unix(let path): return "unix:\(path)"
            }
        }
    }

    public var endpoint: Endpoint
    /// ACL user name; `nil` with a password means the legacy `AUTH password`.
    public var user: String?
    public var password: String?
    /// Database selected with `SELECT` after connecting. Default 0.
    public var database: Int
    /// How long a connect may take. Default 2 s.
    public var connectTimeout: Duration
    /// How long one command (or pipeline) may wait for its reply. Default 5 s.
    public var commandTimeout: Duration
    /// First wait before reconnecting after a failure; doubles up to `reconnectMaxDelay`. Default 50 ms.
    public var reconnectBaseDelay: Duration
    /// Longest wait between reconnect attempts. Default 2 s.
    public var reconnectMaxDelay: Duration
    /// Name set with `CLIENT SETNAME` on every (re)connect, if any.
    public var clientName: String?

    public init(
        endpoint: Endpoint,
        user: String? = nil,
        password: String? = nil,
        database: Int = 0,
        connectTimeout: Duration = .seconds(2),
        commandTimeout: Duration = .seconds(5),
        reconnectBaseDelay: Duration = .milliseconds(50),
        reconnectMaxDelay: Duration = .seconds(2),
        clientName: String? = nil
    ) {
        self.endpoint = endpoint
        self.user = user
        self.password = password
        self.database = database
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reconnectBaseDelay = reconnectBaseDelay
        self.reconnectMaxDelay = reconnectMaxDelay
        self.clientName = clientName
    }

    /// Parses a `redis://` or `unix://` URL.
    /// - Throws: `CoordinationError` with code `.invalidConfiguration` naming the bad part.
    public init(url: String) throws {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)' is not a URL; expected redis://host:port/db or unix:///path")
        }
        let query = Dictionary(
            (components.queryItems ?? []).map { ($0.name, $0.value ?? "") },
            uniquingKeysWith: { _, last in last }
        )
        var database = 0
        if let db = query["db"] {
            guard let value = Int(db), value >= 0 else {
                throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)': db '\(db)' is not a database number")
            }
            database = value
        }
        var user = components.user?.removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 }
        var password = components.password?.removingPercentEncoding
        if let queryUser = query["user"] { user = queryUser }
        if let queryPassword = query["password"] { password = queryPassword }

        switch scheme {
        case "redis":
            guard let host = components.host, !host.isEmpty else {
                throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)' has no host")
            }
            let port = components.port ?? 6379
            guard (1...65535).contains(port) else {
                throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)': port \(port) is out of range")
            }
            let path = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
            if !path.isEmpty {
                guard let value = Int(path), value >= 0 else {
                    throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)': path '/\(path)' is not a database number")
                }
                database = value
            }
            self.init(endpoint: .tcp(host: host, port: port), user: user, password: password, database: database)
        case "unix":
            guard !components.path.isEmpty else {
                throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)' has no socket path")
            }
            self.init(endpoint: .unix(path: components.path), user: user, password: password, database: database)
        case "rediss":
            throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)': TLS (rediss://) is not supported by the hiredis build Herald uses; use a TLS proxy or a unix socket")
        default:
            throw CoordinationError(.invalidConfiguration, "Redis URL '\(url)': scheme '\(scheme)' is not redis:// or unix://")
        }
    }

    /// The URL without its password, for logs.
    public var redactedDescription: String {
        let auth = user.map { "\($0)@" } ?? (password != nil ? "***@" : "")
        switch endpoint {
        case .tcp(let host, let port): return "redis://\(auth)\(host):\(port)/\(database)"
        case .unix(let path): return "unix://\(path)?db=\(database)"
        }
    }
}
