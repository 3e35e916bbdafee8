import Foundation
import HeraldModel
import Logging
import Synchronization

/// A connection to RabbitMQ over rabbitmq-c.
///
/// All socket work happens on one dedicated thread per connection (never on
/// Swift's cooperative pool). The connection heals itself: after a broker
/// restart or a network failure it reconnects with backoff and restores the
/// exchanges, queues and bindings declared through it, its channels (qos,
/// confirm mode) and its consumers. Operations attempted while it is down
/// fail with `.notConnected`; unacked deliveries from before the break are
/// redelivered by the broker.
public final class AMQPConnection: Sendable {
    let engine: AMQPEngine
    public let configuration: AMQPConfiguration

    private init(engine: AMQPEngine) {
        self.engine = engine
        self.configuration = engine.configuration
    }

    /// Connects and logs in.
    /// - Throws: `MessagingError.connectionFailed` naming the broker and its reason.
    public static func connect(
        _ configuration: AMQPConfiguration, logger: Logger = Logger(label: "herald.amqp")
    ) async throws -> AMQPConnection {
        if configuration.tls, !configuration.verifyPeer {
            logger.warning(
                "TLS to RabbitMQ without checking its certificate (verify=false in the AMQP URL): anyone on the path can read and change the traffic; for development only"
            )
        }
        let engine = AMQPEngine(configuration: configuration, logger: logger)
        // The blocking connect runs off the cooperative pool; the engine's thread takes over after.
        try await BlockingExecutor(label: "herald-amqp-connect").run { try engine.start() }
        return AMQPConnection(engine: engine)
    }

    /// Connects to an `amqp://` URL.
    public static func connect(
        url: String, logger: Logger = Logger(label: "herald.amqp")
    ) async throws -> AMQPConnection {
        try await connect(try AMQPConfiguration(url: url), logger: logger)
    }

    /// Whether the connection is up right now.
    public var isConnected: Bool { engine.status.withLock { $0.connected } }

    /// How many times the connection was re-made after a loss.
    public var reconnects: Int { engine.status.withLock { $0.reconnects } }
    /// The node in use (`host:port`), or the one tried next while reconnecting.
    public var endpoint: String { engine.status.withLock { $0.endpoint } }

    /// Waits until the connection is up (the engine wakes its waiters when it connects).
    /// - Throws: `MessagingError.notConnected` with the last connect error when `timeout` passes
    ///   first, the connection is closed, or the caller is cancelled.
    public func waitUntilConnected(timeout: Duration) async throws {
        guard await !engine.whenConnected(within: timeout) else { return }
        throw MessagingError(
            .notConnected,
            "RabbitMQ at \(configuration.endpoints.map { "\($0.host):\($0.port)" }.joined(separator: ", ")) not reachable within \(timeout)",
            replyText: engine.status.withLock { $0.lastError })
    }

    /// Opens a new channel.
    public func openChannel() async throws -> AMQPChannel {
        let id = try await engine.perform { engine in try engine.openChannel() }
        return AMQPChannel(engine: engine, id: id)
    }

    /// A queue's message and consumer counts, read by a passive declare on a channel of its own
    /// (RabbitMQ closes the channel that asks for a missing queue).
    /// - Returns: nil when the queue does not exist (404).
    /// - Throws: when RabbitMQ cannot be asked (no connection, another refusal).
    public func queueState(_ name: String) async throws -> AMQPQueueState? {
        let channel = try await openChannel()
        let answer: Result<AMQPQueueState?, any Error>
        do { answer = .success(try await channel.declareQueuePassive(name)) } catch let error as MessagingError
            where error.replyCode == 404
        {
            answer = .success(nil)
        } catch {
            answer = .failure(error)
        }
        await channel.close()
        return try answer.get()
    }

    /// Closes the connection: consumers finish, unconfirmed publishes fail.
    public func close() async {
        await engine.stop()
    }
}

/// One AMQP channel. Channels are cheap; use one per consumer so a channel
/// error on one does not touch the others. After the broker closes a channel
/// (406, 404, ...) the operation that caused it throws `.channelClosed` with
/// the broker's text, and the channel is re-opened with its qos, confirm mode
/// and consumers.
public struct AMQPChannel: Sendable {
    let engine: AMQPEngine
    public let id: UInt16

    // MARK: Topology

