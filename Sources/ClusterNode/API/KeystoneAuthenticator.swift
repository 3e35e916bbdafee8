import HTTPTypes
import Hummingbird

/// `HERALD_API_AUTH=keystone`: the caller is whoever Keystone says `X-Auth-Token` belongs to.
struct KeystoneAuthenticator: RouterMiddleware {
    typealias Context = APIContext
    let keystone: KeystoneClient

    func handle(_ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response) async throws -> Response {
        guard let token = request.headers[.authToken], !token.isEmpty else {
            throw HTTPError(.unauthorized, message: "missing X-Auth-Token header: send a Keystone token scoped to your project")
        }
        var context = context
        do {
            context.caller = try await keystone.caller(token: token)
        } catch .invalid(let reason) {
            throw HTTPError(.unauthorized, message: "X-Auth-Token: \(reason)")
        } catch .unavailable(let reason) {
            throw HTTPError(.serviceUnavailable, message: "cannot validate the token now: \(reason)")
        }
        return try await next(request, context)
    }
}

extension HTTPField.Name {
    static let authToken = Self("X-Auth-Token")!
}
