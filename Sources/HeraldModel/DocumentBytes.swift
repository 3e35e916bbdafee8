/// JSON documents as byte arrays with room past their end: the notification scanner (simdjson)
/// reads up to 64 bytes past a document's last byte, and reads a document in place when its
/// array's capacity leaves it those bytes and they are zero, as here; otherwise it copies the
/// document into a zero-padded buffer first (CNotificationScan's `HERALD_JSON_PADDING`).
public enum DocumentBytes {
    /// Spare bytes kept past the end: at least `HERALD_JSON_PADDING` (CNotificationScan).
    public static let padding = 64

    /// `source`'s bytes in an array whose capacity has `padding` spare bytes.
    public static func copy(_ source: UnsafeRawBufferPointer) -> [UInt8] {
        let count = source.count
        return [UInt8](unsafeUninitializedCapacity: count + padding) { buffer, initialized in
            if let base = buffer.baseAddress {
                if count > 0, let from = source.baseAddress {
                    UnsafeMutableRawPointer(base).copyMemory(from: from, byteCount: count)
                }
                (base + count).initialize(repeating: 0, count: padding)
            }
            initialized = count
        }
    }

    /// `source`'s bytes in an array whose capacity has `padding` spare bytes.
    public static func copy(_ source: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        copy(UnsafeRawBufferPointer(source))
    }
}
