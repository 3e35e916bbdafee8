/// Runs `body` with `resource`, then awaits `close(resource)` whether `body` returned or threw:
/// the `defer` that async cleanup cannot have (`defer { Task { await x.close() } }` leaves the
/// close to a task nobody awaits, so the caller may go on, or the process end, before it ran).
public func withClosing<Resource: Sendable, Result>(
    _ resource: Resource, close: (Resource) async -> Void, isolation: isolated (any Actor)? = #isolation,
    _ body: (Resource) async throws -> Result
) async throws -> Result {
    let result: Result
    do {
        result = try await body(resource)
    } catch {
        await close(resource)
        throw error
    }
    await close(resource)
    return result
}
