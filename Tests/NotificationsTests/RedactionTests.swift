import Foundation
import HeraldModel
import Notifications
import Testing

@Suite("Redaction: what tenants never see, cut from the event's own bytes")
struct RedactionTests {
    /// The fixture as the decoder gives it from the wire, after `edit` changed the fixture.
    func decoded(_ name: String, edit: (inout [String: Any]) -> Void = { _ in }) throws -> NotificationEvent {
        let url = FixtureAttributionTests.directory.appendingPathComponent(name)
        var fixture = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&fixture)
        let events = try NotificationDecoder.decode(try FixtureAttributionTests.wire(fixture))
        #expect(events.count == 1)
        return try #require(events.first)
    }

    func event(_ json: String, type: String = "compute.instance.update", ceilometer: Bool = false) -> NotificationEvent
    {
        var event = NotificationEvent(eventType: type, messageID: "m-1", project: nil, json: Array(json.utf8))
        event.fromCeilometer = ceilometer
        return event
    }

    func rules(_ yaml: String, defaults: Bool = false) throws -> RedactionRules {
        try RedactionRules(yaml: yaml, origin: "test", includeDefaults: defaults)
    }

    func object(_ json: [UInt8]) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(json)) as? [String: Any])
    }

    /// `object` with `change` applied to the object at `path`.
    func edited(
        _ object: [String: Any], at path: [String] = [], _ change: (inout [String: Any]) -> Void
    ) -> [String: Any] {
        var object = object
        guard let first = path.first else {
            change(&object)
            return object
        }
        object[first] = edited(object[first] as? [String: Any] ?? [:], at: Array(path.dropFirst()), change)
        return object
    }

    /// Redacts `event` and expects the input minus exactly what `change` does, and `removed`.
    func expectRedacted(
        _ event: NotificationEvent, rules: RedactionRules = .defaults, removed: [String],
        sourceLocation: SourceLocation = #_sourceLocation, _ change: ([String: Any]) -> [String: Any]
    ) throws {
        let input = try object(event.json)
        let redacted = try #require(try rules.redact(event), sourceLocation: sourceLocation)
        let output = try object(redacted.json)
        #expect(
            NSDictionary(dictionary: output) == NSDictionary(dictionary: change(input)),
            "\(String(decoding: redacted.json, as: UTF8.self))", sourceLocation: sourceLocation)
        #expect(NSDictionary(dictionary: output) != NSDictionary(dictionary: input), sourceLocation: sourceLocation)
        #expect(redacted.removed == removed, sourceLocation: sourceLocation)
    }

    func bytes(_ redacted: Redacted?) -> String? {
        redacted.map { String(decoding: $0.json, as: UTF8.self) }
    }

    // MARK: Defaults on real shapes

    @Test("the shipped rules parse: one rule for every event type")
    func defaults() throws {
        let rules = RedactionRules.defaults.rules
        #expect(
            rules.map(\.patterns) == [
                ["*"], ["*"], ["scheduler.*", "compute_task.*"], ["router.*"], ["identity.*", "magnum.*"],
            ])
        let rule = try #require(rules.first)
        #expect(rule.patterns == ["*"])
        #expect(rule.origin.hasPrefix("defaults:"))
        #expect(
            rule.remove.map(\.description) == [
                "payload.host", "payload.node", "payload.'nova_object.data'.host", "payload.'nova_object.data'.node",
                "payload.*.binding:*", "raw", "message_signature", "traits.host", "traits.node",
            ])
        #expect(rule.remove[4].segments == ["payload", "*", "binding:*"])
        #expect(rule.stripHost.map(\.description) == ["publisher_id", "traits.service"])
        #expect(rule.keep.isEmpty)
    }

    @Test("nova legacy: payload host and node go, publisher_id keeps its service")
    func novaLegacy() throws {
        let event = try decoded("nova-legacy-compute.instance.create.end.json")
        let payload = try #require(try object(event.json)["payload"] as? [String: Any])
        #expect(payload["host"] as? String == "compute-3")
        #expect(payload["node"] != nil)
        #expect(payload["image_ref_url"] != nil)
        try expectRedacted(event, removed: ["payload.host", "payload.image_ref_url", "payload.node", "publisher_id"]) {
            input in
            var expected = edited(input, at: ["payload"]) {
                $0["host"] = nil
                $0["node"] = nil
                $0["image_ref_url"] = nil
            }
            expected["publisher_id"] = "compute"
            return expected
        }
    }

    @Test("nova versioned: host and node go from the nova object; nova-compute:host becomes nova-compute")
    func novaVersioned() throws {
        let event = try decoded("nova-versioned-instance.create.end.json")
        try expectRedacted(
            event, removed: ["payload.'nova_object.data'.host", "payload.'nova_object.data'.node", "publisher_id"]
        ) { input in
            #expect(input["publisher_id"] as? String == "nova-compute:compute-3")
            var expected = edited(input, at: ["payload", "nova_object.data"]) {
                #expect($0["host"] != nil && $0["node"] != nil && $0["host_name"] != nil)
                $0["host"] = nil
                $0["node"] = nil
            }
            expected["publisher_id"] = "nova-compute"
            return expected
        }
    }

    @Test("neutron: every binding:* key of the port goes, the rest of the port stays")
    func neutronBinding() throws {
        let event = try decoded("neutron-port.update.end-nova-binding.json")
        try expectRedacted(event, removed: ["payload.*.binding:*", "publisher_id"]) { input in
            var expected = edited(input, at: ["payload", "port"]) { port in
                let bindings = port.keys.filter { $0.hasPrefix("binding:") }
                #expect(
                    Set(bindings) == [
                        "binding:vnic_type", "binding:host_id", "binding:vif_type", "binding:vif_details",
                        "binding:profile",
                    ])
                for key in bindings { port[key] = nil }
            }
            expected["publisher_id"] = "network"
            return expected
        }
    }

    @Test("neutron: a network's provider attributes go; ironic: a node's driver-internal state goes")
    func providerAndIronic() throws {
        let network = try decoded("neutron-network.create.end.json")
        try expectRedacted(network, removed: ["payload.*.provider:*", "publisher_id"]) { input in
            var expected = edited(input, at: ["payload", "network"]) { network in
                let provider = network.keys.filter { $0.hasPrefix("provider:") }
                #expect(provider.count == 3)
                for key in provider { network[key] = nil }
            }
            expected["publisher_id"] = "network"
            return expected
        }
        let node = try decoded("ironic-baremetal.node.provision_set.end-leased.json")
        let redacted = try #require(try RedactionRules.defaults.redact(node))
        #expect(redacted.removed.contains("payload.'ironic_object.data'.driver_internal_info"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(redacted.json)) as? [String: Any])
        #expect(
            ((object["payload"] as? [String: Any])?["ironic_object.data"] as? [String: Any])?["driver_internal_info"]
                == nil)
    }

    @Test("keystone (CADF): the initiator's client address and agent go; who it was and its project stay")
    func keystoneInitiator() throws {
        let event = try decoded("keystone-identity.project.created.json")
        try expectRedacted(event, removed: ["payload.initiator.host", "publisher_id"]) { input in
            var expected = edited(input, at: ["payload", "initiator"]) { initiator in
                #expect((initiator["host"] as? [String: Any])?["address"] as? String == "192.0.2.50")
                initiator["host"] = nil
            }
            expected["publisher_id"] = "identity"
            return expected
        }
    }

    @Test(
        "nova scheduler and compute_task events: the hosts a request spec names go, at the top and inside request_spec")
    func requestSpec() throws {
        let spec =
            #"{"nova_object.data":{"ignore_hosts":["c1"],"force_hosts":null,"requested_destination":{"nova_object.data":{"host":"c2"}},"retry":{"nova_object.data":{"hosts":[]}},"flavor":{}}}"#
        let scheduler = event(
            #"{"event_type":"scheduler.select_destinations.start","payload":"# + spec + "}",
            type: "scheduler.select_destinations.start")
        let cut = try #require(try RedactionRules.defaults.redact(scheduler))
        #expect(
            String(decoding: cut.json, as: UTF8.self)
                == #"{"event_type":"scheduler.select_destinations.start","payload":{"nova_object.data":{"flavor":{}}}}"#
        )
        let task = event(
            #"{"payload":{"nova_object.data":{"request_spec":"# + spec
                + #","reason":{"nova_object.data":{"traceback":"Traceback...","exception":"NoValidHost"}}}}}"#,
            type: "compute_task.build_instances.error")
        let cutTask = try #require(try RedactionRules.defaults.redact(task))
        #expect(
            String(decoding: cutTask.json, as: UTF8.self)
                == #"{"payload":{"nova_object.data":{"request_spec":{"nova_object.data":{"flavor":{}}},"reason":{"nova_object.data":{"exception":"NoValidHost"}}}}}"#
        )
        // Another service's event of another type keeps such keys.
        #expect(
            try RedactionRules.defaults.redact(
                event(#"{"payload":{"nova_object.data":{"retry":1}}}"#, type: "image.update")) == nil)
    }

    @Test("a list of ports: the array is transparent")
    func portList() throws {
        let event = event(
            #"{"payload":{"ports":[{"id":"p1","binding:host_id":"h1"},{"binding:profile":{},"id":"p2"}],"binding:x":1}}"#,
            type: "port.create.end")
        let redacted = try rules(#"rules: [{event_types: ["port.*"], remove: ["payload.ports.binding:*"]}]"#).redact(
            event)
        #expect(bytes(redacted) == #"{"payload":{"ports":[{"id":"p1"},{"id":"p2"}],"binding:x":1}}"#)
        #expect(redacted?.removed == ["payload.ports.binding:*"])
    }

    @Test("cinder: the volume's host goes; volume.host@lvm becomes volume")
    func cinder() throws {
        let event = try decoded("cinder-volume.create.end.json")
        try expectRedacted(event, removed: ["payload.host", "publisher_id"]) { input in
            #expect(input["publisher_id"] as? String == "volume.cinder-volume-1@lvm")
            var expected = edited(input, at: ["payload"]) {
                #expect($0["host"] != nil)
                $0["host"] = nil
            }
            expected["publisher_id"] = "volume"
            return expected
        }
    }

    @Test("Ceilometer: raw, message_signature and the host trait go; the service trait is cut to its service")
    func ceilometer() throws {
        func withoutHost(_ input: [String: Any]) -> [String: Any] {
            var expected = input
            expected["raw"] = nil
            expected["message_signature"] = nil
            expected["traits"] = (input["traits"] as? [[Any]] ?? []).filter { $0.first as? String != "host" }
            return expected
        }
        let event = try decoded("ceilometer-event-compute.instance.create.end.json")
        #expect(event.fromCeilometer)
        let input = try object(event.json)
        #expect(input["raw"] != nil && input["message_signature"] != nil)
        #expect((input["traits"] as? [[Any]])?.contains { $0.first as? String == "host" } == true)
        // Ceilometer's own definitions already cut the fixture's service trait ("compute").
        try expectRedacted(event, removed: ["message_signature", "raw", "traits.host"], withoutHost)

        let agent = try decoded("ceilometer-event-compute.instance.create.end.json") { fixture in
            var events = fixture["payload"] as? [[String: Any]] ?? []
            events[0]["traits"] = (events[0]["traits"] as? [[Any]] ?? []).map {
                $0.first as? String == "service" ? ["service", 1, "nova-compute:compute-3"] as [Any] : $0
            }
            fixture["payload"] = events
        }
        try expectRedacted(agent, removed: ["message_signature", "raw", "traits.host", "traits.service"]) { input in
            var expected = withoutHost(input)
            expected["traits"] = (expected["traits"] as? [[Any]] ?? []).map {
                $0.first as? String == "service" ? ["service", 1, "nova-compute"] as [Any] : $0
            }
            return expected
        }
    }

    @Test("traits elements: first, middle, last and only; outside Ceilometer events traits is an ordinary key")
    func traitElements() throws {
        let rules = try rules(#"rules: [{event_types: ["*"], remove: [traits.host], strip_host: [traits.service]}]"#)
        for (json, expected) in [
            (#"{"traits":[["host",1,"h"],["a",1,"x"]]}"#, #"{"traits":[["a",1,"x"]]}"#),
            (#"{"traits":[["a",1,"x"], ["host",1,"h"], ["b",2,3]]}"#, #"{"traits":[["a",1,"x"], ["b",2,3]]}"#),
            (#"{"traits":[["a",1,"x"],["host",1,"h"]]}"#, #"{"traits":[["a",1,"x"]]}"#),
            (#"{"traits":[ ["host",1,"h"] ]}"#, #"{"traits":[]}"#),
            (#"{"traits":[["service",1,"compute.h1"],["host",1,"h"]]}"#, #"{"traits":[["service",1,"compute"]]}"#),
        ] {
            #expect(bytes(try rules.redact(event(json, ceilometer: true))) == expected, "\(json)")
        }
        #expect(
            try rules.redact(event(#"{"traits":[["hostname",1,"h"],["service",1,"compute"]]}"#, ceilometer: true))
                == nil)
        #expect(bytes(try rules.redact(event(#"{"traits":{"host":"h","a":1}}"#))) == #"{"traits":{"a":1}}"#)
        #expect(
            try rules.redact(event(#"{"traits":[["host",1,"h"]]}"#)) == nil,
            "not a Ceilometer event: a list, not a trait")
    }

    // MARK: Bytes

    @Test("everything not removed is copied byte for byte: big integers, 1.0, escapes, whitespace, key order")
    func bytesPreserved() throws {
        let input = #"""
            { "z" : 0, "event_type" : "compute.instance.update",
              "payload":{"big":12345678901234567890 , "ratio": 1.0,"host" :  "compute-1","name":"caf\u00e9 \"x\"\/", "l" : [ 1 ,2.50, -0e+3 ]},
              "publisher_id":"nova-compute:h\u00e9st",	"n":null }
            """#
        let expected = #"""
            { "z" : 0, "event_type" : "compute.instance.update",
              "payload":{"big":12345678901234567890 , "ratio": 1.0,"name":"caf\u00e9 \"x\"\/", "l" : [ 1 ,2.50, -0e+3 ]},
              "publisher_id":"nova-compute",	"n":null }
            """#
        let redacted = try #require(try RedactionRules.defaults.redact(event(input)))
        #expect(String(decoding: redacted.json, as: UTF8.self) == expected)
        #expect(redacted.removed == ["payload.host", "publisher_id"])
    }

    @Test("strip_host: the text before the first '.' or ':', escaped as JSON; nothing else changes")
    func stripHost() throws {
        let rules = try rules(#"rules: [{event_types: ["*"], strip_host: [publisher_id]}]"#)
        for (value, stripped) in [
            ("compute.host1", "compute"), ("nova-compute:host1", "nova-compute"), ("volume.host@lvm", "volume"),
            (#"a\"b\u00e9\\c.host"#, #"a\"bé\\c"#), (#"x\u003ahost"#, "x"), (#"t\tab\u002ehost"#, #"t\tab"#),
            (".host", ""),
        ] {
            let redacted = try rules.redact(event(#"{"publisher_id": "\#(value)", "a": 1}"#))
            #expect(bytes(redacted) == #"{"publisher_id": "\#(stripped)", "a": 1}"#, "\(value)")
            #expect(redacted?.removed == ["publisher_id"])
        }
        for unchanged in [#""compute""#, #""caf\u00e9""#, "12", "null", #"{"a.b":"c.d"}"#, #"["c.d"]"#] {
            #expect(try rules.redact(event(#"{"publisher_id":\#(unchanged)}"#)) == nil, "\(unchanged)")
        }
    }

    @Test("commas: removing the first, a middle, the last and the only member, and inside arrays of objects")
    func commas() throws {
        let rules = try rules(#"rules: [{event_types: ["*"], remove: [payload.x, payload.y]}]"#)
        for (json, expected) in [
            (#"{"payload":{"x":1,"a":2,"b":3}}"#, #"{"payload":{"a":2,"b":3}}"#),
            (#"{"payload":{"a":1,"x":2,"b":3}}"#, #"{"payload":{"a":1,"b":3}}"#),
            (#"{"payload":{"a":1,"b":2,"x":3}}"#, #"{"payload":{"a":1,"b":2}}"#),
            (#"{"payload":{"x":{"deep":[1,{"x":2}]}}}"#, #"{"payload":{}}"#),
            (#"{"payload":{"x":1,"y":2,"a":3}}"#, #"{"payload":{"a":3}}"#),
            (#"{"payload":{"a":1,"x":2,"y":3}}"#, #"{"payload":{"a":1}}"#),
            (#"{"payload":{"x":1,"a":2,"y":3,"b":4}}"#, #"{"payload":{"a":2,"b":4}}"#),
            (#"{"payload": {"a": 1, "x": 2, "b": 3}, "x": 4}"#, #"{"payload": {"a": 1, "b": 3}, "x": 4}"#),
            ("{\n  \"payload\": {\n    \"a\": 1,\n    \"x\": 2\n  }\n}", "{\n  \"payload\": {\n    \"a\": 1\n  }\n}"),
            ("{\n  \"payload\": {\n    \"x\": 1,\n    \"a\": 2\n  }\n}", "{\n  \"payload\": {\n    \"a\": 2\n  }\n}"),
            ("{\n  \"payload\": {\n    \"x\": 1\n  }\n}", "{\n  \"payload\": {}\n}"),
            (
                #"{"payload":[{"x":1,"a":2},{"a":3,"x":4},{"x":5},[{"y":6}],7]}"#,
                #"{"payload":[{"a":2},{"a":3},{},[{}],7]}"#
            ),
        ] {
            let redacted = try rules.redact(event(json))
            #expect(bytes(redacted) == expected, "\(json)")
            if let redacted { #expect(try JSONSerialization.jsonObject(with: Data(redacted.json)) is [String: Any]) }
        }
    }

    @Test("keys compare unescaped: \\u0068ost is host; hostname is not host")
    func escapedKeys() throws {
        let redacted = try RedactionRules.defaults.redact(
            event(#"{"payload":{"\u0068ost":"h","hostname":"n","no\u0064e":"x"}}"#))
        #expect(bytes(redacted) == #"{"payload":{"hostname":"n"}}"#)
        #expect(redacted?.removed == ["payload.host", "payload.node"])
        let glob = try rules(#"rules: [{event_types: ["*"], remove: ["payload.caf\u00e9*"]}]"#)
        #expect(bytes(try glob.redact(event(#"{"payload":{"caf\u00e9s":1,"cafe":2}}"#))) == #"{"payload":{"cafe":2}}"#)
    }

    @Test("nothing to cut: nil")
    func nothing() throws {
        let json =
            #"{"event_type":"x","payload":{"hostname":"h","nodes":[{"hostname":"n"}],"port":{"bindings":1}},"publisher_id":"compute","rawdata":1}"#
        #expect(try RedactionRules.defaults.redact(event(json)) == nil)
        #expect(
            try rules(#"rules: [{event_types: ["volume.*"], remove: [payload.x]}]"#).redact(
                event(#"{"payload":{"x":1}}"#)) == nil, "another event type")
    }

    // MARK: Operator files

    func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("redaction-\(UUID().uuidString).yaml")
            .path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("keep takes a default back for the rule's event types only; defaults: false drops the shipped rules")
    func keepAndDefaults() throws {
        let path = try write(
            """
            rules:
              - event_types: ["compute.instance.*", "!compute.instance.exists"]
                keep: ["payload.node"]
              - event_types: ["image.*"]
                remove: ["payload.locations"]
            """)
        let loaded = try RedactionRules.load(path: path)
        #expect(loaded.rules.count == 2 + RedactionRules.defaults.rules.count)
        #expect(loaded.rules[0].origin == "\(path):2")
        let json = #"{"payload":{"host":"h","node":"n","locations":[]}}"#
        let kept = try loaded.redact(event(json, type: "compute.instance.create.end"))
        #expect(bytes(kept) == #"{"payload":{"node":"n","locations":[]}}"#)
        #expect(kept?.removed == ["payload.host"])
        #expect(
            !loaded.paths(for: "compute.instance.create.end").remove.contains(try FieldPath(parsing: "payload.node")))
        #expect(
            bytes(try loaded.redact(event(json, type: "compute.instance.exists"))) == #"{"payload":{"locations":[]}}"#)
        #expect(bytes(try loaded.redact(event(json, type: "volume.create.end"))) == #"{"payload":{"locations":[]}}"#)
        let image = try loaded.redact(event(json, type: "image.update"))
        #expect(bytes(image) == #"{"payload":{}}"#)
        #expect(image?.removed == ["payload.host", "payload.locations", "payload.node"])

        let alone = try RedactionRules.load(
            path: try write(
                """
                defaults: false
                rules:
                  - event_types: ["*"]
                    remove: ["payload.secret"]
                """))
        #expect(alone.rules.count == 1)
        #expect(
            bytes(try alone.redact(event(#"{"payload":{"host":"h","secret":"s"}}"#))) == #"{"payload":{"host":"h"}}"#)
        #expect(try RedactionRules.load(path: try write("defaults: false\n")).rules.isEmpty)
    }

    @Test("file errors name the file, the line and the field")
    func fileErrors() throws {
        for (text, line, words) in [
            (
                "rules:\n  - event_types: [\"*\"]\n    remove: [payload.x]\n    colour: blue\n", 4,
                "rules[0]: unknown key 'colour'"
            ),
            (
                "rules:\n  - event_types: [\"*\"]\n    remove:\n      - payload.ok\n      - payload..x\n", 5,
                "rules[0].remove[1]: 'payload..x' has an empty segment"
            ),
            ("rule:\n  - event_types: [\"*\"]\n", 1, "unknown key 'rule'"),
            ("rules:\n  - event_types: [\"*\"]\n", 2, "rules[0]: a rule needs at least one path"),
            ("rules:\n  - remove: [payload.x]\n", 2, "rules[0]: event_types is required"),
            (
                "rules:\n  - event_types: [\"a\"]\n    remove: [x]\n  - event_types: [\"\"]\n    keep: [x]\n", 4,
                "rules[1].event_types[0]: '' must be"
            ),
            ("rules:\n  - event_types: [\"!a.*\"]\n    keep: [x]\n", 2, "only exclusions"),
            (
                "rules:\n  - event_types: [\"*\"]\n    strip_host: publisher_id\n", 3,
                "rules[0].strip_host must be a list"
            ),
            ("rules:\n  - event_types: [\"*\"]\n    keep: [[a]]\n", 3, "rules[0].keep[0] must be a string"),
            ("defaults: maybe\n", 1, "defaults must be true or false"),
            ("rules: {a: 1}\n", 1, "rules must be a list"),
            ("- event_types: [\"*\"]\n", 1, "a redaction file is a mapping"),
            ("rules: [\n", nil, "not YAML"),
        ] as [(String, Int?, String)] {
            let path = try write(text)
            do {
                _ = try RedactionRules.load(path: path)
                Issue.record("accepted: \(text)")
            } catch let error as RedactionRulesError {
                #expect(error.description.contains(words), "\(error)")
                if let line { #expect(error.line == line, "\(error)") }
                #expect(error.description.hasPrefix(path + (line.map { ":\($0): " } ?? "")), "\(error)")
            }
        }
        #expect(throws: RedactionRulesError.self) { try RedactionRules.load(path: "/nonexistent/redaction.yaml") }
    }

    // MARK: Hostile input

    @Test("malformed or too deep JSON is refused with RedactionError, never a trap")
    func hostile() throws {
        func nested(_ count: Int, _ open: String, _ close: String, inner: String = "") -> String {
            String(repeating: open, count: count) + inner + String(repeating: close, count: count)
        }
        let inputs: [(String, [UInt8])] = [
            ("truncated in a member", Array(#"{"payload":{"host":"x""#.utf8)),
            ("truncated in a key", Array(#"{"payload":{"ho"#.utf8)),
            ("truncated after a comma", Array(#"{"payload":{"a":1,"#.utf8)),
            ("truncated in a skipped value", Array(#"{"payload":{"host":{"a":[1,"#.utf8)),
            ("200 arrays on a path", Array(#"{"payload":\#(nested(200, "[", "]"))}"#.utf8)),
            ("200 arrays skipped", Array(#"{"other":\#(nested(200, "[", "]")),"payload":{"host":1}}"#.utf8)),
            ("200 objects under payload.*", Array(#"{"payload":\#(nested(200, #"{"a":"#, "}", inner: "1"))}"#.utf8)),
            ("131 levels", Array(#"{"payload":\#(nested(130, "[", "]"))}"#.utf8)),
            ("garbage", [0xFF, 0xFE, 0x00, 0x7B]),
            (
                "garbage inside a skipped value",
                Array(#"{"payload":{"host":1},"x":[1,"#.utf8) + [0xFF] + Array("]}".utf8)
            ),
            ("nothing", []),
            ("trailing comma", Array(#"{"payload":{"host":"x",}}"#.utf8)),
            ("no colon", Array(#"{"payload":{"host" "x"}}"#.utf8)),
            ("bad \\u escape in a key", Array(#"{"payload":{"\uZZZZ":1}}"#.utf8)),
            ("lone surrogate in a key", Array(#"{"payload":{"\ud800":1}}"#.utf8)),
            ("lone low surrogate in a key", Array(#"{"payload":{"\udc00x":1}}"#.utf8)),
            ("bad escape in a key", Array(#"{"payload":{"\q":1}}"#.utf8)),
            ("mismatched brackets on a path", Array(#"{"payload":{"a":[1,2}}}"#.utf8)),
            ("mismatched brackets skipped", Array(#"{"payload":{"host":[1,{]}}}"#.utf8)),
            ("bytes after the value", Array(#"{"payload":{"host":"x"}} {}"#.utf8)),
            ("bad escape in a stripped string", Array(#"{"publisher_id":"compute.h\u12"}"#.utf8)),
            ("bad literal", Array(#"{"payload":{"node":tru}}"#.utf8)),
            ("unterminated string", Array(#"{"payload":{"a":"open}}"#.utf8)),
            ("control character in a string", Array("{\"payload\":{\"host\":\"a\nb\"}}".utf8)),
            ("a key that is not a string", Array(#"{"payload":{host:1}}"#.utf8)),
            ("a lone backslash at the end", Array(#"{"payload":{"a\"#.utf8)),
        ]
        for (label, bytes) in inputs {
            let hostile = NotificationEvent(
                eventType: "compute.instance.update", messageID: "m", project: nil, json: bytes)
            #expect(throws: RedactionError.self, "\(label)") { try RedactionRules.defaults.redact(hostile) }
        }
        let ceilometer = try rules(#"rules: [{event_types: ["*"], remove: [traits.host]}]"#)
        for json in [
            #"{"traits":[["host",1,"h"]"#, #"{"traits":[["host" 1]]}"#, #"{"traits":[[\#(nested(200, "[", "]"))]]}"#,
        ] {
            #expect(throws: RedactionError.self, "\(json)") { try ceilometer.redact(event(json, ceilometer: true)) }
        }
        // The deepest accepted: the object and 129 arrays.
        #expect(try RedactionRules.defaults.redact(event(#"{"payload":\#(nested(129, "[", "]"))}"#)) == nil)
    }
}
