import CCurl
import Foundation
import HeraldModel
import Synchronization

/// HTTP POSTs over libcurl's multi interface, driven by one thread of its own: Zaqar's
/// transport (it used less CPU per request than AsyncHTTPClient at the same rate:
/// BENCHMARKS.md, "HTTP clients").
///
/// The multi handle, its easy handles, their header lists and answers belong to that thread
/// alone; other threads only queue requests (under `queued`'s lock) and wake it with
/// `curl_multi_wakeup`, which libcurl allows from any thread. `shutdown()` ends the thread once
/// what was queued is done. Each request is bounded as a whole (`requestTimeout`: connect,
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

        package init(url: String, headers: [String], body: [UInt8], maxBody: Int) {
            self.url = url
            self.headers = headers
            self.body = body
            self.maxBody = maxBody
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
        package var description: String { "HTTP transport error \(code): \(message)" }
    }

    private struct Queued: Sendable {
        var request: Request
        var done: CheckedContinuation<Result<Answer, Failure>, Never>
    }

    /// A C pointer that only the transport's thread dereferences (`curl_multi_wakeup`, which
    /// libcurl documents as callable from any thread, aside).
    private struct Handle: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
    }

    private let multi: Handle?
    private let queued = Mutex<(requests: [Queued], closing: Bool)>(([], false))
    private let finished = Mutex<(done: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))
    private let connectTimeoutMilliseconds: Int
    private let requestTimeoutMilliseconds: Int
    private let caFile: String?

    /// libcurl's process-wide set-up, once, before any handle (it is not thread-safe itself).
    private static let initialised: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

    /// - Parameters:
    ///   - connectionsPerHost: at most this many connections to one host; more requests wait.
    ///   - caFile: the CAs that sign the servers' certificates; nil: the system's.
    package init(connectionsPerHost: Int, connectTimeout: Duration, requestTimeout: Duration, caFile: String?) {
        connectTimeoutMilliseconds = max(1, Int(connectTimeout.milliseconds))
        requestTimeoutMilliseconds = max(1, Int(requestTimeout.milliseconds))
        self.caFile = caFile
        let multi = Self.initialised ? herald_curl_multi_new(max(1, connectionsPerHost), 64) : nil
        self.multi = multi.map(Handle.init)
        guard multi != nil else {
            // Out of memory at start: every request fails with that reason, nothing traps.
            finished.withLock { $0.done = true }
            return
        }
        let thread = Thread { [self] in self.loop() }
        thread.name = "herald-curl"
        thread.start()
    }

    /// Posts `request` and waits for its answer (at most the request timeout, plus a wake-up).
    /// - Throws: `Failure` when no complete answer came (connection refused or reset, TLS
    ///   refused, timed out), or the transport is shut down.
    package func post(_ request: Request) async throws(Failure) -> Answer {
        let result: Result<Answer, Failure> = await withCheckedContinuation { continuation in
            guard let multi else {
                continuation.resume(returning: .failure(Failure(code: -1, message: "libcurl could not start")))
                return
            }
            let accepted = queued.withLock { state in
                guard !state.closing else { return false }
                state.requests.append(Queued(request: request, done: continuation))
                return true
            }
            guard accepted else {
                continuation.resume(returning: .failure(Failure(code: -1, message: "the HTTP transport is shut down")))
                return
            }
            curl_multi_wakeup(multi.pointer)
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
            queued.withLock { $0.closing = true }
            if let multi { curl_multi_wakeup(multi.pointer) }
        }
    }

    /// One transfer in flight: who waits for it, and what libcurl reads and writes meanwhile.
    private struct Transfer {
        var done: CheckedContinuation<Result<Answer, Failure>, Never>
        var headers: UnsafeMutablePointer<curl_slist>?
        var answer: UnsafeMutablePointer<herald_curl_answer>
    }

    /// The thread's loop: adds what was queued, lets libcurl work, answers what finished, and
    /// sleeps in `curl_multi_poll` until a socket or a wake-up needs it.
    private func loop() {
        guard let multi = multi?.pointer else { return }
        var inFlight: [UnsafeMutableRawPointer: Transfer] = [:]
        while true {
            let (requests, closing) = queued.withLock { state in
                defer { state.requests.removeAll(keepingCapacity: true) }
                return (state.requests, state.closing)
            }
            for item in requests { start(item, on: multi, into: &inFlight) }
            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            var easy: UnsafeMutableRawPointer?
            var status = 0
            var result: Int32 = 0
            while herald_curl_next_done(multi, &easy, &status, &result) == 1, let done = easy {
                curl_multi_remove_handle(multi, done)
                if let transfer = inFlight.removeValue(forKey: done) {
                    transfer.done.resume(
                        returning: Self.outcome(transfer.answer.pointee, status: status, result: result))
                    curl_slist_free_all(transfer.headers)
                    herald_curl_answer_free(transfer.answer)
                }
                curl_easy_cleanup(done)
            }
            if closing && inFlight.isEmpty { break }
            curl_multi_poll(multi, nil, 0, 1000, nil)
        }
        curl_multi_cleanup(multi)
        let waiting = finished.withLock { state in
            state.done = true
            defer { state.waiting = [] }
            return state.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    private func start(
        _ item: Queued, on multi: UnsafeMutableRawPointer, into inFlight: inout [UnsafeMutableRawPointer: Transfer]
    ) {
        // A line end or NUL in a header (a record written around the API's checks) would start
        // another header: refused, never sent.
        if item.request.headers.contains(where: { $0.utf8.contains { $0 == 10 || $0 == 13 || $0 == 0 } }) {
            item.done.resume(
                returning: .failure(Failure(code: -1, message: "a header holds a line end or NUL; not sent")))
            return
        }
        guard let answer = herald_curl_answer_new(max(0, item.request.maxBody)) else {
            item.done.resume(returning: .failure(Failure(code: -1, message: "out of memory")))
            return
        }
        var headers: UnsafeMutablePointer<curl_slist>? = nil
        for line in item.request.headers { headers = curl_slist_append(headers, line) }
        // Without it, libcurl may ask for `100 Continue` and wait a second for a server that never sends one.
        headers = curl_slist_append(headers, "Expect:")
        let easy = item.request.body.withUnsafeBytes { body in
            herald_curl_request_new(
                item.request.url, headers, body.baseAddress, body.count, connectTimeoutMilliseconds,
                requestTimeoutMilliseconds, caFile, answer)
        }
        guard let easy, curl_multi_add_handle(multi, easy) == CURLM_OK else {
            if let easy { curl_easy_cleanup(easy) }
            curl_slist_free_all(headers)
            herald_curl_answer_free(answer)
            item.done.resume(returning: .failure(Failure(code: -1, message: "libcurl could not start a request")))
            return
        }
        inFlight[easy] = Transfer(done: item.done, headers: headers, answer: answer)
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
            return .failure(Failure(code: result, message: detail.isEmpty ? summary : detail))
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
