import Foundation
import HTTPTypes
import HeraldModel
import Hummingbird
import NIOCore

/// JSON in and out of the API, with errors that name the field.
package enum APIJSON {
    static let maxBody = 1 << 20

    /// A JSON response, keys sorted so documents compare and read the same every time.
    static func response(
        _ value: some Encodable, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]
    ) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // A pre-signed URL's signature is write access to its queue: never in an answer.
        if let key = SignedURL.withoutSignature { encoder.userInfo[key] = true }
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(
            status: status, headers: headers,
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }

    /// A JSON object body, checked against the keys the route knows: an unknown key is a 400
    /// naming it (a misspelt `event_type` must not be dropped silently).
    static func object(_ request: Request, allowed: Set<String>) async throws -> (data: Data, keys: Set<String>) {
        guard let object = try await optionalObject(request, allowed: allowed) else {
            throw HTTPError(.badRequest, message: "the body is empty; send a JSON object")
        }
        return object
    }

    /// `object`, or nil for an empty body (however it was sent: with a length of 0, chunked, or
    /// with no length at all), for routes where the body is optional.
    static func optionalObject(
        _ request: Request, allowed: Set<String>
    ) async throws -> (
        data: Data, keys: Set<String>
    )? {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maxBody)
        } catch {
            throw HTTPError(.contentTooLarge, message: "the body is larger than \(maxBody) bytes")
        }
        let data = Data(buffer: buffer)
        guard !data.isEmpty else { return nil }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw HTTPError(.badRequest, message: "the body is not valid JSON")
        }
        guard let object = parsed as? [String: Any] else {
            throw HTTPError(.badRequest, message: "the body must be a JSON object")
        }
        let keys = Set(object.keys)
        if let unknown = keys.subtracting(allowed).sorted().first {
            throw HTTPError(
                .badRequest,
                message:
                    "\(SafeText.clean(unknown, limit: 64)): unknown field; known fields are \(allowed.sorted().joined(separator: ", "))"
            )
        }
        return (data, keys)
    }

    /// Decodes `data`, turning a decoding error into a 400 naming the field.
    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch let error as DecodingError {
            // The decoder's words can hold the bad value itself: cleaned and cut.
            throw HTTPError(.badRequest, message: SafeText.clean(describe(error), limit: 300))
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [any CodingKey], _ last: (any CodingKey)? = nil) -> String {
            var text = ""
            for key in codingPath + (last.map { [$0] } ?? []) {
                if let index = key.intValue {
                    text += "[\(index)]"
                } else {
                    text += (text.isEmpty ? "" : ".") + key.stringValue
                }
            }
            return text.isEmpty ? "body" : text
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context.codingPath, key)): required"
        case .typeMismatch(let type, let context):
            return "\(path(context.codingPath)): must be \(typeName(type))"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)): must be \(typeName(type)), not null"
        case .dataCorrupted(let context):
            return "\(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return "the body could not be read: \(error)"
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type, is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is [Any].Type: return "an array"
        default:
            let name = "\(type)"
            return name.hasPrefix("Array") ? "an array" : name.hasPrefix("Dictionary") ? "an object" : "a \(name)"
        }
    }
}

/// The error body every 4xx and 5xx carries: `{"error": {"message": "..."}}` (Hummingbird's shape).
package struct APIErrorBody: Codable {
    struct Detail: Codable {
        var message: String
    }

    var error: Detail
}