    /// Declares an exchange; remembered and re-declared after a reconnect.
    public func declareExchange(_ name: String, options: AMQPExchangeOptions = AMQPExchangeOptions()) async throws {
        let id = id
        try await engine.perform { engine in
            try engine.guarded(id) { wire in try wire.declareExchange(id, name: name, options: options, passive: false)
            }
            engine.remember(.exchange(name: name, options: options))
        }
    }

    /// Checks that an exchange exists without creating it.
    /// - Throws: `.channelClosed` with 404 NOT_FOUND when it does not.
    public func declareExchangePassive(_ name: String) async throws {
        let id = id
        try await engine.perform { engine in
            try engine.guarded(id) { wire in
                try wire.declareExchange(id, name: name, options: AMQPExchangeOptions(), passive: true)
            }
        }
    }

    public func deleteExchange(_ name: String) async throws {
        let id = id
        try await engine.perform { engine in
            try engine.guarded(id) { wire in try wire.deleteExchange(id, name: name) }
            engine.forget { item in
                if case .exchange(let declared, _) = item { return declared == name }
                if case .binding(_, let exchange, _, _) = item { return exchange == name }
                return false
            }
        }
    }

    /// Declares a queue; remembered and re-declared after a reconnect.
    /// - Throws: `.channelClosed` with 406 PRECONDITION_FAILED when it exists with other arguments.
    @discardableResult
    public func declareQueue(
        _ name: String, options: AMQPQueueOptions = AMQPQueueOptions()
    ) async throws -> AMQPQueueState {
        let id = id
        return try await engine.perform { engine in
            let state = try engine.guarded(id) { wire in
                try wire.declareQueue(id, name: name, options: options, passive: false)
            }
            if !name.isEmpty { engine.remember(.queue(name: name, options: options)) }
            return state
        }
    }

    /// Reads a queue's message and consumer counts without creating it.
    /// - Throws: `.channelClosed` with 404 NOT_FOUND when it does not exist.
    public func declareQueuePassive(_ name: String) async throws -> AMQPQueueState {
        let id = id
        return try await engine.perform { engine in
            try engine.guarded(id) { wire in
                try wire.declareQueue(id, name: name, options: AMQPQueueOptions(), passive: true)
            }
        }
    }

    /// Deletes a queue and returns how many messages it held. `ifEmpty`: only an empty one
    /// (RabbitMQ answers 406 otherwise; for a quorum queue it closes the connection: 540).
    @discardableResult
    public func deleteQueue(_ name: String, ifEmpty: Bool = false) async throws -> Int {
        let id = id
        return try await engine.perform { engine in
            let count = try engine.guarded(id) { wire in try wire.deleteQueue(id, name: name, ifEmpty: ifEmpty) }
            engine.forget { item in
                if case .queue(let declared, _) = item { return declared == name }
                if case .binding(let queue, _, _, _) = item { return queue == name }
                return false
            }
            return count
        }
    }

    @discardableResult
    public func purgeQueue(_ name: String) async throws -> Int {
        let id = id
        return try await engine.perform { engine in
            try engine.guarded(id) { wire in try wire.purgeQueue(id, name: name) }
        }
    }

