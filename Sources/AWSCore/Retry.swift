import Foundation

/// The time source of a client (the retry loop and the signer read it; tests set it).
public protocol AWSClock: Sendable {
    func now() -> Date
}

public struct SystemClock: AWSClock {
    public init() {}
    public func now() -> Date { Date() }
}

/// How a client waits between attempts (tests record instead of sleeping).
public protocol AWSSleeper: Sendable {
    func sleep(seconds: Double)
}

public struct ThreadSleeper: AWSSleeper {
    public init() {}
    public func sleep(seconds: Double) { if seconds > 0 { Thread.sleep(forTimeInterval: seconds) } }
}

/// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and
/// Jitter"): before attempt n+1 (n ≥ 1) wait uniform(0, min(cap, base·2^(n-1))). Only
/// retryable errors (`AWSError.isRetryable`) are retried, at most `maximumAttempts` attempts in
/// all; a clock-skew error is retried at once with the corrected clock. A refused certificate, a
/// failed TLS handshake and a proxy that refused CONNECT are transport errors that are never
/// retried (`AWSError.finalTransportCodes`).
public struct RetryPolicy: Sendable {
    public var maximumAttempts: Int
    public var baseDelay: Double
    public var maximumDelay: Double
    /// Returns a number in [0, 1); injectable so tests are deterministic.
    public var random: @Sendable () -> Double

    public init(maximumAttempts: Int = 8, baseDelay: Double = 0.1, maximumDelay: Double = 20,
                random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }) {
        self.maximumAttempts = max(1, maximumAttempts)
        self.baseDelay = baseDelay
        self.maximumDelay = maximumDelay
        self.random = random
    }

    public static let `default` = RetryPolicy()
    public static let none = RetryPolicy(maximumAttempts: 1)

    /// The ceiling of the wait after failed attempt `attempt` (1-based).
    public func ceiling(afterAttempt attempt: Int) -> Double {
        let exp = baseDelay * pow(2, Double(min(max(attempt - 1, 0), 30)))
        return min(maximumDelay, exp)
    }

    /// The wait after failed attempt `attempt`: full jitter under the ceiling.
    public func delay(afterAttempt attempt: Int) -> Double {
        ceiling(afterAttempt: attempt) * min(max(random(), 0), 1)
    }
}
