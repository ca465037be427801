// File-level operations of the local store: every call that can fail goes through `ReplicaIO`, so
// tests can inject an operating-system error at any step (spec/FORMAT.md section 5.5).
#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Durability
import Foundation

/// The steps of replica I/O where a test may inject a failure.
public enum IOOperation: String, Sendable {
    case create, write, sync, publish, open, read, remove
}

/// Returns an errno to make `operation` on `replica` fail as if the OS had refused, or nil.
public typealias FaultHook = @Sendable (_ operation: IOOperation, _ replica: Int, _ path: String) -> Int32?

enum OSError {
    static func name(_ e: Int32) -> String {
        switch e {
        case ENOENT: return "ENOENT"
        case EACCES: return "EACCES"
        case EPERM: return "EPERM"
        case EROFS: return "EROFS"
        case ENOSPC: return "ENOSPC"
        case EDQUOT: return "EDQUOT"
        case EIO: return "EIO"
        case EEXIST: return "EEXIST"
        case ENOTDIR: return "ENOTDIR"
        case EISDIR: return "EISDIR"
        default: return "errno \(e)"
        }
    }

    static func finding(replica: Int, path: String, operation: String, errno e: Int32) -> ReplicaFinding {
        ReplicaFinding(replica: replica, path: path, problem: e == ENOENT ? .missing : .ioError,
                       detail: "\(operation): \(String(cString: strerror(e)))", osError: name(e))
    }
}

/// An advisory lock (flock) on a lock file, released when the value is dropped or the process
/// dies. Locks order: a backup's writer lock, then the catalog lock, then stripe locks; never the
/// other way (spec 5.8).
final class FileLock {
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    /// Blocks until the lock is held.
    static func acquire(_ path: String, exclusive: Bool = true) throws -> FileLock {
        guard let l = try lock(path, exclusive: exclusive, blocking: true) else {
            throw StoreError(.ioError, path: path, "flock failed")
        }
        return l
    }

    /// Nil when another process holds it.
    static func tryAcquire(_ path: String, exclusive: Bool = true) throws -> FileLock? {
        try lock(path, exclusive: exclusive, blocking: false)
    }

    private static func lock(_ path: String, exclusive: Bool, blocking: Bool) throws -> FileLock? {
        // O_NOFOLLOW: a link planted at a lock's name is refused, never followed and created.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw StoreError(.ioError, path: path, "cannot open lock file: \(String(cString: strerror(errno)))") }
        var op = exclusive ? LOCK_EX : LOCK_SH
        if !blocking { op |= LOCK_NB }
        while flock(fd, op) != 0 {
            let e = errno
            if e == EINTR { continue }
            close(fd)
            if e == EWOULDBLOCK { return nil }
            throw StoreError(.ioError, path: path, "flock: \(String(cString: strerror(e)))")
        }
        return FileLock(fd: fd)
    }

    deinit { close(fd) }
}

/// Writes one replica file: a temp file in the replica's `tmp/` directory (named after the key's
/// stripe, so a cleaner knows which lock guards it), append, fsync, then publish with `link` (a
/// new object: fails if the name exists) or `rename` (a repair replacing a bad copy), unlink the
/// temp, fsync the object's directory. Dropping an unpublished writer removes its temp.
final class ReplicaWriter {
    let replica: Int
    let finalPath: String
    let tempPath: String
    private let dir: String
    private let faults: FaultHook?
    private var fd: Int32 = -1
    private var done = false
    /// Bytes appended, and where the last early write-back started: every `writebackBytes` the
    /// kernel is asked to start writing, so the replicas' disks work while the object streams in
    /// and the fsync at commit has little left to wait for (a rewrap or create of a large
    /// archive spent most of its fsync time waiting for write-back that had not started).
    private var written = 0
    private var writebackFrom = 0
    static let writebackBytes = 8 << 20

