import Foundation
import HeraldModel
import Notifications
import Testing

@Suite("Event definitions: who owns an event, who acted, which resource")
struct EventDefinitionsTests {
    static let tenant = "4f2e7ab3c1d04f6a8e6b0c9d1a2b3c4d"
    static let admin = "a0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5"

    /// A messagingv2 envelope of a notification with the given context project.
    func notification(_ type: String, payload: [String: Any], context: String?) throws -> NotificationEvent {
        var message: [String: Any] = [
            "message_id": UUID().uuidString, "event_type": type, "priority": "INFO", "publisher_id": "x.host",
            "timestamp": "2026-12-04 10:00:00.000000", "payload": payload,
        ]
        if let context { message["_context_project_id"] = context }
        let inner = String(decoding: try JSONSerialization.data(withJSONObject: message), as: UTF8.self)
        let body = Array(try JSONSerialization.data(withJSONObject: ["oslo.version": "2.0", "oslo.message": inner]))
        var event = try #require(try NotificationDecoder.decode(body).first)
        EventDefinitions.defaults.attribute(&event)
        return event
    }

    @Test("the shipped definitions parse, and every one has an include pattern")
    func defaults() {
        #expect(EventDefinitions.defaults.definitions.count >= 10)
        #expect(EventDefinitions.defaults.definition(for: "anything.at.all") != nil, "a catch-all ends the list")
    }

    @Test(
        "the fingerprint: the same for the same definitions read twice (a fixed value: the same in every process), different when any field says something else"
    )
    func fingerprint() throws {
        let yaml = """
            - event_type: ["compute.instance.*"]
              family: compute.instance
              owner: [payload.tenant_id]
              resource_id: [payload.instance_id]
              actor: [_context_project_id]
            """
        let once = try EventDefinitions(yaml: yaml, origin: "a")
        let again = try EventDefinitions(yaml: yaml, origin: "b")
        #expect(once.fingerprint == again.fingerprint, "where they were written does not count")
        #expect(once.fingerprint == "59fa7fa18cd78cf9", "as every node of this build computes it (a fixed vector)")
        let changes = [
            ("compute.instance.*", "compute.*"), ("family: compute.instance", "family: compute"),
            ("owner: [payload.tenant_id]", "owner: [payload.project_id]"),
            ("resource_id: [payload.instance_id]", "resource_id: [payload.uuid]"),
            ("actor: [_context_project_id]", "actor: [_context_tenant]"),
            // One path whose segment holds ", " against two paths: they print alike as strings.
            ("owner: [payload.tenant_id]", "owner: [\"payload.'a, payload'.b\"]"),
        ]
        var seen: Set<String> = [once.fingerprint]
        for (from, to) in changes {
            let other = try EventDefinitions(yaml: yaml.replacingOccurrences(of: from, with: to), origin: "a")
            #expect(seen.insert(other.fingerprint).inserted, "\(to) has a fingerprint of its own")
        }
        let twoPaths = try EventDefinitions(
            yaml: yaml.replacingOccurrences(of: "owner: [payload.tenant_id]", with: "owner: [payload.a, payload.b]"),
            origin: "a")
        #expect(seen.insert(twoPaths.fingerprint).inserted)
        #expect(EventDefinitions.defaults.fingerprint != once.fingerprint)
    }

    @Test("nova legacy: the instance's project owns it; the resource is the instance")
    func novaLegacy() throws {
        let event = try notification(
            "compute.instance.create.end", payload: ["tenant_id": Self.tenant, "instance_id": "i-1"],
            context: Self.admin)
        #expect(event.project == Self.tenant)
        #expect(event.actorProject == Self.admin)
        #expect(event.resourceID == "i-1")
        #expect(event.family == "compute.instance")
        #expect(event.partitionKey == "compute.instance/i-1")
    }