    /// Binds a queue to an exchange; remembered and re-bound after a reconnect.
    public func bindQueue(
        _ queue: String, to exchange: String, routingKey: String, arguments: AMQPTable = [:]
    ) async throws {
        let id = id
        try await engine.perform { engine in
            try engine.guarded(id) { wire in
                try wire.bindQueue(id, queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
            }
            engine.remember(.binding(queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments))
        }
    }

    public func unbindQueue(
        _ queue: String, from exchange: String, routingKey: String, arguments: AMQPTable = [:]
    ) async throws {
        let id = id
        try await engine.perform { engine in
            try engine.guarded(id) { wire in
                try wire.unbindQueue(id, queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
            }
            engine.forget { item in
                if case .binding(let q, let e, let k, _) = item {
                    return q == queue && e == exchange && k == routingKey
                }
                return false
            }
        }
    }

    // MARK: Consuming

    /// Sets `basic.qos`: at most `prefetch` unacked deliveries per consumer on this channel (of
    /// consumers started after it). Every delivery that came on the channel before the broker's
    /// answer has met its consumer's `onArrival` (or been handed over) when this returns: after a
    /// cancel, a barrier for what the queue still sent.
    public func qos(prefetch: UInt16) async throws {
        let id = id
        try await engine.perform { engine in try engine.setQoS(id, prefetch: prefetch) }
    }

    /// Starts a consumer with manual acks.
    ///
    /// The returned sequence is pull-based in effect: the broker sends at most
    /// `prefetch` unacked messages, so its buffer never holds more than that;
    /// the rest waits in RabbitMQ until the caller acks.
    /// - Parameters:
    ///   - queue: the queue to consume.
    ///   - prefetch: `basic.qos` for this channel, set before consuming.
    ///   - exclusive: ask to be the queue's only consumer.
    ///   - arguments: `basic.consume` arguments.
    ///   - onArrival: run on the connection's thread for each delivery as it arrives, before it
    ///     is handed over: what it answers (`AMQPArrival`) is done there, and only what it hands
    ///     over reaches the sequence (no task is woken for the rest). It must be quick and never
    ///     block: every channel of the connection waits while it runs.
    public func consume(
        _ queue: String, prefetch: UInt16, exclusive: Bool = false, arguments: AMQPTable = [:],
        onArrival: (@Sendable (AMQPDelivery) -> AMQPArrival)? = nil
    ) async throws -> AMQPConsumer {
        try await qos(prefetch: prefetch)
        let tag = "herald.\(UUID().uuidString.prefix(8).lowercased()).\(queue)"
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: AMQPDelivery.self, throwing: (any Error).self)
        let id = id
        let liveness = try await engine.perform { engine in
            try engine.consume(
                id, queue: queue, tag: tag, exclusive: exclusive, arguments: arguments, continuation: continuation,
                onArrival: onArrival)
        }
        return AMQPConsumer(channel: self, tag: tag, queue: queue, stream: stream, liveness: liveness)
    }

    /// Acknowledges a delivery (and, with `multiple`, every earlier one on this channel).
    ///
    /// Returns at once; the ack goes out on the connection thread, where acks that
    /// arrive together are coalesced into one `basic.ack(multiple)` when they form a
    /// contiguous run. While deliveries flow it does not wake that thread, which then polls
    /// every few milliseconds and finds it (at most 8 ms later, `AMQPEngine.quickPoll`); a
    /// sleeping thread is woken as for any other job. A delivery from before a
    /// reconnect is skipped: the broker has requeued it already.
    public func ack(_ delivery: AMQPDelivery, multiple: Bool = false) {
        engine.submit({ engine in engine.ack(delivery, multiple: multiple) }, wake: false)
    }

    /// Holds this channel's single acks back (recorded, not sent) until released, or until the
    /// channel or the connection closes (they go out first). A consumer whose acks are held gets
    /// no new credit: the broker sends at most `prefetch` deliveries more than were acked before.
    /// A multiple ack, a nack or a reject sends the held acks first, then itself. Kept across a
    /// reconnect (the acks of the lost incarnation are dropped: the broker gave those back).
    public func withholdAcks(_ withhold: Bool) async throws {
        let id = id
        try await engine.perform { engine in try engine.withholdAcks(id, withhold) }
    }

    /// What this channel received since it was (re)opened, how many of those the broker holds no
    /// ack for (withheld, or not yet sent, included), and whether `consumer` still consumes.
    /// With one consumer on the channel, `unacked` reaching its prefetch means the broker sends
    /// it nothing more until acks go out.
    public func deliveryCounts(of consumer: String) async throws -> AMQPDeliveryCounts {
        let id = id
        return try await engine.perform { engine in try engine.deliveryCounts(id, consumer: consumer) }
    }

    /// Whether `delivery` may still be acked: false once the channel it came on closed or was
    /// reopened after a reconnect (the broker has given the message back to its queue).
    public func canSettle(_ delivery: AMQPDelivery) async -> Bool {
        (try? await engine.perform { engine in engine.canSettle(delivery) }) ?? false
    }

    /// Negatively acknowledges a delivery; with `requeue: false` it goes to the queue's dead-letter exchange.
    /// With `requeue: true` a classic queue puts it back where it was, a quorum queue (RabbitMQ 3.10,
    /// checked) at its back, behind messages that came after it.
    public func nack(_ delivery: AMQPDelivery, multiple: Bool = false, requeue: Bool) {
        engine.submit { engine in engine.refuse(delivery, multiple: multiple, requeue: requeue) }
    }

    /// Rejects one delivery; with `requeue: false` it goes to the queue's dead-letter exchange.
    public func reject(_ delivery: AMQPDelivery, requeue: Bool) {
        engine.submit { engine in engine.refuse(delivery, multiple: false, requeue: requeue) }
    }

    // MARK: Publishing

    /// Puts the channel in confirm mode: `publish` then waits for the broker's confirms.
    public func enableConfirms() async throws {
        let id = id
        try await engine.perform { engine in try engine.enableConfirms(id) }
    }

    /// Publishes messages in order. In confirm mode it returns once the broker has
    /// confirmed every one of them (persisted, for persistent messages on durable queues).
    /// - Throws: `.publishNacked` when the broker refused one, `.connectionLost` /
    ///   `.channelClosed` when the channel broke before all were confirmed (some may have
    ///   arrived: publish again, consumers drop duplicates).
    public func publish(_ messages: [AMQPOutgoingMessage], mandatory: Bool = false) async throws {
        let id = id
        let result: Result<Void, MessagingError> = await withCheckedContinuation { continuation in
            engine.submit { engine in
                engine.publish(id, messages, mandatory: mandatory) { result in continuation.resume(returning: result) }
            }
        }
        try result.get()
    }

    public func publish(_ message: AMQPOutgoingMessage, mandatory: Bool = false) async throws {
        try await publish([message], mandatory: mandatory)
    }

    /// Hands messages to the connection thread now, in call order, and returns a ticket
    /// to await their confirms later: a caller can keep publishing in order while earlier
    /// confirms are still on their way.
    /// - Parameters:
    ///   - published: runs on the connection's thread once the messages were handed to the
    ///     broker (or failed to be): what a consumer's `onArrival` forwards after that comes after
    ///     them.
    ///   - failed: runs on the connection's thread when the broker refused them or the channel
    ///     failed, before the ticket tells it: what a consumer's `onArrival` decides after that
    ///     can take it into account.
    public func publishInOrder(
        _ messages: [AMQPOutgoingMessage], mandatory: Bool = false, published: (@Sendable () -> Void)? = nil,
        failed: (@Sendable (MessagingError) -> Void)? = nil
    ) -> AMQPPublishTicket {
        let ticket = AMQPPublishTicket()
        let id = id
        engine.submit { engine in
            engine.publish(id, messages, mandatory: mandatory) { result in
                if case .failure(let error) = result { failed?(error) }
                ticket.fulfill(result)
            }
            published?()
        }
        return ticket
    }

    /// Closes the channel: its consumers finish, its unconfirmed publishes fail.
    public func close() async {
        let id = id
        _ = try? await engine.perform { engine in engine.closeChannel(id) }
    }
}

/// What the connection's thread does with a delivery as it arrives
/// (`AMQPChannel.consume(_:prefetch:exclusive:arguments:onArrival:)`).
public enum AMQPArrival: Sendable {
    /// Handed over to the consumer's sequence, in order with the other deliveries handed over.
    case handOver
    /// Acked there (with its neighbours, at the next flush) and never handed over.
    case ack
    /// Published there on `channel` (of the same connection, in confirm mode), before anything
    /// queued later; once the broker confirmed or refused them, or the channel failed, `settled`
    /// runs on the connection's thread (once) with the outcome, and the delivery is acked when it
    /// answers true. `settled` must be as quick as the arrival's decision. A channel of another
    /// connection: `settled` is told a failure, and the delivery is left unacked. Published
    /// mandatory: a message no queue takes (its queue deleted) comes back, and `settled` is told
    /// `publishNacked`, as for a refusal.
    case forward(
        [AMQPOutgoingMessage], on: AMQPChannel, settled: @Sendable (Result<Void, MessagingError>) -> Bool)
}

/// The confirms of messages handed over by `publishInOrder`.
public final class AMQPPublishTicket: Sendable {
    private struct State {
        var result: Result<Void, MessagingError>?
        var waiter: CheckedContinuation<Void, any Error>?
    }

