import Foundation
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

@Suite("Configuration keys: declared once, documented once")
struct ConfigurationKeysTests {
    /// Every `HERALD_*` key named in the first column of the README's configuration table
    /// (a row may name two: "`A` / `B`").
    static func readmeKeys() throws -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        var keys = Set<String>()
        for line in readme.split(separator: "\n") where line.hasPrefix("| `HERALD_") {
            let cells = line.split(separator: "|", omittingEmptySubsequences: false)
            guard cells.count > 1 else { continue }
            for piece in cells[1].split(separator: "`") where piece.hasPrefix("HERALD_") {
                keys.insert(String(piece))
            }
        }
        return keys
    }

    @Test(
        "a HERALD_ environment variable that is no setting is named (a misspelt key); Kubernetes' service links, HERALD_CONFIG_FILE and the tests' variables are not"
    )
    func unknownEnvironmentKeys() {
        let environment = [
            "HERALD_KEYSTONE_CACHE_SECOND": "30", "HERALD_REDIS_URL": "redis://x", "HERALD_CONFIG_FILE": "/etc/h.yaml",
            "HERALD_TEST_REDIS_URL": "redis://y", "HERALD_SERVICE_HOST": "10.0.0.9", "HERALD_SERVICE_PORT": "8090",
            "HERALD_SERVICE_PORT_HTTP": "8090", "HERALD_PORT": "tcp://10.0.0.9:8090",
            "HERALD_PORT_8090_TCP": "tcp://10.0.0.9:8090", "HERALD_PORT_8090_TCP_ADDR": "10.0.0.9",
            "HERALD_PROD_HERALD_PORT_8090_TCP_PROTO": "tcp", "HERALD_API_PORT_8090": "1",
            "HERALD_APY_PORT": "8090", "PATH": "/bin",
        ]
        #expect(
            NodeConfiguration.unknownEnvironmentKeys(environment) == [
                "HERALD_API_PORT_8090", "HERALD_APY_PORT", "HERALD_KEYSTONE_CACHE_SECOND",
            ])
        let many = Dictionary(uniqueKeysWithValues: (0..<100).map { ("HERALD_X\($0)", "1") })
        #expect(NodeConfiguration.unknownEnvironmentKeys(many).count == 20, "bounded")
    }

    @Test("settings that contradict each other stop start-up naming the key")
    func contradictions() throws {
        func refusal(_ settings: [String: String]) -> String? {
            do {
                _ = try NodeConfiguration.fromEnvironment(
                    settings.merging(["HERALD_API_AUTH": "trusted-header"]) { a, _ in a })
                return nil
            } catch let error as ConfigurationError {
                return error.key
            } catch {
                return "\(error)"
            }
        }
        #expect(
            refusal(["HERALD_DEAD_LETTERS_MAX": "500", "HERALD_DEAD_LETTERS_PROJECT_MAX": "600"])
                == "HERALD_DEAD_LETTERS_PROJECT_MAX")
        #expect(refusal(["HERALD_DEAD_LETTERS_MAX": "600", "HERALD_DEAD_LETTERS_PROJECT_MAX": "600"]) == nil)
        #expect(refusal(["HERALD_DEAD_LETTERS_MAX": "500"]) == nil, "unset, the project bound follows the cluster's")
        let lowered = try NodeConfiguration.fromEnvironment([
            "HERALD_DEAD_LETTERS_MAX": "500", "HERALD_API_AUTH": "trusted-header",
        ])
        #expect(lowered.deadLetterBudget.projectMax == 500)
        #expect(refusal(["HERALD_API_PORT": "8090", "HERALD_METRICS_PORT": "8090"]) == "HERALD_METRICS_PORT")
        #expect(refusal(["HERALD_API_PORT": "8090", "HERALD_METRICS_PORT": "9102"]) == nil)
        // The event-type catalog's bounds in Redis: taken, and out of range refused by name.
        let catalog = try NodeConfiguration.fromEnvironment([
            "HERALD_API_AUTH": "trusted-header", "HERALD_EVENT_TYPES_PER_PROJECT": "50",
            "HERALD_EVENT_TYPE_SAMPLE_BYTES": "0", "HERALD_EVENT_TYPE_DAYS": "7",
        ])
        #expect(
            [catalog.eventTypesPerProject, catalog.eventTypeSampleBytes, catalog.eventTypeDays] == [50, 0, 7] as [Int])
        let defaults = try NodeConfiguration.fromEnvironment(["HERALD_API_AUTH": "trusted-header"])
        #expect(
            [defaults.eventTypesPerProject, defaults.eventTypeSampleBytes, defaults.eventTypeDays] == [200, 8192, 30] as [Int])
        #expect(refusal(["HERALD_EVENT_TYPE_SAMPLE_BYTES": "-1"]) == "HERALD_EVENT_TYPE_SAMPLE_BYTES")
        #expect(refusal(["HERALD_EVENT_TYPES_PER_PROJECT": "0"]) == "HERALD_EVENT_TYPES_PER_PROJECT")
        #expect(refusal(["HERALD_EVENT_TYPE_DAYS": "366"]) == "HERALD_EVENT_TYPE_DAYS")
    }

    @Test("the README's table documents exactly the keys a configuration file or --set may name")
    func readmeMatchesDeclaration() throws {
        let documented = try Self.readmeKeys()
        #expect(documented.count > 50, "the table was read (\(documented.count) keys)")
        #expect(
            NodeConfiguration.keys.subtracting(documented).isEmpty,
            "declared but not in the README's table: \(NodeConfiguration.keys.subtracting(documented).sorted())")
        #expect(
            documented.subtracting(NodeConfiguration.keys).isEmpty,
            "in the README's table but not declared: \(documented.subtracting(NodeConfiguration.keys).sorted())")
    }

    @Test("HERALD_ZAQAR_CONNECTIONS: 8 by default, 1 to 1024; anything else stops start-up naming the key")
    func zaqarConnections() throws {
        let base = ["HERALD_API_AUTH": "trusted-header"]
        #expect(try NodeConfiguration.fromEnvironment(base).zaqarConnections == 8)
        let more = try NodeConfiguration.fromEnvironment(base.merging(["HERALD_ZAQAR_CONNECTIONS": "64"]) { $1 })
        #expect(more.zaqarConnections == 64)
        for bad in ["0", "1025", "-3", "lots", "1e3", "9223372036854775808"] {
            do {
                _ = try NodeConfiguration.fromEnvironment(base.merging(["HERALD_ZAQAR_CONNECTIONS": bad]) { $1 })
                Issue.record("HERALD_ZAQAR_CONNECTIONS=\(bad) was taken")
            } catch {
                #expect("\(error)".contains("HERALD_ZAQAR_CONNECTIONS"), "\(error)")
            }
        }
    }

    @Test("HERALD_TRUSTED_PROXIES: addresses and CIDR ranges; a bad entry stops start-up naming the key and the entry")
    func trustedProxies() throws {
        let base = ["HERALD_API_AUTH": "trusted-header"]
        _ = try NodeConfiguration.fromEnvironment(
            base.merging(["HERALD_TRUSTED_PROXIES": "10.42.0.0/16, fd00:10::/64,192.0.2.7"]) { $1 })
        for bad in ["10.42.0.0/33", "ingress.local", "10.0.0.1,fd00::/200"] {
            do {
                _ = try NodeConfiguration.fromEnvironment(base.merging(["HERALD_TRUSTED_PROXIES": bad]) { $1 })
                Issue.record("HERALD_TRUSTED_PROXIES=\(bad) was taken")
            } catch {
                #expect("\(error)".contains("HERALD_TRUSTED_PROXIES") && "\(error)".contains("CIDR"), "\(error)")
            }
        }
    }

    @Test("every HERALD_* key the node reads is declared")
    func everyReadKeyDeclared() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/Pipeline/NodeConfiguration.swift")
        let text = try String(contentsOf: sources, encoding: .utf8)
        // Quoted keys in the file that parses them (not the bare prefix); HERALD_CONFIG_FILE names
        // the file itself.
        var read = Set<String>()
        for piece in text.split(separator: "\"")
        where piece.hasPrefix("HERALD_") && !piece.hasSuffix("_")
            && piece.allSatisfy({
                $0.isUppercase || $0 == "_" || $0.isNumber
            })
        {
            read.insert(String(piece))
        }
        read.remove("HERALD_CONFIG_FILE")
        #expect(read.count > 50)
        #expect(
            read.subtracting(NodeConfiguration.keys).isEmpty,
            "read but not declared: \(read.subtracting(NodeConfiguration.keys).sorted())")
    }
}
