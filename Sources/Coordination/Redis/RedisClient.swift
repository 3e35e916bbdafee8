import Dispatch
import Foundation
import HeraldModel
import Logging
import Synchronization

/// A Lua script run with `EVALSHA`; the client loads it on first use and again
/// whenever Redis answers `NOSCRIPT` (after `SCRIPT FLUSH` or a restart).
public struct RedisScript: Sendable, Hashable {
    public let source: String

    public init(_ source: String) {
        self.source = source
    }
}

/// Counters a caller can read to see what the client did.
public struct RedisClientStatistics: Sendable, Equatable {
    /// Commands sent, pipelined ones counted one by one.
    public var commands: Int = 0
    /// Exchanges with the server: a single command or a whole pipeline is one.
    public var roundTrips: Int = 0
    /// Successful connects after the first.
    public var reconnects: Int = 0
    /// Connections made to a sentinel by the checks of the master (behind sentinels): one is
    /// kept and asked again, so a new one only after it failed.
    public var sentinelConnects: Int = 0
}

/// A Redis client over one hiredis connection.
///
/// hiredis blocks, so every call runs on this client's own `BlockingExecutor` (a
/// serial queue), never on Swift's cooperative pool; callers simply `await`. Commands
/// from concurrent callers are serialised on the one connection.
///
/// When the connection breaks the failing call throws `.connectionLost` and the
/// next call reconnects; while reconnects keep failing, calls fail fast with
/// `.reconnecting` until the backoff delay has passed.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    private let executor: BlockingExecutor
    private let slot: ConnectionSlot
    private let loadedScripts = Mutex<[String: String]>([:])
    private let stats = Mutex(RedisClientStatistics())
    private let logger: Logger

    /// Creates a client; it connects lazily, on the first command (or `connect()`).
    public init(configuration: RedisConfiguration, logger: Logger = Logger(label: "herald.redis")) {
        self.configuration = configuration
        self.logger = logger
        self.executor = BlockingExecutor(label: "herald.redis.\(configuration.endpoint)")
        self.slot = ConnectionSlot(configuration: configuration)
    }

    /// Creates a client from a `redis://` or `unix://` URL.
    /// - Throws: `CoordinationError.invalidConfiguration` for a URL it cannot use.
    public convenience init(url: String, logger: Logger = Logger(label: "herald.redis")) throws {
        self.init(configuration: try RedisConfiguration(url: url), logger: logger)
    }

    public var statistics: RedisClientStatistics { stats.withLock { $0 } }

    /// Connects now rather than on the first command.
    /// - Throws: `CoordinationError` `.connectionFailed` or `.reconnecting`.
    public func connect() async throws {
        try await onQueue { slot in _ = try slot.connected(logger: self.logger, stats: self.stats) }
    }

    /// Sends one command and returns its reply.
    /// - Throws: `CoordinationError.serverError` carrying the server's text for an error reply;
    ///   `.connectionLost`, `.connectionFailed` or `.reconnecting` when Redis cannot be reached.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RedisReply {
        let reply = try await onQueue { slot in
            let context = try slot.connected(logger: self.logger, stats: self.stats)
            let reply = try slot.guarding { try context.command(command) }
            slot.noteReadOnly(reply, logger: self.logger)
            return reply
        }
        stats.withLock {
            $0.commands += 1
            $0.roundTrips += 1
        }
        if case .error(let text) = reply {
            throw CoordinationError(.serverError, "Redis refused \(command.name)", underlying: text)
        }
        return reply
    }

    @discardableResult
    public func send(_ arguments: any RedisArgument...) async throws -> RedisReply {
        try await send(RedisCommand(arguments))
    }

    /// Sends all commands in one write and then reads all replies: one round trip.
    /// Error replies come back in place as `.error`, so one bad command does not hide the others' results.
    /// - Throws: `CoordinationError` when the connection fails.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        guard !commands.isEmpty else { return [] }
        let replies = try await onQueue { slot in
            let context = try slot.connected(logger: self.logger, stats: self.stats)
            return try slot.guarding {
                for command in commands { try context.append(command) }
                try context.flush()
                var replies: [RedisReply] = []
                replies.reserveCapacity(commands.count)
                for _ in commands { replies.append(try context.readReply()) }
                for reply in replies { slot.noteReadOnly(reply, logger: self.logger) }
                return replies
            }
        }
        stats.withLock {
            $0.commands += commands.count
            $0.roundTrips += 1
        }
        return replies
    }

    /// Runs a Lua script by its SHA1, loading it first when Redis does not know it.
    /// - Throws: `CoordinationError.serverError` when the script itself fails.
    @discardableResult
    public func evalSHA(
        _ script: RedisScript, keys: [any RedisArgument] = [], arguments: [any RedisArgument] = []
    ) async throws -> RedisReply {
        var sha = loadedScripts.withLock { $0[script.source] }
        if sha == nil { sha = try await load(script) }
        let tail: [any RedisArgument] = [keys.count] + keys + arguments
        do {
            return try await send(RedisCommand(["EVALSHA", sha!] + tail))
        } catch let error as CoordinationError
            where error.code == .serverError && (error.underlying ?? "").hasPrefix("NOSCRIPT")
        {
            logger.debug("Redis lost a script; loading it again", metadata: [LogKey.redisSha: "\(sha!)"])
            let reloaded = try await load(script)
            return try await send(RedisCommand(["EVALSHA", reloaded] + tail))
        }
    }

    private func load(_ script: RedisScript) async throws -> String {
        let reply = try await send("SCRIPT", "LOAD", script.source)
        guard let sha = reply.string else {
            throw CoordinationError(.unexpectedReply, "SCRIPT LOAD answered \(reply), not a SHA1")
        }
        loadedScripts.withLock { $0[script.source] = sha }
        return sha
    }

    /// Closes the connection; later calls throw `.closed`.
    public func close() async {
        await executor.run { self.slot.close() }
    }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable (ConnectionSlot) throws -> T) async throws -> T {
        try await executor.run { try body(self.slot) }
    }
}