    private let state = Mutex(State())

    func fulfill(_ result: Result<Void, MessagingError>) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: result.mapError { $0 as any Error })
    }

    /// Returns once the broker confirmed every message, or throws as `publish` does.
    public func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let ready = state.withLock { state -> Result<Void, MessagingError>? in
                if state.result == nil { state.waiter = continuation }
                return state.result
            }
            if let ready { continuation.resume(with: ready.mapError { $0 as any Error }) }
        }
    }
}

/// Deliveries of one consumer, as an `AsyncSequence` bounded by the prefetch.
public struct AMQPConsumer: AsyncSequence, Sendable {
    public typealias Element = AMQPDelivery
    public let channel: AMQPChannel
    public let tag: String
    public let queue: String
    let stream: AsyncThrowingStream<AMQPDelivery, any Error>
    let liveness: ChannelLiveness

    /// Whether `delivery` came on the channel's incarnation open now, so that it can still be
    /// settled. After a reconnect the stream may still hold deliveries of the lost connection:
    /// the broker gives those again (unacked), so they are to be skipped, not handled twice.
    /// Cheap: no hop to the connection thread.
    public func isCurrent(_ delivery: AMQPDelivery) -> Bool { liveness.isCurrent(delivery) }

    public func makeAsyncIterator() -> AsyncThrowingStream<AMQPDelivery, any Error>.AsyncIterator {
        stream.makeAsyncIterator()
    }

