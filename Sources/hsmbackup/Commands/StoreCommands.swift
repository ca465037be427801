import ArgumentParser
import BackupCrypto
import HSMBackup
import Durability
import Foundation
import ObjectStore
import S3Store

/// `hsmbackup store ...`: the durable object directory and its catalog (spec/FORMAT.md section 5).
/// Thin: every subcommand opens the store under `Home.store` and calls the ObjectStore module.
struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Create, inspect, verify and repair the replicated object store.",
        subcommands: [StoreInit.self, StoreStat.self, StoreList.self, StorePut.self, StoreGet.self,
                      StoreScrub.self, StoreFsck.self, StoreReindex.self])
}

struct StoreJSONOption: ParsableArguments {
    @Flag(name: .long, help: "Print machine-readable JSON.")
    var json = false
}

extension StoreError: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .invalidKey, .invalidArgument, .alreadyExists, .alreadyInitialized, .invalidState, .limitExceeded: return .usage
        case .notFound: return .notFound
        case .unrecoverable, .badFormat, .badCatalog: return .verificationFailed
        case .quorumNotReached, .ioError: return .ioError
        case .accessDenied: return .permissionDenied
        }
    }
    var cliMessage: String { description }
}

enum StoreCLI {
    /// Opens the store; opening removes dead writers' temp files unless fsck is to report them.
    static func open(removeStaleTemps: Bool = true) throws -> any ReplicatedStorage {
        try TransportPreflight.check(storeRoot: Home.store)
        do { return try StoreLocator.open(root: Home.store, removeStaleTemps: removeStaleTemps) } catch let e as StoreError where e.code == .notFound {
            throw StoreError(.notFound, path: Home.store, "no store here; run `hsmbackup store init` first")
        }
    }

    /// One line per backup, or the entries as JSON (`store ls`, `backup list`).
    static func printBackups(_ entries: [BackupEntry], json: Bool) throws {
        if json { try JSONOutput.print(entries); return }
        if entries.isEmpty { try say("no backups"); return }
        for e in entries {
            let tags = e.tags.isEmpty ? "" : "  tags " + e.tags.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            try say("\(e.backupId)  \(e.clusterId)  \(e.state.rawValue)  \(date(e.createdMillis))  \(e.size) bytes\(e.neverExpires ? "  never-expires" : "")\(e.copySource != nil ? "  copy" : "")\(tags)")
        }
    }

    static func date(_ millis: UInt64) -> String { Timestamp.rfc3339(millis: millis) }

    static func run(_ body: () throws -> Void) throws {
        do { try body() } catch { throw CLIExit.translate(error) }
    }

    static func say(_ s: String) throws { try Out.line(s) }

    /// Object keys the backup catalog owns (its metadata, archives and retention policies).
    static let reservedPrefixes = ["backups/", "clusters/"]
}

