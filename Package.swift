// swift-tools-version:6.0
import PackageDescription

/// One set of settings for every Swift target: Swift 6 language mode with
/// strict concurrency (the default of tools 6.0), plus upcoming features we
/// want early.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Herald",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "herald", targets: ["ClusterNode"]),
        .executable(name: "herald-bench", targets: ["HeraldBench"]),
        .library(name: "Coordination", targets: ["Coordination"]),
        .library(name: "Messaging", targets: ["Messaging"]),
        .library(name: "Delivery", targets: ["Delivery"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        // Tests only: a WebSocket client for Zaqar's push (WSClient).
        .package(url: "https://github.com/hummingbird-project/swift-websocket.git", from: "1.6.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // TLS for hiredis 0.14 (Debian 12's has none): OpenSSL moves the bytes, hiredis
        // formats commands and parses replies.
        .target(
            name: "CRedisTLS",
            dependencies: ["CHiredis"],
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .target(
            name: "CRabbitMQ",
            linkerSettings: [.linkedLibrary("rabbitmq")]
        ),
        // Plain C loops over rabbitmq-c, used only as benchmark baselines.
        .target(
            name: "CBaseline",
            dependencies: ["CRabbitMQ"]
        ),
        // libcurl's multi interface, Zaqar's transport (Debian's libcurl4-openssl-dev; its
        // setters are variadic, hence the shim).
        .target(
            name: "CCurl",
            linkerSettings: [.linkedLibrary("curl")]
        ),
        // The notification decoder's fast path: simdjson's On-Demand API behind a small C API.
        .target(
            name: "CNotificationScan",
            linkerSettings: [.linkedLibrary("simdjson")]
        ),
        // Plain value types shared by the modules: subscriptions and their validation.
        // Starting and reaping child processes (the tests' and the benchmarks' one way).
        .target(
            name: "ChildProcesses",
            swiftSettings: swiftSettings
        ),
        // The Zaqar-like HTTP server the tests and the benchmarks share: real HTTP, scripted answers.
        .target(
            name: "ZaqarSink",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "HeraldModel",
            swiftSettings: swiftSettings
        ),
        // Notifications, read: the oslo envelopes and Ceilometer's event lists (NotificationDecoder,
        // over simdjson's NotificationScanner), the event (NotificationEvent), who it belongs to
        // (EventDefinitions, read from YAML) and what tenants may see of it (RedactionRules).
        .target(
            name: "Notifications",
            dependencies: [
                "CNotificationScan",
                "HeraldModel",
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        // Matching: which subscriptions an event goes to (SubscriptionIndex, Conditions).
        .target(
            name: "Routing",
            dependencies: ["HeraldModel", "Notifications", "Delivery"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Coordination",
            dependencies: [
                "CHiredis",
                "CRedisTLS",
                "HeraldModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Messaging",
            dependencies: [
                "CRabbitMQ",
                "HeraldModel",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Delivery",
            dependencies: [
                "HeraldModel",
                "CCurl",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Keystone (tokens, trusts, the catalog, application credentials' access rules), the
        // policy file's rules, and the keeper of pre-signed Zaqar URLs.
        .target(
            name: "Identity",
            dependencies: [
                "Coordination",
                "Delivery",
                "HeraldModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The HTTP API (Hummingbird): subscriptions, dead letters, event types, health, OpenAPI.
        .target(
            name: "HTTPAPI",
            dependencies: [
                "Identity",
                "Coordination",
                "Notifications",
                "Delivery",
                "HeraldModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The node: its configuration, ingest, partition owners, topology, parking in RabbitMQ,
        // and the assembly of all of it with the API into one ServiceGroup (buildNode).
        .target(
            name: "Pipeline",
            dependencies: [
                "HTTPAPI",
                "Identity",
                "Coordination",
                "Notifications",
                "Routing",
                "Messaging",
                "Delivery",
                "HeraldModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The herald executable: argument parsing, logging and metrics bootstrap, the commands.
        .executableTarget(
            name: "ClusterNode",
            dependencies: [
                "Pipeline",
                "HTTPAPI",
                "Identity",
                "Coordination",
                "Notifications",
                "Messaging",
                "Delivery",
                "HeraldModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "HeraldBench",
            dependencies: [
                "ChildProcesses",
                "ZaqarSink",
                "Coordination",
                "Notifications",
                "Routing",
                "Messaging",
                "Delivery",
                "HeraldModel",
                "Pipeline",
                "CBaseline",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // Finds the real servers scripts/test started; shared by every test target.
        .target(
            name: "TestSupport",
            dependencies: [
                "ChildProcesses",
                "ZaqarSink",
                "HeraldModel",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            path: "Tests/TestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CoordinationTests",
            dependencies: ["Coordination", "HeraldModel", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MessagingTests",
            dependencies: ["Messaging", "HeraldModel", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "NotificationsTests",
            dependencies: ["Notifications", "HeraldModel"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RoutingTests",
            dependencies: ["Routing", "Notifications", "Delivery", "HeraldModel"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PipelineTests",
            dependencies: [
                "Pipeline", "Coordination", "Messaging", "Notifications", "HeraldModel", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "WSClient", package: "swift-websocket"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ClusterNodeTests",
            dependencies: [
                "ClusterNode", "Pipeline", "HTTPAPI", "Identity", "Coordination", "Delivery", "HeraldModel", "Messaging",
                "Notifications", "Routing", "TestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HeraldBenchTests",
            dependencies: ["HeraldBench", "ChildProcesses", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DeliveryTests",
            dependencies: [
                "Delivery", "Coordination", "HeraldModel", "TestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ],
    cxxLanguageStandard: .cxx17
)
