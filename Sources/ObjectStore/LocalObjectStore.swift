// The embedded object store: N replica directories, a write quorum, checksummed replica files,
// verified streaming reads with fail-over and read-repair (spec/FORMAT.md section 5).
#if canImport(Glibc)
import Glibc
#endif
import BackupCrypto
import ByteCoding
import Dispatch
import Durability

public final class LocalObjectStore: ObjectStorage {
    public let root: String
    public let config: StoreConfig
    /// The replica directories, resolved against the root.
    public let replicaPaths: [String]
    public let clock: StoreClock
    let faults: FaultHook?
    /// Repair bad replicas found while reading (on by default).
    public var readRepair = true
    /// Records whose object digest was seen to match the bytes their chunk digests name (issue 17).
    let consistentRecords = RecordMemo()

    public static let objectsDir = "objects"
    public static let tempDirName = "tmp"
    public static let locksDir = "locks"
    static let initLockName = "init.lock"

    // MARK: creating and opening

    /// Creates a store at `root`. `replicas` are directories (absolute, or relative to `root`);
    /// by default `replicaCount` directories `replica-<i>` inside the root. The write quorum
    /// defaults to a majority.
    @discardableResult
    public static func create(at root: String, replicas: [String]? = nil, replicaCount: Int = 3,
                              writeQuorum: Int? = nil, clock: StoreClock = SystemClock()) throws -> LocalObjectStore {
        try create(at: root, replicas: replicas, replicaCount: replicaCount, writeQuorum: writeQuorum, clock: clock,
                   storeId: SecureRandom.bytes(count: 16))
    }

    /// With a given store id: for the deterministic store vectors (spec/vectors/store) only; a
    /// real store's id is random, so that no two stores share one.
    @discardableResult
    package static func create(at root: String, replicas: [String]? = nil, replicaCount: Int = 3,
                               writeQuorum: Int? = nil, clock: StoreClock, storeId: [UInt8]) throws -> LocalObjectStore {
        let paths = replicas ?? (0..<max(replicaCount, 0)).map { "replica-\($0)" }
        let config = try StoreConfig(storeId: storeId, writeQuorum: writeQuorum ?? (paths.count / 2 + 1),
                                     replicas: paths)
        let confPath = root + "/" + StoreConfig.fileName
        guard access(confPath, F_OK) != 0 else {
            throw StoreError(.alreadyInitialized, path: root, "a store already exists here")
        }
        // The replica directories that exist already, before anything is made.
        try refuseDuplicateReplicas(paths, root: root)
        try fileOp(root) { try AtomicFile.makeDirectory(root) }
        try fileOp(root + "/" + locksDir) { try AtomicFile.makeDirectory(root + "/" + locksDir) }
        // Two inits at once: the second waits here, then finds the first one's configuration, so
        // no replica ever gets the loser's marker (spec 5.1).
        let initLock = try FileLock.acquire(root + "/" + locksDir + "/" + initLockName)
        defer { withExtendedLifetime(initLock) {} }
        guard access(confPath, F_OK) != 0 else {
            throw StoreError(.alreadyInitialized, path: root, "a store already exists here")
        }
        // Every replica directory is checked before any is written: one that holds a marker or
        // objects is another store's disk (or one left by an init that never finished), and
        // writing our marker there would take it from that store.
        for p in paths { try refuseUsedReplica(resolve(p, root: root)) }
        var made: [String] = []
        var marked: [String] = []
        do {
            // Two spellings of one directory (`/d1` and `/d1/`, `r` and `./r`, a link and its
            // target) would be one replica counted twice, the second marker overwriting the
            // first: compared by device and inode once every replica directory exists.
            for p in paths { try makeDirectory(resolve(p, root: root), made: &made) }
            try refuseDuplicateReplicas(paths, root: root)
            for (i, p) in paths.enumerated() {
                let path = resolve(p, root: root)
                // Listed before it is written: a marker written whose directory fsync failed goes too.
                marked.append(path + "/" + ReplicaMarker.fileName)
                try initReplica(path, index: i, storeId: config.storeId, made: &made)
            }
            // The configuration is written last: a store exists only once it is whole. Inside
            // the rollback: one that cannot be written (ENOSPC, EIO) takes the markers back too.
            try fileOp(confPath) { try AtomicFile.write(try config.encode(), to: confPath) }
        } catch {
            // A failed init leaves no marker of its own behind (a retry would find it "in use"),
            // and no directory it made; rmdir removes only empty ones, never what was there.
            for m in marked { unlink(m) }
            for d in made.reversed() { rmdir(d) }
            throw error
        }
        return try LocalObjectStore(root: root, clock: clock)
    }

