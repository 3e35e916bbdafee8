import Foundation

/// Text that came from outside (a tenant, a service on the bus, a target's answer) made safe
/// to print: control and format characters (terminal escape sequences, new lines that would
/// forge a log line, bidirectional overrides) become `?`, and long text is cut.
public enum SafeText {
    /// `text` with every control or format character replaced by `?`, cut to `limit` characters.
    public static func clean(_ text: String, limit: Int = 200) -> String {
        var out = String.UnicodeScalarView()
        var count = 0
        for scalar in text.unicodeScalars {
            if count == limit {
                out.append("…")
                break
            }
            let category = scalar.properties.generalCategory
            out.append(
                category == .control || category == .format || category == .lineSeparator
                    || category == .paragraphSeparator ? "?" : scalar)
            count += 1
        }
        return String(out)
    }

    /// `clean(text)` in single quotes, for a message that names a value.
    public static func quoted(_ text: String, limit: Int = 120) -> String {
        "'" + clean(text, limit: limit) + "'"
    }

    /// `text` with the passwords of the URLs in it replaced by `***`: a user-info's
    /// (`scheme://user:secret@host`, and `,user:secret@host2` of a multi-host URL) and the values
    /// of `password=` and `sentinel_password=` options. For error messages that quote a setting.
    public static func hidingPasswords(_ text: String) -> String {
        var text = text
        if let userInfo = try? NSRegularExpression(pattern: "((?:://|,)[^:/@\\s,]*):[^@\\s,]*@") {
            text = userInfo.stringByReplacingMatches(
                in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "$1:***@")
        }
        if let option = try? NSRegularExpression(pattern: "([?&](?:sentinel_)?password=)[^&\\s'\"]*") {
            text = option.stringByReplacingMatches(
                in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "$1***")
        }
        return text
    }
}
