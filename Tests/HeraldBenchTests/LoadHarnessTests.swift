import Foundation
import NIOCore
import Testing

@testable import HeraldBench

@Suite("The load harness's own logic (no servers)")
struct LoadHarnessTests {
    @Test(
        "scenario events parse, and a bad one is refused naming what is wrong",
        arguments: [
            ("20:kill9:node-2", true), ("5:pause:node-1:3", true), ("30:sink-stall:2.5", true), ("12:add-node", true),
            ("40:restart-rabbitmq", true),
            ("60:zaqar-outage:600", true), ("30:target-fail:project-3:120", true),
            ("30:slow-target:project-1:120", true), ("30:redis-outage:60", true), ("30:redis-outage", false),
            ("60:rabbitmq-node-kill:1:30", true), ("60:rabbitmq-node-kill:4:30", false),
            ("60:rabbitmq-node-kill:1", false), ("60:redis-failover:20", true), ("60:redis-failover", false),
            ("20:kill9", false), ("x:add-node", false), ("5:pause:node-1", false), ("12:add-node:extra", false),
            ("3:explode", false),
            ("30:target-fail:120", false), ("30:slow-target:project-1", false), ("60:zaqar-outage", false),
            ("60:zaqar-outage:-5", false),
        ])
    func scenario(_ text: String, _ valid: Bool) {
        do {
            let event = try ScenarioEvent(text)
            #expect(valid, "accepted \(text)")
            #expect(event.at >= 0)
        } catch {
            #expect(!valid, "refused \(text): \(error)")
            #expect("\(error)".contains(text), "the error names the event: \(error)")
        }
    }

