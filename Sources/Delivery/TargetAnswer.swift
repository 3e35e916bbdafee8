import Foundation
import HeraldModel
import Synchronization

/// How Herald reads what a Zaqar target answered. Every target is hostile until proven
/// otherwise: its headers and body are read defensively, and only a status and a short,
/// sanitised reason are ever kept (never the raw body: a target that is really some other
/// service inside the control plane must not be able to echo its answers back to a tenant).
public enum TargetAnswer {
    /// The longest reason kept from an answer.
    public static let maxReasonCharacters = 200
    /// The most bytes of an answer's body read; the rest is discarded unread.
    public static let maxBodyBytes = 16 << 10

    /// `Retry-After` (RFC 9110: delay-seconds, or an HTTP date) as a delay, or nil when it is
    /// absent or unusable (not a plain non-negative number, not finite, a date that does not
    /// parse): the caller then uses its own backoff. Delays above `cap` are cut to `cap`, so no
    /// answer can park a lane for a day (`86400`) or forever (`1e300`, `inf`).
    public static func retryAfter(_ header: String?, now: Date, cap: Duration) -> Duration? {
        guard let header else { return nil }
        let text = header.trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty, text.utf8.count <= 64 else { return nil }
        let seconds: Double
        if text.utf8.allSatisfy({ ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: ".") }) {
            // Digits only (and a dot, which some servers send): no sign, exponent, "inf" or "nan".
            guard text.utf8.filter({ $0 == UInt8(ascii: ".") }).count <= 1, let value = Double(text), value.isFinite
            else { return nil }
            seconds = value
        } else if let date = httpDate(text) {
            seconds = max(0, date.timeIntervalSince(now))
        } else {
            return nil
        }
        let capSeconds = cap.seconds
        guard seconds.isFinite, seconds >= 0 else { return nil }
        if seconds >= capSeconds { return cap }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 asks senders to use.
    static func httpDate(_ text: String) -> Date? {
        formatter.withLock { $0.date(from: text) }
    }

    private static let formatter = Mutex<DateFormatter>(
        {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
            return formatter
        }())

    /// The reason kept from an error answer: Zaqar's `{"title", "description"}` when the body
    /// is that, else only what kind of body it was ("a text/html body of 5123 bytes"). Control
    /// characters are replaced and the text is cut to `maxReasonCharacters`.
    public static func reason(body: [UInt8], contentType: String?, truncated: Bool) -> String? {
        guard !body.isEmpty else { return nil }
        if !truncated, let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] {
            let title = (object["title"] as? String).map(sanitise)
            let description = (object["description"] as? String).map(sanitise)
            let text: String?
            switch (title, description) {
            case (let title?, let description?): text = "\(title): \(description)"
            case (nil, let description?): text = description
            case (let title?, nil): text = title
            default: text = nil
            }
            if let text, !text.isEmpty { return cut(text) }
        }
        let kind = contentType.map { sanitise(String($0.prefix(60))) } ?? "untyped"
        return "a \(kind) body of \(truncated ? "more than \(body.count)" : "\(body.count)") bytes (not kept)"
    }

    /// Printable text only: control characters (terminal escapes, new lines) become `?`.
    public static func sanitise(_ text: String) -> String {
        SafeText.clean(text, limit: maxReasonCharacters * 2)
    }

    /// `text` cut to `maxReasonCharacters`, with an ellipsis when something was cut.
    public static func cut(_ text: String) -> String {
        text.count <= maxReasonCharacters ? text : String(text.prefix(maxReasonCharacters - 1)) + "…"
    }
}
