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
        let writeCount = try r.readUInt64("write count")
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

public struct ReindexReport: Codable, Sendable {
    public var entries = 0
    public var policies = 0
    /// Metadata objects that could not be read or parsed (an older generation was used if any).
    public var unreadable: [String] = []
    /// Archive objects with no metadata object (not added to the catalog).
    public var orphanArchives: [String] = []
}

public final class BackupCatalog {
    public let store: LocalObjectStore
    public let clock: StoreClock
    /// How long a deleted backup can be restored before purge removes it.
    public var recoveryWindowMillis: UInt64 = 7 * Millis.day

    public static let directory = "catalog"
    public static let fileName = "catalog.bin"

    public var path: String { store.root + "/" + Self.directory + "/" + Self.fileName }
    var lockPath: String { store.root + "/" + Self.directory + "/catalog.lock" }

    public init(store: LocalObjectStore, clock: StoreClock? = nil) throws {
        self.store = store
        self.clock = clock ?? store.clock
        try LocalObjectStore.fileOp(store.root) { try AtomicFile.makeDirectory(store.root + "/" + Self.directory) }
        // Temps of a catalog writer that died; only while no live writer holds the lock.
        if let lock = try? FileLock.tryAcquire(lockPath) {
            _ = try? AtomicFile.removeStaleTemps(in: store.root + "/" + Self.directory)
            withExtendedLifetime(lock) {}
        }
    }

    public static func archiveKey(_ backupId: String) -> String { "backups/\(backupId)/archive" }
    static func metaPrefix(_ backupId: String) -> String { "backups/\(backupId)/meta-" }
    static func metaKey(_ backupId: String, _ generation: UInt64) -> String { metaPrefix(backupId) + hex16(generation) }
    static func policyPrefix(_ clusterId: String) -> String { "clusters/\(clusterId)/policy-" }
    static func policyKey(_ clusterId: String, _ generation: UInt64) -> String { policyPrefix(clusterId) + hex16(generation) }
    static func hex16(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    // MARK: reading (no lock: the file is replaced atomically)

    public func load() throws -> CatalogSnapshot {
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(path, limit: 4 << 30) } catch let e as FileError {
            if e.code == .notFound { return CatalogSnapshot() }
            throw StoreError(.ioError, path: path, "\(e.operation): \(e.reason)")
        }
        do { return try CatalogSnapshot.parse(bytes) } catch {
            throw StoreError(.badCatalog, path: path, "catalog does not parse (run reindex): \(error)")
        }
    }

