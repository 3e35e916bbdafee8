import ArgumentParser
import AsyncHTTPClient
import ChildProcesses
import Delivery
import Foundation
import HeraldModel
import NIOCore
import Synchronization
import ZaqarSink

/// `herald-bench http-clients`: CPU per request of a plain AsyncHTTPClient (NIO's event loops,
/// what Herald's Zaqar client used before) against libcurl's multi interface on a thread of its
/// own, as Herald's `ZaqarClient` uses it now and bare (`CurlTransport`), posting the same
/// Zaqar batches into the same instant sink. The sink runs in a child process,
/// so the CPU this process uses (getrusage) is the client's alone. Each client runs flat out
/// (`--concurrency` requests in flight), then at the same fixed rate (half the slower one's
/// flat-out rate unless `--rate`), where "CPU per request at equal throughput" is read; the
/// rounds alternate the clients.
struct HTTPClients: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http-clients",
        abstract: "CPU per request: AsyncHTTPClient against libcurl's multi interface (Herald's ZaqarClient).")

    @Option(help: "Requests per measurement.") var requests: Int = 20_000
    @Option(help: "Requests in flight (Herald's pool: 8 connections a host).") var concurrency: Int = 8
    @Option(help: "Messages per request (Herald sends about 3 a request at 100 subscriptions).") var batch: Int = 3
    @Option(help: "Event size in bytes.") var size: Int = 1_000
    @Option(help: "Rounds; the median is reported.") var rounds: Int = 3
    @Option(help: "Requests/s of the paced runs (default: half the slower client's flat-out rate).") var rate: Double?

    func run() async throws {
        try await withClosing(try await SinkProcess.start(), close: { await $0.stop() }) { try await compare(into: $0) }
    }

    private func compare(into sink: SinkProcess) async throws {
        let target = ZaqarTarget(baseURL: sink.url, project: "bench", queue: "http-clients")
        let pad = String(repeating: "x", count: max(0, size - 120))
        let messages = (0..<batch).map { index in
            ZaqarMessageEncoding.message(
                event: Array(
                    "{\"event_type\":\"compute.instance.update\",\"message_id\":\"\(index)\",\"payload\":{\"pad\":\"\(pad)\"}}"
                        .utf8),
                ttl: 300, subscriptionID: "bench", eventID: "\(index)", partition: 0, epoch: 1)
        }
        let zaqar = ZaqarClient(requestTimeout: .seconds(30), poolSize: concurrency)
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(2), read: .seconds(30)))
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: concurrency)
        configuration.redirectConfiguration = .disallow
        let plain = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let curl = CurlTransport(
            connectionsPerHost: concurrency, connectTimeout: .seconds(2), requestTimeout: .seconds(30), caFile: nil)
        let clientID = UUID().uuidString.lowercased()
        let url = "\(target.baseURL)/v2/queues/\(target.queue)/messages"
        // The body built per request, as ZaqarClient builds its own.
        @Sendable func body() -> [UInt8] { ZaqarMessageEncoding.requestBody(messages) }
        let clients: [(name: String, post: @Sendable () async -> Bool)] = [
            (
                "AsyncHTTPClient, plain execute",
                {
                    var request = HTTPClientRequest(url: url)
                    request.method = .POST
                    request.headers.add(name: "Content-Type", value: "application/json")
                    request.headers.add(name: "Client-ID", value: clientID)
                    request.headers.add(name: "X-Project-ID", value: target.project)
                    request.body = .bytes(ByteBuffer(bytes: body()))
                    guard let response = try? await plain.execute(request, timeout: .seconds(30)),
                        (try? await response.body.collect(upTo: 64 << 10)) != nil
                    else { return false }
                    return response.status.code == 201
                }
            ),
            (
                "libcurl, ZaqarClient.post",
                {
                    guard let response = try? await zaqar.post(target, messages: messages) else { return false }
                    return response.status == 201
                }
            ),
            (
                "libcurl, CurlTransport.post",
                {
                    let answer = try? await curl.post(
                        CurlTransport.Request(
                            url: url,
                            headers: [
                                "Content-Type: application/json", "Client-ID: \(clientID)",
                                "X-Project-ID: \(target.project)",
                            ], body: body(), maxBody: 16 << 10))
                    return answer?.status == 201
                }
            ),
        ]
        print(
            "HTTP clients: \(requests) POSTs of \(batch) messages (\(size) B events) per measurement, \(concurrency) in flight, into an instant sink in a child process; median of \(rounds) rounds, clients alternating"
        )
        // Warm both (connections made, code paths paged in).
        for client in clients { _ = await measure(client.post, count: 500, pace: nil) }

        var flat: [[Measurement]] = Array(repeating: [], count: clients.count)
        for _ in 0..<rounds {
            for (number, client) in clients.enumerated() {
                flat[number].append(await measure(client.post, count: requests, pace: nil))
            }
        }
        let flatMedians = flat.map(Measurement.median)
        let pace = rate ?? (flatMedians.map(\.rate).min() ?? 1_000) / 2
        var paced: [[Measurement]] = Array(repeating: [], count: clients.count)
        for _ in 0..<rounds {
            for (number, client) in clients.enumerated() {
                paced[number].append(await measure(client.post, count: requests, pace: pace))
            }
        }
        let pacedMedians = paced.map(Measurement.median)
        print("  client                                 run        requests/s   CPU µs/request   failed")
        for (number, client) in clients.enumerated() {
            for (label, result) in [
                ("flat out", flatMedians[number]), (String(format: "at %.0f/s", pace), pacedMedians[number]),
            ] {
                print(
                    String(
                        format: "  %@ %@   %10.0f   %14.1f   %6d",
                        client.name.padding(toLength: 38, withPad: " ", startingAt: 0),
                        label.padding(toLength: 10, withPad: " ", startingAt: 0), result.rate, result.cpuMicroseconds,
                        result.failed))
            }
        }
        for (number, name) in [(1, "ZaqarClient.post (libcurl)"), (2, "CurlTransport.post")] {
            print(
                String(
                    format: "  %@ / plain AsyncHTTPClient, CPU per request: %.2fx flat out, %.2fx at the same rate",
                    name, flatMedians[number].cpuMicroseconds / flatMedians[0].cpuMicroseconds,
                    pacedMedians[number].cpuMicroseconds / pacedMedians[0].cpuMicroseconds))
        }
        await curl.shutdown()
        await zaqar.shutdown()
        try? await plain.shutdown()
    }

    struct Measurement {
        var rate: Double
        var cpuMicroseconds: Double
        var failed: Int

        static func median(_ runs: [Measurement]) -> Measurement {
            let sorted = runs.sorted { $0.cpuMicroseconds < $1.cpuMicroseconds }
            return sorted[sorted.count / 2]
        }
    }

    /// `count` posts by `concurrency` workers, flat out or on a fixed schedule of `pace` a second.
    func measure(_ post: @escaping @Sendable () async -> Bool, count: Int, pace: Double?) async -> Measurement {
        final class Counters: Sendable {
            let next = Atomic<Int>(0)
            let failed = Atomic<Int>(0)
        }
        let counters = Counters()
        let cpuBefore = Self.processCPUSeconds()
        let started = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    while true {
                        let index = counters.next.add(1, ordering: .relaxed).oldValue
                        guard index < count else { return }
                        if let pace {
                            let due = started + .seconds(Double(index) / pace)
                            if due > .now { try? await Task.sleep(until: due) }
                        }
                        if await !post() { counters.failed.add(1, ordering: .relaxed) }
                    }
                }
            }
        }
        let seconds = (ContinuousClock.now - started).seconds
        let cpu = Self.processCPUSeconds() - cpuBefore
        return Measurement(
            rate: Double(count) / seconds, cpuMicroseconds: cpu / Double(count) * 1e6,
            failed: counters.failed.load(ordering: .relaxed))
    }

    /// User and system CPU of this process so far.
    static func processCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}

