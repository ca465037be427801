import ArgumentParser
import AWSKMS
import ByteCoding
import Durability
import Envelope
import Foundation
import HSMBackup
import ObjectStore
import PKCS11HSM
import Scheduling
import SimulatedHSM

// `hsmbackup schedule add|list|remove|scrub-interval|run|install` and `hsmbackup status`
// (issue 18; docs/SCHEDULES.md). Thin: the Scheduling module does the work.

extension SchedulingError: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .invalidArgument, .alreadyExists: return .usage
        case .notFound: return .notFound
        case .badFile, .verificationFailed: return .verificationFailed
        case .busy: return .scheduleBusy
        case .io: return .ioError
        case .credentialMissing: return .noUsableKey
        }
    }
    var cliMessage: String { description + " [\(code.rawValue)]" }
}

/// The time `schedule` and `status` go by. HSMBACKUP_TEST_CLOCK (an RFC 3339 UTC time such as
/// 2026-01-01T00:00:00Z, or Unix seconds) fixes it for one process: the tests run ten simulated
/// days of hourly runs without sleeping. It is the store's own `ManualClock`, so the catalog,
/// retention and the backups' creation times all see the same time. Unset: the system clock.
enum CLIClock {
    static func current() throws -> StoreClock {
        guard let p = getenv("HSMBACKUP_TEST_CLOCK"), p.pointee != 0 else { return SystemClock() }
        let text = String(cString: p)
        guard let seconds = Timestamp.seconds(rfc3339: text) ?? UInt64(text) else {
            throw ValidationError("HSMBACKUP_TEST_CLOCK=\(Printable.escape(text)): give an RFC 3339 UTC time (2026-01-01T00:00:00Z) or Unix seconds")
        }
        return ManualClock(millis: seconds * 1000)
    }
}

extension ScheduleHome {
    static var current: ScheduleHome { ScheduleHome(home: absolute(Home.path)) }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}

struct ScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule", abstract: "Back up on a schedule: add, list, remove, run what is due, install a timer.",
        discussion: """
            Schedules live in the home's schedules.json (documented in docs/SCHEDULES.md). `schedule run` \
            does what is due once and exits; run it hourly from the systemd timer that `schedule install \
            --systemd DIR` writes, or from the crontab line `schedule install --cron` prints.
            """,
        subcommands: [ScheduleAdd.self, ScheduleList.self, ScheduleRemove.self, ScheduleScrubInterval.self,
                      ScheduleRun.self, ScheduleInstall.self])
}

