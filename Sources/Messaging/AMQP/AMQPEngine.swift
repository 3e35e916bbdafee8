import Foundation
import HeraldModel
import Logging
import Synchronization

/// The connection thread: the only thread that touches the `RabbitMQConnection`.
///
/// Callers hand it jobs (closures) through a locked inbox and wake it through a
/// pipe; it runs them, reads frames (deliveries, confirms, closes) without
/// blocking, and sleeps in `poll` on the socket and the pipe. It re-connects
/// with backoff after the connection is lost and then restores what was
/// declared through it: exchanges, queues, bindings, channels with their qos
/// and confirm mode, and consumers under their old tags.
///
/// Everything but `inbox` and `status` is confined to the connection thread;
/// that is why the class is `@unchecked Sendable`.
final class AMQPEngine: @unchecked Sendable {
    typealias Job = @Sendable (AMQPEngine) -> Void

    struct Inbox {
        var jobs: [Job] = []
        var sleeping = false
        /// Asleep in a short poll (`quickPoll`): a job queued without a wake-up is found within
        /// it. Otherwise such a job wakes the thread too.
        var pollingQuickly = false
        var stopping = false
        /// The thread has ended: jobs run on `afterEnd` instead (they find no connection and
        /// no channels, and answer their callers with that).
        var ended = false
    }

    /// What other threads may read about the connection.
    struct Status: Sendable {
        var connected = false
        var reconnects = 0
        var lastError: String?
        /// The node connected to (or tried next): `host:port`.
        var endpoint = ""
        /// The engine stopped: it will never connect again.
        var stopped = false
        /// Callers of `whenConnected`, resumed (true) when the connection is up, or (false) when
        /// the engine stops, they are cancelled, or their time is up.
        var waiters: [UInt64: CheckedContinuation<Bool, Never>] = [:]
        var nextWaiter: UInt64 = 0

        /// Marks the connection up or down; returns the waiters to resume (outside the lock).
        mutating func set(connected: Bool) -> [CheckedContinuation<Bool, Never>] {
            self.connected = connected
            guard connected else { return [] }
            defer { waiters.removeAll() }
            return Array(waiters.values)
        }
    }

    let configuration: AMQPConfiguration
    let logger: Logger
    private let inbox = Mutex(Inbox())
    let status = Mutex(Status())
    private let wakeRead: Int32
    private let wakeWrite: Int32

    // Connection-thread state.
    private var wire: RabbitMQConnection?
    private var channels: [UInt16: ChannelRecord] = [:]
    private var nextChannelID: UInt16 = 2
    private var topology: [TopologyRecord] = []
    private var incarnations: UInt64 = 0
    private var failures = 0
    private var retryAt: ContinuousClock.Instant?
    /// The poll's timeout while acks may be coming (ms; 0: none): acks are queued without a
    /// wake-up (`submit(_:wake:)`) while the thread polls this briefly, and found by the poll's
    /// timeout instead. Set when deliveries go out or queued jobs are found after a timeout;
    /// doubled by each timeout that finds none, and off after `quickPollLongest`: a quiet
    /// connection sleeps as before, and an ack then wakes it. So an ack waits at most
    /// `quickPollLongest` ms for the thread.
    private var quickPoll: Int32 = 0
    private var wokeByTimeout = false
    static let quickPollFirst: Int32 = 2
    static let quickPollLongest: Int32 = 8
    /// Which of the configuration's endpoints is in use (or tried next); moves on when one is
    /// lost or cannot be reached.
    private var endpointIndex = 0
    private var endpoint: String {
        let node = configuration.aimed(at: endpointIndex)
        return "\(node.host):\(node.port)"
    }
    /// Events taken out of rabbitmq-c's queue to drop a closed channel's (`dropQueued`), kept
    /// in order for `pump`; of the connection in use (cleared when it is lost).
    private var deferred: [WireEvent] = []
    /// Unroutable messages RabbitMQ returned since the last line about them, and when that line
    /// went: a deleted queue returns every publish to it, one line each would flood the log.
    private var returnsUnlogged = 0
    private var returnsLoggedAt: ContinuousClock.Instant?
    /// Callers of `stop()`, resumed once the connection is closed (at once when it was already).
    private var stopWaiters: [CheckedContinuation<Void, Never>] = []
    /// Set by the thread as it ends, before `Inbox.ended`: what runs on `afterEnd` sees it.
    private var threadEnded = false
    /// Runs jobs submitted after the thread ended, one at a time, so that no caller waits for
    /// ever (an `openChannel` after `close()`, a second `close()`).
    private let afterEnd = DispatchQueue(label: "herald.amqp.ended")
    static let controlChannel: UInt16 = 1

