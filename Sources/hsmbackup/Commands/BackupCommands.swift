import ArgumentParser
import BackupCrypto
import Durability
import Envelope
import Foundation
import HSMArchive
import HSMBackup
import ObjectStore
import PKCS11HSM
import S3Store
import SimulatedHSM

// The product commands: backup (create and lifecycle), retention, inspect, verify, restore.
// Thin: each parses its arguments and calls the HSMBackup library.

extension HSMBackupError: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .backupNotFound, .backupNotReady: return .notFound
        case .ambiguousBackupID, .invalidArgument: return .usage
        case .metadataMismatch, .verificationFailed: return .verificationFailed
        case .incompatibleHSM: return .incompatibleHSM
        }
    }
    var cliMessage: String { description }
}

extension CryptoError: CLIExitMappable {
    var cliExit: CLIExit { code == .authenticationFailed ? .verificationFailed : .internalError }
    var cliMessage: String { description }
}

/// An archive named on the command line: a file, or a backup id (or unique prefix) in the
/// home's store. An argument with a `/` is always a file. A bare name is a file if one exists
/// there (a symlink included, even a broken or looping one: it is reported as such) and a backup
/// id otherwise; a bare name that is both an existing file and a stored backup is refused as
/// ambiguous (64), so `restore a3fd83c` can never restore a stray file instead of the backup.
enum ArchiveRef {
    case file(String)
    case stored(String)

    static func resolve(_ arg: String) throws -> ArchiveRef {
        if arg.contains("/") {
            try PathArgument.input(arg)
            return .file(arg)
        }
        var st = stat()
        guard lstat(arg, &st) == 0 else { return .stored(arg) }
        if BackupIDs.couldBePrefix(arg), let service = try? ArchiveRef.service(), service.names(arg) {
            throw HSMBackupError(.ambiguousBackupID, "\"\(arg)\" is both a file here and a backup in the store: "
                + "write ./\(arg) for the file; for the backup, run the command from another directory or rename the file")
        }
        try PathArgument.input(arg)
        return .file(arg)
    }

    static func service() throws -> BackupService {
        try TransportPreflight.check(storeRoot: Home.store)
        do { return try BackupService(catalog: BackupCatalog(store: StoreLocator.open(root: Home.store))) } catch let e as StoreError where e.code == .notFound {
            throw StoreError(.notFound, path: Home.store, "no store here; run `hsmbackup store init` first (or name an archive file)")
        }
    }

    static func fileSize(_ path: String) -> UInt64? {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value
    }
}

/// Runs a command body with every library error mapped to its documented exit code.
func runMapped(_ body: () throws -> Void) throws {
    do { try body() } catch { throw CLIExit.translate(error) }
}

func openHSM(_ dir: String) throws -> SimulatedHSM { try SimulatedHSM.open(at: dir) }

enum BackupIDs {
    /// Backup ids are 32 lower-case hex digits, named by a prefix of at least 6.
    static func couldBePrefix(_ s: String) -> Bool {
        (6...32).contains(s.utf8.count) && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}

extension BackupService {
    /// Whether `arg` names a stored backup (one, or several: an ambiguous prefix still names backups).
    func names(_ arg: String) -> Bool {
        do { _ = try resolve(arg); return true } catch let e as HSMBackupError where e.code == .ambiguousBackupID { return true } catch { return false }
    }
}

// MARK: backup

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup", abstract: "Create backups and manage their lifecycle in the store.",
        subcommands: [BackupCreate.self, BackupList.self, BackupDelete.self, BackupUndelete.self, BackupPurge.self,
                      BackupCopy.self, BackupRewrap.self, BackupTag.self])
}

