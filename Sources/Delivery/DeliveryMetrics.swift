import HeraldModel
import Metrics

/// Delivery's metrics, through swift-metrics (the executable picks the backend).
/// Labels are bounded: no per-project or per-queue label.
enum DeliveryMetrics {
    static let requests = Counter(label: "herald_delivery_requests_total")
    static let delivered = Counter(label: "herald_delivered_messages_total")
    static let retries = Counter(label: "herald_delivery_retries_total")
    /// Messages a lane moved into parking (a failing target's, or queued behind parked ones).
    static let parked = Counter(label: "herald_delivery_parked_total")
    /// Messages per request to Zaqar.
    static let batchSize = Recorder(label: "herald_delivery_batch_size", aggregate: true)
    /// From the message's submission to the batcher until Zaqar took it.
    static let latency = Metrics.Timer(label: "herald_delivery_latency_seconds")
    private static let deadLetters = Dictionary(
        uniqueKeysWithValues: DeadLetter.Reason.allCases.map {
            ($0, Counter(label: "herald_dead_letters_total", dimensions: [("reason", $0.rawValue)]))
        })

    static func deadLettered(_ reason: DeadLetter.Reason) -> Counter {
        deadLetters[reason]!
    }
}

/// `herald_dead_letter_write_failures_total`: Redis refused or could not take dead letters; the
/// node holds them and retries with backoff (an alert-worthy rate: nothing moves meanwhile).
public enum DeadLetterWriteFailures {
    public static let counter = Counter(label: "herald_dead_letter_write_failures_total")
}