struct ScheduleAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Add a schedule: back up a source every interval, verify, apply retention.",
        discussion: """
            The source is a simulated HSM (--hsm DIR) or a PKCS#11 token (--pkcs11 --module PATH --token LABEL). \
            A token's user PIN is never an option or in the schedule file: `schedule run` reads it from \
            HSMBACKUP_PKCS11_PIN, the systemd credential hsmbackup-pkcs11-pin (LoadCredential=), or the file \
            named by HSMBACKUP_PKCS11_PIN_FILE. AWS KMS keys are given by key ARN; their credentials come from \
            the environment of `schedule run`, as for `backup create`.
            """)

    @Argument(help: "The schedule's name (1 to 64 of A-Z a-z 0-9 . _ -).") var name: String
    // The backup source: exactly one of --hsm DIR and --pkcs11 --module PATH --token LABEL.
    @Option(help: "A simulated HSM's state directory.") var hsm: String?
    @OptionGroup var pkcs11: PKCS11TokenOptions
    @Flag(name: .customLong("allow-partial"), help: "PKCS#11: a backup that skips objects the token will not export still succeeds (they are listed); without it such a backup fails the schedule.") var allowPartial = false
    @Option(name: .customLong("kms-key"), help: "A local KMS key name or an AWS KMS key ARN the backups are encrypted under (repeatable; one EDK each).") var kmsKeys: [String] = []
    @Option(help: "How often: a number and a unit (s, m, h, d, w), e.g. 24h, 12h, 1d12h.") var every: String
    @Option(help: "How deep to verify each new backup (full: a dry-run restore on the HSM or token).") var verify: VerificationLevel = .envelope
    @Option(name: .customLong("verify-hsm"), help: "For --verify full of an --hsm schedule: a spare HSM of the same manufacturer for the dry-run restore (default: the source).") var verifyHSM: String?
    @Option(name: .customLong("tag"), help: "A tag k=v for each backup (repeatable; `schedule=NAME` is added).") var tags: [String] = []
    @Flag(help: "Machine-readable output.") var json = false

    func validate() throws {
        if kmsKeys.isEmpty { throw ValidationError("name at least one key with --kms-key") }
        try pkcs11.validate(hsm: hsm)
        if allowPartial && !pkcs11.enabled { throw ValidationError("--allow-partial goes with --pkcs11") }
        if verifyHSM != nil && verify != .full { throw ValidationError("--verify-hsm is for --verify full") }
        if verifyHSM != nil && pkcs11.enabled { throw ValidationError("--verify-hsm is for --hsm schedules; a PKCS#11 schedule's full verification is a dry-run restore on its own token") }
        // The rule a hand-edited schedule file is held to as well (Schedule.problem(tags:)).
        if let p = Schedule.problem(tags: try parsePairs(tags, "--tag")) { throw ValidationError("--tag \(p)") }
    }

    func run() throws {
        try runMapped {
            try Schedule.validate(name: name)
            let every = try Interval.parse(self.every)
            if let p = Schedule.problem(every: every) { throw SchedulingError(.invalidArgument, "--every \(p)") }
            // Keys are checked now, without credentials: a local key must exist; an AWS key must be
            // a key ARN (an alias only encrypts, and every scheduled backup is verified, which
            // decrypts). AWS credentials are read at run time from the environment, never stored.
            let kms = LocalKMS(directory: Home.kms)
            for k in kmsKeys {
                if KMSKeyIdentifier.looksLikeAWS(k) {
                    let id = try KMSKeyIdentifier(k)
                    guard id.kind == .keyARN else {
                        throw SchedulingError(.invalidArgument, "--kms-key \(k): a schedule verifies every backup, which needs the key ARN "
                            + "(arn:aws:kms:REGION:ACCOUNT:key/ID); an alias only encrypts")
                    }
                } else {
                    _ = try kms.keyring(k)
                }
            }
            let source: ScheduleSource, cluster: String
            if pkcs11.enabled, let module = pkcs11.module, let token = pkcs11.token {
                // The module must load and the token exist now; the PIN is needed only at run time.
                let modulePath = ScheduleHome.absolute(module)
                _ = try PKCS11Module.open(path: modulePath).token(labelled: token)
                source = .pkcs11(module: modulePath, tokenLabel: token, allowPartial: allowPartial)
                cluster = pkcs11.cluster ?? "pkcs11"
                if let problem = IdentityRules.problem(.clusterId, cluster) { throw ValidationError("--cluster \(Printable.escape(cluster)): \(problem)") }
            } else {
                let dir = ScheduleHome.absolute(hsm!)
                source = .simulatedHSM(directory: dir)
                cluster = try openHSM(dir).identity.clusterId
            }
            let verifyOn = try verifyHSM.map { d -> ScheduleSource in
                let abs = ScheduleHome.absolute(d)
                _ = try openHSM(abs)
                return .simulatedHSM(directory: abs)
            }
            let now = try CLIClock.current().nowMillis() / 1000
            let schedule = Schedule(name: name, source: source, cluster: cluster,
                                    kmsKeys: kmsKeys, every: every, verify: verify, verifyOn: verifyOn,
                                    tags: try parsePairs(tags, "--tag"), added: Timestamp.rfc3339(now))
            let home = ScheduleHome.current
            try home.editing {
                var file = try home.loadSchedules()
                guard file.schedule(name) == nil else { throw SchedulingError(.alreadyExists, path: home.scheduleFile, "a schedule \"\(name)\" exists already") }
                file.schedules.append(schedule)
                try home.saveSchedules(file)
            }
            if json { try JSONOutput.print(schedule); return }
            try Out.line("schedule \(name): \(schedule.source) (cluster \(schedule.cluster)) every \(every), verify \(verify.rawValue), keys \(kmsKeys.joined(separator: ", "))")
            if case .pkcs11 = source {
                try Out.line("  `schedule run` reads the user PIN from \(PKCS11PINSource.environmentVariable), the systemd credential \(PKCS11PINSource.credentialName), or the file named by \(PKCS11PINSource.fileVariable)")
            }
        }
    }
}

