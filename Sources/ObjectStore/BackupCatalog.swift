// The catalog of backups: one file, replaced atomically under an flock, listing every backup and
// every retention policy; always rebuildable from the metadata objects (spec/FORMAT.md 5.8).
//
//   catalog.bin = "HSMBCATL" || version u16 (=1) || writeCount u64
//                 || clusterCount u32 || clusterId (u16-prefixed)[clusterCount]   (strictly ascending)
//                 || entryCount u32
//                 || index[entryCount]: createdMillis u64 || state u8 || clusterOrdinal u32 || entryLength u32
//                 || entry[entryCount]                           (backup ids strictly ascending)
//                 || policyCount u32 || policy[policyCount]      (cluster ids strictly ascending)
//                 || digest (32) = SHA-256 of every byte before it
// The fixed-width index lets a listing by cluster, state or time decode only the entries it returns.
#if canImport(Glibc)
import Glibc
#endif
import BackupCrypto
import ByteCoding
import Durability

/// The whole catalog in memory.
public struct CatalogSnapshot: Equatable, Sendable {
    public static let magic: [UInt8] = Array("HSMBCATL".utf8)
    public static let version: UInt16 = 1
    public static let maxEntries = 10_000_000
    public static let maxPolicies = 1_000_000
    static let indexRecordLength = 17

    public var writeCount: UInt64 = 0
    public var entries: [String: BackupEntry] = [:]
    public var policies: [String: RetentionPolicy] = [:]

    public init() {}

    public func encode() throws -> [UInt8] {
        let ids = entries.keys.sorted(by: BackupEntry.utf8Less)
        let clusters = Set(entries.values.map(\.clusterId)).sorted(by: BackupEntry.utf8Less)
        var ordinal: [String: Int] = [:]
        for (i, c) in clusters.enumerated() { ordinal[c] = i }
        var body = ByteWriter(capacity: entries.count * 160)
        var index = ByteWriter(capacity: entries.count * Self.indexRecordLength)
        for id in ids {
            let e = entries[id]!
            let before = body.count
            try e.encode(into: &body)
            index.writeUInt64(e.createdMillis)
            index.writeUInt8(e.state.code)
            index.writeUInt32(UInt32(ordinal[e.clusterId]!))
            index.writeUInt32(UInt32(body.count - before))
        }
        var w = ByteWriter(capacity: 64 + index.count + body.count)
        w.writeBytes(Self.magic)
        w.writeUInt16(Self.version)
        w.writeUInt64(writeCount)
        w.writeUInt32(UInt32(clusters.count))
        for c in clusters { try w.writeString16(c, "cluster id", limit: BackupEntry.maxNameLength) }
        w.writeUInt32(UInt32(ids.count))
        w.writeBytes(index.bytes)
        w.writeBytes(body.bytes)
        w.writeUInt32(UInt32(policies.count))
        for id in policies.keys.sorted(by: BackupEntry.utf8Less) { try policies[id]!.encode(into: &w) }
        w.writeBytes(SHA256Hasher.hash(w.bytes))
        return w.bytes
    }

    /// One index record.
    struct IndexRecord {
        let created: UInt64
        let state: UInt8
        let cluster: Int
        let offset: Int
        let length: Int
    }

    /// The parsed header and index; `reader` stands after the entries.
    struct Layout {
        var writeCount: UInt64
        var clusters: [String]
        var index: [IndexRecord]
        var reader: ByteReader
    }

    static func layout(_ bytes: [UInt8]) throws -> Layout {
        guard bytes.count >= 32 else { throw ByteCodingError(.truncated, field: "catalog", offset: 0, "shorter than its digest") }
        let body = bytes[0..<(bytes.count - 32)]
        guard SHA256Hasher.hash(body) == Array(bytes[(bytes.count - 32)...]) else {
            throw ByteCodingError(.unexpectedValue, field: "catalog digest", offset: bytes.count - 32, "digest does not match")
        }
        var r = ByteReader(body)
        try r.expect(magic, "catalog magic")
        let at = r.offset
        let v = try r.readUInt16("catalog version")
        guard v == version else { throw ByteCodingError(.unexpectedValue, field: "catalog version", offset: at, "unknown version \(v)") }
        let writeCountAt = r.offset
        let writeCount = try r.readUInt64("write count")
        // The next save adds one: a count no writer reaches is refused, so that never overflows.
        guard writeCount < UInt64.max else { throw ByteCodingError(.unexpectedValue, field: "write count", offset: writeCountAt, "past the last count a writer makes") }
        let clusterCount = try r.readCount32("cluster count", limit: maxEntries)
        var clusters: [String] = []
        clusters.reserveCapacity(clusterCount)
        for _ in 0..<clusterCount {
            let at = r.offset
            let c = try r.readString16("cluster id", limit: BackupEntry.maxNameLength)
            if let p = clusters.last, !BackupEntry.utf8Less(p, c) {
                throw ByteCodingError(.unexpectedValue, field: "cluster id", offset: at, "cluster table not in ascending order")
            }
            clusters.append(c)
        }
        let count = try r.readCount32("entry count", limit: maxEntries)
        let indexOffset = r.offset
        guard count * indexRecordLength <= r.remaining else {
            throw ByteCodingError(.truncated, field: "index", offset: indexOffset, "\(count) index records do not fit")
        }
        var index: [IndexRecord] = []
        index.reserveCapacity(count)
        var entryOffset = indexOffset + count * indexRecordLength
        for _ in 0..<count {
            let created = try r.readUInt64("index created")
            let stateAt = r.offset
            let state = try r.readUInt8("index state")
            guard BackupState(code: state) != nil else { throw ByteCodingError(.unexpectedValue, field: "index state", offset: stateAt, "unknown state") }
            let clusterAt = r.offset
            let cluster = Int(try r.readUInt32("index cluster"))
            guard cluster < clusters.count else { throw ByteCodingError(.unexpectedValue, field: "index cluster", offset: clusterAt, "no such cluster ordinal") }
            let length = Int(try r.readUInt32("index length"))
            index.append(IndexRecord(created: created, state: state, cluster: cluster, offset: entryOffset, length: length))
            entryOffset += length
        }
        let entriesStart = r.offset
        guard entryOffset - entriesStart <= r.remaining else {
            throw ByteCodingError(.truncated, field: "entries", offset: entriesStart, "index lengths exceed the file")
        }
        _ = try r.readSlice(entryOffset - entriesStart, "entries")
        return Layout(writeCount: writeCount, clusters: clusters, index: index, reader: r)
    }

