import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import TestSupport
import Testing

extension PipelineSuites {
    /// A `herald node` in keystone mode posting into the Keystone-protected Zaqar of
    /// `scripts/servers`, with users, projects and trusts in the real Keystone.
    @Suite("Keystone: trusts and pre-signed URLs into a Keystone-protected Zaqar", .serialized, .timeLimit(.minutes(5)))
    struct IdentityTests {
        func call(
            _ run: PipelineRun, _ method: HTTPMethod, _ path: String, token: String, json: [String: Any]? = nil
        ) async throws -> (Int, [String: Any]) {
            let port = try #require(run.nodes["node-1"]?.apiPort)
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
            request.method = method
            request.headers.add(name: "X-Auth-Token", value: token)
            if let json {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
            }
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            let body = try await response.body.collect(upTo: 4 << 20)
            let object =
                (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [
                    "text": String(buffer: body)
                ]
            return (Int(response.status.code), object)
        }

        /// `signed_url` for the subscription body, from Zaqar's answer.
        func signedURL(
            _ reader: ZaqarReader, queue: String, project: String, expires: Date
        ) async throws -> [String: Any] {
            let signed = try await reader.share(queue: queue, project: project, expires: expires)
            return [
                "signature": signed.signature, "expires": signed.expires, "methods": signed.methods,
                "paths": signed.paths, "project": signed.project,
            ]
        }

        /// Answers 201 to everything and appends each request line and headers to the log.
        static let recorder = """
            import http.server, sys
            class Handler(http.server.BaseHTTPRequestHandler):
                def record(self):
                    if self.path != "/probe":
                        with open(sys.argv[2], "a") as log:
                            log.write(self.requestline + "\\n" + str(self.headers) + "\\n")
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self.send_response(201)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                do_GET = do_POST = do_PUT = record
                def log_message(self, *args):
                    pass
            http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
            """

        @Test(
            "a user authenticates to Zaqar's WebSocket with their Keystone token, subscribes to their queue and is pushed what Herald delivers through their trust; a bad token, or another project's queue, gets nothing"
        )
        func pushedBehindKeystone() async throws {
            let keystone = try await KeystoneFixture.make()
            let zaqarURL = try TestServers.value("HERALD_TEST_KEYSTONE_ZAQAR_URL")
            let socketURL = try TestServers.value("HERALD_TEST_KEYSTONE_ZAQAR_WS_URL")
            try await PipelineRun.with(partitions: 4) { run in
                try await run.startNodes(
                    1,
                    extra: [
                        "HERALD_API_AUTH": "keystone", "HERALD_ZAQAR_URL": zaqarURL,
                        "HERALD_KEYSTONE_URL": keystone.url + "/v3", "HERALD_KEYSTONE_USERNAME": keystone.serviceUser,
                        "HERALD_KEYSTONE_PASSWORD": keystone.servicePassword,
                        "HERALD_KEYSTONE_PROJECT": keystone.serviceProject,
                    ])
                try await run.waitAllPartitionsHeld()
                let project = try #require(keystone.projects["a"])
                let token = try await keystone.userToken("a")
                let queue = run.queue("pushed")
                let (created, body) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: ["event_types": ["compute.instance.*"], "target": ["queue": queue]])
                #expect(created == 201, "\(body)")
                run.trackQueues([(project, queue)])

                // A bad token: refused by Zaqar's socket.
                let stranger = ZaqarSocket(url: socketURL)
                defer { stranger.close() }
                let refused = try await stranger.request(
                    "authenticate", headers: ["X-Auth-Token": "not-a-token", "X-Project-ID": project])
                #expect(refused == 401 || refused == 403, "\(refused)")
                #expect(
                    try await stranger.request(
                        "subscription_create", headers: ["X-Project-ID": project],
                        body: ["queue_name": queue, "ttl": 600])
                        == 403)

                // The user: authenticated, subscribed to their queue; asking for another project's queue is refused.
                let socket = ZaqarSocket(url: socketURL)
                defer { socket.close() }
                #expect(
                    try await socket.request("authenticate", headers: ["X-Auth-Token": token, "X-Project-ID": project])
                        == 200)
                let other = try #require(keystone.projects["b"] ?? keystone.projects.values.first { $0 != project })
                #expect(
                    try await socket.request(
                        "subscription_create", headers: ["X-Project-ID": other],
                        body: ["queue_name": queue, "ttl": 600])
                        == 403)
                #expect(
                    try await socket.request(
                        "subscription_create", headers: ["X-Project-ID": project],
                        body: ["queue_name": queue, "ttl": 600])
                        == 201)

                try await Task.sleep(for: .seconds(1))
                let publisher = try run.publish(
                    (0..<10).map { seq in
                        [
                            "exchange": "nova", "event_type": "compute.instance.update", "project": project,
                            "payload": ["tenant_id": project, "instance_id": "i-\(seq % 3)", "seq": seq],
                        ]
                    })
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                let seqs = try await eventually(timeout: .seconds(60)) {
                    let seqs = Set(
                        socket.pushed.compactMap {
                            (($0["body"] as? [String: Any])?["event"] as? [String: Any]).flatMap {
                                ($0["payload"] as? [String: Any])?["seq"] as? Int
                            }
                        })
                    guard seqs.count >= 10 else { throw TestFailure("\(seqs.count) of 10 pushed") }
                    return seqs
                }
                #expect(seqs == Set(0..<10))
                #expect(stranger.pushed.isEmpty, "nothing for a socket that never authenticated")
            }
        }

        @Test(
            "HERALD_ZAQAR_URL unset: a node in keystone mode takes Zaqar from Keystone's catalog (messaging, public), and a catalog without it stops start-up naming the setting"
        )
        func zaqarFromCatalog() async throws {
            let keystone = try await KeystoneFixture.make()
            let zaqarURL = try TestServers.value("HERALD_TEST_KEYSTONE_ZAQAR_URL")
            try await PipelineRun.with(partitions: 4) { run in
                let settings = [
                    "HERALD_API_AUTH": "keystone", "HERALD_ZAQAR_URL": "", "HERALD_LOG_LEVEL": "info",
                    "HERALD_KEYSTONE_URL": keystone.url + "/v3", "HERALD_KEYSTONE_USERNAME": keystone.serviceUser,
                    "HERALD_KEYSTONE_PASSWORD": keystone.servicePassword,
                    "HERALD_KEYSTONE_PROJECT": keystone.serviceProject,
                ]
                try await run.startNodes(1, extra: settings)
                try await run.waitAllPartitionsHeld()
                let log = try #require(run.nodes["node-1"]?.log)
                let line = try await eventually(timeout: .seconds(20)) {
                    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                    guard
                        let line = text.split(separator: "\n").first(where: {
                            $0.contains("Zaqar from the Keystone catalog")
                        })
                    else { throw TestFailure("not logged yet") }
                    return String(line)
                }
                #expect(
                    line.contains("zaqar.url=\(zaqarURL)"),
                    "the catalog's messaging endpoint (scripts/keystone-setup.py registers the Keystone-protected Zaqar): \(line)"
                )

                // A service type the catalog does not have: the node stops, naming what to set.
                try await run.startNodes(
                    1, extra: settings.merging(["HERALD_ZAQAR_SERVICE_TYPE": "no-such-service"]) { $1 })
                let failed = try #require(run.nodes["node-2"])
                let status = try await #require(failed.process).wait()
                failed.exitStatus = status
                #expect(status != 0)
                let output = (try? String(contentsOfFile: failed.log, encoding: .utf8)) ?? ""
                #expect(
                    output.contains("HERALD_ZAQAR_URL") && output.contains("service type no-such-service"),
                    "\(output.suffix(600))")
            }
        }

        @Test(
            "a user's subscriptions deliver through a trust and through pre-signed URLs; renewal, expiry warnings, dead letters, trust deletion"
        )
        func trustsAndSignedURLs() async throws {
            let keystone = try await KeystoneFixture.make()
            let zaqarURL = try TestServers.value("HERALD_TEST_KEYSTONE_ZAQAR_URL")
            try await PipelineRun.with(partitions: 8) { run in
                // A server that records every request it gets: where a second member would point the
                // trustor's subscription to capture the trustor's token. Allowed as an endpoint, so
                // only the trust rule stands between them.
                let recorderPort = try TestServers.freePort()
                let recorderLog = "\(run.directory)/recorder.log"
                let recorderScript = "\(run.directory)/recorder.py"
                try Self.recorder.write(toFile: recorderScript, atomically: true, encoding: .utf8)
                let recorder = try ChildProcess(
                    name: "recorder", argv: ["/usr/bin/python3", recorderScript, "\(recorderPort)", recorderLog],
                    environment: [:], log: "\(run.directory)/recorder.out")
                // SIGKILL: the script outlives SIGTERM (as TLSTargetTests' server does), and was left
                // running after every run.
                defer { recorder.send(SIGKILL) }
                let settings = [
                    "HERALD_ZAQAR_ALLOWED_URLS": "\(zaqarURL),http://127.0.0.1:\(recorderPort)",
                    "HERALD_API_AUTH": "keystone", "HERALD_ZAQAR_URL": zaqarURL,
                    "HERALD_KEYSTONE_URL": keystone.url + "/v3", "HERALD_KEYSTONE_USERNAME": keystone.serviceUser,
                    "HERALD_KEYSTONE_PASSWORD": keystone.servicePassword,
                    "HERALD_KEYSTONE_PROJECT": keystone.serviceProject,
                    "HERALD_SIGNED_URL_RENEW_SECONDS": "600", "HERALD_SIGNED_URL_LIFETIME_SECONDS": "7200",
                    "HERALD_SIGNED_URL_CHECK_SECONDS": "1",
                ]
                try await run.startNodes(1, extra: settings)
                try await run.waitAllPartitionsHeld()
                let project = try #require(keystone.projects["a"])
                let token = try await keystone.userToken("a")
                let user = ZaqarReader(baseURL: zaqarURL, token: token)
                // The project's dead letters of one subscription, once there are at least `count`.
                func letters(of subscription: String, atLeast count: Int) async throws -> [[String: Any]] {
                    try await eventually(timeout: .seconds(30)) {
                        let (_, page) = try await call(run, .GET, "/v1/dead-letters", token: token)
                        let letters = (page["dead_letters"] as? [[String: Any]] ?? []).filter {
                            $0["subscription_id"] as? String == subscription
                        }
                        guard letters.count >= count else {
                            throw TestFailure("\(letters.count) of \(count) dead letters")
                        }
                        return letters
                    }
                }

                // The Zaqar behind Keystone refuses a request without a token, whatever X-Project-ID says.
                #expect(
                    try await ZaqarReader(baseURL: zaqarURL).request("/v2/queues/nothing/messages", project: project).0
                        == 401)

                // 1. Through a trust (the default in keystone mode).
                let trustQueue = run.queue("trust")
                let (created, trusted) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: ["event_types": ["compute.instance.*"], "target": ["queue": trustQueue]])
                #expect(created == 201, "\(trusted)")
                let trustID = try #require(trusted["trust_id"] as? String)
                let trustSubscription = try #require(trusted["id"] as? String)
                // Another member of the project cannot point it at their server: 403 naming target,
                // nothing stored, and (below, after events flowed) nothing reached that server.
                let secondMember = try await keystone.user("member2", role: "member", on: "a")
                let (moved, movedBody) = try await call(
                    run, .PATCH, "/v1/subscriptions/\(trustSubscription)", token: secondMember.token,
                    json: [
                        "target": ["queue": trustQueue, "zaqar_url": "http://127.0.0.1:\(recorderPort)"]
                    ])
                #expect(moved == 403, "\(movedBody)")
                #expect((movedBody["message"] as? String ?? "\(movedBody)").contains("target"), "\(movedBody)")

                // 2. Through a pre-signed URL the user made, good for an hour, no trust.
                let signedQueue = run.queue("signed")
                let (signedCreated, signed) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: [
                        "event_types": ["compute.instance.*"],
                        "target": [
                            "queue": signedQueue,
                            "signed_url": try await signedURL(
                                user, queue: signedQueue, project: project, expires: Date().addingTimeInterval(3600)),
                        ],
                    ])
                #expect(signedCreated == 201, "\(signed)")
                #expect(
                    signed["trust_id"] == nil, "a subscriber who brings a pre-signed URL gets no trust unless asked")
                #expect(signed["warnings"] == nil, "an hour away is outside the 600 s window: \(signed)")

                // 3. A pre-signed URL 2 minutes from expiry, with a trust: renewed through the trust.
                let renewQueue = run.queue("renew")
                let shortExpiry = Date().addingTimeInterval(120)
                let (renewCreated, renewing) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: [
                        "event_types": ["compute.instance.*"], "trust": true,
                        "target": [
                            "queue": renewQueue,
                            "signed_url": try await signedURL(
                                user, queue: renewQueue, project: project, expires: shortExpiry),
                        ],
                    ])
                #expect(renewCreated == 201, "\(renewing)")
                let renewID = try #require(renewing["id"] as? String)
                let firstExpiry = try #require(
                    (renewing["target"] as? [String: Any]).flatMap { $0["signed_url"] as? [String: Any] }?["expires"]
                        as? String)
                let renewed = try await eventually(timeout: .seconds(30)) {
                    let (_, now) = try await call(run, .GET, "/v1/subscriptions/\(renewID)", token: token)
                    let expires =
                        (now["target"] as? [String: Any]).flatMap { $0["signed_url"] as? [String: Any] }?["expires"]
                        as? String ?? ""
                    guard expires != firstExpiry else { throw TestFailure("still \(expires)") }
                    return expires
                }
                #expect(renewed > firstExpiry, "renewed to \(renewed), was \(firstExpiry)")

                // 4. A pre-signed URL 25 s from expiry, no trust: a warning in the API and in herald status.
                let doomedQueue = run.queue("doomed")
                let (doomedCreated, doomed) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: [
                        "event_types": ["compute.instance.*"],
                        "target": [
                            "queue": doomedQueue,
                            "signed_url": try await signedURL(
                                user, queue: doomedQueue, project: project, expires: Date().addingTimeInterval(25)),
                        ],
                    ])
                #expect(doomedCreated == 201, "\(doomed)")
                let doomedID = try #require(doomed["id"] as? String)
                let warnings = doomed["warnings"] as? [String] ?? []
                #expect(warnings.count == 1 && warnings[0].contains("no Keystone trust"), "\(warnings)")
                var environment = try run.environment
                environment["HERALD_SIGNED_URL_RENEW_SECONDS"] = "600"
                let binary = try TestServers.value("HERALD_TEST_BIN_DIR") + "/herald"
                let status = try ChildProcess(
                    name: "status", argv: [binary, "status", "--json"], environment: environment,
                    log: "\(run.directory)/status.json")
                #expect(await status.wait() == 0, "\(status.tail())")
                let report =
                    (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: status.log ?? ""))))
                    as? [String: Any] ?? [:]
                let rows = report["signed_urls"] as? [[String: Any]] ?? []
                #expect(
                    rows.contains { $0["subscription"] as? String == doomedID && $0["state"] as? String == "expiring" },
                    "\(rows)")
                #expect(
                    (report["problems"] as? [String] ?? []).contains { $0.contains(doomedID) },
                    "\(report["problems"] ?? "")")
                #expect(report["signed_url_count"] as? Int == 3)

                // Events after the doomed URL expired: delivered through the trust and the good URLs,
                // dead-lettered with signed_url_expired for the doomed one.
                try await Task.sleep(until: .now + .seconds(28), clock: .continuous)
                let lines: [[String: Any]] = (0..<6).map { seq in
                    [
                        "exchange": "nova", "driver": "messagingv2", "event_type": "compute.instance.create.end",
                        "project": project, "payload": ["seq": seq],
                    ]
                }
                let publisher = try run.publish(lines)
                #expect(await publisher.wait() == 0, "\(publisher.tail())")
                for queue in [trustQueue, signedQueue, renewQueue] {
                    let bodies = try await eventually(timeout: .seconds(30)) {
                        let bodies = try await user.bodies(queue: queue, project: project)
                        guard bodies.count >= 6 else { throw TestFailure("\(bodies.count) of 6 in \(queue)") }
                        return bodies
                    }
                    #expect(bodies.count == 6, "\(queue): every event once, in the user's own project")
                }
                let expired = try await letters(of: doomedID, atLeast: 6)
                #expect(
                    expired.allSatisfy { $0["reason"] as? String == "signed_url_expired" },
                    "\(expired.map { $0["reason"] ?? "" })")
                #expect(try await user.bodies(queue: doomedQueue, project: project).isEmpty)
                let recorded = (try? String(contentsOfFile: recorderLog, encoding: .utf8)) ?? ""
                #expect(recorded.isEmpty, "the second member's server got requests: \(recorded.prefix(300))")
                #expect(
                    try await ZaqarReader(baseURL: "http://127.0.0.1:\(recorderPort)").request(
                        "/probe", project: project
                    ).0
                        == 201, "the recorder was listening")

                // A trust deleted in Keystone behind Herald's back: the events are dead-lettered as
                // unauthorized (Zaqar refuses the cached token, Keystone refuses a new one), not lost.
                let revokedQueue = run.queue("revoked")
                let (revokedCreated, revoked) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: ["event_types": ["compute.instance.delete.*"], "target": ["queue": revokedQueue]])
                #expect(revokedCreated == 201, "\(revoked)")
                let revokedID = try #require(revoked["id"] as? String)
                let revokedTrust = try #require(revoked["trust_id"] as? String)
                let (deletedTrust, _, _) = try await KeystoneFixture.request(
                    keystone.url + "/v3/OS-TRUST/trusts/\(revokedTrust)", .DELETE,
                    token: try await keystone.adminToken())
                #expect(deletedTrust == 204)
                try await Task.sleep(for: .seconds(2))  // the node's index picks the subscription up
                let deletes = try run.publish(
                    (0..<2).map { seq in
                        [
                            "exchange": "nova", "driver": "messagingv2", "event_type": "compute.instance.delete.end",
                            "project": project, "payload": ["seq": seq],
                        ]
                    })
                #expect(await deletes.wait() == 0, "\(deletes.tail())")
                let refused = try await letters(of: revokedID, atLeast: 2)
                #expect(refused.allSatisfy { $0["reason"] as? String == "unauthorized" }, "\(refused)")
                // Its subscription deletes cleanly although the trust is already gone.
                #expect(try await call(run, .DELETE, "/v1/subscriptions/\(revokedID)", token: token).0 == 204)

                // Without trust or pre-signed URL ("trust": false): Zaqar refuses the requests, which
                // carry no credentials, so no retry can pass. Dead-lettered at once naming why, not
                // parked for the retry horizon (where a tenant could fill the broker with them).
                let bareQueue = run.queue("bare")
                let (bareCreated, bare) = try await call(
                    run, .POST, "/v1/subscriptions", token: token,
                    json: [
                        "event_types": ["compute.instance.shutdown.*"], "target": ["queue": bareQueue], "trust": false,
                    ])
                #expect(bareCreated == 201, "\(bare)")
                let bareID = try #require(bare["id"] as? String)
                try await Task.sleep(for: .seconds(2))
                let shutdowns = try run.publish(
                    (0..<2).map { seq in
                        [
                            "exchange": "nova", "event_type": "compute.instance.shutdown.end", "project": project,
                            "payload": ["seq": seq],
                        ]
                    })
                #expect(await shutdowns.wait() == 0, "\(shutdowns.tail())")
                let bareLetters = try await letters(of: bareID, atLeast: 2)
                #expect(
                    bareLetters.allSatisfy {
                        $0["reason"] as? String == "unauthorized"
                            && ($0["detail"] as? String)?.contains("no trust and no pre-signed URL") == true
                    }, "\(bareLetters)")
                let (_, bareHealth) = try await call(run, .GET, "/v1/subscriptions/\(bareID)/delivery", token: token)
                #expect(bareHealth["state"] as? String != "parked", "\(bareHealth)")
                #expect(try await call(run, .DELETE, "/v1/subscriptions/\(bareID)", token: token).0 == 204)

                // Deleting subscriptions deletes their trusts.
                #expect(
                    try await keystone.trusts(of: "a").sorted()
                        == [trustID, renewing["trust_id"] as? String ?? "?"].sorted())
                #expect(try await call(run, .DELETE, "/v1/subscriptions/\(trustSubscription)", token: token).0 == 204)
                #expect(try await call(run, .DELETE, "/v1/subscriptions/\(renewID)", token: token).0 == 204)
                #expect(try await keystone.trusts(of: "a").isEmpty)
            }
        }
    }
}
