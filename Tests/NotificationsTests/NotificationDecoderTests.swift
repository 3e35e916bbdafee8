import Foundation
import HeraldModel
import Notifications
import Testing

@Suite("Partition hash")
struct PartitionHashTests {
    @Test(
        "FNV-1a 64 matches the reference vectors",
        arguments: [
            ("", 0xcbf2_9ce4_8422_2325 as UInt64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ])
    func vectors(text: String, hash: UInt64) {
        #expect(PartitionHash.fnv1a64(text.utf8) == hash)
    }

    @Test("partitions of real event types are fixed for good")
    func partitions() {
        // Changing these would move every event type to another partition in a running cluster.
        #expect(
            PartitionHash.partition(of: "compute.instance.create.end", count: 256)
                == Int(PartitionHash.fnv1a64("compute.instance.create.end".utf8) % 256))
        #expect((0..<256).contains(PartitionHash.partition(of: "volume.attach.end", count: 256)))
        #expect(PartitionHash.partition(of: "x", count: 1) == 0)
    }
}

@Suite("Notification decoding")
struct NotificationDecoderTests {
    let nova: [String: Any] = [
        "message_id": "5c329c20-d435-444c-8fa2-e1b54592219c",
        "publisher_id": "compute.host1",
        "event_type": "compute.instance.create.end",
        "priority": "INFO",
        "timestamp": "2026-11-24 16:37:41.367798",
        "payload": [
            "instance_id": "i-1", "state": "active", "tenant_id": "tenant-payload",
            "image_meta": ["os_distro": "ubuntu"],
        ],
        "_context_project_id": "project-context",
        "_context_user_name": "alice",
        "_context_roles": ["admin"],
    ]

    func bytes(_ object: Any) throws -> [UInt8] {
        Array(try JSONSerialization.data(withJSONObject: object))
    }

    @Test("driver 'messaging': bare JSON; _context_* keys are gone; the payload's project wins")
    func messagingDriver() throws {
        let events = try NotificationDecoder.decode(try bytes(nova))
        #expect(events.count == 1)
        let event = events[0]
        #expect(event.eventType == "compute.instance.create.end")
        #expect(event.messageID == "5c329c20-d435-444c-8fa2-e1b54592219c")
        #expect(event.project == "tenant-payload")
        #expect(event.value(at: "payload.image_meta.os_distro") == .string("ubuntu"))
        let encoded = String(decoding: NotificationDecoder.encode(event), as: UTF8.self)
        #expect(!encoded.contains("_context_"), "context keys never leave: \(encoded)")
        #expect(!encoded.contains("alice"))
    }

    @Test("driver 'messagingv2': the oslo.message string inside the envelope")
    func messagingV2Driver() throws {
        var message = nova
        message["payload"] = ["instance_id": "i-1"]
        let inner = String(decoding: try JSONSerialization.data(withJSONObject: message), as: UTF8.self)
        let events = try NotificationDecoder.decode(try bytes(["oslo.version": "2.0", "oslo.message": inner]))
        #expect(events.map(\.eventType) == ["compute.instance.create.end"])
        #expect(events[0].project == "project-context", "no project in the payload: the context's")
    }

    @Test("Ceilometer events: each element of the payload is an event, traits by name, project from traits")
    func ceilometer() throws {
        let notification: [String: Any] = [
            "message_id": "outer", "event_type": "event", "publisher_id": "ceilometer.notification",
            "priority": "SAMPLE",
            "timestamp": "2026-11-24 16:37:41.367798",
            "payload": [
                [
                    "message_id": "e1", "event_type": "compute.instance.update",
                    "generated": "2026-11-24T16:37:41.367798",
                    "traits": [["project_id", 1, "p1"], ["memory_mb", 2, 2048], ["state", 1, "active"]], "raw": [:],
                    "message_signature": "sig",
                ],
                [
                    "message_id": "e2", "event_type": "volume.attach.end", "generated": "2026-11-24T16:37:42",
                    "traits": [["tenant_id", 1, "p2"]], "raw": [:], "message_signature": "sig",
                ],
            ],
        ]
        let events = try NotificationDecoder.decode(try bytes(notification))
        #expect(events.map(\.eventType) == ["compute.instance.update", "volume.attach.end"])
        #expect(events.map(\.messageID) == ["e1", "e2"])
        #expect(events.map(\.project) == ["p1", "p2"])
        #expect(events[0].value(at: "traits.memory_mb") == .number(2048))
    }

