// The backup lifecycle, modelled on CloudHSM's (spec/FORMAT.md section 5.8):
//   CREATE_IN_PROGRESS → READY → PENDING_DELETION → DELETED
//                          ↑___________| (restore within the recovery window)
// Retention per cluster marks expired READY backups PENDING_DELETION, except the cluster's most
// recent READY backup and backups flagged never-expires. Purge removes the archive of backups whose
// recovery window has passed from every replica, then marks them DELETED.
#if canImport(Glibc)
import Glibc
#endif
import BackupCrypto
import ByteCoding

/// What `applyRetention` did: the backups it marked, and those it could not change.
public struct RetentionReport: Codable, Sendable {
    public struct Failure: Codable, Equatable, Sendable {
        public let backupId: String
        public let code: StoreError.Code
        public let message: String
    }
    public var expired: [String] = []
    public var failed: [Failure] = []
}

public struct PurgeReport: Codable, Sendable {
    public var purged: [String] = []
    /// Backups whose archive could not be removed from every replica; they stay pending.
    public var failed: [ObjectFinding] = []
}

extension BackupCatalog {
    /// `READY` (or an abandoned `CREATE_IN_PROGRESS`) → `PENDING_DELETION`.
    @discardableResult
    public func delete(_ backupId: String) throws -> BackupEntry {
        try update(backupId) { e in
            guard e.state == .ready || e.state == .createInProgress else {
                throw StoreError(.invalidState, key: backupId, "backup is \(e.state.rawValue)")
            }
            e.state = .pendingDeletion
            e.deleteRequestedMillis = clock.nowMillis()
        }
    }

    /// `PENDING_DELETION` → `READY`, while the recovery window is open.
    @discardableResult
    public func restore(_ backupId: String) throws -> BackupEntry {
        try update(backupId) { e in
            guard e.state == .pendingDeletion, e.deleteRequestedMillis != nil else {
                throw StoreError(.invalidState, key: backupId, "backup is \(e.state.rawValue), not PENDING_DELETION")
            }
            guard RetentionRules.restorable(e, nowMillis: clock.nowMillis(), windowMillis: recoveryWindowMillis) else {
                throw StoreError(.invalidState, key: backupId, "the recovery window has passed")
            }
            guard let info = try? store.stat(e.objectKey) else {
                throw StoreError(.invalidState, key: backupId, "the archive object is missing or unreadable; it cannot be READY")
            }
            // The size comes from the archive's record (a deleted CREATE_IN_PROGRESS entry has none).
            e.state = .ready
            e.size = info.size
            e.deleteRequestedMillis = nil
        }
    }

    /// Removes the archives of backups pending deletion for longer than the recovery window:
    /// every archive object of the backup (`archive` and any `archive-g<n>` a rewrap left), not
    /// only the one the entry names.
    @discardableResult
    public func purge() throws -> PurgeReport {
        var report = PurgeReport()
        let now = clock.nowMillis()
        let due = try list(CatalogQuery(states: [.pendingDeletion])).filter {
            RetentionRules.purgeDue($0, nowMillis: now, windowMillis: recoveryWindowMillis)
        }
        let inv = due.isEmpty ? Inventory() : try inventory()
        for candidate in due {
            do {
                try update(candidate.backupId) { e in
                    // Re-checked under the lock: a concurrent restore wins.
                    guard RetentionRules.purgeDue(e, nowMillis: now, windowMillis: recoveryWindowMillis) else { return }
                    for key in Set((inv.archives[e.backupId] ?? []) + [e.objectKey]).sorted() {
                        do {
                            let d = try store.delete(key)
                            if !d.failed.isEmpty {
                                throw StoreError(.ioError, key: key, "archive not removed from every replica", findings: d.failed)
                            }
                        } catch let err as StoreError where err.code == .notFound {}
                    }
                    e.state = .deleted
                }
                if try entry(candidate.backupId).state == .deleted { report.purged.append(candidate.backupId) }
            } catch let err as StoreError {
                let findings = err.findings.isEmpty
                    ? [ReplicaFinding(replica: -1, path: candidate.objectKey, problem: .ioError, detail: err.description)] : err.findings
                report.failed += findings.map { ObjectFinding(key: candidate.backupId, finding: $0) }
            }
        }
        return report
    }

    // MARK: retention

