import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A program started with `posix_spawn` and reaped with `waitpid` on a thread of its own: the one
/// way the tests and `herald-bench` start processes (nodes, scripts, sinks, the publisher).
///
/// Not Foundation's `Process`: its `waitUntilExit` was seen to hang once a script had daemonised a
/// server that kept the descriptors it watches, and it offers no way to send a process's output
/// to a file without holding a handle open in this process.
public final class ChildProcess: Sendable {
    /// Where the child's standard input comes from.
    public enum Input: Sendable {
        case inherit
        /// /dev/null.
        case null
        /// A pipe: `input` is its write end; closing it gives the child end of file.
        case pipe
    }

    /// Where the child's standard output goes (standard error follows it, unless `errors` says
    /// otherwise).
    public enum Output: Sendable {
        case inherit
        /// /dev/null.
        case null
        /// A file, created or truncated.
        case file(String)
        /// A pipe: `output` is its read end, for the caller to read and close.
        case pipe
    }

    /// The child's environment.
    public enum Environment: Sendable {
        /// This process's.
        case inherit
        /// This process's, with these set.
        case adding([String: String])
        /// These variables only.
        case exactly([String: String])
    }

    /// Where standard error goes.
    public enum Errors: Sendable {
        /// Wherever standard output goes.
        case withOutput
        case inherit
    }

    public let pid: pid_t
    /// For messages: the name given, or the program's.
    public let name: String
    /// The file the output goes to, when it goes to one.
    public let log: String?
    /// The write end of the child's standard input (`Input.pipe`).
    public let input: Int32?
    /// The read end of the child's standard output (`Output.pipe`).
    public let output: Int32?

    private enum Reaping {
        case running
        case waiting([CheckedContinuation<Int32, Never>])
        case exited(Int32)
    }

    private let reaping = Mutex(Reaping.running)

    /// Starts `argv` (`argv[0]` a path).
    public init(
        _ argv: [String], name: String? = nil, environment: Environment = .inherit, input: Input = .inherit,
        output: Output = .inherit, errors: Errors = .withOutput
    ) throws {
        guard let program = argv.first else { throw ChildProcessError("no program to start") }
        self.name = name ?? program
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var parentEnds: [Int32] = []
        var childEnds: [Int32] = []
        defer { childEnds.forEach { close($0) } }
        // A pipe for the child's `descriptor` (its end put there); the parent's end.
        func pipeOnto(_ descriptor: Int32, childReads: Bool) throws -> Int32 {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else {
                parentEnds.forEach { close($0) }
                throw ChildProcessError("pipe() failed: \(String(cString: strerror(errno)))")
            }
            // Close-on-exec (pipe2 is not in Swift's Glibc): the child gets its copy through
            // dup2, which clears the flag, and other programs started later get neither end.
            for end in fds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
            let (child, parent) = childReads ? (fds[0], fds[1]) : (fds[1], fds[0])
            parentEnds.append(parent)
            childEnds.append(child)
            posix_spawn_file_actions_adddup2(&actions, child, descriptor)
            posix_spawn_file_actions_addclose(&actions, parent)
            return parent
        }
        switch input {
        case .inherit:
            self.input = nil
        case .null:
            self.input = nil
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        case .pipe:
            self.input = try pipeOnto(0, childReads: true)
        }
        var log: String?
        switch output {
        case .inherit:
            self.output = nil
        case .null:
            self.output = nil
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        case .file(let path):
            self.output = nil
            log = path
            posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        case .pipe:
            self.output = try pipeOnto(1, childReads: false)
        }
        self.log = log
        if case .withOutput = errors, !(output.isInherit) { posix_spawn_file_actions_adddup2(&actions, 1, 2) }

        var merged: [String: String]?
        switch environment {
        case .inherit: merged = nil
        case .adding(let variables): merged = ProcessInfo.processInfo.environment.merging(variables) { $1 }
        case .exactly(let variables): merged = variables
        }
        let cEnvironment = merged.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        let cArguments = argv.map { strdup($0) } + [nil]
        defer {
            cArguments.forEach { free($0) }
            cEnvironment?.forEach { free($0) }
        }
        // Every signal unblocked and at its default in the child. Without this it inherits the
        // spawning thread's mask, and Swift's tasks run on dispatch's worker threads, which block
        // nearly every signal: a child then ignored SIGTERM (the tests' "outlives SIGTERM"
        // workarounds). Foundation's Process did the same reset.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let spawned: Int32
        if let cEnvironment {
            spawned = posix_spawn(&pid, program, &actions, &attributes, cArguments, cEnvironment)
        } else {
            spawned = posix_spawn(&pid, program, &actions, &attributes, cArguments, environ)
        }
        guard spawned == 0 else {
            parentEnds.forEach { close($0) }
            throw ChildProcessError("cannot start \(program): \(String(cString: strerror(spawned)))")
        }
        self.pid = pid
    }

