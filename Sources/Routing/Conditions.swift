import HeraldModel
import Notifications

/// A JSON value with what comparisons need read from it once: a number (a JSON number, or a
/// string that reads as one) and an instant (a string that reads as an OpenStack timestamp).
/// An event's value is read as text first (`unparsed`): most conditions compare strings as
/// text, and only those that compare numbers or instants have it parsed (`parsed()`).
struct ComparableValue: Sendable {
    let value: JSONValue
    /// The value of a finite JSON number.
    let number: Double?
    /// A short string that reads as a finite number (`"512"`).
    let numericText: Double?
    /// A string that reads as a timestamp, in seconds since 1970.
    let instant: Double?
    /// A string whose number and instant were not read yet (nil until `parsed()`).
    let isUnparsedString: Bool

    init(_ value: JSONValue) {
        self.value = value
        isUnparsedString = false
        switch value {
        case .number(let number):
            self.number = number.isFinite ? number : nil
            numericText = nil
            instant = nil
        case .string(let text):
            number = nil
            numericText = Self.numeric(text)
            instant = Timestamps.parse(text)
        default:
            number = nil
            numericText = nil
            instant = nil
        }
    }

    /// `value` with a string's number and instant left unread until `parsed()`.
    init(unparsed value: JSONValue) {
        guard case .string = value else {
            self.init(value)
            return
        }
        self.init(value: value, number: nil, numericText: nil, instant: nil, isUnparsedString: true)
    }

    private init(value: JSONValue, number: Double?, numericText: Double?, instant: Double?, isUnparsedString: Bool) {
        self.value = value
        self.number = number
        self.numericText = numericText
        self.instant = instant
        self.isUnparsedString = isUnparsedString
    }

    /// This value with a string's number and instant read.
    func parsed() -> ComparableValue {
        isUnparsedString ? ComparableValue(value) : self
    }

    /// Whether comparing an event's value with this operand reads the event's number or instant
    /// (a number, or a string that reads as an instant); else the event's value compares as it is.
    var comparesParsed: Bool {
        switch value {
        case .number: return true
        case .string: return instant != nil
        default: return false
        }
    }

    /// Digits, sign, dot and exponent only, at most 64 bytes: never `nan`, `inf` or hex forms.
    private static func numeric(_ text: String) -> Double? {
        guard !text.isEmpty, text.utf8.count <= 64,
            text.utf8.allSatisfy({
                ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "-")
                    || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e")
                    || $0 == UInt8(ascii: "E")
            }),
            let value = Double(text), value.isFinite
        else { return nil }
        return value
    }

    /// -1, 0, 1, or nil when the two are not comparable: numbers as numbers, datetimes as
    /// instants (when both sides read as one), other strings as text.
    static func compare(_ a: ComparableValue, _ b: ComparableValue) -> Int? {
        func order(_ x: Double, _ y: Double) -> Int { x < y ? -1 : (x > y ? 1 : 0) }
        switch (a.value, b.value) {
        case (.number, .number):
            guard let x = a.number, let y = b.number else { return nil }
            return order(x, y)
        case (.string, .number):
            guard let x = a.numericText, let y = b.number else { return nil }
            return order(x, y)
        case (.number, .string):
            guard let x = a.number, let y = b.numericText else { return nil }
            return order(x, y)
        case (.string(let x), .string(let y)):
            if let dx = a.instant, let dy = b.instant { return order(dx, dy) }
            return x < y ? -1 : (x > y ? 1 : 0)
        case (.bool(let x), .bool(let y)):
            return x == y ? 0 : nil
        default:
            return nil
        }
    }

    static func equal(_ a: ComparableValue, _ b: ComparableValue) -> Bool {
        // Two strings that are not both instants: equal as text (what `compare` would say, at
        // the cost of one comparison instead of two).
        if case .string(let x) = a.value, case .string(let y) = b.value, a.instant == nil || b.instant == nil {
            return x == y
        }
        if let order = compare(a, b) { return order == 0 }
        return a.value == b.value
    }
}