struct BackupCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Back up an HSM into the store (or into a file with --out).",
        discussion: "The HSM seals its contents under a fresh EBK; the blob is streamed through an envelope under every --kms-key into the store, where it becomes READY once durable on the write quorum.")

    @Option(help: "The HSM's state directory.") var hsm: String?
    @OptionGroup var pkcs11: PKCS11TokenOptions
    @Flag(name: .customLong("allow-partial"), help: "PKCS#11: back up what can be, listing the rest, instead of failing.") var allowPartial = false
    @OptionGroup var keys: EnvelopeKeyOptions
    @Flag(help: "Sign the archive (suite 0x0578, ECDSA P-384 footer).") var signed = false
    @Option(help: "Write the archive to this file instead of the store (created whole or not at all).") var out: String?
    @Option(name: .customLong("frame-length"), help: "Envelope frame length in bytes (default 65536).") var frameLength: UInt32 = 65536
    @Option(name: .customLong("tag"), help: "A tag k=v for the catalog (repeatable).") var tags: [String] = []
    @Flag(name: .customLong("never-expires"), help: "Exempt this backup from retention.") var neverExpires = false
    @Flag(help: "Machine-readable output.") var json = false

    func validate() throws {
        if out != nil && (!tags.isEmpty || neverExpires) {
            throw ValidationError("--tag and --never-expires describe a backup in the store's catalog; they do not apply with --out")
        }
        if out == "-" {
            // The report is what goes to stdout; a file named "-" would only surprise.
            throw ValidationError("--out takes a file name: the archive cannot go to standard output (the command's report does)")
        }
        _ = try parsePairs(tags, "--tag")
        try pkcs11.validate(hsm: hsm)
        if allowPartial && !pkcs11.enabled { throw ValidationError("--allow-partial goes with --pkcs11") }
    }

    struct Output: Encodable {
        let backupId: String
        let location: String
        let state: String?
        let archiveBytes: UInt64
        let innerBytes: UInt64
        let signed: Bool
        let keys: [String]
        let metadata: ArchiveMetadata
        let replicasFailed: [ReplicaFinding]
        /// PKCS#11 objects not backed up (with --allow-partial), as the archive lists them.
        var pkcs11Skipped: [SkippedObject]? = nil
    }

    func run() throws {
        try runMapped {
            if let out { try PathArgument.output(out) }
            let token = pkcs11.enabled ? try pkcs11.open(allowPartial: allowPartial) : nil
            let hsm: any BackupSource = try token ?? openHSM(self.hsm!)
            var options = ArchiveOptions(signed: signed)
            options.frameLength = frameLength
            let rings = try keys.encryptionKeyrings()
            let bar = ProgressBar("backup", total: nil)
            var output: Output
            if let out {
                let s = try BackupWriter.writeArchive(of: hsm, keyrings: rings, options: options, toFile: out, progress: { bar.update(Int64($0)) })
                output = Output(backupId: s.metadata.backupID, location: out, state: nil, archiveBytes: s.archiveBytes,
                                innerBytes: s.innerBytes, signed: s.signed, keys: s.keys, metadata: s.metadata, replicasFailed: [])
            } else {
                let c = try ArchiveRef.service().createBackup(of: hsm, keyrings: rings, options: options, tags: try parsePairs(tags, "--tag"),
                                                               neverExpires: neverExpires, progress: { bar.update(Int64($0)) })
                output = Output(backupId: c.entry.backupId, location: "store:" + c.entry.objectKey, state: c.entry.state.rawValue,
                                archiveBytes: c.archive.archiveBytes, innerBytes: c.archive.innerBytes, signed: c.archive.signed,
                                keys: c.archive.keys, metadata: c.archive.metadata, replicasFailed: c.replicasFailed)
            }
            bar.finish()
            output.pkcs11Skipped = token?.lastBackup?.skipped
            for o in token?.lastBackup?.skipped ?? [] { Err.line("hsmbackup: warning: not backed up: " + PKCS11CLI.describe(o)) }
            do { try report(output) } catch let e as StdoutError {
                // The backup itself is complete: say so, so nobody makes it again.
                throw StdoutError(reason: e.reason + " (backup \(output.backupId) was written to \(output.location)\(output.state.map { ", \($0)" } ?? ""))")
            }
        }
    }

    private func report(_ output: Output) throws {
        if json { try JSONOutput.print(output); return }
        try Out.line("backup \(output.backupId) of HSM \(output.metadata.hsmID) (cluster \(output.metadata.clusterID), manufacturer \(output.metadata.manufacturer))")
        try Out.line("  \(output.metadata.keyCount ?? 0) keys, \(output.metadata.userCount ?? 0) users; archive \(output.archiveBytes) bytes\(output.signed ? ", signed" : "")")
        try Out.line("  opens with: \(output.keys.joined(separator: "; "))")
        try Out.line("  written to \(output.location)\(output.state.map { " (\($0))" } ?? "")")
        for f in output.replicasFailed { try Out.line("  warning: replica \(f.replica) not written (\(f.problem.rawValue)); run `hsmbackup store scrub --repair`") }
    }
}