    /// Decodes the entry of one index record and checks that it agrees with the index.
    static func entry(_ bytes: [UInt8], _ rec: IndexRecord, clusters: [String]) throws -> BackupEntry {
        var r = ByteReader(bytes[rec.offset..<(rec.offset + rec.length)], baseOffset: rec.offset)
        let e = try BackupEntry.parse(&r)
        try r.expectEnd("catalog entry")
        guard e.createdMillis == rec.created, e.state.code == rec.state, e.clusterId == clusters[rec.cluster] else {
            throw ByteCodingError(.unexpectedValue, field: "catalog entry", offset: rec.offset, "entry disagrees with its index record")
        }
        return e
    }

    public static func parse(_ bytes: [UInt8]) throws -> CatalogSnapshot {
        var l = try layout(bytes)
        var s = CatalogSnapshot()
        s.writeCount = l.writeCount
        s.entries.reserveCapacity(l.index.count)
        var previous: String?
        var used = Set<Int>()
        for rec in l.index {
            let e = try entry(bytes, rec, clusters: l.clusters)
            if let p = previous, !BackupEntry.utf8Less(p, e.backupId) {
                throw ByteCodingError(.unexpectedValue, field: "backup id", offset: rec.offset, "entries not in ascending order")
            }
            previous = e.backupId
            used.insert(rec.cluster)
            s.entries[e.backupId] = e
        }
        guard used.count == l.clusters.count else {
            throw ByteCodingError(.unexpectedValue, field: "cluster table", offset: 0, "cluster table lists unused clusters")
        }
        let pcount = try l.reader.readCount32("policy count", limit: maxPolicies)
        previous = nil
        for _ in 0..<pcount {
            let at = l.reader.offset
            let p = try RetentionPolicy.parse(&l.reader)
            // Days 0 marks a removed policy in policy objects; the catalog never lists one.
            guard p.days != 0 else { throw ByteCodingError(.unexpectedValue, field: "retention days", offset: at, "a removed policy in the catalog") }
            if let q = previous, !BackupEntry.utf8Less(q, p.clusterId) {
                throw ByteCodingError(.unexpectedValue, field: "cluster id", offset: at, "policies not in ascending order")
            }
            previous = p.clusterId
            s.policies[p.clusterId] = p
        }
        try l.reader.expectEnd("catalog")
        return s
    }

    /// The fast path of listing: filters on the index, decodes only the entries that match.
    public static func query(_ bytes: [UInt8], _ q: CatalogQuery) throws -> [BackupEntry] {
        try q.validate()
        let l = try layout(bytes)
        let cluster: Int?
        if let c = q.clusterId {
            guard let i = l.clusters.firstIndex(of: c) else { return [] }
            cluster = i
        } else {
            cluster = nil
        }
        let states = q.states.map { Set($0.map(\.code)) }
        var matches: [IndexRecord] = []
        for rec in l.index {
            if let c = cluster, rec.cluster != c { continue }
            if let s = states, !s.contains(rec.state) { continue }
            if let f = q.createdFromMillis, rec.created < f { continue }
            if let b = q.createdBeforeMillis, rec.created >= b { continue }
            matches.append(rec)
        }
        // Creation time, then backup id (= file order); sorted and limited before decoding.
        matches.sort { $0.created != $1.created ? $0.created < $1.created : $0.offset < $1.offset }
        if let limit = q.limit, matches.count > limit { matches.removeLast(matches.count - limit) }
        var out: [BackupEntry] = []
        out.reserveCapacity(matches.count)
        for rec in matches { out.append(try entry(bytes, rec, clusters: l.clusters)) }
        return out
    }
}

/// What to list. Nil fields match everything; results are ordered by creation time, then id.
public struct CatalogQuery: Sendable {
    public var clusterId: String?
    public var states: Set<BackupState>?
    public var createdFromMillis: UInt64?
    public var createdBeforeMillis: UInt64?
    public var limit: Int?

    public init(clusterId: String? = nil, states: Set<BackupState>? = nil, createdFromMillis: UInt64? = nil,
                createdBeforeMillis: UInt64? = nil, limit: Int? = nil) {
        self.clusterId = clusterId
        self.states = states
        self.createdFromMillis = createdFromMillis
        self.createdBeforeMillis = createdBeforeMillis
        self.limit = limit
    }
}

/// A new backup as the facade describes it.
public struct NewBackup: Sendable {
    public var backupId: String?
    public var clusterId: String
    public var hsmId: String
    public var manufacturer: String
    public var tags: [String: String]
    public var neverExpires: Bool
    /// The creation time to record (e.g. the archive's own); default: the catalog's clock.
    public var createdMillis: UInt64?

    public init(backupId: String? = nil, clusterId: String, hsmId: String, manufacturer: String,
                tags: [String: String] = [:], neverExpires: Bool = false, createdMillis: UInt64? = nil) {
        self.createdMillis = createdMillis
        self.backupId = backupId
        self.clusterId = clusterId
        self.hsmId = hsmId
        self.manufacturer = manufacturer
        self.tags = tags
        self.neverExpires = neverExpires
    }
}

