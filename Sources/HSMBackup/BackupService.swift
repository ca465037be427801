import Envelope
import Foundation
import HSMArchive
import ObjectStore
import SimulatedHSM

// The store's stream protocols and the envelope's have the same shape.
extension ReaderSource: ByteSource {}

/// An envelope sink that writes into a store object.
final class ObjectWriterSink: ByteSink {
    let writer: ObjectWriting
    init(_ writer: ObjectWriting) { self.writer = writer }
    func write(_ bytes: [UInt8]) throws { try writer.write(bytes) }
}

/// Backups kept in a durable object store: create, find, read, verify, restore, and the
/// lifecycle (delete, undelete, purge, retention, tags, copy, rewrap). Everything here works on
/// streams: an archive never has to fit in memory.
public final class BackupService {
    /// The catalog of backups (and through it the store that holds their archives).
    public let catalog: BackupCatalog
    /// The replicated object store that holds the archives.
    public var store: any ReplicatedStorage { catalog.store }

    /// A service over an open catalog.
    public init(catalog: BackupCatalog) { self.catalog = catalog }

    /// Opens the store at `root` (made by `LocalObjectStore.create`).
    public convenience init(storeRoot: String, clock: StoreClock = SystemClock()) throws {
        let store = try LocalObjectStore(root: storeRoot, clock: clock)
        self.init(catalog: try BackupCatalog(store: store, clock: clock))
    }

    // MARK: create

    /// What `createBackup` did.
    public struct Created: Sendable {
        public let entry: BackupEntry
        public let archive: ArchiveSummary
        /// Replicas that could not be written (the put still reached its quorum); scrub --repair heals them.
        public let replicasFailed: [ReplicaFinding]
    }

    /// Backs up `hsm` straight into the store: the catalog entry is CREATE_IN_PROGRESS while the
    /// archive streams into the store, READY once it is durable on the write quorum. On any
    /// failure the object is not published and the entry is removed, so nothing half-made stays.
    public func createBackup(of hsm: any BackupSource, keyrings: [Keyring], options: ArchiveOptions = ArchiveOptions(),
                             tags: [String: String] = [:], neverExpires: Bool = false,
                             progress: ((UInt64) -> Void)? = nil) throws -> Created {
        let sink = DeferredStoreSink(catalog: catalog, hsm: hsm, tags: tags, neverExpires: neverExpires)
        do {
            let summary = try BackupWriter.writeArchive(of: hsm, keyrings: keyrings, options: options, to: sink, progress: progress)
            let put = try sink.commit()
            let entry = try catalog.markReady(summary.metadata.backupID, size: put.info.size)
            sink.finished()
            return Created(entry: entry, archive: summary, replicasFailed: put.failed)
        } catch {
            sink.abandon()
            throw error
        }
    }

    // MARK: recovery

    /// `store fsck`'s repair step (spec 5.8, "Recovery"): finishes or rolls back creates and
    /// copies whose process died, lets newer metadata win over the catalog, and removes archive
    /// objects no entry uses. An abandoned create is finished only when its archive is whole in
    /// the store and passes `structure` verification as this backup's archive.
    public func recover() throws -> [RecoveryAction] {
        try catalog.recover { entry in self.abandonedArchiveProblem(entry) }
    }

    func abandonedArchiveProblem(_ entry: BackupEntry) -> String? {
        if let problem = catalog.storeLevelArchiveCheck(entry) { return problem }
        do {
            let report = try Verifier.verify(ReaderSource(try store.get(entry.objectKey)), name: entry.backupId, level: .structure,
                                             keys: VerificationKeys(), expectedBackupID: entry.backupId)
            return report.passed ? nil : "the archive fails structure verification: \(report.errors.map(\.description).joined(separator: "; "))"
        } catch {
            return "the archive fails structure verification: \(error)"
        }
    }

    // MARK: find and read

    /// The backup with this id, or the only one whose id starts with `prefix` (at least 6 characters).
    public func resolve(_ idOrPrefix: String) throws -> BackupEntry {
        if let e = try? catalog.entry(idOrPrefix) { return e }
        guard idOrPrefix.count >= 6 else {
            throw HSMBackupError(.backupNotFound, "no backup \"\(idOrPrefix)\" (give the id or at least its first 6 characters)")
        }
        let matches = try catalog.list().filter { $0.backupId.hasPrefix(idOrPrefix) }
        switch matches.count {
        case 1: return matches[0]
        case 0: throw HSMBackupError(.backupNotFound, "no backup \"\(idOrPrefix)\" in the store")
        default: throw HSMBackupError(.ambiguousBackupID, "\"\(idOrPrefix)\" matches \(matches.count) backups: \(matches.prefix(5).map(\.backupId).joined(separator: ", "))")
        }
    }