/// One condition of a subscription, compiled when the index is built: its path split at the
/// dots and its operand parsed (numbers, timestamps, the items of an `in` list).
struct CompiledCondition: Sendable {
    enum Test: Sendable {
        case exists(Bool)
        case equal(ComparableValue)
        case notEqual(ComparableValue)
        case oneOf([ComparableValue])
        case prefix(String)
        case order(Condition.Operator, ComparableValue)
        /// An operand validation would have refused (a record written around the API).
        case never
    }

    let path: LookupPath
    let test: Test
    /// The test reads the event's number or instant (`ComparableValue.parsed`), not only its text.
    let readsParsed: Bool

    /// - Parameter paths: the lookup paths other conditions already use, by field, shared instead of
    ///   made again (so that one event looks each up once, `EventFields`); the new ones are added.
    init(_ condition: Condition, paths: inout [String: LookupPath]) {
        if let known = paths[condition.field] {
            path = known
        } else {
            path = LookupPath(condition.field.split(separator: ".").map(String.init))
            paths[condition.field] = path
        }
        switch (condition.op, condition.value) {
        case (.exists, .bool(let wanted)?): test = .exists(wanted)
        case (.exists, _): test = .exists(true)
        case (.eq, let value?): test = .equal(ComparableValue(value))
        case (.ne, let value?): test = .notEqual(ComparableValue(value))
        case (.in, .array(let items)?): test = .oneOf(items.map { ComparableValue($0) })
        case (.prefix, .string(let text)?): test = .prefix(text)
        case (.lt, let value?), (.le, let value?), (.gt, let value?), (.ge, let value?):
            test = .order(condition.op, ComparableValue(value))
        default: test = .never
        }
        switch test {
        case .equal(let operand), .notEqual(let operand): readsParsed = operand.comparesParsed
        case .oneOf(let operands): readsParsed = operands.contains(where: \.comparesParsed)
        case .order: readsParsed = true
        case .exists, .prefix, .never: readsParsed = false
        }
    }

    func holds(_ fields: inout EventFields) -> Bool {
        let actual = fields.value(at: path, parsed: readsParsed)
        switch test {
        case .never:
            return false
        case .exists(let wanted):
            let present: Bool
            if let actual, actual.value != .null { present = true } else { present = false }
            return present == wanted
        case .equal(let expected):
            guard let actual else { return false }
            return ComparableValue.equal(actual, expected)
        case .notEqual(let expected):
            guard let actual else { return true }
            return !ComparableValue.equal(actual, expected)
        case .oneOf(let options):
            guard let actual else { return false }
            return options.contains { ComparableValue.equal(actual, $0) }
        case .prefix(let prefix):
            guard case .string(let text)? = actual?.value else { return false }
            return text.hasPrefix(prefix)
        case .order(let op, let expected):
            guard let actual, let order = ComparableValue.compare(actual, expected) else { return false }
            switch op {
            case .lt: return order < 0
            case .le: return order <= 0
            case .gt: return order > 0
            default: return order >= 0
            }
        }
    }
}

/// One event's fields as conditions read them: each path looked up once per event, however
/// many conditions (of however many subscriptions) read it, and a string's number and instant
/// read only when a condition first needs them. Most events meet one or two paths: the first is
/// kept inline, a few more in a list compared by identity (routes share their paths), and past
/// those by pointer in a dictionary, so that no number of paths costs a scan.
struct EventFields {
    let event: NotificationEvent.Fields
    private var first: (path: LookupPath, value: ComparableValue?)?
    private var few: [(path: LookupPath, value: ComparableValue?)] = []
    private var many: [String: ComparableValue?] = [:]
    static let fewLimit = 8

    init(event: NotificationEvent) {
        self.event = event.fields
    }

