import Foundation
import HeraldModel
import Notifications
import Testing

/// Every fixture of `Tests/Fixtures/notifications` (modelled on each service's published
/// notification shapes), decoded as it comes over the wire and attributed by the shipped
/// definitions: owner, actor, resource id and family as the fixture expects.
@Suite("Attribution of real OpenStack notification shapes")
struct FixtureAttributionTests {
    struct Fixture: Sendable, CustomStringConvertible {
        var name: String
        var data: Data
        var description: String { name }
        var object: [String: Any] { ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any]) ?? [:] }
    }

    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/notifications")

    static var fixtures: [Fixture] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted().compactMap { name in
            guard let data = try? Data(contentsOf: directory.appendingPathComponent(name)) else { return nil }
            return Fixture(name: name, data: data)
        }
    }

    /// The notification as oslo.messaging's messagingv2 driver puts it on the wire: context keys as `_context_*`.
    static func wire(_ fixture: [String: Any]) throws -> [UInt8] {
        var message: [String: Any] = [:]
        for key in ["message_id", "event_type", "publisher_id", "timestamp", "payload"] { message[key] = fixture[key] }
        message["priority"] = (fixture["priority"] as? String ?? "info").uppercased()
        for (key, value) in fixture["context"] as? [String: Any] ?? [:] { message["_context_" + key] = value }
        let inner = String(decoding: try JSONSerialization.data(withJSONObject: message), as: UTF8.self)
        return Array(try JSONSerialization.data(withJSONObject: ["oslo.version": "2.0", "oslo.message": inner]))
    }

    @Test("there are fixtures for every service")
    func coverage() {
        let names = Self.fixtures.map(\.name)
        #expect(names.count >= 30)
        for service in [
            "nova-legacy", "nova-versioned", "neutron", "cinder", "glance", "heat", "keystone", "octavia", "designate",
            "ironic", "manila", "magnum", "ceilometer",
        ] {
            #expect(names.contains { $0.hasPrefix(service) }, "\(service)")
        }
    }

    @Test("owner, actor, resource id and family", arguments: fixtures)
    func attribution(fixture: Fixture) throws {
        let events = try NotificationDecoder.decode(try Self.wire(fixture.object))
        var event = try #require(events.first)
        #expect(events.count == 1)
        EventDefinitions.defaults.attribute(&event)
        let expect = try #require(fixture.object["expect"] as? [String: Any])
        #expect(event.project == expect["owner"] as? String, "owner")
        #expect(event.actorProject == expect["actor"] as? String, "actor")
        #expect(event.resourceID == expect["resource_id"] as? String, "resource id")
        #expect(event.family == expect["family"] as? String, "family")
    }
}
