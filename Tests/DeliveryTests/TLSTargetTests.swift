import Delivery
import Foundation
import TestSupport
import Testing

/// Zaqar endpoints over HTTPS, served here by a small Python TLS server with the local CA's
/// certificate for localhost (`scripts/servers` makes the CA).
@Suite("HTTPS targets: certificates checked against the system's CAs or HERALD_ZAQAR_CA_FILE", .timeLimit(.minutes(2)))
struct TLSTargetTests {
    static let server = """
        import http.server, ssl, sys
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()
            def log_message(self, *args):
                pass
        server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = context.wrap_socket(server.socket, server_side=True)
        print("ready", flush=True)
        server.serve_forever()
        """

    @Test("the CA file's certificate is accepted; the system's CAs and another CA refuse it")
    func caFile() async throws {
        let ca = try TestServers.value("HERALD_TEST_CA_FILE")
        let other = try TestServers.value("HERALD_TEST_OTHER_CA_FILE")
        let directory = URL(fileURLWithPath: ca).deletingLastPathComponent()
        let port = try TestServers.freePort()
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("tls-target-\(port).py").path
        try Self.server.write(toFile: script, atomically: true, encoding: .utf8)
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("tls-target-\(port).log").path
        let process = try ChildProcess(
            name: "tls-target",
            argv: [
                "/usr/bin/python3", script, "\(port)", directory.appendingPathComponent("server.pem").path,
                directory.appendingPathComponent("server.key").path,
            ], environment: [:], log: log)
        // SIGKILL: the server script outlives SIGTERM (it left a process behind after every run).
        defer { process.send(SIGKILL) }
        try await eventually(timeout: .seconds(20)) {
            guard ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("ready") else {
                throw TestFailure("the TLS server is not up: \(process.tail())")
            }
        }
        let target = ZaqarTarget(baseURL: "https://localhost:\(port)", project: "p", queue: "q")
        let message = Array(#"{"ttl":60,"body":{}}"#.utf8)

        let trusting = ZaqarClient(caFile: ca)
        #expect(try await trusting.post(target, messages: [message]).status == 201)
        await trusting.shutdown()
        for client in [ZaqarClient(), ZaqarClient(caFile: other)] {
            do {
                let answer = try await client.post(target, messages: [message])
                Issue.record("posted through an unchecked certificate: \(answer.status)")
            } catch {
                #expect(
                    "\(error)".lowercased().contains("certificate") || "\(error)".contains("handshake")
                        || "\(error)".contains("NIOSSL"), "\(error)")
            }
            await client.shutdown()
        }
    }
}
