import DequeModule
import Foundation
import HeraldModel
import Logging
import Metrics
import Synchronization

/// Where dead letters go (a capped Redis stream in production: Coordination's `DeadLetterStore`).
public protocol DeadLetterSink: Sendable {
    /// - Throws: when they could not be stored; the batcher retries, so nothing is lost.
    func deadLetter(_ letters: [DeadLetter]) async throws
}

/// What became of one submission.
public struct DeliveryOutcome: Sendable, Equatable {
    public var delivered = 0
    public var deadLettered = 0
    /// Moved into durable parking (`DeliveryParking`), to be retried from there.
    public var parked = 0
    /// Given back before they were sent (`DeliveryBatcher.giveBack`): not delivered, nor
    /// dead-lettered; whoever submitted them leaves their source to the next owner.
    public var givenBack = 0

    public init(delivered: Int = 0, deadLettered: Int = 0, parked: Int = 0, givenBack: Int = 0) {
        self.delivered = delivered
        self.deadLettered = deadLettered
        self.parked = parked
        self.givenBack = givenBack
    }
}

/// What the batcher holds, now and at most. Its counts (requests, deliveries, retries, dead
/// letters, parked messages, circuit openings) are metrics, kept once (`DeliveryMetrics`).
public struct DeliveryStatistics: Sendable {
    /// Messages held now (queued or in flight), and the most ever held at once.
    public var bufferedMessages = 0
    public var bufferedBytes = 0
    public var peakBufferedMessages = 0
    public var peakBufferedBytes = 0
    /// The most one lane ever held at once.
    public var peakLaneMessages = 0
}

/// Batches messages per target ("lane") into Zaqar under backpressure.
///
/// - One request in flight per lane, so a lane's messages arrive in submission
///   order; lanes run independently, so a slow or failing target holds only its own.
/// - A batch closes at `maxBatchMessages`, at `maxRequestBytes` of request body, or
///   when its oldest message has waited `linger`; a lane that sent nothing within
///   `lingerWindow` does not linger (a message that comes alone goes at once).
/// - Buffers are bounded per lane, per project and in total (messages and bytes, queued
///   and in flight); `submit` waits for room. A lane's bound is below its project's and a
///   project's below the total, so one stalled lane, or one project's many stalled lanes,
///   cannot take all the room: other projects' messages keep flowing.
/// - 5xx, 429 (honouring `Retry-After`), timeouts and connection errors are retried
///   with full-jitter backoff behind a per-lane circuit breaker. A 400 on a batch is
///   split until the message Zaqar refuses is found; that one, a 404, an expired
///   signed URL, a message too large for any request, and a batch out of attempts
///   are dead-lettered with the reason. Every message ends delivered or dead-lettered.
public final class DeliveryBatcher: Sendable {
    public let configuration: DeliveryConfiguration
    private let zaqar: ZaqarClient
    private let deadLetters: any DeadLetterSink
    /// When set, messages for any other endpoint are dead-lettered, never sent.
    private let endpoints: ZaqarEndpoints?
    /// When set, a target that keeps failing has its messages parked instead of dead-lettered.
    private let parking: (any DeliveryParking)?
    private let activity: (any DeliveryActivity)?
    private let logger: Logger
    private let state: Mutex<State>
    /// The buffered messages again, for `drain` to await (changed together with `state`, under its lock).
    private let buffered = InFlight()
    /// What lingers, circuits, retries and waits are timed by (a manual clock in tests).
    private let clock: ElapsedClock
    private let metrics: DeliveryMetrics
    /// Set by `stop()`: lanes, retries and the parking and dead-letter loops give up at their next turn.
    private let stopped = Atomic<Bool>(false)

    /// Where submissions come from (a partition's consumer while it owns the partition), so that
    /// what they queued and is not sent yet can be given back at once (`giveBack(_:)`).
    public final class Origin: Sendable {
        /// Set (under the batcher's lock) by `giveBack`: nothing of this origin is queued any more.
        fileprivate let givenBack = Atomic<Bool>(false)

        public init() {}

        /// Whether `giveBack` was called for it: later parts are given back as they come.
        public var isGivenBack: Bool { givenBack.load(ordering: .relaxed) }
    }

    /// One submission's messages, completed when the last of them is settled.
    final class Group: @unchecked Sendable {
        // Mutated only under the batcher's lock.
        var remaining: Int
        var outcome = DeliveryOutcome()
        let origin: Origin?
        let completion: @Sendable (DeliveryOutcome) -> Void

        init(count: Int, origin: Origin?, completion: @escaping @Sendable (DeliveryOutcome) -> Void) {
            self.remaining = count
            self.origin = origin
            self.completion = completion
        }

        /// One of its messages (or its submission's hold) is settled; under the batcher's lock.
        /// - Returns: the outcome when that was the last, for `completion`.
        func settleOne() -> DeliveryOutcome? {
            remaining -= 1
            return remaining == 0 ? outcome : nil
        }
    }

    struct Pending: Sendable {
        var message: ZaqarOutgoingMessage
        var size: Int
        var group: Group
        var enqueuedAt: Duration
    }

    struct Lane {
        /// Waiting to be sent, oldest first.
        var queue = Deque<Pending>()
        /// Queued and in flight.
        var messages = 0
        var bytes = 0
        var working = false
        var circuit: CircuitBreaker
        /// When its worker last found it empty (the batcher's clock).
        var idleSince: Duration = .zero

        var queued: Int { queue.count }
    }

    struct Waiter {
        var pending: Pending
        /// Resumed with true when its origin was given back (`giveBack` settles it then).
        var continuation: CheckedContinuation<Bool, Never>
    }

    /// What one project's lanes hold together, queued and in flight.
    struct ProjectUsage {
        var messages = 0
        var bytes = 0
    }

    struct State {
        var lanes: [ZaqarTarget: Lane] = [:]
        /// Lanes held before a new one has idle ones looked over (`forgetIdleLanes`).
        var sweepAt = 0
        /// Only projects holding something (an entry goes when it is back to zero).
        var projects: [String: ProjectUsage] = [:]
        var waiters: [Waiter] = []
        var statistics = DeliveryStatistics()
        /// When each lane last took a batch to send, for the lanes that did lately.
        var recent = RecentSends()
        /// Batches waiting out a retry's backoff or an open circuit, by the origins of their
        /// messages: `giveBack` wakes them (`pause`).
        var pauses: [Int: (origins: Set<ObjectIdentifier>, wakeup: Wakeup)] = [:]
        var nextPause = 0
    }

