import Foundation
import HeraldModel

/// Where and how to reach Redis.
///
/// Built from a URL:
/// - `redis://[[user]:password@]host[:port][/db]`: TCP; `db` selects the database.
/// - `rediss://[[user]:password@]host[:port][/db][?cacertfile=...&certfile=...&keyfile=...]`: TCP with TLS;
///   the server's certificate is checked against the system's CAs (or `cacertfile`) and the host name.
/// - `unix:///path/to/redis.sock[?db=N&user=U&password=P]`: a unix socket.
public struct RedisConfiguration: Sendable, Equatable {
    /// TLS settings (`rediss://`). The server's certificate is always checked: there is no
    /// switch to turn that off.
    public struct TLS: Sendable, Equatable {
        /// PEM file of the CAs to trust instead of the system's (`cacertfile=`).
        public var caFile: String?
        /// Client certificate chain and key, for servers that ask for one (`certfile=`, `keyfile=`).
        public var certificateFile: String?
        public var keyFile: String?

        public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
        }
    }

    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)
        /// The master the sentinels name `master`, asked of the first sentinel that answers.
        case sentinel(master: String, sentinels: [Sentinel])

        public var description: String {
            switch self {
            case .tcp(let host, let port): return "\(host):\(port)"
            case .unix(let path): return "unix:\(path)"
            case .sentinel(let master, let sentinels):
                return "sentinel:\(master)@" + sentinels.map { "\($0.host):\($0.port)" }.joined(separator: ",")
            }
        }
    }

    /// One Redis Sentinel.
    public struct Sentinel: Sendable, Equatable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// With `.sentinel`: the sentinels' own password (`sentinel_password=` in the URL), if they have one.
    public var sentinelPassword: String?
    /// With `.sentinel`: how often a connection asks the sentinels whether its master is
    /// still the master, and moves when it is not (a failover can leave the old master
    /// taking writes for seconds before it is demoted). Default 1 s.
    public var sentinelCheckInterval: Duration = .seconds(1)

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
    /// TLS on the TCP connection (`rediss://`); `nil` for plain TCP.
    public var tls: TLS?

    public init(
        endpoint: Endpoint,
        user: String? = nil,
        password: String? = nil,
        database: Int = 0,
        connectTimeout: Duration = .seconds(2),
        commandTimeout: Duration = .seconds(5),
        reconnectBaseDelay: Duration = .milliseconds(50),
        reconnectMaxDelay: Duration = .seconds(2),
        clientName: String? = nil,
        tls: TLS? = nil
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
        self.tls = tls
    }

    /// Parses a `redis://`, `rediss://`, `unix://`, `redis+sentinel://` or `rediss+sentinel://` URL.
    /// The Sentinel form: `redis+sentinel://[[user]:password@]h1:26379,h2:26379,h3:26379/mastername[/db]`
    /// (`?sentinel_password=` when the sentinels have a password of their own); `rediss+sentinel://`
    /// speaks TLS to the sentinels and to the master they name, with `rediss://`'s options
    /// (`cacertfile=`, `certfile=`, `keyfile=`), and checks each one's certificate against the
    /// address it is reached at (the master's as the sentinels give it).
    /// - Throws: `CoordinationError` with code `.invalidConfiguration` naming the bad part.
    public init(url: String) throws {
        for scheme in ["redis+sentinel://", "rediss+sentinel://"] where url.lowercased().hasPrefix(scheme) {
            try self.init(sentinelURL: url, scheme: scheme)
            return
        }
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw CoordinationError(
                .invalidConfiguration,
                "Redis URL '\(Self.hidingPasswords(url))' is not a URL; expected redis://host:port/db or unix:///path")
        }
        let query = Dictionary(
            (components.queryItems ?? []).map { ($0.name, $0.value ?? "") },
            uniquingKeysWith: { _, last in last }
        )
        var database = 0
        if let db = query["db"] {
            guard let value = Int(db), value >= 0 else {
                throw CoordinationError(
                    .invalidConfiguration,
                    "Redis URL '\(Self.hidingPasswords(url))': db '\(db)' is not a database number")
            }
            database = value
        }
        var user = components.user?.removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 }
        var password = components.password?.removingPercentEncoding
        if let queryUser = query["user"] { user = queryUser }
        if let queryPassword = query["password"] { password = queryPassword }

        switch scheme {
        case "redis", "rediss":
            guard let host = components.host, !host.isEmpty else {
                throw CoordinationError(.invalidConfiguration, "Redis URL '\(Self.hidingPasswords(url))' has no host")
            }
            let port = components.port ?? 6379
            guard (1...65535).contains(port) else {
                throw CoordinationError(
                    .invalidConfiguration, "Redis URL '\(Self.hidingPasswords(url))': port \(port) is out of range")
            }
            let path = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
            if !path.isEmpty {
                guard let value = Int(path), value >= 0 else {
                    throw CoordinationError(
                        .invalidConfiguration,
                        "Redis URL '\(Self.hidingPasswords(url))': path '/\(path)' is not a database number")
                }
                database = value
            }
            self.init(endpoint: .tcp(host: host, port: port), user: user, password: password, database: database)
            if scheme == "rediss" {
                tls = TLS()  // so errors show rediss://
                tls = try Self.tlsSettings(query, shown: redactedDescription)
            }
        case "unix":
            guard !components.path.isEmpty else {
                throw CoordinationError(
                    .invalidConfiguration, "Redis URL '\(Self.hidingPasswords(url))' has no socket path")
            }
            self.init(endpoint: .unix(path: components.path), user: user, password: password, database: database)
        default:
            throw CoordinationError(
                .invalidConfiguration,
                "Redis URL '\(Self.hidingPasswords(url))': scheme '\(scheme)' is not redis://, rediss://, redis+sentinel://, rediss+sentinel:// or unix://"
            )
        }
    }

    /// The TLS options of a `rediss://` URL; each file must be readable now, so a typo stops
    /// start-up instead of every connection.
    private static func tlsSettings(_ query: [String: String], shown: String) throws -> TLS {
        func file(_ name: String) throws -> String? {
            guard let path = query[name] else { return nil }
            guard !path.isEmpty, FileManager.default.isReadableFile(atPath: path) else {
                throw CoordinationError(
                    .invalidConfiguration, "Redis URL '\(shown)': \(name) '\(path)' is not a readable file")
            }
            return path
        }
        let settings = TLS(
            caFile: try file("cacertfile"), certificateFile: try file("certfile"), keyFile: try file("keyfile"))
        guard (settings.certificateFile == nil) == (settings.keyFile == nil) else {
            throw CoordinationError(
                .invalidConfiguration,
                "Redis URL '\(shown)': certfile and keyfile go together (a client certificate and its key)")
        }
        if let insecure = query["verify"] {
            throw CoordinationError(
                .invalidConfiguration,
                "Redis URL '\(shown)': verify=\(insecure) is not an option; the server's certificate is always checked (name its CA with cacertfile=)"
            )
        }
        return settings
    }

    /// At most this many sentinels in one URL.
    public static let maxSentinels = 16

    private init(sentinelURL url: String, scheme: String) throws {
        let rest = url.dropFirst(scheme.count)
        let queryStart = rest.firstIndex(of: "?") ?? rest.endIndex
        let pathStart = rest[..<queryStart].firstIndex(of: "/") ?? queryStart
        var authority = rest[..<pathStart]
        var user: String?
        var password: String?
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                user = String(credentials[..<colon]).removingPercentEncoding.flatMap { $0.isEmpty ? nil : $0 }
                password = String(credentials[credentials.index(after: colon)...]).removingPercentEncoding
            } else {
                password = String(credentials).removingPercentEncoding
            }
        }
        let shown = Self.hidingPasswords(scheme + (password == nil ? "" : "***@") + authority + rest[pathStart...])
        let hosts = authority.split(separator: ",", omittingEmptySubsequences: false)
        guard !authority.isEmpty, hosts.count <= Self.maxSentinels else {
            throw CoordinationError(
                .invalidConfiguration, "Redis URL '\(shown)': name 1 to \(Self.maxSentinels) sentinels, comma-separated"
            )
        }
        var sentinels: [Sentinel] = []
        for host in hosts {
            guard let components = URLComponents(string: "redis://" + host), let name = components.host, !name.isEmpty
            else {
                throw CoordinationError(
                    .invalidConfiguration, "Redis URL '\(shown)': sentinel '\(host)' is not host:port")
            }
            let port = components.port ?? 26379
            guard (1...65535).contains(port) else {
                throw CoordinationError(
                    .invalidConfiguration, "Redis URL '\(shown)': sentinel port \(port) is out of range")
            }
            sentinels.append(Sentinel(host: name, port: port))
        }
        let path = rest[pathStart..<queryStart].split(separator: "/")
        guard let master = path.first.map(String.init), !master.isEmpty, master.utf8.count <= 255 else {
            throw CoordinationError(
                .invalidConfiguration, "Redis URL '\(shown)': the path names the master, e.g. /mymaster/0")
        }
        var database = 0
        if path.count > 1 {
            guard path.count == 2, let value = Int(path[1]), value >= 0 else {
                throw CoordinationError(
                    .invalidConfiguration,
                    "Redis URL '\(shown)': '/\(path.dropFirst().joined(separator: "/"))' after the master is not a database number"
                )
            }
            database = value
        }
        self.init(
            endpoint: .sentinel(master: master, sentinels: sentinels), user: user, password: password,
            database: database)
        let tlsOptions = ["cacertfile", "certfile", "keyfile", "verify"]
        var tlsQuery: [String: String] = [:]
        // A query that does not parse is refused, not read as no options (a CA or a password dropped).
        guard let query = URLComponents(string: "redis://h" + rest[queryStart...]) else {
            throw CoordinationError(
                .invalidConfiguration,
                "Redis URL '\(shown)': the options after '?' are not a URL query (percent-encode spaces and '%' in paths and passwords)"
            )
        }
        for item in query.queryItems ?? [] {
            switch item.name {
            case "sentinel_password": sentinelPassword = item.value
            case let name where scheme.hasPrefix("rediss") && tlsOptions.contains(name):
                tlsQuery[name] = item.value ?? ""
            default:
                let known =
                    scheme.hasPrefix("rediss")
                    ? "sentinel_password, cacertfile, certfile, keyfile" : "sentinel_password"
                throw CoordinationError(
                    .invalidConfiguration, "Redis URL '\(shown)': unknown option '\(item.name)' (known: \(known))")
            }
        }
        if scheme.hasPrefix("rediss") { tls = try Self.tlsSettings(tlsQuery, shown: shown) }
    }

    /// `url` with its passwords replaced by `***`, for error messages.
    static func hidingPasswords(_ url: String) -> String { SafeText.hidingPasswords(url) }

    /// The waits between reconnect attempts: from `reconnectBaseDelay` doubling up to
    /// `reconnectMaxDelay`, each at least half its ceiling.
    var reconnectBackoff: Backoff {
        Backoff(base: reconnectBaseDelay, cap: reconnectMaxDelay, floor: 0.5)
    }

    /// The URL without its password, for logs.
    public var redactedDescription: String {
        let auth = user.map { "\($0)@" } ?? (password != nil ? "***@" : "")
        switch endpoint {
        case .tcp(let host, let port): return "\(tls == nil ? "redis" : "rediss")://\(auth)\(host):\(port)/\(database)"
        case .unix(let path): return "unix://\(path)?db=\(database)"
        case .sentinel(let master, let sentinels):
            return "\(tls == nil ? "redis" : "rediss")+sentinel://\(auth)"
                + sentinels.map { "\($0.host):\($0.port)" }.joined(separator: ",")
                + "/\(master)/\(database)"
        }
    }
}
