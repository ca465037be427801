import Envelope
import Foundation
import HSMArchive
import HSMBackup
import ObjectStore
import S3Store
import PKCS11HSM
import SimulatedHSM

/// One log line: `key=value` pairs, one event per line, for journald and `grep`. A value with a
/// space, quote, `=` or backslash is double-quoted with `\"` and `\\`; control characters are
/// escaped (`\n`, `\u{1B}`), so no value can fake a line.
public struct LogEvent: Sendable, CustomStringConvertible {
    public var fields: [(key: String, value: String)]

    public init(_ fields: [(String, String)]) { self.fields = fields.map { (key: $0.0, value: $0.1) } }

    public subscript(key: String) -> String? { fields.first { $0.key == key }?.value }

    public var description: String { fields.map { "\($0.key)=\(Self.quote($0.value))" }.joined(separator: " ") }

    static func quote(_ v: String) -> String {
        var out = "", needsQuotes = v.isEmpty
        for u in v.unicodeScalars {
            switch u {
            case "\"": out += "\\\""; needsQuotes = true
            case "\\": out += "\\\\"; needsQuotes = true
            case "\n": out += "\\n"; needsQuotes = true
            case "\r": out += "\\r"; needsQuotes = true
            case "\t": out += "\\t"; needsQuotes = true
            case " ", "=": out.unicodeScalars.append(u); needsQuotes = true
            default:
                if u.value < 0x20 || (0x7F...0x9F).contains(u.value) {
                    out += "\\u{" + String(u.value, radix: 16, uppercase: true) + "}"
                    needsQuotes = true
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return needsQuotes ? "\"" + out + "\"" : out
    }
}

/// What one `schedule run` did.
public struct RunSummary: Codable, Sendable {
    public var due: [String] = []
    public var succeeded: [String] = []
    public var failed: [String] = []
    /// nil: the scrub was not due; otherwise whether it passed.
    public var scrubPassed: Bool?
    public var allSucceeded: Bool { failed.isEmpty && scrubPassed != false }
}

/// The rules of when things are due (docs/SCHEDULES.md, "When a schedule is due").
public enum DueRules {
    /// After a failed attempt, the next one waits at most this long (an hourly timer retries it
    /// each hour), never longer than the schedule's own interval.
    public static let retryAfter: UInt64 = 3_600
    /// A run up to this much early still counts (min(5 min, interval / 12)), so a timer that fires a
    /// few seconds before the hour does not push a daily schedule back by a whole timer period.
    public static func slack(_ every: Interval) -> UInt64 { min(300, every.seconds / 12) }

    /// When the schedule is next due (seconds since the epoch): when it was added if it never ran.
    public static func nextRun(_ s: Schedule, _ r: ScheduleRecord?) -> UInt64 {
        guard let last = r?.lastRun.flatMap(Timestamp.seconds(rfc3339:)) else {
            return Timestamp.seconds(rfc3339: s.added) ?? 0
        }
        // A run whose backup was stored and verified waits a whole interval even if its retention
        // step failed (lastSuccess is that run): retrying hourly would add a backup an hour.
        let succeeded = r?.lastOutcome == "ok" || (r?.lastSuccess != nil && r?.lastSuccess == r?.lastRun)
        let wait = succeeded ? s.every.seconds : min(s.every.seconds, retryAfter)
        return last &+ wait
    }

    /// Due now? However many intervals were missed, a due schedule runs once, and its next run
    /// is one interval after that run.
    public static func isDue(_ s: Schedule, _ r: ScheduleRecord?, now: UInt64) -> Bool {
        guard r?.lastRun != nil else { return true }
        // A last run in the future: the clock was ahead then (or went back since). Due now, or
        // backups would stop for as long as the clock was ahead.
        if let last = r?.lastRun.flatMap(Timestamp.seconds(rfc3339:)), last > now &+ slack(s.every) { return true }
        return now &+ slack(s.every) >= nextRun(s, r)
    }

    public static func scrubNext(_ every: Interval, _ r: ScrubRecord?) -> UInt64? {
        guard let last = r.flatMap({ Timestamp.seconds(rfc3339: $0.lastRun) }) else { return nil }
        return last &+ every.seconds
    }

    public static func scrubDue(_ every: Interval, _ r: ScrubRecord?, now: UInt64) -> Bool {
        guard let next = scrubNext(every, r) else { return true }
        return now &+ slack(every) >= next
    }
}

extension ScheduleStateFile {
    /// Schedule `s`'s record, if it is that schedule's: one whose last run is older than the
    /// schedule was added belongs to an earlier schedule of the same name (removed, then added
    /// again, which is how a schedule is changed), whose state the new one must not inherit.
    public func record(for s: Schedule) -> ScheduleRecord? {
        guard let r = schedules[s.name] else { return nil }
        if let last = r.lastRun.flatMap(Timestamp.seconds(rfc3339:)), let added = Timestamp.seconds(rfc3339: s.added), last < added {
            return nil
        }
        return r
    }
}

/// `hsmbackup schedule run`: everything that is due, once, under the run lock. Each due schedule
/// gets a backup, then its verification, then `retention apply` for its cluster; the store is
/// scrubbed with repair when its interval has passed. A failing schedule is logged and recorded
/// and the others still run. The state file is written after every schedule, atomically.
public final class ScheduleRunner {
    public let home: ScheduleHome
    public let clock: StoreClock
    private let describe: (Error) -> String
    private let log: (LogEvent) -> Void
    private let resolveKeys: (([String]) throws -> [Keyring])?

    /// `describe` turns an error into the text logged (the CLI adds its exit code); `log` gets
    /// each event as it happens; `resolveKeys` turns a schedule's `kmsKeys` into keyrings
    /// (default: keys of the home's local KMS), so other KMS kinds plug in without changing the runner.
    public init(home: ScheduleHome, clock: StoreClock, describe: @escaping (Error) -> String = { "\($0)" },
                resolveKeys: (([String]) throws -> [Keyring])? = nil, log: @escaping (LogEvent) -> Void) {
        self.home = home
        self.clock = clock
        self.describe = describe
        self.resolveKeys = resolveKeys
        self.log = log
    }

    private var nowSeconds: UInt64 { clock.nowMillis() / 1000 }

    /// Runs what is due. Throws only when nothing could run: another run holds the lock (busy),
    /// or the schedule or state file cannot be read.
    public func run() throws -> RunSummary {
        try home.makeHome()
        let lock = try ScheduleLock.acquire(home.runLock, wait: false)
        defer { lock.release() }
        let file = try home.loadSchedules()
        var state = try home.loadState()
        let started = nowSeconds
        var summary = RunSummary()
        let runClock = ContinuousClock.now

        // The store is opened once; if it cannot be, every due job fails with that reason.
        let service: Result<BackupService, Error> = Result {
            try BackupService(catalog: BackupCatalog(store: StoreLocator.open(root: home.store, clock: clock), clock: clock))
        }
        let kms = LocalKMS(directory: home.kms)
        // PKCS#11 user PINs, read at most once per run and wiped when the run ends.
        let pins = PKCS11PINSource()

        // A state write that fails (a full or read-only home) does not stop the others: every
        // due schedule still runs, the write is tried again after each, and the run then fails
        // with that error.
        var saveError: Error?
        func save() {
            do { try saveState(&state, file); saveError = nil } catch { saveError = error }
        }
        for s in file.schedules {
            let prior = state.record(for: s)
            guard DueRules.isDue(s, prior, now: started) else { continue }
            summary.due.append(s.name)
            var record = prior ?? ScheduleRecord()
            let ok = runOne(s, &record, service: service, kms: kms, pins: pins)
            state.schedules[s.name] = record
            if ok { summary.succeeded.append(s.name) } else { summary.failed.append(s.name) }
            save()
        }

        // With no schedule at all there is nothing to keep healthy yet (a fresh install's timer).
        if !file.schedules.isEmpty, DueRules.scrubDue(file.scrubEvery, state.scrub, now: started) {
            let (record, passed) = scrub(service)
            state.scrub = record
            summary.scrubPassed = passed
            save()
        }

        if (summary.due.isEmpty && summary.scrubPassed == nil) || saveError != nil { save() }
        log(LogEvent([("time", Timestamp.rfc3339(started)), ("event", "run"), ("due", "\(summary.due.count)"),
                      ("succeeded", "\(summary.succeeded.count)"), ("failed", "\(summary.failed.count)"),
                      ("scrub", summary.scrubPassed.map { $0 ? "ok" : "failed" } ?? "not-due"),
                      ("duration_s", Self.seconds(ContinuousClock.now - runClock)),
                      ("outcome", summary.allSucceeded && saveError == nil ? "ok" : "failed")]))
        if let saveError { throw saveError }
        return summary
    }

    /// Drops records of schedules no longer in the file, then writes the state atomically.
    private func saveState(_ state: inout ScheduleStateFile, _ file: ScheduleFile) throws {
        let names = Set(file.schedules.map(\.name))
        state.schedules = state.schedules.filter { names.contains($0.key) }
        try home.saveState(state)
    }

    static func seconds(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return String(format: "%.3f", Double(ms) / 1000)
    }

    /// An opened source: the device, the cluster its backups are filed under, and (PKCS#11) what
    /// its last backup skipped.
    struct OpenedSource {
        let device: any BackupSource & RestoreTarget
        let cluster: String
        let skipped: () -> Int
    }

    /// Opens a schedule's source. The one place a `ScheduleSource` kind is opened. A PKCS#11
    /// token is logged into with the PIN from `pins` (never the schedule file).
    static func openSource(_ source: ScheduleSource, schedule: Schedule, pins: PKCS11PINSource) throws -> OpenedSource {
        switch source {
        case .simulatedHSM(let dir):
            let hsm = try SimulatedHSM.open(at: dir)
            return OpenedSource(device: hsm, cluster: hsm.identity.clusterId, skipped: { 0 })
        case .pkcs11(let module, let token, let allowPartial):
            var options = PKCS11Options()
            options.clusterId = schedule.cluster
            options.allowPartial = allowPartial
            let pin = try pins.pin(schedule: schedule.name, token: token)
            let hsm = try PKCS11HSM(modulePath: module, tokenLabel: token, userPIN: pin, options: options)
            return OpenedSource(device: hsm, cluster: hsm.metadata.clusterId, skipped: { hsm.lastBackup?.skipped.count ?? 0 })
        }
    }

    private enum Step: String { case backup, verify, retention }

    private func runOne(_ s: Schedule, _ record: inout ScheduleRecord, service: Result<BackupService, Error>, kms: LocalKMS,
                        pins: PKCS11PINSource) -> Bool {
        let start = nowSeconds
        record.lastRun = Timestamp.rfc3339(start)
        var step = Step.backup
        var backupId: String?
        var cluster = s.currentCluster(record)
        var stepClock = ContinuousClock.now
        func event(_ outcome: String, _ extra: [(String, String)]) {
            var fields: [(String, String)] = [("time", Timestamp.rfc3339(nowSeconds)), ("event", step.rawValue), ("schedule", s.name),
                                              ("cluster", cluster)]
            if let backupId { fields.append(("backup_id", backupId)) }
            fields += extra
            fields.append(("duration_s", Self.seconds(ContinuousClock.now - stepClock)))
            fields.append(("outcome", outcome))
            log(LogEvent(fields))
            stepClock = ContinuousClock.now
        }
        do {
            let service = try service.get()
            let source = try Self.openSource(s.source, schedule: s, pins: pins)
            let hsm = source.device
            cluster = source.cluster
            let keyrings = try resolveKeys?(s.kmsKeys) ?? s.kmsKeys.map { try kms.keyring($0) as Keyring }
            var options = ArchiveOptions()
            options.createdAt = start
            var tags = s.tags
            tags["schedule"] = s.name
            let created = try service.createBackup(of: hsm, keyrings: keyrings, options: options, tags: tags)
            backupId = created.entry.backupId
            record.lastBackupId = backupId
            // The backup is filed under the source's cluster now; health and retention follow it.
            cluster = created.entry.clusterId
            record.cluster = cluster
            var backupFields = [("source", s.source.kind), ("bytes", "\(created.archive.archiveBytes)")]
            if case .pkcs11 = s.source { backupFields.append(("skipped", "\(source.skipped())")) }
            event("ok", backupFields)

            step = .verify
            let verifyHSM: (any RestoreTarget)? = s.verify == .full
                ? try s.verifyOn.map { try Self.openSource($0, schedule: s, pins: pins).device } ?? hsm : nil
            // The schedule's own keyrings open what they wrapped; the local KMS opens any local key.
            let keys = VerificationKeys(keyrings: keyrings + [kms.decryptionKeyring], hsm: verifyHSM)
            let report = try service.verify(created.entry.backupId, level: s.verify, keys: keys)
            record.lastVerification = ScheduleRecord.Verification(
                at: Timestamp.rfc3339(nowSeconds), backupId: created.entry.backupId, level: s.verify, passed: report.passed,
                errors: report.errors.count, warnings: report.findings.count - report.errors.count)
            guard report.passed else {
                throw SchedulingError(.verificationFailed, "verification at level \(s.verify.rawValue) failed: "
                    + report.errors.prefix(3).map(\.description).joined(separator: "; "))
            }
            event("ok", [("level", s.verify.rawValue), ("warnings", "\(report.findings.count - report.errors.count)")])

            step = .retention
            // The backup is stored and verified: that is this run's success, whatever retention
            // does next (a retention failure is reported, and retried at the next run).
            record.lastSuccess = record.lastRun
            let retention = try service.applyRetention(cluster: created.entry.clusterId)
            if let f = retention.failed.first {
                throw SchedulingError(.io, "retention could not mark \(retention.failed.count) backup(s): \(f.backupId): \(f.message)")
            }
            event("ok", [("marked", "\(retention.expired.count)")])
            record.lastOutcome = "ok"
            record.lastError = nil
            record.lastSuccess = record.lastRun
            record.consecutiveFailures = 0
            return true
        } catch {
            var message = describe(error)
            if step == .verify, record.lastVerification?.backupId != backupId {
                // The verification could not run at all: that is a failed verification too.
                record.lastVerification = ScheduleRecord.Verification(
                    at: Timestamp.rfc3339(nowSeconds), backupId: backupId ?? "", level: s.verify, passed: false, errors: 1, warnings: 0)
            }
            // Kept for inspection, but marked: retention never keeps it in place of a verified
            // backup, and status does not count it as the cluster's newest good backup.
            var tagged = false
            if step == .verify, let backupId {
                do {
                    try service.get().catalog.tag(backupId, [BackupEntry.verificationTag: BackupEntry.verificationFailed])
                    tagged = true
                } catch let tagError {
                    message += "; the backup could not be tagged \(BackupEntry.verificationTag)=\(BackupEntry.verificationFailed): \(describe(tagError))"
                }
            }
            event("failed", [("error", message)])
            record.lastOutcome = "failed"
            record.lastError = "\(step.rawValue): \(message)"
            record.consecutiveFailures += 1
            // Tagged, the unverified backup cannot push a verified one out, so retention still
            // runs: a schedule that keeps failing its verification does not grow the store forever.
            if tagged, let service = try? service.get() {
                step = .retention
                do {
                    let retention = try service.applyRetention(cluster: cluster)
                    if let f = retention.failed.first {
                        throw SchedulingError(.io, "retention could not mark \(retention.failed.count) backup(s): \(f.backupId): \(f.message)")
                    }
                    event("ok", [("marked", "\(retention.expired.count)")])
                } catch {
                    let m = describe(error)
                    event("failed", [("error", m)])
                    record.lastError! += "; retention: \(m)"
                }
            }
            return false
        }
    }

    private func scrub(_ service: Result<BackupService, Error>) -> (ScrubRecord, Bool) {
        let start = nowSeconds
        let t0 = ContinuousClock.now
        var record = ScrubRecord(lastRun: Timestamp.rfc3339(start), outcome: "failed", objects: 0, corrupt: 0, missing: 0,
                                 repaired: 0, unrecoverable: 0, error: nil)
        do {
            let r = try service.get().catalog.scrub(repair: true)
            record.objects = r.objects
            record.corrupt = r.corrupt
            record.missing = r.missing
            record.repaired = r.repaired
            record.unrecoverable = r.unrecoverable
            let passed = r.unrecoverable == 0 && r.repairFailures.isEmpty && r.unavailableReplicas.isEmpty
            record.outcome = passed ? "ok" : "failed"
            if !passed {
                record.error = "\(r.unrecoverable) unrecoverable, \(r.repairFailures.count) repair failures, \(r.unavailableReplicas.count) replicas unavailable"
            }
        } catch {
            record.error = describe(error)
        }
        var fields: [(String, String)] = [("time", Timestamp.rfc3339(nowSeconds)), ("event", "scrub"), ("objects", "\(record.objects)"),
                                          ("corrupt", "\(record.corrupt)"), ("missing", "\(record.missing)"),
                                          ("repaired", "\(record.repaired)"), ("unrecoverable", "\(record.unrecoverable)")]
        if let e = record.error { fields.append(("error", e)) }
        fields += [("duration_s", Self.seconds(ContinuousClock.now - t0)), ("outcome", record.outcome)]
        log(LogEvent(fields))
        return (record, record.outcome == "ok")
    }
}
