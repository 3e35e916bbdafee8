/// One access rule of a Keystone application credential: the credential's tokens may call
/// `method` on `path` of the service of type `service`, and nothing else that has rules.
///
/// Paths match as keystonemiddleware matches them: `*` (or `{name}`) is exactly one non-empty
/// path segment, `**` is any run of characters, slashes included, possibly none; everything
/// else is literal. The whole request path must match; the query is not part of it.
struct AccessRule: Sendable, Equatable {
    var service: String
    var path: String
    var method: String

    /// At most this many rules are read from a token (Keystone's own limit is far lower in
    /// practice; the bound keeps a hostile answer from costing more).
    static let maxRules = 256

    /// Whether this rule lets `method` `path` through on a service of type `serviceType`.
    func allows(method: String, path: String, serviceType: String) -> Bool {
        service == serviceType && self.method == method && Self.matches(Array(self.path.utf8)[...], Array(path.utf8)[...])
    }

    private enum Token: Equatable {
        case byte(UInt8)
        /// `*` or `{name}`: one or more bytes other than `/`.
        case segment
        /// `**`: any bytes, none included.
        case any
    }

    /// Glob over bytes by dynamic programming: time and memory grow with pattern times path,
    /// never exponentially, however many wildcards a (user-made) rule has.
    static func matches(_ pattern: ArraySlice<UInt8>, _ text: ArraySlice<UInt8>) -> Bool {
        guard pattern.count <= 1024, text.count <= 8192 else { return false }
        var tokens: [Token] = []
        var index = pattern.startIndex
        while index < pattern.endIndex {
            let byte = pattern[index]
            if byte == UInt8(ascii: "*") {
                if pattern.index(after: index) < pattern.endIndex, pattern[pattern.index(after: index)] == UInt8(ascii: "*") {
                    tokens.append(.any)
                    index += 2
                } else {
                    tokens.append(.segment)
                    index += 1
                }
            } else if byte == UInt8(ascii: "{"), let close = pattern[index...].firstIndex(of: UInt8(ascii: "}")) {
                tokens.append(.segment)
                index = close + 1
            } else {
                tokens.append(.byte(byte))
                index += 1
            }
        }
        let bytes = Array(text)
        let count = bytes.count
        // next[j]: tokens[i+1...] match bytes[j...]; row[j]: tokens[i...] match bytes[j...].
        var next = [Bool](repeating: false, count: count + 1)
        next[count] = true
        var row = next
        for token in tokens.reversed() {
            row[count] = token == .any && next[count]
            var j = count - 1
            while j >= 0 {
                switch token {
                case .byte(let byte): row[j] = bytes[j] == byte && next[j + 1]
                case .any: row[j] = next[j] || row[j + 1]
                case .segment: row[j] = bytes[j] != slash && (next[j + 1] || row[j + 1])
                }
                j -= 1
            }
            swap(&row, &next)
        }
        return next[0]
    }

    private static let slash = UInt8(ascii: "/")
}

/// How many token validations each source may send Keystone: a token bucket per source
/// (`rate` a second, up to `burst` at once), bounded in the sources it remembers. Only
/// validations that reach Keystone count (cached answers, good or bad, cost nothing). A value
/// type that is told the time, so tests drive it by hand.
struct ValidationRateLimit: Sendable {
    var rate: Double
    var burst: Double
    /// Sources remembered at most; past this, sources whose bucket is full again are forgotten,
    /// and if that frees nothing, every source starts over.
    var capacity = 10_000
    private var buckets: [String: (tokens: Double, at: ContinuousClock.Instant)] = [:]

    init(perSecond rate: Double, burst: Double) {
        self.rate = rate
        self.burst = burst
    }

    /// Takes one validation for `source` at `now`; nil when it may go, else how long to wait.
    mutating func take(_ source: String, now: ContinuousClock.Instant) -> Duration? {
        guard rate > 0 else { return nil }
        var bucket = buckets[source] ?? (burst, now)
        let elapsed = max(0, (now - bucket.at).seconds)
        bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
        bucket.at = now
        if bucket.tokens >= 1 {
            bucket.tokens -= 1
            if buckets[source] == nil, buckets.count >= capacity { makeRoom(now: now) }
            buckets[source] = bucket
            return nil
        }
        buckets[source] = bucket
        return .seconds((1 - bucket.tokens) / rate)
    }

    private mutating func makeRoom(now: ContinuousClock.Instant) {
        buckets = buckets.filter { min(burst, $0.value.tokens + max(0, (now - $0.value.at).seconds) * rate) < burst }
        if buckets.count >= capacity { buckets.removeAll(keepingCapacity: true) }
    }

    var sources: Int { buckets.count }
}
