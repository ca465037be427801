import CDurability
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Files that appear whole or not at all: write a temp file beside the target (owner-only,
/// whatever the umask; without a name until the commit where Linux allows it), fsync it, rename
/// it over the target, fsync the directory. A crash at any instant leaves the old file or the
/// new one, plus at most a temp file named `.<name>.tmp-*` that `AtomicFile.removeStaleTemps`
/// cleans up. Every module that persists state uses this.
public enum AtomicFile {
    /// Prefix of temp files, so cleaners can find them.
    public static let tempMarker = ".tmp-"

    /// Writes `bytes` to `path` atomically with permission bits `mode` (default 0600).
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws {
        try publish(bytes, path, mode, replacing: true)
    }

    /// Writes `bytes` to a new file at `path`, whole, only if nothing is there: `exists` if a file
    /// (or a link) already has the name, even one made by a concurrent writer a moment before.
    /// For files that must never be replaced: keys.
    public static func create(_ bytes: [UInt8], at path: String, mode: mode_t = 0o600) throws {
        try publish(bytes, path, mode, replacing: false)
    }

    private static func publish(_ bytes: [UInt8], _ path: String, _ mode: mode_t, replacing: Bool) throws {
        let w = try Writer(path: path, mode: mode)
        do {
            try w.append(bytes)
            if replacing { try w.commit() } else { try w.commitNew() }
        } catch {
            w.abort()
            throw error
        }
    }

    /// Reads a whole file (for small state files; large objects are streamed by their owners).
    /// Only a regular file is read: a FIFO, device, socket or directory is refused, never waited on.
    /// Key files are read with it too, so no copy stays behind: the result is sized from the
    /// file's length up front (no growth leaves old storage unless the file grows meanwhile),
    /// the read buffer is cleared, and so is the partial result when the read fails.
    public static func read(_ path: String, limit: Int = 64 << 20) throws -> [UInt8] {
        let fd = try openRegularFile(path)
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FileError(errno: errno, operation: "fstat", path: path) }
        guard Int(st.st_size) <= limit else {
            throw FileError(code: .tooLarge, operation: "read", path: path, reason: "\(st.st_size) bytes exceeds the limit of \(limit)")
        }
        var out = [UInt8]()
        out.reserveCapacity(Int(st.st_size) + 1)
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        defer { buf.withUnsafeMutableBytes { explicit_bzero($0.baseAddress!, $0.count) } }
        func failing(_ e: FileError) -> FileError {
            out.withUnsafeMutableBytes { if let p = $0.baseAddress { explicit_bzero(p, $0.count) } }
            return e
        }
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw failing(FileError(errno: errno, operation: "read", path: path))
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<n])
            guard out.count <= limit else {
                throw failing(FileError(code: .tooLarge, operation: "read", path: path, reason: "exceeds the limit of \(limit)"))
            }
        }
        return out
    }

    /// Opens `path` read-only if it is a regular file (symlinks followed). The open itself cannot
    /// block (O_NONBLOCK: a FIFO with no writer would otherwise wait for one), and anything but a
    /// regular file is refused before a byte is read: a FIFO or a device would hang or never end.
    public static func openRegularFile(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError(errno: errno, operation: "open", path: path) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw FileError(errno: e, operation: "fstat", path: path)
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw FileError.notRegular(path, mode: st.st_mode, operation: "open")
        }
        // Regular files ignore O_NONBLOCK; clear it anyway so the descriptor behaves as a plain one.
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        return fd
    }

    /// Checks a path that is about to be read: it must exist and be a regular file (symlinks
    /// followed). Never opens it, so a FIFO or device cannot block or react.
    public static func checkInput(_ path: String) throws {
        var st = stat()
        guard stat(path, &st) == 0 else { throw FileError(errno: errno, operation: "open", path: path) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw FileError.notRegular(path, mode: st.st_mode, operation: "read") }
    }

    /// Checks a path that is about to be written (a temp file beside it, renamed over it). It
    /// must be absent, a regular file, or a symbolic link, which the rename replaces (the file
    /// it named is left as it was: an output never writes through a link, so a link planted in
    /// a shared directory cannot aim a root run at another file). Refused (`notRegularFile`): a
    /// directory, FIFO, device or socket, or a link to one, since the user meant that node
    /// (`-o /dev/null` would become a regular file holding the output); a link into `/dev` or
    /// `/proc`, and any path in `/proc`, or a link in `/dev`: `/dev/stdout` is
    /// `/proc/self/fd/1`, and a rename beside it would create a file in `/dev` (as root,
    /// replacing the system's `/dev/stdout`).
    public static func checkOutput(_ path: String) throws {
        if isUnderProc(path) {
            throw FileError(code: .notRegularFile, operation: "write", path: path,
                            reason: "is under /proc (a process's own descriptors), not a file of its own")
        }
        var st = stat()
        guard lstat(path, &st) == 0 else {
            let e = errno
            if e == ENOENT { return }
            throw FileError(errno: e, operation: "stat", path: path)
        }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFREG { return }
        guard kind == S_IFLNK else { throw FileError.notRegular(path, mode: st.st_mode, operation: "write") }
        // A link: where it points only decides whether to refuse; the rename replaces the link.
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { throw FileError(errno: errno, operation: "readlink", path: path) }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if isUnder(directory(of: path), "/dev") || target.hasPrefix("/dev/") || target.hasPrefix("/proc/") || target == "/proc" {
            throw FileError(code: .notRegularFile, operation: "write", path: path,
                            reason: "is a symbolic link to \(target), standard output or another descriptor or device, "
                                + "not a file of its own (use `-` for stdout where offered)")
        }
        var resolved = stat()
        if stat(path, &resolved) != 0 {
            let e = errno
            if e == ENOENT { return } // a link to nothing: replaced
            throw FileError(errno: e, operation: "stat", path: path)
        }
        guard resolved.st_mode & S_IFMT == S_IFREG else {
            throw FileError(code: .notRegularFile, operation: "write", path: path,
                            reason: "is a symbolic link to \(target), which \(FileError.notRegular(target, mode: resolved.st_mode, operation: "write").reason)")
        }
    }

    /// Whether `dir` (any spelling) resolves to `root` or below it.
    private static func isUnder(_ dir: String, _ root: String) -> Bool {
        guard let real = realpath(dir, nil) else { return false }
        defer { free(real) }
        let d = String(cString: real)
        return d == root || d.hasPrefix(root + "/")
    }

    /// Whether `path`'s directory is `/proc` or below it, whatever the spelling (`fd/1` with
    /// `/proc/self` as the working directory, `../proc/...`).
    private static func isUnderProc(_ path: String) -> Bool {
        path == "/proc" || path.hasPrefix("/proc/") || isUnder(directory(of: path), "/proc")
    }

    /// fsyncs a directory so a rename or unlink inside it is durable.
    public static func syncDirectory(_ dir: String) throws {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError(errno: errno, operation: "open directory", path: dir) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw FileError(errno: errno, operation: "fsync directory", path: dir) }
    }

    /// Creates a directory (and parents) with owner-only permissions; an existing directory (or
    /// a symbolic link to one) is kept as it is. A file, device or FIFO on the way is refused
    /// (`notDirectory`) rather than reported later as a path that does not exist.
    public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws {
        var parts: [Substring] = path.split(separator: "/", omittingEmptySubsequences: true)
        var current = path.hasPrefix("/") ? "" : "."
        if parts.isEmpty { return }
        let last = parts.removeLast()
        func existing(_ dir: String) throws {
            let e = errno
            guard e == EEXIST else { throw FileError(errno: e, operation: "mkdir", path: dir) }
            var st = stat()
            guard stat(dir, &st) == 0 else { throw FileError(errno: errno, operation: "stat", path: dir) }
            guard st.st_mode & S_IFMT == S_IFDIR else {
                throw FileError(code: .notDirectory, operation: "mkdir", path: dir, reason: "is a \(FileError.kindName(st.st_mode)), not a directory")
            }
        }
        for p in parts {
            current += "/" + p
            if mkdir(current, 0o700) != 0 { try existing(current) }
        }
        current += "/" + last
        if mkdir(current, mode) != 0 {
            try existing(current)
        } else {
            // mkdir's mode is filtered by the umask: set it exactly.
            _ = chmod(current, mode)
        }
    }

    /// Removes `.<name>.tmp-*` files left by a crash in `dir`; returns the names removed.
    @discardableResult
    public static func removeStaleTemps(in dir: String) throws -> [String] {
        guard let d = opendir(dir) else { throw FileError(errno: errno, operation: "opendir", path: dir) }
        var removed: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix("."), name.contains(tempMarker) {
                if unlink(dir + "/" + name) == 0 { removed.append(name) }
            }
        }
        closedir(d)
        if !removed.isEmpty { try syncDirectory(dir) }
        return removed.sorted()
    }

    /// A streaming atomic writer: `append` as often as needed, then `commit` (durable rename) or
    /// `abort` (nothing left). If neither is called, deinit aborts, so no partial file survives.
    ///
    /// Where Linux allows it the new file has no name until the commit (O_TMPFILE in the
    /// target's directory): a process killed mid-write (Ctrl-C during `envelope decrypt -o`)
    /// leaves nothing, not a temp holding part of the plaintext. At the commit it gets the temp
    /// name (linkat through /proc/self/fd) and is renamed over the target at once. Elsewhere, or
    /// when the file system or /proc refuses, the temp is an ordinary `.<name>.tmp-*` file, which
    /// a kill can leave behind (`removeStaleTemps`).
    public final class Writer {
        public let path: String
        /// The temp's path (for an unnamed temp, the name it takes for the instant before the rename).
        public let tempPath: String
        /// True when the temp has no name until the commit.
        public let unnamed: Bool
        /// The target's directory, opened once: the temp is made, named and renamed in this
        /// directory, whatever happens to the path's other components meanwhile.
        private let dirfd: Int32
        private let name: String
        private let tempName: String
        private var fd: Int32 = -1
        private var finished = false
        public private(set) var bytesWritten: Int = 0
        private var writebackStart = 0

        /// `allowUnnamed: false` always makes a named temp (tests of that path).
        public init(path: String, mode: mode_t = 0o600, allowUnnamed: Bool = true) throws {
            self.path = path
            try AtomicFile.checkOutput(path)
            let dir = AtomicFile.directory(of: path)
            name = AtomicFile.baseName(of: path)
            var rnd = [UInt8](repeating: 0, count: 8)
            for i in rnd.indices { rnd[i] = UInt8.random(in: 0...255) }
            tempName = "." + AtomicFile.shortened(name) + AtomicFile.tempMarker + rnd.map { String($0, radix: 16) }.joined()
            tempPath = dir + "/" + tempName
            dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard dirfd >= 0 else { throw FileError(errno: errno, operation: "open the directory of", path: path) }
            if allowUnnamed, let u = Self.openUnnamed(dirfd: dirfd, mode: mode) {
                fd = u
                unnamed = true
                return
            }
            unnamed = false
            // (From here a throw runs deinit, which closes `dirfd` and removes a named temp.)
            fd = openat(dirfd, tempName, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
            guard fd >= 0 else { throw FileError(errno: errno, operation: "create a temp file for", path: path) }
            // open's mode is filtered by the umask: set it exactly.
            guard fchmod(fd, mode) == 0 else { throw FileError(errno: errno, operation: "fchmod", path: tempPath) }
        }

        /// An O_TMPFILE descriptor in the directory with exactly `mode`, where the later link
        /// through /proc/self/fd will work; nil otherwise (the caller makes a named temp).
        private static func openUnnamed(dirfd: Int32, mode: mode_t) -> Int32? {
            #if os(Linux) && (arch(x86_64) || arch(arm64))
            let oTmpfile: Int32 = 0o20000000 | O_DIRECTORY // O_TMPFILE (does not import into Swift)
            let fd = openat(dirfd, ".", oTmpfile | O_WRONLY | O_CLOEXEC, mode)
            guard fd >= 0 else { return nil }
            guard fchmod(fd, mode) == 0, access("/proc/self/fd/\(fd)", F_OK) == 0 else { close(fd); return nil }
            return fd
            #else
            return nil
            #endif
        }

        deinit {
            if !finished { abort() }
            close(dirfd)
        }

        public func append(_ bytes: UnsafeRawBufferPointer) throws {
            precondition(!finished, "AtomicFile.Writer used after commit/abort")
            var off = 0
            while off < bytes.count {
                let n = Glibc.write(fd, bytes.baseAddress! + off, bytes.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw FileError(errno: errno, operation: "write", path: path)
                }
                off += n
            }
            bytesWritten += bytes.count
        }

        public func append(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try append($0) } }

        /// Asks the kernel to start writing back the bytes appended since the last call (Linux
        /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`, through CDurability; a no-op elsewhere). It waits for nothing and
        /// promises nothing: `commit()`'s fsync is still what makes the file durable. A writer of
        /// a large file calls it now and then so the disk works while it produces the rest, and
        /// the final fsync has little left to wait for.
        public func startWriteback() {
            precondition(!finished, "AtomicFile.Writer used after commit/abort")
            let from = writebackStart
            guard bytesWritten > from else { return }
            _ = hsmb_start_writeback(fd, Int64(from), Int64(bytesWritten - from))
            writebackStart = bytesWritten
        }

        /// fsync, (an unnamed temp:) link it to its temp name, rename over the target, fsync the directory.
        public func commit() throws {
            precondition(!finished, "AtomicFile.Writer committed twice")
            guard fsync(fd) == 0 else { throw FileError(errno: errno, operation: "fsync", path: path) }
            if unnamed {
                guard linkat(AT_FDCWD, "/proc/self/fd/\(fd)", dirfd, tempName, AT_SYMLINK_FOLLOW) == 0 else {
                    throw FileError(errno: errno, operation: "link the new file beside", path: path)
                }
            }
            let closed = close(fd)
            fd = -1
            guard closed == 0 else { throw FileError(errno: errno, operation: "close", path: path) }
            guard renameat(dirfd, tempName, dirfd, name) == 0 else { throw FileError(errno: errno, operation: "rename", path: path) }
            finished = true
            guard fsync(dirfd) == 0 else { throw FileError(errno: errno, operation: "fsync directory", path: AtomicFile.directory(of: path)) }
        }

        /// Like `commit`, but the file is published with link(2), which fails (`exists`) when the
        /// name is taken, instead of a rename that would replace what is there.
        public func commitNew() throws {
            precondition(!finished, "AtomicFile.Writer committed twice")
            guard fsync(fd) == 0 else { throw FileError(errno: errno, operation: "fsync", path: path) }
            let published: Int32
            if unnamed {
                published = linkat(AT_FDCWD, "/proc/self/fd/\(fd)", dirfd, name, AT_SYMLINK_FOLLOW)
            } else {
                published = linkat(dirfd, tempName, dirfd, name, 0)
            }
            guard published == 0 else {
                let e = errno
                throw e == EEXIST ? FileError(code: .exists, operation: "create", path: path, reason: "it already exists")
                    : FileError(errno: e, operation: "create", path: path)
            }
            finished = true
            if !unnamed { unlinkat(dirfd, tempName, 0) }
            let closed = close(fd)
            fd = -1
            guard closed == 0 else { throw FileError(errno: errno, operation: "close", path: path) }
            guard fsync(dirfd) == 0 else { throw FileError(errno: errno, operation: "fsync directory", path: AtomicFile.directory(of: path)) }
        }

        /// Drops the new file (and its temp name, if it has one yet); the target is untouched.
        public func abort() {
            guard !finished else { return }
            finished = true
            if fd >= 0 { close(fd); fd = -1 }
            unlinkat(dirfd, tempName, 0) // a named temp; an unnamed one has this name only if the rename failed
        }
    }

    /// `name` cut to at most 200 UTF-8 bytes (whole characters), so a temp name built from it
    /// stays within the usual 255-byte file-name limit whatever the target's name.
    static func shortened(_ name: String) -> String {
        guard name.utf8.count > 200 else { return name }
        var out = ""
        var bytes = 0
        for ch in name {
            let n = ch.utf8.count
            if bytes + n > 200 { break }
            out.append(ch)
            bytes += n
        }
        return out
    }

    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let d = String(path[..<slash])
        return d.isEmpty ? "/" : d
    }

    public static func baseName(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}

/// A file-system failure: which operation, on which path, and the OS's reason.
public struct FileError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case notFound, permissionDenied, noSpace, exists, tooLarge, io
        /// The path names a directory, FIFO, device or socket where a regular file is needed.
        case notRegularFile
        /// The path is a symbolic link that loops (ELOOP).
        case symlinkLoop
        /// The path names a file (or another non-directory) where a directory is needed.
        case notDirectory
    }
    public let code: Code
    public let operation: String
    public let path: String
    public let reason: String

    public init(code: Code, operation: String, path: String, reason: String) {
        self.code = code
        self.operation = operation
        self.path = path
        self.reason = reason
    }

    public init(errno e: Int32, operation: String, path: String) {
        let code: Code
        switch e {
        case ENOENT, ENOTDIR: code = .notFound
        case EACCES, EPERM, EROFS: code = .permissionDenied
        case ENOSPC, EDQUOT: code = .noSpace
        case EEXIST: code = .exists
        case ELOOP: code = .symlinkLoop
        default: code = .io
        }
        let reason = e == ELOOP ? "a symbolic link loop (too many levels of symbolic links)" : String(cString: strerror(e))
        self.init(code: code, operation: operation, path: path, reason: reason)
    }

    /// A node that is not a regular file, named by its kind.
    public static func notRegular(_ path: String, mode: mode_t, operation: String) -> FileError {
        FileError(code: .notRegularFile, operation: operation, path: path,
                  reason: "is a \(kindName(mode)), not a regular file")
    }

    public static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "directory"
        case S_IFIFO: return "FIFO"
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        case S_IFSOCK: return "socket"
        case S_IFLNK: return "symbolic link"
        case S_IFREG: return "regular file"
        default: return "special file"
        }
    }

    public var description: String { "\(operation) \(path): \(reason)" }
}

extension AtomicFile {
    /// `Writer.startWriteback()` for a file descriptor someone else owns (the object store's
    /// replica writers): starts write-back of bytes `from ..< to` and waits for nothing.
    public static func startWriteback(fd: Int32, from: Int, to: Int) {
        guard to > from else { return }
        _ = hsmb_start_writeback(fd, Int64(from), Int64(to - from))
    }

    /// Sets or clears O_DIRECT on `fd`. Returns nil, or the errno (EINVAL where the file system
    /// does not do direct I/O).
    public static func setDirectIO(fd: Int32, _ on: Bool) -> Int32? {
        hsmb_set_direct_io(fd, on ? 1 : 0) == 0 ? nil : errno
    }
}