    init(configuration: AMQPConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var fds: [Int32] = [0, 0]
        if pipe(&fds) != 0 { fatalError("pipe() failed: \(errno)") }
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// Connects on the calling thread, then starts the connection thread.
    func start() throws {
        // Each node once, in order: the first that answers is the one.
        var made: RabbitMQConnection?
        var lastError: (any Error)?
        for index in configuration.endpoints.indices {
            do {
                let opened = try RabbitMQConnection.open(configuration.aimed(at: index))
                try opened.openChannel(Self.controlChannel)
                made = opened
                endpointIndex = index
                break
            } catch {
                lastError = error
                if configuration.endpoints.count > 1 {
                    logger.warning(
                        "cannot connect to a RabbitMQ node; trying the next",
                        metadata: [
                            LogKey.amqpEndpoint:
                                "\(configuration.aimed(at: index).host):\(configuration.aimed(at: index).port)",
                            LogKey.error: "\(error)",
                        ])
                }
            }
        }
        guard let made else { throw lastError ?? MessagingError(.connectionFailed, "no RabbitMQ node to connect to") }
        wire = made
        let endpoint = endpoint
        let waiting = status.withLock {
            $0.endpoint = endpoint
            return $0.set(connected: true)
        }
        for waiter in waiting { waiter.resume(returning: true) }
        let thread = Thread { [self] in run() }
        thread.name = "herald.amqp"
        thread.start()
    }

    // MARK: Submitting work

    /// Queues a job for the connection thread.
    /// Waits until the connection is up (true at once if it is), without polling: the engine
    /// resumes its waiters when it connects. False when `timeout` passes first, the engine
    /// stops, or the caller is cancelled.
    func whenConnected(within timeout: Duration) async -> Bool {
        let number = status.withLock { status -> UInt64 in
            defer { status.nextWaiter &+= 1 }
            return status.nextWaiter
        }
        @Sendable func giveUp() {
            let waiter = status.withLock { $0.waiters.removeValue(forKey: number) }
            waiter?.resume(returning: false)
        }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let now: Bool? = self.status.withLock { status in
                            if status.connected { return true }
                            if status.stopped || Task.isCancelled { return false }
                            status.waiters[number] = continuation
                            return nil
                        }
                        if let now { continuation.resume(returning: now) }
                    }
                } onCancel: {
                    giveUp()
                }
            }
            group.addTask {
                // The time limit: ends the wait above (cancelled when that one ends first).
                try? await Task.sleep(for: timeout)
                giveUp()
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Queues `job` for the connection thread.
    /// - Parameter wake: wake the thread if it sleeps. An ack need not while deliveries flow:
    ///   the thread then sleeps in a short poll (`quickPoll`, at most `quickPollLongest` ms) and
    ///   finds it, and acks that wait together go out as one `basic.ack(multiple)`. In a long
    ///   sleep it is woken all the same.
    func submit(_ job: @escaping Job, wake: Bool = true) {
        let (signalNeeded, ended) = inbox.withLock { inbox -> (Bool, Bool) in
            if inbox.ended { return (false, true) }
            inbox.jobs.append(job)
            return (inbox.sleeping && (wake || !inbox.pollingQuickly), false)
        }
        if ended { afterEnd.async { job(self) } }
        if signalNeeded { signal() }
    }

    /// Runs `body` on the connection thread and returns its result.
    func perform<T: Sendable>(_ body: @escaping @Sendable (AMQPEngine) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit { engine in continuation.resume(with: Result { try body(engine) }) }
        }
    }

    /// Stops the thread after it closes the connection; consumers finish, pending confirms fail.
    func stop() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            submit { engine in
                if engine.threadEnded {
                    continuation.resume()
                } else {
                    engine.stopWaiters.append(continuation)
                }
            }
            inbox.withLock { $0.stopping = true }
            signal()
        }
    }

    private func signal() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    // MARK: The loop

    private func run() {
        // Swapped with the inbox's jobs, emptied: nothing is allocated or copied under its lock.
        var jobs: [Job] = []
        while true {
            let stopping = inbox.withLock { inbox -> Bool in
                swap(&inbox.jobs, &jobs)
                return inbox.stopping
            }
            // Jobs found by a poll that timed out were queued without a wake-up (acks): more
            // are likely, so the short poll goes on.
            if wokeByTimeout && !jobs.isEmpty { quickPoll = Self.quickPollFirst }
            wokeByTimeout = false
            // What this wake-up writes (publishes, acks) leaves together, before the thread sleeps.
            wire?.cork()
            for job in jobs { job(self) }
            jobs.removeAll(keepingCapacity: true)
            flushAcks()
            if stopping, !stopWaiters.isEmpty {
                shutdown()
                return
            }
            if wire == nil { reconnectIfDue() }
            if wire != nil { pump(budget: 512) }
            wire?.uncork()
            sleepUntilWork()
        }
    }

    private func sleepUntilWork() {
        if !deferred.isEmpty { return }
        if let wire, wire.hasBufferedInput { return }
        // Wake at least every 100 ms so heartbeats go out on time and reconnects happen.
        var timeout: Int32 = 100
        if wire == nil, let retryAt {
            let wait = retryAt - ContinuousClock.now
            timeout = Int32(max(0, min(100, wait.seconds * 1000)))
        }
        if quickPoll > 0 { timeout = min(timeout, quickPoll) }
        let quickly = timeout <= Self.quickPollLongest
        let goToSleep = inbox.withLock { inbox -> Bool in
            if !inbox.jobs.isEmpty || inbox.stopping { return false }
            inbox.sleeping = true
            inbox.pollingQuickly = quickly
            return true
        }
        guard goToSleep else { return }
        var descriptors = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        if let wire { descriptors.append(pollfd(fd: wire.socketDescriptor, events: Int16(POLLIN), revents: 0)) }
        let ready = poll(&descriptors, nfds_t(descriptors.count), timeout)
        inbox.withLock { $0.sleeping = false }
        wokeByTimeout = ready == 0
        if ready == 0 && quickPoll > 0 { quickPoll = quickPoll >= Self.quickPollLongest ? 0 : quickPoll * 2 }
        var drain = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &drain, drain.count) > 0 {}
    }

    /// Reads and handles up to `budget` events without blocking.
    private func pump(budget: Int) {
        guard let wire else { return }
        do {
            for _ in 0..<budget {
                guard let event = try nextPending(on: wire, readingSocket: true) else { return }
                handle(event)
                if self.wire == nil { return }
            }
        } catch {
            connectionLost(error)
        }
    }

    /// Handles every complete frame already buffered (used after an RPC that may have queued deliveries).
    private func pumpQueued() {
        guard let wire else { return }
        do {
            while let event = try nextPending(on: wire, readingSocket: false) {
                handle(event)
                if self.wire == nil { return }
            }
        } catch {
            connectionLost(error)
        }
    }

    /// The oldest event not handled yet: what `dropQueued` kept comes before anything still in
    /// rabbitmq-c (handling one event can keep more there: each is taken from there first).
    /// - Parameter readingSocket: read the socket too, or only what is buffered already.
    private func nextPending(on wire: RabbitMQConnection, readingSocket: Bool) throws -> WireEvent? {
        if !deferred.isEmpty { return deferred.removeFirst() }
        guard readingSocket || wire.hasQueuedFrames else { return nil }
        return try wire.nextEvent()
    }

    private func handle(_ event: WireEvent) {
        switch event {
        case .delivery(var delivery):
            guard let channel = channels[delivery.channelID] else { return }
            channel.lastDeliveryTag = max(channel.lastDeliveryTag, delivery.deliveryTag)
            delivery = AMQPDelivery(
                body: delivery.body,
                bodyLength: delivery.bodyLength,
                exchange: delivery.exchange,
                routingKey: delivery.routingKey,
                redelivered: delivery.redelivered,
                deliveryTag: delivery.deliveryTag,
                consumerTag: delivery.consumerTag,
                properties: delivery.properties,
                channelID: delivery.channelID,
                incarnation: channel.incarnation
            )
            guard let consumer = channel.consumers[delivery.consumerTag] else {
                // No consumer for it any more (it came between basic.cancel and cancel-ok): left
                // unacked, the broker gives it back when the channel closes. (A reject would put
                // it at the back of a quorum queue, behind messages that came after it; several
                // given back at a close may come back in another order: see
                // `AMQPConsumer.cancelAfterSpendingCredit`.)
                return
            }
            act(on: consumer.onArrival?(delivery) ?? .handOver, delivery, channel: channel) {
                consumer.continuation.yield(delivery)
            }

            // Its ack will be queued without a wake-up (or is queued already): poll briefly for it.
            quickPoll = Self.quickPollFirst
        case .confirm(let channelID, let tag, let multiple, let ack):
            channels[channelID]?.confirm(tag: tag, multiple: multiple, ack: ack)
            // A confirm may have settled a forwarded delivery, whose ack is now queued: poll briefly for it.
            quickPoll = Self.quickPollFirst
        case .returned(let channelID, let code, let text, let exchange, let routingKey, let sequence):
            // The first of a spell, then at most one line every 10 s with how many came meanwhile.
            returnsUnlogged += 1
            let now = ContinuousClock.now
            if returnsLoggedAt.map({ now - $0 >= .seconds(10) }) ?? true {
                logger.warning(
                    "RabbitMQ returned unroutable messages",
                    metadata: [
                        LogKey.amqpChannel: "\(channelID)", LogKey.amqpExchange: "\(exchange)",
                        LogKey.amqpRoutingKey: "\(routingKey)",
                        LogKey.amqpReply: "\(code) \(text)", LogKey.amqpMessages: "\(returnsUnlogged)",
                    ])
                returnsUnlogged = 0
                returnsLoggedAt = now
            }
            channels[channelID]?.returned(
                sequence,
                MessagingError(
                    .publishNacked, "message to '\(exchange)' with routing key '\(routingKey)' was unroutable",
                    replyCode: code, replyText: text))
        case .channelClosed(let channelID, let code, let text):
            let error = MessagingError(
                .channelClosed, "RabbitMQ closed channel \(channelID)", replyCode: code, replyText: text)
            logger.warning(
                "channel closed by RabbitMQ", metadata: [LogKey.amqpChannel: "\(channelID)", LogKey.error: "\(error)"])
            reopen(channelID, after: error)
        case .consumerCancelled(let channelID, let tag):
            if let consumer = channels[channelID]?.consumers.removeValue(forKey: tag) {
                logger.warning(
                    "RabbitMQ cancelled a consumer",
                    metadata: [LogKey.amqpConsumer: "\(tag)", LogKey.amqpQueue: "\(consumer.queue)"])
                consumer.continuation.finish(
                    throwing: MessagingError(
                        .closed, "RabbitMQ cancelled the consumer on '\(consumer.queue)' (was the queue deleted?)"))
            }
        case .blocked(let reason):
            logger.warning("RabbitMQ blocked publishing on this connection", metadata: [LogKey.amqpReason: "\(reason)"])
        case .unblocked:
            logger.info("RabbitMQ unblocked publishing on this connection")
        }
    }

    /// Does what a consumer's `onArrival` answered for a delivery; `handOver` hands it over.
    private func act(
        on arrival: AMQPArrival, _ delivery: AMQPDelivery, channel: ChannelRecord, handOver: () -> Void
    ) {
        switch arrival {
        case .handOver:
            handOver()
        case .ack:
            // Acked here, with its neighbours at the next flush: no task woken for it.
            channel.acks.pending.append(delivery.deliveryTag)
        case .forward(let messages, let target, let settled):
            guard target.engine === self else {
                // Not a channel of this connection: told as a failed publish, left unacked.
                _ = settled(
                    .failure(
                        MessagingError(.protocolError, "a delivery was forwarded to a channel of another connection")))
                return
            }
            // The completion runs on this thread: when confirmed, or at once when the publish fails.
            publish(target.id, messages, mandatory: true) { [self, delivery] result in
                if settled(result) { ack(delivery, multiple: false) }
            }
        }
    }

    // MARK: Operations (connection thread only)

    func connected() throws -> RabbitMQConnection {
        if threadEnded { throw MessagingError(.closed, "the AMQP connection was closed") }
        guard let wire else {
            throw MessagingError(
                .notConnected, "not connected to RabbitMQ at \(endpoint); reconnecting",
                replyText: status.withLock { $0.lastError })
        }
        return wire
    }

    /// Runs an operation on the wire and turns broker closes into recovery:
    /// a closed channel is re-opened, a lost connection is re-made later.
    /// - Parameter failed: runs when `body` throws a `MessagingError`, before the channel or
    ///   connection is recovered (a consumer whose basic.consume was refused is forgotten there,
    ///   or the channel's reopen would ask for it again, fail again, and take the whole connection
    ///   down).
    func guarded<T>(
        _ channelID: UInt16, failed: () -> Void = {}, _ body: (RabbitMQConnection) throws -> T
    ) throws -> T {
        let wire = try connected()
        if let record = channels[channelID], !record.isOpen {
            // Closed by the broker and not open again yet: a method on it now would close the connection.
            throw MessagingError(.notConnected, "channel \(channelID) is being re-opened")
        }
        flushAcks()
        do {
            let result = try body(wire)
            return result
        } catch let error as MessagingError {
            failed()
            switch error.code {
            case .channelClosed:
                reopen(channelID, after: error)
            case .connectionClosed, .connectionLost:
                connectionLost(error)
            default:
                break
            }
            throw error
        }
    }

    /// Moves the next channel number (tests: a connection's long life without opening 65,000 channels).
    func skipChannelNumbers(to number: UInt16) { nextChannelID = max(2, number) }

    func openChannel() throws -> UInt16 {
        // Numbers wrap after 65535 over a long-lived connection (short-lived channels come and go
        // all the time): one still open is passed over (a second channel.open of it is a
        // connection error, 504). Channel 1 is the engine's own.
        var id = nextChannelID
        var tried = 0
        while channels[id] != nil || id < 2 {
            tried += 1
            guard tried < Int(UInt16.max) else {
                throw MessagingError(.protocolError, "every AMQP channel number of this connection is in use")
            }
            id = id == UInt16.max ? 2 : id + 1
        }
        nextChannelID = id == UInt16.max ? 2 : id + 1
        let record = ChannelRecord(id: id)
        try guarded(id) { wire in try wire.openChannel(id) }
        incarnations += 1
        record.incarnation = incarnations
        record.markOpen(true)
        channels[id] = record
        return id
    }

    func closeChannel(_ id: UInt16) {
        channels[id]?.acksWithheld = false
        flushAcks()  // acks recorded before the close go out first (withheld ones too)
        guard let record = channels.removeValue(forKey: id) else { return }
        let wasOpen = record.isOpen
        record.markOpen(false)
        record.failAll(MessagingError(.closed, "channel \(id) was closed"))
        for consumer in record.consumers.values { consumer.continuation.finish() }
        if wasOpen { try? wire?.closeChannel(id) }
    }

    func record(_ id: UInt16) throws -> ChannelRecord {
        guard let record = channels[id] else { throw MessagingError(.closed, "channel \(id) is closed") }
        return record
    }

    func remember(_ item: TopologyRecord) {
        topology.removeAll { $0.replaces(item) }
        topology.append(item)
    }

    func forget(where matches: (TopologyRecord) -> Bool) {
        topology.removeAll(where: matches)
    }

    func setQoS(_ id: UInt16, prefetch: UInt16) throws {
        let record = try record(id)
        try guarded(id) { wire in try wire.qos(id, prefetch: prefetch) }
        record.prefetch = prefetch
        // What came on the channel before qos-ok is handled before the caller goes on
        // (`AMQPChannel.qos`: a barrier).
        pumpQueued()
    }

    func enableConfirms(_ id: UInt16) throws {
        let record = try record(id)
        guard !record.confirmMode else { return }
        try guarded(id) { wire in try wire.confirmSelect(id) }
        record.confirmMode = true
        record.nextSequence = 1
    }

    func consume(
        _ id: UInt16, queue: String, tag: String, exclusive: Bool, arguments: AMQPTable,
        continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation,
        onArrival: (@Sendable (AMQPDelivery) -> AMQPArrival)? = nil
    ) throws -> ChannelLiveness {
        let record = try record(id)
        let consumer = ConsumerRecord(
            queue: queue, tag: tag, exclusive: exclusive, arguments: arguments, continuation: continuation,
            onArrival: onArrival)
        // Registered before basic.consume so deliveries that follow consume-ok find it.
        record.consumers[tag] = consumer
        do {
            try guarded(id, failed: { record.consumers[tag] = nil }) { wire in
                try wire.consume(id, queue: queue, consumerTag: tag, exclusive: exclusive, arguments: arguments)
            }
        } catch {
            record.consumers[tag] = nil
            throw error
        }
        return record.liveness
    }

    /// Cancels a consumer; deliveries already read still reach it, then it finishes. Deliveries
    /// still on their way stay unacked until the channel closes: close it after a cancel.
    func cancel(_ id: UInt16, tag: String) throws {
        guard let record = channels[id], let consumer = record.consumers[tag] else { return }
        // Forgotten and finished whatever the cancel's outcome: a cancel that failed with its
        // channel or connection has ended the consumer too, and one left registered would be
        // consumed again by the recovery, its stream never finished (its owner waits on it).
        defer {
            record.consumers[tag] = nil
            consumer.continuation.finish()
        }
        if wire != nil && record.isOpen {
            try guarded(id, failed: { record.consumers[tag] = nil }) { wire in
                try wire.cancel(id, consumerTag: tag)
            }
            pumpQueued()
        }
    }

    /// Holds the channel's acks back (recorded, not sent) until released or the channel closes.
    func withholdAcks(_ id: UInt16, _ withhold: Bool) throws {
        let record = try record(id)
        record.acksWithheld = withhold
        if !withhold { flushAcks() }
    }

    /// What the channel's current incarnation received, and how many of those the broker has no
    /// ack for yet (withheld or not yet sent ones included); whether `consumer` still consumes.
    func deliveryCounts(_ id: UInt16, consumer: String) throws -> AMQPDeliveryCounts {
        let record = try record(id)
        let acked = record.acks.sentCount
        return AMQPDeliveryCounts(
            incarnation: record.incarnation, received: record.lastDeliveryTag,
            unacked: record.lastDeliveryTag > acked ? record.lastDeliveryTag - acked : 0,
            consuming: record.isOpen && record.consumers[consumer] != nil)
    }

    /// Whether a delivery may still be settled: its channel incarnation is open.
    func canSettle(_ delivery: AMQPDelivery) -> Bool {
        guard wire != nil, let record = channels[delivery.channelID] else { return false }
        return record.isOpen && record.incarnation == delivery.incarnation
    }

    /// The channel record a delivery may still be settled on, or `nil` when that
    /// channel closed since (the broker has requeued the message already).
    private func liveRecord(for delivery: AMQPDelivery) -> ChannelRecord? {
        guard wire != nil, let record = channels[delivery.channelID], record.isOpen,
            record.incarnation == delivery.incarnation
        else {
            logger.debug(
                "skipping settlement of a delivery from a closed channel",
                metadata: [LogKey.amqpDeliveryTag: "\(delivery.deliveryTag)"])
            return nil
        }
        return record
    }

    /// Records an ack; `flushAcks` sends it, coalesced with its neighbours.
    func ack(_ delivery: AMQPDelivery, multiple: Bool) {
        guard let record = liveRecord(for: delivery) else { return }
        if multiple {
            flushAcks(includingWithheld: true)
            guard let wire else { return }
            do {
                try wire.ack(record.id, tag: delivery.deliveryTag, multiple: true)
                record.acks.settledAll(through: delivery.deliveryTag)
            } catch {
                connectionLost(error)
            }
        } else {
            record.acks.pending.append(delivery.deliveryTag)
        }
    }

    /// Sends a nack or reject at once (after any acks recorded before it).
    func refuse(_ delivery: AMQPDelivery, multiple: Bool, requeue: Bool) {
        guard let record = liveRecord(for: delivery) else { return }
        flushAcks(includingWithheld: true)
        guard let wire else { return }
        do {
            if multiple {
                try wire.nack(record.id, tag: delivery.deliveryTag, multiple: true, requeue: requeue)
                record.acks.settledAll(through: delivery.deliveryTag)
            } else {
                try wire.reject(record.id, tag: delivery.deliveryTag, requeue: requeue)
                record.acks.settled(delivery.deliveryTag)
            }
        } catch {
            connectionLost(error)
        }
    }

    /// Sends the acks recorded since the last flush: a contiguous run of settled
    /// delivery tags goes out as one `basic.ack(multiple)` naming the highest
    /// acked tag (RabbitMQ requires that tag to be outstanding, and it is); acks
    /// above a gap go out one by one.
    /// Withheld acks (`withholdAcks`) only `includingWithheld`: before a multiple ack or a
    /// refusal, which would otherwise settle them otherwise or drop them.
    private func flushAcks(includingWithheld: Bool = false) {
        guard let wire else { return }
        for record in channels.values
        where !record.acks.pending.isEmpty && (includingWithheld || !record.acksWithheld) {
            guard record.isOpen else {
                record.acks.pending.removeAll()
                continue
            }
            let (multipleThrough, singles) = record.acks.plan()
            do {
                if let tag = multipleThrough { try wire.ack(record.id, tag: tag, multiple: true) }
                for tag in singles { try wire.ack(record.id, tag: tag, multiple: false) }
            } catch {
                connectionLost(error)
                return
            }
        }
    }

    /// Publishes messages; with confirms on, `completion` runs once every one is confirmed.
    func publish(
        _ id: UInt16, _ messages: [AMQPOutgoingMessage], mandatory: Bool,
        completion: @escaping @Sendable (Result<Void, MessagingError>) -> Void
    ) {
        do {
            let record = try record(id)
            guard record.isOpen else { throw MessagingError(.notConnected, "channel \(id) is being re-opened") }
            let first = record.nextSequence
            try guarded(id) { wire in
                for message in messages {
                    if mandatory && record.confirmMode {
                        // Numbered, so that a return is charged to this publish, not the next confirm.
                        var stamped = message
                        stamped.properties.headers[RabbitMQConnection.publishSequenceHeader] = .int(
                            Int64(clamping: record.nextSequence))
                        try wire.publish(id, stamped, mandatory: true)
                    } else {
                        try wire.publish(id, message, mandatory: mandatory)
                    }
                    record.nextSequence += 1
                }
            }
            if record.confirmMode && !messages.isEmpty {
                record.waiters.append(
                    ConfirmWaiter(first: first, last: record.nextSequence - 1, completion: completion))
            } else {
                completion(.success(()))
            }
        } catch let error as MessagingError {
            completion(.failure(error))
        } catch {
            completion(.failure(MessagingError(.protocolError, "\(error)")))
        }
    }

    // MARK: Recovery

    private func reopen(_ id: UInt16, after error: MessagingError) {
        if id == Self.controlChannel {
            do { try wire?.openChannel(id) } catch { connectionLost(error) }
            return
        }
        guard let record = channels[id] else { return }
        record.markOpen(false)
        record.failAll(error)
        guard let wire else { return }
        do {
            try restore(record, on: wire)
        } catch {
            connectionLost(error)
        }
    }

    /// Takes what rabbitmq-c queued while it waited for RPC answers (it queues every other frame)
    /// out of its queue once channel `id` is open again: what came on that channel until its
    /// open-ok belongs to the incarnation the broker closed (RabbitMQ still sends deliveries
    /// between its channel.close and our close-ok; it gives them back), and handled later it
    /// would pass for the new one's, acked by the old one's tags (406, unknown delivery tag: the
    /// channel closed again, and again). Dropped; the rest is kept, in order, for `pump`.
    private func dropQueued(for id: UInt16, on wire: RabbitMQConnection) throws {
        // Kept earlier, they are as old.
        deferred.removeAll { $0.channelID == id }
        // Each call takes one frame: the queue ends (the bound only guards against a surprise).
        for _ in 0..<(1 << 20) {
            guard wire.hasQueuedFrames else { return }
            guard let event = try wire.nextEvent() else { continue }
            guard event.channelID != id else { continue }
            if case .channelClosed(let other, _, _) = event, let record = channels[other] {
                // Its close-ok went out as it was read: nothing may be sent on it until it is
                // opened again, when this event is handled.
                record.markOpen(false)
            }
            deferred.append(event)
        }
    }

    /// Opens a channel again with its qos, confirm mode and consumers. A consumer the broker
    /// refuses now (its queue deleted, read access withdrawn: the broker closes the channel)
    /// ends with that refusal, and the channel is opened again for the others: one refused
    /// consumer never takes the connection down (and with it every other channel), at a reopen
    /// or on every reconnect attempt.
    private func restore(_ record: ChannelRecord, on wire: RabbitMQConnection) throws {
        // Each pass either restores every consumer or ends one: at most one pass per consumer more.
        while true {
            try wire.openChannel(record.id)
            try dropQueued(for: record.id, on: wire)
            incarnations += 1
            record.incarnation = incarnations
            record.nextSequence = 1
            record.acks = AckTracker()
            // Acks stay withheld if they were (the caller's intent): the consumer restored below
            // starts with fresh credit, and the caller sees the new incarnation in `deliveryCounts`.
            record.lastDeliveryTag = 0
            if let prefetch = record.prefetch { try wire.qos(record.id, prefetch: prefetch) }
            if record.confirmMode { try wire.confirmSelect(record.id) }
            var refused: (consumer: ConsumerRecord, error: MessagingError)?
            for consumer in record.consumers.values {
                do {
                    try wire.consume(
                        record.id, queue: consumer.queue, consumerTag: consumer.tag, exclusive: consumer.exclusive,
                        arguments: consumer.arguments)
                } catch let error as MessagingError where error.code == .channelClosed {
                    refused = (consumer, error)
                    break
                }
            }
            guard let refused else { break }
            // What the consumers restored before the refusal received came on the closed
            // incarnation: dropped after the next open.
            record.consumers[refused.consumer.tag] = nil
            logger.warning(
                "RabbitMQ refused a consumer while its channel was restored; it ends, the channel's others go on",
                metadata: [
                    LogKey.amqpChannel: "\(record.id)", LogKey.amqpConsumer: "\(refused.consumer.tag)",
                    LogKey.amqpQueue: "\(refused.consumer.queue)", LogKey.error: "\(refused.error)",
                ])
            refused.consumer.continuation.finish(
                throwing: MessagingError(
                    .closed, "RabbitMQ refused the consumer on '\(refused.consumer.queue)' when it was restored",
                    replyCode: refused.error.replyCode, replyText: refused.error.replyText))
        }
        record.markOpen(true)
    }

    private func connectionLost(_ error: any Error) {
        guard wire != nil else { return }
        logger.warning(
            "lost the connection to RabbitMQ; reconnecting",
            metadata: [LogKey.amqpEndpoint: "\(endpoint)", LogKey.error: "\(error)"])
        // What this wake-up corked goes out before the close: a socket closed with unread input
        // is reset, and what it still held (acks) would be lost.
        wire?.uncork()
        wire = nil  // the socket is closed with the object
        deferred.removeAll()  // of the lost connection: its channels' incarnations end with it
        // The node is likely gone: the next one first (oslo.messaging does the same).
        endpointIndex += 1
        let lost = (error as? MessagingError) ?? MessagingError(.connectionLost, "\(error)")
        for record in channels.values {
            record.markOpen(false)
            record.failAll(lost)
        }
        status.withLock {
            $0.connected = false
            $0.lastError = "\(error)"
        }
        failures = 0
        retryAt = ContinuousClock.now
    }

    private func reconnectIfDue() {
        let now = ContinuousClock.now
        if let retryAt, now < retryAt { return }
        do {
            let made = try RabbitMQConnection.open(configuration.aimed(at: endpointIndex))
            try made.openChannel(Self.controlChannel)
            // Exchanges, then queues, then bindings: a queue declared again since its binding was
            // remembered comes before it.
            let replay =
                topology.filter(\.isExchange) + topology.filter(\.isQueue)
                + topology.filter { !$0.isExchange && !$0.isQueue }
            for item in replay {
                do {
                    try item.apply(on: made, channel: Self.controlChannel)
                } catch let error as MessagingError where error.code == .channelClosed {
                    // Refused now (declared since with other arguments, access withdrawn, its
                    // queue's node down): failing the reconnect would fail every attempt, and
                    // the connection never come back. Skipped this time, still remembered (the
                    // next reconnect tries it again); whoever needs it hears the refusal.
                    logger.warning(
                        "RabbitMQ refused a remembered declaration on reconnect; skipped",
                        metadata: [LogKey.amqpTopology: "\(item.summary)", LogKey.error: "\(error)"])
                    try made.openChannel(Self.controlChannel)
                }
            }
            for record in channels.values.sorted(by: { $0.id < $1.id }) { try restore(record, on: made) }
            wire = made
            failures = 0
            retryAt = nil
            let endpoint = endpoint
            let waiting = status.withLock {
                $0.reconnects += 1
                $0.endpoint = endpoint
                return $0.set(connected: true)
            }
            for waiter in waiting { waiter.resume(returning: true) }
            logger.info(
                "reconnected to RabbitMQ",
                metadata: [LogKey.amqpEndpoint: "\(endpoint)", LogKey.amqpChannels: "\(channels.count)"])
        } catch {
            // Taken from the connection that failed to come up (it is closed with `made`).
            deferred.removeAll()
            failures += 1
            let tried = endpoint
            endpointIndex += 1
            retryAt =
                now
                + Backoff(base: configuration.reconnectBaseDelay, cap: configuration.reconnectMaxDelay, floor: 0.5)
                .delay(attempt: failures)
            status.withLock { $0.lastError = "\(error)" }
            if failures == 1 || failures % 10 == 0 {
                logger.warning(
                    "cannot reconnect to RabbitMQ yet",
                    metadata: [
                        LogKey.amqpEndpoint: "\(tried)", LogKey.amqpFailures: "\(failures)", LogKey.error: "\(error)",
                    ])
            }
        }
    }

    private func shutdown() {
        // Withheld acks go out before the connection closes, as at a channel's close.
        flushAcks(includingWithheld: true)
        let closed = MessagingError(.closed, "the AMQP connection was closed")
        for record in channels.values {
            record.markOpen(false)
            record.failAll(closed)
            for consumer in record.consumers.values { consumer.continuation.finish() }
        }
        channels.removeAll()
        wire?.close()
        wire = nil
        let waiting = status.withLock { status in
            status.connected = false
            status.stopped = true
            defer { status.waiters.removeAll() }
            return Array(status.waiters.values)
        }
        for waiter in waiting { waiter.resume(returning: false) }
        for waiter in stopWaiters { waiter.resume() }
        stopWaiters = []
        // Jobs submitted after stop, now and from now on, run on `afterEnd`: no caller waits
        // for ever. The thread touches nothing after this.
        threadEnded = true
        let late = inbox.withLock { inbox -> [Job] in
            inbox.ended = true
            defer { inbox.jobs.removeAll() }
            return inbox.jobs
        }
        for job in late { afterEnd.async { job(self) } }
    }
}

