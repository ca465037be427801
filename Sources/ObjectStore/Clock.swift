import Foundation

/// Where the store and the lifecycle get the time, so tests can move it (spec section 5.8).
public protocol StoreClock: Sendable {
    /// Milliseconds since the Unix epoch.
    func nowMillis() -> UInt64
}

public struct SystemClock: StoreClock {
    public init() {}
    public func nowMillis() -> UInt64 { UInt64(max(0, Date().timeIntervalSince1970 * 1000)) }
}

/// A clock that only moves when told to.
public final class ManualClock: StoreClock, @unchecked Sendable {
    private let lock = NSLock()
    private var millis: UInt64

    public init(millis: UInt64 = 1_767_225_600_000) { self.millis = millis } // 2026-01-01T00:00:00Z

    public func nowMillis() -> UInt64 { lock.lock(); defer { lock.unlock() }; return millis }

    public func advance(days: Double) { advance(millis: UInt64(days * 86_400_000)) }

    public func advance(millis delta: UInt64) { lock.lock(); millis += delta; lock.unlock() }
}

public enum Millis {
    public static let day: UInt64 = 86_400_000
}
