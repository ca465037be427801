import Durability
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive `flock(2)` on a file, held until `release()` or the process ends (the kernel
/// drops it when the process dies, so a killed run never leaves the lock behind). The holder's
/// pid is written into the file for the message another process prints.
public final class ScheduleLock {
    public let path: String
    private let lock: HolderLock

    private init(_ lock: HolderLock) { self.lock = lock; path = lock.path }

    /// Takes the lock. With `wait: false`, a lock another process holds is `busy` at once.
    public static func acquire(_ path: String, wait: Bool) throws -> ScheduleLock {
        do {
            return ScheduleLock(try HolderLock.acquire(path, wait: wait))
        } catch {
            switch error.kind {
            case .open: throw SchedulingError(.io, path: path, "cannot open the lock file: \(error.reason)")
            case .busy:
                let holder = error.holder.map { " (pid \($0))" } ?? ""
                throw SchedulingError(.busy, path: path, "another `hsmbackup schedule run`\(holder) holds the lock; this one did nothing")
            case .flock: throw SchedulingError(.io, path: path, "flock: \(error.reason)")
            }
        }
    }

    public func release() { lock.release() }
}
