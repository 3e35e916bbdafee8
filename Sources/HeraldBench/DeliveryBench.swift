import ArgumentParser
import CoreMetrics
import Delivery
import Foundation
import HeraldModel
import Synchronization
import ZaqarSink

/// `herald-bench delivery`: messages/s into a real Zaqar at fixed batch sizes (1 is
/// the seed service's one POST per event) and with the batcher's automatic
/// batching, then into a sink that answers 201 at once (Herald's own ceiling).
struct DeliveryBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delivery", abstract: "Messages/s into Zaqar by batch size, and into an instant sink.")

    @Option(help: "Zaqar URL (default: $HERALD_TEST_ZAQAR_URL).")
    var zaqarURL: String = ProcessInfo.processInfo.environment["HERALD_TEST_ZAQAR_URL"] ?? "http://127.0.0.1:8888"
    @Option(help: "Messages at batch size 1 (slow: one POST each).") var singles: Int = 2_000
    @Option(help: "Messages for every other run.") var messages: Int = 20_000
    @Option(help: "Event size in bytes.") var size: Int = 1_000

    func run() async throws {
        let project = "bench-" + UUID().uuidString.prefix(8).lowercased()
        print(
            "Delivery: \(size) B events, one lane (Zaqar's built-in server takes one connection at a time), project \(project)"
        )
        print("  run                      messages   msg/s      vs batch 1")
        let one = try await measure(
            label: "zaqar, batch size 1", url: zaqarURL, project: project, count: singles, batch: 1, separately: false)
        for batch in [10, 50] {
            _ = try await measure(
                label: "zaqar, batch size \(batch)", url: zaqarURL, project: project, count: messages, batch: batch,
                separately: false, baseline: one)
        }
        let auto = try await measure(
            label: "zaqar, automatic", url: zaqarURL, project: project, count: messages, batch: nil, separately: true,
            baseline: one)
        print(String(format: "  automatic / batch 1 = %.1fx   (goal >= 10x)", auto / one))
        let sink = try await ZaqarSink.instant()
        _ = try await measure(
            label: "instant sink, automatic", url: sink.url, project: project, count: messages * 5, batch: nil,
            separately: true, baseline: one)
        await sink.close()
    }

    /// Delivers `count` messages into a fresh queue; `batch` fixes the batch size (nil: the defaults),
    /// `separately` submits each message as its own delivery, as the pipeline does.
    func measure(
        label: String, url: String, project: String, count: Int, batch: Int?, separately: Bool, baseline: Double? = nil
    ) async throws -> Double {
        var configuration = DeliveryConfiguration()
        if let batch {
            configuration.maxBatchMessages = batch
            configuration.linger = .milliseconds(50)
        }
        let sink = CountingDeadLetters()
        let zaqar = ZaqarClient(requestTimeout: .seconds(30))
        let counts = RequestCounting()
        let batcher = try DeliveryBatcher(
            configuration: configuration, zaqar: zaqar, deadLetters: sink, metrics: counts)
        let target = ZaqarTarget(
            baseURL: url, project: project, queue: "bench-" + UUID().uuidString.prefix(8).lowercased())
        let pad = String(repeating: "x", count: max(0, size - 120))
        let outgoing = (0..<count).map { index in
            let event = Array(
                "{\"event_type\":\"compute.instance.update\",\"message_id\":\"\(index)\",\"payload\":{\"pad\":\"\(pad)\"}}"
                    .utf8)
            return ZaqarOutgoingMessage(
                target: target,
                body: ZaqarMessageEncoding.message(
                    event: event, ttl: 300, subscriptionID: "bench", eventID: "\(index)", partition: 0, epoch: 1),
                subscriptionID: "bench", eventID: "\(index)"
            )
        }
        let start = ContinuousClock.now
        let outcome: DeliveryOutcome
        if separately {
            let done = BenchTally(expected: count)
            outcome = await withCheckedContinuation { continuation in
                done.whenDone = { continuation.resume(returning: $0) }
                Task { for message in outgoing { await batcher.submit([message]) { done.add($0) } } }
            }
        } else {
            outcome = await batcher.deliver(outgoing)
        }
        let seconds = (ContinuousClock.now - start).seconds
        await zaqar.shutdown()
        guard outcome.delivered == count, sink.count == 0 else {
            throw ValidationError(
                "\(label): delivered \(outcome.delivered) of \(count), dead letters \(sink.count): \(sink.first ?? "")")
        }
        let rate = Double(count) / seconds
        let ratio = baseline.map { String(format: "%6.1fx", rate / $0) } ?? "     -"
        print(
            "  \(label.padding(toLength: 24, withPad: " ", startingAt: 0)) \(String(format: "%8d   %8.0f   %@", count, rate, ratio))  (\(counts.requests) requests)"
        )
        return rate
    }
}

final class CountingDeadLetters: DeadLetterSink {
    private let letters = Mutex<[DeadLetter]>([])
    var count: Int { letters.withLock { $0.count } }
    var first: String? { letters.withLock { $0.first.map { "\($0.reason.rawValue): \($0.detail)" } } }
    func deadLetter(_ letters: [DeadLetter]) async throws { self.letters.withLock { $0 += letters } }
}

/// Adds up outcomes of separate submissions and reports once all are in.
final class BenchTally: @unchecked Sendable {
    private let lock = NSLock()
    private var total = DeliveryOutcome()
    private var count = 0
    private let expected: Int
    // Set before the first submission.
    var whenDone: (@Sendable (DeliveryOutcome) -> Void)?

    init(expected: Int) { self.expected = expected }

    func add(_ outcome: DeliveryOutcome) {
        lock.lock()
        total.delivered += outcome.delivered
        total.deadLettered += outcome.deadLettered
        count += 1
        let done = count == expected ? total : nil
        lock.unlock()
        if let done { whenDone?(done) }
    }
}

extension ZaqarSink {
    /// A sink that answers every request 201 at once: what Herald can push when the target costs nothing.
    static func instant() async throws -> ZaqarSink {
        try await ZaqarSink { _ in .accept }
    }
}

/// The benchmark's metrics: Herald's requests to Zaqar counted, nothing else kept, so that what is
/// measured carries no more than a node's own metrics would.
final class RequestCounting: MetricsFactory, Sendable {
    private final class Requests: CounterHandler, Sendable {
        let count = Atomic<Int64>(0)
        func increment(by amount: Int64) { count.add(amount, ordering: .relaxed) }
        func reset() { count.store(0, ordering: .relaxed) }
    }

    private let counter = Requests()

    var requests: Int64 { counter.count.load(ordering: .relaxed) }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        label == "herald_delivery_requests_total" ? counter : NOOPMetricsHandler.instance
    }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        NOOPMetricsHandler.instance
    }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        NOOPMetricsHandler.instance
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { NOOPMetricsHandler.instance }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