/// The incarnation a channel is open in now (0: not open), readable from any thread: a
/// consumer tells a delivery of an earlier incarnation (before a reconnect) without a hop to
/// the connection thread.
final class ChannelLiveness: Sendable {
    private let current = Atomic<UInt64>(0)

    func set(_ incarnation: UInt64) { current.store(incarnation, ordering: .releasing) }

    /// Whether `delivery` came on the incarnation open now (one still open can be settled).
    func isCurrent(_ delivery: AMQPDelivery) -> Bool {
        delivery.incarnation != 0 && current.load(ordering: .acquiring) == delivery.incarnation
    }
}

/// A channel's state on the connection thread.
final class ChannelRecord {
    let id: UInt16
    var incarnation: UInt64 = 0
    private(set) var isOpen = false
    /// `isOpen` and `incarnation` as other threads may read them.
    let liveness = ChannelLiveness()
    var prefetch: UInt16?
    var confirmMode = false
    var nextSequence: UInt64 = 1
    var waiters: [ConfirmWaiter] = []
    var consumers: [String: ConsumerRecord] = [:]
    var acks = AckTracker()
    /// `AMQPChannel.withholdAcks`: acks are recorded, not sent.
    var acksWithheld = false
    /// The highest delivery tag received on this incarnation.
    var lastDeliveryTag: UInt64 = 0
    /// Set by a `basic.return` that names no publish; the next confirm's waiter fails with it.
    var returnedPending: MessagingError?
    /// Publishes returned, by number: each one's own confirm fails with its error (RabbitMQ may
    /// send other publishes' confirms between a return and the returned one's).
    private var returnedSequences: [UInt64: MessagingError] = [:]
    /// Sequence numbers at or below this are confirmed; single confirms above it wait in `confirmedAbove`.
    private var confirmedThrough: UInt64 = 0
    private var confirmedAbove: Set<UInt64> = []