struct StoreInit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a store with N replica directories.")

    @Option(name: .long, help: "Number of replica directories inside the store (default 3).")
    var replicas: Int?
    @Option(name: .customLong("replica-dir"), help: "A replica directory (repeat; ideally one per disk). Overrides --replicas.")
    var replicaDirs: [String] = []
    @Option(name: .long, help: "Replicas that must be durable before a put returns (default: a majority).")
    var quorum: Int?
    @Option(name: .customLong("s3"), help: "An S3 replica location s3://BUCKET/PREFIX (repeat for replicas); makes an S3 store.")
    var s3: [String] = []
    @Option(name: .long, help: "The S3 endpoint URL (MinIO, Ceph RGW, R2 ...; default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS).")
    var endpoint: String?
    @Option(name: .long, help: "The S3 region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile; us-east-1 for a custom endpoint).")
    var region: String?
    @Option(name: .customLong("part-size-mib"), help: "S3 multipart part size in MiB, 7...64 (default 8; 10,000 parts must hold a 64 GiB object); objects up to it take one PUT.")
    var partSizeMiB: Int?
    @OptionGroup var output: StoreJSONOption

    func validate() throws {
        if s3.isEmpty {
            guard endpoint == nil, region == nil, partSizeMiB == nil else {
                throw ValidationError("--endpoint, --region and --part-size-mib go with --s3")
            }
        } else {
            guard replicas == nil, replicaDirs.isEmpty else { throw ValidationError("--s3 and --replicas/--replica-dir are exclusive") }
            let range = S3StoreConfiguration.partSizeRange
            if let p = partSizeMiB, !((range.lowerBound >> 20)...(range.upperBound >> 20)).contains(p) {
                throw ValidationError("--part-size-mib \(p): give \(range.lowerBound >> 20)...\(range.upperBound >> 20) "
                                      + "(S3 takes at most \(S3StoreConfiguration.maximumParts) parts, and an object may reach \(ObjectRecord.maxObjectSize >> 30) GiB)")
            }
        }
    }

    func run() throws {
        try StoreCLI.run {
            if !s3.isEmpty { return try runS3() }
            // Relative --replica-dir paths are taken from the current directory, as a user expects.
            let cwd = FileManager.default.currentDirectoryPath
            let dirs = replicaDirs.map { $0.hasPrefix("/") ? $0 : cwd + "/" + $0 }
            let store = try LocalObjectStore.create(at: Home.store, replicas: dirs.isEmpty ? nil : dirs,
                                                    replicaCount: replicas ?? 3, writeQuorum: quorum)
            _ = try BackupCatalog(store: store)
            let status = StoreStatus(store)
            if output.json { try JSONOutput.print(status) } else {
                try StoreCLI.say("created store \(status.storeId) at \(status.root): \(status.replicas.count) replicas, write quorum \(status.writeQuorum)")
            }
        }
    }
}

extension StoreInit {
    /// `store init --s3 ...`: initializes each bucket location, writes `store.json`, then the
    /// empty catalog.
    func runS3() throws {
        let config = try S3StoreConfiguration.resolve(urls: s3, endpoint: endpoint, region: region, writeQuorum: quorum,
                                                      partSize: (partSizeMiB ?? 8) << 20, storeId: SecureRandom.bytes(count: 16))
        try TransportPreflight.check(config)
        let store = try StoreLocator.createS3(root: Home.store, configuration: config)
        _ = try BackupCatalog(store: store)
        let status = StoreStatus(store)
        if output.json { try JSONOutput.print(status) } else {
            try StoreCLI.say("created S3 store \(status.storeId) (\(status.root)): \(status.replicas.count) replicas, write quorum \(status.writeQuorum)")
            for r in status.replicas { try StoreCLI.say("  replica \(r.index): \(r.path)") }
        }
    }
}

struct StoreStatus: Encodable {
    struct Replica: Encodable { let index: Int; let path: String; let available: Bool; let problem: String? }
    let root: String
    let storeId: String
    let writeQuorum: Int
    let replicas: [Replica]
    var objects: Int?
    var backups: Int?

    init(_ store: any ReplicatedStorage) {
        root = store.location
        storeId = store.storeIdHex
        writeQuorum = store.writeQuorum
        let problems = store.unavailableReplicas()
        replicas = (0..<store.replicaCount).map { i in
            let problem = problems.first { $0.replica == i }
            return Replica(index: i, path: store.replicaLocation(i), available: problem == nil, problem: problem?.detail)
        }
    }
}

