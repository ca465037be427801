import BackupCrypto
import ByteCoding
import Durability
import Foundation
import HSMArchive

/// A software HSM that behaves like a real one at its boundary: it holds the MKBK, the AKBK and
/// its contents in an owner-only state directory; `backup()` returns only the sealed inner blob;
/// `restore(_:dryRun:)` checks everything before it replaces all contents in one atomic step.
///
/// State directory (mode 0700, every file 0600, each written with `AtomicFile`):
///   identity.json   the public identity (canonical JSON)
///   mkbk.key        32 raw bytes, installed when the HSM is made
///   akbk.key        32 raw bytes, installed by the operator (absent before)
///   contents.json   users, keys and policies (canonical JSON); replaced whole by a restore
public final class SimulatedHSM {
    public static let identityFile = "identity.json"
    public static let mkbkFile = "mkbk.key"
    public static let akbkFile = "akbk.key"
    public static let contentsFile = "contents.json"
    public static let maximumStateFileBytes = 256 << 20

    public let directory: String
    public let identity: HSMIdentity
    public private(set) var contents: HSMContents
    private let mkbk: ManufacturerBackupKey
    private var akbk: OperatorBackupKey?

    private init(directory: String, identity: HSMIdentity, contents: HSMContents,
                 mkbk: ManufacturerBackupKey, akbk: OperatorBackupKey?) {
        self.directory = directory
        self.identity = identity
        self.contents = contents
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
        if let existing = try? FileManager.default.contentsOfDirectory(atPath: directory), !existing.isEmpty {
            throw HSMError(.alreadyExists, "the directory is not empty", path: directory)
        }
        do {
            try AtomicFile.makeDirectory(directory)
            chmod(directory, 0o700)
            try AtomicFile.write(try CanonicalJSON.encode(identity), to: directory + "/" + identityFile)
            var raw = mkbk.secret.unsafeCopy()
            defer { wipe(&raw) }
            try AtomicFile.write(raw, to: directory + "/" + mkbkFile)
            try AtomicFile.write(try CanonicalJSON.encode(HSMContents.empty), to: directory + "/" + contentsFile)
        } catch let e as FileError { throw HSMError.file(e) }
        let hsm = SimulatedHSM(directory: directory, identity: identity, contents: .empty, mkbk: mkbk, akbk: nil)
        if let akbk { try hsm.installOperatorKey(akbk) }
        return hsm
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
        let contents = try decodeState(HSMContents.self, try read(contentsFile), name: contentsFile, directory: directory)
        return SimulatedHSM(directory: directory, identity: identity, contents: contents, mkbk: mkbk, akbk: akbk)
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

    /// Replaces all contents (atomically). Used by `populate` and by a restore.
    public func replaceContents(_ new: HSMContents) throws {
        try new.validate()
        do { try AtomicFile.write(try CanonicalJSON.encode(new), to: directory + "/" + Self.contentsFile) } catch let e as FileError {
            throw HSMError.file(e)
        }
        contents = new
    }

    // MARK: backup and restore

    /// Makes a backup: returns only the sealed inner blob.
    public func backup(chunkSize: Int = InnerFormat.defaultChunkSize, randomness: RandomSource = SystemRandomSource(),
                       createdAt: UInt64? = nil) throws -> [UInt8] {
        var out: [UInt8] = []
        _ = try backup(to: { out.append(contentsOf: $0) }, chunkSize: chunkSize, randomness: randomness, createdAt: createdAt)
        return out
    }

    /// Streams a backup to `sink` (header first, then each chunk); returns the header written.
    @discardableResult
    public func backup(to sink: @escaping ([UInt8]) throws -> Void, chunkSize: Int = InnerFormat.defaultChunkSize,
                       randomness: RandomSource = SystemRandomSource(), createdAt: UInt64? = nil) throws -> InnerHeader {
        let keyring = try keyring()
        let backupId = randomness.bytes(count: InnerFormat.backupIdByteCount)
        let ebk = try EphemeralBackupKey(secret: randomness.secureBytes(count: 32))
        let time = createdAt ?? UInt64(max(0, Date().timeIntervalSince1970))
        var header: InnerHeader?
        try InnerBlob.seal(try contents.payloadBundle(), metadata: identity.metadata, backupId: backupId, createdAt: time,
                           keyring: keyring, ebk: ebk, chunkSize: chunkSize) { bytes in
            if header == nil { header = try InnerHeader.parse(prefix: bytes) }
            try sink(bytes)
        }
        return header!
    }

    /// A streaming restore: feed the blob in pieces, then `finish(dryRun:)`.
    public func beginRestore() throws -> RestoreSession {
        RestoreSession(hsm: self, opener: InnerBlobOpener(keyring: try keyring()))
    }

    /// Restores a blob: refuses another manufacturer, then a PBK mismatch, before anything else;
    /// verifies the seal, every chunk, the tar and every object; then (unless `dryRun`) replaces
    /// all contents atomically. On any failure the state directory is untouched.
    @discardableResult
    public func restore(_ blob: [UInt8], dryRun: Bool) throws -> RestoreSummary {
        let session = try beginRestore()
        try session.feed(blob)
        return try session.finish(dryRun: dryRun)
    }

    fileprivate func commitRestore(_ new: HSMContents) throws { try replaceContents(new) }
}

/// What a restore (or a dry run) found.
public struct RestoreSummary: Sendable, Codable {
    public let backupId: String
    public let createdAt: UInt64
    public let sourceHSM: String
    public let policies: Int
    public let users: Int
    public let keys: Int
    public let chunks: Int
    public let dryRun: Bool
}

public final class RestoreSession {
    private let hsm: SimulatedHSM
    private let opener: InnerBlobOpener

    fileprivate init(hsm: SimulatedHSM, opener: InnerBlobOpener) {
        self.hsm = hsm
        self.opener = opener
    }

    public var header: InnerHeader? { opener.header }

    public func feed(_ bytes: [UInt8]) throws { try opener.feed(bytes) }

    public func finish(dryRun: Bool) throws -> RestoreSummary {
        let tar = try opener.finish()
        let header = opener.header!
        let bundle = try PayloadBundle.parse(tar: tar, descriptor: header.payload)
        let contents = try HSMContents(bundle: bundle)
        if !dryRun { try hsm.commitRestore(contents) }
        return RestoreSummary(backupId: Hex.encode(header.backupId), createdAt: header.createdAt, sourceHSM: header.metadata.hsmId,
                              policies: contents.policies.count, users: contents.users.count, keys: contents.keys.count,
                              chunks: opener.chunkCount, dryRun: dryRun)
    }
}