    init(replica: Int, tempDir: String, stripe: String, dir: String, fileName: String, faults: FaultHook?) throws {
        self.replica = replica
        self.dir = dir
        self.faults = faults
        finalPath = dir + "/" + fileName
        var rnd = [UInt8](repeating: 0, count: 8)
        for i in rnd.indices { rnd[i] = UInt8.random(in: 0...255) }
        tempPath = tempDir + "/." + stripe + "-" + fileName + AtomicFile.tempMarker + rnd.map { String($0, radix: 16) }.joined()
        if let e = faults?(.create, replica, tempPath) { throw Self.failure(replica, tempPath, "create", e) }
        fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Self.failure(replica, tempPath, "create", errno) }
    }

    deinit { abort() }

    static func failure(_ replica: Int, _ path: String, _ op: String, _ e: Int32) -> ReplicaFailure {
        ReplicaFailure(finding: OSError.finding(replica: replica, path: path, operation: op, errno: e))
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        if let e = faults?(.write, replica, tempPath) { throw Self.failure(replica, tempPath, "write", e) }
        try writeAll(bytes)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < bytes.count {
            let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                throw Self.failure(replica, tempPath, "write", errno)
            }
            off += n
        }
        written += bytes.count
        if written - writebackFrom >= Self.writebackBytes {
            AtomicFile.startWriteback(fd: fd, from: writebackFrom, to: written)
            writebackFrom = written
        }
    }

    func append(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try append($0) } }

    // MARK: background appends (issue 17)
    //
    // The chunks of a large object are written on the replica's own serial queue, so the three
    // replicas' page-cache copies run on as many cores as are free instead of one after another
    // on the caller's thread. Order is kept (one serial queue per replica), at most
    // `pendingChunks` chunks wait per replica (memory stays bounded; the chunk buffers are shared
    // by the replicas, not copied), and the fault hook still runs on the caller's thread at the
    // same append, so an injected failure is seen exactly where it was before. A real OS error
    // is recorded by the queue and surfaces at the next append or at `drainBackground()`, which
    // the commit calls before the record is appended: no replica is synced or published with a
    // failed write behind it.
    static let pendingChunks = 4
    private var lane: DispatchQueue?
    private static let laneKey = DispatchSpecificKey<Void>()
    /// Waits for the queued appends (never from the lane itself: the last reference to a writer
    /// may be dropped by its own job, and a queue cannot wait for itself).
    private func waitForLane() {
        guard let lane, DispatchQueue.getSpecific(key: Self.laneKey) == nil else { return }
        lane.sync {}
    }
    private var slots: DispatchSemaphore?
    private let failureLock = NSLock()
    private var backgroundFailure: ReplicaFailure?

    private func recordedFailure() -> ReplicaFailure? {
        failureLock.lock()
        defer { failureLock.unlock() }
        return backgroundFailure
    }

    /// Queues `bytes` for writing; throws a failure seen so far (injected now, or recorded by an
    /// earlier background write).
    func appendInBackground(_ bytes: [UInt8]) throws {
        if let e = faults?(.write, replica, tempPath) { throw Self.failure(replica, tempPath, "write", e) }
        if let f = recordedFailure() { throw f }
        if lane == nil {
            let q = DispatchQueue(label: "hsmbackup-replica-\(replica)")
            q.setSpecific(key: Self.laneKey, value: ())
            lane = q
            slots = DispatchSemaphore(value: Self.pendingChunks)
        }
        let slots = slots!
        slots.wait()
        // The queue is the only user of the file descriptor and the counters until a drain.
        let job = UncheckedSendable((self, bytes))
        lane!.async {
            let (w, data) = job.value
            defer { slots.signal() }
            guard w.recordedFailure() == nil else { return }
            do { try data.withUnsafeBytes { try w.writeChunk($0) } } catch let e as ReplicaFailure {
                w.failureLock.lock()
                w.backgroundFailure = e
                w.failureLock.unlock()
            } catch {}
        }
    }

    /// Waits for every queued append; throws the first background failure. The record and
    /// anything after it are written through the page cache again.
    func drainBackground() throws {
        waitForLane()
        if let f = recordedFailure() { throw f }
        try endDirect()
    }

    // MARK: direct I/O for the background chunks (issue 17)
    //
    // A replica is written once and read rarely, yet a buffered write copies every byte into
    // the page cache (in a virtual machine, onto freshly backed pages): for a 3-replica create
    // of a 256 MiB payload that copy was 0.46 of 1.7 CPU-s, and it pushed 264 MB of other
    // programs' cache out. So full chunks at aligned offsets go to the disk with O_DIRECT, from
    // one aligned staging buffer per replica: the create costs 1.33 CPU-s instead of 1.62, in
    // the same wall time (medians of 6). The commit is the same fsync as before (O_DIRECT
    // alone promises nothing about the device's cache or the file's metadata). A file system
    // that refuses O_DIRECT, or an unaligned piece, sends the rest of the file through the page
    // cache: the bytes written are the same either way. `HSMBACKUP_DIRECT_IO=0` switches it off.
    static let directIOEnabled = directIOSetting(ProcessInfo.processInfo.environment["HSMBACKUP_DIRECT_IO"])
    static func directIOSetting(_ value: String?) -> Bool {
        guard let value else { return true }
        return !["0", "off", "no", "false"].contains(value.lowercased())
    }
    /// Memory and file-offset alignment: covers 512- and 4096-byte logical blocks.
    static let directAlignment = 4096
    /// The staging buffer's size: one store chunk.
    static let directStageBytes = ObjectRecord.defaultChunkSize
    private enum DirectState { case untried, on, off }
    private var direct = DirectState.untried
    private var stage: UnsafeMutableRawPointer?
    /// True once a chunk went to the disk with O_DIRECT (for tests).
    private(set) var wroteDirect = false
    /// Tests only: an errno for the lane's own calls ("direct write", "fdatasync"), as if the OS
    /// had returned it. (The store's `FaultHook` runs on the caller's thread, at the append, and
    /// never reaches these.) Set before the first append.
    var laneFaultsForTests: ((String) -> Int32?)?

    /// Bytes the lane's last `fdatasync` covered (see `syncBehind`).
    private var syncedThrough = 0

    /// Writes one queued chunk (on the lane): with O_DIRECT when it can, else through
    /// `writeAll`; then syncs behind.
    private func writeChunk(_ bytes: UnsafeRawBufferPointer) throws {
        try writeChunkData(bytes)
        try syncBehind()
    }

    /// Every `writebackBytes` the lane waits for the file's data so far to be on the disk. On
    /// this machine kind (a virtual disk over a host file with a write-back cache) the commit's
    /// fsync of 3 × 88 MB otherwise waited ~0.18 s for the host to flush it all at once; synced
    /// in 8 MiB steps, the flushing overlaps the compression and a 256 MiB create took 0.97 s
    /// instead of 1.11 s (medians of 8). Only the lane waits: the producer goes on while up to
    /// `pendingChunks` chunks queue. It also makes a full disk or a failing one fail the create
    /// early, at the chunk it reached.
    private func syncBehind() throws {
        guard written - syncedThrough >= Self.writebackBytes else { return }
        if let e = laneFaultsForTests?("fdatasync") { throw Self.failure(replica, tempPath, "fdatasync", e) }
        guard fdatasync(fd) == 0 else { throw Self.failure(replica, tempPath, "fdatasync", errno) }
        syncedThrough = written
    }

    private func writeChunkData(_ bytes: UnsafeRawBufferPointer) throws {
        if direct == .untried { startDirect() }
        let a = Self.directAlignment
        guard direct == .on, bytes.count <= Self.directStageBytes, bytes.count % a == 0, written % a == 0, let stage else {
            try endDirect()
            return try writeAll(bytes)
        }
        memcpy(stage, bytes.baseAddress!, bytes.count)
        var off = 0
        while off < bytes.count {
            let n: Int
            if let e = laneFaultsForTests?("direct write") { errno = e; n = -1 } else { n = write(fd, stage + off, bytes.count - off) }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                // EINVAL: this file system wants another alignment after all; EOPNOTSUPP: it
                // took the flag but does not do direct writes (some FUSE and network file
                // systems). The page cache takes the rest; a real error comes back from the
                // buffered write.
                guard e == EINVAL || e == EOPNOTSUPP || e == ENOTSUP else { throw Self.failure(replica, tempPath, "write", e) }
                written += off
                writebackFrom = written
                try endDirect()
                return try writeAll(UnsafeRawBufferPointer(rebasing: bytes[off...]))
            }
            off += n
        }
        written += bytes.count
        writebackFrom = written
        wroteDirect = true
    }

    private func startDirect() {
        direct = .off
        guard Self.directIOEnabled else { return }
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, Self.directAlignment, Self.directStageBytes) == 0, let p else { return }
        guard AtomicFile.setDirectIO(fd: fd, true) == nil else { free(p); return }
        stage = p
        direct = .on
    }

    /// Back to buffered writes (idempotent); frees the staging buffer.
    private func endDirect() throws {
        if let stage {
            free(stage)
            self.stage = nil
        }
        guard direct == .on else { direct = .off; return }
        direct = .off
        if let e = AtomicFile.setDirectIO(fd: fd, false) { throw Self.failure(replica, tempPath, "fcntl", e) }
    }

    /// fsync and close the temp file.
    func sync() throws {
        if let e = faults?(.sync, replica, tempPath) { throw Self.failure(replica, tempPath, "fsync", e) }
        guard fsync(fd) == 0 else { throw Self.failure(replica, tempPath, "fsync", errno) }
        let rc = close(fd)
        fd = -1
        guard rc == 0 else { throw Self.failure(replica, tempPath, "close", errno) }
    }

    /// True once the temp has the final name (link or rename done), even if the directory's
    /// fsync then failed: a put that misses its quorum must remove such a file too (spec 5.4
    /// step 6), or the object it holds comes back later.
    private(set) var linked = false

    /// Makes the synced temp file the replica file, durably. The writer is done only after the
    /// directory's fsync; before that a failure leaves `linked` for the caller to undo.
    func publish(replacing: Bool) throws {
        if let e = faults?(.publish, replica, finalPath) { throw Self.failure(replica, finalPath, "publish", e) }
        if replacing {
            guard rename(tempPath, finalPath) == 0 else { throw Self.failure(replica, finalPath, "rename", errno) }
        } else {
            guard link(tempPath, finalPath) == 0 else { throw Self.failure(replica, finalPath, "link", errno) }
            unlink(tempPath)
        }
        linked = true
        if let e = faults?(.sync, replica, dir) { throw Self.failure(replica, dir, "fsync directory", e) }
        do { try AtomicFile.syncDirectory(dir) } catch {
            throw ReplicaFailure(finding: ReplicaFinding(replica: replica, path: dir, problem: .ioError, detail: "fsync directory: \(error)", osError: nil))
        }
        done = true
    }

    func abort() {
        guard !done else { return }
        done = true
        waitForLane() // no queued write may reach a closed (or reused) descriptor
        if let stage { free(stage); self.stage = nil }
        if fd >= 0 { close(fd); fd = -1 }
        if !linked { unlink(tempPath) } // once linked, the temp's name is already gone
    }
}