    /// A verified stream of the archive's bytes (checksums checked per chunk, failing over to
    /// another replica and repairing the bad one).
    public func openArchive(_ entry: BackupEntry) throws -> ByteSource { ReaderSource(try openReader(entry)) }

    private func openReader(_ entry: BackupEntry, readRepair: Bool = true) throws -> ObjectReading {
        guard entry.state == .ready || entry.state == .pendingDeletion else {
            throw HSMBackupError(.backupNotReady, "backup \(entry.backupId) is \(entry.state.rawValue)")
        }
        return try store.get(entry.objectKey, readRepair: readRepair)
    }

    // MARK: inspect, verify, restore

    /// A stored backup's public metadata (no key), and with `keyrings` its inner header; reads
    /// only the archive's first bytes.
    public func inspect(_ idOrPrefix: String, keyrings: [Keyring] = []) throws -> InspectionReport {
        let entry = try resolve(idOrPrefix)
        return try Inspector.inspect(try openArchive(entry), archiveBytes: entry.size, keyrings: keyrings, expectedBackupID: entry.backupId)
    }

    /// Verifies a stored backup: every replica against its checksum record (findings name the
    /// replica), then the archive itself at `level`, read from a good replica. A bad replica is a
    /// warning while another replica is intact (the read repaired it, or says why it could not,
    /// with the OS error); it is an error only when no replica is intact any more.
    public func verify(_ idOrPrefix: String, level: VerificationLevel, keys: VerificationKeys = VerificationKeys(),
                       progress: ((UInt64) -> Void)? = nil) throws -> VerificationReport {
        try verify(try resolve(idOrPrefix), level: level, keys: keys, progress: progress)
    }

    /// `verify` of an entry already in hand (from `list`), with no catalog lookup: a fleet
    /// verification (`FleetVerifier`) would otherwise parse the whole catalog once per archive.
    public func verify(_ entry: BackupEntry, level: VerificationLevel, keys: VerificationKeys = VerificationKeys(),
                       progress: ((UInt64) -> Void)? = nil) throws -> VerificationReport {
        let before: [ReplicaFinding]
        let reader: ObjectReading
        var report: VerificationReport
        if store.verifiesReplicasBesideRead {
            // The other replicas are checked on other threads while the decrypting pass reads
            // one (issue 17), whose chunks the reader checks itself; the reader's repair, at the
            // end of its stream, waits for that check, so `before` is what the replicas held
            // before any repair.
            reader = try openReader(entry)
            // The reader lends the chunks it checked, so the check compares instead of hashing.
            // Closed before any wait for the check, which may be waiting for the next chunk.
            let local = reader as? LocalObjectReader
            let streamed = local?.streamingReplica
            let feed = local.map { _ in VerifiedChunkFeed() }
            local?.verifiedChunks = feed
            let check = ReplicaCheck(store: store, key: entry.objectKey, skipping: streamed, verified: feed)
            defer { feed?.close(); check.wait() }
            let gated = GatedReader(reader, gate: { feed?.close(); check.wait() })
            report = try Verifier.verify(ReaderSource(gated), name: entry.backupId, level: level,
                                         keys: keys, expectedBackupID: entry.backupId, progress: progress)
            feed?.close()
            var found = check.wait()
            if let streamed {
                if gated.readToEnd, let r = local {
                    // The stream checked every chunk of that replica, or says where it failed.
                    found += r.findings.filter { $0.replica == streamed }
                } else {
                    // The pass stopped early: that replica was not read through. Checked in full
                    // again, with the object digest, so a record whose digest no replica's chunks
                    // make is named on every replica, as before.
                    found = store.verifyReplicas(entry.objectKey)
                }
            }
            before = found.sorted { $0.replica < $1.replica }
        } else {
            before = store.verifyReplicas(entry.objectKey)
            reader = try openReader(entry)
            report = try Verifier.verify(ReaderSource(reader), name: entry.backupId, level: level, keys: keys,
                                         expectedBackupID: entry.backupId, progress: progress)
        }
        let after = before.isEmpty ? [] : store.verifyReplicas(entry.objectKey)
        let repairFailures = (reader as? LocalObjectReader)?.repairFailures ?? []
        let intact = store.replicaCount - Set(after.map(\.replica)).count
        let replicaFindings = before.map { f -> Finding in
            let stillBad = after.contains { $0.replica == f.replica && $0.problem == f.problem }
            let unavailable = f.problem == .replicaUnavailable
            var message = f.detail + (f.osError.map { " [\($0)]" } ?? "")
            if !stillBad {
                message += " (repaired from a good replica by the read)"
            } else if !unavailable {
                let why = repairFailures.first { $0.replica == f.replica }.map { "the repair failed: \($0.detail)\($0.osError.map { " [\($0)]" } ?? ""); " } ?? ""
                message += " (still bad: \(why)\(intact) of \(store.replicaCount) replicas intact; run `hsmbackup store scrub --repair`)"
            }
            return Finding(layer: .store, severity: stillBad && !unavailable && intact == 0 ? .error : .warning, code: f.problem.rawValue,
                           message: message, location: FindingLocation(replica: f.replica, object: entry.objectKey))
        }
        report.findings.insert(contentsOf: replicaFindings, at: 0)
        return report
    }

