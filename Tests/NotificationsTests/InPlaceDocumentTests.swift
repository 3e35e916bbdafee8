import CNotificationScan
import HeraldModel
import Testing

@testable import Notifications

@Suite("Documents read in place: the same answers as from a copy, whatever lies past their end")
struct InPlaceDocumentTests {
    /// `bytes` with `DocumentBytes.padding` spare bytes of capacity, filled with `filler` (what
    /// would most mislead a reader that looked past the end: quotes, braces, escapes).
    static func padded(_ bytes: [UInt8], filler: [UInt8]) -> [UInt8] {
        let padding = DocumentBytes.padding
        return [UInt8](unsafeUninitializedCapacity: bytes.count + padding) { buffer, initialized in
            for (offset, byte) in bytes.enumerated() { buffer[offset] = byte }
            for offset in 0..<padding { buffer[bytes.count + offset] = filler[offset % filler.count] }
            initialized = bytes.count
        }
    }

    static let fillers: [[UInt8]] = [
        Array("\"}]".utf8), Array("\\\"".utf8), Array(",\"x\":1}".utf8), [0], Array(" ".utf8),
    ]

    @Test("the scanner's padding fits in DocumentBytes' spare bytes")
    func paddingFits() {
        #expect(DocumentBytes.padding >= Int(HERALD_JSON_PADDING))
        let copied = DocumentBytes.copy(UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(copied.isEmpty)
    }

    @Test("an event the fast path decodes keeps its JSON with room for the scanner to read it in place")
    func decodedEventsArePadded() throws {
        let body = Array(
            #"{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"compute.instance.update\", \"message_id\": \"m-1\", \"publisher_id\": \"compute.h\", \"priority\": \"INFO\", \"timestamp\": \"2026-11-24 16:37:41.367798\", \"payload\": {\"tenant_id\": \"p-1\", \"state\": \"active\"}, \"_context_project_id\": \"p-1\"}"}"#
                .utf8)
        let event = try #require(NotificationScanner.scan(body))
        #expect(event.json.capacity - event.json.count >= Int(HERALD_JSON_PADDING))
        #expect(event.value(at: LookupPath(["payload", "state"])) == .string("active"))
    }

    @Test("lookups, first strings and scans of every prefix of a document agree in place and copied")
    func prefixesAgree() throws {
        let document = FirstStringTests.json
        let pointers = FirstStringTests.paths.map { LookupPath($0) }
        let list = LookupPathList(pointers)
        var compared = 0
        for end in stride(from: 0, through: document.count, by: 5) {
            let bytes = Array(document[..<end])
            let copied = Array(bytes)
            // The copy is read through the scanner's own padded buffer.
            try #require(copied.capacity - copied.count < Int(HERALD_JSON_PADDING))
            for filler in Self.fillers {
                let inPlace = Self.padded(bytes, filler: filler)
                for path in pointers {
                    #expect(
                        NotificationScanner.lookup(inPlace, pointer: path.pointer)
                            == NotificationScanner.lookup(copied, pointer: path.pointer), "\(end) \(path.pointer)")
                    #expect(
                        NotificationScanner.rawValue(inPlace, path: path.segments)
                            == NotificationScanner.rawValue(copied, path: path.segments), "\(end) \(path.pointer)")
                    compared += 1
                }
                #expect(
                    NotificationScanner.firstString(
                        inPlace, joinedPointers: list.joinedPointers, lengths: list.pointerLengths, maxBytes: 255)
                        == NotificationScanner.firstString(
                            copied, joinedPointers: list.joinedPointers, lengths: list.pointerLengths, maxBytes: 255))
                #expect(NotificationScanner.scan(inPlace)?.json == NotificationScanner.scan(copied)?.json)
            }
        }
        #expect(compared > 1_000)
    }
}
