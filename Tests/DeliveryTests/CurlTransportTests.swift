import Foundation
import TestSupport
import Testing

@testable import Delivery

/// The libcurl transport against a real HTTP server that stalls (`HostileZaqar`).
@Suite("libcurl transport: deadlines, cancellation, answers", .serialized, .timeLimit(.minutes(2)))
struct CurlTransportTests {
    func request(_ server: HostileZaqar, queue: String) -> CurlTransport.Request {
        CurlTransport.Request(
            url: "\(server.url)/v2/queues/\(queue)/messages",
            headers: ["Content-Type: application/json", "X-Project-ID: p1"], body: Array(#"{"messages":[]}"#.utf8),
            maxBody: 16 << 10)
    }

    func attempt(
        _ body: () async throws(CurlTransport.Failure) -> CurlTransport.Answer
    ) async -> Result<CurlTransport.Answer, CurlTransport.Failure> {
        do throws(CurlTransport.Failure) { return .success(try await body()) } catch { return .failure(error) }
    }

    @Test("a request waiting for the host's only connection, held by a silent one, ends at its own deadline")
    func queuedBehindStalled() async throws {
        let server = try await HostileZaqar { request in request.queue == "silent" ? .silent : .accept }
        let transport = CurlTransport(
            connectionsPerHost: 1, connectTimeout: .seconds(1), requestTimeout: .seconds(60), caFile: nil)
        let stalledEnded = Counter()
        let silent = request(server, queue: "silent")
        let stalled = Task {
            defer { stalledEnded.increment() }
            return try await transport.post(silent)
        }
        try await eventually { guard server.requests(queue: "silent") == 1 else { throw TestFailure("not yet") } }
        // Queued behind the silent one (60 s), with half a second of its own: libcurl's queue has
        // no deadline, so without the transport's it would wait as long as the silent one.
        var queued = request(server, queue: "fine")
        queued.timeout = .milliseconds(500)
        let result = await attempt { () async throws(CurlTransport.Failure) in try await transport.post(queued) }
        #expect(stalledEnded.value == 0, "it ended while the silent request still held the connection")
        switch result {
        case .success(let answer): Issue.record("answered \(answer.status) through a held connection")
        case .failure(let failure):
            #expect(failure.code == 28, "\(failure)")
            // It never had a connection: not its target's silence (parking does not take it for that).
            #expect(!failure.timedOut, "\(failure)")
        }
        stalled.cancel()
        _ = await stalled.result
        // The host's connection is free again: the next request is answered.
        #expect(try await transport.post(request(server, queue: "fine")).status == 201)
        await transport.shutdown()
        await server.close()
    }

    @Test("a target that takes the request and never answers times out as its own silence")
    func silentTarget() async throws {
        let server = try await HostileZaqar { _ in .silent }
        let transport = CurlTransport(
            connectionsPerHost: 4, connectTimeout: .seconds(1), requestTimeout: .seconds(60), caFile: nil)
        var silent = request(server, queue: "silent")
        silent.timeout = .milliseconds(500)
        let result = await attempt { () async throws(CurlTransport.Failure) in try await transport.post(silent) }
        switch result {
        case .success(let answer): Issue.record("answered \(answer.status)")
        case .failure(let failure): #expect(failure.timedOut, "\(failure)")
        }
        await transport.shutdown()
        await server.close()
    }

    @Test("a cancelled caller is answered at once with a failure; the transport goes on")
    func cancelled() async throws {
        let server = try await HostileZaqar { request in request.queue == "silent" ? .silent : .accept }
        let transport = CurlTransport(
            connectionsPerHost: 4, connectTimeout: .seconds(1), requestTimeout: .seconds(60), caFile: nil)
        let silent = request(server, queue: "silent")
        let waiting = Task { try await transport.post(silent) }
        try await eventually { guard server.requests(queue: "silent") == 1 else { throw TestFailure("not yet") } }
        waiting.cancel()
        // With a 60 s request timeout and the suite's 2 minute limit, only the cancellation can end it.
        let result = await waiting.result
        #expect(throws: (any Error).self) { try result.get() }
        #expect(try await transport.post(request(server, queue: "fine")).status == 201)
        await transport.shutdown()
        await server.close()
    }

    @Test("a header with a line end is never sent")
    func headerInjection() async throws {
        let server = try await HostileZaqar { _ in .accept }
        let transport = CurlTransport(
            connectionsPerHost: 1, connectTimeout: .seconds(1), requestTimeout: .seconds(5), caFile: nil)
        var injected = request(server, queue: "q")
        injected.headers.append("X-Project-ID: p1\r\nX-Evil: 1")
        await #expect(throws: CurlTransport.Failure.self) { try await transport.post(injected) }
        #expect(server.totalRequests == 0)
        await transport.shutdown()
        await server.close()
    }
}