/// A disagreement between the catalog and the objects, found by `check()`.
public struct CatalogFinding: Codable, Equatable, Sendable {
    public enum Problem: String, Codable, Sendable {
        case catalogDamaged, metadataMissing, metadataUnreadable, staleEntry, notInCatalog,
             archiveMissing, archiveNotPurged, orphanArchive
    }
    public let backupId: String
    public let problem: Problem
    public let detail: String
}

/// What `recover` did for one backup.
public struct RecoveryAction: Codable, Equatable, Sendable {
    public enum Action: String, Codable, Sendable {
        /// An abandoned create whose archive was whole became READY.
        case finished
        /// An abandoned create was removed (archive, entry, metadata).
        case rolledBack
        /// The catalog took a newer metadata generation (a change killed before its catalog write).
        case adoptedMetadata
        /// An archive object that was not the backup's archive (or of a DELETED backup) was removed.
        case removedArchive
        /// Left alone: a writer may be alive, or a replica refused; the next fsck retries.
        case skipped
    }
    public let backupId: String
    public let action: Action
    public let detail: String
    /// For `skipped`: true when a live writer holds the backup's lock (nothing is wrong; the
    /// next fsck retries), false when recovery could not settle the backup (a replica refused).
    public var liveWriter = false

    /// Whether this action leaves something `fsck` must report: skipped, not for a live writer.
    public var needsAttention: Bool { action == .skipped && !liveWriter }
}

public struct ReindexReport: Codable, Sendable {
    public var entries = 0
    public var policies = 0
    /// Metadata objects that could not be read or parsed (an older generation was used if any).
    public var unreadable: [String] = []
    /// Archive objects with no metadata object (not added to the catalog).
    public var orphanArchives: [String] = []
}

public final class BackupCatalog {
    public let store: any ReplicatedStorage
    public let clock: StoreClock
    /// How long a deleted backup can be restored before purge removes it.
    public var recoveryWindowMillis: UInt64 = 7 * Millis.day

    public static let directory = LocalObjectStore.catalogDirectory
    public static let fileName = LocalObjectStore.catalogFileName

    /// Where the catalog is (a file of a local store, objects of an S3 store).
    public var path: String { store.catalogLocation }
    var lockPath: String { store.catalogLockPath }

    public init(store: any ReplicatedStorage, clock: StoreClock? = nil) throws {
        self.store = store
        self.clock = clock ?? store.clock
        try store.prepareCatalog()
        // A store gets its (empty) catalog file before its first metadata object can exist, so a
        // kill in the first change leaves a catalog to recover into, and from then on a missing
        // file is damage (spec 5.8). Done once, when the file is absent and nothing needs it.
        if !store.catalogExists(), let lock = try? FileLock.acquire(lockPath) {
            if !store.catalogExists(), !holdsCatalogObjects(), allReplicasAvailable { try? save(CatalogSnapshot()) }
            withExtendedLifetime(lock) {}
        }
    }

    /// A store with an unavailable replica cannot tell that it holds no backup (their metadata
    /// may be on that disk alone), so it neither creates an empty catalog nor reads a missing one
    /// as empty.
    var allReplicasAvailable: Bool { (0..<store.replicaCount).allSatisfy { store.replicaStatus($0) == nil } }

    /// Whether any metadata or policy object exists (stops at the first).
    func holdsCatalogObjects() -> Bool {
        store.hasObject { key in
            let parts = key.split(separator: "/")
            guard parts.count == 3 else { return false }
            return (parts[0] == "backups" && Self.generation(parts[2], prefix: "meta-") != nil)
                || (parts[0] == "clusters" && Self.generation(parts[2], prefix: "policy-") != nil)
        }
    }