    /// Cancels the consumer once the queue has sent it all its credit allows, so that nothing is
    /// on its way at the cancel.
    ///
    /// What a quorum queue sends a consumer after its `basic.cancel` (the credit of its last acks)
    /// never reaches it: RabbitMQ 3.10 keeps it in the broker's channel and gives it back only at
    /// the channel's close, several at once in another order than they were queued. So the
    /// channel's acks are held back first (`withholdAcks`): the queue sends at most `prefetch`
    /// unacked deliveries and then nothing. Once all came, the consumer is cancelled and the acks
    /// go out (a cancelled consumer gets no new credit from them). "All came": the prefetch is
    /// used up (certain, with one consumer on the channel), or at two looks 10 ms apart no
    /// message was ready and nothing had come in between (likely: a message published in that
    /// moment can still be on its way). Each look follows a `basic.qos` round trip, which the
    /// broker answers after what it had sent before. At most `limit`, then cancelled as it is;
    /// at once when the consumer no longer consumes or the queue is gone.
    /// - Parameter prefetch: the consumer's prefetch (set again on the channel as the round trip).
    public func cancelAfterSpendingCredit(prefetch: UInt16, within limit: Duration = .seconds(2)) async throws {
        let engine = channel.engine
        var probe: AMQPChannel?
        do {
            try await channel.withholdAcks(true)
            let deadline = ContinuousClock.now + limit
            var quiet: (incarnation: UInt64, received: UInt64)?
            while ContinuousClock.now < deadline {
                try await channel.qos(prefetch: prefetch)
                let counts = try await channel.deliveryCounts(of: tag)
                guard counts.consuming, counts.unacked < UInt64(prefetch) else { break }
                if let quiet, quiet == (counts.incarnation, counts.received) { break }
                if probe == nil {
                    let id = try await engine.perform { engine in try engine.openChannel() }
                    probe = AMQPChannel(engine: engine, id: id)
                }
                guard let ready = try await probe?.declareQueuePassive(queue).messageCount else { break }
                quiet = ready == 0 ? (counts.incarnation, counts.received) : nil
                try await Task.sleep(for: .milliseconds(10))
            }
        } catch {
            // The channel or the connection failed, the queue is gone, or the caller was
            // cancelled: cancelled as it is (the channel's close gives back the rest).
        }
        await probe?.close()
        try await cancel()
        try? await channel.withholdAcks(false)
    }

    /// Stops the consumer. Deliveries already received stay unacked until the caller
    /// acks or nacks them, so a consumer can finish in-flight work before handing over.
    /// Deliveries that come between the cancel and its answer still meet the consumer's
    /// `onArrival`; the rest stay unacked: closing the channel gives every unacked delivery it
    /// received back, in order, at the head of the queue. What a quorum queue sent and the
    /// consumer never received comes back behind later messages (RabbitMQ 3.10): where order
    /// matters, `cancelAfterSpendingCredit`. (A nack or reject with requeue puts a message at
    /// the back of a quorum queue: where order matters, close the channel instead.)
    public func cancel() async throws {
        let id = channel.id
        let tag = tag
        try await channel.engine.perform { engine in try engine.cancel(id, tag: tag) }
    }
}