    public func setRetention(_ clusterId: String, days: Int) throws {
        try ObjectKey.validateName(clusterId, what: "cluster id")
        guard RetentionPolicy.allowedDays.contains(days) else {
            throw StoreError(.invalidArgument, key: clusterId, "retention must be \(RetentionPolicy.allowedDays.lowerBound)...\(RetentionPolicy.allowedDays.upperBound) days, not \(days)")
        }
        try writePolicy(clusterId, days: days)
    }

    public func removeRetention(_ clusterId: String) throws {
        try ObjectKey.validateName(clusterId, what: "cluster id")
        try writePolicy(clusterId, days: 0)
    }

    private func writePolicy(_ clusterId: String, days: Int) throws {
        let generation: UInt64 = try mutate { s in
            // The stored objects count too: a policy change killed after its object and before
            // the catalog write left a generation the catalog does not know, whose key is taken.
            let last = max(s.policies[clusterId]?.generation ?? 0, latestPolicyGeneration(clusterId))
            guard last < BackupEntry.maxGeneration else {
                throw StoreError(.limitExceeded, key: clusterId, "policy generation \(last) is the last one")
            }
            let g = last + 1
            let p = RetentionPolicy(clusterId: clusterId, days: days, generation: g)
            _ = try store.put(Self.policyKey(clusterId, g), bytes: try p.encodeObject())
            s.policies[clusterId] = days == 0 ? nil : p
            return g
        }
        if generation > 1 { _ = try? store.delete(Self.policyKey(clusterId, generation - 1)) }
    }

    private func latestPolicyGeneration(_ clusterId: String) -> UInt64 {
        let prefix = Self.policyPrefix(clusterId)
        return ((try? store.list(prefix: prefix)) ?? []).compactMap {
            Self.generation($0.split(separator: "/").last ?? "", prefix: "policy-")
        }.filter { $0 <= BackupEntry.maxGeneration }.max() ?? 0
    }

    /// Marks expired backups `PENDING_DELETION` in one cluster (or every cluster with a policy).
    /// A backup whose change fails is skipped and reported; the others are still marked.
    ///
    /// Decided and done under one hold of the catalog lock, over each entry as its newest
    /// metadata says: from a snapshot read before the lock, a `backup delete` of the newest
    /// backup in between (or a change whose metadata is ahead of the catalog) would let the rule
    /// "keep the newest" expire every READY backup of the cluster.
    @discardableResult
    public func applyRetention(clusterId: String? = nil) throws -> RetentionReport {
        let now = clock.nowMillis()
        var report = RetentionReport()
        var changed: [BackupEntry] = []
        try mutate { s in
            let known = s.entries.count > 16 ? store.existingKeys(prefix: "backups/") : nil
            var expired: [String] = []
            for policy in s.policies.values where clusterId == nil || policy.clusterId == clusterId {
                let entries = s.entries.values.filter { $0.clusterId == policy.clusterId }.map { current($0, known: known) }
                expired += RetentionRules.expired(entries, policy: policy, nowMillis: now)
            }
            expired.sort(by: BackupEntry.utf8Less)
            for id in expired {
                do {
                    changed.append(try change(&s, id) { e in
                        guard e.state == .ready, !e.neverExpires else { return }
                        e.state = .pendingDeletion
                        e.deleteRequestedMillis = now
                    })
                    report.expired.append(id)
                } catch let err as StoreError {
                    report.failed.append(RetentionReport.Failure(backupId: id, code: err.code, message: err.description))
                }
            }
        }
        for e in changed { dropOldMeta(e.backupId, before: e.generation) }
        return report
    }

    // MARK: tags and flags

    @discardableResult
    public func tag(_ backupId: String, _ tags: [String: String]) throws -> BackupEntry {
        try update(backupId) { e in e.tags.merge(tags) { _, new in new } }
    }

    @discardableResult
    public func untag(_ backupId: String, _ keys: [String]) throws -> BackupEntry {
        try update(backupId) { e in for k in keys { e.tags[k] = nil } }
    }

    @discardableResult
    public func setNeverExpires(_ backupId: String, _ flag: Bool) throws -> BackupEntry {
        try update(backupId) { e in e.neverExpires = flag }
    }

    // MARK: copy