/// `k=v` pairs. Control characters are refused: a tag is printed by `backup list`, and a newline
/// in it would fake a line there.
func parsePairs(_ items: [String], _ flag: String) throws -> [String: String] {
    var out: [String: String] = [:]
    for item in items {
        try Printable.requireNoControl(item, flag)
        guard let eq = item.firstIndex(of: "="), eq != item.startIndex else { throw ValidationError("\(flag) takes k=v, got \"\(Printable.escape(item))\"") }
        out[String(item[..<eq])] = String(item[item.index(after: eq)...])
    }
    return out
}

struct BackupList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List backups in the store.")
    @Option(help: "Only this cluster's backups.") var cluster: String?
    @Option(help: "Only backups in this state (CREATE_IN_PROGRESS, READY, PENDING_DELETION, DELETED; repeatable).") var state: [String] = []
    @Option(help: "At most this many backups.") var limit: Int?
    @Flag(help: "Machine-readable output.") var json = false

    var queryOptions: CatalogQueryOptions { CatalogQueryOptions(cluster: cluster, states: state, limit: limit) }

    func validate() throws {
        do { _ = try queryOptions.query() } catch let e as StoreError { throw ValidationError("\(e.key.map { "\($0): " } ?? "")\(e.reason)") }
    }

    func run() throws {
        try runMapped {
            try StoreCLI.printBackups(try ArchiveRef.service().list(try queryOptions.query()), json: json)
        }
    }
}

/// Commands that take one backup id and print the updated entry.
protocol EntryCommand: ParsableCommand {
    var id: String { get }
    var json: Bool { get }
    func apply(_ service: BackupService) throws -> BackupEntry
    var verb: String { get }
}

extension EntryCommand {
    func run() throws {
        try runMapped {
            let e = try apply(try ArchiveRef.service())
            if json { try JSONOutput.print(e); return }
            try Out.line("\(verb) \(e.backupId): now \(e.state.rawValue)")
        }
    }
}

struct BackupDelete: EntryCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Put a backup into PENDING_DELETION (recoverable for 7 days).")
    @Argument(help: "Backup id (or a unique prefix).") var id: String
    @Flag(help: "Machine-readable output.") var json = false
    var verb: String { "deleted" }
    func apply(_ s: BackupService) throws -> BackupEntry { try s.delete(id) }
}

struct BackupUndelete: EntryCommand {
    static let configuration = CommandConfiguration(commandName: "undelete", abstract: "Bring a backup pending deletion back to READY (within its recovery window).")
    @Argument(help: "Backup id (or a unique prefix).") var id: String
    @Flag(help: "Machine-readable output.") var json = false
    var verb: String { "undeleted" }
    func apply(_ s: BackupService) throws -> BackupEntry { try s.undelete(id) }
}

struct BackupTag: EntryCommand {
    static let configuration = CommandConfiguration(commandName: "tag", abstract: "Set or remove tags, or the never-expires flag.")
    @Argument(help: "Backup id (or a unique prefix).") var id: String
    @Option(name: .customLong("set"), help: "A tag k=v to set (repeatable).") var set: [String] = []
    @Option(name: .customLong("remove"), help: "A tag key to remove (repeatable).") var remove: [String] = []
    @Option(name: .customLong("never-expires"), help: "true or false: exempt from retention.") var neverExpires: Bool?
    @Flag(help: "Machine-readable output.") var json = false
    var verb: String { "tagged" }
    func apply(_ s: BackupService) throws -> BackupEntry {
        var e = try s.tag(id, set: try parsePairs(set, "--set"), remove: remove)
        if let neverExpires { e = try s.setNeverExpires(id, neverExpires) }
        return e
    }
}

