import CNotificationScan
import HeraldModel
import Testing

@testable import Notifications

@Suite("Documents read in place: the same answers as from a copy")
struct InPlaceDocumentTests {
    /// `bytes` with `DocumentBytes.padding` spare bytes of capacity, filled with `filler`.
    static func padded(_ bytes: [UInt8], filler: [UInt8]) -> [UInt8] {
        let padding = DocumentBytes.padding
        return [UInt8](unsafeUninitializedCapacity: bytes.count + padding) { buffer, initialized in
            for (offset, byte) in bytes.enumerated() { buffer[offset] = byte }
            for offset in 0..<padding { buffer[bytes.count + offset] = filler[offset % filler.count] }
            initialized = bytes.count
        }
    }

    static func readsInPlace(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { herald_reads_in_place($0.baseAddress, $0.count, bytes.capacity) == 1 }
    }

    /// Zeros (read in place), then what would most mislead a reader that looked past the end
    /// (a closing brace or bracket where simdjson checks that a document is closed, quotes,
    /// escapes): those are copied over.
    static let fillers: [[UInt8]] = [
        [0], Array("}".utf8), Array("]".utf8), Array("\"}]".utf8), Array("\\\"".utf8), Array(",\"x\":1}".utf8),
    ]

    /// Broken endings, each where a byte past the end could be taken for part of the document.
    static let edges: [String] = [
        #"{"a":{}"#, "[[]", #"{"a":[{}"#, #"{"a":1}}"#, "[1]]", #"{"a":"b"#, #"{"a":"b\"#, "{}", "[]", "", " ",
        #"{"payload": {"text": "plain"}}"#, #"{"payload": {"text": "plain"}"#,
    ]

    @Test("zero spare bytes are read in place; too few, or any that are not zero, are copied over")
    func inPlaceRule() throws {
        let document = Array(#"{"a": 1}"#.utf8)
        #expect(DocumentBytes.padding >= Int(HERALD_JSON_PADDING))
        let copied = document.withUnsafeBytes { DocumentBytes.copy($0) }
        #expect(copied == document)
        #expect(Self.readsInPlace(copied) == true)
        #expect(Self.readsInPlace(Self.padded(document, filler: [0])) == true)
        #expect(Self.readsInPlace(Self.padded(document, filler: Array("}".utf8))) == false)
        var one = Self.padded(document, filler: [0])
        one.withUnsafeMutableBufferPointer { buffer in
            // The last spare byte, past `count`: written through the base address.
            (buffer.baseAddress! + document.count + DocumentBytes.padding - 1).pointee = 1
        }
        #expect(Self.readsInPlace(one) == false)
        // Too few spare bytes: a document in an array of its own size.
        let exact = Array(document)
        try #require(exact.capacity - exact.count < Int(HERALD_JSON_PADDING))
        #expect(Self.readsInPlace(exact) == false)
        #expect(Self.readsInPlace([]) == false)
    }

    @Test("an event the fast path decodes keeps its JSON where the scanner reads it in place")
    func decodedEventsArePadded() throws {
        let body = Array(
            #"{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"compute.instance.update\", \"message_id\": \"m-1\", \"publisher_id\": \"compute.h\", \"priority\": \"INFO\", \"timestamp\": \"2026-11-24 16:37:41.367798\", \"payload\": {\"tenant_id\": \"p-1\", \"state\": \"active\"}, \"_context_project_id\": \"p-1\"}"}"#
                .utf8)
        let event = try #require(NotificationScanner.scan(body))
        #expect(Self.readsInPlace(event.json))
        #expect(event.value(at: LookupPath(["payload", "state"])) == .string("active"))
    }

    @Test(
        "lookups, first strings and scans of every prefix of a document and of broken endings agree in place and copied"
    )
    func prefixesAgree() throws {
        let document = FirstStringTests.json
        var documents = (0...document.count).map { Array(document[..<$0]) }
        documents += Self.edges.map { Array($0.utf8) }
        let pointers = FirstStringTests.paths.map { LookupPath($0) } + [LookupPath(["a"]), LookupPath(["0"])]
        let list = LookupPathList(pointers)
        var foundInPlace = 0
        var scannedInPlace = 0
        for bytes in documents {
            let copied = Array(bytes)
            // The copy is read through the scanner's own padded buffer.
            try #require(!Self.readsInPlace(copied))
            for filler in Self.fillers {
                let other = Self.padded(bytes, filler: filler)
                #expect(Self.readsInPlace(other) == (filler == [0]))
                for path in pointers {
                    let found = NotificationScanner.lookup(other, pointer: path.pointer)
                    #expect(
                        found == NotificationScanner.lookup(copied, pointer: path.pointer),
                        "\(bytes.count) \(path.pointer)")
                    #expect(
                        NotificationScanner.rawValue(other, path: path.segments)
                            == NotificationScanner.rawValue(copied, path: path.segments),
                        "\(bytes.count) \(path.pointer)")
                    if found != nil, Self.readsInPlace(other) { foundInPlace += 1 }
                }
                #expect(
                    NotificationScanner.firstString(
                        other, joinedPointers: list.joinedPointers, lengths: list.pointerLengths, maxBytes: 255)
                        == NotificationScanner.firstString(
                            copied, joinedPointers: list.joinedPointers, lengths: list.pointerLengths, maxBytes: 255))
                let scanned = NotificationScanner.scan(other)
                let scannedCopy = NotificationScanner.scan(copied)
                #expect(scanned?.json == scannedCopy?.json)
                #expect(scanned?.eventType == scannedCopy?.eventType)
                #expect(scanned?.messageID == scannedCopy?.messageID)
                #expect(scanned?.project == scannedCopy?.project)
                if scanned != nil, Self.readsInPlace(other) { scannedInPlace += 1 }
            }
        }
        // Not only failures compared: the whole document and the complete edges answer in place.
        #expect(foundInPlace >= 16)
        #expect(scannedInPlace >= 1)
    }
}