    /// When lanes last sent, kept for at least `window` after each send and under three windows
    /// at most, whether or not the lane itself is kept: an idle lane is forgotten, its recent
    /// send is not. Two generations of `window` each, the older dropped whole as time moves on.
    struct RecentSends {
        private var current: [ZaqarTarget: Duration] = [:]
        private var previous: [ZaqarTarget: Duration] = [:]
        private var currentSince: Duration?

        /// How long ago `target` last sent, if it is still remembered (always within one window).
        mutating func sinceLastSent(_ target: ZaqarTarget, now: Duration, window: Duration) -> Duration? {
            rotate(now: now, window: window)
            return (current[target] ?? previous[target]).map { now - $0 }
        }

        mutating func sent(_ target: ZaqarTarget, at now: Duration, window: Duration) {
            rotate(now: now, window: window)
            current[target] = now
        }

        /// Lanes remembered (for tests).
        var count: Int { Set(current.keys).union(previous.keys).count }

        private mutating func rotate(now: Duration, window: Duration) {
            guard let since = currentSince else {
                currentSince = now
                return
            }
            if now - since >= window * 2 {
                previous = [:]
                current = [:]
                currentSince = now
            } else if now - since >= window {
                previous = current
                current = [:]
                currentSince = now
            }
        }
    }

    /// - Throws: `DeliveryError.invalidConfiguration` naming the bad setting.
    /// - Parameter endpoints: the Zaqar endpoints the operator allows; nil allows every one (tests).
    /// - Parameter clock: what lingers, circuit cooldowns, retry delays, Retry-After and the parking
    ///   and dead-letter retries are timed by. With a manual clock, every one of them waits until
    ///   the test advances it (a lane that sent in the last `lingerWindow` lingers too).
    /// - Parameter metrics: where the counts go (the process's backend; a test's to read them).
    public init(
        configuration: DeliveryConfiguration = DeliveryConfiguration(), zaqar: ZaqarClient,
        deadLetters: any DeadLetterSink, endpoints: ZaqarEndpoints? = nil,
        parking: (any DeliveryParking)? = nil, activity: (any DeliveryActivity)? = nil,
        logger: Logger = Logger(label: "herald.delivery"), clock: ElapsedClock = .continuous,
        metrics: any MetricsFactory = MetricsSystem.factory
    ) throws {
        try configuration.validate()
        self.configuration = configuration
        self.zaqar = zaqar
        self.deadLetters = deadLetters
        self.endpoints = endpoints
        self.parking = parking
        self.activity = activity
        self.logger = logger
        self.clock = clock
        self.metrics = DeliveryMetrics(factory: metrics)
        self.state = Mutex(State())
    }

    private func now() -> Duration { clock.now() }

    public var statistics: DeliveryStatistics { state.withLock { $0.statistics } }

    /// Whether the batcher keeps a lane for `target` now (for tests).
    package func hasLane(for target: ZaqarTarget) -> Bool {
        state.withLock { $0.lanes[target] != nil }
    }

    /// Whether the batcher keeps a lane for `target` whose worker has stopped, finding it empty
    /// (for tests: its idle time counts from then).
    package func hasIdleLane(for target: ZaqarTarget) -> Bool {
        state.withLock { $0.lanes[target].map { !$0.working && $0.messages == 0 } ?? false }
    }

    /// The circuit state of a target's lane (closed when it has none: a new lane starts closed).
    public func circuit(for target: ZaqarTarget) -> CircuitBreaker.State {
        state.withLock { $0.lanes[target]?.circuit.state ?? .closed }
    }

    /// Lanes held: targets with messages queued or in flight, or whose circuit has failures.
    public var laneCount: Int { state.withLock { $0.lanes.count } }

    /// Submitters waiting for room now (for tests).
    package var waitingSubmitters: Int { state.withLock { $0.waiters.count } }

    /// Messages a project's lanes hold now, queued or in flight.
    public func bufferedMessages(project: String) -> Int {
        state.withLock { $0.projects[project]?.messages ?? 0 }
    }

    // MARK: Submitting

    /// Queues messages (one incoming event's matches, say). Returns once they are all
    /// buffered, which may mean waiting for room; `completion` runs when every one of
    /// them is delivered or dead-lettered: then the caller acks the incoming delivery.
    public func submit(
        _ messages: [ZaqarOutgoingMessage], completion: @escaping @Sendable (DeliveryOutcome) -> Void
    ) async {
        let submission = submission(completion: completion)
        await submission.add(messages)
        submission.close()
    }

    /// Messages that belong together (one incoming delivery's matches), handed over in parts as
    /// they are made, so that they need not all be in memory at once: a part waits for room in
    /// the buffers like any message. `completion` runs once, after `close()`, when every message
    /// added is delivered or dead-lettered.
    ///
    /// With an `origin`, `giveBack(origin)` takes back what is not sent yet: the outcome then
    /// counts those messages `givenBack`.
    public func submission(
        origin: Origin? = nil, completion: @escaping @Sendable (DeliveryOutcome) -> Void
    ) -> Submission {
        Submission(batcher: self, group: Group(count: 1, origin: origin, completion: completion))
    }

    /// See `submission(completion:)`. Parts are added one at a time, by one task.
    public final class Submission: Sendable {
        private let batcher: DeliveryBatcher
        /// Counts one hold for the submission itself, until `close()`.
        private let group: Group
        private let closed = Atomic<Bool>(false)

        fileprivate init(batcher: DeliveryBatcher, group: Group) {
            self.batcher = batcher
            self.group = group
        }

        /// Queues a part, in order after the parts before it; returns once it is all buffered.
        public func add(_ messages: [ZaqarOutgoingMessage]) async {
            guard !messages.isEmpty else { return }
            precondition(!closed.load(ordering: .relaxed), "a part added to a closed submission")
            await batcher.enqueue(messages, group: group)
        }

        /// No more parts: the completion runs once every message added is settled (now, when
        /// they are or none was added). Later calls do nothing.
        public func close() {
            guard !closed.exchange(true, ordering: .relaxed) else { return }
            batcher.release(group)
        }
    }

    private func release(_ group: Group) {
        if let outcome = state.withLock({ _ in group.settleOne() }) { group.completion(outcome) }
    }

