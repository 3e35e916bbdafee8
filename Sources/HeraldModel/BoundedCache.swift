import Synchronization

/// Answers worked out once and kept, shared by threads under one lock, and bounded by count: the
/// table is emptied when it reaches `limit`, so memory stays bounded whatever keys the input
/// brings (event types from the bus, URLs from tenants). Used where an answer costs far more to
/// work out (globs, a URL parse, a definitions search) than to look up.
///
/// Inlinable, so that each use is specialised for its key and value: unspecialised, a lookup
/// went through the generic witnesses (metadata, hashing, copies); the candidate cache's lookups
/// were 28% of matching's time at 10,000 subscriptions, 14% specialised (BENCHMARKS.md).
public final class BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    public let limit: Int
    @usableFromInline let entries = Mutex<[Key: Value]>([:])

    public init(limit: Int) {
        self.limit = max(1, limit)
    }

    @inlinable
    public func get(_ key: Key) -> Value? {
        entries.withLock { $0[key] }
    }

    /// Keeps `value` for `key` (emptying the table first when it is full) and returns it.
    @inlinable @discardableResult
    public func put(_ key: Key, _ value: Value) -> Value {
        entries.withLock { entries in
            if entries.count >= limit { entries.removeAll(keepingCapacity: true) }
            entries[key] = value
        }
        return value
    }

    /// Entries kept now.
    public var count: Int { entries.withLock { $0.count } }
}
