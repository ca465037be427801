import Durability
import Foundation
import HSMBackup
import ObjectStore
import S3Store
import Prometheus

/// What `hsmbackup status` reports: per schedule, per cluster and for the store; the verdict
/// picks the exit code (docs/SCHEDULES.md, "Monitoring").
public struct HealthReport: Codable, Sendable {
    /// Worst first: the exit code of `status` is the first that holds.
    public enum Verdict: String, Codable, Sendable {
        case ok
        /// A cluster's last scheduled verification failed.
        case verificationFailed = "verification-failed"
        /// A scheduled cluster's newest READY backup is older than its interval plus the grace
        /// (or it has none, and its first schedule was added longer ago than that).
        case stale
        /// A replica of the store is unavailable, or the last scheduled scrub did not pass.
        case storeDegraded = "store-degraded"
    }

    public struct ScheduleHealth: Codable, Sendable {
        public var name: String
        public var cluster: String
        public var source: String
        /// The source's kind, as in the schedule file: `simulated-hsm` or `pkcs11`.
        public var sourceKind: String
        public var every: Interval
        public var verify: VerificationLevel
        public var lastRun: String?
        public var lastOutcome: String?
        public var lastError: String?
        public var lastBackupId: String?
        public var lastSuccess: String?
        public var consecutiveFailures: Int
        public var lastVerification: ScheduleRecord.Verification?
        /// When it is next due (a past time: the next `schedule run` runs it).
        public var nextRun: String
    }

    public struct ClusterHealth: Codable, Sendable {
        public var cluster: String
        public var schedules: [String]
        /// The shortest interval of its schedules plus the grace, in seconds (nil: unscheduled).
        public var maxAgeSeconds: UInt64?
        public var readyBackups: Int
        /// READY backups tagged `verification=failed` (their scheduled verification failed): kept
        /// for inspection, counted in `readyBackups`, but never the newest good backup.
        public var failedVerificationBackups: [String]
        /// The newest READY backup that did not fail its verification, and its age.
        public var newestBackupId: String?
        public var newestCreated: String?
        public var newestAgeSeconds: UInt64?
        /// The newest verification any of its schedules ran.
        public var lastVerification: ScheduleRecord.Verification?
        /// ok, stale, verification-failed, or unscheduled (backups but no schedule: not judged).
        public var status: String
        public var problems: [String]
    }

    public struct StoreHealth: Codable, Sendable {
        public var root: String
        public var replicas: Int
        public var replicasAvailable: Int
        public var problems: [String]
        public var scrubEvery: Interval
        public var lastScrub: ScrubRecord?
        public var nextScrub: String?
    }

    public var time: String
    public var graceSeconds: UInt64
    public var verdict: Verdict
    public var schedules: [ScheduleHealth]
    public var clusters: [ClusterHealth]
    public var store: StoreHealth?
    /// Why the store could not be read (then clusters show only what the schedules know).
    public var storeError: String?
}

public enum Health {
    /// The default grace added to a cluster's interval before it counts as stale: one hourly
    /// timer period plus its randomized delay.
    public static let defaultGrace = Interval(seconds: 2 * 3_600)

