import ArgumentParser
import Coordination
import Foundation
import HeraldModel

/// `herald subscriptions`: manage subscriptions straight in the registry (operators, the demo).
struct Subscriptions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create, list and delete subscriptions directly in the Redis registry.",
        subcommands: [Create.self, List.self, Delete.self]
    )

    struct RegistryOptions: ParsableArguments {
        @Option(help: "Redis URL. Env: HERALD_REDIS_URL.")
        var redisURL: String = ProcessInfo.processInfo.environment["HERALD_REDIS_URL"] ?? "redis://127.0.0.1:6379/0"
        @Option(help: "Redis key prefix. Env: HERALD_KEY_PREFIX.")
        var keyPrefix: String =
            ProcessInfo.processInfo.environment["HERALD_KEY_PREFIX"].flatMap { $0.isEmpty ? nil : $0 } ?? "herald:"

        func registry() throws -> SubscriptionRegistry {
            do {
                return SubscriptionRegistry(redis: try RedisConfiguration(url: redisURL), keyPrefix: keyPrefix)
            } catch {
                throw ValidationError("--redis-url (HERALD_REDIS_URL): \(error)")
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a subscription and print it as JSON.")
        @OptionGroup var options: RegistryOptions
        @Option(help: "The owning project.") var project: String
        @Option(
            name: .customLong("event-type"),
            help: "An event type pattern (glob; a leading ! excludes). Repeat for more.") var eventTypes: [String]
        @Option(help: "The Zaqar queue to deliver into.") var queue: String
        @Option(help: "Message TTL in seconds (60 to 1209600).") var ttl: Int = 3600
        @Option(
            help:
                "A condition as JSON, e.g. '{\"field\":\"payload.state\",\"op\":\"eq\",\"value\":\"active\"}'. Repeat for more."
        )
        var condition: [String] = []
        @Flag(help: "Receive every project's events (admin).") var allProjects = false

        func run() async throws {
            let conditions = try condition.map { text in
                do { return try JSONDecoder().decode(Condition.self, from: Data(text.utf8)) } catch {
                    throw ValidationError("--condition '\(text)' is not a condition: \(error)")
                }
            }
            let subscription = Subscription(
                project: project, allProjects: allProjects, eventTypes: eventTypes, conditions: conditions,
                target: Target(queue: queue), messageTTL: ttl)
            do {
                try await options.registry().create(subscription)
            } catch let error as SubscriptionValidationError {
                throw ValidationError("\(error)")
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(subscription), as: UTF8.self))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a project's subscriptions, one JSON object per line.")
        @OptionGroup var options: RegistryOptions
        @Option(help: "The project.") var project: String

        func run() async throws {
            let registry = try options.registry()
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            // Output ends up in tickets and chats: a pre-signed URL's signature posts into the queue.
            if let key = SignedURL.withoutSignature { encoder.userInfo[key] = true }
            var marker: String?
            repeat {
                let page = try await registry.list(project: project, limit: 1000, marker: marker)
                for subscription in page.subscriptions {
                    print(String(decoding: try encoder.encode(subscription), as: UTF8.self))
                }
                marker = page.next
            } while marker != nil
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a subscription of a project.")
        @OptionGroup var options: RegistryOptions
        @Option(help: "The project.") var project: String
        @Argument(help: "The subscription id.") var id: String

        func run() async throws {
            guard try await options.registry().delete(id: id, project: project) else {
                throw ValidationError("project '\(project)' has no subscription '\(id)'")
            }
        }
    }
}