    /// Restores a READY backup onto `hsm` (see `Restorer`); a dry run verifies everything and
    /// changes nothing.
    public func restore(_ idOrPrefix: String, onto hsm: any RestoreTarget, keyrings: [Keyring], dryRun: Bool,
                        progress: ((UInt64) -> Void)? = nil) throws -> RestoreSummary {
        let entry = try resolve(idOrPrefix)
        guard entry.state == .ready else {
            throw HSMBackupError(.backupNotReady, "backup \(entry.backupId) is \(entry.state.rawValue); undelete it first")
        }
        return try Restorer.restore(try openArchive(entry), onto: hsm, keyrings: keyrings, dryRun: dryRun,
                                    expectedBackupID: entry.backupId, progress: progress)
    }

    // MARK: lifecycle

    /// Backups matching `query` (by cluster, state, creation time), in the catalog's order.
    public func list(_ query: CatalogQuery = CatalogQuery()) throws -> [BackupEntry] { try catalog.listCurrent(query) }
    /// READY → PENDING_DELETION, recoverable for the catalog's recovery window (7 days by default).
    @discardableResult public func delete(_ id: String) throws -> BackupEntry { try catalog.delete(try resolve(id).backupId) }
    /// PENDING_DELETION → READY, within the recovery window.
    @discardableResult public func undelete(_ id: String) throws -> BackupEntry { try catalog.restore(try resolve(id).backupId) }
    /// Removes from every replica the backups whose recovery window has passed.
    @discardableResult public func purge() throws -> PurgeReport { try catalog.purge() }
    /// Sets and removes catalog tags.
    @discardableResult public func tag(_ id: String, set: [String: String], remove: [String]) throws -> BackupEntry {
        let backupId = try resolve(id).backupId
        if !set.isEmpty { try catalog.tag(backupId, set) }
        if !remove.isEmpty { try catalog.untag(backupId, remove) }
        return try catalog.entry(backupId)
    }
    /// Exempts a backup from retention (or not).
    @discardableResult public func setNeverExpires(_ id: String, _ flag: Bool) throws -> BackupEntry {
        try catalog.setNeverExpires(try resolve(id).backupId, flag)
    }
    /// A cluster's retention period, 7...379 days.
    public func setRetention(cluster: String, days: Int) throws { try catalog.setRetention(cluster, days: days) }
    /// Marks expired backups for deletion (never a cluster's newest, never a never-expires one);
    /// reports the ids it marked and, with their errors, those it had to skip.
    public func applyRetention(cluster: String? = nil) throws -> RetentionReport { try catalog.applyRetention(clusterId: cluster) }

    /// Copies a ready backup into another store, keeping its id and creation time; the copy
    /// records the source store, backup, cluster and copy time. The archive bytes are copied
    /// verified and unchanged.
    @discardableResult
    public func copy(_ id: String, to destination: BackupService, cluster: String? = nil) throws -> BackupEntry {
        let entry = try resolve(id)
        return try catalog.copy(entry.backupId, to: destination.catalog, destinationCluster: cluster, newBackupId: entry.backupId)
    }

