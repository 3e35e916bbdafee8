@_exported import ChildProcesses
import Foundation

/// The real servers that `scripts/test` (through `scripts/servers up`) started.
/// A missing variable fails the test loudly: these tests never skip.
public enum TestServers {
    public struct Missing: Error, CustomStringConvertible {
        let variable: String
        public var description: String {
            "\(variable) is not set: run the tests through scripts/test, which starts the servers"
        }
    }

    public static func value(_ variable: String) throws -> String {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else {
            throw Missing(variable: variable)
        }
        return value
    }

    public static func redisURL() throws -> String { try value("HERALD_TEST_REDIS_URL") }
    public static func redisSocket() throws -> String { try value("HERALD_TEST_REDIS_SOCKET") }
    public static func amqpURL() throws -> String { try value("HERALD_TEST_AMQP_URL") }
    public static func zaqarURL() throws -> String { try value("HERALD_TEST_ZAQAR_URL") }
    /// The Zaqar whole nodes deliver into: the multi-worker one (`scripts/servers zaqar-pool up`, which
    /// `scripts/test` starts) when it runs, else the single-threaded `zaqar-server`. Both serve the same
    /// store. A production Zaqar serves many requests at once; the single-threaded one, busy with three
    /// nodes' batches and a test's reads, times requests out (and so doubles the messages it took).
    public static func pipelineZaqarURL() throws -> String {
        if let pool = ProcessInfo.processInfo.environment["HERALD_TEST_ZAQAR_POOL_URL"], !pool.isEmpty { return pool }
        return try zaqarURL()
    }

    /// Runs `scripts/servers ARGS` (restart a server, run rabbitmqctl) and fails on a non-zero exit.
    public static func control(_ arguments: String...) async throws {
        try await control(arguments: arguments)
    }

    /// `control`, with the arguments as an array.
    public static func control(arguments: [String]) async throws {
        let script = try value("HERALD_TEST_SERVERS")
        let status = try await ChildProcess.run([script] + arguments)
        if status != 0 {
            throw Missing(variable: "scripts/servers \(arguments.joined(separator: " ")) exited with \(status);")
        }
    }

    /// Runs a program to completion; returns its exit status.
    public static func run(_ argv: [String]) async throws -> Int32 {
        try await ChildProcess.run(argv)
    }

    /// A TCP port on 127.0.0.1 for a server a test starts (`LoopbackPort.pick`: outside the
    /// range the kernel gives outgoing connections, never handed out twice).
    public static func freePort() throws -> Int {
        try LoopbackPort.pick()
    }

    public static func uniqueName(_ prefix: String) -> String {
        "\(prefix).\(UUID().uuidString.lowercased())"
    }
}

/// Retries `body` until it succeeds or `timeout` passes, then rethrows its last error.
public func eventually<T>(timeout: Duration = .seconds(15), _ body: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    while true {
        do {
            return try await body()
        } catch {
            if ContinuousClock.now >= deadline { throw error }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// A condition a test waited for that did not hold (yet).
public struct TestFailure: Error, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
