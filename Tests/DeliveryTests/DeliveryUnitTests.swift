import Foundation
import HeraldModel
import Testing

@testable import Delivery

@Suite("Delivery policies")
struct DeliveryPolicyTests {
    @Test("the circuit opens after the threshold, half-opens after the cooldown, and closes on success")
    func circuit() {
        var circuit = CircuitBreaker(threshold: 3, cooldown: .seconds(5))
        #expect(circuit.wait(now: .zero) == nil)
        circuit.failed(now: .seconds(1))
        circuit.failed(now: .seconds(2))
        #expect(circuit.state == .closed)
        circuit.failed(now: .seconds(3))
        #expect(circuit.state == .open(until: .seconds(8)))
        #expect(circuit.wait(now: .seconds(4)) == .seconds(4))
        #expect(circuit.wait(now: .seconds(8)) == nil)
        #expect(circuit.state == .halfOpen)
        // A failed probe opens it again at once.
        circuit.failed(now: .seconds(9))
        #expect(circuit.state == .open(until: .seconds(14)))
        _ = circuit.wait(now: .seconds(14))
        circuit.succeeded()
        #expect(circuit.state == .closed)
        #expect(circuit.consecutiveFailures == 0)
    }

    @Test("a success resets the failure count")
    func successResets() {
        var circuit = CircuitBreaker(threshold: 2, cooldown: .seconds(1))
        circuit.failed(now: .zero)
        circuit.succeeded()
        circuit.failed(now: .zero)
        #expect(circuit.state == .closed)
    }

