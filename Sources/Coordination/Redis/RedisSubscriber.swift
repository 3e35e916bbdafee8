import Foundation
import HeraldModel
import Logging
import Synchronization

/// What a subscription delivers.
public enum RedisPubSubEvent: Sendable, Equatable {
    /// The subscription is (again) in place for every channel. After the first one
    /// this means the connection was re-made: messages published in the gap are lost,
    /// so a watcher should re-read the state it follows.
    case subscribed(reconnected: Bool)
    /// A message published on `channel`.
    case message(channel: String, payload: [UInt8])
}

/// Subscribes to Redis pub/sub channels on a connection of its own.
///
/// The blocking hiredis reads run on a dedicated thread, never on Swift's
/// cooperative pool. The connection is re-made with backoff when it breaks,
/// and the channels are subscribed again.
public final class RedisSubscriber: Sendable {
    public let configuration: RedisConfiguration
    private let logger: Logger

    public init(configuration: RedisConfiguration, logger: Logger = Logger(label: "herald.redis.pubsub")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Subscribes to `channels`. The subscription lasts until the consumer of the
    /// returned sequence stops iterating (or its task is cancelled).
    public func subscribe(to channels: [String]) -> AsyncStream<RedisPubSubEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: RedisPubSubEvent.self, bufferingPolicy: .bufferingNewest(10_000))
        let loop = SubscriptionLoop(
            configuration: configuration, channels: channels, continuation: continuation, logger: logger)
        continuation.onTermination = { _ in loop.stop() }
        let thread = Thread { loop.run() }
        thread.name = "herald.redis.pubsub"
        thread.start()
        return stream
    }
}

/// The thread body of one subscription. `stopped` is the only state shared
/// with other threads; everything else is touched by the loop's thread alone.
private final class SubscriptionLoop: @unchecked Sendable {
    let configuration: RedisConfiguration
    let channels: [String]
    let continuation: AsyncStream<RedisPubSubEvent>.Continuation
    let logger: Logger
    private let stopped = Atomic<Bool>(false)

    init(
        configuration: RedisConfiguration, channels: [String], continuation: AsyncStream<RedisPubSubEvent>.Continuation,
        logger: Logger
    ) {
        self.configuration = configuration
        self.channels = channels
        self.continuation = continuation
        self.logger = logger
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    func run() {
        var context: HiredisContext?
        var confirmed = Set<String>()
        var subscribedBefore = false
        var failures = 0
        while !stopped.load(ordering: .relaxed) {
            do {
                if context == nil {
                    let made = try HiredisContext.connect(configuration)
                    try made.append(RedisCommand(["SUBSCRIBE"] + channels))
                    try made.flush()
                    context = made
                    confirmed = []
                    failures = 0
                }
                guard let active = context else { continue }
                while let reply = try active.bufferedReply() {
                    handle(reply, confirmed: &confirmed, subscribedBefore: &subscribedBefore)
                }
                if active.hasPendingInput {
                    try active.readAvailable()
                    continue
                }
                // Wake up regularly to notice `stop()`.
                var descriptor = pollfd(fd: active.fileDescriptor, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, 200)
                if ready > 0 { try active.readAvailable() }
            } catch {
                context = nil
                failures += 1
                if failures == 1 || failures % 20 == 0 {
                    logger.warning(
                        "Redis subscription interrupted; reconnecting",
                        metadata: [LogKey.redisEndpoint: "\(configuration.endpoint)", LogKey.error: "\(error)"])
                }
                sleepUnlessStopped(configuration.reconnectBackoff.delay(attempt: failures).seconds)
            }
        }
        continuation.finish()
    }

    private func handle(_ reply: RedisReply, confirmed: inout Set<String>, subscribedBefore: inout Bool) {
        guard let items = reply.array, items.count >= 3, let kind = items[0].string else { return }
        switch kind {
        case "message":
            continuation.yield(.message(channel: items[1].string ?? "", payload: items[2].bytes ?? []))
        case "subscribe":
            if let channel = items[1].string { confirmed.insert(channel) }
            if confirmed.count == Set(channels).count {
                continuation.yield(.subscribed(reconnected: subscribedBefore))
                subscribedBefore = true
            }
        default:
            break
        }
    }

    private func sleepUnlessStopped(_ seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        while !stopped.load(ordering: .relaxed) && Date() < deadline {
            Thread.sleep(forTimeInterval: min(0.05, max(0, deadline.timeIntervalSinceNow)))
        }
    }
}
