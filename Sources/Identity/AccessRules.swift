import Foundation

/// One access rule of a Keystone application credential: the credential's tokens may call
/// `method` on `path` of the service of type `service`, and nothing else that has rules.
///
/// Paths match as keystonemiddleware matches them: `*` (or `{name}`) is exactly one non-empty
/// path segment, `**` is any run of characters, slashes included, possibly none; everything
/// else is literal. The whole request path must match; the query is not part of it.
package struct AccessRule: Sendable, Equatable {
    var service: String
    var path: String
    var method: String

    /// At most this many rules are read from a token (Keystone's own limit is far lower in
    /// practice; the bound keeps a hostile answer from costing more).
    static let maxRules = 256
    /// Matching costs a rule's pattern length times the path's: a request checks rules only
    /// up to this many steps in all (a user makes the rules), then is refused.
    static let matchBudget = 1 << 21
    /// Longer request paths are refused outright (Herald's routes are far shorter).
    static let maxPathBytes = 1024

    /// Whether one of `rules` lets the request through, within `matchBudget`.
    package static func allow(_ rules: [AccessRule], method: String, path: String, serviceType: String) -> Bool {
        guard path.utf8.count <= maxPathBytes else { return false }
        var spent = 0
        for rule in rules where rule.service == serviceType && rule.method == method {
            spent += (rule.path.utf8.count + 1) * (path.utf8.count + 1)
            guard spent <= matchBudget else { return false }
            if matches(Array(rule.path.utf8)[...], Array(path.utf8)[...]) { return true }
        }
        return false
    }

    /// Whether this rule lets `method` `path` through on a service of type `serviceType`.
    func allows(method: String, path: String, serviceType: String) -> Bool {
        service == serviceType && self.method == method
            && Self.matches(Array(self.path.utf8)[...], Array(path.utf8)[...])
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
                if pattern.index(after: index) < pattern.endIndex,
                    pattern[pattern.index(after: index)] == UInt8(ascii: "*")
                {
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
package struct ValidationRateLimit: Sendable {
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

    /// Whether `source` may have one more token validated at `now`: nil when it may, else how
    /// long to wait. Nothing is taken: only a refusal costs (`charge`), so valid tokens never
    /// use up the bucket an attacker behind the same address shares.
    func check(_ source: String, now: ContinuousClock.Instant) -> Duration? {
        guard rate > 0 else { return nil }
        let key = key(source)
        let slot = buckets[key] != nil || buckets.count < capacity ? key : Self.overflow
        let tokens = level(buckets[slot], now: now)
        return tokens >= 1 ? nil : .seconds((1 - tokens) / rate)
    }

    /// A token from `source` that Keystone refused.
    mutating func charge(_ source: String, now: ContinuousClock.Instant) {
        guard rate > 0 else { return }
        let key = key(source)
        if buckets[key] == nil, buckets.count >= capacity { makeRoom(now: now) }
        // Past the capacity, unknown sources share one bucket: spraying addresses buys nothing.
        let slot = buckets[key] != nil || buckets.count < capacity ? key : Self.overflow
        buckets[slot] = (level(buckets[slot], now: now) - 1, now)
    }

    /// `take` is `check` then `charge`, for callers that count every validation.
    mutating func take(_ source: String, now: ContinuousClock.Instant) -> Duration? {
        if let wait = check(source, now: now) { return wait }
        charge(source, now: now)
        return nil
    }

    /// Gives back what `take` took, for a validation that did not count against its source (the
    /// token was valid, or Keystone could not answer).
    /// Only the source's own bucket is credited (one that went meanwhile, or a charge taken from the
    /// shared overflow bucket, is not refunded: stricter, never looser), and its time never moves
    /// back (a refill is not counted twice).
    mutating func refund(_ source: String, now: ContinuousClock.Instant) {
        guard rate > 0 else { return }
        let key = key(source)
        guard key != Self.overflow, let bucket = buckets[key] else { return }
        let at = max(now, bucket.at)
        buckets[key] = (min(burst, level(bucket, now: at) + 1), at)
    }

    private static let overflow = "*"

    private func level(_ bucket: (tokens: Double, at: ContinuousClock.Instant)?, now: ContinuousClock.Instant) -> Double
    {
        guard let bucket else { return burst }
        return min(burst, bucket.tokens + max(0, (now - bucket.at).seconds) * rate)
    }

    /// An IPv6 source counts by its /64 (one host commonly holds the whole prefix); an IPv4
    /// address as an API listening on `::` sees it (`::ffff:a.b.c.d`) counts as that IPv4
    /// address, not as the one /64 every IPv4 client would share.
    func key(_ source: String) -> String { Self.prefix(source, bytes: 8) }

    /// The network a source belongs to, for the share of validations in flight: an IPv6
    /// address's /48 (a site's or a tenant's allocation: 65,536 /64s, each a source of its own);
    /// anything else as `key` has it (an IPv4 address).
    static func network(_ source: String) -> String { prefix(source, bytes: 6) }

    /// An IPv6 address's first `bytes` bytes (`2001.db8.1/48`), a mapped IPv4 address as IPv4,
    /// anything else as it is.
    private static func prefix(_ source: String, bytes count: Int) -> String {
        guard source.contains(":"), let bytes = AddressRanges.bytes(source) else { return source }
        // AddressRanges reads an IPv4-mapped address as its 4 bytes.
        if bytes.count == 4 { return bytes.map { String($0) }.joined(separator: ".") }
        return bytes.prefix(count).map { String($0, radix: 16) }.joined(separator: ".") + "/\(count * 8)"
    }

    private mutating func makeRoom(now: ContinuousClock.Instant) {
        buckets = buckets.filter { $0.key == Self.overflow || level($0.value, now: now) < burst }
    }

    var sources: Int { buckets.count }
}