    @Test("backoff ceilings double up to the cap, and jittered delays stay under them")
    func backoff() {
        let backoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        #expect(backoff.ceiling(attempt: 0) == .milliseconds(100))
        #expect(backoff.ceiling(attempt: 3) == .milliseconds(800))
        #expect(backoff.ceiling(attempt: 10) == .seconds(2))
        var random = SystemRandomNumberGenerator()
        for attempt in 0..<12 {
            let delay = backoff.delay(attempt: attempt, using: &random)
            #expect(delay >= .zero && delay <= backoff.ceiling(attempt: attempt))
        }
        // A floor of 0.5 (reconnects, parked retries) never waits less than half the ceiling.
        let reconnect = Backoff(base: .milliseconds(50), cap: .seconds(2), floor: 0.5)
        for attempt in 0..<12 {
            let delay = reconnect.delay(attempt: attempt, using: &random)
            #expect(delay >= reconnect.ceiling(attempt: attempt) / 2 && delay <= reconnect.ceiling(attempt: attempt))
        }
        #expect(
            Backoff(base: .seconds(1), cap: .seconds(8)).ceiling(attempt: -3) == .seconds(1),
            "a negative attempt is the first")
    }

    @Test("the delivered message wraps the event bytes untouched and escapes the ids")
    func encoding() throws {
        let event = Array(#"{"event_type":"compute.instance.create.end","payload":{"state":"active"}}"#.utf8)
        let bytes = ZaqarMessageEncoding.message(
            event: event, ttl: 300, subscriptionID: "sub\"1", eventID: "e\\2\n", partition: 17, epoch: 42)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(object["ttl"] as? Int == 300)
        let body = try #require(object["body"] as? [String: Any])
        let herald = try #require(body["herald"] as? [String: Any])
        #expect(herald["subscription_id"] as? String == "sub\"1")
        #expect(herald["event_id"] as? String == "e\\2\n")
        #expect(herald["partition"] as? Int == 17)
        #expect(herald["epoch"] as? Int == 42)
        #expect((body["event"] as? [String: Any])?["event_type"] as? String == "compute.instance.create.end")
        #expect(
            String(decoding: bytes, as: UTF8.self).contains(String(decoding: event, as: UTF8.self)),
            "the event's bytes are copied, not re-encoded")
    }

    @Test(
        "CloudEvents: oslo, Zulu and offset timestamps become RFC 3339, anything else none; the source is the service, percent-encoded; the message is JSON whatever the ids hold"
    )
    func cloudEvent() throws {
        typealias Attributes = ZaqarMessageEncoding.CloudEventAttributes
        #expect(Attributes.rfc3339("2026-12-05 04:10:00.123456") == "2026-12-05T04:10:00.123456Z")
        #expect(Attributes.rfc3339("2026-12-05T04:10:00Z") == "2026-12-05T04:10:00Z")
        #expect(Attributes.rfc3339("2026-12-05T04:10:00+02:00") == "2026-12-05T04:10:00+02:00")
        for bad in [
            "", "yesterday", "2026-12-05", "2026-12-05 04:10", "2026-12-05 04:10:00.", "2026-12-05 04:10:00.1234567890",
            "2026-12-05 04:10:00 UTC", "2026-12-05x04:10:00", "2026-12-05 04:10:00+2",
            String(repeating: "9", count: 5000),
            "2024-13-45 99:99:99", "2024-00-01 00:00:00", "2024-01-00 00:00:00", "2024-01-01 24:00:00",
            "2024-01-01 00:60:00",
            "2024-01-01 00:00:61", "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+01:60",
        ] {
            #expect(Attributes.rfc3339(bad) == nil, "\(bad.prefix(40))")
        }
        #expect(
            Attributes.of(
                eventType: "compute.instance.update", messageID: "m", publisherID: "compute.cmp-17", timestamp: nil,
                resourceID: nil
            ).source == "/openstack/compute")
        #expect(
            Attributes.of(
                eventType: "volume.create.end", messageID: "m", publisherID: nil, timestamp: nil, resourceID: nil
            ).source == "/openstack/volume")
        #expect(Attributes.rfc3339("2024-12-31 23:59:60") == "2024-12-31T23:59:60Z", "a leap second")
        #expect(
            Attributes.of(
                eventType: "port.create.end", messageID: "m", publisherID: ".host", timestamp: nil, resourceID: nil
            ).source == "/openstack/port")
        #expect(
            Attributes.of(
                eventType: "x", messageID: "m", publisherID: "nova-compute:cmp-3.example.org", timestamp: nil,
                resourceID: nil
            ).source == "/openstack/nova-compute",
            "nova's versioned publisher: the service, not the host")
        #expect(
            Attributes.of(eventType: "x", messageID: "m", publisherID: ":cmp-3", timestamp: nil, resourceID: nil).source
                == "/openstack/x")
        #expect(
            Attributes.of(
                eventType: "x", messageID: "m", publisherID: "caf\u{e9} /?#.h", timestamp: nil, resourceID: nil
            ).source == "/openstack/caf")
        #expect(
            Attributes.of(
                eventType: "x", messageID: "m", publisherID: String(repeating: "a", count: 10_000), timestamp: nil,
                resourceID: nil
            ).source.count == "/openstack/".count + 64)

        let attributes = Attributes.of(
            eventType: "compute.\"instance\\", messageID: "id\u{0}\n", publisherID: "compute.h",
            timestamp: "2026-12-05 04:10:00", resourceID: "r\"")
        let body = ZaqarMessageEncoding.cloudEvent(
            data: Array(#"{"a":[1,2.5e300,"\u2603"]}"#.utf8), attributes: attributes, ttl: 60, subscriptionID: "s\"",
            partition: 3, epoch: UInt64(Int32.max) + 1,
            project: "p", redacted: ["payload.host", "payload.node"]
        )
        let message = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        #expect(message["ttl"] as? Int == 60)
        let event = try #require(message["body"] as? [String: Any])
        #expect(event["specversion"] as? String == "1.0")
        #expect(event["id"] as? String == "id\u{0}\n")
        #expect(event["type"] as? String == "compute.\"instance\\")
        #expect(event["time"] as? String == "2026-12-05T04:10:00Z")
        #expect(event["subject"] as? String == "r\"")
        #expect(event["heraldepoch"] as? String == "\(UInt64(Int32.max) + 1)", "beyond a CloudEvents Integer: a string")
        #expect(event["heraldpartition"] as? Int == 3)
        #expect(event["heraldredacted"] as? String == "payload.host,payload.node")
        #expect(event["heraldactorproject"] == nil)
        #expect((event["data"] as? [String: Any])?["a"] != nil)
    }

    @Test("bad settings are refused with the setting named")
    func configuration() {
        var configuration = DeliveryConfiguration()
        configuration.laneMaxMessages = 10
        #expect(throws: DeliveryError.self) { try configuration.validate() }
        do {
            try configuration.validate()
        } catch {
            #expect("\(error)".contains("lane max messages 10"))
        }
    }

    @Test("Zaqar's and Keystone's dates parse to the same instant; a new expiry is written the way Zaqar takes it")
    func dates() {
        let instant = Date(timeIntervalSince1970: 1_795_561_521)  // 2026-11-24T23:05:21Z
        for text in [
            "2026-11-24T23:05:21", "2026-11-24T23:05:21.000000", "2026-11-24T23:05:21+00:00",
            "2026-11-24T23:05:21.000000Z", "2026-11-25T01:05:21+02:00",
        ] {
            #expect(ZaqarDates.parse(text) == instant, "\(text)")
        }
        #expect(ZaqarDates.parse("tomorrow") == nil)
        #expect(ZaqarDates.format(instant) == "2026-11-24T23:05:21")
    }
}