struct StoreStat: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stat", abstract: "Show the store, or one object's checksum record.")

    @Argument(help: "An object key; without it, the store itself.")
    var key: String?
    @OptionGroup var output: StoreJSONOption

    func run() throws {
        try StoreCLI.run {
            let store = try StoreCLI.open()
            if let key {
                let info = try store.stat(key)
                if output.json { try JSONOutput.print(info) } else {
                    try StoreCLI.say("\(info.key)  \(info.size) bytes  sha256 \(info.sha256)  created \(StoreCLI.date(info.createdMillis))  replicas \(info.replicas.map(String.init).joined(separator: ","))")
                }
                return
            }
            var status = StoreStatus(store)
            status.objects = try store.list(prefix: "").count
            status.backups = try BackupCatalog(store: store).list().count
            if output.json { try JSONOutput.print(status) } else {
                try StoreCLI.say("store \(status.storeId) at \(status.root)")
                try StoreCLI.say("write quorum \(status.writeQuorum) of \(status.replicas.count); \(status.objects ?? 0) objects; \(status.backups ?? 0) backups")
                for r in status.replicas {
                    try StoreCLI.say("  replica \(r.index): \(r.path) \(r.available ? "ok" : "UNAVAILABLE: \(r.problem ?? "")")")
                }
            }
        }
    }
}

struct StoreList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List backups from the catalog, or object keys.")

    @Flag(name: .long, help: "List object keys instead of backups.")
    var objects = false
    @Option(name: .long, help: "With --objects: only keys with this prefix.")
    var prefix: String = ""
    @Option(name: .long, help: "Only backups of this cluster.")
    var cluster: String?
    @Option(name: .long, help: "Only backups in this state: CREATE_IN_PROGRESS, READY, PENDING_DELETION, DELETED (repeatable).")
    var state: [String] = []
    @Option(name: .long, help: "Only backups created at or after this time (ISO 8601).")
    var since: String?
    @Option(name: .long, help: "Only backups created before this time (ISO 8601).")
    var before: String?
    @Option(name: .long, help: "At most this many backups.")
    var limit: Int?
    @OptionGroup var output: StoreJSONOption

    var queryOptions: CatalogQueryOptions { CatalogQueryOptions(cluster: cluster, states: state, since: since, before: before, limit: limit) }

    func validate() throws {
        do { _ = try queryOptions.query() } catch let e as StoreError { throw ValidationError("\(e.key.map { "\($0): " } ?? "")\(e.reason)") }
    }

    func run() throws {
        try StoreCLI.run {
            let store = try StoreCLI.open()
            if objects {
                let keys = try store.list(prefix: prefix)
                if output.json { try JSONOutput.print(keys) } else { try keys.forEach { try StoreCLI.say($0) } }
                return
            }
            try StoreCLI.printBackups(try BackupCatalog(store: store).listCurrent(try queryOptions.query()), json: output.json)
        }
    }
}

struct StorePut: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "put", abstract: "Store a file (or stdin with -) as a new object.",
        discussion: "Keys under \(StoreCLI.reservedPrefixes.joined(separator: " and ")) belong to the backup catalog (spec/FORMAT.md section 5) and are refused: an object put there by hand would disagree with the catalog for good.")

    @Argument(help: "The object key.")
    var key: String
    @Argument(help: "The file to store, or - for stdin.")
    var file: String
    @Flag(name: .customLong("allow-reserved"), help: ArgumentHelp("Write under a catalog key anyway (fault tests and hand repair; run `store reindex` afterwards).", visibility: .hidden))
    var allowReserved = false
    @OptionGroup var output: StoreJSONOption

    func run() throws {
        try StoreCLI.run {
            if !allowReserved, let p = StoreCLI.reservedPrefixes.first(where: { key.hasPrefix($0) }) {
                throw StoreError(.invalidKey, key: key, "keys under \(p) belong to the backup catalog; `backup create`, `backup copy` and the lifecycle commands write them")
            }
            if file != "-" { try PathArgument.input(file) }
            let store = try StoreCLI.open()
            let source: ObjectSource = file == "-" ? FileSource(handle: .standardInput, name: "stdin") : try FileSource(path: file)
            let report = try store.put(key, from: source)
            if output.json { try JSONOutput.print(report) } else {
                try StoreCLI.say("stored \(report.info.key): \(report.info.size) bytes, sha256 \(report.info.sha256), replicas \(report.written.map(String.init).joined(separator: ","))")
                for f in report.failed { Err.line("hsmbackup: warning: not written to \(f)") }
            }
        }
    }
}

