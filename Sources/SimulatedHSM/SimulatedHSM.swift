import BackupCrypto
import ByteCoding
import Durability
import Foundation
import HSMArchive

/// A software HSM that behaves like a real one at its boundary: it holds the MKBK, the AKBK and
/// its contents in an owner-only state directory; `backup()` returns only the sealed inner blob;
/// a restore checks everything before it replaces all contents in one atomic step.
///
/// State directory (mode 0700, every file 0600, each written with `AtomicFile`):
///   identity.json   the public identity (canonical JSON)
///   mkbk.key        32 raw bytes, installed when the HSM is made
///   akbk.key        32 raw bytes, installed by the operator (absent before)
///   contents.state  users, keys and policies: a 29-byte prefix ("HSMSTATE", version 1, the
///                   policy, user and key counts as u32, the payload size as u64), then the
///                   payload tar of spec 4.7 itself. Replaced whole by a restore. A backup
///                   streams it into chunks, a restore streams the checked tar into its temp
///                   file, so neither holds the contents in memory.
/// (An HSM made by an earlier version keeps `contents.json`; `open` converts it once.)
public final class SimulatedHSM {
    public static let identityFile = "identity.json"
    public static let mkbkFile = "mkbk.key"
    public static let akbkFile = "akbk.key"
    public static let contentsFile = "contents.state"
    public static let legacyContentsFile = "contents.json"
    public static let maximumStateFileBytes = 256 << 20

    public let directory: String
    public let identity: HSMIdentity
    /// The contents' counts and payload size, from the state file's prefix.
    public private(set) var state: ContentsState
    private let mkbk: ManufacturerBackupKey
    private var akbk: OperatorBackupKey?

    private init(directory: String, identity: HSMIdentity, state: ContentsState,
                 mkbk: ManufacturerBackupKey, akbk: OperatorBackupKey?) {
        self.directory = directory
        self.identity = identity
        self.state = state
        self.mkbk = mkbk
        self.akbk = akbk
    }

    // MARK: life cycle

    /// Makes a new HSM in `directory` (absent or empty) with the manufacturer's MKBK and, if
    /// given, the operator's AKBK.
    @discardableResult
    public static func create(at directory: String, identity: HSMIdentity, mkbk: ManufacturerBackupKey,
                              akbk: OperatorBackupKey? = nil) throws -> SimulatedHSM {
        _ = try KeyHierarchy.manufacturerContext(identity.manufacturerId)
        try identity.validate()
        // Absent (made here) or an empty directory; anything else is refused before anything
        // changes (a file's or a device's mode is never touched).
        var st = stat()
        let existed = stat(directory, &st) == 0
        if existed {
            guard st.st_mode & S_IFMT == S_IFDIR else {
                throw HSMError(.invalidArgument, "is a \(FileError.kindName(st.st_mode)), not a directory", path: directory)
            }
            let entries: [String]
            do { entries = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
                throw HSMError(.io, "the directory cannot be listed: \(error.localizedDescription)", path: directory)
            }
            if !entries.isEmpty { throw HSMError(.alreadyExists, "the directory is not empty", path: directory) }
        }
        var ours = false // true once this call's identity.json is in place
        do {
            do {
                try AtomicFile.makeDirectory(directory)
                try restrictToOwner(directory)
                // Create-only: of two creates of one directory at once, the second stops here
                // and touches nothing of the first's.
                try AtomicFile.create(try CanonicalJSON.encode(identity), at: directory + "/" + identityFile)
                ours = true
                var raw = mkbk.secret.unsafeCopy()
                defer { wipe(&raw) }
                try AtomicFile.create(raw, at: directory + "/" + mkbkFile)
            } catch let e as FileError {
                throw e.code == .exists ? HSMError(.alreadyExists, "the directory is not empty", path: directory) : HSMError.file(e)
            }
            let state = try ContentsState.write(HSMContents.empty, to: directory + "/" + contentsFile)
            let hsm = SimulatedHSM(directory: directory, identity: identity, state: state, mkbk: mkbk, akbk: nil)
            if let akbk { try hsm.installOperatorKey(akbk) }
            return hsm
        } catch {
            // Nothing half-made stays behind (a retry would find "not empty"); only what this
            // call made is removed.
            if ours { for name in [akbkFile, contentsFile, mkbkFile, identityFile] { unlink(directory + "/" + name) } }
            if !existed { rmdir(directory) } // fails, harmlessly, if anything else is in it
            throw error
        }
    }

