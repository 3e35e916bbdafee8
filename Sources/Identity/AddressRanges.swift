import Foundation

/// Addresses and CIDR ranges, IPv4 and IPv6 (`HERALD_TRUSTED_PROXIES`: `10.0.0.5`,
/// `10.42.0.0/16`, `fd00:10::/64`): an ingress's pods change addresses within their network, so
/// a list of exact addresses does not describe them. An IPv4 address as a listener on `::`
/// sees it (`::ffff:a.b.c.d`) is matched as that IPv4 address.
package struct AddressRanges: Sendable, Equatable {
    /// The most entries read (the setting is the operator's, but still bounded).
    package static let maxEntries = 256

    struct Range: Sendable, Equatable {
        var bytes: [UInt8]
        var prefix: Int
    }

    private var ranges: [Range] = []

    package init() {}

    /// - Throws: `AddressRangeError` naming the first entry that is not an address or
    ///   `address/prefix` (prefix 0 to 32 for IPv4, 0 to 128 for IPv6), or too many entries.
    package init(_ entries: [String]) throws(AddressRangeError) {
        guard entries.count <= Self.maxEntries else {
            throw AddressRangeError(entry: "\(entries.count) entries", reason: "at most \(Self.maxEntries)")
        }
        for entry in entries {
            guard entry.utf8.count <= 64 else { throw AddressRangeError(entry: entry, reason: "too long") }
            let parts = entry.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let bytes = Self.bytes(String(parts[0])) else {
                throw AddressRangeError(entry: entry, reason: "not an IPv4 or IPv6 address")
            }
            var prefix = bytes.count * 8
            if parts.count == 2 {
                guard let bits = Int(parts[1]), (0...bytes.count * 8).contains(bits), parts[1].allSatisfy(\.isNumber)
                else {
                    throw AddressRangeError(entry: entry, reason: "the prefix must be 0 to \(bytes.count * 8)")
                }
                prefix = bits
            }
            ranges.append(Range(bytes: bytes, prefix: prefix))
        }
    }

    package var isEmpty: Bool { ranges.isEmpty }

    /// Whether `address` (as a socket gives it, or as `X-Forwarded-For` names it) is in a range.
    package func contains(_ address: String) -> Bool {
        guard !ranges.isEmpty, address.utf8.count <= 64, let bytes = Self.bytes(address) else { return false }
        return ranges.contains { range in
            guard range.bytes.count == bytes.count else { return false }
            let whole = range.prefix / 8
            guard range.bytes.prefix(whole) == bytes.prefix(whole) else { return false }
            let rest = range.prefix % 8
            guard rest > 0 else { return true }
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - rest))
            return range.bytes[whole] & mask == bytes[whole] & mask
        }
    }

    /// The address's bytes: 4 for IPv4 (and IPv4-mapped IPv6), 16 for IPv6; nil when it is
    /// neither (a zone index, `fe80::1%eth0`, is not taken).
    static func bytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: &v6) { Array($0) }
        if bytes.prefix(10).allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            return Array(bytes.suffix(4))
        }
        return bytes
    }
}

/// An entry of an address list that is not an address or a CIDR range.
package struct AddressRangeError: Error, CustomStringConvertible, Sendable {
    package var entry: String
    package var reason: String

    package var description: String { "\(entry): \(reason)" }
}
