import Foundation
import Logging
import Synchronization
import TestSupport
import WSClient

/// A client of Zaqar's WebSocket transport, as a user's program would be: requests as JSON
/// frames (`action`, `headers`, `body`), answers matched by action, pushed messages kept apart.
final class ZaqarSocket: Sendable {
    /// What came down the socket, as text: answers to requests, and pushed messages.
    final class Frames: Sendable {
        let answers = Mutex<[String]>([])
        let pushed = Mutex<[String]>([])
        /// Why the connection ended, once it has: a request left unanswered names it.
        let ended = Mutex<String?>(nil)
    }

    private let outgoing: AsyncStream<String>.Continuation
    private let frames = Frames()
    private let connection: Task<Void, any Error>
    let clientID = UUID().uuidString.lowercased()

    init(url: String) {
        let (toSend, outgoing) = AsyncStream.makeStream(of: String.self)
        self.outgoing = outgoing
        let frames = frames
        connection = Task {
            defer { frames.ended.withLock { $0 = $0 ?? "the connection closed" } }
            do {
                try await Self.connect(url: url, toSend: toSend, frames: frames)
            } catch {
                frames.ended.withLock { $0 = "the connection failed: \(error)" }
                throw error
            }
        }
    }

    private static func connect(url: String, toSend: AsyncStream<String>, frames: Frames) async throws {
        _ = try await WebSocketClient.connect(url: url, logger: Logger(label: "herald.test.websocket")) {
            inbound, outbound, _ in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await text in toSend { try await outbound.write(.text(text)) }
                }
                for try await message in inbound.messages(maxSize: 1 << 20) {
                    guard case .text(let text) = message, let object = Self.object(text) else { continue }
                    if object["Message_Type"] != nil {
                        frames.pushed.withLock { $0.append(text) }
                    } else {
                        frames.answers.withLock { $0.append(text) }
                    }
                }
                group.cancelAll()
            }
        }
    }

    static func object(_ text: String) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
    }

    /// Sends a request and waits (up to 30 s) for Zaqar's answer to it: its status. Zaqar's socket
    /// server asks Keystone for an `authenticate` on its one event loop, and the Keystone of the tests
    /// takes its writes in turn (a login among them) while suites run side by side: 10 s was seen
    /// to pass on a starved CI machine.
    func request(_ action: String, headers: [String: String], body: [String: Any]? = nil) async throws -> Int {
        var frame: [String: Any] = [
            "action": action, "headers": headers.merging(["Client-ID": clientID]) { first, _ in first },
        ]
        if let body { frame["body"] = body }
        let before = frames.answers.withLock { $0.count }
        outgoing.yield(String(decoding: try JSONSerialization.data(withJSONObject: frame), as: UTF8.self))
        let frames = frames
        return try await eventually(timeout: .seconds(30)) {
            let answer = frames.answers.withLock { Array($0.dropFirst(before)) }.compactMap(Self.object).first {
                ($0["request"] as? [String: Any])?["action"] as? String == action
            }
            guard let answer else {
                let ended = frames.ended.withLock { $0 }
                throw TestFailure("no answer to \(action) yet" + (ended.map { " (\($0))" } ?? ""))
            }
            return ((answer["headers"] as? [String: Any])?["status"] as? Int) ?? 0
        }
    }

    /// The messages pushed so far, parsed.
    var pushed: [[String: Any]] {
        frames.pushed.withLock { $0 }.compactMap(Self.object)
    }

    func close() {
        outgoing.finish()
        connection.cancel()
    }
}