    /// - Parameter parsed: the caller compares numbers or instants (a string's are read then, once).
    mutating func value(at path: LookupPath, parsed: Bool) -> ComparableValue? {
        guard let held = first else {
            let found = lookup(path, parsed: parsed)
            first = (path, found)
            return found
        }
        if held.path.same(as: path) {
            guard let upgraded = Self.upgraded(held.value, parsed: parsed) else { return held.value }
            first = (path, upgraded)
            return upgraded
        }
        if let index = few.firstIndex(where: { $0.path.same(as: path) }) {
            guard let upgraded = Self.upgraded(few[index].value, parsed: parsed) else { return few[index].value }
            few[index].value = upgraded
            return upgraded
        }
        if few.count < Self.fewLimit {
            let found = lookup(path, parsed: parsed)
            few.append((path, found))
            return found
        }
        if let cached = many[path.pointer] {
            guard let upgraded = Self.upgraded(cached, parsed: parsed) else { return cached }
            many[path.pointer] = .some(upgraded)
            return upgraded
        }
        let found = lookup(path, parsed: parsed)
        many[path.pointer] = .some(found)
        return found
    }

    /// What a held value becomes for a caller that needs it `parsed`: the string read as a number
    /// and instant, when it was not yet; nil when the held value serves as it is.
    private static func upgraded(_ held: ComparableValue?, parsed: Bool) -> ComparableValue? {
        guard parsed, let held, held.isUnparsedString else { return nil }
        return held.parsed()
    }

    private func lookup(_ path: LookupPath, parsed: Bool) -> ComparableValue? {
        event.value(at: path).map { parsed ? ComparableValue($0) : ComparableValue(unparsed: $0) }
    }
}

/// OpenStack timestamps: `2026-11-24 16:37:41.367798` (space, no zone: UTC) and ISO 8601 forms
/// (`T`, `Z` or `±HH:MM`), or a date alone. Parsed by hand: no formatter per call, no trap on
/// any input, nothing longer than 40 bytes looked at.
enum Timestamps {
    static func parse(_ text: String) -> Double? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 10, bytes.count <= 40 else { return nil }
        var position = 0
        func digits(_ count: Int) -> Int? {
            guard position + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[position..<(position + count)] {
                guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            position += count
            return value
        }
        func expect(_ byte: UInt8) -> Bool {
            guard position < bytes.count, bytes[position] == byte else { return false }
            position += 1
            return true
        }
        guard let year = digits(4), expect(UInt8(ascii: "-")), let month = digits(2), expect(UInt8(ascii: "-")),
            let day = digits(2),
            (1...12).contains(month), (1...Self.daysIn(month: month, year: year)).contains(day)
        else { return nil }
        var seconds = Double(Self.daysSince1970(year: year, month: month, day: day)) * 86_400
        if position == bytes.count { return seconds }
        guard expect(UInt8(ascii: "T")) || expect(UInt8(ascii: " ")),
            let hour = digits(2), expect(UInt8(ascii: ":")), let minute = digits(2), hour < 24, minute < 60
        else { return nil }
        seconds += Double(hour * 3600 + minute * 60)
        if expect(UInt8(ascii: ":")) {
            guard let second = digits(2), second <= 60 else { return nil }
            seconds += Double(second)
            if expect(UInt8(ascii: ".")) {
                var scale = 0.1
                var any = false
                while position < bytes.count, bytes[position] >= UInt8(ascii: "0"), bytes[position] <= UInt8(ascii: "9")
                {
                    seconds += Double(bytes[position] - UInt8(ascii: "0")) * scale
                    scale /= 10
                    position += 1
                    any = true
                }
                guard any else { return nil }
            }
        }
        if position == bytes.count { return seconds }
        if expect(UInt8(ascii: "Z")) { return position == bytes.count ? seconds : nil }
        let sign: Double
        if expect(UInt8(ascii: "+")) { sign = 1 } else if expect(UInt8(ascii: "-")) { sign = -1 } else { return nil }
        guard let offsetHours = digits(2), offsetHours < 24 else { return nil }
        _ = expect(UInt8(ascii: ":"))
        guard let offsetMinutes = digits(2), offsetMinutes < 60, position == bytes.count else { return nil }
        return seconds - sign * Double(offsetHours * 3600 + offsetMinutes * 60)
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a civil date (proleptic Gregorian; the years are 0 to 9999).
    private static func daysSince1970(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