    @Test("--attach takes API URLs and refuses what needs nodes the harness started, naming it")
    func attach() throws {
        let load = try Load.parse([
            "--attach", "http://127.0.0.1:8080, http://127.0.0.1:8081/", "--event", "5:sink-fail:2", "--event",
            "8:restart-redis",
        ])
        #expect(load.attachedAPIs == ["http://127.0.0.1:8080", "http://127.0.0.1:8081"])
        for (arguments, named) in [
            (["--baselines"], "--baselines"), (["--event", "3:kill9:node-1"], "kill9 node-1"),
            (["--event", "3:add-node"], "add-node"),
        ] {
            #expect {
                _ = try Load.parse(["--attach", "http://127.0.0.1:8080"] + arguments)
            } throws: { error in
                Load.message(for: error).contains(named)
            }
        }
        #expect(throws: (any Error).self) { _ = try Load.parse(["--attach", "127.0.0.1:8080"]) }
        #expect(try Load.parse([]).attachedAPIs.isEmpty)
    }

    @Test("the recorder counts each (subscription, event) once, duplicates apart, latency from the intended time")
    func recorder() {
        let start: UInt64 = 1_000_000_000
        let recorder = DeliveryRecorder(start: start, rate: 1000, subscriptionIndex: ["s-a": 0, "s-b": 1])
        func message(_ subscription: String, _ seq: Int) -> String {
            #"{"ttl":60,"body":{"event":{"event_type":"x","payload":{"n":1}},"herald":{"subscription_id":"\#(subscription)","event_id":"load-\#(String(format: "%012d", seq))","partition":3,"epoch":1}}}"#
        }
        let body = ByteBuffer(
            string: #"{"messages":["#
                + [message("s-a", 0), message("s-b", 0), message("s-a", 5)].joined(separator: ",") + "]}")
        // Event 5 was due at start + 5 ms; it arrives 12 ms after start: 7 ms late.
        recorder.record(body, now: start + 12_000_000)
        recorder.record(ByteBuffer(string: #"{"messages":["# + message("s-a", 5) + "]}"), now: start + 20_000_000)
        let state = recorder.state.withLock { $0 }
        #expect(state.delivered == 3)
        #expect(state.duplicates == 1)
        #expect(state.malformed == 0)
        #expect(
            state.latency.max >= 11_900 && state.latency.max <= 12_100,
            "event 0: 12 ms after its intended time, \(state.latency.max) µs")
        #expect(state.latency.min >= 6_900 && state.latency.min <= 7_100, "event 5: 7 ms, \(state.latency.min) µs")
    }

    @Test("latency is kept per project of the delivery's subscription")
    func perProject() {
        let start: UInt64 = 1_000_000_000
        let recorder = DeliveryRecorder(
            start: start, rate: 1000, subscriptionIndex: ["s-a": 0, "s-b": 1],
            subscriptionProjects: ["project-0", "project-1"])
        func message(_ subscription: String, _ seq: Int) -> String {
            #"{"ttl":60,"body":{"event":{"event_type":"x"},"herald":{"subscription_id":"\#(subscription)","event_id":"load-\#(String(format: "%012d", seq))","partition":3,"epoch":1}}}"#
        }
        recorder.record(ByteBuffer(string: #"{"messages":["# + message("s-a", 0) + "]}"), now: start + 2_000_000)
        recorder.record(ByteBuffer(string: #"{"messages":["# + message("s-b", 0) + "]}"), now: start + 5_000_000_000)
        let state = recorder.state.withLock { $0 }
        #expect(state.latencyByProject["project-0"]?.max ?? 0 <= 2_100)
        #expect(
            state.latencyByProject["project-1"]?.min ?? 0 >= 4_990_000,
            "the slow project's 5 s show in its own histogram only")
    }

    @Test("the report holds four plots, marks events by number and escapes text")
    func report() {
        let interval = { (second: Int) in
            LoadResult.Interval(
                second: second, published: 100, delivered: second == 2 ? 0 : 100, backlog: 0,
                latencyMs: second == 2
                    ? nil : .init(p50: 1, p75: 2, p95: 3, p99: 4, p999: 5, p9999: 6, max: 7, count: 100),
                partitions: ["node-1": 8, "node-<2>": 8])
        }
        let result = LoadResult(
            rate: 100, duration: 4, nodes: 2, subscriptions: 10, projects: 2, partitions: 16, averageEventBytes: 2500,
            published: 400,
            expectedDeliveries: 300, delivered: 300, lost: 0, duplicates: 0, stillQueued: 0, deadLetters: 0,
            latencyMs: nil,
            intervals: (0..<4).map(interval), events: [try! ScenarioEvent("2:kill9:node-1")], processes: []
        )
        let html = LoadReport.html(result)
        #expect(html.components(separatedBy: "<svg").count - 1 == 4)
        #expect(html.contains("node-&lt;2&gt;") && !html.contains("node-<2>"))
        #expect(html.contains("t = 2 s: kill9 node-1"))
        #expect(html.contains("Nothing lost"))
        #expect(!html.contains("Baselines"), "no baselines table without --baselines")

        var measured = result
        measured.baselines = LoadBaselines(
            events: 1000, brokerCeilingPerSecond: 8000, brokerLoopCPUMicrosecondsPerEvent: 20, heraldPerSecond: 6000,
            heraldDeliveriesPerSecond: 12000, heraldToBrokerCeiling: 0.75,
            onePostDeliveriesPerSecond: 3000, heraldToOnePost: 4, sameBatchSize: 4, sameBatchDeliveriesPerSecond: 15000,
            heraldToSameBatch: 0.8,
            cpuMicrosecondsPerEvent: 80, redisCommandsPerEvent: 0.004, messagesPerRequest: 3.5,
            readySeconds: [0.12, 0.3], idleRSSMegabytes: [40.5, 41], idleAnonymousMegabytes: [6, 7.3]
        )
        let withBaselines = LoadReport.html(measured)
        #expect(withBaselines.contains("Baselines (same run, 1000 notifications per saturation phase)"))
        #expect(
            withBaselines.contains(
                "<td>6000</td><td>broker ceiling for Herald&#39;s topology".replacingOccurrences(of: "&#39;", with: "'")
                    + " (plain rabbitmq-c loop): 8000</td><td>0.75x</td>"))
        #expect(withBaselines.contains("<td>0.12 s, 0.30 s</td>"))
        #expect(withBaselines.contains("<td>40.5 MB (6.0 MB anonymous), 41.0 MB (7.3 MB anonymous)</td>"))
        #expect(
            withBaselines.contains(
                "batches of 4 posted straight into the same sink: 15000</td><td>0.80x</td><td>≥ 0.9x into a real Zaqar (--sink zaqar)</td>"
            ))
        #expect(
            withBaselines.contains("<td>80.0 µs</td><td>the plain rabbitmq-c loop's own CPU: 20.0 µs</td><td>4.0x</td>")
        )
        #expect(withBaselines.contains("built-in (answers 201 at once)"))

        var intoZaqar = measured
        intoZaqar.zaqar = .init(
            url: "http://127.0.0.1:8888", storedBefore: 10, storedAfter: 310, accepted: 300, refusedByStatus: ["503": 2]
        )
        let zaqarHTML = LoadReport.html(intoZaqar)
        #expect(zaqarHTML.contains("took 300 messages of the open loop; its queues' stats grew by 300"))
        #expect(zaqarHTML.contains("503: 2"))
        #expect(zaqarHTML.contains("<td>0.80x</td><td>≥ 0.9x</td>"), "into Zaqar the batch goal applies as it is")
    }
}
