import Foundation

/// A one-line progress bar with rate and ETA on stderr, drawn only when stderr is a terminal
/// (scripts and pipes see nothing). Redraws at most ten times a second.
final class ProgressBar: @unchecked Sendable {
    private let label: String
    private let total: Int64?
    private let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var done: Int64 = 0
    private let lock = NSLock()

    init(_ label: String, total: Int64?, enabled: Bool = Terminal.stderrIsTTY) {
        self.label = label
        self.total = total
        self.enabled = enabled
    }

    /// Reports absolute progress in bytes.
    func update(_ bytes: Int64) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        done = bytes
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        draw(now)
    }

    func finish() {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        draw(Date())
        Err.raw("\n")
    }

    private func draw(_ now: Date) {
        let elapsed = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        var line = "\r\(label) \(Self.bytes(done))"
        if let total, total > 0 {
            let frac = min(1, Double(done) / Double(total))
            let width = 24
            let filled = Int(frac * Double(width))
            line += " / \(Self.bytes(total)) [" + String(repeating: "#", count: filled)
                + String(repeating: ".", count: width - filled) + "] \(Int(frac * 100))%"
            if rate > 0 { line += " ETA \(Self.duration(Double(total - done) / rate))" }
        }
        line += " \(Self.bytes(Int64(rate)))/s"
        Err.raw(line + "\u{1b}[K")
    }

    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), i = 0
        while v >= 1024, i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
    }

    static func duration(_ s: Double) -> String {
        guard s.isFinite else { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
    }
}