    init(id: UInt16) {
        self.id = id
    }

    /// Marks the channel open (in its current incarnation) or not.
    func markOpen(_ open: Bool) {
        isOpen = open
        liveness.set(open ? incarnation : 0)
    }

    /// A publish came back (`sequence`: its number, when it was stamped with one).
    func returned(_ sequence: UInt64?, _ error: MessagingError) {
        if let sequence, sequence > confirmedThrough, sequence < nextSequence {
            returnedSequences[sequence] = error
        } else {
            returnedPending = error
        }
    }

    func confirm(tag: UInt64, multiple: Bool, ack: Bool) {
        var error: MessagingError? =
            ack ? nil : MessagingError(.publishNacked, "RabbitMQ refused a published message (basic.nack)")
        if let returned = returnedPending {
            error = returned
            returnedPending = nil
        }
        if multiple {
            guard tag > confirmedThrough else { return }
            var sequence = confirmedThrough + 1
            while sequence <= tag {
                if !confirmedAbove.contains(sequence) { settle(sequence, error) }
                sequence += 1
            }
            confirmedAbove = confirmedAbove.filter { $0 > tag }
            confirmedThrough = tag
        } else {
            guard tag > confirmedThrough, !confirmedAbove.contains(tag) else { return }
            settle(tag, error)
            if tag == confirmedThrough + 1 {
                confirmedThrough = tag
                while confirmedAbove.remove(confirmedThrough + 1) != nil { confirmedThrough += 1 }
            } else {
                confirmedAbove.insert(tag)
            }
        }
        while let first = waiters.first, first.remaining == 0 {
            waiters.removeFirst()
            first.finish()
        }
    }

