import Foundation
import HeraldModel

/// The Zaqar endpoints the operator allows (`HERALD_ZAQAR_ALLOWED_URLS`, by default only
/// `HERALD_ZAQAR_URL`). A subscription's `zaqar_url` must fall under one: same scheme, host
/// and port, and a path under the allowed path. Anything else would let a tenant make Herald
/// post (with its headers and tokens) to any address inside the control plane.
public struct ZaqarEndpoints: Sendable, CustomStringConvertible {
    struct Endpoint: Sendable, Equatable {
        var scheme: String
        var host: String
        var port: Int
        /// Without a trailing slash; "" for the root.
        var path: String
    }

    let allowed: [Endpoint]
    /// The list as configured, for messages.
    public let urls: [String]

    /// - Throws: `DeliveryError.invalidConfiguration` naming a URL that is not a plain http(s) URL.
    public init(urls: [String]) throws {
        var allowed: [Endpoint] = []
        for url in urls {
            guard let endpoint = Self.parse(url) else {
                throw DeliveryError(
                    .invalidConfiguration, "'\(url)' is not an http(s) URL with a host and no user, query or fragment")
            }
            allowed.append(endpoint)
        }
        guard !allowed.isEmpty else { throw DeliveryError(.invalidConfiguration, "no allowed Zaqar URL") }
        self.allowed = allowed
        self.urls = urls
    }

    /// A URL as its bytes: Swift's strings compare by canonical equivalence (a Kelvin sign is a
    /// `K`), and a verdict counts only for the very same bytes.
    private struct ExactURL: Hashable, Sendable {
        let text: String

        static func == (a: ExactURL, b: ExactURL) -> Bool { a.text.utf8.elementsEqual(b.text.utf8) }

        func hash(into hasher: inout Hasher) {
            var text = text
            text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }

    /// Verdicts by URL: every delivery is checked, and a cloud's subscriptions name a handful of
    /// URLs (parsing one costs a `URLComponents`). Only URLs `parse` would read (at most 2,048
    /// bytes) are kept, at most 1,024 of them (`BoundedCache`): a bound whatever tenants write.
    private let verdicts = BoundedCache<ExactURL, Bool>(limit: 1_024)

    /// Whether Herald may post to `url` (a subscription's `zaqar_url` or the default endpoint).
    public func permits(_ url: String) -> Bool {
        guard url.utf8.count <= Self.maxURLBytes else { return false }
        let key = ExactURL(text: url)
        return verdicts.get(key) ?? verdicts.put(key, judge(url))
    }

    /// The longest URL read at all.
    static let maxURLBytes = 2_048

    /// Verdicts remembered now (for tests).
    var rememberedCount: Int { verdicts.count }

    private func judge(_ url: String) -> Bool {
        guard let endpoint = Self.parse(url) else { return false }
        return allowed.contains { allowed in
            allowed.scheme == endpoint.scheme && allowed.host == endpoint.host && allowed.port == endpoint.port
                && (allowed.path.isEmpty || endpoint.path == allowed.path
                    || endpoint.path.hasPrefix(allowed.path + "/"))
        }
    }

    public var description: String { urls.joined(separator: ", ") }

    static func parse(_ text: String) -> Endpoint? {
        guard text.utf8.count <= maxURLBytes, let components = URLComponents(string: text),
            let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https",
            let host = components.host?.lowercased(), !host.isEmpty,
            components.user == nil, components.password == nil, components.query == nil, components.fragment == nil
        else { return nil }
        let port = components.port ?? (scheme == "https" ? 443 : 80)
        guard (1...65535).contains(port) else { return nil }
        var path = components.percentEncodedPath
        // A path that climbs (`/zaqar/../admin`) or is encoded to hide its segments is refused.
        guard !path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }), !path.contains("%") else {
            return nil
        }
        while path.hasSuffix("/") { path.removeLast() }
        return Endpoint(scheme: scheme, host: host, port: port, path: path)
    }
}
