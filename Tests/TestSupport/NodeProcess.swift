import Foundation

/// A child process started by a test (a `herald node`, the publisher script), its
/// output going to a log file, stopped with signals.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    public let name: String
    public let log: String

    /// Starts `argv` with the current environment plus `environment`; stdout and stderr go to `log`.
    public init(name: String, argv: [String], environment: [String: String], log: String) throws {
        self.name = name
        self.log = log
        var merged = ProcessInfo.processInfo.environment
        for (key, value) in environment { merged[key] = value }
        let env = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let args = argv.map { strdup($0) } + [nil]
        defer {
            env.forEach { free($0) }
            args.forEach { free($0) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var pid: pid_t = 0
        let status = posix_spawn(&pid, argv[0], &actions, nil, args, env)
        guard status == 0 else {
            throw TestServers.Missing(variable: "cannot start \(argv[0]): \(String(cString: strerror(status)));")
        }
        self.pid = pid
    }

    public func send(_ signal: Int32) {
        kill(pid, signal)
    }

    /// Waits for the exit; returns the exit status (128 + signal when killed).
    public func wait() async -> Int32 {
        let pid = pid
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
                continuation.resume(returning: (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
            }
            thread.start()
        }
    }

    /// The last lines of its log, for failure messages.
    public func tail(_ lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }
}
