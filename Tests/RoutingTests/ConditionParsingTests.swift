import HeraldModel
import Testing

@testable import Routing

@Suite("Parsing what conditions compare")
struct ConditionParsingTests {
    @Test(
        "timestamps by hand",
        arguments: [
            ("2026-11-24 16:37:41.367798", 1_795_538_261.367798), ("2026-11-24T16:37:41Z", 1_795_538_261),
            ("2026-11-24T16:37:41+02:00", 1_795_531_061),
            ("2026-11-24T16:37:41.5-0130", 1_795_543_661.5), ("2026-02-28", 1_772_236_800),
            ("2024-02-29T00:00:00", 1_709_164_800), ("1969-12-31T23:59:59", -1),
        ] as [(String, Double)])
    func timestamps(text: String, epoch: Double) throws {
        let parsed = try #require(Timestamps.parse(text))
        #expect(abs(parsed - epoch) < 0.000_01, "\(text): \(parsed)")
    }

    @Test(
        "timestamps that are not",
        arguments: [
            "2026-13-01", "2026-02-30", "2026-11-24T25:00:00", "2026-11-24X16:37", "nan", "2026-11-24T16:37:41.",
            "2026-11-24T16:37:41+2", String(repeating: "2", count: 100),
        ])
    func notTimestamps(text: String) {
        #expect(Timestamps.parse(text) == nil, "\(text)")
    }

    @Test("conditions: a numeric text of nan or inf compares with nothing")
    func nanText() {
        let nan = ComparableValue(.string("nan"))
        #expect(ComparableValue.compare(nan, ComparableValue(.number(1))) == nil)
        #expect(!ComparableValue.equal(ComparableValue(.string("inf")), ComparableValue(.number(.infinity))))
        #expect(ComparableValue.compare(ComparableValue(.string("512")), ComparableValue(.number(100))) == 1)
    }
}
