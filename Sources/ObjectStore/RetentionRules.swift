// The time rules of the backup lifecycle (spec/FORMAT.md section 5.8, "Lifecycle"), as pure
// functions of entries, a policy and the time, so the catalog operations and the fuzz target
// (`retention-policy`) run the same code:
//   retention: READY backups of the policy's cluster with created + days ≤ now expire, except the
//              cluster's most recent READY backup (creation time, then backup id) that is not
//              tagged verification=failed (the most recent READY one if every one is), and
//              backups flagged never-expires;
//   purge:     PENDING_DELETION whose requested + recovery window ≤ now;
//   restore:   PENDING_DELETION while now < requested + recovery window.
// Every time in an entry comes from stored bytes, so the arithmetic never traps: a time past
// the end of UInt64 milliseconds never comes (fuzz finding, retention-policy). A policy outside
// 7...379 days (a removed one, days 0) expires nothing.

public enum RetentionRules {
    /// The ids of the backups `policy` expires at `nowMillis`, ascending (UTF-8 order). A removed
    /// policy (days 0) expires nothing.
    public static func expired<S: Sequence>(_ entries: S, policy: RetentionPolicy, nowMillis: UInt64) -> [String]
    where S.Element == BackupEntry {
        guard RetentionPolicy.allowedDays.contains(policy.days) else { return [] }
        let ready = entries.filter { $0.clusterId == policy.clusterId && $0.state == .ready }
        func older(_ a: BackupEntry, _ b: BackupEntry) -> Bool {
            a.createdMillis != b.createdMillis ? a.createdMillis < b.createdMillis : BackupEntry.utf8Less(a.backupId, b.backupId)
        }
        // A backup that failed its verification never stands in for the newest good one.
        let newest = ready.filter { !$0.failedVerification }.max(by: older) ?? ready.max(by: older)
        var out: [String] = []
        for e in ready where e.backupId != newest?.backupId && !e.neverExpires
            && plus(e.createdMillis, UInt64(policy.days) * Millis.day).map({ $0 <= nowMillis }) == true {
            out.append(e.backupId)
        }
        return out.sorted(by: BackupEntry.utf8Less)
    }

    /// Whether purge removes the backup's archive now.
    public static func purgeDue(_ e: BackupEntry, nowMillis: UInt64, windowMillis: UInt64) -> Bool {
        guard e.state == .pendingDeletion, let requested = e.deleteRequestedMillis else { return false }
        return plus(requested, windowMillis).map { $0 <= nowMillis } == true
    }

    /// Whether the backup can still be restored to READY (the archive must also be readable).
    public static func restorable(_ e: BackupEntry, nowMillis: UInt64, windowMillis: UInt64) -> Bool {
        guard e.state == .pendingDeletion, let requested = e.deleteRequestedMillis else { return false }
        return plus(requested, windowMillis).map { nowMillis < $0 } ?? true
    }

    /// a + b, or nil past the end of time (a time beyond UInt64 milliseconds never comes).
    static func plus(_ a: UInt64, _ b: UInt64) -> UInt64? {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? nil : sum
    }
}
