import Foundation
import HeraldModel
import Testing

@testable import Notifications

@Suite("Ids along a list of paths, in one pass over the JSON")
struct FirstStringTests {
    /// A notification whose fields try every way a path can fail to give an id.
    static let json = Array(
        #"""
        {"event_type": "compute.instance.create.end", "message_id": "m",
         "payload": {"tenant_id": "", "project_id": 42, "owner": null, "nested": {"id": "n-1", "list": ["a", "b"]},
                     "long": "\#(String(repeating: "x", count: 256))", "exact": "\#(String(repeating: "y", count: 255))",
                     "escaped": "p\u00e9-\"q\"", "a/b": "slash", "c~d": "tilde", "text": "plain",
                     "object": {"k": "v"}, "empty_list": []},
         "publisher_id": "compute.host1"}
        """#.utf8)

    static let paths: [[String]] = [
        ["payload", "tenant_id"], ["payload", "project_id"], ["payload", "owner"], ["payload", "missing"],
        ["payload", "nested", "id"], ["payload", "nested", "list", "1"], ["payload", "nested", "list", "7"],
        ["payload", "long"], ["payload", "exact"], ["payload", "escaped"], ["payload", "a/b"], ["payload", "c~d"],
        ["payload", "text"], ["payload", "object"], ["payload", "empty_list", "0"], ["payload", "text", "deeper"],
        ["publisher_id"], ["nothing", "here"],
    ]

    /// The rule one path at a time: the first value that is a string of 1 to 255 bytes.
    static func oneAtATime(_ event: NotificationEvent, _ paths: [LookupPath]) -> String? {
        for path in paths {
            if case .string(let text)? = event.value(at: path), !text.isEmpty, text.utf8.count <= 255 { return text }
        }
        return nil
    }

    @Test("about 1,400 ordered choices of three paths give what looking them up one at a time gives")
    func agreesWithOneAtATime() {
        let event = NotificationEvent(eventType: "x", messageID: "m", project: nil, json: Self.json)
        var compared = 0
        var found = 0
        for a in Self.paths.indices {
            for b in Self.paths.indices where b != a {
                for c in [0, 4, 9, 13, 17] where c != a && c != b {
                    let paths = [a, b, c].map { LookupPath(Self.paths[$0]) }
                    let list = LookupPathList(paths)
                    #expect(list.scannable)
                    let together = event.firstString(at: list, maxBytes: 255)
                    #expect(together == Self.oneAtATime(event, paths), "\([a, b, c].map { Self.paths[$0] })")
                    compared += 1
                    if together != nil { found += 1 }
                }
            }
        }
        #expect(compared > 1000 && found > 500 && found < compared)
    }

    @Test("what each kind of value gives: strings of 1 to 255 bytes, unescaped; nothing else")
    func kinds() {
        let event = NotificationEvent(eventType: "x", messageID: "m", project: nil, json: Self.json)
        func first(_ paths: [[String]]) -> String? {
            event.firstString(at: LookupPathList(paths.map(LookupPath.init)), maxBytes: 255)
        }
        #expect(first([["payload", "tenant_id"], ["payload", "project_id"], ["payload", "text"]]) == "plain")
        #expect(first([["payload", "long"], ["payload", "exact"]]) == String(repeating: "y", count: 255))
        #expect(first([["payload", "owner"], ["payload", "escaped"]]) == "p\u{e9}-\"q\"")
        #expect(first([["payload", "missing"], ["payload", "a/b"]]) == "slash")
        #expect(first([["payload", "object"], ["payload", "c~d"]]) == "tilde")
        #expect(first([["payload", "nested", "list", "7"], ["payload", "nested", "list", "1"]]) == "b")
        #expect(
            first([["payload", "object"], ["payload", "empty_list", "0"], ["payload", "text", "deeper"]]) == nil)
    }

    @Test(
        "malformed JSON a path runs into (an array without its comma, one never closed, an index past the end) leaves the next path its own answer"
    )
    func malformedAlongTheWay() {
        let documents = [
            #"{"payload": {"l": [1 2], "p": "x"}}"#,
            #"{"payload": {"l": [1, [2, 3}, "p": "x"}}"#,
            #"{"payload": {"p": "x", "l": [1 2]}}"#,
            #"{"payload": {"l": ["a", "b"], "p": "x"}}"#,
        ]
        let runs: [[[String]]] = [
            [["payload", "l", "3"], ["payload", "p"]],
            [["payload", "l", "1"], ["payload", "p"]],
            [["payload", "l", "18446744073709551617"], ["payload", "p"]],
            [["payload", "l", "7"], ["payload", "l", "9"], ["payload", "p"]],
            [["payload", "l", "x"], ["payload", "p"]],
        ]
        for document in documents {
            let event = NotificationEvent(eventType: "x", messageID: "m", project: nil, json: Array(document.utf8))
            for run in runs {
                let paths = run.map(LookupPath.init)
                #expect(
                    event.firstString(at: LookupPathList(paths), maxBytes: 255) == Self.oneAtATime(event, paths),
                    "\(document) \(run)")
            }
        }
    }

    @Test("not JSON, or a tree parsed whole, or a trait among the paths: the same answers")
    func otherForms() throws {
        let paths = [["payload", "tenant_id"], ["payload", "nested", "id"]].map(LookupPath.init)
        let broken = NotificationEvent(eventType: "x", messageID: "m", project: nil, json: Array("{\"payload\": ".utf8))
        #expect(broken.firstString(at: LookupPathList(paths), maxBytes: 255) == nil)
        let body = try JSONDecoder().decode(JSONValue.self, from: Data(Self.json))
        let whole = NotificationEvent(eventType: "x", messageID: "m", project: nil, body: body)
        #expect(whole.firstString(at: LookupPathList(paths), maxBytes: 255) == "n-1")
        let withTrait = NotificationEvent(
            eventType: "x", messageID: "m", project: nil, json: Self.json, traits: ["project_id": .string("t-1")])
        let traitFirst = LookupPathList([LookupPath(["traits", "project_id"])] + paths)
        #expect(!traitFirst.scannable)
        #expect(withTrait.firstString(at: traitFirst, maxBytes: 255) == "t-1")
    }
}
