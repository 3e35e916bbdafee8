import CHiredis
import CRedisTLS
import Foundation

/// The one owner of a hiredis `redisContext`.
///
/// Every call blocks on the socket, so an instance may only be touched from the
/// serial queue or thread of the client that owns it (never from Swift's
/// cooperative pool); that is why it is `@unchecked Sendable`. Nothing outside
/// this file calls the hiredis API.
final class HiredisContext: @unchecked Sendable {
    private let context: UnsafeMutablePointer<redisContext>
    let endpoint: RedisConfiguration.Endpoint
    /// With `rediss://`: the TLS session every byte goes through (hiredis 0.14 has no TLS
    /// of its own; it still formats commands and parses replies).
    private var tls: OpaquePointer?

    private init(context: UnsafeMutablePointer<redisContext>, endpoint: RedisConfiguration.Endpoint) {
        self.context = context
        self.endpoint = endpoint
    }

    deinit {
        herald_redis_tls_free(tls)
        redisFree(context)
    }

    /// Connects and authenticates, selects the database and sets the client name.
    /// - Throws: `CoordinationError` `.connectionFailed`, or `.serverError` when AUTH or SELECT is refused.
    static func connect(_ configuration: RedisConfiguration) throws -> HiredisContext {
        let made: UnsafeMutablePointer<redisContext>?
        switch configuration.endpoint {
        case .tcp(let host, let port):
            made = redisConnectWithTimeout(host, Int32(port), configuration.connectTimeout.timeval)
        case .unix(let path):
            made = redisConnectUnixWithTimeout(path, configuration.connectTimeout.timeval)
        case .sentinel:
            return try connectToMaster(configuration)
        }
        guard let made else {
            throw CoordinationError(.connectionFailed, "cannot allocate a Redis context for \(configuration.endpoint)")
        }
        let context = HiredisContext(context: made, endpoint: configuration.endpoint)
        if made.pointee.err != 0 {
            throw CoordinationError(
                .connectionFailed, "cannot connect to Redis at \(configuration.endpoint)", underlying: context.errorText
            )
        }
        if let settings = configuration.tls {
            try context.startTLS(settings, configuration: configuration)
        }
        if redisSetTimeout(made, configuration.commandTimeout.timeval) != REDIS_OK {
            throw CoordinationError(
                .connectionFailed, "cannot set the command timeout on \(configuration.endpoint)",
                underlying: context.errorText)
        }
        // Keepalive on a unix socket fails and would leave the context in an error state.
        if case .tcp = configuration.endpoint, redisEnableKeepAlive(made) != REDIS_OK {
            throw CoordinationError(
                .connectionFailed, "cannot enable TCP keepalive on \(configuration.endpoint)",
                underlying: context.errorText)
        }

        var setup: [RedisCommand] = []
        if let password = configuration.password {
            if let user = configuration.user {
                setup.append(RedisCommand("AUTH", user, password))
            } else {
                setup.append(RedisCommand("AUTH", password))
            }
        }
        if configuration.database != 0 {
            setup.append(RedisCommand("SELECT", configuration.database))
        }
        if let name = configuration.clientName {
            setup.append(RedisCommand("CLIENT", "SETNAME", name))
        }
        for command in setup {
            let reply = try context.command(command)
            if case .error(let text) = reply {
                throw CoordinationError(
                    .serverError, "Redis at \(configuration.endpoint) refused \(command.name)", underlying: text)
            }
        }
        return context
    }

    /// The TLS handshake on the connected socket, within the connect timeout.
    private func startTLS(_ settings: RedisConfiguration.TLS, configuration: RedisConfiguration) throws {
        guard case .tcp(let host, _) = configuration.endpoint else {
            throw CoordinationError(.invalidConfiguration, "TLS needs a TCP endpoint, not \(configuration.endpoint)")
        }
        if redisSetTimeout(context, configuration.connectTimeout.timeval) != REDIS_OK {
            throw CoordinationError(
                .connectionFailed, "cannot set the connect timeout on \(configuration.endpoint)", underlying: errorText)
        }
        let (made, text) = Self.withReason { reason, size in
            herald_redis_tls_connect(
                context, host, settings.caFile, settings.certificateFile, settings.keyFile, reason, size)
        }
        tls = made
        if tls == nil {
            let hint =
                settings.caFile.map { " (checked against \($0))" }
                ?? " (checked against the system's CAs; name a private CA with ?cacertfile=)"
            throw CoordinationError(
                .connectionFailed, "TLS to Redis at \(configuration.endpoint) failed\(hint)", underlying: text)
        }
    }