    /// Sets the state directory to 0700 through a descriptor that is certainly a directory.
    private static func restrictToOwner(_ directory: String) throws {
        let fd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError(errno: errno, operation: "open directory", path: directory) }
        defer { close(fd) }
        guard fchmod(fd, 0o700) == 0 else { throw FileError(errno: errno, operation: "chmod", path: directory) }
    }

    /// Opens the HSM whose state is in `directory`.
    public static func open(at directory: String) throws -> SimulatedHSM {
        func read(_ name: String) throws -> [UInt8] {
            do { return try AtomicFile.read(directory + "/" + name, limit: maximumStateFileBytes) } catch let e as FileError {
                if e.code == .notFound, name == identityFile {
                    throw HSMError(.notFound, "no simulated HSM here", path: directory)
                }
                throw HSMError.file(e)
            }
        }
        let identity = try decodeState(HSMIdentity.self, try read(identityFile), name: identityFile, directory: directory)
        var rawMKBK = try read(mkbkFile)
        defer { wipe(&rawMKBK) }
        guard let mkbk = try? ManufacturerBackupKey(bytes: rawMKBK) else {
            throw HSMError(.invalidState, "mkbk.key is not a 32-byte key", path: directory + "/" + mkbkFile)
        }
        var akbk: OperatorBackupKey?
        if FileManager.default.fileExists(atPath: directory + "/" + akbkFile) {
            var raw = try read(akbkFile)
            defer { wipe(&raw) }
            guard let k = try? OperatorBackupKey(bytes: raw) else {
                throw HSMError(.invalidState, "akbk.key is not a 32-byte key", path: directory + "/" + akbkFile)
            }
            akbk = k
        }
        // A restore killed mid-way left its temp (the plaintext payload tar): gone on the next open.
        ContentsWriter.removeStaleTemps(in: directory, fileName: contentsFile)
        let statePath = directory + "/" + contentsFile
        let legacyPath = directory + "/" + legacyContentsFile
        if !FileManager.default.fileExists(atPath: statePath), FileManager.default.fileExists(atPath: legacyPath) {
            let legacy = try decodeState(HSMContents.self, try read(legacyContentsFile), name: legacyContentsFile, directory: directory)
            _ = try ContentsState.write(legacy, to: statePath)
            unlink(legacyPath)
        }
        let state = try ContentsState.read(statePath)
        return SimulatedHSM(directory: directory, identity: identity, state: state, mkbk: mkbk, akbk: akbk)
    }

    private static func decodeState<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], name: String, directory: String) throws -> T {
        do { return try JSONDecoder().decode(type, from: Data(bytes)) } catch {
            throw HSMError(.invalidState, "\(name) is malformed", path: directory + "/" + name)
        }
    }

    /// The operator's initialization: installs the AKBK (once).
    public func installOperatorKey(_ key: OperatorBackupKey) throws {
        guard akbk == nil else { throw HSMError(.operatorKeyPresent, "an operator key is already installed", path: directory) }
        var raw = key.secret.unsafeCopy()
        defer { wipe(&raw) }
        do { try AtomicFile.write(raw, to: directory + "/" + Self.akbkFile) } catch let e as FileError { throw HSMError.file(e) }
        akbk = key
    }

    public var hasOperatorKey: Bool { akbk != nil }

    /// The public PBK fingerprint (spec 4.2), if the operator key is installed.
    public func pbkFingerprint() throws -> [UInt8]? {
        guard let keyring = try? keyring() else { return nil }
        return try KeyHierarchy.fingerprint(of: try keyring.pbk(), manufacturerId: identity.manufacturerId)
    }

    private func keyring() throws -> BackupKeyring {
        guard let akbk else { throw HSMError(.operatorKeyMissing, "the operator has not installed an AKBK", path: directory) }
        return BackupKeyring(manufacturerId: identity.manufacturerId, mkbk: mkbk, akbk: akbk)
    }

    // MARK: contents

    /// The whole contents, decoded and checked (streams the state file; for display and tests,
    /// not for backups, which never decode it).
    public var contents: HSMContents {
        get throws {
            let checker = ContentChecker(keep: true)
            try ContentsState.stream(directory + "/" + Self.contentsFile, state: state) { object in try checker.check(object) }
            return checker.contents
        }
    }

    /// Replaces all contents (atomically). Used by `populate`.
    public func replaceContents(_ new: HSMContents) throws {
        try new.validate()
        state = try ContentsState.write(new, to: directory + "/" + Self.contentsFile)
    }

    // MARK: backup and restore

    /// Makes a backup: returns only the sealed inner blob.
    public func backup(chunkSize: Int = InnerFormat.defaultChunkSize, randomness: RandomSource = SystemRandomSource(),
                       createdAt: UInt64? = nil) throws -> [UInt8] {
        var out: [UInt8] = []
        _ = try backup(to: { out.append(contentsOf: $0) }, chunkSize: chunkSize, randomness: randomness, createdAt: createdAt)
        return out
    }

    /// Streams a backup to `sink` (header first, then the chunks in order); returns the header.
    /// The payload is the state file's tar, read in pieces: memory stays a few chunk batches.
    @discardableResult
    public func backup(to sink: @escaping ([UInt8]) throws -> Void, chunkSize: Int = InnerFormat.defaultChunkSize,
                       randomness: RandomSource = SystemRandomSource(), createdAt: UInt64? = nil) throws -> InnerHeader {
        let keyring = try keyring()
        guard chunkSize >= InnerFormat.minimumChunkSize, chunkSize <= InnerFormat.maximumChunkSize else {
            throw ArchiveError(.invalidArgument, "chunk size \(chunkSize) outside the format's limits")
        }
        let backupId = randomness.bytes(count: InnerFormat.backupIdByteCount)
        let ebk = try EphemeralBackupKey(secret: randomness.secureBytes(count: 32))
        let time = createdAt ?? UInt64(max(0, Date().timeIntervalSince1970))
        let file = try ContentsState.openPayload(directory + "/" + Self.contentsFile, state: state)
        let descriptor = PayloadDescriptor(chunkSize: UInt32(chunkSize), payloadBytes: state.payloadBytes,
                                           userCount: state.users, keyCount: state.keys, policyCount: state.policies)
        let writer = try InnerBlobWriter(metadata: identity.metadata, backupId: backupId, createdAt: time, payload: descriptor,
                                         pbk: try keyring.pbk(), ebk: ebk, sink: sink)
        try file.forEachPiece { try writer.write($0) }
        try writer.finish()
        return writer.header
    }

    /// A streaming restore: feed the blob in pieces, then `finish()`. A dry run checks
    /// everything and writes nothing; a real restore streams the checked payload into a temp
    /// state file that replaces the old one only once every check passed.
    public func beginRestore(dryRun: Bool) throws -> RestoreSession {
        try RestoreSession(hsm: self, keyring: try keyring(), dryRun: dryRun)
    }

    /// Restores a blob: refuses another manufacturer, then a PBK mismatch, before anything else;
    /// verifies the seal, every chunk, the tar and every object; then (unless `dryRun`) replaces
    /// all contents atomically. On any failure the state directory is untouched.
    @discardableResult
    public func restore(_ blob: [UInt8], dryRun: Bool) throws -> RestoreSummary {
        let session = try beginRestore(dryRun: dryRun)
        try session.feed(blob)
        return try session.finish()
    }

    fileprivate func committed(_ new: ContentsState) { state = new }
}