    @Test(
        "a Ceilometer list's part, as the ingest publishes it to one partition, decodes to the same events; a part too long for the bound is nil"
    )
    func ceilometerPart() throws {
        let events = (0..<6).map { index -> [String: Any] in
            [
                "message_id": "e\(index)", "event_type": "compute.instance.update\(index % 3)",
                "generated": "2026-11-24T16:37:41", "traits": index == 4 ? [] : [["project_id", 1, "p\(index)"]],
                "raw": ["path": "a/b \u{e9}\u{2028}"], "message_signature": "sig",
            ]
        }
        let notification: [String: Any] = [
            "message_id": "outer", "event_type": "event", "publisher_id": "ceilometer.notification",
            "_context_project_id": "acting \"one\"", "priority": "SAMPLE", "payload": events,
        ]
        let whole = try NotificationDecoder.decode(try bytes(notification))
        for part in [[1, 3, 4], [0], Array(0..<6)] {
            let chosen = part.map { whole[$0] }
            let body = try #require(NotificationDecoder.ceilometerList(chosen))
            let decoded = try NotificationDecoder.decode(body)
            #expect(decoded == chosen, "\(String(decoding: body, as: UTF8.self))")
            #expect(decoded.map(\.contextProject) == chosen.map { _ in "acting \"one\"" })
        }
        // Event 4 has no project of its own: it keeps the list's acting project.
        #expect(
            try NotificationDecoder.decode(try #require(NotificationDecoder.ceilometerList([whole[4]])))[0].project
                == "acting \"one\"")
        let size = try #require(NotificationDecoder.ceilometerList(whole)).count
        #expect(NotificationDecoder.ceilometerList(whole, maxBytes: size) != nil)
        #expect(NotificationDecoder.ceilometerList(whole, maxBytes: size - 1) == nil)
    }

    @Test(
        "malformed input is refused with a reason",
        arguments: [
            (Array("{not json".utf8), "not JSON"),
            ([0xff, 0xfe, 0x7b], "UTF-8"),
            (Array("[1,2]".utf8), "not an object"),
            (Array("{\"message_id\":\"m\",\"payload\":{}}".utf8), "no event_type"),
            (Array("{\"event_type\":42,\"message_id\":\"m\"}".utf8), "event_type is not"),
            (Array("{\"event_type\":\"a.b\"}".utf8), "no message_id"),
            (Array("{\"oslo.version\":\"2.0\",\"oslo.message\":7}".utf8), "oslo.message"),
            (
                Array("{\"event_type\":\"event\",\"message_id\":\"m\",\"payload\":[{\"event_type\":\"x\"}]}".utf8),
                "no message_id"
            ),
        ])
    func malformed(body: [UInt8], reason: String) {
        do {
            _ = try NotificationDecoder.decode(body)
            Issue.record("accepted \(String(decoding: body, as: UTF8.self))")
        } catch let error as NotificationDecodingError {
            #expect(error.message.contains(reason), "\(error)")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("a body over the size limit is refused before parsing")
    func tooLarge() {
        #expect(throws: NotificationDecodingError.self) {
            try NotificationDecoder.decode(Array(repeating: 0x20, count: 100), maxBytes: 99)
        }
    }
}

@Suite("The decoder's simdjson fast path agrees with the general path")
struct NotificationFastPathTests {
    /// Odd but valid notifications: escapes in keys and values, unicode, numbers of every form,
    /// nested arrays, empty objects, a tenant_id only, whitespace everywhere.
    static let cases: [String] = [
        #"{"message_id": "m1", "event_type": "compute.instance.update", "payload": {"tenant_id": "t1", "state": "active"}, "_context_user_name": "alice", "_context_project_id": "ctx"}"#,
        #"{ "event_type" : "port.create.end" , "message_id":"m\u0032", "payload":{"project_id":"","tenant_id":"t2","fixed_ips":[{"ip":"10.0.0.1"},[],{}]}, "priority":"INFO" }"#,
        #"{"event_type": "volume.\"odd\".end", "message_id": "m3", "payload": {"name": "caf\u00e9 \ud83d\ude00 \"q\" \\ /", "size": -1.5e3, "ok": true, "none": null}, "_context_tenant": "ctx-t"}"#,
        #"{"event_type": "x.y", "message_id": "m4", "we\"ird\u0001key": [1, 2.0, -0, 1E+2], "payload": []}"#,
        #"{"event_type": "snapshot.create.end", "message_id": "m5", "payload": "a string payload", "publisher_id": "cinder.host"}"#,
        #"{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"compute.instance.delete.end\", \"message_id\": \"m6\", \"payload\": {\"project_id\": \"p6\"}, \"_context_roles\": [\"admin\"]}"}"#,
    ]