    /// The master the sentinels name, connected, and checked with `ROLE` (a sentinel's view can
    /// lag a failover: a node that no longer is the master is refused, and the next attempt
    /// asks again).
    private static func connectToMaster(_ configuration: RedisConfiguration) throws -> HiredisContext {
        let (host, port) = try masterAddress(configuration)
        var direct = configuration
        direct.endpoint = .tcp(host: host, port: port)
        let context = try connect(direct)
        let role = try context.command(RedisCommand("ROLE"))
        guard role.array?.first?.string == "master" else {
            throw CoordinationError(
                .connectionFailed,
                "Redis at \(host):\(port), which the sentinels name master of \(configuration.endpoint), answers ROLE \(role.array?.first?.string ?? "\(role)"); asking again"
            )
        }
        return context
    }

    /// Where the sentinels say the master is: the first sentinel that answers decides.
    /// - Throws: `CoordinationError.connectionFailed` naming every sentinel's failure.
    /// - Parameter timeout: how long each sentinel may take to connect and answer (at most 1 s).
    static func masterAddress(
        _ configuration: RedisConfiguration, timeout: Duration = .seconds(1)
    ) throws -> (host: String, port: Int) {
        try askSentinels(configuration, timeout: timeout).master
    }

    /// `masterAddress`, and the connection to the sentinel that answered, to ask it again
    /// (`namedMaster`) instead of connecting anew each time.
    static func askSentinels(
        _ configuration: RedisConfiguration, timeout: Duration
    ) throws -> (master: (host: String, port: Int), sentinel: HiredisContext) {
        guard case .sentinel(let master, let sentinels) = configuration.endpoint else {
            throw CoordinationError(.invalidConfiguration, "\(configuration.endpoint) is not a sentinel endpoint")
        }
        var failures: [String] = []
        for sentinel in sentinels {
            // rediss+sentinel: the sentinels speak TLS too, with the same CAs and client certificate.
            var asking = RedisConfiguration(
                endpoint: .tcp(host: sentinel.host, port: sentinel.port), password: configuration.sentinelPassword,
                tls: configuration.tls)
            asking.connectTimeout = min(configuration.connectTimeout, timeout, .seconds(1))
            asking.commandTimeout = min(configuration.commandTimeout, timeout, .seconds(1))
            do {
                let context = try connect(asking)
                return (try context.namedMaster(master), context)
            } catch {
                failures.append("\(sentinel.host):\(sentinel.port): \(error)")
            }
        }
        throw CoordinationError(
            .connectionFailed, "no sentinel named the master of '\(master)'",
            underlying: failures.joined(separator: "; "))
    }

    /// On a sentinel's connection: the address it names for `master`.
    /// - Throws: `CoordinationError.unexpectedReply` quoting (cut short) an answer that is not
    ///   a host and a port; `.connectionLost` when the exchange fails.
    func namedMaster(_ master: String) throws -> (host: String, port: Int) {
        let reply = try command(RedisCommand("SENTINEL", "get-master-addr-by-name", master))
        guard let parts = reply.array, parts.count == 2, let host = parts[0].string, !host.isEmpty,
            let port = parts[1].string.flatMap(Int.init), (1...65535).contains(port)
        else {
            throw CoordinationError(.unexpectedReply, "answered \(String("\(reply)".prefix(120)))")
        }
        return (host, port)
    }

    /// The socket's file descriptor, for `poll`.
    var fileDescriptor: Int32 { context.pointee.fd }

    private var errorText: String {
        withUnsafeBytes(of: context.pointee.errstr) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }

    private func lostError(_ what: String, reason: String? = nil) -> CoordinationError {
        CoordinationError(.connectionLost, "\(what) on Redis at \(endpoint) failed", underlying: reason ?? errorText)
    }

