import ChildProcesses
import Foundation
import Testing

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