    /// Builds the report from the schedule file, the state file and the store's catalog, at the
    /// clock's time. Reads only.
    public static func report(home: ScheduleHome, clock: StoreClock, grace: Interval = defaultGrace) throws -> HealthReport {
        let file = try home.loadSchedules()
        let state = try home.loadState()
        let now = clock.nowMillis() / 1000

        var entries: [BackupEntry] = []
        var storeHealth: HealthReport.StoreHealth?
        var storeError: String?
        do {
            // The configured store, local or S3 (store.json): status sees only the protocol.
            let store = try StoreLocator.open(root: home.store, clock: clock, removeStaleTemps: false)
            let catalog = try BackupCatalog(store: store, clock: clock)
            entries = try catalog.listCurrent(CatalogQuery())
            let problems = (0..<store.replicaCount).compactMap { store.replicaStatus($0) }
            storeHealth = HealthReport.StoreHealth(
                root: store.location, replicas: store.replicaCount, replicasAvailable: store.replicaCount - problems.count,
                problems: problems.map { "replica \($0.replica): \($0.detail)" }, scrubEvery: file.scrubEvery, lastScrub: state.scrub,
                nextScrub: Timestamp.rfc3339(DueRules.scrubNext(file.scrubEvery, state.scrub) ?? now))
        } catch {
            storeError = "\(error)"
        }

        let schedules = file.schedules.map { s -> HealthReport.ScheduleHealth in
            let r = state.record(for: s)
            return HealthReport.ScheduleHealth(
                name: s.name, cluster: s.currentCluster(r), source: s.source.description, sourceKind: s.source.kind, every: s.every, verify: s.verify,
                lastRun: r?.lastRun, lastOutcome: r?.lastOutcome, lastError: r?.lastError, lastBackupId: r?.lastBackupId,
                lastSuccess: r?.lastSuccess, consecutiveFailures: r?.consecutiveFailures ?? 0, lastVerification: r?.lastVerification,
                nextRun: Timestamp.rfc3339(DueRules.nextRun(s, r)))
        }

        let ready = entries.filter { $0.state == .ready }
        // Each schedule counts for the cluster its backups land in (its last backup's cluster).
        let clusterOf = Dictionary(uniqueKeysWithValues: file.schedules.map { ($0.name, $0.currentCluster(state.record(for: $0))) })
        let clusterNames = Set(clusterOf.values).union(ready.map(\.clusterId)).sorted()
        var clusters: [HealthReport.ClusterHealth] = []
        for c in clusterNames {
            let mine = file.schedules.filter { clusterOf[$0.name] == c }
            let backups = ready.filter { $0.clusterId == c }
            let failedVerification = backups.filter(\.failedVerification)
                .sorted { ($0.createdMillis, $0.backupId) < ($1.createdMillis, $1.backupId) }.map(\.backupId)
            let newest = backups.filter { !$0.failedVerification }.max { ($0.createdMillis, $0.backupId) < ($1.createdMillis, $1.backupId) }
            let verification = mine.compactMap { state.record(for: $0)?.lastVerification }
                .max { ($0.at, $0.backupId) < ($1.at, $1.backupId) }
            var h = HealthReport.ClusterHealth(
                cluster: c, schedules: mine.map(\.name), maxAgeSeconds: nil, readyBackups: backups.count,
                failedVerificationBackups: failedVerification,
                newestBackupId: newest?.backupId, newestCreated: newest.map { Timestamp.rfc3339(millis: $0.createdMillis) },
                newestAgeSeconds: newest.map { now > $0.createdMillis / 1000 ? now - $0.createdMillis / 1000 : 0 },
                lastVerification: verification, status: "ok", problems: [])
            if mine.isEmpty {
                h.status = "unscheduled"
            } else {
                let allowed = mine.map(\.every.seconds).min()! + grace.seconds
                h.maxAgeSeconds = allowed
                if let v = verification, !v.passed {
                    h.status = HealthReport.Verdict.verificationFailed.rawValue
                    h.problems.append("the last verification (\(v.level.rawValue), backup \(v.backupId.isEmpty ? "none" : v.backupId), at \(v.at)) failed with \(v.errors) error(s)")
                }
                if let newest, newest.createdMillis / 1000 > now &+ 300 {
                    // Dated in the future: the clock was ahead when it was made, or is behind now.
                    // Its age would read 0 and hide a schedule that has stopped.
                    if h.status == "ok" { h.status = HealthReport.Verdict.stale.rawValue }
                    h.problems.append("the newest READY backup \(newest.backupId) is dated \(Timestamp.rfc3339(millis: newest.createdMillis)), in the future: check the clock")
                } else if let age = h.newestAgeSeconds {
                    if age > allowed {
                        if h.status == "ok" { h.status = HealthReport.Verdict.stale.rawValue }
                        h.problems.append("the newest \(failedVerification.isEmpty ? "" : "verified ")READY backup is \(Interval(seconds: age)) old; its schedule allows \(Interval(seconds: allowed))")
                    }
                } else {
                    let since = mine.compactMap { Timestamp.seconds(rfc3339: $0.added) }.min() ?? now
                    if now > since, now - since > allowed {
                        if h.status == "ok" { h.status = HealthReport.Verdict.stale.rawValue }
                        h.problems.append("no \(failedVerification.isEmpty ? "" : "verified ")READY backup, and its schedule was added \(Interval(seconds: now - since)) ago")
                    }
                }
                if let last = failedVerification.last {
                    h.problems.append("\(failedVerification.count) READY backup(s) failed their verification (tagged \(BackupEntry.verificationTag)=\(BackupEntry.verificationFailed), newest \(last)); they do not count as the newest backup")
                }
                for s in mine {
                    if let r = state.record(for: s), r.lastOutcome == "failed", let e = r.lastError {
                        h.problems.append("schedule \(s.name): last run failed (\(r.consecutiveFailures) in a row): \(e)")
                    }
                }
            }
            clusters.append(h)
        }

        var verdict = HealthReport.Verdict.ok
        if clusters.contains(where: { $0.status == HealthReport.Verdict.verificationFailed.rawValue }) {
            verdict = .verificationFailed
        } else if clusters.contains(where: { $0.status == HealthReport.Verdict.stale.rawValue }) {
            verdict = .stale
        } else if storeError != nil || storeHealth.map({ $0.replicasAvailable < $0.replicas || $0.lastScrub?.outcome == "failed" }) == true {
            verdict = .storeDegraded
        }
        return HealthReport(time: Timestamp.rfc3339(now), graceSeconds: grace.seconds, verdict: verdict, schedules: schedules,
                            clusters: clusters, store: storeHealth, storeError: storeError)
    }
}