/// The connection and its reconnect state. Touched only on the client's executor (one
/// call at a time), which is why it is `@unchecked Sendable`.
private final class ConnectionSlot: @unchecked Sendable {
    let configuration: RedisConfiguration
    private var context: HiredisContext?
    private var failures = 0
    private var retryAt: ContinuousClock.Instant?
    private var everConnected = false
    private var isClosed = false

    init(configuration: RedisConfiguration) {
        self.configuration = configuration
    }

    func connected(logger: Logger, stats: borrowing Mutex<RedisClientStatistics>) throws -> HiredisContext {
        if isClosed { throw CoordinationError(.closed, "the Redis client for \(configuration.endpoint) is closed") }
        if let context {
            // Behind sentinels the connection is dropped only when they name another master (asked at
            // most every `sentinelCheckInterval`); otherwise, and without sentinels, it is kept.
            guard case .sentinel = configuration.endpoint, masterMoved(from: context, logger: logger, stats: stats)
            else {
                return context
            }
            self.context = nil
        }
        let now = ContinuousClock.now
        if let retryAt, now < retryAt {
            let wait = retryAt - now
            throw CoordinationError(
                .reconnecting,
                "Redis at \(configuration.endpoint) is unreachable; next attempt in \(Int(wait.seconds * 1000)) ms")
        }
        do {
            let made = try HiredisContext.connect(configuration)
            if everConnected {
                stats.withLock { $0.reconnects += 1 }
                logger.info(
                    "reconnected to Redis",
                    metadata: [LogKey.redisEndpoint: "\(configuration.endpoint)", LogKey.redisFailures: "\(failures)"])
            }
            everConnected = true
            failures = 0
            retryAt = nil
            context = made
            return made
        } catch {
            failures += 1
            // Jittered, so many nodes do not reconnect in step.
            retryAt = now + configuration.reconnectBackoff.delay(attempt: failures)
            if failures == 1 || failures % 20 == 0 {
                logger.warning(
                    "cannot reach Redis",
                    metadata: [
                        LogKey.redisEndpoint: "\(configuration.endpoint)", LogKey.redisFailures: "\(failures)",
                        LogKey.error: "\(error)",
                    ])
            }
            throw error
        }
    }

    private var nextSentinelCheck: ContinuousClock.Instant?
    /// The connection to the sentinel that answered the last check, asked again by the next one
    /// (over TLS a handshake per check otherwise); dropped when it fails.
    private var sentinel: HiredisContext?

    /// With sentinels: whether they now name another master than the one `context` is
    /// connected to, asked at most every `sentinelCheckInterval` (an old master can take
    /// writes for seconds after a failover before it is demoted, and those writes are lost).
    private func masterMoved(
        from context: HiredisContext, logger: Logger, stats: borrowing Mutex<RedisClientStatistics>
    ) -> Bool {
        let now = ContinuousClock.now
        if let nextSentinelCheck, now < nextSentinelCheck { return false }
        nextSentinelCheck = now + configuration.sentinelCheckInterval
        guard case .tcp(let host, let port) = context.endpoint, case .sentinel(let master, _) = configuration.endpoint
        else { return false }
        // On the client's own queue, before a command: quick, and rarer while the sentinels
        // cannot answer (the master in use is kept meanwhile).
        var named = try? sentinel?.namedMaster(master)
        if named == nil {
            sentinel = nil
            if let asked = try? HiredisContext.askSentinels(configuration, timeout: .milliseconds(200)) {
                stats.withLock { $0.sentinelConnects += 1 }
                (named, sentinel) = (asked.master, asked.sentinel)
            }
        }
        guard let named else {
            nextSentinelCheck = now + configuration.sentinelCheckInterval * 5
            return false
        }
        guard named.host != host || named.port != port else { return false }
        logger.warning(
            "the sentinels name a new Redis master; reconnecting",
            metadata: [
                LogKey.redisEndpoint: "\(configuration.endpoint)", LogKey.redisOldMaster: "\(host):\(port)",
                LogKey.redisNewMaster: "\(named.host):\(named.port)",
            ])
        return true
    }

    /// A `READONLY` answer: this node is a replica now (a failover demoted it); the next call
    /// reconnects to whatever is the master.
    func noteReadOnly(_ reply: RedisReply, logger: Logger) {
        guard case .error(let text) = reply, text.hasPrefix("READONLY"), context != nil else { return }
        logger.warning(
            "Redis answered READONLY: the node is a replica now; reconnecting",
            metadata: [LogKey.redisEndpoint: "\(configuration.endpoint)"])
        context = nil
    }

    /// Runs a command exchange; a broken connection is dropped so the next call reconnects.
    func guarding<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as CoordinationError where error.code == .connectionLost {
            context = nil
            throw error
        }
    }

    func close() {
        isClosed = true
        context = nil
        sentinel = nil
    }
}