/// A replica-level failure carried inside the store until it becomes a finding in a report.
struct ReplicaFailure: Error {
    let finding: ReplicaFinding
}

/// An open replica file whose record has been parsed and checked against its length.
final class ReplicaFile {
    let replica: Int
    let path: String
    let record: ObjectRecord
    let recordBytes: [UInt8]
    private let fd: Int32
    private let faults: FaultHook?

    private init(replica: Int, path: String, fd: Int32, record: ObjectRecord, recordBytes: [UInt8], faults: FaultHook?) {
        self.replica = replica
        self.path = path
        self.fd = fd
        self.record = record
        self.recordBytes = recordBytes
        self.faults = faults
    }

    deinit { close(fd) }

    /// Opens and checks the record; a problem comes back as a finding, never a throw.
    static func open(replica: Int, path: String, key: String, faults: FaultHook?) -> Result<ReplicaFile, ReplicaFailure> {
        if let e = faults?(.open, replica, path) { return .failure(ReplicaWriter.failure(replica, path, "open", e)) }
        // O_NONBLOCK: a FIFO in a replica's place must not block the open (it is refused below).
        // O_NOFOLLOW: a symbolic link is not a copy of its own (it may name another replica's
        // file, which would count twice); it is a bad replica, and repair's rename replaces it.
        let fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            let e = errno
            if e == ELOOP {
                return .failure(ReplicaFailure(finding: ReplicaFinding(replica: replica, path: path, problem: .badRecord,
                                                                       detail: "the replica file is a symbolic link, not a file of its own")))
            }
            return .failure(ReplicaWriter.failure(replica, path, "open", e))
        }
        func fail(_ problem: ReplicaFinding.Problem, _ detail: String) -> Result<ReplicaFile, ReplicaFailure> {
            close(fd)
            return .failure(ReplicaFailure(finding: ReplicaFinding(replica: replica, path: path, problem: problem, detail: detail)))
        }
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { let e = errno; close(fd); return .failure(ReplicaWriter.failure(replica, path, "fstat", e)) }
        // A FIFO, device or directory is a bad replica, never read: it could hang or never end.
        guard st.st_mode & S_IFMT == S_IFREG else {
            return fail(.badRecord, "the replica file \(FileError.notRegular(path, mode: st.st_mode, operation: "open").reason)")
        }
        let fileSize = Int(st.st_size)
        guard fileSize >= ObjectRecord.footerLength else { return fail(.badRecord, "file of \(fileSize) bytes has no record (truncated)") }
        do {
            let footer = try preadExactly(fd, count: ObjectRecord.footerLength, at: fileSize - ObjectRecord.footerLength)
            let length = try ObjectRecord.parseFooter(footer, fileSize: fileSize)
            let recordOffset = fileSize - ObjectRecord.footerLength - length
            let bytes = try preadExactly(fd, count: length, at: recordOffset)
            let record = try ObjectRecord.parse(bytes, baseOffset: recordOffset)
            guard record.key == key else { return fail(.conflict, "the record is for key \(record.key)") }
            guard UInt64(recordOffset) == record.size else {
                return fail(.sizeMismatch, "record says \(record.size) bytes, file holds \(recordOffset)")
            }
            return .success(ReplicaFile(replica: replica, path: path, fd: fd, record: record, recordBytes: bytes, faults: faults))
        } catch let e as ReplicaFailure {
            close(fd)
            let problem: ReplicaFinding.Problem = e.finding.problem == .sizeMismatch ? .badRecord : e.finding.problem
            return .failure(ReplicaFailure(finding: ReplicaFinding(replica: replica, path: path, problem: problem,
                                                                   detail: e.finding.detail, osError: e.finding.osError)))
        } catch {
            return fail(.badRecord, "no valid record (truncated or damaged): \(error)")
        }
    }

    /// Reads chunk `index`; a short read or I/O error is a ReplicaFailure.
    func readChunk(_ index: Int) throws -> [UInt8] {
        if let e = faults?(.read, replica, path) {
            throw ReplicaWriter.failure(replica, path, "read chunk \(index)", e)
        }
        let length = record.chunkLength(index)
        let offset = index * record.chunkSize
        do {
            return try Self.preadExactly(fd, count: length, at: offset)
        } catch let e as ReplicaFailure {
            throw ReplicaFailure(finding: ReplicaFinding(replica: replica, path: path, problem: e.finding.problem, chunk: index,
                                                         detail: e.finding.detail, osError: e.finding.osError))
        }
    }

    static func preadExactly(_ fd: Int32, count: Int, at offset: Int) throws -> [UInt8] {
        // Not zero-filled first: every byte is overwritten by the read, or the read fails.
        try [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
            var done = 0
            while done < count {
                let n = pread(fd, buf.baseAddress! + done, count - done, off_t(offset + done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw ReplicaFailure(finding: OSError.finding(replica: -1, path: "", operation: "read", errno: errno))
                }
                if n == 0 {
                    throw ReplicaFailure(finding: ReplicaFinding(replica: -1, path: "", problem: .sizeMismatch,
                                                                 detail: "short read: \(done) of \(count) bytes at offset \(offset)"))
                }
                done += n
            }
            initialized = count
        }
    }
}