    private func settle(_ sequence: UInt64, _ error: MessagingError?) {
        let error = returnedSequences.isEmpty ? error : returnedSequences.removeValue(forKey: sequence) ?? error
        for waiter in waiters where waiter.first <= sequence && sequence <= waiter.last {
            waiter.remaining -= 1
            if let error, waiter.error == nil { waiter.error = error }
            return
        }
    }

    /// Fails every publish waiting for a confirm and restarts sequence numbering
    /// (a re-opened channel counts from 1 again).
    func failAll(_ error: MessagingError) {
        let pending = waiters
        waiters.removeAll()
        confirmedThrough = 0
        confirmedAbove.removeAll()
        returnedPending = nil
        returnedSequences.removeAll()
        for waiter in pending {
            waiter.error = error
            waiter.finish()
        }
    }
}

/// Which delivery tags of one channel incarnation are settled, so acks can be coalesced.
///
/// Delivery tags on a channel run 1, 2, 3, ...; every tag at or below
/// `settledThrough` is acked, nacked or rejected, and `settledAbove` holds the
/// settled tags beyond the first gap.
struct AckTracker {
    var pending: [UInt64] = []
    private(set) var settledThrough: UInt64 = 0
    private var settledAbove: Set<UInt64> = []

    mutating func settled(_ tag: UInt64) {
        guard tag > settledThrough else { return }
        settledAbove.insert(tag)
        advance()
    }