    /// Starts `argv` with this process's environment plus `environment`, its standard output and
    /// error into the file `log`.
    public convenience init(name: String, argv: [String], environment: [String: String], log: String) throws {
        try self.init(argv, name: name, environment: .adding(environment), output: .file(log))
    }

    /// Sends a signal (SIGTERM, SIGKILL, SIGSTOP, ...).
    public func send(_ signal: Int32) {
        kill(pid, signal)
    }

    /// Whether it still runs (not exited, not a zombie waiting to be reaped).
    public var isRunning: Bool {
        if case .exited = reaping.withLock({ $0 }) { return false }
        guard kill(pid, 0) == 0 else { return false }
        // Unreadable: it was reaped in between.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: close)...].hasPrefix(" Z")
    }

    /// Waits for the exit (on a thread of its own); the exit status, 128 + the signal when one
    /// ended it, -1 when it could not be learnt. Any number of callers may wait.
    public func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let start = reaping.withLock { reaping -> Int32?? in
                switch reaping {
                case .exited(let status):
                    return .some(status)
                case .waiting(let waiters):
                    reaping = .waiting(waiters + [continuation])
                    return .some(nil)
                case .running:
                    reaping = .waiting([continuation])
                    return nil
                }
            }
            switch start {
            case .some(.some(let status)):
                continuation.resume(returning: status)
            case .some(.none):
                break
            case .none:
                let thread = Thread { [self] in
                    let status = Self.reap(pid)
                    let waiters = reaping.withLock { reaping -> [CheckedContinuation<Int32, Never>] in
                        defer { reaping = .exited(status) }
                        if case .waiting(let waiters) = reaping { return waiters }
                        return []
                    }
                    for waiter in waiters { waiter.resume(returning: status) }
                }
                thread.start()
            }
        }
    }

    /// The last lines of its log file, for failure messages ("" without one).
    public func tail(_ lines: Int = 20) -> String {
        guard let log else { return "" }
        return Self.tail(of: log, lines: lines)
    }

    /// The last lines of a log file ("" when it cannot be read).
    public static func tail(of path: String, lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// Reads the output pipe to its end and closes it ("" without one).
    public func readOutputToEnd() -> String {
        guard let output else { return "" }
        defer { close(output) }
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(output, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            data += chunk[0..<count]
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Its exit status, once `wait` has seen it end (nil before).
    public var exitStatus: Int32? {
        if case .exited(let status) = reaping.withLock({ $0 }) { return status }
        return nil
    }

    /// Runs `argv` to its end; its exit status.
    public static func run(
        _ argv: [String], environment: Environment = .inherit, input: Input = .inherit, output: Output = .inherit
    ) async throws -> Int32 {
        try await ChildProcess(argv, environment: environment, input: input, output: output).wait()
    }

    private static func reap(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        var reaped: pid_t
        repeat { reaped = waitpid(pid, &status, 0) } while reaped == -1 && errno == EINTR
        // Not ours to reap (ECHILD): how it ended is unknown, which is not success.
        guard reaped == pid else { return -1 }
        // WIFEXITED and WEXITSTATUS, spelled out (the macros do not come through to Swift).
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

extension ChildProcess.Output {
    fileprivate var isInherit: Bool {
        if case .inherit = self { return true }
        return false
    }
}

public struct ChildProcessError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