/// `herald-bench instant-sink`: the instant sink (201 at once) on its own, for benchmarks that
/// must not count its CPU; prints its URL, serves until its standard input closes.
struct InstantSinkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "instant-sink", abstract: "An HTTP sink answering 201 at once, until stdin closes.",
        shouldDisplay: false)

    func run() async throws {
        let sink = try await ZaqarSink.instant()
        print(sink.url)
        fflush(nil)
        // Blocking reads of stdin, off the cooperative pool.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread {
                while let line = readLine() { _ = line }
                continuation.resume()
            }.start()
        }
        await sink.close()
    }
}

/// The instant sink in a child process: `herald-bench instant-sink`. It prints its URL, and ends
/// when its standard input closes.
struct SinkProcess {
    let process: ChildProcess
    let url: String

    static func start() async throws -> SinkProcess {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let process = try ChildProcess([executable, "instant-sink"], input: .pipe, output: .pipe, errors: .inherit)
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while let output = process.output, read(output, &byte, 1) == 1, byte != UInt8(ascii: "\n") {
            line.append(byte)
        }
        let url = String(decoding: line, as: UTF8.self)
        let sink = SinkProcess(process: process, url: url)
        guard url.hasPrefix("http://") else {
            process.send(SIGKILL)
            await sink.stop()
            throw ValidationError("the instant sink did not start (it said \"\(url)\")")
        }
        return sink
    }

    func stop() async {
        if let input = process.input { close(input) }
        _ = await process.wait()
        if let output = process.output { close(output) }
    }
}