    mutating func settledAll(through tag: UInt64) {
        guard tag > settledThrough else { return }
        settledThrough = tag
        settledAbove = settledAbove.filter { $0 > tag }
        advance()
    }

    /// How many tags were settled toward the broker (sent, or settled by a nack or reject).
    var sentCount: UInt64 { settledThrough + UInt64(settledAbove.count) }

    /// Consumes `pending`: returns the tag for one multiple ack (if any) and the tags to ack singly.
    mutating func plan() -> (multipleThrough: UInt64?, singles: [UInt64]) {
        let tags = pending.sorted()
        pending.removeAll(keepingCapacity: true)
        let fresh = tags.filter { $0 > settledThrough && !settledAbove.contains($0) }
        for tag in fresh { settledAbove.insert(tag) }
        advance()
        let covered = fresh.last { $0 <= settledThrough }
        let singles = fresh.filter { $0 > settledThrough }
        return (covered, singles)
    }

    private mutating func advance() {
        while settledAbove.remove(settledThrough + 1) != nil { settledThrough += 1 }
    }
}

final class ConfirmWaiter {
    let first: UInt64
    let last: UInt64
    var remaining: Int
    var error: MessagingError?
    private let completion: @Sendable (Result<Void, MessagingError>) -> Void

    init(first: UInt64, last: UInt64, completion: @escaping @Sendable (Result<Void, MessagingError>) -> Void) {
        self.first = first
        self.last = last
        self.remaining = Int(last - first + 1)
        self.completion = completion
    }

