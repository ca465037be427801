import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive `flock(2)` on a file, held until `release()` or the process ends (the kernel
/// drops it when the process dies, so a killed run never leaves the lock behind). The holder's
/// pid is written into the file for the message another process prints.
public final class ScheduleLock {
    public let path: String
    private var fd: Int32

    private init(path: String, fd: Int32) { self.path = path; self.fd = fd }

    /// Takes the lock. With `wait: false`, a lock another process holds is `busy` at once.
    public static func acquire(_ path: String, wait: Bool) throws -> ScheduleLock {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw SchedulingError(.io, path: path, "cannot open the lock file: \(String(cString: strerror(errno)))")
        }
        while flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0 {
            let e = errno
            if e == EINTR { continue }
            defer { close(fd) }
            if e == EWOULDBLOCK {
                let holder = Self.holder(fd).map { " (pid \($0))" } ?? ""
                throw SchedulingError(.busy, path: path, "another `hsmbackup schedule run`\(holder) holds the lock; this one did nothing")
            }
            throw SchedulingError(.io, path: path, "flock: \(String(cString: strerror(e)))")
        }
        let pid = Array("\(getpid())\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
        return ScheduleLock(path: path, fd: fd)
    }

    private static func holder(_ fd: Int32) -> Int32? {
        var buf = [UInt8](repeating: 0, count: 16)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    public func release() {
        guard fd >= 0 else { return }
        close(fd) // closing drops the flock
        fd = -1
    }

    deinit { release() }
}
