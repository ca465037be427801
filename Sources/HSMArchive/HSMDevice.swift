import BackupCrypto

// The HSM abstraction (issue 15): what the facade (HSMBackup) and the CLI need from an HSM, and
// nothing more. `SimulatedHSM` (the embedded reference) and `PKCS11HSM` (a real token behind a
// PKCS#11 module) implement it. Every implementation produces and consumes the inner blob of
// spec/FORMAT.md §4; only the object bodies of its payload are its own (§4.7, §9).

/// An HSM that can seal a backup of itself.
public protocol BackupSource: AnyObject {
    /// The identity written into the inner header (§4.3.2).
    var metadata: ManufacturerMetadata { get }
    /// The public PBK fingerprint (§4.2), or nil when the HSM has no backup key yet.
    func pbkFingerprint() throws -> [UInt8]?
    /// Public encryption-context pairs this HSM adds to the archive envelope (never secret; not
    /// under the reserved `hsmbackup.` prefix). The simulated HSM adds none.
    func archiveContext() throws -> [String: String]
    /// Streams a sealed inner blob to `sink`, header first; returns the header. `createdAt`
    /// (seconds since the Unix epoch) overrides the clock, for a scheduler with its own clock.
    @discardableResult
    func backup(to sink: @escaping ([UInt8]) throws -> Void, chunkSize: Int, createdAt: UInt64?) throws -> InnerHeader
}

extension BackupSource {
    /// A backup stamped with the current time.
    @discardableResult
    public func backup(to sink: @escaping ([UInt8]) throws -> Void, chunkSize: Int) throws -> InnerHeader {
        try backup(to: sink, chunkSize: chunkSize, createdAt: nil)
    }
}

/// An HSM that can check, and apply, a restore.
public protocol RestoreTarget: AnyObject {
    var metadata: ManufacturerMetadata { get }
    /// A streaming restore. `archiveContext` is the archive envelope's authenticated encryption
    /// context (public metadata), read before any inner byte. A dry run checks and changes nothing.
    func beginRestore(dryRun: Bool, archiveContext: [String: String]) throws -> any HSMRestoreSession
}

/// Feed the inner blob in pieces, then `finish()`.
public protocol HSMRestoreSession: AnyObject {
    /// The inner header, once it authenticated.
    var header: InnerHeader? { get }
    func feed(_ bytes: [UInt8]) throws
    func finish() throws -> RestoreSummary
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

    public init(backupId: String, createdAt: UInt64, sourceHSM: String, policies: Int, users: Int, keys: Int,
                chunks: Int, dryRun: Bool) {
        self.backupId = backupId
        self.createdAt = createdAt
        self.sourceHSM = sourceHSM
        self.policies = policies
        self.users = users
        self.keys = keys
        self.chunks = chunks
        self.dryRun = dryRun
    }
}

/// Where a reader gets the EBK of a header from (§4.6 steps 3-5): derived keys on the host
/// (`BackupKeyring`), or a token that holds the PBK and unwraps the EBK itself (PKCS#11).
/// It MUST check the manufacturer and the PBK fingerprint before it unwraps anything.
public protocol EBKUnlocker {
    func unlockEBK(_ header: InnerHeader) throws -> EphemeralBackupKey
}

extension BackupKeyring: EBKUnlocker {
    public func unlockEBK(_ h: InnerHeader) throws -> EphemeralBackupKey {
        guard h.metadata.manufacturerId == manufacturerId else {
            throw ArchiveError(.wrongManufacturer,
                               "the backup was made by manufacturer \"\(h.metadata.manufacturerId)\"; this HSM is \"\(manufacturerId)\"",
                               offset: InnerFormat.preludeByteCount, field: "manufacturer id")
        }
        let pbk = try pbk()
        let fingerprint = try KeyHierarchy.fingerprint(of: pbk, manufacturerId: manufacturerId)
        guard constantTimeEqual(fingerprint, h.pbkFingerprint) else {
            throw ArchiveError(.pbkMismatch, "the PBK fingerprint differs: another operator key (AKBK) or manufacturer key generation",
                               field: "PBK fingerprint")
        }
        return try h.unwrapEBK(pbk: pbk)
    }
}