    /// Puts a stored archive under other KMS keys (spec/FORMAT.md §3.7): a new envelope message
    /// with a fresh data key and message ID, its frames re-encrypted as they stream; the inner
    /// blob is unchanged, so no HSM is needed. Written as a new object `archive-g<n>`; the entry
    /// then points at it and the archive it pointed at when switching is deleted. Objects are
    /// never rewritten in place. The backup's writer lock is held throughout, so `store fsck`
    /// never takes the new object for a leftover; a kill leaves at most one archive the entry
    /// does not name, which fsck removes. An archive whose `backup-id` is not this backup's is
    /// refused (`metadataMismatch`) before anything is written, as inspect, verify and restore do.
    @discardableResult
    public func rewrap(_ id: String, keyrings: [Keyring], newKeyrings: [Keyring]) throws -> BackupEntry {
        let entry = try resolve(id)
        guard entry.state == .ready else {
            throw HSMBackupError(.backupNotReady, "backup \(entry.backupId) is \(entry.state.rawValue)")
        }
        let writing = try catalog.writerLock(entry.backupId)
        defer { withExtendedLifetime(writing) {} }
        guard entry.generation < BackupEntry.maxGeneration else {
            throw StoreError(.limitExceeded, key: entry.backupId, "generation \(entry.generation) is the last one; the backup cannot change")
        }
        // No read-repair of the source: the writer holds the new key's stripe lock, and a
        // repair would take the old key's too (a deadlock when both hash to one stripe).
        let header = HeaderReplaySource(ReaderSource(try openReader(entry, readRepair: false)))
        // The archive must be this backup's, as inspect, verify and restore check, before anything
        // is written: else an archive put under this key would be made this backup's for good.
        // The header bytes read for the check are the ones the rewrap then reads.
        try ArchiveMetadata.read(from: header).metadata.check(isBackup: entry.backupId)
        let source = header.replaying()
        let newKey = BackupCatalog.archiveKey(entry.backupId, generation: entry.generation + 1)
        let writer = try store.makeWriter(newKey)
        var committed = false
        do {
            try Rewrap.rewrap(source: source, sink: ObjectWriterSink(writer), keyrings: keyrings, newKeyrings: newKeyrings)
            let put = try writer.commit()
            committed = true
            var previous: String?
            let updated = try catalog.update(entry.backupId) { e in
                // The state and archive as they are now (a tag or another rewrap may have run).
                guard e.state == .ready else {
                    throw HSMBackupError(.backupNotReady, "backup \(e.backupId) became \(e.state.rawValue) during the rewrap")
                }
                previous = e.objectKey
                e.objectKey = newKey
                e.size = put.info.size
            }
            if let previous, previous != newKey { _ = try? store.delete(previous) }
            return updated
        } catch {
            writer.abort()
            // Remove the new object only when the entry positively names another one; if the
            // entry cannot be read now, the new object may be the one its newest metadata names,
            // and `store fsck` (which checks it first) decides.
            if committed, let current = try? catalog.entry(entry.backupId), current.objectKey != newKey {
                _ = try? store.delete(newKey)
            }
            throw error
        }
    }
}

/// Reads a stream's first bytes once for a check, then hands them out again followed by the
/// rest, so that the check and the reader after it see the same bytes.
final class HeaderReplaySource: ByteSource {
    private let source: ByteSource
    private var recorded: [UInt8] = []
    private var replayAt: Int?

    init(_ source: ByteSource) { self.source = source }

    /// From here on, reads start again at the first byte.
    func replaying() -> HeaderReplaySource {
        replayAt = 0
        return self
    }

    func read(maxCount: Int) throws -> [UInt8] {
        guard let at = replayAt else {
            let b = try source.read(maxCount: maxCount)
            recorded += b
            return b
        }
        guard at < recorded.count else { return try source.read(maxCount: maxCount) }
        let n = min(maxCount, recorded.count - at)
        replayAt = at + n
        defer { releaseReplayed() }
        return Array(recorded[at..<(at + n)])
    }