struct StoreGet: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Read an object, verifying it, to a file or stdout.")

    @Argument(help: "The object key.")
    var key: String
    @Option(name: .shortAndLong, help: "Write to this file (created whole or not at all); - or none: stdout.")
    var output: String?

    func run() throws {
        try StoreCLI.run {
            let output = self.output == "-" ? nil : self.output
            if let output { try PathArgument.output(output) }
            let store = try StoreCLI.open()
            let reader = try store.get(key)
            if let output {
                let w = try AtomicFile.Writer(path: output, mode: 0o600)
                do {
                    while let piece = try reader.read() { try w.append(piece) }
                    try w.commit()
                } catch {
                    w.abort()
                    throw error
                }
            } else {
                while let piece = try reader.read() { try Out.raw(piece) }
            }
            if let r = reader as? ReplicaReadReporting {
                for f in r.findings { Err.line("hsmbackup: warning: \(f)") }
                if !r.repaired.isEmpty {
                    Err.line("hsmbackup: repaired replicas \(r.repaired.map(String.init).joined(separator: ","))")
                }
            }
        }
    }
}

struct StoreScrub: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scrub", abstract: "Verify every replica of every object; with --repair, heal from a good replica.",
        discussion: "Exits 65 when damage remains (not repaired, or unrecoverable), 0 when the store is clean.")

    @Flag(name: .long, help: "Rewrite bad or missing replicas from a good one; re-create missing replica directories.")
    var repair = false
    @OptionGroup var output: StoreJSONOption

    func run() throws {
        try StoreCLI.run {
            let store = try StoreCLI.open()
            // Progress only on a terminal, redrawn at most ten times a second.
            var lastDraw = Date.distantPast
            // Through the catalog: leftovers of deleted backups and killed rewraps are not healed.
            let report = try BackupCatalog(store: store).scrub(repair: repair, progress: Terminal.stderrIsTTY ? { done, total in
                guard done == total || Date().timeIntervalSince(lastDraw) >= 0.1 else { return }
                lastDraw = Date()
                Err.raw("\rscrub: \(done)/\(total) objects")
                if done == total { Err.raw("\n") }
            } : nil)
            if output.json { try JSONOutput.print(report) } else {
                try StoreCLI.say("objects \(report.objects), replicas checked \(report.replicasChecked), corrupt \(report.corrupt), missing \(report.missing), repaired \(report.repaired), unrecoverable \(report.unrecoverable)")
                for f in report.unavailableReplicas { try StoreCLI.say("unavailable: \(f)") }
                for i in report.recreatedReplicas { try StoreCLI.say("re-created replica \(i)") }
                for f in report.findings { try StoreCLI.say("\(f.key): \(f.finding)") }
                for f in report.repairFailures { try StoreCLI.say("repair failed: \(f.key): \(f.finding)") }
                for k in report.notRepaired { try StoreCLI.say("not repaired: \(k): no backup uses it (`store fsck` removes it)") }
            }
            let remaining = report.unrecoverable > 0 || !report.repairFailures.isEmpty || !report.unavailableReplicas.isEmpty
                || (!repair && (report.corrupt > 0 || report.missing > 0))
            if remaining { throw ExitCode(CLIExit.verificationFailed.rawValue) }
        }
    }
}

struct StoreFsckResult: Encodable {
    let tempsRemoved: [String]
    /// Temps (a directory moved out of a replica file's place) that could not be removed.
    let tempsNotRemoved: [ReplicaFinding]
    let unavailableReplicas: [ReplicaFinding]
    /// What recovery did (abandoned creates finished or rolled back, newer metadata taken,
    /// leftover archives removed), before the catalog was checked.
    let recovered: [RecoveryAction]
    let catalog: [CatalogFinding]
    /// What fsck left undone (S3: uploads of unknown age, replicas whose uploads were not listed).
    let skipped: [String]

