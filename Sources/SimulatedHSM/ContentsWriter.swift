// Writing a new contents file (a restore's, or `replaceContents`) and cleaning up after a writer
// that was killed.
//
// The new file is the plaintext payload tar, up to the payload's size, so its temp file must not
// outlive the restore. Where Linux allows it the file is created without a name (O_TMPFILE): a
// kill at any instant before the commit leaves nothing on disk. At the commit it gets a temp name
// (linkat through /proc/self/fd), is renamed over `contents.state`, and the directory is synced:
// the name lives for microseconds. Elsewhere (or when /proc or O_TMPFILE is missing) an ordinary
// `.contents.state.tmp-*` file is used.
//
// Either way, a writer holds an exclusive flock on the HSM's state directory while its temp
// exists; `SimulatedHSM.open` removes `.contents.state.tmp-*` files only when it can take that
// lock without waiting, so a live restore's temp is never touched.
import Durability
import Foundation

/// An exclusive flock on the HSM's state directory (no extra file in the directory).
final class HSMDirectoryLock {
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    /// Waits for the lock.
    static func acquire(_ directory: String) throws -> HSMDirectoryLock {
        guard let l = try lock(directory, blocking: true) else {
            throw HSMError(.io, "flock of the state directory failed", path: directory)
        }
        return l
    }

    /// Nil when another writer holds it.
    static func tryAcquire(_ directory: String) throws -> HSMDirectoryLock? { try lock(directory, blocking: false) }

    private static func lock(_ directory: String, blocking: Bool) throws -> HSMDirectoryLock? {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw HSMError.file(FileError(errno: errno, operation: "open directory", path: directory)) }
        while flock(fd, LOCK_EX | (blocking ? 0 : LOCK_NB)) != 0 {
            let e = errno
            if e == EINTR { continue }
            close(fd)
            if e == EWOULDBLOCK { return nil }
            throw HSMError.file(FileError(errno: e, operation: "flock", path: directory))
        }
        return HSMDirectoryLock(fd: fd)
    }

    deinit { close(fd) }
}

/// A new contents file, written whole or not at all (see the file comment).
final class ContentsWriter {
    private let path: String
    private let directory: String
    private let lock: HSMDirectoryLock
    private var unnamed: Int32 = -1
    private var named: AtomicFile.Writer?
    private var finished = false

    /// The temp-name prefix a killed writer may leave (removed by `removeStaleTemps`).
    static func tempPrefix(_ fileName: String) -> String { "." + fileName + AtomicFile.tempMarker }

    init(path: String) throws {
        self.path = path
        directory = AtomicFile.directory(of: path)
        lock = try HSMDirectoryLock.acquire(directory)
        if let fd = Self.openUnnamed(directory) {
            unnamed = fd
        } else {
            do { named = try AtomicFile.Writer(path: path) } catch let e as FileError { throw HSMError.file(e) }
        }
    }

    deinit { abort() }

    /// O_TMPFILE where the kernel, the file system and /proc allow the later link; else nil.
    private static func openUnnamed(_ directory: String) -> Int32? {
        #if os(Linux) && (arch(x86_64) || arch(arm64))
        let oTmpfile: Int32 = 0o20000000 | O_DIRECTORY // O_TMPFILE (does not import into Swift)
        let fd = open(directory, oTmpfile | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        guard fchmod(fd, 0o600) == 0, access("/proc/self/fd/\(fd)", F_OK) == 0 else { close(fd); return nil }
        return fd
        #else
        return nil
        #endif
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        if let named {
            do { try named.append(bytes) } catch let e as FileError { throw HSMError.file(e) }
            return
        }
        var off = 0
        while off < bytes.count {
            let n = write(unnamed, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                throw HSMError.file(FileError(errno: errno, operation: "write", path: path))
            }
            off += n
        }
    }

    func append(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try append($0) } }

    /// fsync, name, rename over the target, fsync the directory.
    func commit() throws {
        precondition(!finished, "ContentsWriter committed twice")
        if let named {
            do { try named.commit() } catch let e as FileError { throw HSMError.file(e) }
            finished = true
            return
        }
        guard fsync(unnamed) == 0 else { throw HSMError.file(FileError(errno: errno, operation: "fsync", path: path)) }
        var rnd = [UInt8](repeating: 0, count: 8)
        for i in rnd.indices { rnd[i] = UInt8.random(in: 0...255) }
        let temp = directory + "/" + Self.tempPrefix(AtomicFile.baseName(of: path)) + rnd.map { String($0, radix: 16) }.joined()
        guard linkat(AT_FDCWD, "/proc/self/fd/\(unnamed)", AT_FDCWD, temp, AT_SYMLINK_FOLLOW) == 0 else {
            throw HSMError.file(FileError(errno: errno, operation: "linkat", path: temp))
        }
        guard rename(temp, path) == 0 else {
            let e = errno
            unlink(temp)
            throw HSMError.file(FileError(errno: e, operation: "rename", path: path))
        }
        close(unnamed)
        unnamed = -1
        finished = true
        do { try AtomicFile.syncDirectory(directory) } catch let e as FileError { throw HSMError.file(e) }
    }

    /// Drops the new file; the old contents stay.
    func abort() {
        guard !finished else { return }
        finished = true
        named?.abort()
        if unnamed >= 0 { close(unnamed); unnamed = -1 }
    }

    /// Removes temps of contents writers that died; only while no writer holds the lock.
    static func removeStaleTemps(in directory: String, fileName: String) {
        guard let lock = try? HSMDirectoryLock.tryAcquire(directory),
              let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        var removed = false
        for name in names where name.hasPrefix(tempPrefix(fileName)) {
            if unlink(directory + "/" + name) == 0 { removed = true }
        }
        if removed { try? AtomicFile.syncDirectory(directory) }
        withExtendedLifetime(lock) {}
    }
}