    @Test("nova versioned: owner and actor from the nova object")
    func novaVersioned() throws {
        let data: [String: Any] = ["tenant_id": Self.tenant, "uuid": "u-1", "action_initiator_project": Self.admin]
        let event = try notification(
            "instance.power_off.end", payload: ["nova_object.name": "InstanceActionPayload", "nova_object.data": data],
            context: "5e7c9a1b3d5f4e6a8b0c2d4e6f8a0b1c")
        #expect(event.project == Self.tenant)
        #expect(
            event.actorProject == Self.admin,
            "action_initiator_project comes before the context (a service acting for the user)")
        #expect(event.resourceID == "u-1")
    }

    @Test(
        "neutron: an admin's port for a tenant belongs to the tenant; a delete with only an id falls back to the context"
    )
    func neutron() throws {
        let created = try notification(
            "port.create.end", payload: ["port": ["id": "p-1", "project_id": Self.tenant, "tenant_id": Self.tenant]],
            context: Self.admin)
        #expect(created.project == Self.tenant)
        #expect(created.actorProject == Self.admin)
        #expect(created.resourceID == "p-1")
        let deleted = try notification("port.delete.end", payload: ["port_id": "p-1"], context: Self.tenant)
        #expect(deleted.project == Self.tenant)
        #expect(deleted.resourceID == "p-1")
        #expect(deleted.partitionKey == created.partitionKey, "one port's events share a partition")
    }

    @Test("glance: the image's owner, not the uploader")
    func glance() throws {
        let event = try notification(
            "image.update", payload: ["id": "img-1", "owner": Self.tenant], context: Self.admin)
        #expect(event.project == Self.tenant)
        #expect(event.actorProject == Self.admin)
    }

    @Test("events of one resource share a partition; other resources spread")
    func partitions() throws {
        let keys = try [
            "compute.instance.create.start", "compute.instance.create.end", "compute.instance.power_off.end",
            "compute.instance.delete.end",
        ].map {
            try notification($0, payload: ["tenant_id": Self.tenant, "instance_id": "same"], context: Self.tenant)
                .partitionKey
        }
        #expect(Set(keys).count == 1)
        let spread = Set(
            try (0..<200).map {
                try notification(
                    "compute.instance.update", payload: ["tenant_id": Self.tenant, "instance_id": "i-\($0)"],
                    context: nil)
            }.map { PartitionHash.partition(of: $0.partitionKey, count: 16) })
        #expect(spread.count == 16, "200 servers cover all 16 partitions")
    }

    @Test("an operator's file: tried before the defaults, or replacing them; errors name the line")
    func files() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        func write(_ text: String) throws -> String {
            let path = directory.appendingPathComponent(UUID().uuidString + ".yaml").path
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let extending = try EventDefinitions.load(
            path: try write(
                """
                - event_type: ["compute.instance.*"]
                  family: server
                  owner: ["payload.owner_project"]
                """))
        #expect(extending.definitions.first?.family == "server")
        #expect(extending.definitions.count == EventDefinitions.defaults.definitions.count + 1)
        let replacing = try EventDefinitions.load(
            path: try write(
                """
                replace_defaults: true
                definitions:
                  - event_type: ["*"]
                    owner: ["payload.x"]
                """))
        #expect(replacing.definitions.count == 1)
        for (text, line, words) in [
            ("- event_type: [\"a.*\"]\n  owner: [\"payload.x\"]\n  colour: blue\n", 3, "unknown key 'colour'"),
            ("- owner: [\"payload.x\"]\n", 1, "event_type is required"),
            ("- event_type: [\"a.*\"]\n  owner: [\"payload..x\"]\n", 2, "empty segment"),
            ("- event_type: [\"a.*\"\n", nil, "not YAML"),
            ("- event_type: [\"a b\"]\n", 1, "must be letters"),
        ] as [(String, Int?, String)] {
            let path = try write(text)
            do {
                _ = try EventDefinitions.load(path: path)
                Issue.record("accepted: \(text)")
            } catch let error as EventDefinitionsError {
                #expect(error.description.contains(words), "\(error)")
                if let line { #expect(error.line == line, "\(error)") }
                #expect(error.description.hasPrefix(path))
            }
        }
    }

    @Test("paths: dots inside quotes, errors for empty segments and stray quotes")
    func paths() throws {
        #expect(
            try FieldPath(parsing: "payload.'nova_object.data'.uuid").segments == [
                "payload", "nova_object.data", "uuid",
            ])
        #expect(try FieldPath(parsing: "_context_project_id").segments == ["_context_project_id"])
        for bad in ["", "a..b", "a.'b", "a'b'.c", "'a'b", "a."] {
            #expect(throws: FieldPathError.self, "\(bad)") { try FieldPath(parsing: bad) }
        }
    }
}
