import HTTPTypes
import HeraldModel
import Hummingbird
import Identity

/// `HERALD_API_AUTH=keystone`: the caller is whoever Keystone says `X-Auth-Token` belongs to.
package struct KeystoneAuthenticator: RouterMiddleware {
    package typealias Context = APIContext
    let keystone: KeystoneClient

    package init(keystone: KeystoneClient) {
        self.keystone = keystone
    }

    package func handle(
        _ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response
    ) async throws -> Response {
        guard let token = request.headers[.authToken], !token.isEmpty else {
            throw HTTPError(
                .unauthorized, message: "missing X-Auth-Token header: send a Keystone token scoped to your project")
        }
        var context = context
        var caller: Caller
        if Self.forwardedByUntrusted(request, peer: context.source, trusted: keystone.configuration.trustedProxies) {
            keystone.warnOfUntrustedForwarder(context.source)
        }
        do {
            caller = try await keystone.caller(
                token: token,
                source: Self.client(request, peer: context.source, trusted: keystone.configuration.trustedProxies))
        } catch .invalid(let reason) {
            throw HTTPError(.unauthorized, message: "X-Auth-Token: \(reason)")
        } catch .unavailable(let reason) {
            throw HTTPError(.serviceUnavailable, message: "cannot validate the token now: \(reason)")
        } catch .throttled(let wait) {
            let seconds = max(1, Int(wait.seconds.rounded(.up)))
            var headers = HTTPFields()
            headers[.retryAfter] = "\(seconds)"
            throw HTTPError(
                .tooManyRequests, headers: headers,
                message:
                    "X-Auth-Token: this address sent more unknown tokens than Keystone is asked to check (HERALD_KEYSTONE_VALIDATIONS_PER_SECOND); try again in \(seconds) s"
            )
        }
        let path = request.uri.path
        if let rules = caller.accessRules {
            let method = request.method.rawValue
            let serviceType = keystone.configuration.serviceType
            guard AccessRule.allow(rules, method: method, path: path, serviceType: serviceType) else {
                throw HTTPError(
                    .forbidden,
                    message:
                        "X-Auth-Token: the application credential's access rules do not allow \(method) \(SafeText.clean(path, limit: 200)) on service type \(serviceType)"
                )
            }
        }
        if caller.systemScope != nil {
            // A system-scoped token belongs to no project: the request names the one it acts on.
            if let named = request.uri.queryParameters.get("project_id"), !named.isEmpty {
                guard named.utf8.count <= 64,
                    named.utf8.allSatisfy({
                        $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || (0x30...0x39).contains($0)
                            || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0)
                    })
                else {
                    throw HTTPError(
                        .badRequest, message: "project_id: must be a project id (letters, digits, - and _, at most 64)")
                }
                caller.project = named
            } else if path != "/v1/policy" {
                throw HTTPError(
                    .badRequest,
                    message:
                        "project_id: a system-scoped token belongs to no project; name the project this request acts on with ?project_id="
                )
            }
        }
        context.caller = caller
        return try await next(request, context)
    }
}

extension KeystoneAuthenticator {
    /// The request carries `X-Forwarded-For` from a peer that is not a trusted proxy: the header
    /// is ignored, which behind an ingress left out of `HERALD_TRUSTED_PROXIES` makes every
    /// client one source for the limit on unknown tokens.
    static func forwardedByUntrusted(_ request: Request, peer: String, trusted: AddressRanges) -> Bool {
        request.headers[.forwardedFor] != nil && !trusted.contains(peer)
    }

    /// The client's address: the peer, or behind trusted proxies the last `X-Forwarded-For`
    /// address that is not one of them (what the proxies themselves saw).
    static func client(_ request: Request, peer: String, trusted: AddressRanges) -> String {
        guard trusted.contains(peer) else { return peer }
        let hops = request.headers[values: .forwardedFor].joined(separator: ",").split(separator: ",").suffix(32)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        return hops.reversed().first { !trusted.contains($0) && !$0.isEmpty }.map { String($0.prefix(64)) } ?? peer
    }
}

extension HTTPField.Name {
    package static let authToken = Self("X-Auth-Token")!
    package static let forwardedFor = Self("X-Forwarded-For")!
}
