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
            guard (try? store.stat(e.objectKey)) != nil else {
                throw StoreError(.invalidState, key: backupId, "the archive object is missing or unreadable; it cannot be READY")
            }
            e.state = .ready
            e.deleteRequestedMillis = nil
        }
    }

    /// Removes the archives of backups pending deletion for longer than the recovery window.
    @discardableResult
    public func purge() throws -> PurgeReport {
        var report = PurgeReport()
        let now = clock.nowMillis()
        let due = try list(CatalogQuery(states: [.pendingDeletion])).filter {
            RetentionRules.purgeDue($0, nowMillis: now, windowMillis: recoveryWindowMillis)
        }
        for candidate in due {
            do {
                try update(candidate.backupId) { e in
                    // Re-checked under the lock: a concurrent restore wins.
                    guard RetentionRules.purgeDue(e, nowMillis: now, windowMillis: recoveryWindowMillis) else { return }
                    do {
                        let d = try store.delete(e.objectKey)
                        if !d.failed.isEmpty {
                            throw StoreError(.ioError, key: e.objectKey, "archive not removed from every replica", findings: d.failed)
                        }
                    } catch let err as StoreError where err.code == .notFound {}
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
            let g = (s.policies[clusterId]?.generation ?? latestPolicyGeneration(clusterId)) + 1
            let p = RetentionPolicy(clusterId: clusterId, days: days, generation: g)
            _ = try store.put(Self.policyKey(clusterId, g), bytes: try p.encodeObject())
            s.policies[clusterId] = days == 0 ? nil : p
            return g
        }
        if generation > 1 { _ = try? store.delete(Self.policyKey(clusterId, generation - 1)) }
    }

    private func latestPolicyGeneration(_ clusterId: String) -> UInt64 {
        let prefix = Self.policyPrefix(clusterId)
        return ((try? store.list(prefix: prefix)) ?? []).compactMap { UInt64($0.dropFirst(prefix.count), radix: 16) }.max() ?? 0
    }

    /// Marks expired backups `PENDING_DELETION` in one cluster (or every cluster with a policy);
    /// returns their ids.
    @discardableResult
    public func applyRetention(clusterId: String? = nil) throws -> [String] {
        let snapshot = try load()
        let now = clock.nowMillis()
        var expired: [String] = []
        for policy in snapshot.policies.values where clusterId == nil || policy.clusterId == clusterId {
            expired += RetentionRules.expired(snapshot.entries.values, policy: policy, nowMillis: now)
        }
        expired.sort(by: BackupEntry.utf8Less)
        for id in expired {
            try update(id) { e in
                guard e.state == .ready, !e.neverExpires else { return }
                e.state = .pendingDeletion
                e.deleteRequestedMillis = now
            }
        }
        return expired
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
        let now = destination.clock.nowMillis()
        let copy = BackupEntry(backupId: id, clusterId: cluster, hsmId: source.hsmId, manufacturer: source.manufacturer,
                               state: .createInProgress, createdMillis: source.createdMillis, updatedMillis: now,
                               size: 0, tags: source.tags, neverExpires: source.neverExpires,
                               copySource: CopySource(sourceStore: store.config.storeIdHex, sourceBackupId: backupId,
                                                      sourceCluster: source.clusterId, copiedMillis: now),
                               objectKey: Self.archiveKey(id))
        _ = try destination.insert(copy)
        let put: PutReport
        do {
            let reader = try store.get(source.objectKey)
            put = try destination.store.put(copy.objectKey, from: ReaderSource(reader))
        } catch {
            _ = try? destination.delete(id) // a failed copy leaves no READY-looking entry behind
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
        if offset == pending.count {
            guard let next = try reader.read() else { return [] }
            pending = next
            offset = 0
        }
        let n = Swift.min(maxCount, pending.count - offset)
        defer { offset += n }
        return Array(pending[offset..<(offset + n)])
    }
}
