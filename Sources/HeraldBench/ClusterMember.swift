import ArgumentParser
import ChildProcesses
import Coordination
import Dispatch
import Foundation
import Logging
import Synchronization

/// `herald-bench member`: one cluster member in its own process, printing every
/// change of its acting set on stdout for the failover orchestrator to check.
///
/// Lines: `valid UNTIL AT`, `acquired P EPOCH AT`, `released P AT`, `lost P AT`
/// (wall-clock seconds). Revokes are confirmed at once (nothing to drain).
/// SIGTERM leaves gracefully and exits 0.
struct Member: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one cluster member and print its ownership changes (used by `failover`).")

    @Option(help: "Redis URL.") var redisURL: String
    @Option(help: "Key prefix of the cluster.") var prefix: String
    @Option(help: "This member's node id.") var nodeID: String
    @Option(help: "Partition count.") var partitions: Int = 256

    func run() async throws {
        let output = LineOutput()
        let emit = output.emit
        var logger = Logger(label: "herald.member")
        logger.logLevel = .warning
        let coordinator = try ClusterCoordinator(
            configuration: ClusterConfiguration(nodeID: nodeID, keyPrefix: prefix, partitionCount: partitions),
            redis: try RedisConfiguration(url: redisURL),
            logger: logger,
            observer: { observation in
                switch observation {
                case .valid(let until, let at): emit("valid \(until) \(at)")
                case .acquired(let partition, let epoch, let at): emit("acquired \(partition) \(epoch) \(at)")
                case .released(let partition, let at): emit("released \(partition) \(at)")
                case .lost(let partition, let at): emit("lost \(partition) \(at)")
                }
            }
        )
        try await coordinator.start()
        // Made only now: a signal source released without ever being resumed crashes libdispatch.
        signal(SIGTERM, SIG_IGN)
        let terminated = DispatchSource.makeSignalSource(signal: SIGTERM)
        let consumer = Task {
            for await event in coordinator.events {
                if case .revoke(let partition) = event { coordinator.confirmRevoked(partition) }
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            terminated.setEventHandler { continuation.resume() }
            terminated.resume()
        }
        terminated.cancel()
        await coordinator.leave()
        consumer.cancel()
        emit("left \(Date().timeIntervalSince1970)")
    }
}

/// Whole lines on stdout from several tasks.
final class LineOutput: Sendable {
    private let lock = Mutex(())

    @Sendable func emit(_ line: String) {
        lock.withLock { _ in FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
    }
}

/// A `member` child process whose stdout feeds an `OwnershipTimeline`.
final class MemberProcess: @unchecked Sendable {
    let name: String
    let process: ChildProcess
    var pid: pid_t { process.pid }

    /// Spawns `executable member ...`; a thread reads its lines into `timeline`.
    init(
        executable: String, name: String, redisURL: String, prefix: String, partitions: Int, timeline: OwnershipTimeline
    ) throws {
        self.name = name
        let argv = [
            executable, "member", "--redis-url", redisURL, "--prefix", prefix, "--node-id", name, "--partitions",
            "\(partitions)",
        ]
        let process = try ChildProcess(argv, name: name, output: .pipe, errors: .inherit)
        self.process = process
        // The pipe's read end (`.pipe` was asked for).
        let readFD = process.output ?? -1
        let thread = Thread {
            defer { close(readFD) }
            var buffer = Data()
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(readFD, &chunk, chunk.count)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                buffer.append(contentsOf: chunk[0..<count])
                while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...newline)
                    if let observation = Self.parse(line) {
                        timeline.record(name, observation)
                    } else if ProcessInfo.processInfo.environment["HERALD_BENCH_DEBUG"] != nil {
                        FileHandle.standardError.write(Data("unparsed from \(name): \(line)\n".utf8))
                    }
                }
            }
        }
        thread.start()
    }

    static func parse(_ line: String) -> ClusterObservation? {
        let parts = line.split(separator: " ")
        switch (parts.first, parts.count) {
        case ("valid", 3):
            return Double(parts[1]).flatMap { until in Double(parts[2]).map { .valid(until: until, at: $0) } }
        case ("acquired", 4):
            guard let partition = Int(parts[1]), let epoch = UInt64(parts[2]), let at = Double(parts[3]) else {
                return nil
            }
            return .acquired(partition: partition, epoch: epoch, at: at)
        case ("released", 3):
            return Int(parts[1]).flatMap { p in Double(parts[2]).map { .released(partition: p, at: $0) } }
        case ("lost", 3): return Int(parts[1]).flatMap { p in Double(parts[2]).map { .lost(partition: p, at: $0) } }
        default: return nil
        }
    }

    func send(_ signal: Int32) {
        process.send(signal)
    }

    /// Waits for the process to exit; returns its exit status.
    func wait() async -> Int32 {
        await process.wait()
    }
}