    /// What makes fsck exit 65. A backup recovery skipped because its writer is alive is not
    /// one: the next fsck settles it. One it could not settle (a replica refused a delete) is,
    /// even when the catalog agrees with what the objects say.
    var hasFindings: Bool {
        !catalog.isEmpty || !unavailableReplicas.isEmpty || !tempsNotRemoved.isEmpty || recovered.contains { $0.needsAttention }
    }
}

struct StoreFsck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck", abstract: "Remove stale temp files and check the catalog against the objects.",
        discussion: "First finishes what killed commands left: an abandoned backup create or copy becomes READY if its archive is whole and verifies, else it is rolled back; metadata newer than the catalog wins; archive objects no backup uses are removed. Exits 65 when the catalog still disagrees with the objects (`store reindex` rebuilds it), a replica is unavailable, recovery had to leave a backup unsettled (for any reason but a live writer: a replica refused), or a temp could not be removed.")

    @Option(name: .customLong("stale-upload-seconds"), help: "S3 store: abort multipart uploads under the prefix initiated at least this long ago (default 86400: a day; at most 315360000: ten years).")
    var staleUploadSeconds: UInt64?
    @OptionGroup var output: StoreJSONOption

    func validate() throws {
        // Bounded so that the age in milliseconds cannot overflow.
        if let s = staleUploadSeconds, s > S3ObjectStore.maximumStaleUploadSeconds {
            throw ValidationError("--stale-upload-seconds \(s): give at most \(S3ObjectStore.maximumStaleUploadSeconds) (ten years)")
        }
    }

    func run() throws {
        try StoreCLI.run {
            let store = try StoreCLI.open(removeStaleTemps: false)
            if let s3 = store as? S3ObjectStore, let staleUploadSeconds { s3.staleUploadAgeMillis = staleUploadSeconds * 1000 }
            let catalog = try BackupCatalog(store: store)
            let fsck = store.fsck()
            let temps = fsck.tempsRemoved + (try catalog.removeStaleTemps())
            let recovered = try BackupService(catalog: catalog).recover()
            let result = StoreFsckResult(tempsRemoved: temps, tempsNotRemoved: fsck.tempsNotRemoved, unavailableReplicas: fsck.unavailableReplicas,
                                         recovered: recovered, catalog: try catalog.check(),
                                         skipped: (store as? S3ObjectStore)?.fsckSkipped ?? [])
            if output.json { try JSONOutput.print(result) } else {
                try StoreCLI.say("removed \(result.tempsRemoved.count) stale temp files")
                for t in result.tempsRemoved { try StoreCLI.say("  \(t)") }
                for f in result.tempsNotRemoved { try StoreCLI.say("temp not removed: \(f)") }
                for a in result.recovered { try StoreCLI.say("recovered: \(a.backupId): \(a.action.rawValue): \(a.detail)") }
                for f in result.unavailableReplicas { try StoreCLI.say("unavailable: \(f)") }
                for k in result.skipped { try StoreCLI.say("skipped: \(k)") }
                for f in result.catalog { try StoreCLI.say("catalog: \(f.backupId): \(f.problem.rawValue): \(f.detail)") }
                if !result.hasFindings { try StoreCLI.say("catalog and objects agree") }
            }
            if result.hasFindings { throw ExitCode(CLIExit.verificationFailed.rawValue) }
        }
    }
}

struct StoreReindex: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reindex", abstract: "Rebuild the catalog from the metadata objects.")

    @OptionGroup var output: StoreJSONOption

    func run() throws {
        try StoreCLI.run {
            let report = try BackupCatalog(store: try StoreCLI.open()).reindex()
            if output.json { try JSONOutput.print(report) } else {
                try StoreCLI.say("catalog rebuilt: \(report.entries) backups, \(report.policies) retention policies")
                for k in report.unreadable { try StoreCLI.say("unreadable metadata: \(k)") }
                for k in report.orphanArchives { try StoreCLI.say("archive without metadata: \(k)") }
            }
        }
    }
}