struct BackupPurge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge", abstract: "Remove from every replica the backups whose recovery window has passed.",
        discussion: "Exits 74 when a backup could not be removed from every replica (it stays PENDING_DELETION and the next purge retries it); the others are still purged.")
    @Flag(help: "Machine-readable output.") var json = false
    func run() throws {
        try runMapped {
            let r = try ArchiveRef.service().purge()
            if json { try JSONOutput.print(r) } else {
                try Out.line("purged \(r.purged.count) backup(s)\(r.purged.isEmpty ? "" : ": " + r.purged.joined(separator: ", "))")
                for f in r.failed { try Out.line("  not purged: \(f.key) replica \(f.finding.replica): \(f.finding.detail) (retried on the next purge)") }
            }
            // A replica that refused is the store failing (README: 74), not a verification finding.
            if !r.failed.isEmpty { throw ExitCode(CLIExit.ioError.rawValue) }
        }
    }
}

struct BackupCopy: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "copy", abstract: "Copy a backup into another store (same id and creation time; the copy records its source).")
    @Argument(help: "Backup id (or a unique prefix).") var id: String
    @Option(name: .customLong("to-store"), help: "The destination store's directory.") var toStore: String
    @Option(help: "Record the copy under this cluster id (default: the source's).") var cluster: String?
    @Flag(help: "Machine-readable output.") var json = false
    func run() throws {
        try runMapped {
            let source = try ArchiveRef.service()
            try TransportPreflight.check(storeRoot: toStore)
            let e = try source.copy(id, to: try BackupService(catalog: BackupCatalog(store: StoreLocator.open(root: toStore))), cluster: cluster)
            if json { try JSONOutput.print(e); return }
            try Out.line("copied \(e.backupId) to \(toStore): \(e.state.rawValue), source cluster \(e.copySource?.sourceCluster ?? "?")")
        }
    }
}

struct BackupRewrap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewrap", abstract: "Put a backup under other KMS keys (a new envelope; the HSM payload untouched).",
        discussion: "Any key of the home's local KMS that opens the archive is used to open it (--from-kms-key narrows); --kms-key names the new keys (one EDK each). The archive becomes a new envelope message with a fresh data key and message ID, each frame re-encrypted as it streams; the inner blob is unchanged, so no HSM is needed. The old object is replaced by a new one, and the old keys no longer open it (spec §3.7).")
    @Argument(help: "Backup id (or a unique prefix).") var id: String
    @Option(name: .customLong("kms-key"), help: "A new KMS key (repeatable).") var kmsKeys: [String] = []
    @Option(name: .customLong("from-kms-key"), help: "The KMS key that opens it now (default: try every local key).") var fromKeys: [String] = []
    @Flag(help: "Machine-readable output.") var json = false

    func validate() throws { if kmsKeys.isEmpty { throw ValidationError("name at least one new key with --kms-key") } }

    func run() throws {
        try runMapped {
            let old = EnvelopeKeyOptions.with(kmsKeys: fromKeys, kmsDir: nil, rawKeys: [], namespaces: [], names: [])
            let new = EnvelopeKeyOptions.with(kmsKeys: kmsKeys, kmsDir: nil, rawKeys: [], namespaces: [], names: [])
            let e = try ArchiveRef.service().rewrap(id, keyrings: try old.decryptionKeyrings(), newKeyrings: try new.encryptionKeyrings())
            if json { try JSONOutput.print(e); return }
            try Out.line("rewrapped \(e.backupId) for \(kmsKeys.joined(separator: ", ")); payload unchanged")
        }
    }
}

// MARK: retention

struct RetentionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retention", abstract: "Per-cluster retention of backups (7 to 379 days).",
        subcommands: [RetentionSet.self, RetentionApply.self])
}

