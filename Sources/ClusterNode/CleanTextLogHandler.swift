import HeraldModel
import Logging

/// The text log format's guard (HERALD_LOG_FORMAT=text): every message and metadata value is
/// passed through `SafeText.clean` before the stream handler writes it, so a value from outside
/// (a project id from a header, a target's reason, a notification's field) cannot carry a new
/// line that forges a log line, or a terminal escape sequence. The JSON format escapes by itself.
struct CleanTextLogHandler: LogHandler {
    private var inner: any LogHandler
    /// Long enough for any line Herald writes; a value beyond it is cut.
    static let limit = 4_000

    init(_ inner: any LogHandler) {
        self.inner = inner
    }

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue.mapValues(Self.clean) }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue.map(Self.clean) }
    }

    func log(event: LogEvent) {
        var event = event
        event.message = "\(SafeText.clean("\(event.message)", limit: Self.limit))"
        event.metadata = event.metadata?.mapValues(Self.clean)
        inner.log(event: event)
    }

    static func clean(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        .string(SafeText.clean("\(value)", limit: limit))
    }
}