    /// Opens an existing store and removes temp files left by crashed writers.
    public init(root: String, clock: StoreClock = SystemClock(), faults: FaultHook? = nil, removeStaleTemps: Bool = true) throws {
        self.root = root
        self.clock = clock
        self.faults = faults
        let confPath = root + "/" + StoreConfig.fileName
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(confPath, limit: 1 << 20) } catch let e as FileError {
            throw StoreError(e.code == .notFound ? .notFound : .ioError, path: confPath, "no store configuration: \(e.reason)")
        }
        do { config = try StoreConfig.parse(bytes) } catch {
            throw StoreError(.badFormat, path: confPath, "store configuration: \(error)")
        }
        replicaPaths = config.replicas.map { Self.resolve($0, root: root) }
        if removeStaleTemps { _ = self.removeStaleTemps() }
    }

    static func resolve(_ p: String, root: String) -> String { p.hasPrefix("/") ? p : root + "/" + p }

    /// Refuses a replica path that is not a directory (`invalidArgument`), and a replica
    /// directory that already has a marker or anything in its `objects/` (`alreadyInitialized`).
    static func refuseUsedReplica(_ path: String) throws {
        if let d = opendir(path) { closedir(d) } else {
            let e = errno
            if e == ENOENT { return } // made by the init
            if e == ENOTDIR { throw StoreError(.invalidArgument, path: path, "the replica path is not a directory") }
            throw StoreError(.ioError, path: path, "replica directory: \(String(cString: strerror(e)))")
        }
        var st = Glibc.stat()
        if lstat(path + "/" + ReplicaMarker.fileName, &st) == 0 {
            throw StoreError(.alreadyInitialized, path: path,
                             "the replica directory already holds a replica marker (another store's replica, or one left by an init that "
                                + "did not finish; remove the directory if no store uses it)")
        } else if errno != ENOENT {
            throw StoreError(.ioError, path: path, "replica marker: \(String(cString: strerror(errno)))")
        }
        guard let d = opendir(path + "/" + objectsDir) else {
            if errno == ENOENT { return }
            throw StoreError(errno == ENOTDIR ? .invalidArgument : .ioError, path: path + "/" + objectsDir, "\(String(cString: strerror(errno)))")
        }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." {
                throw StoreError(.alreadyInitialized, path: path, "the replica directory already holds objects (\(objectsDir)/\(name))")
            }
        }
    }

    /// Refuses two replica paths that name one directory, by (st_dev, st_ino) of those that
    /// exist (`invalidArgument`, naming both paths as given).
    static func refuseDuplicateReplicas(_ paths: [String], root: String) throws {
        var seen: [(dev: UInt64, ino: UInt64, path: String)] = []
        for p in paths {
            var st = Glibc.stat()
            guard followingStat(resolve(p, root: root), &st) == 0 else { continue }
            let (dev, ino) = (UInt64(st.st_dev), UInt64(st.st_ino))
            if let first = seen.first(where: { $0.dev == dev && $0.ino == ino }) {
                throw StoreError(.invalidArgument, path: resolve(p, root: root),
                                 "replica paths \(first.path) and \(p) are the same directory; each replica needs its own")
            }
            seen.append((dev, ino, p))
        }
    }

    /// `AtomicFile.makeDirectory`, noting in `made` each directory (parents first) that this
    /// call created: exactly those whose mkdir succeeded, so a failed init can take them back.
    static func makeDirectory(_ path: String, made: inout [String]) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) == 0 { made.append(current) }
        }
        if made.last == current { _ = chmod(current, 0o700) } // mkdir's mode is filtered by the umask
        // Checks what was there (a file on the way is refused) and reports any other failure.
        try fileOp(path) { try AtomicFile.makeDirectory(path) }
    }

    static func initReplica(_ path: String, index: Int, storeId: [UInt8]) throws {
        var made: [String] = []
        try initReplica(path, index: index, storeId: storeId, made: &made)
    }

    static func initReplica(_ path: String, index: Int, storeId: [UInt8], made: inout [String]) throws {
        try makeDirectory(path, made: &made)
        try makeDirectory(path + "/" + objectsDir, made: &made)
        try makeDirectory(path + "/" + tempDirName, made: &made)
        let marker = path + "/" + ReplicaMarker.fileName
        try fileOp(marker) { try AtomicFile.write(ReplicaMarker(storeId: storeId, index: index).encode(), to: marker) }
        try fileOp(path) { try AtomicFile.syncDirectory(path) }
    }

    static func fileOp<T>(_ path: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as FileError {
            throw StoreError(e.code == .notFound ? .notFound : e.code == .notDirectory ? .invalidArgument : .ioError,
                             path: e.path, "\(e.operation): \(e.reason)")
        }
    }

    // MARK: layout

    /// The fan-out directory name of a key: the first byte of SHA-256(key), two hex digits.
    static func fanOut(_ key: String) -> String { Hex.encode(SHA256Hasher.hash(Array(key.utf8)).prefix(1)) }

    func objectDir(_ replica: Int, _ key: String) -> String {
        replicaPaths[replica] + "/" + Self.objectsDir + "/" + Self.fanOut(key)
    }

    func objectPath(_ replica: Int, _ key: String) -> String {
        objectDir(replica, key) + "/" + ObjectKey.fileName(key)
    }

    func tempDir(_ replica: Int) -> String { replicaPaths[replica] + "/" + Self.tempDirName }

    func stripeLockPath(fanOut: String) -> String { root + "/" + Self.locksDir + "/stripe-" + fanOut + ".lock" }

    /// Nil if replica `i` is usable; otherwise why not (missing directory, foreign marker).
    public func replicaStatus(_ i: Int) -> ReplicaFinding? { replicaProblem(i) }

    func replicaProblem(_ i: Int) -> ReplicaFinding? {
        let path = replicaPaths[i]
        let markerPath = path + "/" + ReplicaMarker.fileName
        func unavailable(_ why: String) -> ReplicaFinding {
            ReplicaFinding(replica: i, path: path, problem: .replicaUnavailable, detail: why)
        }
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(markerPath, limit: 4096) } catch {
            return unavailable("replica marker unreadable: \(error)")
        }
        guard let m = try? ReplicaMarker.parse(bytes) else { return unavailable("replica marker does not parse") }
        guard m.storeId == config.storeId, m.index == i else {
            return unavailable("replica marker belongs to store \(Hex.encode(m.storeId)) index \(m.index)")
        }
        return nil
    }

    /// Creates the fan-out directory (and the replica's temp directory) if needed, durably.
    func ensureObjectDir(_ replica: Int, _ key: String) throws {
        let tmp = tempDir(replica)
        if access(tmp, F_OK) != 0 {
            if mkdir(tmp, 0o700) != 0 && errno != EEXIST { throw ReplicaWriter.failure(replica, tmp, "mkdir", errno) }
            do { try AtomicFile.syncDirectory(replicaPaths[replica]) } catch {
                throw ReplicaFailure(finding: ReplicaFinding(replica: replica, path: tmp, problem: .ioError, detail: "\(error)"))
            }
        }
        let dir = objectDir(replica, key)
        if access(dir, F_OK) == 0 { return }
        if let e = faults?(.create, replica, dir) { throw ReplicaWriter.failure(replica, dir, "mkdir", e) }
        if mkdir(dir, 0o700) != 0 && errno != EEXIST { throw ReplicaWriter.failure(replica, dir, "mkdir", errno) }
        do { try AtomicFile.syncDirectory(replicaPaths[replica] + "/" + Self.objectsDir) } catch {
            throw ReplicaFailure(finding: ReplicaFinding(replica: replica, path: dir, problem: .ioError, detail: "\(error)"))
        }
    }

    // MARK: put

    public func makeWriter(_ key: String) throws -> ObjectWriting {
        try LocalObjectWriter(store: self, key: key)
    }

    func info(_ record: ObjectRecord, replicas: [Int]) -> ObjectInfo {
        ObjectInfo(key: record.key, size: record.size, sha256: Hex.encode(record.objectDigest),
                   createdMillis: record.createdMillis, replicas: replicas.sorted())
    }

    // MARK: opening replicas of one object

    /// Every replica of `key` opened and its record checked; the reference record is the one held
    /// by most replicas (ties: the lowest index). Replicas whose record disagrees are conflicts.
    struct ReplicaSet {
        var good: [ReplicaFile] = []
        var findings: [ReplicaFinding] = []
        var reference: ReplicaFile? { good.first }
    }

    func openReplicas(_ key: String) -> ReplicaSet {
        var set = ReplicaSet()
        var opened: [ReplicaFile] = []
        for i in replicaPaths.indices {
            if let problem = replicaProblem(i) { set.findings.append(problem); continue }
            switch ReplicaFile.open(replica: i, path: objectPath(i, key), key: key, faults: faults) {
            case .success(let f): opened.append(f)
            case .failure(let e): set.findings.append(e.finding)
            }
        }
        let vote = RecordVote.split(opened, recordBytes: { $0.recordBytes }, replica: { $0.replica })
        set.good = vote.agreeing
        for f in vote.disagreeing {
            set.findings.append(ReplicaFinding(replica: f.replica, path: f.path, problem: .conflict,
                                               detail: "its record (digest \(Hex.encode(f.record.objectDigest))) disagrees with the other replicas"))
        }
        set.findings.sort { $0.replica < $1.replica }
        return set
    }

    /// The error when no replica has a valid record.
    func noGoodReplica(_ key: String, _ findings: [ReplicaFinding]) -> StoreError {
        let allAbsent = findings.allSatisfy { $0.problem == .missing || $0.problem == .replicaUnavailable }
        if allAbsent, findings.contains(where: { $0.problem == .missing }) {
            return StoreError(.notFound, key: key, "no such object", findings: findings)
        }
        return StoreError(.unrecoverable, key: key, "no replica holds a good copy", findings: findings)
    }

    // MARK: get, stat, list, delete

    public func get(_ key: String) throws -> ObjectReading {
        try get(key, readRepair: true)
    }

    /// `readRepair: false` for a reader whose caller holds another key's stripe lock while it
    /// reads (rewrap and copy stream into a writer): repairing at the end of the stream would
    /// take this key's stripe lock too, and two stripe locks held at once can deadlock (the same
    /// stripe, flock'ed again from this process, or two processes crossing).
    public func get(_ key: String, readRepair: Bool) throws -> ObjectReading {
        try ObjectKey.validate(key)
        return try LocalObjectReader(store: self, key: key, readRepair: readRepair)
    }

    public func stat(_ key: String) throws -> ObjectInfo {
        try ObjectKey.validate(key)
        let set = openReplicas(key)
        guard let ref = set.reference else { throw noGoodReplica(key, set.findings) }
        return info(ref.record, replicas: set.good.map(\.replica))
    }

    public func list(prefix: String = "") throws -> [String] {
        var keys = Set<String>()
        for i in replicaPaths.indices where replicaProblem(i) == nil {
            let objects = replicaPaths[i] + "/" + Self.objectsDir
            for dir in Self.directoryEntries(objects) where dir.utf8.count == 2 {
                for name in Self.directoryEntries(objects + "/" + dir) where !name.hasPrefix(".") {
                    if let key = ObjectKey.key(fromFileName: name), key.hasPrefix(prefix), Self.fanOut(key) == dir {
                        keys.insert(key)
                    }
                }
            }
        }
        return keys.sorted()
    }

    /// Whether any object key satisfies `match`; stops at the first one (the catalog asks this
    /// only when its file is missing).
    public func hasObject(where match: (String) -> Bool) -> Bool {
        for i in replicaPaths.indices where replicaProblem(i) == nil {
            let objects = replicaPaths[i] + "/" + Self.objectsDir
            for dir in Self.directoryEntries(objects) where dir.utf8.count == 2 {
                for name in Self.directoryEntries(objects + "/" + dir) where !name.hasPrefix(".") {
                    if let key = ObjectKey.key(fromFileName: name), Self.fanOut(key) == dir, match(key) { return true }
                }
            }
        }
        return false
    }

    /// Whether any replica has a file for `key` (no record check: what a put's step 1 sees).
    public func anyReplicaHolds(_ key: String) -> Bool {
        replicaPaths.indices.contains { replicaProblem($0) == nil && access(objectPath($0, key), F_OK) == 0 }
    }

    public func delete(_ key: String) throws -> DeleteReport {
        try ObjectKey.validate(key)
        let lock = try FileLock.acquire(stripeLockPath(fanOut: Self.fanOut(key)))
        defer { withExtendedLifetime(lock) {} }
        // One replica per iteration, all at once: unlinking a large file frees its blocks, which
        // takes the file system a while on each replica's disk.
        enum Outcome { case removed, absent, removedButDirectoryNotSynced(ReplicaFinding), failed(ReplicaFinding) }
        let outcomes = ConcurrentResults<Outcome>(count: replicaPaths.count)
        let work = UncheckedSendable { (i: Int) -> Outcome in
            if let problem = self.replicaProblem(i) { return .failed(problem) }
            let path = self.objectPath(i, key)
            if let e = self.faults?(.remove, i, path) { return .failed(OSError.finding(replica: i, path: path, operation: "unlink", errno: e)) }
            if unlink(path) != 0 {
                let e = errno
                if e == ENOENT { return .absent }
                guard e == EISDIR else { return .failed(OSError.finding(replica: i, path: path, operation: "unlink", errno: e)) }
                // A directory in the replica file's place (unlink cannot remove it): moved aside.
                do { try self.moveDirectoryAside(i, key) } catch let f as ReplicaFailure { return .failed(f.finding) } catch {
                    return .failed(ReplicaFinding(replica: i, path: path, problem: .ioError, detail: "\(error)"))
                }
            }
            do { try AtomicFile.syncDirectory(self.objectDir(i, key)) } catch {
                return .removedButDirectoryNotSynced(ReplicaFinding(replica: i, path: path, problem: .ioError, detail: "fsync directory: \(error)"))
            }
            return .removed
        }
        DispatchQueue.concurrentPerform(iterations: replicaPaths.count) { i in outcomes.set(i, work.value(i)) }
        var removed: [Int] = []
        var failed: [ReplicaFinding] = []
        for (i, outcome) in outcomes.values.enumerated() {
            switch outcome {
            case .removed: removed.append(i)
            case .absent: break
            case .removedButDirectoryNotSynced(let f): removed.append(i); failed.append(f)
            case .failed(let f): failed.append(f)
            }
        }
        if removed.isEmpty && failed.isEmpty { throw StoreError(.notFound, key: key, "no such object") }
        return DeleteReport(key: key, removed: removed, failed: failed)
    }

    // MARK: repair

    /// Rewrites replica `target` of `key` from good replicas, verifying every chunk against the
    /// reference record. Under the key's stripe lock, it re-opens the sources (so an object deleted
    /// meanwhile is not resurrected) and skips a target that has become good.
    func repair(_ key: String, target: Int) throws -> Bool {
        let lock = try FileLock.acquire(stripeLockPath(fanOut: Self.fanOut(key)))
        defer { withExtendedLifetime(lock) {} }
        if let problem = replicaProblem(target) { throw ReplicaFailure(finding: problem) }
        let set = openReplicas(key)
        guard let ref = set.reference else { return false }
        if set.good.contains(where: { $0.replica == target }) {
            // The record is good; were the bytes? Verify them before deciding.
            if let f = set.good.first(where: { $0.replica == target }), verify(f, against: ref.record) == nil { return false }
        }
        var sources = set.good.filter { $0.replica != target }
        guard !sources.isEmpty else { return false }
        try ensureObjectDir(target, key)
        let w = try ReplicaWriter(replica: target, tempDir: tempDir(target), stripe: Self.fanOut(key), dir: objectDir(target, key),
                                  fileName: ObjectKey.fileName(key), faults: faults)
        for c in 0..<ref.record.chunkDigests.count {
            var written = false
            while !sources.isEmpty && !written {
                if let bytes = try? sources[0].readChunk(c), SHA256Hasher.hash(bytes) == ref.record.chunkDigests[c] {
                    try w.append(bytes)
                    written = true
                } else {
                    sources.removeFirst()
                }
            }
            guard written else { w.abort(); return false }
        }
        var footer = ByteWriter()
        footer.writeUInt32(UInt32(ref.recordBytes.count))
        footer.writeBytes(ObjectRecord.endMagic)
        try w.append(ref.recordBytes + footer.bytes)
        try w.sync()
        // rename(2) replaces a file or a symbolic link, but not a directory (EISDIR).
        var st = Glibc.stat()
        if lstat(objectPath(target, key), &st) == 0, st.st_mode & S_IFMT == S_IFDIR { try moveDirectoryAside(target, key) }
        try w.publish(replacing: true)
        return true
    }

    /// Moves a directory found in the place of replica `replica`'s file of `key` into the
    /// replica's `tmp/`, under a temp name of the key's stripe (the rename takes a non-empty
    /// directory whole), so the name is free for a repair or a delete; the stale-temp sweep
    /// removes the tree later. The caller holds the key's stripe lock.
    func moveDirectoryAside(_ replica: Int, _ key: String) throws {
        let path = objectPath(replica, key)
        let tmp = tempDir(replica)
        if mkdir(tmp, 0o700) != 0 && errno != EEXIST { throw ReplicaWriter.failure(replica, tmp, "mkdir", errno) }
        var rnd = [UInt8](repeating: 0, count: 8)
        for i in rnd.indices { rnd[i] = UInt8.random(in: 0...255) }
        let aside = tmp + "/." + Self.fanOut(key) + "-" + ObjectKey.fileName(key) + AtomicFile.tempMarker + "dir-"
            + rnd.map { String($0, radix: 16) }.joined()
        guard rename(path, aside) == 0 else { throw ReplicaWriter.failure(replica, path, "move the directory in its place aside", errno) }
        do {
            try AtomicFile.syncDirectory(tmp)
            try AtomicFile.syncDirectory(objectDir(replica, key))
        } catch {
            throw ReplicaFailure(finding: ReplicaFinding(replica: replica, path: path, problem: .ioError, detail: "fsync directory: \(error)"))
        }
    }

    /// Streams every chunk of a replica through its digest; nil when all is well.
    ///
    /// `objectDigest: false` checks the chunk digests only. That is the whole check when the
    /// record is in `consistentRecords`: replicas whose chunks all match one record hold the same
    /// bytes (SHA-256's collision resistance, which every chunk check already rests on), so
    /// whether those bytes hash to the record's object digest is a property of the record, and
    /// it was seen to hold once (issue 17: one SHA-256 pass per replica, not two).
    func verify(_ f: ReplicaFile, against record: ObjectRecord, objectDigest: Bool = true) -> ReplicaFinding? {
        let hasher = objectDigest ? SHA256Hasher() : nil
        for c in 0..<record.chunkDigests.count {
            let bytes: [UInt8]
            do { bytes = try f.readChunk(c) } catch let e as ReplicaFailure { return e.finding } catch {
                return ReplicaFinding(replica: f.replica, path: f.path, problem: .ioError, chunk: c, detail: "\(error)")
            }
            guard SHA256Hasher.hash(bytes) == record.chunkDigests[c] else {
                return ReplicaFinding(replica: f.replica, path: f.path, problem: .chunkMismatch, chunk: c,
                                      detail: "chunk \(c) does not match its digest")
            }
            hasher?.update(bytes)
        }
        if let hasher {
            guard hasher.finalize() == record.objectDigest else {
                return ReplicaFinding(replica: f.replica, path: f.path, problem: .digestMismatch, detail: "object digest does not match")
            }
            consistentRecords.insert(f.recordBytes)
        }
        return nil
    }

    /// The chunks of several replicas against one record, chunk by chunk, as `verify(_:against:
    /// objectDigest: false)` of each: the same findings, in `files` order. A chunk whose bytes
    /// equal those of a replica's chunk already hashed takes that chunk's verdict (equal bytes,
    /// equal digest), so replicas that agree cost one SHA-256 pass and a memcmp each instead of
    /// a pass each (issue 17: 88 MB less hashing in a 3-replica verify).
    ///
    /// With `verified`, the chunks a reader beside this check has already matched to their
    /// digests under this same record (`VerifiedChunkFeed`) stand for a chunk hashed here: equal
    /// bytes are good without hashing. Other bytes, and chunks the feed does not have, are
    /// hashed as above.
    func verifyChunksTogether(_ files: [ReplicaFile], against record: ObjectRecord,
                              verified: VerifiedChunkFeed? = nil) -> [ReplicaFinding] {
        var found = [ReplicaFinding?](repeating: nil, count: files.count)
        var live = Array(files.indices)
        for c in 0..<record.chunkDigests.count where !live.isEmpty {
            var hashed: [(bytes: [UInt8], good: Bool)] = []
            if let checked = verified?.take(c) { hashed.append((checked, true)) }
            var next: [Int] = []
            for i in live {
                let f = files[i]
                let bytes: [UInt8]
                do { bytes = try f.readChunk(c) } catch let e as ReplicaFailure { found[i] = e.finding; continue } catch {
                    found[i] = ReplicaFinding(replica: f.replica, path: f.path, problem: .ioError, chunk: c, detail: "\(error)")
                    continue
                }
                let good: Bool
                if let same = hashed.first(where: { Self.sameBytes($0.bytes, bytes) }) {
                    good = same.good
                } else {
                    good = SHA256Hasher.hash(bytes) == record.chunkDigests[c]
                    hashed.append((bytes, good))
                }
                if good {
                    next.append(i)
                } else {
                    found[i] = ReplicaFinding(replica: f.replica, path: f.path, problem: .chunkMismatch, chunk: c,
                                              detail: "chunk \(c) does not match its digest")
                }
            }
            live = next
        }
        return found.compactMap { $0 }
    }

    static func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 } }
    }

    /// Every replica of a set against the reference record: the object digest is computed on
    /// the first replica only (unless the record is already known consistent); if that replica
    /// fails on a chunk, the next replica whose chunks all matched computes it instead, and so
    /// on, so the findings are exactly those of checking every replica in full. The first
    /// `parallel` runs the replicas on their own threads (each its own file descriptor).
    /// (Chunks only, beside a reader that checks the object digest: `verifyChunksTogether`.)
    func verifyAll(_ files: [ReplicaFile], against ref: ReplicaFile, parallel: Bool) -> [ReplicaFinding] {
        let record = ref.record
        let known = consistentRecords.contains(ref.recordBytes)
        let results = ConcurrentResults<ReplicaFinding?>(count: files.count)
        // Iteration i touches only replica file i and the store's immutable settings (the memo locks).
        let work = UncheckedSendable { (i: Int) in self.verify(files[i], against: record, objectDigest: !known && i == 0) }
        if parallel {
            DispatchQueue.concurrentPerform(iterations: files.count) { i in results.set(i, work.value(i)) }
        } else {
            for i in files.indices { results.set(i, work.value(i)) }
        }
        var found = results.values
        var consistent = known || (!files.isEmpty && found[0] == nil)
        if !consistent {
            // Replica 0 could not tell (a bad chunk) or its digest differed: the others whose
            // chunks matched must each answer for themselves, as they did before.
            for i in files.indices.dropFirst() where found[i] == nil && !consistent {
                found[i] = verify(files[i], against: record, objectDigest: true)
                consistent = found[i] == nil
            }
        }
        return found.compactMap { $0 }
    }

    // MARK: temps

    /// Removes temp files of writers that are gone, from each replica's `tmp/` directory (cheap:
    /// it holds only temps). A temp is removed only while its stripe lock can be taken, so a live
    /// writer's temp is never touched.
    public func removeStaleTemps() -> [String] { sweepTemps().removed }

    /// `removeStaleTemps`, and the temps it could not remove (a directory moved aside by
    /// `moveDirectoryAside` that holds something undeletable), each with why: fsck reports them.
    func sweepTemps() -> (removed: [String], failed: [ReplicaFinding]) {
        var removed: [String] = []
        var failed: [ReplicaFinding] = []
        for i in replicaPaths.indices where replicaProblem(i) == nil {
            if let r = try? AtomicFile.removeStaleTemps(in: replicaPaths[i]) { removed += r.map { replicaPaths[i] + "/" + $0 } }
            let tmp = tempDir(i)
            var any = false
            for name in Self.directoryEntries(tmp) where name.hasPrefix(".") && name.contains(AtomicFile.tempMarker) {
                let stripe = String(name.dropFirst().prefix(2))
                guard stripe.utf8.count == 2, Hex.decode(stripe) != nil,
                      let lock = try? FileLock.tryAcquire(stripeLockPath(fanOut: stripe)) else { continue }
                let path = tmp + "/" + name
                if unlink(path) == 0 {
                    removed.append(path); any = true
                } else if errno == EISDIR {
                    if let why = Self.removeTree(path) {
                        failed.append(ReplicaFinding(replica: i, path: path, problem: .ioError,
                                                     detail: "a directory moved out of a replica file's place cannot be removed: \(why)"))
                    } else {
                        removed.append(path); any = true
                    }
                }
                withExtendedLifetime(lock) {}
            }
            if any { try? AtomicFile.syncDirectory(tmp) }
        }
        return (removed.sorted(), failed)
    }

    /// How deep `removeTree` goes (one descriptor per level); a deeper tree is reported.
    static let maxTreeDepth = 64

    /// Removes a directory tree without following symbolic links (a link inside is removed, not
    /// what it names); nil when it is gone, else what failed.
    static func removeTree(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return "open \(path): \(String(cString: strerror(errno)))" }
        if let why = emptyTree(fd, path, depth: 0) { return why }
        guard rmdir(path) == 0 else { return "rmdir \(path): \(String(cString: strerror(errno)))" }
        return nil
    }

    /// Removes everything in the directory open as `fd` (and closes it).
    private static func emptyTree(_ fd: Int32, _ path: String, depth: Int) -> String? {
        guard let d = fdopendir(fd) else { let e = errno; close(fd); return "opendir \(path): \(String(cString: strerror(e)))" }
        defer { closedir(d) }
        guard depth < maxTreeDepth else { return "\(path) is more than \(maxTreeDepth) directories deep" }
        // Names as raw bytes (any name, UTF-8 or not), read in full before anything is removed.
        var names: [[CChar]] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }).map { CChar(bitPattern: $0) } + [0] }
            if name != [46, 0] && name != [46, 46, 0] { names.append(name) }
        }
        for name in names {
            let shown = path + "/" + String(decoding: name.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if unlinkat(fd, name, 0) == 0 { continue }
            let e = errno
            guard e == EISDIR else { return "unlink \(shown): \(String(cString: strerror(e)))" }
            let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard sub >= 0 else { return "open \(shown): \(String(cString: strerror(errno)))" }
            // Never into another file system (a mount below the moved directory): O_NOFOLLOW
            // does not stop at a mount point, and emptying it would delete what is not ours.
            var parent = Glibc.stat(), child = Glibc.stat()
            guard fstat(fd, &parent) == 0, fstat(sub, &child) == 0, parent.st_dev == child.st_dev else {
                close(sub)
                return "\(shown) is a mount point or cannot be examined; not removed"
            }
            if let why = emptyTree(sub, shown, depth: depth + 1) { return why }
            guard unlinkat(fd, name, AT_REMOVEDIR) == 0 else { return "rmdir \(shown): \(String(cString: strerror(errno)))" }
        }
        return nil
    }

    /// The thorough sweep of fsck: also temp-like files inside the fan-out directories (left by
    /// hand, or by other tools), each under its stripe lock. Walks every object directory.
    func removeStrayTemps() -> [String] {
        var removed: [String] = []
        for i in replicaPaths.indices where replicaProblem(i) == nil {
            let objects = replicaPaths[i] + "/" + Self.objectsDir
            for dir in Self.directoryEntries(objects) where dir.utf8.count == 2 {
                let names = Self.directoryEntries(objects + "/" + dir)
                guard names.contains(where: { $0.hasPrefix(".") && $0.contains(AtomicFile.tempMarker) }) else { continue }
                guard let lock = try? FileLock.tryAcquire(stripeLockPath(fanOut: dir)) else { continue }
                if let r = try? AtomicFile.removeStaleTemps(in: objects + "/" + dir) {
                    removed += r.map { objects + "/" + dir + "/" + $0 }
                }
                withExtendedLifetime(lock) {}
            }
        }
        return removed.sorted()
    }

    static func directoryEntries(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// A verified, fail-over stream over the replicas of one object (spec section 5.6).
public final class LocalObjectReader: ObjectReading {
    public let info: ObjectInfo
    /// What was wrong with replicas met so far (missing, damaged, chunks that failed).
    public private(set) var findings: [ReplicaFinding]
    /// Replicas rewritten by read-repair at the end of the stream.
    public private(set) var repaired: [Int] = []
    public private(set) var repairFailures: [ReplicaFinding] = []

    private let store: LocalObjectStore
    private let key: String
    private let record: ObjectRecord
    private var candidates: [ReplicaFile]
    private var chunk = 0
    private let hasher = SHA256Hasher()
    /// False when the store has seen this record's object digest match its chunks: then every
    /// chunk matching its digest is the whole check (see `LocalObjectStore.verify`).
    private let hashesObject: Bool
    private let recordBytes: [UInt8]
    private var finished = false
    private var failure: StoreError?

    private let readRepair: Bool

    /// Where the chunks this reader has checked are lent to a replica check beside it (set
    /// before the first read); closed when the stream ends, fails or the reader goes.
    public var verifiedChunks: VerifiedChunkFeed? {
        didSet { verifiedChunks?.recordBytes = recordBytes }
    }

    init(store: LocalObjectStore, key: String, readRepair: Bool = true) throws {
        self.store = store
        self.key = key
        self.readRepair = readRepair
        let set = store.openReplicas(key)
        guard let ref = set.reference else { throw store.noGoodReplica(key, set.findings) }
        record = ref.record
        recordBytes = ref.recordBytes
        hashesObject = !store.consistentRecords.contains(ref.recordBytes)
        candidates = set.good
        findings = set.findings
        info = store.info(ref.record, replicas: set.good.map(\.replica))
        streamingReplica = set.good.first?.replica
    }

    /// The replica the stream starts on: every chunk of it is checked against the record unless
    /// a finding for it says where it failed.
    public let streamingReplica: Int?

    public func read() throws -> [UInt8]? {
        if let failure { throw failure }
        if finished { return nil }
        if chunk == record.chunkDigests.count { try finish(); return nil }
        while let current = candidates.first {
            do {
                let bytes = try current.readChunk(chunk)
                if SHA256Hasher.hash(bytes) == record.chunkDigests[chunk] {
                    if hashesObject { hasher.update(bytes) }
                    verifiedChunks?.offer(chunk, bytes)
                    chunk += 1
                    return bytes
                }
                findings.append(ReplicaFinding(replica: current.replica, path: current.path, problem: .chunkMismatch,
                                               chunk: chunk, detail: "chunk \(chunk) does not match its digest"))
            } catch let e as ReplicaFailure {
                findings.append(e.finding)
            }
            candidates.removeFirst()
        }
        let e = StoreError(.unrecoverable, key: key, "chunk \(chunk): no replica holds a good copy",
                           findings: findings.sorted { $0.replica < $1.replica })
        failure = e
        verifiedChunks?.close()
        throw e
    }

    deinit { verifiedChunks?.close() }

    private func finish() throws {
        finished = true
        verifiedChunks?.close()
        if hashesObject {
            guard hasher.finalize() == record.objectDigest else {
                let e = StoreError(.unrecoverable, key: key, "object digest does not match its record", findings: findings)
                failure = e
                throw e
            }
            store.consistentRecords.insert(recordBytes)
        }
        guard store.readRepair, readRepair else { return }
        let bad = Set(findings.filter { $0.problem != .replicaUnavailable }.map(\.replica))
        candidates = [] // close files before rewriting
        for target in bad.sorted() {
            do {
                if try store.repair(key, target: target) { repaired.append(target) }
            } catch let e as ReplicaFailure {
                repairFailures.append(e.finding)
            } catch {
                repairFailures.append(ReplicaFinding(replica: target, path: store.objectPath(target, key), problem: .ioError, detail: "\(error)"))
            }
        }
    }
}

/// A put in progress (spec section 5.4): holds the key's stripe lock from creation to commit or
/// abort; `write` as often as needed, then `commit` returns once the quorum is durable. Dropping
/// an uncommitted writer aborts it, so no partial object is ever published.
public final class LocalObjectWriter: ObjectWriting {
    public let key: String
    private let store: LocalObjectStore
    private var lock: FileLock?
    private var writers: [ReplicaWriter] = []
    private var failed: [ReplicaFinding] = []
    /// The chunk digests and the running object digest (owned by `digestLane` while it works).
    private final class Digests: @unchecked Sendable {
        let hasher = SHA256Hasher()
        var chunks: [[UInt8]] = []
        func add(_ chunk: [UInt8]) {
            chunks.append(SHA256Hasher.hash(chunk))
            hasher.update(chunk)
        }
    }
    private let digests = Digests()
    private var size: UInt64 = 0
    private var buffer: [UInt8] = []
    private let chunkSize = ObjectRecord.defaultChunkSize
    private var finished = false
    private var failure: StoreError?

    init(store: LocalObjectStore, key: String) throws {
        try ObjectKey.validate(key)
        self.store = store
        self.key = key
        lock = try FileLock.acquire(store.stripeLockPath(fanOut: LocalObjectStore.fanOut(key)))
        for i in store.replicaPaths.indices where access(store.objectPath(i, key), F_OK) == 0 {
            lock = nil
            throw StoreError(.alreadyExists, key: key, replica: i, path: store.objectPath(i, key), "the key already holds an object")
        }
        for i in store.replicaPaths.indices {
            if let problem = store.replicaProblem(i) { failed.append(problem); continue }
            do {
                try store.ensureObjectDir(i, key)
                writers.append(try ReplicaWriter(replica: i, tempDir: store.tempDir(i), stripe: LocalObjectStore.fanOut(key),
                                                 dir: store.objectDir(i, key), fileName: ObjectKey.fileName(key), faults: store.faults))
            } catch let e as ReplicaFailure {
                failed.append(e.finding)
            }
        }
        buffer.reserveCapacity(chunkSize)
        try checkQuorum("create")
    }

    deinit { abort() }

    private func checkQuorum(_ stage: String) throws {
        guard writers.count >= store.config.writeQuorum else {
            let e = StoreError(.quorumNotReached, key: key,
                               "\(stage): \(writers.count) of \(store.replicaPaths.count) replicas writable, the write quorum is \(store.config.writeQuorum)",
                               findings: failed.sorted { $0.replica < $1.replica })
            fail(e)
            throw e
        }
    }

    private func fail(_ e: StoreError) {
        failure = e
        abort()
    }

    private func appendAll(_ bytes: [UInt8], background: Bool = false) throws {
        writers = writers.filter { w in
            do {
                if background { try w.appendInBackground(bytes) } else { try w.append(bytes) }
                return true
            } catch let e as ReplicaFailure {
                failed.append(e.finding); w.abort(); return false
            } catch { return false }
        }
        try checkQuorum("write")
    }

    /// Waits for the replicas' background writes and the digests (see `flush`); a replica whose
    /// write failed is dropped as `appendAll` drops it.
    private func drainBackground() throws {
        digestLane?.sync {}
        writers = writers.filter { w in
            do { try w.drainBackground(); return true } catch let e as ReplicaFailure {
                failed.append(e.finding); w.abort(); return false
            } catch { return false }
        }
        try checkQuorum("write")
    }

    /// The chunk digests and the object digest run on their own serial queue, in chunk order,
    /// at most `ReplicaWriter.pendingChunks` chunks behind (issue 17: off the caller's thread).
    private var digestLane: DispatchQueue?
    private var digestSlots: DispatchSemaphore?

    /// A full chunk from `write`: digested and written in the background; the chunk buffer is
    /// shared by the queues (a fresh one is allocated for the next chunk, no bytes are copied).
    private func flush() throws {
        if digestLane == nil {
            digestLane = DispatchQueue(label: "hsmbackup-object-digest")
            digestSlots = DispatchSemaphore(value: ReplicaWriter.pendingChunks)
        }
        let slots = digestSlots!
        slots.wait()
        // The queue is the only user of `digests` until `drainBackground`; it does not hold
        // the writer, so a writer dropped mid-stream is released (and aborts) on its own thread.
        let job = UncheckedSendable((digests, buffer))
        digestLane!.async {
            let (d, chunk) = job.value
            d.add(chunk)
            slots.signal()
        }
        try appendAll(buffer, background: true)
        buffer = []
        buffer.reserveCapacity(chunkSize)
    }

    /// The last, partial chunk at commit: in line, after everything queued.
    private func flushLast() throws {
        digests.add(buffer)
        try appendAll(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    private func checkOpen() throws {
        if let failure { throw failure }
        guard !finished else { throw StoreError(.invalidState, key: key, "the writer was already committed or aborted") }
    }

    public func write(_ bytes: [UInt8]) throws {
        try checkOpen()
        size += UInt64(bytes.count)
        guard size <= ObjectRecord.maxObjectSize else {
            let e = StoreError(.limitExceeded, key: key, "object larger than \(ObjectRecord.maxObjectSize) bytes")
            fail(e)
            throw e
        }
        var rest = bytes[...]
        while !rest.isEmpty {
            let n = min(chunkSize - buffer.count, rest.count)
            buffer.append(contentsOf: rest.prefix(n))
            rest = rest.dropFirst(n)
            if buffer.count == chunkSize { try flush() }
        }
    }

    public func commit() throws -> PutReport {
        try checkOpen()
        try drainBackground()
        if !buffer.isEmpty { try flushLast() }
        let record = ObjectRecord(key: key, size: size, createdMillis: store.clock.nowMillis(), chunkSize: chunkSize,
                                  chunkDigests: digests.chunks, objectDigest: digests.hasher.finalize())
        try appendAll(try record.encodeWithFooter())
        // The replicas' fsyncs wait on their disks at once, not one after another. Iteration i
        // touches only writer i (its own file descriptor); the fault hook is Sendable.
        let syncing = writers
        let outcomes = ConcurrentResults<ReplicaFinding?>(count: syncing.count)
        let work = UncheckedSendable { (i: Int) -> ReplicaFinding? in
            do { try syncing[i].sync(); return nil } catch let e as ReplicaFailure { return e.finding } catch {
                return ReplicaFinding(replica: syncing[i].replica, path: syncing[i].tempPath, problem: .ioError, detail: "fsync: \(error)")
            }
        }
        DispatchQueue.concurrentPerform(iterations: syncing.count) { i in outcomes.set(i, work.value(i)) }
        writers = []
        for (w, finding) in zip(syncing, outcomes.values) {
            if let finding { failed.append(finding); w.abort() } else { writers.append(w) }
        }
        try checkQuorum("fsync")
        var published: [Int] = []
        // Replicas whose file got its name but whose directory fsync failed: not durable, so not
        // written, yet a whole object under the key until removed.
        var linkedOnly: [Int] = []
        for w in writers {
            do { try w.publish(replacing: false); published.append(w.replica) } catch let e as ReplicaFailure {
                failed.append(e.finding)
                if w.linked { linkedOnly.append(w.replica) }
                w.abort()
            }
        }
        guard published.count >= store.config.writeQuorum else {
            // Undo: a failed put leaves no object behind (spec 5.4 step 6), on any replica.
            for i in published + linkedOnly { unlink(store.objectPath(i, key)); try? AtomicFile.syncDirectory(store.objectDir(i, key)) }
            let e = StoreError(.quorumNotReached, key: key,
                               "publish: \(published.count) of \(store.replicaPaths.count) replicas durable, the write quorum is \(store.config.writeQuorum)",
                               findings: failed.sorted { $0.replica < $1.replica })
            fail(e)
            throw e
        }
        finished = true
        writers = []
        lock = nil
        return PutReport(info: store.info(record, replicas: published), written: published,
                         failed: failed.sorted { $0.replica < $1.replica })
    }

    /// Removes every temp file; nothing is published. Safe to call more than once.
    public func abort() {
        digestLane?.sync {}
        for w in writers { w.abort() }
        writers = []
        finished = true
        lock = nil
    }
}

/// stat(2), following symbolic links (inside `LocalObjectStore`, `stat` names the object stat).
private func followingStat(_ path: String, _ st: inout Glibc.stat) -> Int32 { stat(path, &st) }
