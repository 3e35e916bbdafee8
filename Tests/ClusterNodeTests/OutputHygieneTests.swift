import Foundation
import Logging
import Synchronization
import Testing

@testable import ClusterNode
@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

@Suite("Output hygiene: no passwords, no forged lines")
struct OutputHygieneTests {
    @Test("configuration errors never print a password: URLs (each host of a multi-host one) and *_PASSWORD values")
    func redaction() throws {
        let amqp = ConfigurationError(
            key: "HERALD_AMQP_URL", value: "amqp://herald:s3cret@h1:5672,herald:0ther@h2:5672/vhost", expected: "bad")
        #expect(!amqp.description.contains("s3cret") && !amqp.description.contains("0ther"), "\(amqp)")
        #expect(amqp.description.contains("herald:***@h1:5672"))
        let set = ConfigurationError(
            key: "--set", value: "HERALD_REDIS_URL=redis://:pw123@redis:6379/0", expected: "KEY=VALUE")
        #expect(!set.description.contains("pw123"), "\(set)")
        let password = ConfigurationError(key: "HERALD_KEYSTONE_PASSWORD", value: "hunter2", expected: "x")
        #expect(!password.description.contains("hunter2"))
        // Through the real reader: a bad Redis URL with a password.
        do {
            _ = try NodeConfiguration.fromEnvironment([
                "HERALD_REDIS_URL": "redis://:topsecret@host:notaport/0", "HERALD_API_AUTH": "trusted-header",
            ])
            Issue.record("a bad URL was accepted")
        } catch {
            #expect(!"\(error)".contains("topsecret"), "\(error)")
            #expect("\(error)".contains("HERALD_REDIS_URL"))
        }
        // A Sentinel URL's password, and CA files that cannot be read.
        for (key, value) in [
            ("HERALD_REDIS_URL", "redis+sentinel://:topsecret@s1:notaport/m"),
            ("HERALD_REDIS_URL", "rediss+sentinel://s1/m?sentinel_password=topsecret&cacertfile=/nonexistent/ca.pem"),
            ("HERALD_REDIS_URL", "unix:///run/redis.sock?password=topsecret&db=x"),
            ("HERALD_ZAQAR_CA_FILE", "/nonexistent/ca.pem"), ("HERALD_KEYSTONE_CA_FILE", "/nonexistent/ca.pem"),
        ] {
            do {
                _ = try NodeConfiguration.fromEnvironment([key: value, "HERALD_API_AUTH": "trusted-header"])
                Issue.record("\(key)=\(value) was accepted")
            } catch {
                #expect(!"\(error)".contains("topsecret") && "\(error)".contains(key), "\(error)")
            }
        }
    }

    @Test("the text log handler cleans messages and metadata: no new line or escape from outside reaches a line")
    func textLogs() {
        final class Lines: Sendable {
            let lines = Mutex<[String]>([])
        }
        let captured = Lines()
        struct Capture: LogHandler {
            let captured: Lines
            var logLevel: Logger.Level = .trace
            var metadata: Logger.Metadata = [:]
            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }
            func log(event: LogEvent) {
                let fields = (metadata.merging(event.metadata ?? [:]) { $1 }).map { "\($0.key)=\($0.value)" }.sorted()
                captured.lines.withLock { $0.append("\(event.message) \(fields.joined(separator: " "))") }
            }
        }
        var handler = CleanTextLogHandler(Capture(captured: captured))
        handler[metadataKey: "node"] = "n1\n2026-12-04 forged line"
        let logger = Logger(label: "t") { _ in handler }
        logger.warning("bad \u{1b}[2Jqueue\nforged: yes", metadata: ["zaqar.target": "p\r\nq\u{202e}"])
        let lines = captured.lines.withLock { $0 }
        #expect(lines.count == 1)
        let line = lines.first ?? ""
        #expect(!line.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x202e }, "\(line.debugDescription)")
        #expect(line.contains("forged: yes"), "the text stays, only the control characters go")
    }
}
