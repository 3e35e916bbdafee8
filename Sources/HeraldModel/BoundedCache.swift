import Synchronization

/// Answers worked out once and kept, shared by threads under one lock, and bounded by count:
/// memory stays bounded whatever keys the input brings (event types from the bus, URLs from
/// tenants). Used where an answer costs far more to work out (globs, a URL parse, a definitions
/// search) than to look up.
///
/// Two generations of at most `limit / 2` entries each: a new answer goes into the current one;
/// when that is full it becomes the previous one and the one before is dropped. An answer found
/// in the previous generation moves into the current one, so what is asked for again survives a
/// flood of keys asked for once (a cloud with more pairs than the limit, or a burst of new event
/// types), where emptying the whole table lost every answer at once.
///
/// Inlinable, so that each use is specialised for its key and value: unspecialised, a lookup
/// went through the generic witnesses (metadata, hashing, copies); the candidate cache's lookups
/// were 28% of matching's time at 10,000 subscriptions, 14% specialised (BENCHMARKS.md).
public final class BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    public let limit: Int
    @usableFromInline let generation: Int
    @usableFromInline let entries = Mutex<Generations>(Generations())

    @usableFromInline
    struct Generations: Sendable {
        @usableFromInline var current: [Key: Value] = [:]
        @usableFromInline var previous: [Key: Value] = [:]

        @usableFromInline init() {}

        /// Keeps `value` in the current generation; when that is full, it becomes the previous
        /// one first, and the dropped generation is returned (to be freed outside the lock).
        @inlinable
        mutating func keep(_ key: Key, _ value: Value, generation: Int) -> [Key: Value]? {
            var dropped: [Key: Value]?
            if current.count >= generation, current[key] == nil {
                dropped = previous
                previous = current
                current = [:]
                current.reserveCapacity(generation)
            }
            current[key] = value
            return dropped
        }
    }

    public init(limit: Int) {
        self.limit = max(2, limit)
        generation = self.limit / 2
    }

    @inlinable
    public func get(_ key: Key) -> Value? {
        // The usual case first, as cheap as one table: found in the current generation.
        if let value = entries.withLock({ $0.current[key] }) { return value }
        var dropped: [Key: Value]?
        let value = entries.withLock { entries -> Value? in
            if let value = entries.current[key] { return value }
            guard let value = entries.previous[key] else { return nil }
            // Asked for again: kept into the next generation.
            dropped = entries.keep(key, value, generation: generation)
            return value
        }
        _ = dropped
        return value
    }

    /// `get` without moving an answer between generations: one look under the lock, nothing
    /// allocated or freed (for a thread that must not wait).
    @inlinable
    public func peek(_ key: Key) -> Value? {
        entries.withLock { $0.current[key] ?? $0.previous[key] }
    }

    /// Keeps `value` for `key` and returns it.
    @inlinable @discardableResult
    public func put(_ key: Key, _ value: Value) -> Value {
        var dropped: [Key: Value]?
        entries.withLock { entries in dropped = entries.keep(key, value, generation: generation) }
        _ = dropped
        return value
    }

    /// Entries kept now (both generations; a key in both counts twice).
    public var count: Int { entries.withLock { $0.current.count + $0.previous.count } }
}