    public static func archiveKey(_ backupId: String) -> String { "backups/\(backupId)/archive" }
    /// The archive a rewrap writes (`archive-g<n>`, n the entry's generation after the switch-over).
    public static func archiveKey(_ backupId: String, generation: UInt64) -> String { "backups/\(backupId)/archive-g\(generation)" }
    static func backupPrefix(_ backupId: String) -> String { "backups/\(backupId)/" }
    static func metaPrefix(_ backupId: String) -> String { "backups/\(backupId)/meta-" }
    static func metaKey(_ backupId: String, _ generation: UInt64) -> String { metaPrefix(backupId) + hex16(generation) }
    static func policyPrefix(_ clusterId: String) -> String { "clusters/\(clusterId)/policy-" }
    static func policyKey(_ clusterId: String, _ generation: UInt64) -> String { policyPrefix(clusterId) + hex16(generation) }
    static func hex16(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    /// The generation in a `meta-<gen>` or `policy-<gen>` name: exactly 16 lowercase hex digits
    /// after `prefix` (the only spelling a writer makes), else nil.
    static func generation(_ name: Substring, prefix: String) -> UInt64? {
        guard name.hasPrefix(prefix) else { return nil }
        let digits = name.dropFirst(prefix.count)
        guard digits.utf8.count == 16,
              digits.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else { return nil }
        return UInt64(digits, radix: 16)
    }

    /// Whether a last key segment names an archive: `archive`, or `archive-g<n>` with n a decimal
    /// number without leading zeros in 1...2^64 − 1 (what a rewrap writes).
    static func isArchiveName(_ name: Substring) -> Bool {
        if name == "archive" { return true }
        guard name.hasPrefix("archive-g") else { return false }
        let digits = name.dropFirst("archive-g".count)
        guard let first = digits.utf8.first, first != UInt8(ascii: "0"),
              digits.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let n = UInt64(digits) else { return false }
        return n >= 1
    }

    /// What the objects under `backups/` say, per backup id: metadata generations and archive keys.
    struct Inventory {
        var metas: [String: [UInt64]] = [:]
        var archives: [String: [String]] = [:]

        func highestMeta(_ id: String) -> UInt64? { metas[id]?.max() }
    }

    /// One walk over the object keys under `prefix` (`backups/` or one backup's own prefix).
    func inventory(prefix: String = "backups/") throws -> Inventory {
        var inv = Inventory()
        for key in try store.list(prefix: prefix) {
            let parts = key.split(separator: "/")
            guard parts.count == 3, parts[0] == "backups" else { continue }
            let id = String(parts[1])
            if Self.isArchiveName(parts[2]) { inv.archives[id, default: []].append(key) }
            if let g = Self.generation(parts[2], prefix: "meta-") { inv.metas[id, default: []].append(g) }
        }
        return inv
    }

    /// Reads and checks one metadata object: it parses, names this backup, and its generation
    /// field equals the generation in its key (a reader refuses what no writer produces).
    func readMeta(_ backupId: String, _ generation: UInt64) throws -> BackupEntry {
        let key = Self.metaKey(backupId, generation)
        let e = try BackupEntry.parseMeta(try store.getAll(key, limit: 1 << 20))
        guard e.backupId == backupId, e.generation == generation else {
            throw StoreError(.badFormat, key: key, "metadata of backup \(e.backupId) generation \(e.generation) stored under this key")
        }
        return e
    }

    // MARK: writer locks

    /// Held (shared) by a process that writes a backup's archive: `create`, `copy`, `rewrap`,
    /// from before its entry exists until it is READY or rolled back. Recovery (`recover`) takes
    /// it exclusively without waiting: if it can, no writer of that backup is alive (a killed
    /// process loses its flock). Locks are striped by the backup id (256 files, never removed),
    /// so a live writer of another backup in the same stripe only delays a recovery.
    public final class WriterLock {
        let lock: FileLock
        init(_ lock: FileLock) { self.lock = lock }
    }

    func writerLockPath(_ backupId: String) -> String {
        store.lockDirectory + "/backup-" + LocalObjectStore.fanOut(backupId) + ".lock"
    }

    /// The shared writer lock of `backupId` (waits while a recovery holds it).
    public func writerLock(_ backupId: String) throws -> WriterLock {
        WriterLock(try FileLock.acquire(writerLockPath(backupId), exclusive: false))
    }

    /// The exclusive writer lock, or nil when a writer (or another recovery) holds it.
    func tryRecoveryLock(_ backupId: String) throws -> FileLock? {
        try FileLock.tryAcquire(writerLockPath(backupId), exclusive: true)
    }

    // MARK: reading (no lock: the file is replaced atomically)

    /// The catalog file's bytes; nil for a store that never had a catalog. A missing file in a
    /// store that holds metadata or policy objects is damage, like a truncated one: an empty
    /// catalog would hide every backup, and the next change would write one that forgets them.
    func readCatalogBytes() throws -> [UInt8]? {
        if let bytes = try store.readCatalog(limit: 4 << 30) { return bytes }
        if holdsCatalogObjects() {
            throw StoreError(.badCatalog, path: path, "catalog.bin is missing but the store holds backups; run `hsmbackup store reindex`")
        }
        if !allReplicasAvailable {
            throw StoreError(.badCatalog, path: path, "catalog.bin is missing and a replica is unavailable, so the store may hold backups; "
                             + "bring the replica back, or run `hsmbackup store reindex`")
        }
        return nil
    }

    public func load() throws -> CatalogSnapshot {
        guard let bytes = try readCatalogBytes() else { return CatalogSnapshot() }
        do { return try CatalogSnapshot.parse(bytes) } catch {
            throw StoreError(.badCatalog, path: path, "catalog does not parse (run `hsmbackup store reindex`): \(error)")
        }
    }

    public func list(_ query: CatalogQuery = CatalogQuery()) throws -> [BackupEntry] {
        try query.validate()
        guard let bytes = try readCatalogBytes() else { return [] }
        do { return try CatalogSnapshot.query(bytes, query) } catch {
            throw StoreError(.badCatalog, path: path, "catalog does not parse (run `hsmbackup store reindex`): \(error)")
        }
    }

    /// One backup as its newest metadata says (see `current`).
    public func entry(_ backupId: String) throws -> BackupEntry {
        guard let e = try load().entries[backupId] else { throw StoreError(.notFound, key: backupId, "no such backup") }
        return current(e)
    }

    /// `list`, each entry as its newest metadata says, and filtered again by state and cluster:
    /// what `backup list` and `store ls` show. (A backup whose catalog state does not match the
    /// query but whose newer metadata would is not added; `store fsck` brings the index up to date.)
    public func listCurrent(_ query: CatalogQuery = CatalogQuery()) throws -> [BackupEntry] {
        let entries = try list(query)
        // A store whose existence checks are requests (S3) lists the keys once instead of one
        // check per entry; the local store answers nil and keeps its per-file checks.
        let known = entries.count > 16 ? store.existingKeys(prefix: "backups/") : nil
        return entries.map { current($0, known: known) }.filter { e in
            (query.states?.contains(e.state) ?? true) && (query.clusterId.map { $0 == e.clusterId } ?? true)
        }
    }

    /// The entry with any metadata generations newer than it applied: a change killed between its
    /// metadata and catalog writes leaves the catalog one generation behind, and the metadata is
    /// the truth. One existence check per replica when nothing is newer; no lock (reads only).
    public func current(_ entry: BackupEntry) -> BackupEntry { current(entry, known: nil) }

    /// `current`, with the existence checks answered from `known` (every key the store held
    /// when the listing began) when given.
    func current(_ entry: BackupEntry, known: Set<String>?) -> BackupEntry {
        var e = entry
        func holds(_ key: String) -> Bool { known.map { $0.contains(key) } ?? store.anyReplicaHolds(key) }
        while e.generation < BackupEntry.maxGeneration, holds(Self.metaKey(e.backupId, e.generation + 1)),
              let newer = try? readMeta(e.backupId, e.generation + 1) {
            e = newer
        }
        return e
    }

    public func retention(_ clusterId: String) throws -> RetentionPolicy? { try load().policies[clusterId] }

    // MARK: writing (under the catalog lock)

    /// Loads the catalog under the exclusive lock, applies `body`, and saves it atomically.
    /// Concurrent processes serialize here, so no update is lost and no reader sees a torn file.
    /// Low level (benchmarks, tests): changes made here are not written to metadata objects, so
    /// `reindex` does not reproduce them; use `create`, `update` and the lifecycle operations.
    public func mutate<T>(_ body: (inout CatalogSnapshot) throws -> T) throws -> T {
        let lock = try FileLock.acquire(lockPath)
        defer { withExtendedLifetime(lock) {} }
        let loaded = try load()
        var snapshot = loaded
        let result = try body(&snapshot)
        // Nothing changed (a retention pass that expired nothing): no write, so no quorum needed.
        if snapshot != loaded { try save(snapshot) }
        return result
    }

    func save(_ snapshot: CatalogSnapshot) throws {
        var s = snapshot
        s.writeCount += 1
        let bytes = try s.encode()
        try store.writeCatalog(bytes)
    }

    /// Writes the entry's metadata object (a new generation, never rewriting an old one).
    func writeMeta(_ e: BackupEntry) throws {
        _ = try store.put(Self.metaKey(e.backupId, e.generation), bytes: try e.encodeMeta())
    }

    /// Removes the previous metadata generation once the catalog points past it (best effort;
    /// a leftover older generation is harmless: the highest generation wins).
    func dropOldMeta(_ backupId: String, before generation: UInt64) {
        guard generation > 1 else { return }
        _ = try? store.delete(Self.metaKey(backupId, generation - 1))
    }

    /// Registers a new backup in `CREATE_IN_PROGRESS`; its archive goes to `entry.objectKey`.
    /// The caller holds `writerLock(id)` until the entry is READY or rolled back, so that
    /// `recover` can tell a live create from an abandoned one.
    public func create(_ new: NewBackup) throws -> BackupEntry {
        let id = new.backupId ?? ("backup-" + Hex.encode(SecureRandom.bytes(count: 8)))
        try ObjectKey.validateName(id, what: "backup id")
        try ObjectKey.validateName(new.clusterId, what: "cluster id")
        for (v, what) in [(new.hsmId, "HSM id"), (new.manufacturer, "manufacturer")] {
            guard !v.isEmpty, v.utf8.count <= BackupEntry.maxNameLength else {
                throw StoreError(.invalidArgument, key: v, "\(what) must have 1...\(BackupEntry.maxNameLength) bytes")
            }
        }
        try BackupEntry.validateTags(new.tags)
        let now = clock.nowMillis()
        let entry = BackupEntry(backupId: id, clusterId: new.clusterId, hsmId: new.hsmId, manufacturer: new.manufacturer,
                                state: .createInProgress, createdMillis: new.createdMillis ?? now, updatedMillis: now, tags: new.tags,
                                neverExpires: new.neverExpires, objectKey: Self.archiveKey(id))
        return try insert(entry)
    }

    /// Adds a new entry. A DELETED entry (a purged backup's tombstone) of the same id is replaced,
    /// its generations continued; any other existing entry, or a leftover archive or metadata
    /// object of the id, is `alreadyExists`.
    func insert(_ entry: BackupEntry) throws -> BackupEntry {
        var e = entry
        let old: BackupEntry? = try mutate { s in
            let old = s.entries[e.backupId]
            if let old {
                guard old.state == .deleted else {
                    throw StoreError(.alreadyExists, key: e.backupId, "a backup with this id exists (\(old.state.rawValue))")
                }
                guard old.generation < BackupEntry.maxGeneration else {
                    throw StoreError(.limitExceeded, key: e.backupId, "the tombstone is at the last generation")
                }
                e.generation = old.generation + 1
            }
            guard !store.anyReplicaHolds(e.objectKey) else {
                throw StoreError(.alreadyExists, key: e.backupId, "an archive object of this id exists (run `hsmbackup store fsck`)")
            }
            guard !store.anyReplicaHolds(Self.metaKey(e.backupId, e.generation)) else {
                throw StoreError(.alreadyExists, key: e.backupId, "a metadata object of this id exists without a catalog entry (run `hsmbackup store fsck`)")
            }
            try writeMeta(e)
            s.entries[e.backupId] = e
            return old
        }
        if old != nil { dropOldMeta(e.backupId, before: e.generation) }
        return e
    }

    /// Creates the entry, streams the archive into the store, and marks it ready. If the archive
    /// cannot be stored, the entry and its objects are rolled back (as if it had never been
    /// made) and the error is rethrown.
    public func add(_ new: NewBackup, archive: ObjectSource) throws -> (entry: BackupEntry, put: PutReport) {
        let id = new.backupId ?? ("backup-" + Hex.encode(SecureRandom.bytes(count: 8)))
        var n = new
        n.backupId = id
        let writing = try writerLock(id)
        defer { withExtendedLifetime(writing) {} }
        let e = try create(n)
        let put: PutReport
        do { put = try store.put(e.objectKey, from: archive) } catch {
            _ = try? rollBack(e.backupId)
            throw error
        }
        return (try markReady(e.backupId), put)
    }

    /// `CREATE_IN_PROGRESS` → `READY` once the archive object is durable; the size comes from the
    /// archive's checksum record (and must equal `size` when given).
    public func markReady(_ backupId: String, size: UInt64? = nil) throws -> BackupEntry {
        try update(backupId) { e in
            guard e.state == .createInProgress else {
                throw StoreError(.invalidState, key: backupId, "backup is \(e.state.rawValue), not CREATE_IN_PROGRESS")
            }
            let info = try store.stat(e.objectKey)
            if let size, size != info.size {
                throw StoreError(.invalidState, key: backupId, "the archive holds \(info.size) bytes, not \(size)")
            }
            e.state = .ready
            e.size = info.size
        }
    }

    /// Read-modify-write of one entry under the lock: writes a new metadata generation, then the
    /// catalog, then drops the old generation. A newer metadata generation than the catalog's (a
    /// change killed between its metadata and catalog writes) is taken first: the metadata wins.
    @discardableResult
    public func update(_ backupId: String, _ body: (inout BackupEntry) throws -> Void) throws -> BackupEntry {
        let updated: BackupEntry = try mutate { s in try change(&s, backupId, body) }
        dropOldMeta(backupId, before: updated.generation)
        return updated
    }

    /// `update`'s work on a snapshot the caller holds under the catalog lock (the caller saves
    /// it, then drops the old generation): several changes decided and made under one hold.
    func change(_ s: inout CatalogSnapshot, _ backupId: String, _ body: (inout BackupEntry) throws -> Void) throws -> BackupEntry {
        guard var e = s.entries[backupId] else { throw StoreError(.notFound, key: backupId, "no such backup") }
        e = try catchUp(e)
        s.entries[backupId] = e
        let before = e
        try body(&e)
        guard e != before else { return e }
        precondition(e.backupId == before.backupId, "update may not change the backup id")
        try BackupEntry.validateTags(e.tags)
        guard before.generation < BackupEntry.maxGeneration else {
            throw StoreError(.limitExceeded, key: backupId, "generation \(before.generation) is the last one; the backup cannot change")
        }
        e.generation = before.generation + 1
        e.updatedMillis = clock.nowMillis()
        try writeMeta(e)
        s.entries[backupId] = e
        return e
    }

    /// The entry as its newest metadata generation says, when that is ahead of the catalog's:
    /// one existence check per replica when nothing is ahead (the usual case). Under the lock.
    func catchUp(_ entry: BackupEntry) throws -> BackupEntry {
        var e = entry
        while e.generation < BackupEntry.maxGeneration, store.anyReplicaHolds(Self.metaKey(e.backupId, e.generation + 1)) {
            let key = Self.metaKey(e.backupId, e.generation + 1)
            do { e = try readMeta(e.backupId, e.generation + 1) } catch {
                // A put of it that died or missed its quorum before any record: never written.
                if (try? store.removeUnfinishedPut(key)) == true { break }
                throw StoreError(.badCatalog, key: key,
                                 "metadata newer than the catalog does not read (\(error)); run `hsmbackup store scrub --repair`, then `hsmbackup store reindex`")
            }
        }
        return e
    }

    /// Removes a backup that never became READY, as if it had never been made: every archive
    /// object, then the catalog entry, then every metadata object (a kill in between leaves
    /// metadata of a CREATE_IN_PROGRESS backup, which `recover` rolls back again). Under the
    /// catalog lock; the caller holds the backup's writer lock (shared or exclusive).
    public func rollBack(_ backupId: String) throws { try rollBack(backupId, objects: nil) }

    func rollBack(_ backupId: String, objects: Inventory?) throws {
        let lock = try FileLock.acquire(lockPath)
        defer { withExtendedLifetime(lock) {} }
        var s = try load()
        let entry = s.entries[backupId]
        if let entry, entry.state != .createInProgress {
            throw StoreError(.invalidState, key: backupId, "backup is \(entry.state.rawValue); only CREATE_IN_PROGRESS is rolled back")
        }
        // Every object of the backup, not only the generations the entry knows: a change whose
        // metadata write landed and whose catalog write did not leaves a newer generation.
        let inv = try objects ?? inventory(prefix: Self.backupPrefix(backupId))
        var archives = inv.archives[backupId] ?? []
        var metas = inv.metas[backupId] ?? []
        // The metadata is the truth (5.8): if its newest generation says anything but
        // CREATE_IN_PROGRESS (a create whose READY metadata landed), there is nothing to roll back.
        if let newest = metas.max(), newest > (entry?.generation ?? 0), let e = try? readMeta(backupId, newest),
           e.state != .createInProgress {
            throw StoreError(.invalidState, key: backupId,
                             "its newest metadata (generation \(newest)) says \(e.state.rawValue); not rolled back (`store fsck` adopts it)")
        }
        if let entry {
            archives.append(entry.objectKey)
            metas += [entry.generation, entry.generation > 1 ? entry.generation - 1 : entry.generation]
        }
        var failed: [ReplicaFinding] = []
        for key in Set(archives).sorted() {
            do { failed += try store.delete(key).failed } catch let e as StoreError where e.code == .notFound {}
        }
        guard failed.isEmpty else {
            throw StoreError(.ioError, key: backupId, "archive not removed from every replica; the rollback is retried by `store fsck`", findings: failed)
        }
        if entry != nil {
            s.entries[backupId] = nil
            try save(s)
        }
        for g in Set(metas).sorted(by: >) { _ = try? store.delete(Self.metaKey(backupId, g)) }
    }

    // MARK: reindex and check

    /// Rebuilds the catalog from the metadata and policy objects.
    @discardableResult
    public func reindex() throws -> ReindexReport {
        let lock = try FileLock.acquire(lockPath)
        defer { withExtendedLifetime(lock) {} }
        var report = ReindexReport()
        var s = CatalogSnapshot()
        if let old = try? load() { s.writeCount = old.writeCount }
        let inv = try inventory()
        for (id, gens) in inv.metas {
            for g in gens.sorted(by: >) {
                do {
                    s.entries[id] = try readMeta(id, g)
                    break
                } catch {
                    report.unreadable.append(Self.metaKey(id, g))
                }
            }
        }
        report.orphanArchives = inv.archives.keys.filter { inv.metas[$0] == nil }.sorted()
        var policyGens: [String: [UInt64]] = [:]
        for key in try store.list(prefix: "clusters/") {
            let parts = key.split(separator: "/")
            guard parts.count == 3, let g = Self.generation(parts[2], prefix: "policy-") else { continue }
            policyGens[String(parts[1]), default: []].append(g)
        }
        for (cluster, gens) in policyGens {
            for g in gens.sorted(by: >) {
                let key = Self.policyKey(cluster, g)
                do {
                    let p = try RetentionPolicy.parseObject(try store.getAll(key, limit: 1 << 16))
                    guard p.clusterId == cluster, p.generation == g else { report.unreadable.append(key); continue }
                    if p.days != 0 { s.policies[cluster] = p }
                    break
                } catch {
                    report.unreadable.append(key)
                }
            }
        }
        report.unreadable.sort()
        report.entries = s.entries.count
        report.policies = s.policies.count
        try save(s)
        return report
    }

    /// Compares the catalog with the objects; every disagreement is a finding. `recover` fixes
    /// what a crash leaves; what remains needs `reindex` (catalog side) or is damage.
    public func check() throws -> [CatalogFinding] {
        var findings: [CatalogFinding] = []
        let s: CatalogSnapshot
        do { s = try load() } catch let e as StoreError {
            return [CatalogFinding(backupId: "", problem: .catalogDamaged, detail: e.reason)]
        }
        let inv = try inventory()
        for id in s.entries.keys.sorted(by: BackupEntry.utf8Less) {
            let e = s.entries[id]!
            if let g = inv.highestMeta(id) {
                if g != e.generation {
                    findings.append(CatalogFinding(backupId: id, problem: .staleEntry, detail: "catalog has generation \(e.generation), objects have \(g)"))
                } else if (try? readMeta(id, g)) != e {
                    findings.append(CatalogFinding(backupId: id, problem: .metadataUnreadable, detail: "metadata generation \(g) is unreadable or differs"))
                }
            } else {
                findings.append(CatalogFinding(backupId: id, problem: .metadataMissing, detail: "no metadata object"))
            }
            let archives = inv.archives[id] ?? []
            // (PENDING_DELETION without an archive is normal: a create whose archive put failed.)
            if e.state == .ready && !archives.contains(e.objectKey) {
                findings.append(CatalogFinding(backupId: id, problem: .archiveMissing, detail: "\(e.state.rawValue) but no archive object \(e.objectKey)"))
            }
            if e.state == .deleted && !archives.isEmpty {
                findings.append(CatalogFinding(backupId: id, problem: .archiveNotPurged, detail: "DELETED but \(archives.sorted().joined(separator: ", ")) remains"))
            } else {
                for key in archives.sorted() where key != e.objectKey {
                    findings.append(CatalogFinding(backupId: id, problem: .orphanArchive, detail: "\(key) is not the backup's archive (\(e.objectKey))"))
                }
            }
        }
        for id in inv.metas.keys.sorted(by: BackupEntry.utf8Less) where s.entries[id] == nil {
            findings.append(CatalogFinding(backupId: id, problem: .notInCatalog, detail: "metadata object without a catalog entry"))
        }
        for id in inv.archives.keys.sorted(by: BackupEntry.utf8Less) where inv.metas[id] == nil && s.entries[id] == nil {
            findings.append(CatalogFinding(backupId: id, problem: .orphanArchive, detail: "archive object without metadata"))
        }
        return findings
    }

    /// Scrub with the catalog's view of what may be healed: an archive object that is not the
    /// current archive of a live (not DELETED) backup is never re-copied, so a purged backup or a
    /// killed rewrap's leftover is not resurrected; `recover` removes such objects.
    /// With the catalog unreadable, every object is healed as before (reindex, then fsck,
    /// removes what no backup uses).
    public func scrub(repair: Bool = false, progress: ((Int, Int) -> Void)? = nil) throws -> ScrubReport {
        guard let s = try? load() else { return try store.scrub(repair: repair, repairable: nil, progress: progress) }
        return try store.scrub(repair: repair, repairable: { key in
            let parts = key.split(separator: "/")
            guard parts.count == 3, parts[0] == "backups", Self.isArchiveName(parts[2]) else { return true }
            guard let e = s.entries[String(parts[1])] else { return false }
            return e.state != .deleted && e.objectKey == key
        }, progress: progress)
    }

    // MARK: recovery (store fsck)

    /// The default archive check of `recover`: some replica holds the whole object, every chunk
    /// matching its record. Nil when it passes, else what is wrong.
    public func storeLevelArchiveCheck(_ e: BackupEntry) -> String? {
        let available = (0..<store.replicaCount).filter { store.replicaStatus($0) == nil }.count
        let bad = store.verifyReplicas(e.objectKey).filter { $0.problem != .replicaUnavailable }
        return bad.count < available ? nil : "no replica of \(e.objectKey) is whole: \(bad.map(\.description).joined(separator: "; "))"
    }

    /// Finishes what killed processes left (spec 5.8, "Recovery"); `store fsck` runs it before
    /// `check`. Per backup, only while its writer lock can be taken exclusively (no live writer):
    /// - metadata newer than the catalog (or not in it) wins: the catalog takes it;
    /// - CREATE_IN_PROGRESS: if the archive object exists and `checkArchive` passes it (nil),
    ///   the backup becomes READY; otherwise it is rolled back (archive, entry, metadata removed);
    /// - archive objects that are not the entry's archive (all of them for DELETED) are removed.
    /// Backups whose lock is held are reported `skipped` and left for the next run.
    public func recover(checkArchive: ((BackupEntry) -> String?)? = nil) throws -> [RecoveryAction] {
        let check = checkArchive ?? storeLevelArchiveCheck
        let snapshot: CatalogSnapshot
        do { snapshot = try load() } catch let e as StoreError where e.code == .badCatalog { return [] } // check() reports it
        let inv = try inventory()
        var ids = Set<String>()
        for (id, e) in snapshot.entries where e.state == .createInProgress { ids.insert(id) }
        for id in inv.metas.keys where snapshot.entries[id]?.generation != inv.highestMeta(id) { ids.insert(id) }
        for (id, keys) in inv.archives {
            guard let e = snapshot.entries[id] else { continue }
            if keys.contains(where: { $0 != e.objectKey || e.state == .deleted }) { ids.insert(id) }
        }
        var actions: [RecoveryAction] = []
        for id in ids.sorted(by: BackupEntry.utf8Less) {
            guard let lock = try tryRecoveryLock(id) else {
                actions.append(RecoveryAction(backupId: id, action: .skipped, detail: "a writer holds the backup's lock stripe; left for the next fsck",
                                              liveWriter: true))
                continue
            }
            defer { withExtendedLifetime(lock) {} }
            // One backup that cannot be settled (a replica refuses a delete) does not stop the rest.
            do { actions += try recoverOne(id, inv, check) } catch {
                actions.append(RecoveryAction(backupId: id, action: .skipped, detail: "\(error)"))
            }
        }
        return actions
    }

    /// `recover` for one backup (`copy` runs it before a retry): one walk over that backup's
    /// objects. A `skipped` action means a live writer holds the backup's lock.
    public func recoverBackup(_ id: String, checkArchive: ((BackupEntry) -> String?)? = nil) throws -> [RecoveryAction] {
        guard let lock = try tryRecoveryLock(id) else {
            return [RecoveryAction(backupId: id, action: .skipped, detail: "a writer holds the backup's lock stripe", liveWriter: true)]
        }
        defer { withExtendedLifetime(lock) {} }
        return try recoverOne(id, try inventory(prefix: Self.backupPrefix(id)), checkArchive ?? storeLevelArchiveCheck)
    }

    private func recoverOne(_ id: String, _ inv: Inventory, _ check: (BackupEntry) -> String?) throws -> [RecoveryAction] {
        var actions: [RecoveryAction] = []
        // 1. The newest metadata that reads wins over an older (or absent) catalog entry.
        let adopted: (BackupEntry, UInt64?)? = try mutate { s in
            let current = s.entries[id]
            for g in (inv.metas[id] ?? []).sorted(by: >) where g > (current?.generation ?? 0) {
                guard let e = try? readMeta(id, g) else {
                    // What an unfinished put left goes (else the next change of this backup
                    // would find its generation taken); anything else stays for scrub.
                    _ = try? store.removeUnfinishedPut(Self.metaKey(id, g))
                    continue
                }
                s.entries[id] = e
                return (e, current?.generation)
            }
            return nil
        }
        if let (e, old) = adopted {
            actions.append(RecoveryAction(backupId: id, action: .adoptedMetadata,
                                          detail: "catalog had \(old.map { "generation \($0)" } ?? "no entry"); metadata generation \(e.generation) (\(e.state.rawValue)) taken"))
        }
        guard var e = try load().entries[id] else { return actions }
        // 2. An abandoned create: finish it when its archive is whole, else roll it back.
        if e.state == .createInProgress {
            let problem = store.anyReplicaHolds(e.objectKey) ? check(e) : "no archive object"
            if problem == nil {
                let key = e.objectKey
                e = try update(id) { x in
                    guard x.state == .createInProgress, x.objectKey == key else { return }
                    x.state = .ready
                    x.size = try store.stat(key).size
                }
                actions.append(RecoveryAction(backupId: id, action: e.state == .ready ? .finished : .skipped,
                                              detail: "abandoned create: the archive is whole; now \(e.state.rawValue)"))
            } else {
                try rollBack(id, objects: inv)
                actions.append(RecoveryAction(backupId: id, action: .rolledBack, detail: "abandoned create rolled back: \(problem ?? "")"))
                return actions
            }
        }
        // 3. Archive objects that are not the entry's (a killed rewrap, or purge): removed, but
        // only once the archive the entry names is whole; otherwise one of the others may be the
        // last good copy (a rewrap whose new object was lost), and they stay for an operator.
        let others = (inv.archives[id] ?? []).sorted().filter { $0 != e.objectKey || e.state == .deleted }
        if !others.isEmpty, e.state != .deleted {
            let problem = store.anyReplicaHolds(e.objectKey) ? check(e) : "no archive object \(e.objectKey)"
            if let problem {
                actions.append(RecoveryAction(backupId: id, action: .skipped,
                                              detail: "kept \(others.joined(separator: ", ")): the entry's archive is not whole (\(problem))"))
                return actions
            }
        }
        for key in others {
            do {
                let d = try store.delete(key)
                actions.append(RecoveryAction(backupId: id, action: d.failed.isEmpty ? .removedArchive : .skipped,
                                              detail: d.failed.isEmpty ? "removed \(key) (not the backup's archive)"
                                                  : "\(key) not removed from every replica: \(d.failed.map(\.description).joined(separator: "; "))"))
            } catch let err as StoreError where err.code == .notFound {}
        }
        return actions
    }

    /// Removes temp files a crashed catalog writer left (under the lock, so no live writer's).
    public func removeStaleTemps() throws -> [String] {
        let lock = try FileLock.acquire(lockPath)
        defer { withExtendedLifetime(lock) {} }
        return try store.removeCatalogTemps()
    }
}
