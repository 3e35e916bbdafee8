/// `partition = FNV-1a-64(event_type as UTF-8) mod P`: documented, stable, and
/// tested against the FNV reference vectors, so every node and every version
/// agrees where an event type lives.
public enum PartitionHash {
    public static func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }

    public static func partition(of eventType: String, count: Int) -> Int {
        Int(fnv1a64(eventType.utf8) % UInt64(count))
    }
}

/// One event as Herald sees it: from an oslo.messaging notification, or one element
/// of a Ceilometer event list.
public struct NotificationEvent: Sendable, Equatable {
    public var eventType: String
    /// The idempotency key delivered as `event_id`.
    public var messageID: String
    /// The project it belongs to, when it names one (see `NotificationDecoder` for the order).
    public var project: String?
    /// The event as delivered: the oslo message without any `_context_*` key, or the Ceilometer event.
    public var body: JSONValue
    /// Ceilometer traits by name (empty for oslo notifications).
    public var traits: [String: JSONValue]

    public init(eventType: String, messageID: String, project: String?, body: JSONValue, traits: [String: JSONValue] = [:]) {
        self.eventType = eventType
        self.messageID = messageID
        self.project = project
        self.body = body
        self.traits = traits
    }

    /// The value at a dotted path: `payload.state`, `payload.image_meta.os_distro`,
    /// `traits.memory_mb`, `publisher_id`.
    public func value(at path: String) -> JSONValue? {
        let segments = path.split(separator: ".").map(String.init)
        guard let first = segments.first else { return nil }
        if first == "traits", segments.count >= 2 {
            return traits[segments.dropFirst().joined(separator: ".")]
        }
        var current = body
        for segment in segments {
            guard case .object(let object) = current, let next = object[segment] else { return nil }
            current = next
        }
        return current
    }
}