struct RetentionSet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Set a cluster's retention period.")
    @Option(help: "The cluster id.") var cluster: String
    // Unconditional: `--days -1` is a value to refuse, not a missing one.
    @Option(parsing: .unconditional, help: "Days to keep backups (7...379).") var days: Int
    func validate() throws {
        guard RetentionPolicy.allowedDays.contains(days) else {
            throw ValidationError("--days must be \(RetentionPolicy.allowedDays.lowerBound)...\(RetentionPolicy.allowedDays.upperBound), got \(days)")
        }
    }
    func run() throws {
        try runMapped {
            try ArchiveRef.service().setRetention(cluster: cluster, days: days)
            try Out.line("cluster \(cluster): backups older than \(days) days are marked for deletion by `retention apply`")
        }
    }
}

struct RetentionApply: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply", abstract: "Mark expired backups for deletion (never a cluster's newest, never one flagged never-expires).")
    @Option(help: "Only this cluster.") var cluster: String?
    @Flag(help: "Machine-readable output.") var json = false
    func run() throws {
        try runMapped {
            let r = try ArchiveRef.service().applyRetention(cluster: cluster)
            if json { try JSONOutput.print(r) } else {
                try Out.line("marked \(r.expired.count) backup(s) for deletion\(r.expired.isEmpty ? "" : ": " + r.expired.joined(separator: ", "))")
                for f in r.failed { try Out.line("  skipped \(f.backupId): \(f.message)") }
            }
            // One bad entry does not stop the others; it still makes the command fail.
            if let f = r.failed.first { throw ExitCode(StoreError(f.code, key: f.backupId, f.message).cliExit.rawValue) }
        }
    }
}

