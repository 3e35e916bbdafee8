import CCurl
import Foundation
import HeraldModel
import Synchronization

/// HTTP POSTs over libcurl's multi interface, driven by one thread of its own: Zaqar's
/// transport (it used less CPU per request than AsyncHTTPClient at the same rate:
/// BENCHMARKS.md, "HTTP clients").
///
/// The multi handle, its easy handles, their header lists and answers belong to that thread
/// alone; other threads only queue requests (under `inbox`'s lock) and wake it with
/// `curl_multi_wakeup`, which libcurl allows from any thread, when it sleeps (once per sleep).
/// Finished transfers' easy handles are reset and used again (up to `idleHandles`).
/// `shutdown()` ends the thread once what was queued is done. Each request is bounded as a whole (`requestTimeout`: connect,
/// send, answer and body), reads at most `maxBody` bytes of an answer (more ends the transfer
/// and closes the connection), follows no redirect, uses no proxy, speaks only http and https,
/// and checks certificates and host names (against `caFile` when given).
package final class CurlTransport: Sendable {
    package struct Request: Sendable {
        package var url: String
        /// Whole header lines (`Name: value`), without line ends.
        package var headers: [String]
        package var body: [UInt8]
        /// The most of the answer's body kept.
        package var maxBody: Int
        /// This request's limit, when not the transport's request timeout.
        package var timeout: Duration?

        package init(url: String, headers: [String], body: [UInt8], maxBody: Int, timeout: Duration? = nil) {
            self.url = url
            self.headers = headers
            self.body = body
            self.maxBody = maxBody
            self.timeout = timeout
        }
    }

    package struct Answer: Sendable {
        package var status: Int
        package var contentType: String?
        package var retryAfter: String?
        package var body: [UInt8]
        /// The body was longer than the request's `maxBody`.
        package var truncated: Bool
    }

    /// No answer: libcurl's code and its own words (`SSL certificate problem: ...`, `Operation
    /// timed out after 2000 milliseconds ...`).
    package struct Failure: Error, CustomStringConvertible {
        package var code: Int32
        package var message: String
        /// The target's own silence: it did not accept a connection in time (libcurl's connect
        /// timeout), or it had the request for at least half the request's time and gave no
        /// complete answer. Not a request that spent its time waiting for one of the host's
        /// connections (other targets' requests can cause that), nor one cancelled.
        package var timedOut = false
        package var description: String { "HTTP transport error \(code): \(message)" }
    }

    private struct Queued: Sendable {
        var number: UInt64
        var request: Request
        /// The whole request's limit, counted from when it was queued: waiting for one of the
        /// host's connections counts too.
        var deadline: ContinuousClock.Instant
        var done: CheckedContinuation<Result<Answer, Failure>, Never>
    }

    /// What other threads hand the loop, under one lock; `curl_multi_wakeup` is called under it
    /// too, so that it never meets a multi handle the loop has freed (`gone`).
    private struct Inbox: Sendable {
        var requests: [Queued] = []
        /// Requests whose callers were cancelled: given up, answered with a failure.
        var cancelled: [UInt64] = []
        var closing = false
        var gone = false
        /// The loop is in (or about to enter) `curl_multi_poll` with nothing queued: the next
        /// request or cancellation wakes it. While it works, it finds them without a wake-up.
        var sleeping = false

        /// Whether the loop needs a wake-up for what was just queued (one per sleep).
        mutating func wakeNeeded() -> Bool {
            defer { sleeping = false }
            return sleeping
        }
    }

    /// A C pointer that only the transport's thread dereferences (`curl_multi_wakeup`, which
    /// libcurl documents as callable from any thread, aside).
    private struct Handle: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
    }

    private let multi: Handle?
    private let inbox = Mutex(Inbox())
    /// Request numbers, taken without the inbox's lock.
    private let numbers = Atomic<UInt64>(0)
    private let finished = Mutex<(done: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))
    private let connectTimeoutMilliseconds: Int
    private let requestTimeout: Duration
    private let caFile: String?

    /// libcurl's process-wide set-up, once, before any handle (it is not thread-safe itself).
    private static let initialised: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

    /// - Parameters:
    ///   - connectionsPerHost: at most this many connections to one host; more requests wait
    ///     (within their request timeout).
    ///   - requestTimeout: the limit of a whole request, from the moment it is queued.
    ///   - caFile: the CAs that sign the servers' certificates (those alone); nil: the system's.
    package init(connectionsPerHost: Int, connectTimeout: Duration, requestTimeout: Duration, caFile: String?) {
        connectTimeoutMilliseconds = max(1, Int(connectTimeout.milliseconds))
        self.requestTimeout = max(requestTimeout, .milliseconds(1))
        self.caFile = caFile
        // Idle connections kept for reuse, all hosts together (libcurl closes the oldest idle one
        // past it): the share of a few hosts.
        let perHost = max(1, connectionsPerHost)
        let multi = Self.initialised ? herald_curl_multi_new(perHost, max(64, 4 * perHost)) : nil
        self.multi = multi.map(Handle.init)
        guard multi != nil else {
            // Out of memory at start: every request fails with that reason, nothing traps.
            inbox.withLock { $0.gone = true }
            finished.withLock { $0.done = true }
            return
        }
        let thread = Thread { [self] in self.loop() }
        thread.name = "herald-curl"
        thread.start()
    }

    /// Posts `request` and waits for its answer: at most the request timeout (and a wake-up of
    /// the transport's thread); a cancelled caller gets a failure at once.
    /// - Throws: `Failure` when no complete answer came (connection refused or reset, TLS
    ///   refused, timed out, cancelled), or the transport is shut down.
    package func post(_ request: Request) async throws(Failure) -> Answer {
        // Numbered first, so that a cancellation can name it whether or not it is queued yet.
        let number = numbers.wrappingAdd(1, ordering: .relaxed).oldValue
        let result: Result<Answer, Failure> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let refusal: String? = inbox.withLock { state in
                    guard let multi, !state.gone else { return "libcurl could not start" }
                    guard !state.closing else { return "the HTTP transport is shut down" }
                    guard !Task.isCancelled else { return "cancelled" }
                    state.requests.append(
                        Queued(
                            number: number, request: request, deadline: .now + (request.timeout ?? requestTimeout),
                            done: continuation))
                    if state.wakeNeeded() { curl_multi_wakeup(multi.pointer) }
                    return nil
                }
                if let refusal { continuation.resume(returning: .failure(Failure(code: -1, message: refusal))) }
            }
        } onCancel: {
            inbox.withLock { state in
                guard let multi, !state.gone else { return }
                state.cancelled.append(number)
                if state.wakeNeeded() { curl_multi_wakeup(multi.pointer) }
            }
        }
        return try result.get()
    }

    /// Lets what was queued finish, then ends the thread and frees the multi handle.
    package func shutdown() async {
        await withCheckedContinuation { continuation in
            let done = finished.withLock { state -> Bool in
                if !state.done { state.waiting.append(continuation) }
                return state.done
            }
            if done {
                continuation.resume()
                return
            }
            inbox.withLock { state in
                state.closing = true
                if let multi, !state.gone { curl_multi_wakeup(multi.pointer) }
            }
        }
    }

    /// One transfer in flight: who waits for it, until when, and what libcurl reads and writes meanwhile.
    private struct Transfer {
        var number: UInt64
        var deadline: ContinuousClock.Instant
        /// When it was handed to libcurl (its times count from there).
        var added: ContinuousClock.Instant
        var done: CheckedContinuation<Result<Answer, Failure>, Never>
        var headers: UnsafeMutablePointer<curl_slist>?
        var answer: UnsafeMutablePointer<herald_curl_answer>
    }

    /// The thread's loop: adds what was queued, lets libcurl work, answers what finished, gives
    /// up what is past its deadline or cancelled, and sleeps in `curl_multi_poll` until a
    /// socket, a wake-up or the next deadline needs it.
    private func loop() {
        guard let multi = multi?.pointer else { return }
        var inFlight: [UnsafeMutableRawPointer: Transfer] = [:]
        // Easy handles of finished transfers, set up again for the next ones: libcurl keeps a
        // handle's buffers (16 KiB and more) across a reset, which a new handle allocates anew.
        var idle: [UnsafeMutableRawPointer] = []
        // The inbox's lists are swapped with these, emptied ones: nothing is allocated or copied
        // under the lock, which every `post` takes.
        var requests: [Queued] = []
        var cancelled: [UInt64] = []
        while true {
            let closing = inbox.withLock { state in
                swap(&state.requests, &requests)
                swap(&state.cancelled, &cancelled)
                return state.closing
            }
            for item in requests { start(item, on: multi, into: &inFlight, idle: &idle) }
            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            var easy: UnsafeMutableRawPointer?
            var status = 0
            var result: Int32 = 0
            while herald_curl_next_done(multi, &easy, &status, &result) == 1, let done = easy {
                guard let transfer = inFlight.removeValue(forKey: done) else { continue }
                var outcome = Self.outcome(transfer.answer.pointee, status: status, result: result)
                if case .failure(var failure) = outcome, result == Int32(CURLE_OPERATION_TIMEDOUT.rawValue) {
                    // libcurl never times out a transfer still waiting for one of the host's
                    // connections: before sending, this is the target not accepting one in time.
                    let sent = herald_curl_pretransfer_us(done)
                    failure.timedOut = sent == 0 || Self.targetHadTime(transfer, sentAfter: sent, now: .now)
                    outcome = .failure(failure)
                }
                finish(transfer, easy: done, on: multi, idle: &idle, with: outcome)
            }
            // libcurl counts its timeout from a transfer's start, and a transfer waiting for a
            // free connection has none: the deadline from the queue bounds both.
            let now = ContinuousClock.now
            for (handle, transfer) in inFlight where transfer.deadline <= now || cancelled.contains(transfer.number) {
                inFlight[handle] = nil
                let failure: Failure
                if transfer.deadline <= now {
                    let sent = herald_curl_pretransfer_us(handle)
                    failure = Failure(
                        code: Int32(CURLE_OPERATION_TIMEDOUT.rawValue),
                        message: sent > 0
                            ? "no complete answer within \(requestTimeout.seconds) s (the request timeout)"
                            : "no connection to the target within \(requestTimeout.seconds) s (the request timeout; the host's connections were busy)",
                        timedOut: sent > 0 && Self.targetHadTime(transfer, sentAfter: sent, now: now))
                } else {
                    failure = Failure(code: Int32(CURLE_ABORTED_BY_CALLBACK.rawValue), message: "cancelled")
                }
                finish(transfer, easy: handle, on: multi, idle: &idle, with: .failure(failure))
            }
            // Emptied before sleeping: what was just started is not held through the poll.
            requests.removeAll(keepingCapacity: true)
            cancelled.removeAll(keepingCapacity: true)
            if closing && inFlight.isEmpty {
                let stop = inbox.withLock { state -> Bool in
                    guard state.requests.isEmpty else { return false }
                    state.gone = true
                    return true
                }
                if stop { break }
            }
            let untilDeadline = inFlight.values.map(\.deadline).min().map { $0 - now } ?? .seconds(1)
            let wait = Int32(max(1, min(1000, untilDeadline.milliseconds + 1)))
            // Asleep only with nothing queued; what is queued from now on wakes the poll (a
            // shutdown always does).
            let sleep = inbox.withLock { state -> Bool in
                state.sleeping = state.requests.isEmpty && state.cancelled.isEmpty
                return state.sleeping
            }
            if !sleep { continue }
            if curl_multi_poll(multi, nil, 0, wait, nil) != CURLM_OK {
                // Not expected; a pause instead of a loop at full speed.
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
        for easy in idle { curl_easy_cleanup(easy) }
        curl_multi_cleanup(multi)
        let waiting = finished.withLock { state in
            state.done = true
            defer { state.waiting = [] }
            return state.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    /// Takes a transfer out of the multi handle, frees it (the easy handle first: it points at
    /// the header list and the answer), and answers its caller.
    private func finish(
        _ transfer: Transfer, easy: UnsafeMutableRawPointer, on multi: UnsafeMutableRawPointer,
        idle: inout [UnsafeMutableRawPointer], with outcome: Result<Answer, Failure>
    ) {
        curl_multi_remove_handle(multi, easy)
        // Kept for the next request (reset then), up to as many as transfers run at once here.
        if idle.count < Self.idleHandles {
            idle.append(easy)
        } else {
            curl_easy_cleanup(easy)
        }
        curl_slist_free_all(transfer.headers)
        herald_curl_answer_free(transfer.answer)
        transfer.done.resume(returning: outcome)
    }

    /// Easy handles kept between transfers.
    private static let idleHandles = 16

    private func start(
        _ item: Queued, on multi: UnsafeMutableRawPointer, into inFlight: inout [UnsafeMutableRawPointer: Transfer],
        idle: inout [UnsafeMutableRawPointer]
    ) {
        func fail(_ message: String) {
            item.done.resume(returning: .failure(Failure(code: -1, message: message)))
        }
        // A line end or NUL in a header (a record written around the API's checks) would start
        // another header: refused, never sent.
        if item.request.headers.contains(where: { $0.utf8.contains { $0 == 10 || $0 == 13 || $0 == 0 } }) {
            fail("a header holds a line end or NUL; not sent")
            return
        }
        guard item.deadline > .now else {
            fail("no complete answer within \(requestTimeout.seconds) s (the request timeout)")
            return
        }
        var headers: UnsafeMutablePointer<curl_slist>? = nil
        // Without the last one, libcurl may ask for `100 Continue` and wait a second for a server that never sends one.
        for line in item.request.headers + ["Expect:"] {
            guard let longer = curl_slist_append(headers, line) else {
                curl_slist_free_all(headers)
                fail("out of memory")
                return
            }
            headers = longer
        }
        guard let answer = herald_curl_answer_new(max(0, item.request.maxBody)) else {
            curl_slist_free_all(headers)
            fail("out of memory")
            return
        }
        let remaining = max(1, Int((item.deadline - .now).milliseconds))
        let reuse = idle.popLast()
        let easy = item.request.body.withUnsafeBytes { body in
            herald_curl_request_new(
                reuse, item.request.url, headers, body.baseAddress, body.count,
                min(connectTimeoutMilliseconds, remaining),
                remaining, caFile, answer)
        }
        guard let easy, curl_multi_add_handle(multi, easy) == CURLM_OK else {
            if let easy { curl_easy_cleanup(easy) }
            curl_slist_free_all(headers)
            herald_curl_answer_free(answer)
            fail("libcurl could not start a request")
            return
        }
        inFlight[easy] = Transfer(
            number: item.number, deadline: item.deadline, added: .now, done: item.done, headers: headers,
            answer: answer)
    }

    /// Whether the target had the request for at least half the time the request had in all (the
    /// rest may have gone waiting for a connection): only then is its silence its own.
    private static func targetHadTime(
        _ transfer: Transfer, sentAfter microseconds: Int64, now: ContinuousClock.Instant
    ) -> Bool {
        let sentAt = transfer.added + .microseconds(microseconds)
        return now - sentAt >= (transfer.deadline - transfer.added) / 2
    }

    /// The answer, or why there is none. A body cut at its limit ends the transfer with a write
    /// error; the status and headers had come, so that is an answer.
    private static func outcome(_ answer: herald_curl_answer, status: Int, result: Int32) -> Result<Answer, Failure> {
        let truncated = answer.truncated != 0
        guard result == Int32(CURLE_OK.rawValue) || (truncated && status > 0) else {
            var error = answer.error
            let detail = withUnsafeBytes(of: &error) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            let summary = String(cString: curl_easy_strerror(CURLcode(UInt32(bitPattern: result))))
            // libcurl's words can quote the server (a certificate's subject): cleaned like any answer.
            let words = TargetAnswer.cut(TargetAnswer.sanitise(detail.isEmpty ? summary : detail))
            return .failure(Failure(code: result, message: words))
        }
        func text<T>(_ field: T) -> String? {
            var field = field
            let value = withUnsafeBytes(of: &field) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            return value.isEmpty ? nil : value
        }
        let body = answer.body.map { Array(UnsafeBufferPointer(start: $0, count: answer.body_length)) } ?? []
        return .success(
            Answer(
                status: status, contentType: text(answer.content_type), retryAfter: text(answer.retry_after),
                body: body, truncated: truncated))
    }
}
