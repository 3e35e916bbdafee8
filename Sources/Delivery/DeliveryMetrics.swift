import HeraldModel
import Metrics

/// Delivery's metrics, through swift-metrics: made from the factory the batcher is given, the
/// node's backend (Prometheus) or a test's (`MetricsTestKit.TestMetrics`), which is how tests read
/// the counts: each is kept once, here. Labels are bounded: no per-project or per-queue label.
struct DeliveryMetrics: Sendable {
    let requests: Counter
    let delivered: Counter
    let retries: Counter
    /// Messages a lane moved into parking (a failing target's, or queued behind parked ones).
    let parked: Counter
    /// A lane's circuit went from closed (or half-open) to open.
    let circuitOpenings: Counter
    /// Messages per request to Zaqar.
    let batchSize: Recorder
    /// From the message's submission to the batcher until Zaqar took it.
    let latency: Metrics.Timer
    /// `herald_dead_letter_write_failures_total`: Redis refused or could not take dead letters;
    /// the batcher holds them and retries with backoff (an alert-worthy rate: nothing moves meanwhile).
    let deadLetterWriteFailures: Counter
    private let deadLetters: [DeadLetter.Reason: Counter]
    private let factory: any MetricsFactory

    init(factory: any MetricsFactory) {
        self.factory = factory
        requests = Counter(label: "herald_delivery_requests_total", factory: factory)
        delivered = Counter(label: "herald_delivered_messages_total", factory: factory)
        retries = Counter(label: "herald_delivery_retries_total", factory: factory)
        parked = Counter(label: "herald_delivery_parked_total", factory: factory)
        circuitOpenings = Counter(label: "herald_delivery_circuit_openings_total", factory: factory)
        batchSize = Recorder(label: "herald_delivery_batch_size", aggregate: true, factory: factory)
        latency = Metrics.Timer(label: "herald_delivery_latency_seconds", factory: factory)
        deadLetterWriteFailures = Counter(label: "herald_dead_letter_write_failures_total", factory: factory)
        deadLetters = Dictionary(
            uniqueKeysWithValues: DeadLetter.Reason.allCases.map {
                ($0, Self.deadLetterCounter($0, factory: factory))
            })
    }

    static func deadLetterCounter(_ reason: DeadLetter.Reason, factory: any MetricsFactory) -> Counter {
        Counter(label: "herald_dead_letters_total", dimensions: [("reason", reason.rawValue)], factory: factory)
    }

    func deadLettered(_ reason: DeadLetter.Reason) -> Counter {
        deadLetters[reason] ?? Self.deadLetterCounter(reason, factory: factory)
    }
}