// MARK: inspect, verify, restore

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Show an archive's public metadata (no key needed); with --kms-key, its inner header too.",
        discussion: "Reads only the archive's first bytes (the envelope header; with a key, the first frames).")
    @Argument(help: "An archive file, or a backup id (or unique prefix) in the store.") var archive: String
    @Option(name: .customLong("kms-key"), help: "Also open the envelope with this local KMS key and show the inner header (repeatable).") var kmsKeys: [String] = []
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        try runMapped {
            let keyrings = kmsKeys.isEmpty ? [] : try EnvelopeKeyOptions.with(kmsKeys: kmsKeys, kmsDir: nil, rawKeys: [], namespaces: [], names: []).decryptionKeyrings()
            let report: InspectionReport
            switch try ArchiveRef.resolve(archive) {
            case .file(let path):
                report = try Inspector.inspect(try FileHandleSource(path: path), archiveBytes: ArchiveRef.fileSize(path), keyrings: keyrings)
            case .stored(let id):
                report = try ArchiveRef.service().inspect(id, keyrings: keyrings)
            }
            if json { try JSONOutput.print(report); return }
            let m = report.metadata, e = report.envelope
            try Out.line("backup \(m.backupID)  created \(m.created)")
            try Out.line("  HSM \(m.hsmID)  cluster \(m.clusterID)  manufacturer \(m.manufacturer)  model \(m.model)  firmware \(m.firmware)")
            try Out.line("  contents: \(m.keyCount ?? 0) keys, \(m.userCount ?? 0) users, \(m.objectCount ?? 0) objects, payload \(m.payloadBytes ?? 0) bytes")
            try Out.line("  envelope: \(e.suite) (\(e.suiteID))\(e.signed ? ", signed" : ""), \(e.contentType), frame length \(e.frameLength)\(e.frameCount.map { ", \($0) frames" } ?? "")")
            for k in e.keys { try Out.line("  opens with: \(k.provider) \(k.key)") }
            if let i = report.inner {
                try Out.line("  inner header (opened with \(report.openedBy ?? "?")): format \(i.formatVersion), chunk size \(i.payload.chunkSize), PBK fingerprint \(i.pbkFingerprint)")
            }
            try Out.line("  (read \(report.bytesRead) bytes)")
        }
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Verify an archive: structure (no key), envelope (KMS key), full (an HSM of its manufacturer).",
        discussion: """
            Reports every finding with where it is (replica, frame, chunk, object, offset). Exit 0 when the level passed, 65 when anything was found.

            --all verifies every READY backup in the store (with --cluster, that cluster's), --jobs N at a time in this one process (default: the number of cores), and prints one line per archive as it finishes, then a summary; --json prints one document with every archive in the catalog's order and the summary. Every archive is attempted: one the store cannot serve is a failure of that archive, not the end of the run. Exit code of --all: 0 when every archive passed; 65 when any failed; otherwise, when some could not be judged (no key opens it 67, an HSM of another manufacturer or operator key 68, the store refused access 77 ...), the code of the first such archive in the catalog's order. A full check on a PKCS#11 token runs one dry-run restore at a time (the token has one session); on a simulated HSM they run at once.
            """)
    @Argument(help: "An archive file, or a backup id (or unique prefix) in the store.") var archive: String?
    @Flag(help: "Verify every READY backup in the store (no archive argument).") var all = false
    @Option(help: "With --all: how many archives to verify at once (1...\(FleetVerifier.maximumJobs); default: the number of cores).") var jobs: Int?
    @Option(help: "structure, envelope or full (default: the deepest the given keys allow).") var level: VerificationLevel?
    @Option(help: "An HSM of the archive's manufacturer (for --level full).") var hsm: String?
    @OptionGroup var pkcs11: PKCS11TokenOptions
    @Option(name: .customLong("kms-key"), help: "Use only this KMS key: a local key name or an AWS KMS key ARN (repeatable; default: every local key).") var kmsKeys: [String] = []
    @Flag(help: "Machine-readable output.") var json = false

    func validate() throws {
        if pkcs11.enabled || pkcs11.module != nil || pkcs11.token != nil { try pkcs11.validate(hsm: hsm) }
        if all {
            if let archive {
                throw ValidationError("--all verifies every READY backup in the store: give no archive or backup id with it (got \"\(Printable.escape(archive))\")")
            }
            if let jobs, !(1...FleetVerifier.maximumJobs).contains(jobs) {
                throw ValidationError("--jobs must be 1...\(FleetVerifier.maximumJobs), got \(jobs)")
            }
        } else {
            if archive == nil { throw ValidationError("give an archive file or a backup id, or --all for every READY backup in the store") }
            if jobs != nil { throw ValidationError("--jobs goes with --all") }
            if pkcs11.cluster != nil { throw ValidationError("--cluster selects the backups of --all") }
        }
    }

    var effectiveLevel: VerificationLevel { level ?? (hsm != nil || pkcs11.enabled ? .full : .envelope) }

    /// The keys and HSM the level needs.
    func verificationKeys(_ level: VerificationLevel) throws -> VerificationKeys {
        var keys = VerificationKeys()
        if level >= .envelope {
            keys.keyrings = try EnvelopeKeyOptions.with(kmsKeys: kmsKeys, kmsDir: nil, rawKeys: [], namespaces: [], names: []).decryptionKeyrings()
        }
        if level == .full {
            if pkcs11.enabled { keys.hsm = try pkcs11.open() } else {
                guard let hsm else { throw ValidationError("--level full needs --hsm DIR (an HSM of the archive's manufacturer)") }
                keys.hsm = try openHSM(hsm)
            }
        }
        return keys
    }

    func run() throws {
        if all { try VerifyAll(command: self).run(); return }
        try runMapped {
            let level = effectiveLevel
            let keys = try verificationKeys(level)
            let report: VerificationReport
            switch try ArchiveRef.resolve(archive!) {
            case .file(let path):
                let bar = ProgressBar("verify", total: ArchiveRef.fileSize(path).map(Int64.init))
                report = try Verifier.verify(try FileHandleSource(path: path), name: path, level: level, keys: keys, progress: { bar.update(Int64($0)) })
                bar.finish()
            case .stored(let id):
                let bar = ProgressBar("verify", total: nil)
                report = try ArchiveRef.service().verify(id, level: level, keys: keys, progress: { bar.update(Int64($0)) })
                bar.finish()
            }
            if json {
                try JSONOutput.print(report)
            } else {
                for f in report.findings { try Out.line(f.description) }
                let counts = "\(report.framesChecked) frames, \(report.chunksChecked) chunks, \(report.objectsChecked) objects"
                if report.passed {
                    try Out.line("PASS \(report.archive) at level \(level.rawValue) (\(report.levelsChecked.map(\.rawValue).joined(separator: " + "))): \(counts)")
                } else {
                    try Out.line("FAIL \(report.archive) at level \(level.rawValue): \(report.errors.count) error(s); \(counts)")
                }
            }
            if !report.passed { throw ExitCode(CLIExit.verificationFailed.rawValue) }
        }
    }
}