struct ScheduleList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the schedules and when each last ran.")
    @Flag(help: "Machine-readable output.") var json = false

    struct Row: Encodable { let schedule: Schedule; let state: ScheduleRecord?; let nextRun: String }

    func run() throws {
        try runMapped {
            let home = ScheduleHome.current
            let file = try home.loadSchedules(), state = try home.loadState()
            // Each schedule's own record (not one left by an earlier schedule of the same name).
            let rows = file.schedules.map { Row(schedule: $0, state: state.record(for: $0), nextRun: Timestamp.rfc3339(DueRules.nextRun($0, state.record(for: $0)))) }
            if json { try JSONOutput.print(rows); return }
            if rows.isEmpty { try Out.line("no schedules (add one with `hsmbackup schedule add`)"); return }
            for r in rows {
                let s = r.schedule
                let last = r.state?.lastRun.map { "last run \($0) \(r.state?.lastOutcome ?? "?")" } ?? "never run"
                try Out.line("\(s.name)  cluster \(s.currentCluster(r.state))  every \(s.every)  verify \(s.verify.rawValue)  \(s.source)  \(last)  next \(r.nextRun)")
            }
            try Out.line("store scrub --repair every \(file.scrubEvery)")
        }
    }
}

struct ScheduleRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a schedule (its backups stay).")
    @Argument(help: "The schedule's name.") var name: String
    func run() throws {
        try runMapped {
            let home = ScheduleHome.current
            try home.editing {
                var file = try home.loadSchedules()
                guard file.schedule(name) != nil else { throw SchedulingError(.notFound, path: home.scheduleFile, "no schedule \"\(name)\"") }
                file.schedules.removeAll { $0.name == name }
                try home.saveSchedules(file)
            }
            try Out.line("removed schedule \(name); its backups stay in the store")
        }
    }
}

struct ScheduleScrubInterval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scrub-interval", abstract: "Set how often `schedule run` runs `store scrub --repair` (default 1w).")
    @Argument(help: "An interval, e.g. 1w, 3d.") var every: String
    func run() throws {
        try runMapped {
            let every = try Interval.parse(self.every)
            if let p = Schedule.problem(every: every) { throw SchedulingError(.invalidArgument, "scrub interval \(p)") }
            let home = ScheduleHome.current
            try home.editing {
                var file = try home.loadSchedules()
                file.scrubEvery = every
                try home.saveSchedules(file)
            }
            try Out.line("store scrub --repair every \(every)")
        }
    }
}

struct ScheduleRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run what is due, once, and exit (for a systemd timer or cron).",
        discussion: """
            Each due schedule: a backup, its verification, then `retention apply` for its cluster; the store \
            is scrubbed with repair when its interval has passed. Missed runs are caught up once. One line \
            per event on stdout (key=value: time, event, schedule, cluster, backup_id, duration_s, outcome, \
            error). Exit 0 when everything due succeeded, 80 when a schedule or the scrub failed (the others \
            still ran), 75 when another run holds the lock (this one does nothing).
            """)

    func run() throws {
        try runMapped {
            let runner = ScheduleRunner(home: ScheduleHome.current, clock: try CLIClock.current(), describe: { error in
                if let m = error as? CLIExitMappable { return "\(m.cliMessage) (exit \(m.cliExit.rawValue))" }
                return "\(error)"
            }, resolveKeys: { names in
                // The CLI's own resolution: a local KMS key name, or an AWS KMS key (credentials,
                // region and endpoint from the environment, as for `backup create`).
                let options = EnvelopeKeyOptions.with(kmsKeys: names, kmsDir: nil, rawKeys: [], namespaces: [], names: [])
                return try names.map { try options.keyring(forKMSKey: $0) }
            }, log: { event in
                // A log line that cannot be written must not stop the backups: stderr gets it.
                do { try Out.line(event.description) } catch { Err.line(event.description) }
            })
            let summary = try runner.run()
            if !summary.allSucceeded { throw ExitCode(CLIExit.scheduleFailed.rawValue) }
        }
    }
}