// The HSM abstraction (HSMArchive/HSMDevice.swift): the simulated HSM is its reference.
extension SimulatedHSM: BackupSource, RestoreTarget {
    public var metadata: ManufacturerMetadata { identity.metadata }

    public func archiveContext() throws -> [String: String] { [:] }

    @discardableResult
    public func backup(to sink: @escaping ([UInt8]) throws -> Void, chunkSize: Int, createdAt: UInt64?) throws -> InnerHeader {
        try backup(to: sink, chunkSize: chunkSize, randomness: SystemRandomSource(), createdAt: createdAt)
    }

    public func beginRestore(dryRun: Bool, archiveContext: [String: String]) throws -> any HSMRestoreSession {
        try beginRestore(dryRun: dryRun)
    }
}

public final class RestoreSession: HSMRestoreSession {
    private let hsm: SimulatedHSM
    private let dryRun: Bool
    private var opener: InnerBlobOpener!
    private var payload: PayloadReader?
    private var output: ContentsWriter?
    private let checker = ContentChecker(keep: false)
    /// Objects waiting to be checked, a batch at a time, on the workers of `checks`: hashing
    /// every object against its manifest record and decoding its JSON are most of a restore's
    /// work, and objects are independent (issue 17). Each comes with its index among its kind.
    private var pendingChecks: [(object: UncheckedObject, index: Int)] = []
    private var pendingBytes = 0
    /// Per batch, in payload order: each object's digest (for the payload reader) and its
    /// content check (nil after a digest mismatch, which ends the batch, as does a failed check).
    private typealias CheckedBatch = [(digest: DigestedObject, identity: Result<ContentChecker.Identity, HSMError>?)]
    private let checks: OrderedPipeline<[(object: UncheckedObject, index: Int)], CheckedBatch> = {
        let workers = OrderedPipeline<Int, Int>.defaultWorkers
        let hashers = (0..<workers).map { _ in SHA256Hasher() }
        return OrderedPipeline(workers: workers, discardInput: { batch in for item in batch { wipeStorage(of: item.object.object.contents) } }) {
            batch, worker in
            var out: CheckedBatch = []
            out.reserveCapacity(batch.count)
            // Each object's plaintext is wiped once judged (or skipped after a failure).
            defer { for item in batch { wipeStorage(of: item.object.object.contents) } }
            for item in batch {
                let digest = item.object.digest(using: hashers[worker])
                guard digest.matches else { out.append((digest, nil)); break }
                do {
                    out.append((digest, .success(try ContentChecker.decodeAndCheck(item.object.object, index: item.index))))
                } catch {
                    out.append((digest, .failure(error as? HSMError ?? HSMError(.invalidObject, "\(error)"))))
                    break
                }
            }
            return out
        }
    }()
    /// The first object check that failed (digest or contents), once one has.
    private var checkError: Error?
    private static let checkBatchObjects = 256
    private static let checkBatchBytes = 1 << 20
    private var failure: Error?

