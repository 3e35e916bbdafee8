import CCurl
import Foundation
import Synchronization

/// HTTP POSTs over libcurl's multi interface, driven by one thread of its own: the client the
/// scale issue asked to measure against AsyncHTTPClient (`herald-bench http-clients`).
///
/// The multi handle, its easy handles and their header lists belong to that thread alone; other
/// threads only queue requests (under `queued`'s lock) and wake it with `curl_multi_wakeup`,
/// which libcurl allows from any thread. `close()` ends the thread once what was queued is done.
final class CurlPostClient: Sendable {
    struct Request: Sendable {
        var url: String
        var headers: [String]
        var body: [UInt8]
    }

    /// The answer: the HTTP status, or the libcurl error (a `CURLcode`, never 0) when none came.
    enum Answer: Sendable, Equatable {
        case status(Int)
        case failed(Int32)
    }

    private struct Queued: Sendable {
        var request: Request
        var done: CheckedContinuation<Answer, Never>
    }

    /// A C pointer that only the client's thread dereferences (the multi handle also takes
    /// `curl_multi_wakeup` from other threads, which libcurl documents as thread-safe).
    private struct Handle: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
    }

    private let multi: Handle
    private let queued = Mutex<(requests: [Queued], closing: Bool)>(([], false))
    private let finished = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let timeoutMilliseconds: Int

    /// - Parameters:
    ///   - connectionsPerHost: at most this many connections to one host (AsyncHTTPClient's
    ///     default soft limit is 8).
    ///   - timeout: each request's limit.
    /// - Throws: `CurlError` when libcurl cannot make a multi handle.
    init(connectionsPerHost: Int = 8, timeout: Duration = .seconds(30)) throws {
        guard curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK,
            let multi = herald_curl_multi_new(connectionsPerHost)
        else { throw CurlError(message: "libcurl could not make a multi handle") }
        self.multi = Handle(pointer: multi)
        timeoutMilliseconds = Int(timeout.components.seconds) * 1000
        let thread = Thread { [self] in self.loop() }
        thread.name = "herald-curl"
        thread.start()
    }

    /// Posts `request` and waits for its answer.
    func post(_ request: Request) async -> Answer {
        await withCheckedContinuation { continuation in
            let accepted = queued.withLock { state in
                guard !state.closing else { return false }
                state.requests.append(Queued(request: request, done: continuation))
                return true
            }
            guard accepted else {
                continuation.resume(returning: .failed(Int32(CURLE_FAILED_INIT.rawValue)))
                return
            }
            curl_multi_wakeup(multi.pointer)
        }
    }

    /// Lets what was queued finish, then ends the thread and frees the multi handle.
    func close() async {
        await withCheckedContinuation { continuation in
            finished.withLock { $0 = continuation }
            queued.withLock { $0.closing = true }
            curl_multi_wakeup(multi.pointer)
        }
    }

    /// The thread's loop: adds what was queued, lets libcurl work, answers what finished, and
    /// sleeps in `curl_multi_poll` until a socket or a wake-up needs it.
    private func loop() {
        let multi = self.multi.pointer
        var inFlight:
            [UnsafeMutableRawPointer: (
                done: CheckedContinuation<Answer, Never>, headers: UnsafeMutablePointer<curl_slist>?
            )] =
                [:]
        while true {
            let (requests, closing) = queued.withLock { state in
                defer { state.requests.removeAll(keepingCapacity: true) }
                return (state.requests, state.closing)
            }
            for item in requests {
                var headers: UnsafeMutablePointer<curl_slist>? = nil
                for line in item.request.headers { headers = curl_slist_append(headers, line) }
                let easy = item.request.body.withUnsafeBytes { body in
                    herald_curl_post_new(
                        item.request.url, headers, body.baseAddress, body.count,
                        timeoutMilliseconds)
                }
                guard let easy, curl_multi_add_handle(multi, easy) == CURLM_OK else {
                    if let easy { curl_easy_cleanup(easy) }
                    curl_slist_free_all(headers)
                    item.done.resume(returning: .failed(Int32(CURLE_FAILED_INIT.rawValue)))
                    continue
                }
                inFlight[easy] = (item.done, headers)
            }
            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            var easy: UnsafeMutableRawPointer?
            var status = 0
            var result: Int32 = 0
            while herald_curl_next_done(multi, &easy, &status, &result) == 1, let done = easy {
                curl_multi_remove_handle(multi, done)
                if let transfer = inFlight.removeValue(forKey: done) {
                    curl_slist_free_all(transfer.headers)
                    transfer.done.resume(returning: result == 0 ? .status(status) : .failed(result))
                }
                curl_easy_cleanup(done)
            }
            if closing && inFlight.isEmpty { break }
            curl_multi_poll(multi, nil, 0, 1000, nil)
        }
        curl_multi_cleanup(multi)
        finished.withLock { $0?.resume() }
    }
}

struct CurlError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