struct ScheduleInstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install", abstract: "Write a systemd service and timer (--systemd DIR), or print a crontab line (--cron).",
        discussion: """
            The timer fires hourly with Persistent=true (a machine that was off catches up at boot); \
            `schedule run` decides what is due. The service is hardened (NoNewPrivileges, ProtectSystem=strict, \
            PrivateTmp, ...), and the home is the only path it may write. A unit file of that name that \
            hsmbackup did not write (its first line is not "\(unitHeader)...") is never replaced unless \
            --force is given (exit 64, naming it): `--name sshd` must not replace sshd.service.
            """)

    /// How every unit `Units` writes begins: what marks an existing unit file as ours to replace.
    static let unitHeader = "# Written by `hsmbackup schedule install"

    @Option(help: "Write <name>.service and <name>.timer into this directory (e.g. /etc/systemd/system).") var systemd: String?
    @Flag(help: "Print the crontab line instead.") var cron = false
    @Option(help: "The hsmbackup binary the units run (default: this one).") var binary: String?
    @Option(help: "Unit name (default hsmbackup).") var name = "hsmbackup"
    @Option(name: .customLong("on-calendar"), help: "The timer's OnCalendar= (default hourly).") var onCalendar = "hourly"
    @Option(help: "Run the service as this user.") var user: String?
    @Option(help: "After each run, write `status --prometheus` to this file (node_exporter's textfile directory).") var prometheus: String?
    @Option(help: "For --cron: the minute of each hour (0-59, default 7).") var minute = 7
    @Option(name: .customLong("pkcs11-pin-file"), help: "For --systemd: the root-only file holding the PKCS#11 user PIN, loaded with LoadCredential= (default /etc/hsmbackup/pkcs11-pin when a schedule is PKCS#11; otherwise the line is commented out).") var pkcs11PINFile: String?
    @Flag(help: "For --systemd: replace <name>.service and <name>.timer even if hsmbackup did not write them.") var force = false

    func validate() throws {
        guard (systemd != nil) != cron else { throw ValidationError("give --systemd DIR or --cron") }
        guard (0...59).contains(minute) else { throw ValidationError("--minute must be 0...59") }
        if force && systemd == nil { throw ValidationError("--force goes with --systemd") }
    }

    func run() throws {
        try runMapped {
            let exe = binary ?? ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
            var options = UnitOptions(binary: ScheduleHome.absolute(exe), home: ScheduleHome.current.home)
            options.name = name
            options.onCalendar = onCalendar
            options.user = user
            options.prometheusFile = prometheus
            let hasPKCS11 = (try ScheduleHome.current.loadSchedules()).schedules.contains { if case .pkcs11 = $0.source { return true }; return false }
            options.pkcs11PINFile = pkcs11PINFile ?? (hasPKCS11 ? UnitOptions.defaultPKCS11PINFile : nil)
            // Replica directories outside the home (`store init --replica-dir`) must stay writable.
            if let store = try? LocalObjectStore(root: Home.store, removeStaleTemps: false) {
                options.extraWritable = store.replicaPaths.filter { !$0.hasPrefix(options.home + "/") }
            }
            try options.validate()
            if cron { try Out.line(Units.cronLine(options, minute: minute)); return }
            guard let dir = systemd else { return }
            try AtomicFile.makeDirectory(dir, mode: 0o755)
            let units = [("\(name).service", Units.service(options)), ("\(name).timer", Units.timer(options))]
            // Both paths are checked before either is written, and a timer that cannot be
            // written takes its new service back: never half an install.
            for (file, _) in units { try PathArgument.output(dir + "/" + file) }
            // What is there now, read before anything is written: a unit we did not write is
            // refused without --force, and the rollback below restores what a write replaced
            // and removes only what this run created. A file that cannot be read is an error,
            // never taken for absent (the rollback would then delete it).
            var previous: [[UInt8]?] = []
            for (file, _) in units {
                let path = dir + "/" + file
                let old: [UInt8]?
                do { old = try AtomicFile.read(path, limit: 1 << 20) } catch let e as FileError where e.code == .notFound { old = nil }
                if let old, !force, !old.starts(with: Array(Self.unitHeader.utf8)) {
                    throw SchedulingError(.invalidArgument, path: path, "exists and was not written by hsmbackup (it does not start with \"\(Self.unitHeader)\"); "
                        + "choose another --name, or give --force to replace it")
                }
                previous.append(old)
            }
            var written: [Int] = []
            for (i, (file, text)) in units.enumerated() {
                do { try AtomicFile.write(Array(text.utf8), to: dir + "/" + file, mode: 0o644) } catch {
                    for j in written.reversed() {
                        let path = dir + "/" + units[j].0
                        if let old = previous[j] { try? AtomicFile.write(old, to: path, mode: 0o644) } else { unlink(path) }
                    }
                    throw error
                }
                written.append(i)
            }
            for (file, _) in units { try Out.line("wrote \(dir + "/" + file)") }
            try Out.line("enable with: systemctl daemon-reload && systemctl enable --now \(name).timer")
        }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Health for monitoring: each schedule, cluster and the store; the exit code says whether all is on schedule.",
        discussion: """
            Exit 0 when every scheduled cluster's newest READY backup is within its interval plus the grace and \
            its last verification passed; otherwise the first of: 81 a cluster's last scheduled verification \
            failed, 82 a cluster's newest READY backup is older than its schedule allows (or it has none), \
            83 a store replica is unavailable or the last scrub failed. --prometheus FILE also writes the figures \
            in the Prometheus text format (atomically), for node_exporter's textfile collector. The report is \
            printed whatever happens to that file; a write that fails is reported on stderr and makes the exit \
            code 74 when it would otherwise be 0 (a failing status keeps its own code). When no report can be \
            made (a bad schedule or state file, 65; one that cannot be read, 74) the file is still written, \
            with every verdict 0 and hsmbackup_status_error 1, and the exit code is that failure's.
            """)

    @Flag(help: "Machine-readable output.") var json = false
    @Option(help: "Also write the figures in the Prometheus text format to this file (e.g. .../textfile/hsmbackup.prom).") var prometheus: String?
    @Option(help: "Slack on top of a schedule's interval before its cluster is stale.") var grace = "2h"

    func run() throws {
        try runMapped {
            let grace = try Interval.parse(self.grace)
            if let prometheus { try PathArgument.output(prometheus) }
            let clock = try CLIClock.current()
            let r: HealthReport
            do { r = try Health.report(home: ScheduleHome.current, clock: clock, grace: grace) } catch {
                // No report (a bad or unreadable schedule or state file): the metrics file must
                // not keep saying the last verdict, so it says "error" instead; the exit code is
                // the failure's own.
                if let prometheus {
                    do { try StatusMetrics.writeError(at: clock, to: prometheus) } catch let writeError {
                        Err.line("hsmbackup: error: the Prometheus file was not written either (node_exporter keeps serving the old one): \(writeError)")
                    }
                }
                throw error
            }
            // The report and the file are independent: neither failing stops the other.
            let printed = Result { if json { try JSONOutput.print(r) } else { try printText(r) } }
            var exportFailed: Error?
            if let prometheus {
                do { try StatusMetrics.write(r, to: prometheus) } catch { exportFailed = error }
            }
            try printed.get()
            if let exportFailed, r.verdict != .ok {
                Err.line("hsmbackup: error: the Prometheus file was not written (node_exporter keeps serving the old one): \(exportFailed)")
            }
            switch r.verdict {
            case .ok:
                if let exportFailed { throw exportFailed }
                return
            case .verificationFailed: throw ExitCode(CLIExit.statusVerificationFailed.rawValue)
            case .stale: throw ExitCode(CLIExit.statusStale.rawValue)
            case .storeDegraded: throw ExitCode(CLIExit.statusStoreDegraded.rawValue)
            }
        }
    }

    private func printText(_ r: HealthReport) throws {
        try Out.line("status \(r.verdict.rawValue) at \(r.time)")
        for s in r.schedules {
            let last = s.lastRun.map { "last run \($0) \(s.lastOutcome ?? "?")" } ?? "never run"
            try Out.line("schedule \(s.name)  source \(s.sourceKind)  cluster \(s.cluster)  every \(s.every)  \(last)\(s.lastBackupId.map { "  backup \($0)" } ?? "")  next \(s.nextRun)")
            if s.lastOutcome == "failed", let e = s.lastError { try Out.line("  failed (\(s.consecutiveFailures) in a row): \(e)") }
        }
        for c in r.clusters {
            let newest = c.newestBackupId.map { "newest \($0) age \(Interval(seconds: c.newestAgeSeconds ?? 0))" } ?? "no READY backup"
            let allowed = c.maxAgeSeconds.map { " (allowed \(Interval(seconds: $0)))" } ?? ""
            let v = c.lastVerification.map { "  verification \($0.level.rawValue) \($0.passed ? "passed" : "FAILED") at \($0.at)" } ?? ""
            let failed = c.failedVerificationBackups.isEmpty ? "" : " (\(c.failedVerificationBackups.count) failed verification)"
            try Out.line("cluster \(c.cluster)  \(c.status)  \(newest)\(allowed)  \(c.readyBackups) READY\(failed)\(v)")
            for p in c.problems { try Out.line("  \(p)") }
        }
        if let s = r.store {
            let scrub = s.lastScrub.map { "last scrub \($0.lastRun) \($0.outcome) (repaired \($0.repaired), unrecoverable \($0.unrecoverable))" } ?? "never scrubbed by a schedule"
            try Out.line("store \(s.root)  \(s.replicasAvailable)/\(s.replicas) replicas available  \(scrub)  next scrub \(s.nextScrub ?? "-")")
            for p in s.problems { try Out.line("  \(p)") }
        }
        if let e = r.storeError { try Out.line("store: \(e)") }
    }
}

