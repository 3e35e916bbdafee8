import Foundation
import HeraldModel
import Logging
import Testing

@testable import Coordination

@Suite("Registry updates a watcher has not taken yet are merged")
struct RegistryUpdateTests {
    static let deleted: Subscription? = nil
    let logger = Logger(label: "herald.test.registry")

    func subscription(_ id: String) -> Subscription {
        Subscription(id: id, project: "p1", eventTypes: ["*"], target: Target(queue: "q"))
    }

    func stored(_ ids: String...) throws -> [StoredSubscription] {
        try ids.map { StoredSubscription(id: $0, bytes: Array(try JSONEncoder().encode(subscription($0)))) }
    }

    @Test("three changes waiting are taken as one, with the last word on each subscription")
    func changesMerge() {
        let pending = RegistryWatch.Pending()
        pending.merge(RegistryUpdate(version: 5, changed: ["a": subscription("a")]))
        pending.merge(RegistryUpdate(version: 6, changed: ["b": subscription("b")]))
        pending.merge(RegistryUpdate(version: 7, changed: ["a": Self.deleted]))
        let taken = pending.take()
        #expect(taken?.version == 7)
        #expect(taken?.replacesAll == false)
        #expect(taken?.changed.mapValues { $0?.id } == ["a": String?.none, "b": "b"])
        #expect(pending.take() == nil, "taken once")
    }

    @Test("after the whole registry, a deletion removes a subscription from it and a change adds one")
    func afterWholeRegistry() throws {
        var update = RegistryUpdate(version: 3, all: try stored("a", "b"), changed: [:])
        update.merge(RegistryUpdate(version: 4, changed: ["a": Self.deleted]))
        update.merge(RegistryUpdate(version: 5, changed: ["c": subscription("c")]))
        #expect(update.replacesAll)
        #expect(update.version == 5)
        #expect(update.subscriptions(logger: logger).map(\.id).sorted() == ["b", "c"])
    }

    @Test("the whole registry read again replaces whatever changes were waiting")
    func wholeRegistryReplaces() throws {
        var update = RegistryUpdate(version: 3, changed: ["a": Self.deleted, "x": subscription("x")])
        update.merge(RegistryUpdate(version: 9, all: try stored("z"), changed: [:]))
        #expect(update.replacesAll && update.version == 9)
        #expect(update.subscriptions(logger: logger).map(\.id) == ["z"])
    }

    @Test("a loss of the registry the watcher has not taken yet is kept when the registry is read again")
    func lossKept() throws {
        var update = RegistryUpdate(version: 1, all: try stored("a"), changed: [:], lostVersion: 40)
        update.merge(RegistryUpdate(version: 2, changed: ["b": subscription("b")]))
        update.merge(RegistryUpdate(version: 5, all: try stored("a", "b", "c"), changed: [:]))
        #expect(update.lostVersion == 40)
        #expect(update.subscriptions(logger: logger).map(\.id).sorted() == ["a", "b", "c"])
        var plain = RegistryUpdate(version: 3, changed: [:])
        plain.merge(RegistryUpdate(version: 9, all: try stored("z"), changed: [:]))
        #expect(plain.lostVersion == nil)
    }

    @Test("a notice names the heads before and after its change; an older Herald's names none; others are unreadable")
    func noticeHeads() {
        func heads(_ text: String) -> (version: Int64, id: String, heads: (String, String)?)? {
            guard case .notice(let version, let id, let heads) = RegistryChange(Array(text.utf8)) else { return nil }
            return (version, id, heads)
        }
        let notice = heads("7:h0:h1 s-1")
        #expect(notice?.version == 7 && notice?.id == "s-1")
        #expect(notice?.heads?.0 == "h0" && notice?.heads?.1 == "h1")
        #expect(heads("7::h1 s-1")?.heads?.0 == "", "the first change of a registry without a head")
        let older = heads("8 s-2")
        #expect(older?.version == 8 && older?.id == "s-2" && older?.heads == nil)
        for unreadable in ["x:a:b s-1", "7:a s-1", "7:a:b:c s-1", "7:a: s-1", "9", "", "7:a:b"] {
            #expect(RegistryChange(Array(unreadable.utf8)) == nil, "\(unreadable)")
        }
    }

    @Test("a record stored under another subscription's key is skipped, not taken for that one")
    func recordUnderAnotherKey() throws {
        let forged = StoredSubscription(id: "k", bytes: try stored("a")[0].bytes)
        let update = RegistryUpdate(version: 1, all: [forged] + (try stored("b")), changed: [:])
        #expect(update.subscriptions(logger: logger).map(\.id) == ["b"])
    }

    @Test("an unreadable record is skipped; the others are read")
    func unreadableRecord() throws {
        let update = RegistryUpdate(
            version: 1,
            all: try stored("a") + [StoredSubscription(id: "x", bytes: Array("{not json".utf8))] + stored("b"),
            changed: [:])
        #expect(update.subscriptions(logger: logger).map(\.id) == ["a", "b"])
    }
}
