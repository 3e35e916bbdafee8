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
}
