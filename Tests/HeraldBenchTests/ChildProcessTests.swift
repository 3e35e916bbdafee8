import Foundation
import Testing

@testable import ChildProcesses

@Suite("ChildProcess: the one way tests and benchmarks start programs")
struct ChildProcessTests {
    @Test(
        "a child started from a task gets SIGTERM at its default (not blocked as on the task's thread) and ends by it")
    func sigtermEndsChild() async throws {
        let child = try ChildProcess(["/bin/sleep", "600"], input: .null, output: .null)
        // Its mask and dispositions, as the kernel sees them: nothing blocked.
        let status = try String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8)
        let blocked = status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }
        #expect(blocked?.hasSuffix("0000000000000000") == true, "\(blocked ?? "no SigBlk line")")
        child.send(SIGTERM)
        // A child that ignored it would never end: after 30 s it is killed and the test fails
        // (a bound against hanging, not a measurement).
        let ended = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                _ = await child.wait()
                return true
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(30))
                return false
            }
            let first = await group.next() ?? false
            if !first { child.send(SIGKILL) }
            group.cancelAll()
            return first
        }
        #expect(ended, "SIGTERM did not end the child")
        #expect(await child.wait() == 128 + SIGTERM)
        #expect(child.exitStatus == 128 + SIGTERM)
        #expect(!child.isRunning)
    }

    @Test("output through a pipe, environment given exactly, exit status read; any number of waiters")
    func pipeAndEnvironment() async throws {
        let child = try ChildProcess(
            ["/bin/sh", "-c", "echo \"$ONLY-$HOME\"; exit 3"], environment: .exactly(["ONLY": "given"]),
            output: .pipe)
        #expect(child.readOutputToEnd() == "given-\n", "HOME not inherited")
        async let first = child.wait()
        async let second = child.wait()
        #expect(await first == 3)
        #expect(await second == 3)
    }

    @Test("a program that cannot be started says which")
    func missingProgram() {
        #expect(throws: ChildProcessError.self) { try ChildProcess(["/nonexistent/program"]) }
    }
}

@Suite("Ports for the servers tests start")
struct LoopbackPortTests {
    @Test("below the kernel's range for outgoing connections, whatever it is configured to")
    func range() {
        #expect(LoopbackPort.candidates(localRange: "32768\t60999\n") == 10_000..<32_768)
        #expect(LoopbackPort.candidates(localRange: "40000 65000") == 10_000..<40_000)
        // A range that starts low leaves 2,000 ports; an unreadable one means the default.
        #expect(LoopbackPort.candidates(localRange: "1024 65000") == 10_000..<12_000)
        #expect(LoopbackPort.candidates(localRange: nil) == 10_000..<32_768)
        #expect(LoopbackPort.candidates(localRange: "garbage") == 10_000..<32_768)
    }

    @Test("free when handed out, never twice, and a server can listen on it")
    func picks() throws {
        let range = LoopbackPort.candidates(
            localRange: try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        var seen = Set<Int>()
        for _ in 0..<300 {
            let port = try LoopbackPort.pick()
            #expect(seen.insert(port).inserted)
            #expect(range.contains(port))
        }
        let port = try LoopbackPort.pick()
        #expect(LoopbackPort.binds(port))
    }
}
