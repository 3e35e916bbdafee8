import ArgumentParser
import Pipeline

/// The `herald` executable. Kept thin: argument parsing here, the work in the subcommands' files.
@main
struct Herald: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "herald",
        abstract: "Pushes OpenStack notifications into the Zaqar queues of their subscribers.",
        discussion: """
            Herald nodes share a subscription registry in Redis, split event types into
            partitions that each node owns through leases, consume their partitions from
            RabbitMQ and post matching events into Zaqar. Every option can also be set
            through the environment variable named in its help.
            """,
        version: HeraldNode.version,
        subcommands: [Node.self, Status.self, Subscriptions.self, Check.self]
    )
}
