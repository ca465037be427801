import BackupCrypto
import Envelope
import HSMArchive
import SimulatedHSM

/// How an archive is written.
public struct ArchiveOptions: Sendable {
    /// Use the signed suite (0x0578): an ECDSA P-384 footer over the whole message.
    public var signed = false
    /// Envelope frame length (plaintext bytes per frame).
    public var frameLength: UInt32 = 64 * 1024
    /// Inner chunk size: payload (tar) bytes per chunk, each compressed and KWP-wrapped on its own.
    public var chunkSize = InnerFormat.defaultChunkSize
    /// Extra encryption-context pairs of the caller (not under the reserved `hsmbackup.` prefix).
    public var context: EncryptionContext = .empty
    /// The backup's creation time in seconds since the epoch (default: now). `schedule run`
    /// passes its clock's time, so a backup's age follows the clock that decided it was due.
    public var createdAt: UInt64?

    public init(signed: Bool = false) { self.signed = signed }
}

/// What was written.
public struct ArchiveSummary: Codable, Sendable {
    public let metadata: ArchiveMetadata
    /// The archive file's size (the whole envelope message).
    public let archiveBytes: UInt64
    /// The inner blob's size (the envelope's plaintext).
    public let innerBytes: UInt64
    public let frameLength: UInt32
    public let signed: Bool
    /// The KMS keys (one EDK each) that can open the archive.
    public let keys: [String]
}

/// Writes archives: the HSM's sealed inner blob streamed through an envelope. The plaintext of
/// the HSM never exists outside the HSM; the inner blob is never held whole (it flows chunk by
/// chunk from the HSM into envelope frames into the sink).
public enum BackupWriter {
    /// Backs up `hsm` into `sink` under every keyring (one EDK per KMS key).
    public static func writeArchive(of hsm: any BackupSource, keyrings: [Keyring], options: ArchiveOptions = ArchiveOptions(),
                                    to sink: ByteSink, progress: ((UInt64) -> Void)? = nil) throws -> ArchiveSummary {
        guard !keyrings.isEmpty else { throw HSMBackupError(.invalidArgument, "an archive needs at least one KMS key") }
        let counting = CountingSink(sink)
        var encryptor: EnvelopeEncryptor?
        var metadata: ArchiveMetadata?
        var innerBytes: UInt64 = 0
        // The HSM's own public pairs (a PKCS#11 token's PBK check values, spec 9.3).
        var callerContext = options.context
        for (k, v) in try hsm.archiveContext().sorted(by: { $0.key < $1.key }) { callerContext = try callerContext.setting(k, to: v) }
        // The HSM emits its inner header first: the public metadata comes from it, so the
        // envelope header can be written before the first chunk exists.
        try hsm.backup(to: { piece in
            if encryptor == nil {
                let inner = try InnerHeader.parse(prefix: piece)
                let meta = ArchiveMetadata(innerHeader: inner)
                metadata = meta
                encryptor = try EnvelopeEncryptor(sink: counting, keyrings: keyrings, context: meta.merged(into: callerContext),
                                                  suite: options.signed ? .committingSigned : .committing,
                                                  frameLength: options.frameLength)
            }
            try encryptor!.write(piece)
            innerBytes += UInt64(piece.count)
            progress?(innerBytes)
        }, chunkSize: options.chunkSize, createdAt: options.createdAt)
        guard let encryptor, let metadata else { throw HSMBackupError(.invalidArgument, "the HSM produced no backup") }
        try encryptor.finish()
        return ArchiveSummary(metadata: metadata, archiveBytes: counting.count, innerBytes: innerBytes,
                              frameLength: options.frameLength, signed: options.signed,
                              keys: encryptor.header.encryptedDataKeys.map(\.keyDescription))
    }

    /// Backs up `hsm` into a file, atomically: on any failure no file (and no partial file) is left.
    public static func writeArchive(of hsm: any BackupSource, keyrings: [Keyring], options: ArchiveOptions = ArchiveOptions(),
                                    toFile path: String, progress: ((UInt64) -> Void)? = nil) throws -> ArchiveSummary {
        let sink = try AtomicFileSink(path: path)
        do {
            let summary = try writeArchive(of: hsm, keyrings: keyrings, options: options, to: sink, progress: progress)
            try sink.commit()
            return summary
        } catch {
            sink.abort()
            throw error
        }
    }
}

/// Counts what passes through to another sink.
final class CountingSink: ByteSink {
    let next: ByteSink
    private(set) var count: UInt64 = 0
    init(_ next: ByteSink) { self.next = next }
    func write(_ bytes: [UInt8]) throws {
        try next.write(bytes)
        count += UInt64(bytes.count)
    }
}
