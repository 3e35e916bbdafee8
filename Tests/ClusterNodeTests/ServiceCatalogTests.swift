import Foundation
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

@Suite("Zaqar from Keystone's catalog")
struct ServiceCatalogTests {
    @Test(
        "the catalog of a token answer: endpoints by type, interface and region; what is not an http(s) URL, or not shaped as Keystone shapes it, is skipped"
    )
    func catalog() throws {
        let body: [String: Any] = [
            "token": [
                "catalog": [
                    [
                        "type": "identity",
                        "endpoints": [
                            ["interface": "public", "region_id": "RegionOne", "url": "http://keystone:5000/v3"]
                        ],
                    ],
                    [
                        "type": "messaging",
                        "endpoints": [
                            ["interface": "admin", "region_id": "RegionOne", "url": "javascript:alert(1)"],
                            ["interface": "public", "region_id": "RegionTwo", "url": "https://zaqar.two.example:8888"],
                            ["interface": "public", "region_id": "RegionOne", "url": "https://zaqar.one.example:8888"],
                            ["interface": "internal", "region": "RegionOne", "url": "http://zaqar.internal:8888"],
                            ["interface": "internal", "url": 42],
                            "not an endpoint",
                        ],
                    ],
                    ["type": 7, "endpoints": [["interface": "public", "url": "http://x"]]],
                    ["type": "messaging-websocket", "endpoints": [["interface": "public", "url": "ws://zaqar:9000"]]],
                ]
            ]
        ]
        let catalog = ServiceCatalog(token: body)
        #expect(
            catalog.url(type: "messaging", interface: "public", region: nil) == "https://zaqar.two.example:8888",
            "the first, in any region")
        #expect(
            catalog.url(type: "messaging", interface: "public", region: "RegionOne") == "https://zaqar.one.example:8888"
        )
        #expect(
            catalog.url(type: "messaging", interface: "internal", region: "RegionOne") == "http://zaqar.internal:8888",
            "region as older Keystones name it")
        #expect(catalog.url(type: "messaging", interface: "admin", region: nil) == nil, "not an http(s) URL")
        #expect(
            catalog.url(type: "messaging-websocket", interface: "public", region: nil) == nil, "Herald posts over HTTP")
        #expect(catalog.url(type: "messaging", interface: "public", region: "RegionThree") == nil)
        #expect(ServiceCatalog(token: [:]).endpoints.isEmpty)
        #expect(ServiceCatalog(token: ["token": ["catalog": "nonsense"]]).endpoints.isEmpty)
        // Bounded: 1000 services of 1000 endpoints become at most 200 of 50.
        let many: [String: Any] = [
            "token": [
                "catalog": (0..<1000).map { index in
                    [
                        "type": "s\(index)",
                        "endpoints": (0..<1000).map { _ in ["interface": "public", "url": "http://h:1"] },
                    ] as [String: Any]
                }
            ]
        ]
        #expect(ServiceCatalog(token: many).endpoints.count == 200 * 50)
    }

    @Test(
        "HERALD_ZAQAR_URL unset with Keystone: Zaqar comes from the catalog (messaging, public, any region by default); a bad interface stops start-up naming it; set, it wins"
    )
    func configuration() throws {
        let keystone = [
            "HERALD_KEYSTONE_URL": "http://keystone:5000/v3", "HERALD_KEYSTONE_PASSWORD": "x",
            "HERALD_API_AUTH": "keystone",
        ]
        let fromCatalog = try NodeConfiguration.fromEnvironment(keystone)
        #expect(fromCatalog.zaqarCatalog == ZaqarCatalogLookup(type: "messaging", interface: "public", region: nil))
        let inRegion = try NodeConfiguration.fromEnvironment(
            keystone.merging([
                "HERALD_ZAQAR_INTERFACE": "internal", "HERALD_ZAQAR_REGION": "RegionOne", "HERALD_ZAQAR_URL": "",
            ]) { $1 })
        #expect(
            inRegion.zaqarCatalog == ZaqarCatalogLookup(type: "messaging", interface: "internal", region: "RegionOne"))
        #expect(throws: (any Error).self) {
            try NodeConfiguration.fromEnvironment(keystone.merging(["HERALD_ZAQAR_INTERFACE": "private"]) { $1 })
        }
        do {
            _ = try NodeConfiguration.fromEnvironment(keystone.merging(["HERALD_ZAQAR_INTERFACE": "private"]) { $1 })
        } catch {
            #expect("\(error)".contains("HERALD_ZAQAR_INTERFACE"), "\(error)")
        }
        let given = try NodeConfiguration.fromEnvironment(
            keystone.merging(["HERALD_ZAQAR_URL": "http://zaqar:8888"]) { $1 })
        #expect(given.zaqarCatalog == nil && given.zaqarURL == "http://zaqar:8888")
        #expect(
            try NodeConfiguration.fromEnvironment(["HERALD_API_AUTH": "trusted-header"]).zaqarCatalog == nil,
            "no Keystone, no catalog")

        // Once found: the catalog's URL, allowed unless the operator listed the allowed ones.
        let resolved = try fromCatalog.resolvingZaqar("https://zaqar.example:8888")
        #expect(
            resolved.zaqarURL == "https://zaqar.example:8888"
                && resolved.zaqarAllowedURLs == ["https://zaqar.example:8888"] && resolved.zaqarCatalog == nil)
        let listed = try NodeConfiguration.fromEnvironment(
            keystone.merging(["HERALD_ZAQAR_ALLOWED_URLS": "https://other.example"]) { $1 })
        #expect(throws: (any Error).self, "the catalog's Zaqar outside the operator's list") {
            try listed.resolvingZaqar("https://zaqar.example:8888")
        }
    }
}
