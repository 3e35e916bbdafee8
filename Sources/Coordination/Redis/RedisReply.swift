/// One reply from Redis (RESP2), converted out of hiredis memory.
public enum RedisReply: Sendable, Equatable, CustomStringConvertible {
    case null
    case integer(Int64)
    /// A bulk string: arbitrary bytes, NUL included.
    case bulk([UInt8])
    /// A simple status such as `OK` or `PONG`.
    case status(String)
    /// An error reply such as `ERR unknown command` or `NOSCRIPT ...`.
    case error(String)
    case array([RedisReply])

    /// The reply as text: bulk strings decoded as UTF-8, statuses as they are.
    public var string: String? {
        switch self {
        case .bulk(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let text): return text
        default: return nil
        }
    }

    /// The reply as an integer: integer replies, and bulk strings holding a number.
    public var integer: Int64? {
        switch self {
        case .integer(let value): return value
        case .bulk(let bytes): return Int64(String(decoding: bytes, as: UTF8.self))
        default: return nil
        }
    }

    public var bytes: [UInt8]? {
        if case .bulk(let bytes) = self { return bytes }
        return nil
    }

    public var array: [RedisReply]? {
        if case .array(let items) = self { return items }
        return nil
    }

    /// An HGETALL answer as a dictionary (string fields and values; others are skipped).
    public var hashFields: [String: String] {
        var out: [String: String] = [:]
        let items = array ?? []
        var index = 0
        while index + 1 < items.count {
            if let key = items[index].string { out[key] = items[index + 1].string ?? "" }
            index += 2
        }
        return out
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .null: return "(nil)"
        case .integer(let value): return "(integer) \(value)"
        case .bulk(let bytes): return "\"\(String(decoding: bytes, as: UTF8.self))\""
        case .status(let text): return text
        case .error(let text): return "(error) \(text)"
        case .array(let items): return "[" + items.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

/// A value that can be one argument of a Redis command, as bytes.
public protocol RedisArgument: Sendable {
    var redisBytes: [UInt8] { get }
}

extension String: RedisArgument {
    public var redisBytes: [UInt8] { Array(utf8) }
}

extension Substring: RedisArgument {
    public var redisBytes: [UInt8] { Array(utf8) }
}

extension Array: RedisArgument where Element == UInt8 {
    public var redisBytes: [UInt8] { self }
}

extension Int: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}

extension Int64: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}

extension UInt64: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}

extension Double: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}

/// One command as its argument vector, binary safe.
public struct RedisCommand: Sendable, Equatable {
    public var arguments: [[UInt8]]

    public init(_ arguments: [any RedisArgument]) {
        self.arguments = arguments.map(\.redisBytes)
    }

    public init(_ arguments: any RedisArgument...) {
        self.init(arguments)
    }

    public init(bytes: [[UInt8]]) {
        self.arguments = bytes
    }

    /// The command's name, for logs and errors.
    public var name: String {
        arguments.first.map { String(decoding: $0, as: UTF8.self) } ?? ""
    }
}
