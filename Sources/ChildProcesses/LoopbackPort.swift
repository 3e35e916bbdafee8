import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A TCP port on 127.0.0.1 for a server this process is about to start (a node's API, a test's
/// script), the one way the tests and `herald-bench` choose one.
///
/// Not the kernel's pick for port 0: that comes from the range the kernel also gives outgoing
/// connections (`net.ipv4.ip_local_port_range`), so between closing the probe and the server's
/// `bind` any connection this busy machine opens can take it. Ports here come from below that
/// range, are free when handed out, and are never handed out twice by one process.
public enum LoopbackPort {
    private static let handedOut = Mutex(Set<Int>())

    /// Where picks come from: 10000 up to the start of the kernel's range for outgoing connections
    /// (32768 unless configured otherwise), at least 2,000 ports.
    static func candidates(localRange: String?) -> Range<Int> {
        let start = localRange?.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
        let upper = min(max(start, 12_000), 65_536)
        return 10_000..<upper
    }

    /// - Throws: when no port of the range binds after many tries.
    public static func pick() throws -> Int {
        let range = candidates(
            localRange: try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let port = Int.random(in: range, using: &generator)
            let fresh = handedOut.withLock { $0.insert(port).inserted }
            guard fresh else { continue }
            if binds(port) { return port }
        }
        throw PortUnavailable(range: range)
    }

    /// No free port was found.
    public struct PortUnavailable: Error, CustomStringConvertible {
        public let range: Range<Int>
        public var description: String {
            "no free port on 127.0.0.1 in \(range.lowerBound)..<\(range.upperBound) after 200 tries"
        }
    }

    /// Whether a listening socket can take `port` now.
    static func binds(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(truncatingIfNeeded: port).bigEndian
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 }
        }
    }
}
