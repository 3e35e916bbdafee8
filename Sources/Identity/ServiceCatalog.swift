import Foundation

/// The service catalog of a Keystone token (`token.catalog`), as Herald reads it: where the
/// cloud's services listen, by type, interface and region. Read as hostile input: at most 200
/// services of 50 endpoints each, http(s) URLs of at most 1024 characters only.
package struct ServiceCatalog: Sendable, Equatable {
    struct Endpoint: Sendable, Equatable {
        var type: String
        var interface: String
        var region: String?
        var url: String
    }

    var endpoints: [Endpoint]

    init(endpoints: [Endpoint] = []) {
        self.endpoints = endpoints
    }

    /// From the body Keystone answers a token request with (empty when it has no catalog).
    init(token body: [String: Any]) {
        var endpoints: [Endpoint] = []
        let services = ((body["token"] as? [String: Any])?["catalog"] as? [Any]) ?? []
        for case let service as [String: Any] in services.prefix(200) {
            guard let type = service["type"] as? String, !type.isEmpty, type.count <= 64 else { continue }
            for case let endpoint as [String: Any] in ((service["endpoints"] as? [Any]) ?? []).prefix(50) {
                guard let interface = endpoint["interface"] as? String, let url = endpoint["url"] as? String,
                    url.count <= 1024,
                    let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme?.lowercased() ?? ""),
                    parsed.host?.isEmpty == false
                else { continue }
                let region = (endpoint["region_id"] as? String) ?? (endpoint["region"] as? String)
                endpoints.append(Endpoint(type: type, interface: interface, region: region, url: url))
            }
        }
        self.endpoints = endpoints
    }

    /// The first endpoint of `type` on `interface`, in `region` when one is named.
    func url(type: String, interface: String, region: String?) -> String? {
        endpoints.first { $0.type == type && $0.interface == interface && (region == nil || $0.region == region) }?.url
    }
}
