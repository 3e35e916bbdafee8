import Foundation
import Logging
import Pipeline
import TestSupport

/// A whole node in the test process: `buildNode` with the settings a `herald node` process would
/// read from its environment, run by its own `ServiceGroup`, stopped as SIGTERM stops a process
/// (the group's graceful shutdown), its log written to a file as the process's is.
final class InProcessNode: Sendable {
    private let assembly: NodeAssembly
    /// The group's run; awaited by `stop()`, which the run's `stopAll` calls for every node.
    private let running: Task<Int32, Never>
    private let ended: Locked<Bool>

    /// - Throws: what `NodeConfiguration.fromEnvironment` or `buildNode` throws for bad settings,
    ///   or a failure to open `log`.
    init(environment: [String: String], log: String) throws {
        let configuration = try NodeConfiguration.fromEnvironment(environment)
        let file = try LogFile(path: log)
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        let logger = Logger(label: "herald") { label in FileLogHandler(label: label, file: file, level: level) }
        let assembly = try buildNode(configuration: configuration, logger: logger, signals: [])
        let ended = Locked(false)
        self.assembly = assembly
        self.ended = ended
        running = Task {
            defer { ended.withLock { $0 = true } }
            do {
                try await assembly.run()
                return 0
            } catch {
                file.write("node ended with an error: \(error)")
                return 1
            }
        }
    }

    /// Whether its group has finished running.
    var hasEnded: Bool { ended.withLock { $0 } }

    /// Begins the graceful shutdown and waits for the group's end; the status a process would
    /// exit with (0, or 1 when the group ended with an error).
    func stop() async -> Int32 {
        await assembly.group.triggerGracefulShutdown()
        return await running.value
    }
}

/// A log file written by several handlers at once: every line is one `write` on a descriptor
/// opened with O_APPEND, so lines never interleave.
final class LogFile: Sendable {
    private let descriptor: Int32

    init(path: String) throws {
        descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw TestFailure("cannot open \(path): errno \(errno)") }
    }

    deinit { close(descriptor) }

    func write(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
    }
}

/// The text format of `herald node`'s log (`<time> <level> <label>: <metadata> [<source>] <message>`),
/// into a file.
struct FileLogHandler: LogHandler {
    let label: String
    let file: LogFile
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    init(label: String, file: LogFile, level: Logger.Level) {
        self.label = label
        self.file = file
        self.logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let time = Date().formatted(.iso8601)
        file.write("\(time) \(event.level) \(label): \(fields) [\(event.source)] \(event.message)")
    }
}