    /// After the replay, straight into the caller's buffer, as the underlying source reads
    /// (the archive's bytes are not copied once more on their way through).
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard let at = replayAt, at < recorded.count else {
            if replayAt == nil {
                let n = try source.read(into: buffer)
                recorded += UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                return n
            }
            return try source.read(into: buffer)
        }
        let n = min(buffer.count, recorded.count - at)
        recorded.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
        replayAt = at + n
        releaseReplayed()
        return n
    }

    /// Once every recorded byte went out again, they are not kept.
    private func releaseReplayed() {
        if let at = replayAt, at >= recorded.count, !recorded.isEmpty {
            recorded = []
            replayAt = 0
        }
    }
}

/// The store side of `createBackup`: the catalog entry and the store writer can only be made
/// once the backup id is known, which is when the envelope header (carrying it) is first written.
final class DeferredStoreSink: ByteSink {
    private let catalog: BackupCatalog
    private let hsm: any BackupSource
    private let tags: [String: String]
    private let neverExpires: Bool
    private var writer: ObjectWriting?
    private var backupId: String?
    /// Held from before the entry exists until it is READY or rolled back (spec 5.8, "Recovery").
    private var writing: BackupCatalog.WriterLock?

    init(catalog: BackupCatalog, hsm: any BackupSource, tags: [String: String], neverExpires: Bool) {
        self.catalog = catalog
        self.hsm = hsm
        self.tags = tags
        self.neverExpires = neverExpires
    }

    func write(_ bytes: [UInt8]) throws {
        if writer == nil {
            // The first write is the envelope header: its public metadata names the backup.
            let (_, metadata) = try ArchiveMetadata.read(from: MemorySource(bytes))
            let created = Timestamp.seconds(rfc3339: metadata.created).map { $0 * 1000 }
            writing = try catalog.writerLock(metadata.backupID)
            let entry = try catalog.create(NewBackup(backupId: metadata.backupID, clusterId: metadata.clusterID,
                                                     hsmId: metadata.hsmID, manufacturer: metadata.manufacturer,
                                                     tags: tags, neverExpires: neverExpires, createdMillis: created))
            backupId = entry.backupId
            writer = try catalog.store.makeWriter(entry.objectKey)
        }
        guard let writer else { throw HSMBackupError(.invalidArgument, "no store writer") }
        try writer.write(bytes)
    }

    func commit() throws -> PutReport {
        guard let writer else { throw HSMBackupError(.invalidArgument, "nothing was written") }
        return try writer.commit()
    }

    /// The entry is READY: the writer lock is no longer needed.
    func finished() { writing = nil }

    /// After a failure: drop the unpublished object and roll the half-made entry back (archive,
    /// entry and metadata; if that fails too, the next `store fsck` finishes the rollback).
    func abandon() {
        writer?.abort()
        if let backupId { _ = try? catalog.rollBack(backupId) }
        writing = nil
    }
}

/// `verifyReplicasBesideRead` on a thread of its own, started at once; `wait()` returns its
/// findings (at once after the first time).
final class ReplicaCheck: @unchecked Sendable {
    private let done = DispatchGroup()
    private var findings: [ReplicaFinding] = []

    init(store: ReplicatedStorage, key: String, skipping: Int?, verified: VerifiedChunkFeed?) {
        done.enter()
        let storeRef = UncheckedStore(store)
        DispatchQueue.global().async {
            self.findings = storeRef.store.verifyReplicasBesideRead(key, skipping: skipping, verified: verified)
            self.done.leave()
        }
    }

    /// Written before `leave`, read after `wait`: the group orders the two.
    @discardableResult func wait() -> [ReplicaFinding] {
        done.wait()
        return findings
    }

    private struct UncheckedStore: @unchecked Sendable {
        let store: ReplicatedStorage
        init(_ store: ReplicatedStorage) { self.store = store }
    }
}

/// Forwards a reader's pieces; before the read that ends the stream (where a reader repairs the
/// replicas it found damaged) it calls `gate`.
final class GatedReader: ObjectReading {
    private let inner: ObjectReading
    private let gate: () -> Void
    private var delivered: UInt64 = 0
    private var gated = false
    /// The inner reader returned its end (after its own end-of-stream checks passed).
    private(set) var readToEnd = false

    init(_ inner: ObjectReading, gate: @escaping () -> Void) {
        self.inner = inner
        self.gate = gate
    }

    var info: ObjectInfo { inner.info }

    func read() throws -> [UInt8]? {
        if !gated, delivered >= inner.info.size {
            gated = true
            gate()
        }
        guard let piece = try inner.read() else {
            readToEnd = true
            return nil
        }
        delivered += UInt64(piece.count)
        return piece
    }
}