/// The `status --prometheus` file: the report's figures plus `hsmbackup_status_error` (0 when the
/// report was made, 1 when it could not be: then every verdict gauge is 0). Written atomically,
/// mode 0644 (node_exporter reads it as another user).
enum StatusMetrics {
    static let errorHelp = "# HELP hsmbackup_status_error 1 if `hsmbackup status` could not make its report (a bad or unreadable schedule or state file); the verdict gauges are then all 0\n"
        + "# TYPE hsmbackup_status_error gauge\n"

    static func write(_ r: HealthReport, to path: String) throws {
        try write(PrometheusExport.render(r) + Array((errorHelp + "hsmbackup_status_error 0\n").utf8), to: path)
    }

    static func writeError(at clock: StoreClock, to path: String) throws {
        // The same names and help as PrometheusExport's, so a dashboard reads both files alike.
        let verdicts: [HealthReport.Verdict] = [.ok, .verificationFailed, .stale, .storeDegraded]
        var text = "# HELP hsmbackup_status 1 for the verdict of `hsmbackup status` (its exit code names the same)\n# TYPE hsmbackup_status gauge\n"
        for v in verdicts { text += "hsmbackup_status{verdict=\"\(v.rawValue)\"} 0\n" }
        text += "# HELP hsmbackup_status_time_seconds when the report was made (Unix time)\n# TYPE hsmbackup_status_time_seconds gauge\n"
        text += "hsmbackup_status_time_seconds \(clock.nowMillis() / 1000)\n"
        text += errorHelp + "hsmbackup_status_error 1\n"
        try write(Array(text.utf8), to: path)
    }

    private static func write(_ bytes: [UInt8], to path: String) throws {
        do { try AtomicFile.write(bytes, to: path, mode: 0o644) } catch let e as FileError {
            throw SchedulingError(.io, path: path, e.reason)
        }
    }
}