    func finish() {
        if let error { completion(.failure(error)) } else { completion(.success(())) }
    }
}

final class ConsumerRecord {
    let queue: String
    let tag: String
    let exclusive: Bool
    let arguments: AMQPTable
    let continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation
    /// See `AMQPChannel.consume(_:prefetch:exclusive:arguments:onArrival:)`.
    let onArrival: (@Sendable (AMQPDelivery) -> AMQPArrival)?

    init(
        queue: String, tag: String, exclusive: Bool, arguments: AMQPTable,
        continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation,
        onArrival: (@Sendable (AMQPDelivery) -> AMQPArrival)?
    ) {
        self.queue = queue
        self.tag = tag
        self.exclusive = exclusive
        self.arguments = arguments
        self.continuation = continuation
        self.onArrival = onArrival
    }
}

/// A declaration made through the connection, replayed after a reconnect.
enum TopologyRecord: Sendable {
    case exchange(name: String, options: AMQPExchangeOptions)
    case queue(name: String, options: AMQPQueueOptions)
    case binding(queue: String, exchange: String, routingKey: String, arguments: AMQPTable)

    var isExchange: Bool {
        if case .exchange = self { return true }
        return false
    }

    var isQueue: Bool {
        if case .queue = self { return true }
        return false
    }