    /// Copies a READY backup into another store's catalog: the archive bytes are streamed and
    /// verified, the copy keeps the original creation time and records where it came from.
    @discardableResult
    public func copy(_ backupId: String, to destination: BackupCatalog, destinationCluster: String? = nil,
                     newBackupId: String? = nil) throws -> BackupEntry {
        let source = try entry(backupId)
        guard source.state == .ready else {
            throw StoreError(.invalidState, key: backupId, "only READY backups are copied, this one is \(source.state.rawValue)")
        }
        let id = newBackupId ?? ("backup-" + Hex.encode(SecureRandom.bytes(count: 8)))
        let cluster = destinationCluster ?? source.clusterId
        try ObjectKey.validateName(id, what: "backup id")
        try ObjectKey.validateName(cluster, what: "cluster id")
        let sourceInfo = try store.stat(source.objectKey)
        let sourceStore = store.storeIdHex
        // A retry: an earlier attempt that was killed (no live writer) is finished when its
        // archive is the source's, bytes for bytes, or rolled back; a DELETED copy is replaced.
        // Only when the destination has a trace of this id: recovery's lock is per stripe, and a
        // writer of another backup in the same stripe must not make a first copy fail.
        let hasTrace = try destination.load().entries[id] != nil
            || !(try destination.store.list(prefix: BackupCatalog.backupPrefix(id))).isEmpty
        let recovered = !hasTrace ? [] : try destination.recoverBackup(id) { e in
            guard e.copySource?.sourceStore == sourceStore, e.copySource?.sourceBackupId == backupId,
                  (try? destination.store.stat(e.objectKey).sha256) == sourceInfo.sha256 else { return "not this backup's archive" }
            return destination.storeLevelArchiveCheck(e)
        }
        if recovered.contains(where: { $0.action == .skipped }) {
            throw StoreError(.alreadyExists, key: id, "another copy or create of this backup id is in progress in the destination")
        }
        if let existing = try destination.load().entries[id], existing.state == .ready,
           existing.copySource?.sourceStore == sourceStore, existing.copySource?.sourceBackupId == backupId,
           (try? destination.store.stat(existing.objectKey).sha256) == sourceInfo.sha256 {
            return existing // copied before (this is a retry): nothing left to do
        }
        let now = destination.clock.nowMillis()
        let copy = BackupEntry(backupId: id, clusterId: cluster, hsmId: source.hsmId, manufacturer: source.manufacturer,
                               state: .createInProgress, createdMillis: source.createdMillis, updatedMillis: now,
                               size: 0, tags: source.tags, neverExpires: source.neverExpires,
                               copySource: CopySource(sourceStore: sourceStore, sourceBackupId: backupId,
                                                      sourceCluster: source.clusterId, copiedMillis: now),
                               objectKey: Self.archiveKey(id))
        let writing = try destination.writerLock(id)
        defer { withExtendedLifetime(writing) {} }
        let inserted = try destination.insert(copy)
        let put: PutReport
        do {
            // No read-repair: the destination's stripe lock is held while this reads.
            let reader = try store.get(source.objectKey, readRepair: false)
            put = try destination.store.put(inserted.objectKey, from: ReaderSource(reader))
        } catch {
            _ = try? destination.rollBack(id) // a failed copy leaves nothing behind, so it can be retried
            throw error
        }
        return try destination.markReady(id, size: put.info.size)
    }
}


/// Adapts a verified object stream to a ObjectSource (for copies between stores).
public final class ReaderSource: ObjectSource {
    private let reader: ObjectReading
    private var pending: [UInt8] = []
    private var offset = 0

    public init(_ reader: ObjectReading) { self.reader = reader }

    public func read(maxCount: Int) throws -> [UInt8] {
        guard try refill() else { return [] }
        let n = Swift.min(maxCount, pending.count - offset)
        defer { offset += n }
        return Array(pending[offset..<(offset + n)])
    }

    /// `read(maxCount:)` straight into the caller's buffer (no array in between: a verification
    /// reads a whole archive through here).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard try refill() else { return 0 }
        let n = Swift.min(buffer.count, pending.count - offset)
        if n > 0 {
            pending.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
        }
        offset += n
        return n
    }

    /// Makes sure unread bytes are pending: false at the end of the stream.
    private func refill() throws -> Bool {
        if offset == pending.count {
            guard let next = try reader.read() else { return false }
            pending = next
            offset = 0
        }
        return true
    }
}