extension VerificationLevel: ExpressibleByArgument {}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Restore an archive onto an HSM of the same manufacturer, replacing all its contents.",
        discussion: "Everything is verified before anything changes; on any failure the HSM is untouched. --dry-run checks everything and changes nothing.")
    @Argument(help: "An archive file, or a backup id (or unique prefix) in the store.") var archive: String
    @Option(help: "The target HSM's state directory.") var hsm: String?
    @OptionGroup var pkcs11: PKCS11TokenOptions
    @Flag(help: "PKCS#11: replace objects with the same class, label and CKA_ID (default: refuse).") var replace = false
    @Flag(name: .customLong("dry-run"), help: "Verify everything, change nothing.") var dryRun = false
    @Option(name: .customLong("kms-key"), help: "Use only this KMS key: a local key name or an AWS KMS key ARN (repeatable; default: every local key).") var kmsKeys: [String] = []
    @Flag(help: "Machine-readable output.") var json = false

    func validate() throws {
        try pkcs11.validate(hsm: hsm)
        if replace && !pkcs11.enabled { throw ValidationError("--replace goes with --pkcs11") }
    }

    func run() throws {
        try runMapped {
            let token = pkcs11.enabled ? try pkcs11.open(replace: replace) : nil
            let target: any RestoreTarget = try token ?? openHSM(hsm!)
            let rings = try EnvelopeKeyOptions.with(kmsKeys: kmsKeys, kmsDir: nil, rawKeys: [], namespaces: [], names: []).decryptionKeyrings()
            let summary: RestoreSummary
            switch try ArchiveRef.resolve(archive) {
            case .file(let path):
                let bar = ProgressBar("restore", total: ArchiveRef.fileSize(path).map(Int64.init))
                summary = try Restorer.restore(try FileHandleSource(path: path), onto: target, keyrings: rings, dryRun: dryRun, progress: { bar.update(Int64($0)) })
                bar.finish()
            case .stored(let id):
                let bar = ProgressBar("restore", total: nil)
                summary = try ArchiveRef.service().restore(id, onto: target, keyrings: rings, dryRun: dryRun, progress: { bar.update(Int64($0)) })
                bar.finish()
            }
            if json { try JSONOutput.print(summary); return }
            try Out.line("\(dryRun ? "dry run: would restore" : "restored") backup \(summary.backupId) (from HSM \(summary.sourceHSM)) onto \(target.metadata.hsmId)")
            if let r = token?.lastRestore {
                try Out.line("  PKCS#11: \(r.objects) objects \(dryRun ? "unwrapped as session objects and destroyed" : "created on the token"); \(r.checked) keys passed their functional check, \(r.unchecked) have none\(r.replaced > 0 ? "; \(r.replaced) replaced" : "")\(r.recoveredStale > 0 ? "; \(r.recoveredStale) left by an unfinished restore removed" : "")")
                for o in r.skippedAtBackup { try Out.line("  not in the backup: " + PKCS11CLI.describe(o)) }
                for l in r.staleLeft { Err.line("hsmbackup: warning: \"\(Printable.escape(l))\" is left under the temporary label: it refuses C_DestroyObject (CKA_DESTROYABLE false)") }
                return
            }
            try Out.line("  \(summary.policies) policies, \(summary.users) users, \(summary.keys) keys; \(summary.chunks) chunks verified\(dryRun ? "; nothing changed" : "; all previous contents replaced")")
        }
    }
}