    private func enqueue(_ messages: [ZaqarOutgoingMessage], group: Group) async {
        var tooLarge: [Pending] = []
        var notAllowed: [Pending] = []
        var admissible: [Pending] = []
        let enqueuedAt = now()
        for message in messages {
            let pending = Pending(message: message, size: message.body.count + 1, group: group, enqueuedAt: enqueuedAt)
            if let endpoints, !endpoints.permits(message.target.baseURL) {
                notAllowed.append(pending)
            } else if pending.size + ZaqarMessageEncoding.envelopeBytes > configuration.maxRequestBytes {
                tooLarge.append(pending)
            } else {
                admissible.append(pending)
            }
        }
        // Under one lock, every message that fits now; from the first that does not, one by
        // one in order, waiting for room. The group counts the part first: none of it can be
        // settled before.
        var workers: [ZaqarTarget] = []
        let admitted = state.withLock { state -> Int? in
            group.remaining += messages.count
            if group.origin?.isGivenBack == true { return nil }
            var count = 0
            for pending in admissible {
                guard let needsWorker = admitIfRoom(&state, pending) else { break }
                if needsWorker { workers.append(pending.message.target) }
                count += 1
            }
            return count
        }
        guard let admitted else {
            settle(notAllowed + tooLarge + admissible) { $0.givenBack += 1 }
            return
        }
        for target in workers { startWorker(target) }
        for pending in admissible[admitted...] {
            await enqueue(pending)
        }
        if group.origin?.isGivenBack == true {
            // Given back while this part waited: what it could not queue goes back as well.
            settle(notAllowed + tooLarge) { $0.givenBack += 1 }
            return
        }
        if !notAllowed.isEmpty {
            await deadLetter(notAllowed, reason: .targetNotAllowed, status: nil, zaqarMessage: nil) {
                DeadLetterDetail.endpointNotAllowed($0.message.target)
            }
        }
        if !tooLarge.isEmpty {
            await deadLetter(tooLarge, reason: .tooLarge, status: nil, zaqarMessage: nil) { pending in
                DeadLetterDetail.tooLarge(bytes: pending.size, limit: self.configuration.maxRequestBytes)
            }
        }
    }