    /// Calls a CRedisTLS function with room for the reason it writes on failure; answers its
    /// result and that reason as text.
    private static func withReason<Result>(
        _ body: (UnsafeMutablePointer<CChar>, Int) -> Result
    ) -> (result: Result, reason: String) {
        let size = 512
        var buffer = [CChar](repeating: 0, count: size)
        let result = body(&buffer, size)
        return (result, String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// Runs one TLS transfer; a failure names OpenSSL's reason.
    private func transfer(_ what: String, _ body: (OpaquePointer, UnsafeMutablePointer<CChar>, Int) -> Int32) throws {
        guard let tls else { return }
        let (status, reason) = Self.withReason { body(tls, $0, $1) }
        if status != 0 { throw lostError(what, reason: reason) }
    }

    /// Bytes already decrypted and waiting, which `poll` cannot see.
    var hasPendingInput: Bool {
        guard let tls else { return false }
        return herald_redis_tls_pending(tls) > 0
    }

    /// Sends one command and waits for its reply. An error reply is returned, not thrown.
    /// - Throws: `CoordinationError.connectionLost` when the socket fails or times out; the context is then unusable.
    func command(_ command: RedisCommand) throws -> RedisReply {
        if tls != nil {
            try append(command)
            try flush()
            return try readReply()
        }
        let raw = Self.withArgv(command.arguments) { argc, argv, lengths in
            redisCommandArgv(context, argc, argv, lengths)
        }
        guard let raw else { throw lostError(command.name) }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Queues a command in hiredis' output buffer without sending it.
    func append(_ command: RedisCommand) throws {
        let status = Self.withArgv(command.arguments) { argc, argv, lengths in
            redisAppendCommandArgv(context, argc, argv, lengths)
        }
        if status != REDIS_OK { throw lostError("queueing \(command.name)") }
    }

    /// Writes everything queued by `append` to the socket.
    func flush() throws {
        if tls != nil {
            try transfer("writing") { herald_redis_tls_flush($0, context, $1, $2) }
            return
        }
        var done: Int32 = 0
        while done == 0 {
            if redisBufferWrite(context, &done) != REDIS_OK { throw lostError("writing a pipeline") }
        }
    }

    /// Waits for the next reply.
    func readReply() throws -> RedisReply {
        if tls != nil {
            while true {
                if let reply = try bufferedReply() { return reply }
                try readAvailable()
            }
        }
        var raw: UnsafeMutableRawPointer?
        if redisGetReply(context, &raw) != REDIS_OK || raw == nil { throw lostError("reading a reply") }
        defer { freeReplyObject(raw) }
        return Self.convert(raw!.assumingMemoryBound(to: redisReply.self))
    }

    /// A reply already read from the socket and parsed, if there is one; never blocks.
    func bufferedReply() throws -> RedisReply? {
        var raw: UnsafeMutableRawPointer?
        if redisGetReplyFromReader(context, &raw) != REDIS_OK { throw lostError("parsing a reply") }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    /// Reads what the socket has into hiredis' buffer (call after `poll` says readable).
    func readAvailable() throws {
        if tls != nil {
            try transfer("reading") { herald_redis_tls_read($0, context, $1, $2) }
            return
        }
        if redisBufferRead(context) != REDIS_OK { throw lostError("reading") }
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_NIL:
            return .null
        case REDIS_REPLY_STRING:
            return .bulk(bytes(value.str, count: Int(value.len)))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(value.str, count: Int(value.len)), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(value.str, count: Int(value.len)), as: UTF8.self))
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            items.reserveCapacity(Int(value.elements))
            for index in 0..<Int(value.elements) {
                if let element = value.element[index] {
                    items.append(convert(element))
                } else {
                    items.append(.null)
                }
            }
            return .array(items)
        default:
            return .error("unknown hiredis reply type \(value.type)")
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return pointer.withMemoryRebound(to: UInt8.self, capacity: count) {
            Array(UnsafeBufferPointer(start: $0, count: count))
        }
    }

    /// Lays the arguments out in one buffer and hands hiredis pointers and lengths into it.
    private static func withArgv<R>(
        _ arguments: [[UInt8]],
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R
    ) -> R {
        var storage: [UInt8] = []
        storage.reserveCapacity(arguments.reduce(1) { $0 + $1.count })
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            storage.append(contentsOf: argument)
            lengths.append(argument.count)
        }
        storage.append(0)  // so the base address exists even when every argument is empty
        return storage.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!)
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(arguments.count)
            var offset = 0
            for length in lengths {
                pointers.append(base.advanced(by: offset).assumingMemoryBound(to: CChar.self))
                offset += length
            }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { lengthBuffer in
                    body(Int32(arguments.count), argv.baseAddress!, lengthBuffer.baseAddress!)
                }
            }
        }
    }
}