/// The report in the Prometheus text exposition format (through swift-prometheus's registry),
/// for node_exporter's textfile collector.
public enum PrometheusExport {
    public static func render(_ r: HealthReport) -> [UInt8] {
        let reg = PrometheusCollectorRegistry()
        func ts(_ s: String?) -> Double? { s.flatMap(Timestamp.seconds(rfc3339:)).map { Double($0) } }
        // The unit is part of each name already (`_seconds`), so the descriptor's unit is empty.
        func d(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "hsmbackup", metricName: name, unitName: "", helpText: help)
        }
        func g(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
            reg.makeGauge(descriptor: d(name, help), labels: labels).set(value)
        }
        func g(_ name: String, _ help: String, _ value: Double) {
            reg.makeGauge(descriptor: d(name, help)).set(value)
        }
        let verdicts: [HealthReport.Verdict] = [.ok, .verificationFailed, .stale, .storeDegraded]
        for v in verdicts {
            g("status", "1 for the verdict of `hsmbackup status` (its exit code names the same)", [("verdict", v.rawValue)], r.verdict == v ? 1 : 0)
        }
        g("status_time_seconds", "when the report was made (Unix time)", ts(r.time) ?? 0)
        for s in r.schedules {
            let l = [("schedule", s.name), ("cluster", s.cluster)]
            g("schedule_interval_seconds", "the schedule's interval", l, Double(s.every.seconds))
            g("schedule_next_run_timestamp_seconds", "when the schedule is next due (Unix time)", l, ts(s.nextRun) ?? 0)
            g("schedule_consecutive_failures", "failed runs of the schedule since its last success", l, Double(s.consecutiveFailures))
            if let t = ts(s.lastRun) {
                g("schedule_last_run_timestamp_seconds", "start of the schedule's last run (Unix time)", l, t)
                g("schedule_last_run_success", "1 if the schedule's last run succeeded", l, s.lastOutcome == "ok" ? 1 : 0)
            }
            if let t = ts(s.lastSuccess) {
                g("schedule_last_success_timestamp_seconds", "start of the schedule's last successful run (Unix time)", l, t)
            }
        }
        for c in r.clusters {
            let l = [("cluster", c.cluster)]
            g("cluster_ready_backups", "READY backups of the cluster in the store", l, Double(c.readyBackups))
            g("cluster_failed_verification_backups", "READY backups of the cluster tagged verification=failed", l,
              Double(c.failedVerificationBackups.count))
            g("cluster_within_schedule", "1 if the cluster's status is ok (or it has no schedule)", l, c.status == "ok" || c.status == "unscheduled" ? 1 : 0)
            if let m = c.maxAgeSeconds { g("cluster_max_age_seconds", "the age its schedules allow the newest backup (interval + grace)", l, Double(m)) }
            if let t = ts(c.newestCreated) {
                g("cluster_newest_backup_timestamp_seconds", "creation time of the cluster's newest READY backup (Unix time)", l, t)
            }
            if let a = c.newestAgeSeconds { g("cluster_newest_backup_age_seconds", "age of the cluster's newest READY backup", l, Double(a)) }
            if let v = c.lastVerification {
                let lv = l + [("level", v.level.rawValue)]
                g("cluster_last_verification_success", "1 if the cluster's last scheduled verification passed", lv, v.passed ? 1 : 0)
                g("cluster_last_verification_timestamp_seconds", "when the cluster's last scheduled verification ran (Unix time)", lv, ts(v.at) ?? 0)
            }
        }
        if let s = r.store {
            g("store_replicas", "replica directories of the store", Double(s.replicas))
            g("store_replicas_available", "replica directories that are present and usable", Double(s.replicasAvailable))
            if let scrub = s.lastScrub {
                g("store_last_scrub_timestamp_seconds", "when the last scheduled scrub ran (Unix time)", ts(scrub.lastRun) ?? 0)
                g("store_last_scrub_success", "1 if the last scheduled scrub left no damage", scrub.outcome == "ok" ? 1 : 0)
                g("store_last_scrub_repaired", "replicas the last scheduled scrub repaired", Double(scrub.repaired))
                g("store_last_scrub_unrecoverable", "objects the last scheduled scrub could not repair", Double(scrub.unrecoverable))
            }
        }
        var out: [UInt8] = []
        reg.emit(into: &out)
        return out
    }

    /// Writes the file atomically (mode 0644: node_exporter runs as another user); the textfile
    /// collector never sees half a file.
    public static func write(_ r: HealthReport, to path: String) throws {
        do { try AtomicFile.write(render(r), to: path, mode: 0o644) } catch let e as FileError {
            throw SchedulingError(.io, path: path, e.reason)
        }
    }
}
