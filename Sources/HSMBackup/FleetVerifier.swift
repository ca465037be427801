import Dispatch
import Foundation
import HSMArchive
import ObjectStore
import SimulatedHSM

/// Verifies many stored backups in one process, several at a time (issue 17: `hsmbackup verify
/// --all --jobs N`). Each archive is one `BackupService.verify` call of its listed entry, what a
/// single `verify ID` does minus the catalog lookup; `jobs` of them run at once on their own threads. Every archive is attempted:
/// what happens to one is its own result, never the end of the run.
///
/// What the jobs share, and why that is safe:
/// - the `BackupService`, its catalog and store: the catalog is read from a file (or object)
///   replaced whole, never mutated here; a read of a replica is its own reader with its own file
///   descriptors; the store's record memo has its own lock; a read-repair takes the key's stripe
///   lock (`flock` on a descriptor of its own, so two threads of this process exclude each other
///   as two processes do), and no job holds one lock while waiting for another;
/// - the keyrings (`Keyring` is `Sendable`; AWS KMS clients lock their own state);
/// - the HSM of a `full` check: a `SimulatedHSM` dry run reads only the HSM's backup keys and
///   writes nothing, so its sessions run at once; any other `RestoreTarget` (a PKCS#11 token has
///   one session, its session objects and its last report) gets one dry run at a time: a job
///   waits for the HSM before its inner blob is fed, while the other jobs read, check replicas
///   and decrypt.
public enum FleetVerifier {
    /// How one archive came out.
    public enum Outcome: String, Codable, Sendable {
        /// The level passed.
        case passed
        /// A finding of severity error: damaged data, or an archive the store cannot serve.
        case failed
        /// Nothing could be concluded about the archive's data: no key opens it, the HSM is of
        /// another manufacturer or operator key, the store refused access, the backup went away.
        case notJudged
    }

    /// One archive's result.
    public struct ArchiveResult {
        public let backupId: String
        public let clusterId: String
        public let outcome: Outcome
        /// The verifier's report; for an archive the store could not serve, a report holding that
        /// store finding. Nil when the archive could not be judged.
        public let report: VerificationReport?
        /// Why the archive could not be judged (the typed error of the layer that said so).
        public let error: Error?
        /// Wall time of this archive's verification.
        public let seconds: Double
    }

    /// The whole run, archives in the order they were given (the catalog's).
    public struct Summary {
        public let results: [ArchiveResult]
        public let jobs: Int
        public let seconds: Double
        public var passed: Int { results.filter { $0.outcome == .passed }.count }
        public var failed: Int { results.filter { $0.outcome == .failed }.count }
        public var notJudged: Int { results.filter { $0.outcome == .notJudged }.count }
    }

    /// The most jobs a run takes (each job is a few threads and a few MiB of buffers).
    public static let maximumJobs = 64

    /// Verifies `entries` (e.g. `service.list(CatalogQuery(states: [.ready]))`) at `level`, `jobs`
    /// at a time. `onResult` is called once per archive as it finishes, one call at a time (from
    /// the job's thread), with the archive's index in `entries`; if it throws (e.g. stdout is
    /// gone), no further archive starts, the running ones finish, and the error is rethrown.
    public static func verify(_ entries: [BackupEntry], in service: BackupService, level: VerificationLevel,
                              keys: VerificationKeys = VerificationKeys(), jobs: Int,
                              onResult: ((Int, ArchiveResult) throws -> Void)? = nil) throws -> Summary {
        guard (1...maximumJobs).contains(jobs) else {
            throw HSMBackupError(.invalidArgument, "jobs must be 1...\(maximumJobs), not \(jobs)")
        }
        // What makes every archive impossible to judge is refused before any starts, as a single
        // verify refuses it.
        if level >= .envelope && keys.keyrings.isEmpty {
            throw HSMBackupError(.invalidArgument, "verification at level \(level.rawValue) needs a KMS key")
        }
        if level == .full && keys.hsm == nil && keys.backupKeyring == nil {
            throw HSMBackupError(.invalidArgument, "verification at level full needs an HSM of the archive's manufacturer")
        }
        var keys = keys
        if let hsm = keys.hsm, !(hsm is SimulatedHSM), jobs > 1 { keys.hsm = SerializedRestoreTarget(hsm) }
        let started = DispatchTime.now().uptimeNanoseconds
        let run = Run(entries: entries, service: service, level: level, keys: keys, onResult: onResult)
        let workers = min(jobs, entries.count)
        if workers <= 1 {
            run.work()
        } else {
            let done = DispatchGroup()
            for w in 0..<workers {
                done.enter()
                let t = Thread { run.work(); done.leave() }
                t.name = "hsmbackup-verify-\(w)"
                t.start()
            }
            done.wait()
        }
        if let e = run.callbackError { throw e }
        return Summary(results: run.results.map { $0! }, jobs: jobs, seconds: seconds(since: started))
    }

