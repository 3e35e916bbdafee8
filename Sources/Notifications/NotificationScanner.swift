import CNotificationScan
import Foundation
import HeraldModel
import Synchronization

/// The fast path: simdjson's On-Demand parser (the C target CNotificationScan) finds event
/// type, message id and project and copies the event without its `_context_*` members, byte for
/// byte. Scanners are reused from a small pool; each is used by one caller at a time.
public enum NotificationScanner {
    /// A scanner handle; only the caller that took it from the pool touches it.
    final class Handle: @unchecked Sendable {
        let pointer: OpaquePointer

        init?() {
            guard let pointer = herald_scanner_create() else { return nil }
            self.pointer = pointer
        }

        deinit {
            herald_scanner_destroy(pointer)
        }
    }

    private static let pool = Mutex<[Handle]>([])

    /// The deepest nesting of arrays and objects accepted in one JSON document, the outermost
    /// included (`HERALD_MAX_DEPTH`); the decoder's general path holds to the same limit.
    public static let maxDepth = Int(HERALD_MAX_DEPTH)

    /// Runs `body` with a scanner of the pool (nil when none can be made).
    static func withScanner<T>(_ body: (OpaquePointer) -> T?) -> T? {
        guard let handle = pool.withLock({ $0.popLast() }) ?? Handle() else { return nil }
        defer { pool.withLock { if $0.count < 16 { $0.append(handle) } } }
        return body(handle.pointer)
    }

    /// The value at `path` (dotted: `payload.state`) in `json`, nil when absent. Scalars come
    /// straight from simdjson; an object or array is decoded from its JSON text.
    static func lookup(_ json: [UInt8], path: [String]) -> JSONValue? {
        lookup(json, pointer: jsonPointer(path))
    }

    /// `lookup(_:path:)` with the path as an RFC 6901 pointer (`/payload/state`).
    static func lookup(_ json: [UInt8], pointer: String) -> JSONValue? {
        withScanner { scanner -> JSONValue? in
            var out = herald_json_value()
            let status = json.withUnsafeBufferPointer { buffer in
                pointer.withCString {
                    herald_lookup(
                        scanner, buffer.baseAddress, buffer.count, json.capacity, $0, pointer.utf8.count, &out)
                }
            }
            guard status == 0 else { return nil }
            let text = UnsafeBufferPointer(start: out.text.data, count: out.text.length)
            switch Int(out.kind) {
            case Int(HERALD_JSON_NULL): return .null
            case Int(HERALD_JSON_BOOL): return .bool(out.number != 0)
            case Int(HERALD_JSON_NUMBER): return .number(out.number)
            case Int(HERALD_JSON_STRING): return .string(String(decoding: text, as: UTF8.self))
            case Int(HERALD_JSON_COMPOSITE): return try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: text))
            default: return nil
            }
        }
    }

    /// The first of the pointers (RFC 6901, laid one after the other in `joinedPointers`,
    /// `lengths[i]` bytes each) whose value in `json` is a string of 1 to `maxBytes` bytes: one
    /// simdjson pass for all of them (`herald_lookup_first_string`).
    static func firstString(_ json: [UInt8], joinedPointers: [UInt8], lengths: [Int], maxBytes: Int) -> String? {
        guard lengths.reduce(0, +) == joinedPointers.count else { return nil }
        return withScanner { scanner -> String? in
            var found = 0
            var out = herald_bytes()
            let status = json.withUnsafeBufferPointer { buffer in
                joinedPointers.withUnsafeBufferPointer { joined in
                    joined.withMemoryRebound(to: CChar.self) { text in
                        herald_lookup_first_string(
                            scanner, buffer.baseAddress, buffer.count, json.capacity, text.baseAddress, lengths,
                            lengths.count,
                            max(0, maxBytes), &found, &out)
                    }
                }
            }
            guard status == 0, let data = out.data else { return nil }
            return String(decoding: UnsafeBufferPointer(start: data, count: out.length), as: UTF8.self)
        }
    }

    /// The value at `path` as JSON text, exactly as it stands in `json` (nil when absent or
    /// when `json` is not JSON): a payload handed on without being decoded and encoded again.
    public static func rawValue(_ json: [UInt8], path: [String]) -> [UInt8]? {
        let pointer = jsonPointer(path)
        return withScanner { scanner -> [UInt8]? in
            var out = herald_bytes()
            let status = json.withUnsafeBufferPointer { buffer in
                pointer.withCString {
                    herald_lookup_raw(
                        scanner, buffer.baseAddress, buffer.count, json.capacity, $0, pointer.utf8.count, &out)
                }
            }
            guard status == 0, let data = out.data else { return nil }
            return Array(UnsafeBufferPointer(start: data, count: out.length))
        }
    }

    /// An RFC 6901 pointer to `path` (`~` and `/` in a segment escaped).
    static func jsonPointer(_ path: [String]) -> String {
        var pointer = ""
        for segment in path {
            pointer += "/"
            if segment.utf8.contains(where: { $0 == UInt8(ascii: "~") || $0 == UInt8(ascii: "/") }) {
                pointer += segment.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
            } else {
                pointer += segment
            }
        }
        return pointer
    }

    /// The event, or nil when the fast path does not apply (the slow path then decides). It
    /// returns an event only for a notification the slow path accepts as the same event (see
    /// `CNotificationScan.h` for what it hands over).
    public static func scan(_ body: [UInt8]) -> NotificationEvent? {
        withScanner { scanner -> NotificationEvent? in
            var out = herald_notification()
            let status = body.withUnsafeBufferPointer { buffer in
                herald_scan(scanner, buffer.baseAddress, buffer.count, body.capacity, &out)
            }
            guard status == 0 else { return nil }
            return event(out)
        }
    }

    private static func event(_ out: herald_notification) -> NotificationEvent {
        func text(_ bytes: herald_bytes) -> String {
            String(decoding: UnsafeBufferPointer(start: bytes.data, count: bytes.length), as: UTF8.self)
        }
        let project = out.project.length > 0 ? text(out.project) : nil
        var event = NotificationEvent(
            eventType: text(out.event_type), messageID: text(out.message_id), project: project,
            json: DocumentBytes.copy(UnsafeBufferPointer(start: out.body.data, count: out.body.length))
        )
        event.contextProject = out.context_project.length > 0 ? text(out.context_project) : nil
        return event
    }
}