    /// Submits and waits for the outcome.
    public func deliver(_ messages: [ZaqarOutgoingMessage]) async -> DeliveryOutcome {
        // The outcome, or the caller's continuation, whichever comes first; not cut short by
        // the caller's cancellation (the messages are in flight either way).
        enum Meeting {
            case none
            case outcome(DeliveryOutcome)
            case waiting(CheckedContinuation<DeliveryOutcome, Never>)
        }
        let meeting = Mutex(Meeting.none)
        await submit(messages) { outcome in
            let waiting = meeting.withLock { meeting -> CheckedContinuation<DeliveryOutcome, Never>? in
                guard case .waiting(let continuation) = meeting else {
                    meeting = .outcome(outcome)
                    return nil
                }
                return continuation
            }
            waiting?.resume(returning: outcome)
        }
        return await withCheckedContinuation { continuation in
            let ready = meeting.withLock { meeting -> DeliveryOutcome? in
                guard case .outcome(let outcome) = meeting else {
                    meeting = .waiting(continuation)
                    return nil
                }
                return outcome
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Waits until nothing is buffered or `timeout` passes; true when drained.
    public func drain(timeout: Duration) async -> Bool {
        await buffered.waitUntilZero(timeout: timeout)
    }

    /// Stops delivering, for a node that is stopping after `drain`: every lane, retry, and parking
    /// or dead-letter attempt gives up at its next turn (at most one wait later), leaving what it
    /// holds unsettled: those deliveries stay unacked, and the broker gives them to the next owner.
    /// Nothing keeps retrying against a closed connection once the node has gone. Submitters
    /// waiting for room go on without it (their messages are never settled either), so that a
    /// consumer blocked in `submit` can end.
    public func stop() {
        stopped.store(true, ordering: .relaxed)
        let waiting = state.withLock { state -> [Waiter] in
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiting { waiter.continuation.resume(returning: false) }
    }

    private var isStopped: Bool { stopped.load(ordering: .relaxed) }

    private func fits(_ state: State, _ pending: Pending) -> Bool {
        let lane = state.lanes[pending.message.target]
        let project = state.projects[pending.message.target.project]
        return (lane?.messages ?? 0) + 1 <= configuration.laneMaxMessages
            && (lane?.bytes ?? 0) + pending.size <= configuration.laneMaxBytes
            && (project?.messages ?? 0) + 1 <= configuration.projectMaxMessages
            && (project?.bytes ?? 0) + pending.size <= configuration.projectMaxBytes
            && state.statistics.bufferedMessages + 1 <= configuration.globalMaxMessages
            && state.statistics.bufferedBytes + pending.size <= configuration.globalMaxBytes
    }

    /// Puts a message in its lane, waiting for room; starts the lane's worker if idle. A message
    /// whose origin is given back, before or while it waits, is settled as given back.
    private func enqueue(_ pending: Pending) async {
        let givenBack = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            enum Admission {
                case queued(needsWorker: Bool)
                case waiting, stopped, givenBack
            }
            let admission = state.withLock { state -> Admission in
                // Stopped: nothing is admitted or waits (`stop`); the message stays unsettled.
                if isStopped { return .stopped }
                if pending.group.origin?.isGivenBack == true { return .givenBack }
                guard let needsWorker = admitIfRoom(&state, pending) else {
                    state.waiters.append(Waiter(pending: pending, continuation: continuation))
                    return .waiting
                }
                return .queued(needsWorker: needsWorker)
            }
            switch admission {
            case .waiting: return
            case .stopped: continuation.resume(returning: false)
            case .givenBack: continuation.resume(returning: true)
            case .queued(let needsWorker):
                if needsWorker { startWorker(pending.message.target) }
                continuation.resume(returning: false)
            }
        }
        if givenBack { settle([pending]) { $0.givenBack += 1 } }
    }

    /// Admits a message when there is room and no waiter of its lane is ahead of it (a lane
    /// keeps submission order): whether its lane needs a worker; nil when it must wait.
    private func admitIfRoom(_ state: inout State, _ pending: Pending) -> Bool? {
        let target = pending.message.target
        guard fits(state, pending) && !state.waiters.contains(where: { $0.pending.message.target == target }) else {
            return nil
        }
        return admit(&state, pending)
    }

    /// Accounts and queues a message (under the lock); true when its lane needs a worker.
    private func admit(_ state: inout State, _ pending: Pending) -> Bool {
        if state.lanes.count >= max(state.sweepAt, configuration.laneSweepFloor),
            state.lanes[pending.message.target] == nil
        {
            forgetIdleLanes(&state)
        }
        // In place (one hash of the target, no copy of the lane's queue).
        let (needsWorker, laneMessages) = Self.push(
            pending, into: &state.lanes[pending.message.target, default: newLane()])
        Self.count(pending, into: &state.projects[pending.message.target.project, default: ProjectUsage()])
        state.statistics.bufferedMessages += 1
        buffered.add()
        state.statistics.bufferedBytes += pending.size
        state.statistics.peakBufferedMessages = max(
            state.statistics.peakBufferedMessages, state.statistics.bufferedMessages)
        state.statistics.peakBufferedBytes = max(state.statistics.peakBufferedBytes, state.statistics.bufferedBytes)
        state.statistics.peakLaneMessages = max(state.statistics.peakLaneMessages, laneMessages)
        return needsWorker
    }

    /// Forgets lanes idle for `idleLaneLifetime`, failures and all: a lane whose target failed
    /// (its batches parked, or dead-lettered) is otherwise kept for its circuit, and targets
    /// replaced by a PATCH or a renewed URL would pile up for the life of the process. Run when a
    /// new lane would pass twice the count left by the last run (amortised: one look per lane).
    private func forgetIdleLanes(_ state: inout State) {
        let now = now()
        state.lanes = state.lanes.filter { _, lane in
            lane.messages > 0 || lane.working || now - lane.idleSince < Self.idleLaneLifetime
        }
        state.sweepAt = 2 * state.lanes.count
    }

    /// How long an idle lane that had failures is kept (its circuit's memory).
    static let idleLaneLifetime: Duration = .seconds(600)

    private func newLane() -> Lane {
        Lane(
            circuit: CircuitBreaker(threshold: configuration.circuitThreshold, cooldown: configuration.circuitCooldown))
    }

    /// Accounts a message to its project's usage (in place: one hash of the project).
    private static func count(_ pending: Pending, into usage: inout ProjectUsage) {
        usage.messages += 1
        usage.bytes += pending.size
    }

    /// Appends to a lane; whether it needs a worker, and the messages it now holds.
    private static func push(_ pending: Pending, into lane: inout Lane) -> (Bool, Int) {
        lane.queue.append(pending)
        lane.messages += 1
        lane.bytes += pending.size
        let needsWorker = !lane.working
        lane.working = true
        return (needsWorker, lane.messages)
    }

    /// Frees a finished batch's room and admits waiters that now fit, in order per lane.
    private func release(_ batch: [Pending]) {
        guard let target = batch.first?.message.target else { return }
        let bytes = batch.reduce(0) { $0 + $1.size }
        let (resumed, workers) = state.withLock { state in
            // The lane exists: a lane with messages in flight is never forgotten (runLane).
            state.lanes[target]?.messages -= batch.count
            state.lanes[target]?.bytes -= bytes
            if var usage = state.projects.removeValue(forKey: target.project) {
                usage.messages -= batch.count
                usage.bytes -= bytes
                if usage.messages > 0 { state.projects[target.project] = usage }
            }
            state.statistics.bufferedMessages -= batch.count
            buffered.remove(batch.count)
            state.statistics.bufferedBytes -= bytes
            return admitWaiters(&state)
        }
        for target in workers { startWorker(target) }
        for continuation in resumed { continuation.resume(returning: false) }
    }

    /// Admits the waiters that fit now, in order per lane (under the lock): their continuations
    /// to resume, and the lanes that need a worker.
    private func admitWaiters(
        _ state: inout State
    ) -> (resumed: [CheckedContinuation<Bool, Never>], workers: [ZaqarTarget]) {
        var resumed: [CheckedContinuation<Bool, Never>] = []
        var workers: [ZaqarTarget] = []
        var blocked = Set<ZaqarTarget>()
        var remaining: [Waiter] = []
        for waiter in state.waiters {
            let lane = waiter.pending.message.target
            if !blocked.contains(lane) && fits(state, waiter.pending) {
                if admit(&state, waiter.pending) { workers.append(lane) }
                resumed.append(waiter.continuation)
            } else {
                blocked.insert(lane)
                remaining.append(waiter)
            }
        }
        state.waiters = remaining
        return (resumed, workers)
    }

    /// Takes back every message of `origin` not sent yet: queued in a lane or waiting for room.
    /// Each is settled as given back (its group's outcome counts it), and whatever `origin`
    /// submits from now on is given back as it comes. Messages in a request already on its way
    /// are not touched: they end as they would have. Frees their room for other submitters.
    ///
    /// For a partition handed over under a backlog: what it queued waits behind every other
    /// partition's messages, while the next owner could send it at once.
    /// - Returns: how many messages were given back now.
    @discardableResult
    public func giveBack(_ origin: Origin) -> Int {
        let (taken, finished, admitted, waitersGivenBack, workers, paused) = state.withLock { state in
            origin.givenBack.store(true, ordering: .relaxed)
            let paused = state.pauses.values.filter { $0.origins.contains(ObjectIdentifier(origin)) }.map(\.wakeup)
            var taken: [Pending] = []
            // The targets first: changing a lane while iterating the dictionary would copy it whole.
            let targets = state.lanes.compactMap { target, lane in
                lane.queue.contains { $0.group.origin === origin } ? target : nil
            }
            for target in targets {
                // The lane is there (found above); `default` only spares a force unwrap.
                let (count, bytes) = Self.take(origin, from: &state.lanes[target, default: newLane()], into: &taken)
                state.statistics.bufferedMessages -= count
                state.statistics.bufferedBytes -= bytes
                buffered.remove(count)
                if var usage = state.projects.removeValue(forKey: target.project) {
                    usage.messages -= count
                    usage.bytes -= bytes
                    if usage.messages > 0 { state.projects[target.project] = usage }
                }
            }
            var waitersGivenBack: [CheckedContinuation<Bool, Never>] = []
            state.waiters.removeAll { waiter in
                guard waiter.pending.group.origin === origin else { return false }
                waitersGivenBack.append(waiter.continuation)
                return true
            }
            let finished = Self.settleLocked(taken) { $0.givenBack += 1 }
            let (admitted, workers) = admitWaiters(&state)
            return (taken.count, finished, admitted, waitersGivenBack, workers, paused)
        }
        for wakeup in paused { wakeup.signal() }
        for target in workers { startWorker(target) }
        for continuation in admitted { continuation.resume(returning: false) }
        // Each settles its own message as given back once it runs (`enqueue`).
        for continuation in waitersGivenBack { continuation.resume(returning: true) }
        for (group, outcome) in finished { group.completion(outcome) }
        return taken + waitersGivenBack.count
    }

    /// Waits `delay` of the batcher's clock, or until an origin of `batch` is given back: its
    /// messages are then the next owner's, and a retry's backoff (up to the retry cap) or an open
    /// circuit must not hold the handover. The caller settles those and waits out the rest of its
    /// delay for the others (a retry's time is kept as a deadline, not restarted).
    private func pause(_ delay: Duration, for batch: [Pending]) async {
        let origins = Set(batch.compactMap { $0.group.origin.map(ObjectIdentifier.init) })
        guard !origins.isEmpty else {
            try? await clock.sleep(for: delay)
            return
        }
        let wakeup = Wakeup()
        let id = state.withLock { state in
            state.nextPause += 1
            state.pauses[state.nextPause] = (origins, wakeup)
            return state.nextPause
        }
        defer { _ = state.withLock { $0.pauses.removeValue(forKey: id) } }
        // A give-back before the registration is seen here (the flag is set under the same lock);
        // one after it signals.
        if batch.contains(where: { $0.group.origin?.isGivenBack == true }) { return }
        await wakeup.wait(timeout: delay, clock: clock)
    }

    /// Settles the messages of `batch` whose origin was given back (`giveBack`) as given back and
    /// takes them out: a retry, a parking or a dead letter goes on with the rest only.
    /// - Returns: whether nothing is left.
    private func settleGivenBack(_ batch: inout [Pending]) -> Bool {
        var nothing: [Never] = []
        return settleGivenBack(&batch, alongside: &nothing)
    }

    /// `settleGivenBack(_:)`, and what is `alongside` the messages (one for one: their dead
    /// letters) taken out with them.
    private func settleGivenBack<Paired>(_ batch: inout [Pending], alongside paired: inout [Paired]) -> Bool {
        guard batch.contains(where: { $0.group.origin?.isGivenBack == true }) else { return batch.isEmpty }
        // The flags read once, for the messages and what goes with them alike: an origin given back
        // between two reads would otherwise leave a letter without its message.
        let back = batch.map { $0.group.origin?.isGivenBack == true }
        guard back.contains(true) else { return batch.isEmpty }
        var given: [Pending] = []
        var kept: [Pending] = []
        var keptPaired: [Paired] = []
        for (offset, pending) in batch.enumerated() {
            if back[offset] {
                given.append(pending)
                continue
            }
            kept.append(pending)
            if offset < paired.count { keptPaired.append(paired[offset]) }
        }
        settle(given) { $0.givenBack += 1 }
        batch = kept
        paired = keptPaired
        return batch.isEmpty
    }

    /// Moves `origin`'s queued messages out of a lane (in place) into `taken`, in order: how many,
    /// and their bytes.
    private static func take(
        _ origin: Origin, from lane: inout Lane, into taken: inout [Pending]
    ) -> (count: Int, bytes: Int) {
        var kept = Deque<Pending>()
        kept.reserveCapacity(lane.queue.count)
        var (count, bytes) = (0, 0)
        for pending in lane.queue {
            if pending.group.origin === origin {
                taken.append(pending)
                count += 1
                bytes += pending.size
            } else {
                kept.append(pending)
            }
        }
        lane.queue = kept
        lane.messages -= count
        lane.bytes -= bytes
        return (count, bytes)
    }

    // MARK: Lanes

    /// A lane's worker: unstructured on purpose, one per busy target, ending when its lane is
    /// empty. Its work is awaited through the messages it holds: `drain` waits for the buffered
    /// count (`buffered`) to reach zero, and every caller of `submit` for its completion.
    private func startWorker(_ target: ZaqarTarget) {
        Task { await self.runLane(target) }
    }

    private enum Next {
        case idle
        case wait(Duration)
        case send([Pending])
    }

    private func runLane(_ target: ZaqarTarget) async {
        while !isStopped {
            let next = state.withLock { state -> Next in
                guard let queued = state.lanes[target]?.queued, queued > 0 else {
                    // An idle lane with a clean circuit is the same as a new one: forget it, so
                    // every target ever seen does not keep a lane for the life of the process.
                    if let lane = state.lanes[target], lane.messages == 0, lane.circuit.state == .closed,
                        lane.circuit.consecutiveFailures == 0
                    {
                        state.lanes[target] = nil
                    } else {
                        state.lanes[target]?.working = false
                        state.lanes[target]?.idleSince = now()
                    }
                    return .idle
                }
                // The lane is there (the guard read its queue); `default` only spares a force unwrap.
                return take(target, from: &state.lanes[target, default: newLane()], recent: &state.recent)
            }
            switch next {
            case .idle:
                return
            case .wait(let duration):
                try? await clock.sleep(for: duration)
            case .send(let batch):
                await send(batch, to: target)
                release(batch)
            }
        }
    }

    /// The next batch of a lane with messages queued (in place, under the lock), or how long to
    /// linger for company (`lingering`). `recent`: when lanes last sent, updated.
    private func take(_ target: ZaqarTarget, from lane: inout Lane, recent: inout RecentSends) -> Next {
        let now = now()
        let maxBatch = configuration.maxBatchMessages
        if let wait = Self.lingering(
            queued: lane.queued, queuedBytes: { lane.queue.prefix(maxBatch).reduce(0) { $0 + $1.size } },
            oldestAge: now - lane.queue[0].enqueuedAt,
            sinceLastSent: recent.sinceLastSent(target, now: now, window: configuration.lingerWindow),
            configuration: configuration)
        {
            return .wait(wait)
        }
        var batch: [Pending] = []
        batch.reserveCapacity(min(lane.queued, configuration.maxBatchMessages))
        var bytes = ZaqarMessageEncoding.envelopeBytes
        while let next = lane.queue.first, batch.count < configuration.maxBatchMessages {
            if !batch.isEmpty && bytes + next.size > configuration.maxRequestBytes { break }
            batch.append(lane.queue.removeFirst())
            bytes += next.size
        }
        recent.sent(target, at: now, window: configuration.lingerWindow)
        return .send(batch)
    }

    /// How much longer a lane's queued messages wait for company, or nil to send now. They wait
    /// only while their lane is busy (it sent within `lingerWindow`: under load, fewer and fuller
    /// requests), no full batch is queued and the oldest has waited less than `linger`. A message
    /// that comes alone to a quiet lane goes at once.
    ///
    /// `queuedBytes` is read only when the rest says wait (a lane may hold thousands of messages
    /// under a backlog, and this runs under the batcher's lock).
    ///
    /// A lane that gets a message every 5 to 10 ms waits the linger each time and seldom finds
    /// company (measured and kept: an alternative that lingered only after a short gap between
    /// arrivals batched less under load, 2.5 against 3.0 messages per request, for the same p50 at
    /// low rates; BENCHMARKS.md).
    static func lingering(
        queued: Int, queuedBytes: () -> Int, oldestAge: Duration, sinceLastSent: Duration?,
        configuration: DeliveryConfiguration
    ) -> Duration? {
        guard let sinceLastSent, sinceLastSent < configuration.lingerWindow else { return nil }
        guard queued < configuration.maxBatchMessages, oldestAge < configuration.linger else { return nil }
        guard queuedBytes() + ZaqarMessageEncoding.envelopeBytes < configuration.maxRequestBytes else { return nil }
        return configuration.linger - oldestAge
    }

    /// Sends one batch until every message is delivered, dead-lettered or parked.
    private func send(_ batch: [Pending], to target: ZaqarTarget) async {
        var batch = batch
        if let parking {
            // Messages of a parked subscription queue behind its parked ones.
            let parked = Set(batch.lazy.map(\.message.subscriptionID).filter(parking.isParked))
            if !parked.isEmpty {
                let unparked = await park(
                    batch.filter { parked.contains($0.message.subscriptionID) },
                    reason: "behind messages parked earlier", failed: false)
                batch.removeAll { parked.contains($0.message.subscriptionID) }
                batch += unparked
                if batch.isEmpty { return }
            }
        }
        if await deadLetterIfSignedURLExpired(batch, target: target) { return }
        var attempt = 0
        var random = SystemRandomNumberGenerator()
        let backoff = Backoff(base: configuration.retryBase, cap: configuration.retryCap)
        // When the next attempt is due (a retry's backoff or Retry-After).
        var retryAt: Duration?
        while !isStopped {
            // A retry, or a first attempt after an open circuit's wait, leaves out what was given
            // back meanwhile: the next owner sends it. The rest waits out its backoff still.
            if settleGivenBack(&batch) { return }
            if let retryAt, now() < retryAt, !Task.isCancelled {
                await pause(retryAt - now(), for: batch)
                continue
            }
            if let wait = state.withLock({ $0.lanes[target]?.circuit.wait(now: now()) }) {
                await pause(wait, for: batch)
                continue
            }
            var retryAfter: Duration?
            var failure: String
            // The attempt took a whole request timeout (a target that never answers).
            var timedOut = false
            countRequest(of: batch.count)
            do {
                let response = try await zaqar.post(target, messages: batch.map(\.message.body))
                switch response.status {
                case 200..<300:
                    if attempt > 0, let parking { await parking.recovered(Set(batch.map(\.message.subscriptionID))) }
                    circuitSucceeded(target)
                    complete(batch, delivered: true)
                    return
                case 400, 413:
                    circuitSucceeded(target)
                    if batch.count > 1 {
                        // Find the message Zaqar refuses: the others go through.
                        let half = batch.count / 2
                        await send(Array(batch[..<half]), to: target)
                        await send(Array(batch[half...]), to: target)
                    } else {
                        await deadLetterRejected(batch, response: response)
                    }
                    return
                case 401 where parking != nil && !response.credentialsGone,
                    403 where parking != nil && !response.credentialsGone:
                    // A trust may come back (a user regains the role, Keystone recovers): park, retry
                    // until the horizon, dead-letter only then.
                    retryAfter = nil
                    failure =
                        "HTTP \(response.status): \(response.message ?? "the subscription's credentials do not reach this queue")"
                case 401, 403:
                    circuitSucceeded(target)
                    await deadLetter(
                        batch, reason: .unauthorized, status: response.status, zaqarMessage: response.message
                    ) { _ in
                        Self.unauthorizedDetail(response, target: target)
                    }
                    return
                case 404:
                    circuitSucceeded(target)
                    await deadLetterNotFound(batch, target: target, response: response)
                    return
                default:
                    retryAfter = response.retryAfter
                    failure = "HTTP \(response.status): \(response.message ?? "")"
                }
            } catch {
                failure = "\(error)"
                timedOut = (error as? CurlTransport.Failure)?.timedOut == true
            }
            attempt += 1
            let opened = state.withLock { state -> Bool in
                let wasOpen = state.lanes[target]?.circuit.isOpen ?? false
                state.lanes[target]?.circuit.failed(now: now())
                let isOpen = state.lanes[target]?.circuit.isOpen ?? false
                return isOpen && !wasOpen
            }
            metrics.retries.increment()
            if opened {
                metrics.circuitOpenings.increment()
                logger.warning(
                    "circuit opened for a Zaqar target",
                    metadata: [LogKey.zaqarTarget: "\(target)", LogKey.error: "\(failure)"])
            }
            // A request that timed out or lost its connection may have been taken all the same:
            // its retry can deliver those messages twice (at least once; event_id tells them apart).
            logger.warning(
                "retrying a batch",
                metadata: [
                    LogKey.zaqarTarget: "\(target)", LogKey.deliveryCount: "\(batch.count)",
                    LogKey.deliveryAttempt: "\(attempt)",
                    LogKey.error: "\(failure)",
                ])
            if attempt == 1 {
                let subscriptions = Set(batch.map(\.message.subscriptionID))
                activity?.failed(subscriptions, error: failure)
                if let parking { await parking.failing(subscriptions, error: failure) }
            }
            // With parking, a failing batch holds its lane, and the prefetch of the partitions behind
            // it, only for quick retries: a target that never answers, or asks for a longer wait than
            // the lane may spend, goes to parking's schedule at once.
            if parking != nil,
                attempt >= configuration.attemptsBeforeParking || timedOut
                    || (retryAfter ?? .zero) > configuration.longestWaitBeforeParking
            {
                let unparked = await park(batch, reason: failure, failed: true, retryAfter: retryAfter)
                if !unparked.isEmpty { await send(unparked, to: target) }
                return
            }
            if parking == nil, attempt >= configuration.maxAttempts {
                await deadLetter(batch, reason: .retriesExhausted, status: nil, zaqarMessage: nil) { _ in
                    "gave up after \(attempt) attempts; last error: \(failure)"
                }
                return
            }
            // Retry-After was read defensively and cut to a cap (TargetAnswer.retryAfter).
            retryAt = now() + (retryAfter ?? backoff.delay(attempt: attempt - 1, using: &random))
        }
    }

    /// Parks messages, per subscription in order, retrying until parking takes them: while it
    /// cannot (broker or Redis down) the lane holds them, and its room in the buffers with them,
    /// so the partitions feeding it slow down instead of losing anything. When the project's
    /// parking share is used up (`ParkingFull`), they are dead-lettered (`parking_full`): one
    /// tenant's failing targets must not stall the partitions every tenant's events share.
    /// - Returns: messages not parked because their subscription was unparked meanwhile (its
    ///   parking was closing: they waited for that): the caller sends them directly.
    private func park(_ batch: [Pending], reason: String, failed: Bool, retryAfter: Duration? = nil) async -> [Pending]
    {
        guard let parking else { return batch }
        var unparked: [Pending] = []
        var order: [String] = []
        var bySubscription: [String: [Pending]] = [:]
        for pending in batch {
            if bySubscription[pending.message.subscriptionID] == nil { order.append(pending.message.subscriptionID) }
            bySubscription[pending.message.subscriptionID, default: []].append(pending)
        }
        var random = SystemRandomNumberGenerator()
        for subscription in order {
            var messages = bySubscription[subscription] ?? []
            var attempt = 0
            var full: ParkingFull?
            var direct = false
            var givenBack = false
            while true {
                if isStopped { return [] }
                if attempt > 0, settleGivenBack(&messages) {
                    givenBack = true
                    break
                }
                do {
                    try await parking.park(
                        messages.map(\.message), reason: reason, failed: failed, retryAfter: retryAfter)
                    break
                } catch let error as ParkingFull {
                    full = error
                    break
                } catch is ParkingNotNeeded {
                    direct = true
                    break
                } catch is ParkingClosing {
                    // Its queue is being emptied: wait for the unparking (seen at the next read of the
                    // parked set, about a second), then send directly; parking again if it opens (its
                    // retry failed).
                    if !parking.isParked(subscription) {
                        direct = true
                        break
                    }
                    await parking.waitForChange(timeout: .seconds(1))
                } catch {
                    attempt += 1
                    if attempt == 1 || attempt % 10 == 0 {
                        logger.error(
                            "cannot park messages of a failing target; holding them and trying again",
                            metadata: [
                                LogKey.subscription: "\(subscription)", LogKey.deliveryCount: "\(messages.count)",
                                LogKey.error: "\(error)", LogKey.heraldAttempt: "\(attempt)",
                            ])
                    }
                    try? await clock.sleep(
                        for: Backoff(base: .milliseconds(200), cap: .seconds(5)).delay(attempt: attempt, using: &random)
                    )
                }
            }
            if givenBack { continue }
            if direct {
                unparked += messages
                continue
            }
            if let full {
                await deadLetter(messages, reason: .parkingFull, status: nil, zaqarMessage: nil) { _ in
                    DeadLetterDetail.parkingFull(failure: reason, full: full)
                }
                continue
            }
            metrics.parked.increment(by: messages.count)
            settle(messages) { $0.parked += 1 }
        }
        return unparked
    }

    /// What one attempt at a batch of parked messages came to (`attemptParked`).
    public enum ParkedAttempt: Sendable, Equatable {
        /// Every message was delivered or dead-lettered (a permanent refusal).
        case settled(delivered: Int, deadLettered: Int)
        /// The first `settled` messages were settled; the target failed on the rest.
        case failed(settled: Int, error: String, retryAfter: Duration?)
        /// The first `settled` messages were settled; then the batcher stopped before the rest's
        /// dead letters were stored: keep the rest (unacked) for the next drainer.
        case stopped(settled: Int)
    }

    /// One attempt at parked messages of one subscription, in order, for the parking's retries:
    /// delivered, or dead-lettered for a permanent refusal (400 on the message itself, 404, an
    /// expired signed URL, a target no longer allowed), or failed (retry later). Never parks and
    /// never retries by itself; uses no room in the buffers (the messages wait in their queue).
    public func attemptParked(_ messages: [ZaqarOutgoingMessage]) async -> ParkedAttempt {
        guard let target = messages.first?.target else { return .settled(delivered: 0, deadLettered: 0) }
        let outcome = await attempt(unbuffered(messages), to: target)
        if case .failed(let settled, let error, _) = outcome {
            activity?.failed(Set(messages.dropFirst(settled).map(\.subscriptionID)), error: error)
        }
        return outcome
    }

    private func attempt(_ batch: [Pending], to target: ZaqarTarget) async -> ParkedAttempt {
        // Settled only once stored: a stopping batcher stores none, and the parked messages stay
        // in their queue (unacked) for the next drainer.
        func deadLettered(_ stored: Bool) -> ParkedAttempt {
            stored ? .settled(delivered: 0, deadLettered: batch.count) : .stopped(settled: 0)
        }
        if let endpoints, !endpoints.permits(target.baseURL) {
            return deadLettered(
                await deadLetter(batch, reason: .targetNotAllowed, status: nil, zaqarMessage: nil) { _ in
                    DeadLetterDetail.endpointNotAllowed(target)
                })
        }
        if let expiry = expiredSignedURL(target) {
            return deadLettered(await deadLetterSignedURLExpired(batch, target: target, at: expiry))
        }
        countRequest(of: batch.count)
        let response: ZaqarResponse
        do {
            response = try await zaqar.post(target, messages: batch.map(\.message.body))
        } catch {
            return .failed(settled: 0, error: "\(error)", retryAfter: nil)
        }
        switch response.status {
        case 200..<300:
            complete(batch, delivered: true)
            return .settled(delivered: batch.count, deadLettered: 0)
        case 400 where batch.count > 1, 413 where batch.count > 1:
            let half = batch.count / 2
            let first = await attempt(Array(batch[..<half]), to: target)
            guard case .settled(let delivered, let deadLettered) = first else { return first }
            switch await attempt(Array(batch[half...]), to: target) {
            case .settled(let more, let moreDead):
                return .settled(delivered: delivered + more, deadLettered: deadLettered + moreDead)
            case .failed(let settled, let error, let retryAfter):
                return .failed(settled: half + settled, error: error, retryAfter: retryAfter)
            case .stopped(let settled):
                return .stopped(settled: half + settled)
            }
        case 400, 413:
            return deadLettered(await deadLetterRejected(batch, response: response))
        case 404:
            return deadLettered(await deadLetterNotFound(batch, target: target, response: response))
        case 401 where response.credentialsGone, 403 where response.credentialsGone:
            return deadLettered(
                await deadLetter(batch, reason: .unauthorized, status: response.status, zaqarMessage: response.message)
                { _ in
                    Self.unauthorizedDetail(response, target: target)
                })
        default:
            return .failed(
                settled: 0, error: "HTTP \(response.status): \(response.message ?? "")", retryAfter: response.retryAfter
            )
        }
    }

    /// Dead-letters parked messages whose retry horizon has passed (`HERALD_DELIVERY_RETRY_HORIZON`).
    /// - Returns: false when the batcher stopped first: none was stored, keep them.
    public func deadLetterExpired(_ messages: [ZaqarOutgoingMessage], detail: String) async -> Bool {
        await deadLetter(unbuffered(messages), reason: .retryHorizon, status: nil, zaqarMessage: nil) { _ in detail }
    }

    /// Messages settled outside the lanes (parked ones, which wait in their queue, not in the
    /// buffers): one group nobody awaits.
    private func unbuffered(_ messages: [ZaqarOutgoingMessage]) -> [Pending] {
        let group = Group(count: messages.count, origin: nil) { _ in }
        let enqueuedAt = now()
        return messages.map { Pending(message: $0, size: $0.body.count + 1, group: group, enqueuedAt: enqueuedAt) }
    }

    /// A request about to go to a target, in the metrics.
    private func countRequest(of size: Int) {
        metrics.requests.increment()
        metrics.batchSize.record(size)
    }

    /// When the target's pre-signed URL has expired and no trust stands behind it.
    private func expiredSignedURL(_ target: ZaqarTarget) -> Date? {
        guard target.trust == nil, let expiry = target.signedURLExpiry, expiry <= Date() else { return nil }
        return expiry
    }

    /// Dead-letters the batch when the target's pre-signed URL (and no trust) has expired: true then.
    private func deadLetterIfSignedURLExpired(_ batch: [Pending], target: ZaqarTarget) async -> Bool {
        guard let expiry = expiredSignedURL(target) else { return false }
        await deadLetterSignedURLExpired(batch, target: target, at: expiry)
        return true
    }

    @discardableResult
    private func deadLetterSignedURLExpired(_ batch: [Pending], target: ZaqarTarget, at expiry: Date) async -> Bool {
        await deadLetter(batch, reason: .signedURLExpired, status: nil, zaqarMessage: nil) { _ in
            DeadLetterDetail.signedURLExpired(queue: target.queue, at: expiry)
        }
    }

    /// Why Zaqar's 401 or 403 is a dead letter: no credentials were sent, the trust is gone, or
    /// the credentials (a pre-signed URL; any, where nothing parks) do not reach the queue.
    static func unauthorizedDetail(_ response: ZaqarResponse, target: ZaqarTarget) -> String {
        switch target.credentials {
        case .noAuth:
            return DeadLetterDetail.noCredentials(status: response.status, target: target, zaqar: response.message)
        case .trust, .signedURL(_, trust: .some):
            // Gone only when Keystone refused the trust's token.
            if response.credentialsGone { return DeadLetterDetail.trustGone(zaqar: response.message) }
        case .signedURL(_, trust: .none):
            break
        }
        return DeadLetterDetail.unauthorized(status: response.status, target: target, zaqar: response.message)
    }

    /// A 400 or 413 on this very message.
    @discardableResult
    private func deadLetterRejected(_ batch: [Pending], response: ZaqarResponse) async -> Bool {
        await deadLetter(batch, reason: .rejected, status: response.status, zaqarMessage: response.message) { _ in
            "Zaqar refused the message with \(response.status): \(response.message ?? "no reason given")"
        }
    }

    @discardableResult
    private func deadLetterNotFound(_ batch: [Pending], target: ZaqarTarget, response: ZaqarResponse) async -> Bool {
        await deadLetter(batch, reason: .notFound, status: 404, zaqarMessage: response.message) { _ in
            DeadLetterDetail.notFound(target: target, zaqar: response.message)
        }
    }

    private func circuitSucceeded(_ target: ZaqarTarget) {
        state.withLock { $0.lanes[target]?.circuit.succeeded() }
    }

    /// Settles messages and runs the completions of groups that are now whole.
    private func complete(_ batch: [Pending], delivered: Bool) {
        // Counted before they are settled: whoever learns they are delivered finds them counted.
        if delivered {
            metrics.delivered.increment(by: batch.count)
            let now = now()
            for pending in batch { metrics.latency.recordNanoseconds((now - pending.enqueuedAt).nanoseconds) }
        }
        if let activity {
            let subscriptions = batch.map(\.message.subscriptionID)
            if delivered { activity.delivered(subscriptions) } else { activity.deadLettered(subscriptions) }
        }
        settle(batch) { outcome in
            if delivered { outcome.delivered += 1 } else { outcome.deadLettered += 1 }
        }
    }

    /// Counts each message into its group's outcome; runs the completions of groups now whole.
    private func settle(_ batch: [Pending], _ count: (inout DeliveryOutcome) -> Void) {
        let finished = state.withLock { _ in Self.settleLocked(batch, count) }
        for (group, outcome) in finished { group.completion(outcome) }
    }

    /// `settle`'s counting, for a caller that holds the batcher's lock: the groups now whole, whose
    /// completions the caller runs once the lock is released.
    private static func settleLocked(
        _ batch: [Pending], _ count: (inout DeliveryOutcome) -> Void
    ) -> [(Group, DeliveryOutcome)] {
        var finished: [(Group, DeliveryOutcome)] = []
        for pending in batch {
            let group = pending.group
            count(&group.outcome)
            if let outcome = group.settleOne() { finished.append((group, outcome)) }
        }
        return finished
    }

    /// Stores dead letters, retrying until the sink takes them, then settles the messages (those
    /// whose origin is given back while it retries are settled as given back instead).
    /// - Returns: false when the batcher stopped before the letters were stored: nothing was
    ///   settled, and whoever holds the messages must keep them (not ack them); true when all
    ///   are settled.
    @discardableResult
    private func deadLetter(
        _ batch: [Pending], reason: DeadLetter.Reason, status: Int?, zaqarMessage: String?, detail: (Pending) -> String
    ) async -> Bool {
        let at = Date().timeIntervalSince1970
        var letters = batch.map { pending in
            DeadLetter(
                reason: reason, detail: detail(pending), httpStatus: status, zaqarMessage: zaqarMessage,
                target: pending.message.target.description, subscriptionID: pending.message.subscriptionID,
                eventID: pending.message.eventID, project: pending.message.target.project,
                body: String(decoding: pending.message.body, as: UTF8.self), at: at,
                allProjects: pending.message.allProjects
            )
        }
        var attempt = 0
        var random = SystemRandomNumberGenerator()
        var batch = batch
        var retryAt: Duration?
        while true {
            if isStopped { return false }
            // Their events go to the next owner, which dead-letters them again if it must: not
            // held here while the dead-letter store is down (a handover waits for them).
            if attempt > 0, settleGivenBack(&batch, alongside: &letters) { return true }
            if let retryAt, now() < retryAt, !Task.isCancelled {
                await pause(retryAt - now(), for: batch)
                continue
            }
            do {
                try await deadLetters.deadLetter(letters)
                break
            } catch {
                attempt += 1
                metrics.deadLetterWriteFailures.increment()
                if attempt == 1 || attempt % 10 == 0 {
                    logger.error(
                        "cannot store dead letters; holding them and retrying",
                        metadata: [LogKey.error: "\(error)", LogKey.deliveryCount: "\(letters.count)"])
                }
                retryAt =
                    now() + Backoff(base: .milliseconds(100), cap: .seconds(5)).delay(attempt: attempt, using: &random)
            }
        }
        metrics.deadLettered(reason).increment(by: batch.count)
        if let activity, let first = batch.first {
            activity.failed(
                Set(batch.map(\.message.subscriptionID)), error: "dead-lettered (\(reason.rawValue)): \(detail(first))")
        }
        logger.warning(
            "dead-lettered messages",
            metadata: [
                LogKey.deliveryReason: "\(reason.rawValue)", LogKey.deliveryCount: "\(batch.count)",
                LogKey.zaqarTarget: "\(batch.first?.message.target.description ?? "")",
            ])
        complete(batch, delivered: false)
        return true
    }
}