    @Test("same type, id, project and body; no _context_ key delivered", arguments: cases)
    func agrees(_ text: String) throws {
        let fast = try [
            #require(NotificationDecoder.decodeFastlyForTesting(Array(text.utf8)), "the fast path takes it")
        ]
        let slow = try NotificationDecoder.decodeSlowlyForTesting(Array(text.utf8))
        #expect(fast == slow)
        #expect(fast.count == 1)
        let delivered = try #require(fast.first).json
        let reparsed = try JSONDecoder().decode(JSONValue.self, from: Data(delivered))
        #expect(
            reparsed == slow[0].body,
            "the copied bytes are the same JSON: \(String(decoding: delivered, as: UTF8.self))")
        #expect(!String(decoding: delivered, as: UTF8.self).contains("_context_"))
    }

    @Test(
        "Ceilometer lists and malformed notifications go the general way",
        arguments: [
            #"{"event_type": "event", "message_id": "m", "payload": [{"event_type": "compute.instance.update", "message_id": "e1", "traits": []}]}"#,
            #"{"event_type": "x", "payload": {}}"#,
            #"{"event_type": 5, "message_id": "m"}"#,
            #"[1, 2]"#,
            #"{"event_type": "x", "message_id": "m", "payload": {"a": }"#,
        ])
    func handsOver(_ text: String) {
        #expect(NotificationDecoder.decodeFastlyForTesting(Array(text.utf8)) == nil)
    }

    @Test("the realistic corpus of the benchmark decodes the same both ways")
    func corpus() throws {
        for index in 0..<200 {
            let message: [String: Any] = [
                "message_id": "m-\(index)",
                "event_type": ["compute.instance.create.end", "port.update.end", "volume.attach.end"][index % 3],
                "payload": [
                    "project_id": index % 4 == 0 ? "" : "p\(index % 7)", "tenant_id": "t\(index)", "state": "active",
                    "n": index, "f": Double(index) / 7,
                    "nested": ["a": [1, 2, ["b": "c\u{00e9}"]], "empty": [:] as [String: Any]],
                ],
                "_context_project_id": "ctx-\(index)", "_context_auth_token": "secret",
            ]
            let inner = String(decoding: try JSONSerialization.data(withJSONObject: message), as: UTF8.self)
            let body = Array(
                try JSONSerialization.data(withJSONObject: ["oslo.version": "2.0", "oslo.message": inner]))
            let fast = try #require(NotificationDecoder.decodeFastlyForTesting(body), "the fast path takes it")
            let slow = try NotificationDecoder.decodeSlowlyForTesting(body)
            // Fields first (looked up in the bytes), then the whole tree.
            for path in [
                "payload.state", "payload.n", "payload.f", "payload.nested.a.2.b", "payload.nested.a.1",
                "payload.nested.empty", "payload.missing", "event_type", "payload.nested.a.9", "_context_project_id",
            ] {
                #expect(fast.value(at: path) == slow[0].value(at: path), "\(path)")
            }
            #expect([fast] == slow)
        }
    }
}
