import Foundation
import HeraldModel
import Testing

@testable import HTTPAPI
@testable import Identity
@testable import Pipeline

@Suite("Where a pre-signed URL stands (pure logic, a fixed clock)")
struct SignedURLStandingTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func subscription(expires: String?, trust: String? = nil) -> Subscription {
        let signed = expires.map {
            SignedURL(signature: "s", expires: $0, methods: ["POST"], paths: ["/v2/queues/q/messages"], project: "p")
        }
        return Subscription(
            project: "p", eventTypes: ["compute.*"], target: Target(queue: "q", signedURL: signed), trustID: trust)
    }

    /// Zaqar's form of `now + seconds`.
    func stamp(_ seconds: Double) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        return formatter.string(from: now.addingTimeInterval(seconds))
    }

    @Test("no URL, far, within the window with and without a trust, past, unreadable")
    func standings() {
        let window = Duration.seconds(3600)
        #expect(SignedURLStanding(subscription(expires: nil), now: now, renewBefore: window) == nil)
        #expect(
            SignedURLStanding(subscription(expires: stamp(7200)), now: now, renewBefore: window)
                == .fine(expires: now.addingTimeInterval(7200)))
        #expect(
            SignedURLStanding(subscription(expires: stamp(600), trust: "t"), now: now, renewBefore: window)
                == .renewable(expires: now.addingTimeInterval(600)))
        #expect(
            SignedURLStanding(subscription(expires: stamp(-600), trust: "t"), now: now, renewBefore: window)
                == .renewable(expires: now.addingTimeInterval(-600)))
        #expect(
            SignedURLStanding(subscription(expires: stamp(600)), now: now, renewBefore: window)
                == .expiring(expires: now.addingTimeInterval(600)))
        #expect(
            SignedURLStanding(subscription(expires: stamp(-1)), now: now, renewBefore: window)
                == .expired(expires: now.addingTimeInterval(-1)))
        #expect(
            SignedURLStanding(subscription(expires: "tomorrow"), now: now, renewBefore: window)
                == .unreadable("tomorrow"))
    }

    @Test("warnings name the expiry and what to do; none while all is well")
    func warnings() {
        let window = Duration.seconds(3600)
        #expect(
            SignedURLStanding(subscription(expires: stamp(7200)), now: now, renewBefore: window)?.warning(now: now)
                == nil)
        #expect(
            SignedURLStanding(subscription(expires: stamp(600), trust: "t"), now: now, renewBefore: window)?.warning(
                now: now) == nil)
        let expiring =
            SignedURLStanding(subscription(expires: stamp(600)), now: now, renewBefore: window)?.warning(now: now) ?? ""
        #expect(
            expiring.contains("in 10 min") && expiring.contains("no Keystone trust")
                && expiring.contains("signed_url_expired"), "\(expiring)")
        let expired =
            SignedURLStanding(subscription(expires: stamp(-60)), now: now, renewBefore: window)?.warning(now: now) ?? ""
        #expect(expired.contains("expired at") && expired.contains("dead-lettered"), "\(expired)")
        #expect(SignedURLStanding.span(45) == "45 s")
        #expect(SignedURLStanding.span(5 * 3600 + 20 * 60) == "5 h 20 min")
    }
}