    fileprivate init(hsm: SimulatedHSM, keyring: BackupKeyring, dryRun: Bool) throws {
        self.hsm = hsm
        self.dryRun = dryRun
        opener = InnerBlobOpener(keyring: keyring, onHeader: { [unowned self] h in try self.start(h) },
                                 payloadSink: { [unowned self] piece in
            try self.payload!.feed(piece)
            try self.output?.append(piece)
        })
    }

    deinit {
        output?.abort()
        checks.shutdown()
    }

    public var header: InnerHeader? { opener.header }

    /// Once the header authenticated: the payload check, and (not for a dry run) the temp file.
    private func start(_ h: InnerHeader) throws {
        payload = PayloadReader(deferringDigestsOf: h.payload, onUncheckedObject: { [unowned self] object in try self.queueCheck(object) })
        guard !dryRun else { return }
        let state = ContentsState(policies: h.payload.policyCount, users: h.payload.userCount, keys: h.payload.keyCount,
                                  payloadBytes: h.payload.payloadBytes)
        let w = try ContentsWriter(path: hsm.directory + "/" + SimulatedHSM.contentsFile)
        try w.append(state.prefix)
        output = w
    }

    public func feed(_ bytes: [UInt8]) throws {
        if let failure { throw failure }
        do { try opener.feed(bytes) } catch { throw fail(earlierCheckFailure() ?? error) }
    }

    public func finish() throws -> RestoreSummary {
        if let failure { throw failure }
        let header: InnerHeader
        let summary: PayloadReader.Summary
        do {
            do { try opener.finish() } catch { throw earlierCheckFailure() ?? error }
            header = opener.header!
            try submitChecks()
            try checks.drain { try self.deliverChecks($0) }
            summary = try payload!.finish()
            if let output {
                try output.commit()
                self.output = nil
                hsm.committed(ContentsState(policies: header.payload.policyCount, users: header.payload.userCount,
                                            keys: header.payload.keyCount, payloadBytes: header.payload.payloadBytes))
            }
        } catch { throw fail(error) }
        return RestoreSummary(backupId: Hex.encode(header.backupId), createdAt: header.createdAt, sourceHSM: header.metadata.hsmId,
                              policies: summary.policies, users: summary.users, keys: summary.keys,
                              chunks: opener.chunkCount, dryRun: dryRun)
    }

    private func queueCheck(_ object: UncheckedObject) throws {
        pendingChecks.append((object, checker.nextIndex(object.object.kind)))
        pendingBytes += object.object.contents.count
        if pendingChecks.count >= Self.checkBatchObjects || pendingBytes >= Self.checkBatchBytes { try submitChecks() }
    }

    private func submitChecks() throws {
        guard !pendingChecks.isEmpty else { return }
        let batch = pendingChecks
        pendingChecks = []
        pendingBytes = 0
        try checks.submit(batch) { try self.deliverChecks($0) }
    }

    /// In payload order: the first object that breaks a rule (its digest first, then its
    /// contents) is the one reported.
    private func deliverChecks(_ batch: CheckedBatch) throws {
        do {
            for (digest, identity) in batch {
                try payload!.accept(digest)
                guard let identity else { return } // accept threw: a digest mismatch ends the batch
                try checker.record(try identity.get(), path: digest.path)
            }
        } catch {
            if checkError == nil { checkError = error }
            throw error
        }
    }

    /// After an error met later in the payload (a chunk, the tar, the manifest, the end): the
    /// objects queued before it are still checked, in order, and the first of them that fails
    /// is the error to report, since it comes first in payload order. Nil when they all pass.
    private func earlierCheckFailure() -> Error? {
        if let e = payload?.earlierFailure() { return e }
        if let checkError { return checkError }
        do {
            try submitChecks()
            try checks.drain { try self.deliverChecks($0) }
        } catch {}
        return checkError
    }

    private func fail(_ error: Error) -> Error {
        failure = error
        output?.abort()
        output = nil
        checks.shutdown()
        for item in pendingChecks { wipeStorage(of: item.object.object.contents) }
        pendingChecks = []
        return error
    }
}
