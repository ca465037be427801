// Writing a new contents file (a restore's, or `replaceContents`) and cleaning up after a writer
// that was killed.
//
// The new file is the plaintext payload tar, up to the payload's size, so its temp file must not
// outlive the restore. `AtomicFile.Writer` creates it without a name where Linux allows it
// (O_TMPFILE): a kill at any instant before the commit leaves nothing on disk. At the commit it
// gets a temp name (linkat through /proc/self/fd), is renamed over `contents.state`, and the
// directory is synced: the name lives for microseconds. Elsewhere (or when /proc or O_TMPFILE is
// missing) an ordinary `.contents.state.tmp-*` file is used.
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
    private let lock: HSMDirectoryLock
    private let writer: AtomicFile.Writer

    /// The temp-name prefix a killed writer may leave (removed by `removeStaleTemps`).
    static func tempPrefix(_ fileName: String) -> String { "." + fileName + AtomicFile.tempMarker }

    init(path: String) throws {
        lock = try HSMDirectoryLock.acquire(AtomicFile.directory(of: path))
        do { writer = try AtomicFile.Writer(path: path) } catch let e as FileError { throw HSMError.file(e) }
    }

    deinit { abort() }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        do { try writer.append(bytes) } catch let e as FileError { throw HSMError.file(e) }
    }

    func append(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try append($0) } }

    /// fsync, name, rename over the target, fsync the directory (`AtomicFile.Writer.commit`).
    func commit() throws {
        do { try writer.commit() } catch let e as FileError { throw HSMError.file(e) }
    }

    /// Drops the new file; the old contents stay.
    func abort() { writer.abort() }

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