    /// What it declares, for a log line.
    var summary: String {
        switch self {
        case .exchange(let name, _): return "exchange '\(name)'"
        case .queue(let name, _): return "queue '\(name)'"
        case .binding(let queue, let exchange, let routingKey, _):
            return "binding of queue '\(queue)' to exchange '\(exchange)' with key '\(routingKey)'"
        }
    }

    func replaces(_ other: TopologyRecord) -> Bool {
        switch (self, other) {
        case (.exchange(let a, _), .exchange(let b, _)): return a == b
        case (.queue(let a, _), .queue(let b, _)): return a == b
        case (.binding(let q1, let e1, let k1, _), .binding(let q2, let e2, let k2, _)):
            return q1 == q2 && e1 == e2 && k1 == k2
        default: return false
        }
    }

    func apply(on wire: RabbitMQConnection, channel: UInt16) throws {
        switch self {
        case .exchange(let name, let options):
            try wire.declareExchange(channel, name: name, options: options, passive: false)
        case .queue(let name, let options):
            _ = try wire.declareQueue(channel, name: name, options: options, passive: false)
        case .binding(let queue, let exchange, let routingKey, let arguments):
            try wire.bindQueue(channel, queue: queue, exchange: exchange, routingKey: routingKey, arguments: arguments)
        }
    }
}