@Suite("InFlight: waiting for work in flight to end, without polling")
struct InFlightTests {
    @Test("a waiter goes on when the count reaches zero, not before; at zero it does not wait at all")
    func waitsForZero() async {
        let work = InFlight()
        #expect(await work.waitUntilZero(timeout: .seconds(3600)), "nothing in flight: at once")
        work.add(2)
        let waiter = Task { await work.waitUntilZero(timeout: .seconds(3600)) }
        work.remove()
        #expect(work.count == 1)
        work.remove()
        // An hour's timeout: only the count reaching zero can end this wait.
        #expect(await waiter.value)
        work.remove(5)
        #expect(work.count == 0, "never below zero")
    }

    @Test("the timeout ends a wait while work is still in flight, and says so")
    func timesOut() async {
        let work = InFlight()
        work.add()
        #expect(await work.waitUntilZero(timeout: .milliseconds(20)) == false)
        #expect(work.count == 1)
    }

    @Test("a cancelled waiter ends at once and leaves no waiter behind")
    func cancelled() async {
        let work = InFlight()
        work.add()
        let waiter = Task { await work.waitUntilZero(timeout: .seconds(3600)) }
        waiter.cancel()
        #expect(await waiter.value == false)
        work.remove()
        #expect(await work.waitUntilZero(timeout: .seconds(3600)))
    }
}

@Suite("Wakeup: a loop sleeps until signalled, without polling")
struct WakeupTests {
    @Test("a signal wakes a waiter whose only other way out is an hour's timeout")
    func signalWakesWaiter() async {
        let wakeup = Wakeup()
        let waiter = Task { await wakeup.wait(timeout: .seconds(3600)) }
        // Until the waiter has registered, the signal is kept for it: either way it goes on.
        wakeup.signal()
        #expect(await waiter.value)
    }

    @Test("a signal sent while nobody waits is kept for the next wait, once")
    func pendingSignalKept() async {
        let wakeup = Wakeup()
        wakeup.signal()
        wakeup.signal()
        #expect(await wakeup.wait(timeout: .seconds(3600)), "the kept signal: at once")
        #expect(await wakeup.wait(timeout: .milliseconds(20)) == false, "two signals count as one")
        #expect(await wakeup.wait(timeout: .zero) == false)
    }

    @Test("without a signal the timeout ends the wait; a cancelled waiter ends at once")
    func timeoutAndCancel() async {
        let wakeup = Wakeup()
        #expect(await wakeup.wait(timeout: .milliseconds(20)) == false)
        let waiter = Task { await wakeup.wait(timeout: nil) }
        waiter.cancel()
        #expect(await waiter.value == false)
        // The cancelled waiter took nothing: a later signal still reaches the next wait.
        wakeup.signal()
        #expect(await wakeup.wait(timeout: .seconds(3600)))
    }
}

@Suite("withClosing: async cleanup that is awaited")
struct WithClosingTests {
    struct Failed: Error {}