    public func list(_ query: CatalogQuery = CatalogQuery()) throws -> [BackupEntry] {
        try query.validate()
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(path, limit: 4 << 30) } catch let e as FileError {
            if e.code == .notFound { return [] }
            throw StoreError(.ioError, path: path, "\(e.operation): \(e.reason)")
        }
        do { return try CatalogSnapshot.query(bytes, query) } catch {
            throw StoreError(.badCatalog, path: path, "catalog does not parse (run reindex): \(error)")
        }
    }

    public func entry(_ backupId: String) throws -> BackupEntry {
        guard let e = try load().entries[backupId] else { throw StoreError(.notFound, key: backupId, "no such backup") }
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
        var snapshot = try load()
        let result = try body(&snapshot)
        try save(snapshot)
        return result
    }

    func save(_ snapshot: CatalogSnapshot) throws {
        var s = snapshot
        s.writeCount += 1
        let bytes = try s.encode()
        try LocalObjectStore.fileOp(path) { try AtomicFile.write(bytes, to: path) }
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

    func insert(_ entry: BackupEntry) throws -> BackupEntry {
        try mutate { s in
            guard s.entries[entry.backupId] == nil, (try? store.stat(entry.objectKey)) == nil else {
                throw StoreError(.alreadyExists, key: entry.backupId, "a backup with this id exists")
            }
            try writeMeta(entry)
            s.entries[entry.backupId] = entry
            return entry
        }
    }

    /// Creates the entry, streams the archive into the store, and marks it ready. If the archive
    /// cannot be stored, the entry goes to PENDING_DELETION (purge removes it) and the error is
    /// rethrown.
    public func add(_ new: NewBackup, archive: ObjectSource) throws -> (entry: BackupEntry, put: PutReport) {
        let e = try create(new)
        let put: PutReport
        do { put = try store.put(e.objectKey, from: archive) } catch {
            _ = try? delete(e.backupId)
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
    /// catalog, then drops the old generation.
    @discardableResult
    public func update(_ backupId: String, _ body: (inout BackupEntry) throws -> Void) throws -> BackupEntry {
        let updated: BackupEntry = try mutate { s in
            guard var e = s.entries[backupId] else { throw StoreError(.notFound, key: backupId, "no such backup") }
            let before = e
            try body(&e)
            guard e != before else { return e }
            precondition(e.backupId == before.backupId, "update may not change the backup id")
            try BackupEntry.validateTags(e.tags)
            e.generation = before.generation + 1
            e.updatedMillis = clock.nowMillis()
            try writeMeta(e)
            s.entries[backupId] = e
            return e
        }
        dropOldMeta(backupId, before: updated.generation)
        return updated
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
        var metas: [String: [(UInt64, String)]] = [:]
        var archives: Set<String> = []
        for key in try store.list(prefix: "backups/") {
            let parts = key.split(separator: "/")
            guard parts.count == 3 else { continue }
            let id = String(parts[1])
            // `archive`, or `archive-g<n>` once rewrapped (5.8).
            if parts[2] == "archive" || parts[2].hasPrefix("archive-g") { archives.insert(id) }
            if parts[2].hasPrefix("meta-"), let g = UInt64(parts[2].dropFirst(5), radix: 16) { metas[id, default: []].append((g, key)) }
        }
        for (id, gens) in metas {
            for (_, key) in gens.sorted(by: { $0.0 > $1.0 }) {
                do {
                    let e = try BackupEntry.parseMeta(try store.getAll(key, limit: 1 << 20))
                    guard e.backupId == id else { report.unreadable.append(key); continue }
                    s.entries[id] = e
                    break
                } catch {
                    report.unreadable.append(key)
                }
            }
        }
        report.orphanArchives = archives.filter { metas[$0] == nil }.sorted()
        var policyGens: [String: [(UInt64, String)]] = [:]
        for key in try store.list(prefix: "clusters/") {
            let parts = key.split(separator: "/")
            guard parts.count == 3, parts[2].hasPrefix("policy-"), let g = UInt64(parts[2].dropFirst(7), radix: 16) else { continue }
            policyGens[String(parts[1]), default: []].append((g, key))
        }
        for (cluster, gens) in policyGens {
            for (_, key) in gens.sorted(by: { $0.0 > $1.0 }) {
                do {
                    let p = try RetentionPolicy.parseObject(try store.getAll(key, limit: 1 << 16))
                    if p.days != 0 && p.clusterId == cluster { s.policies[cluster] = p }
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

    /// Compares the catalog with the objects; every disagreement is a finding (reindex fixes
    /// catalog-side ones; archive-side ones need purge or scrub).
    public func check() throws -> [CatalogFinding] {
        var findings: [CatalogFinding] = []
        let s: CatalogSnapshot
        do { s = try load() } catch let e as StoreError {
            return [CatalogFinding(backupId: "", problem: .catalogDamaged, detail: e.reason)]
        }
        var metas: [String: UInt64] = [:]
        var archives: Set<String> = []
        var archiveKeys: Set<String> = []
        for key in try store.list(prefix: "backups/") {
            let parts = key.split(separator: "/")
            guard parts.count == 3 else { continue }
            let id = String(parts[1])
            // `archive`, or `archive-g<n>` once rewrapped (5.8).
            if parts[2] == "archive" || parts[2].hasPrefix("archive-g") {
                archives.insert(id)
                archiveKeys.insert(key)
            }
            if parts[2].hasPrefix("meta-"), let g = UInt64(parts[2].dropFirst(5), radix: 16) { metas[id] = max(metas[id] ?? 0, g) }
        }
        for id in s.entries.keys.sorted(by: BackupEntry.utf8Less) {
            let e = s.entries[id]!
            if let g = metas[id] {
                if g != e.generation {
                    findings.append(CatalogFinding(backupId: id, problem: .staleEntry, detail: "catalog has generation \(e.generation), objects have \(g)"))
                } else if (try? BackupEntry.parseMeta(try store.getAll(Self.metaKey(id, g), limit: 1 << 20))) != e {
                    findings.append(CatalogFinding(backupId: id, problem: .metadataUnreadable, detail: "metadata generation \(g) is unreadable or differs"))
                }
            } else {
                findings.append(CatalogFinding(backupId: id, problem: .metadataMissing, detail: "no metadata object"))
            }
            let hasArchive = archives.contains(id)
            // (PENDING_DELETION without an archive is normal: a create whose archive put failed.)
            // READY needs the very object the entry names (a rewrapped entry names archive-g<n>).
            if e.state == .ready && !archiveKeys.contains(e.objectKey) {
                findings.append(CatalogFinding(backupId: id, problem: .archiveMissing, detail: "\(e.state.rawValue) but no archive object"))
            }
            if e.state == .deleted && hasArchive {
                findings.append(CatalogFinding(backupId: id, problem: .archiveNotPurged, detail: "DELETED but the archive object remains"))
            }
        }
        for id in metas.keys.sorted(by: BackupEntry.utf8Less) where s.entries[id] == nil {
            findings.append(CatalogFinding(backupId: id, problem: .notInCatalog, detail: "metadata object without a catalog entry"))
        }
        for id in archives.sorted(by: BackupEntry.utf8Less) where metas[id] == nil {
            findings.append(CatalogFinding(backupId: id, problem: .orphanArchive, detail: "archive object without metadata"))
        }
        return findings
    }

    /// Removes temp files a crashed catalog writer left (under the lock, so no live writer's).
    public func removeStaleTemps() throws -> [String] {
        let lock = try FileLock.acquire(lockPath)
        defer { withExtendedLifetime(lock) {} }
        return try LocalObjectStore.fileOp(store.root) { try AtomicFile.removeStaleTemps(in: store.root + "/" + Self.directory) }
    }
}