    /// One archive, classified (see `Outcome`).
    static func verifyOne(_ entry: BackupEntry, service: BackupService, level: VerificationLevel, keys: VerificationKeys) -> ArchiveResult {
        let started = DispatchTime.now().uptimeNanoseconds
        func result(_ outcome: Outcome, _ report: VerificationReport?, _ error: Error?) -> ArchiveResult {
            ArchiveResult(backupId: entry.backupId, clusterId: entry.clusterId, outcome: outcome, report: report, error: error,
                          seconds: seconds(since: started))
        }
        do {
            let report: VerificationReport
            do {
                // The entry as listed: no catalog lookup per archive.
                report = try service.verify(entry, level: level, keys: keys)
            } catch let e as StoreError where archiveUnreadable(e) {
                // Gone since the listing? A backup rewrapped, deleted or purged meanwhile is
                // verified as it is now (or is not judged, if it is no longer READY), not failed.
                guard let now = try? service.resolve(entry.backupId), now != entry else { throw e }
                report = try service.verify(now.backupId, level: level, keys: keys)
            }
            return result(report.passed ? .passed : .failed, report, nil)
        } catch let e as StoreError where archiveUnreadable(e) {
            // The store cannot serve the archive (missing everywhere, no good copy): the archive's
            // own failure, reported like any finding: what each replica had, then the store's word.
            var report = VerificationReport(archive: entry.backupId, level: level)
            report.findings = e.findings.map { f in
                Finding(layer: .store, code: f.problem.rawValue, message: f.detail + (f.osError.map { " [\($0)]" } ?? ""),
                        location: FindingLocation(replica: f.replica, chunk: f.chunk, object: entry.objectKey))
            }
            report.findings.append(Finding(layer: .store, code: e.code.rawValue, message: e.reason,
                                           location: FindingLocation(object: entry.objectKey)))
            return result(.failed, report, nil)
        } catch {
            return result(.notJudged, nil, error)
        }
    }

    /// Store errors that say the archive itself is bad or gone (not that the store could not be
    /// asked: those, like a refused credential, leave the archive not judged).
    static func archiveUnreadable(_ e: StoreError) -> Bool {
        switch e.code {
        case .notFound, .unrecoverable, .badFormat, .limitExceeded: return true
        default: return false
        }
    }

    static func seconds(since start: UInt64) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    /// The shared state of one run: the next archive to take, the results, the callback.
    /// Everything mutable is under `lock`; the rest is read only (see the type's comment).
    private final class Run: @unchecked Sendable {
        let entries: [BackupEntry]
        let service: BackupService
        let level: VerificationLevel
        let keys: VerificationKeys
        let onResult: ((Int, ArchiveResult) throws -> Void)?
        private let lock = NSLock()
        private var next = 0
        private(set) var results: [ArchiveResult?]
        private(set) var callbackError: Error?

        init(entries: [BackupEntry], service: BackupService, level: VerificationLevel, keys: VerificationKeys,
             onResult: ((Int, ArchiveResult) throws -> Void)?) {
            self.entries = entries
            self.service = service
            self.level = level
            self.keys = keys
            self.onResult = onResult
            results = Array(repeating: nil, count: entries.count)
        }

        /// Takes archives until none is left (or the callback failed).
        func work() {
            while let i = take() {
                let r = FleetVerifier.verifyOne(entries[i], service: service, level: level, keys: keys)
                lock.lock()
                results[i] = r
                if callbackError == nil {
                    do { try onResult?(i, r) } catch { callbackError = error }
                }
                lock.unlock()
            }
        }

        private func take() -> Int? {
            lock.lock()
            defer { lock.unlock() }
            guard callbackError == nil, next < entries.count else { return nil }
            next += 1
            return next - 1
        }
    }
}

/// An HSM whose dry-run restores run one at a time: `beginRestore` waits until no other session
/// of this wrapper is open; the session lets the next one in when it finishes, fails or is dropped.
final class SerializedRestoreTarget: RestoreTarget {
    private let target: any RestoreTarget
    let metadata: ManufacturerMetadata
    private let turn = DispatchSemaphore(value: 1)

    init(_ target: any RestoreTarget) {
        self.target = target
        metadata = target.metadata
    }

    func beginRestore(dryRun: Bool, archiveContext: [String: String]) throws -> any HSMRestoreSession {
        turn.wait()
        do {
            return Session(try target.beginRestore(dryRun: dryRun, archiveContext: archiveContext), turn: turn)
        } catch {
            turn.signal()
            throw error
        }
    }

    final class Session: HSMRestoreSession {
        private var session: (any HSMRestoreSession)?
        private let turn: DispatchSemaphore
        private let lock = NSLock()

        init(_ session: any HSMRestoreSession, turn: DispatchSemaphore) {
            self.session = session
            self.turn = turn
        }

        deinit { release() }

        var header: InnerHeader? { session?.header }

        // The inner session is used through a reference that ends inside `use`, so that when
        // `release` drops the stored one the session's clean-up (its deinit) runs before the
        // next job gets its turn: a local binding alive across `release` let the next session
        // begin while this one was still open (FleetVerifierTests caught it in debug builds).
        func feed(_ bytes: [UInt8]) throws {
            do { try use { try $0.feed(bytes) } } catch { release(); throw error }
        }

        func finish() throws -> RestoreSummary {
            let outcome = Result { try use { try $0.finish() } }
            release()
            return try outcome.get()
        }

        private func use<T>(_ body: (any HSMRestoreSession) throws -> T) throws -> T {
            lock.lock()
            let current = session
            lock.unlock()
            guard let current else { throw HSMBackupError(.invalidArgument, "the dry-run restore session has ended") }
            return try body(current)
        }

        /// Drops the inner session (its own clean-up runs now) and lets the next job in, once.
        private func release() {
            lock.lock()
            let held = session != nil
            session = nil
            lock.unlock()
            if held { turn.signal() }
        }
    }
}
