import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive `flock(2)` on a file that records its holder's pid, held until `release()` or the
/// process ends (the kernel drops it when the process dies, so a killed holder never leaves it
/// behind). Another process that finds it held learns the holder's pid for its message. The
/// schedule runner's lock and the PKCS#11 per-token restore lock are both this lock; each says
/// in its own words what a refusal means.
public final class HolderLock {
    public let path: String
    private var fd: Int32

    /// Why the lock was not taken.
    public struct Refusal: Error, Sendable {
        public enum Kind: Sendable {
            /// The file could not be opened (`errno`).
            case open
            /// Another process holds it (`holder`: its pid, when it wrote one).
            case busy
            /// flock itself failed (`errno`).
            case flock
        }
        public let kind: Kind
        public let errno: Int32
        public let holder: Int32?

        public var reason: String { String(cString: strerror(errno)) }
    }

    private init(path: String, fd: Int32) { self.path = path; self.fd = fd }

    /// Takes the lock. With `wait: false`, a lock another process holds is refused at once (`busy`).
    public static func acquire(_ path: String, wait: Bool) throws(Refusal) -> HolderLock {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Refusal(kind: .open, errno: errno, holder: nil) }
        while flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0 {
            let e = errno
            if e == EINTR { continue }
            defer { close(fd) }
            throw Refusal(kind: e == EWOULDBLOCK ? .busy : .flock, errno: e, holder: e == EWOULDBLOCK ? holder(fd) : nil)
        }
        let pid = Array("\(getpid())\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
        return HolderLock(path: path, fd: fd)
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