    @Test("the resource is closed after the body, whether it returned or threw, and before the caller goes on")
    func closesBothWays() async throws {
        let closed = InFlight()
        closed.add(2)
        let answer = try await withClosing(closed, close: { $0.remove() }) { resource in
            #expect(resource.count == 2, "open while the body runs")
            return 42
        }
        #expect(answer == 42)
        #expect(closed.count == 1, "closed once the call returned")
        await #expect(throws: Failed.self) {
            try await withClosing(closed, close: { $0.remove() }) { _ in throw Failed() }
        }
        #expect(closed.count == 0, "closed after the body threw too")
    }
}

@Suite("Linger: a batch waits for company only while its lane is busy")
struct LingerTests {
    let configuration = DeliveryConfiguration()  // linger 5 ms, window 10 ms, 100 messages, 256 KiB

    func ms(_ value: Int) -> Duration { .milliseconds(value) }

    func lingering(queued: Int = 1, bytes: Int = 500, age: Duration, sinceLastSent: Duration?) -> Duration? {
        DeliveryBatcher.lingering(
            queued: queued, queuedBytes: { bytes }, oldestAge: age, sinceLastSent: sinceLastSent,
            configuration: configuration)
    }

    @Test("on a quiet lane (nothing sent yet, or nothing within the window) a lone message goes at once")
    func quietSendsAtOnce() {
        #expect(lingering(age: .zero, sinceLastSent: nil) == nil)
        #expect(lingering(age: .zero, sinceLastSent: ms(10)) == nil)
        #expect(lingering(age: .zero, sinceLastSent: ms(500)) == nil)
    }

    @Test("while busy, a batch waits for what is left of the linger after its oldest message")
    func busyLingers() {
        #expect(lingering(age: .zero, sinceLastSent: ms(1)) == ms(5))
        #expect(lingering(age: ms(3), sinceLastSent: ms(9)) == ms(2))
        #expect(lingering(age: ms(5), sinceLastSent: ms(1)) == nil, "the oldest has waited enough")
    }

    @Test(
        "a full batch, by count or by bytes, goes at once even while busy; the bytes are not read when the count decides"
    )
    func fullBatchGoes() {
        #expect(
            DeliveryBatcher.lingering(
                queued: 100,
                queuedBytes: {
                    Issue.record("bytes read for a full batch")
                    return 0
                }, oldestAge: .zero,
                sinceLastSent: ms(1), configuration: configuration) == nil)
        #expect(lingering(queued: 99, age: .zero, sinceLastSent: ms(1)) == ms(5))
        #expect(lingering(queued: 3, bytes: 262_144, age: .zero, sinceLastSent: ms(1)) == nil)
    }
}

@Suite("Recent sends: a lane's last send outlives the lane for a window")
struct RecentSendsTests {
    func ms(_ value: Int) -> Duration { .milliseconds(value) }

    @Test("a send is remembered for at least the window and forgotten within two")
    func rememberedForTheWindow() {
        var recent = DeliveryBatcher.RecentSends()
        let a = ZaqarTarget(baseURL: "http://127.0.0.1:1", project: "p", queue: "a")
        let b = ZaqarTarget(baseURL: "http://127.0.0.1:1", project: "p", queue: "b")
        let window = ms(10)
        #expect(recent.sinceLastSent(a, now: ms(0), window: window) == nil, "never sent")
        recent.sent(a, at: ms(3), window: window)
        #expect(recent.sinceLastSent(a, now: ms(7), window: window) == ms(4))
        #expect(recent.sinceLastSent(b, now: ms(7), window: window) == nil, "per lane")
        #expect(recent.sinceLastSent(a, now: ms(12), window: window) == ms(9), "kept across a rotation")
        #expect(recent.sinceLastSent(a, now: ms(13), window: window) == ms(10), "still within two windows")
        #expect(recent.sinceLastSent(a, now: ms(25), window: window) == nil, "forgotten after two")
        #expect(recent.count == 0, "nothing kept once every send is old")
        recent.sent(b, at: ms(100), window: window)
        #expect(recent.sinceLastSent(b, now: ms(150), window: window) == nil, "a long gap drops both generations")
    }
}
