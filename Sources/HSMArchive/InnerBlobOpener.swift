import BackupCrypto
import ByteCoding
import PayloadCodec

/// The keys an HSM holds for backups (what "inside the HSM boundary" means for this module).
public struct BackupKeyring: Sendable {
    public let manufacturerId: String
    public let mkbk: ManufacturerBackupKey
    public let akbk: OperatorBackupKey

    public init(manufacturerId: String, mkbk: ManufacturerBackupKey, akbk: OperatorBackupKey) {
        self.manufacturerId = manufacturerId
        self.mkbk = mkbk
        self.akbk = akbk
    }

    public func pbk() throws -> PersistentBackupKey {
        try KeyHierarchy.derivePBK(mkbk: mkbk, akbk: akbk, manufacturerId: manufacturerId)
    }
}

/// Streaming, fully keyed reader of an inner blob (spec 4.6, read ordering). On the header it
/// checks, in this order: manufacturer, PBK fingerprint, EBK unwrap, header seal. Then each chunk:
/// KWP unwrap, binding (header digest, index, final flag), data length; authenticated data goes
/// to a decompressor bounded by the declared payload size. Memory: one frame plus the payload.
public final class InnerBlobOpener {
    private let keyring: BackupKeyring
    private var parser = InnerFrameParser()
    private var ebk: EphemeralBackupKey?
    private var headerDigest: [UInt8] = []
    private var decompressor: BoundedDecompressor?
    private var chunkSize = 0
    private var failure: Error?
    /// Complete frames waiting to be unwrapped together (one multi-lane KWP call per batch);
    /// they are checked and released strictly in order, so errors still name the first bad chunk.
    private var batch: [ChunkFrame] = []

    public init(keyring: BackupKeyring) {
        self.keyring = keyring
    }

    public var header: InnerHeader? { parser.header }
    public var chunkCount: Int { parser.chunkCount }

    public func feed(_ bytes: [UInt8]) throws {
        if let failure { throw failure }
        do {
            try parser.feed(bytes, onHeader: { try self.openHeader($0) }, onFrame: { try self.queueChunk($0) })
        } catch { failure = error; throw error }
    }

    // The parser calls back while it is being mutated: the callbacks must not read `parser`.

    /// Ends the input; returns the decompressed payload (the pax tar) only if every check passed.
    public func finish() throws -> [UInt8] {
        if let failure { throw failure }
        do {
            try openBatch()
            try parser.finish()
            do { return try decompressor!.finish() } catch let e as PayloadCodecError {
                throw ArchiveError(.payloadMalformed, e.reason, chunk: parser.chunkCount - 1)
            }
        } catch { failure = error; throw error }
    }

    /// Ends the input and checks the payload tar and manifest too (full verification without
    /// the HSM's own content rules).
    public func finishBundle() throws -> PayloadBundle {
        let tar = try finish()
        return try PayloadBundle.parse(tar: tar, descriptor: header!.payload)
    }

    private func openHeader(_ h: InnerHeader) throws {
        guard h.metadata.manufacturerId == keyring.manufacturerId else {
            throw ArchiveError(.wrongManufacturer,
                               "the backup was made by manufacturer \"\(h.metadata.manufacturerId)\"; this HSM is \"\(keyring.manufacturerId)\"",
                               offset: InnerFormat.preludeByteCount, field: "manufacturer id")
        }
        let pbk = try keyring.pbk()
        let fingerprint = try KeyHierarchy.fingerprint(of: pbk, manufacturerId: keyring.manufacturerId)
        guard constantTimeEqual(fingerprint, h.pbkFingerprint) else {
            throw ArchiveError(.pbkMismatch, "the PBK fingerprint differs: another operator key (AKBK) or manufacturer key generation",
                               field: "PBK fingerprint")
        }
        let ebk = try h.unwrapEBK(pbk: pbk)
        try h.verifySeal(ebk: ebk)
        self.ebk = ebk
        headerDigest = h.digest
        chunkSize = Int(h.payload.chunkSize)
        decompressor = try BoundedDecompressor(expectedSize: Int(h.payload.payloadBytes))
    }

    private func queueChunk(_ f: ChunkFrame) throws {
        batch.append(f)
        if batch.count == InnerBlobWriter.batchChunks || f.isFinal { try openBatch() }
    }

    private func openBatch() throws {
        guard !batch.isEmpty else { return }
        let frames = batch
        batch.removeAll(keepingCapacity: true)
        let results = AESKeyWrapLanes.unwrapPadded(frames.map(\.ciphertext), key: ebk!)
        for (f, result) in zip(frames, results) { try openChunk(f, result) }
    }

    private func openChunk(_ f: ChunkFrame, _ unwrapped: Result<SecureBytes, CryptoError>) throws {
        guard case .success(let plain) = unwrapped else {
            throw ArchiveError(.chunkAuthenticationFailed, "chunk does not unwrap under the EBK", offset: f.offset, chunk: f.index)
        }
        let expected = ChunkFormat.binding(headerDigest: headerDigest, index: f.index, final: f.isFinal)
        let (bindingOK, data) = plain.withUnsafeBytes { p -> (Bool, [UInt8]) in
            guard p.count > ChunkFormat.bindingByteCount else { return (false, []) }
            return (constantTimeEqual(p.prefix(ChunkFormat.bindingByteCount), expected),
                    Array(p[ChunkFormat.bindingByteCount...]))
        }
        guard bindingOK else {
            throw ArchiveError(.chunkBindingMismatch, "chunk is bound to another header, position or final flag",
                               offset: f.offset, chunk: f.index)
        }
        guard f.isFinal ? data.count <= chunkSize : data.count == chunkSize else {
            throw ArchiveError(.malformedFrame, "chunk carries \(data.count) data bytes (chunk size \(chunkSize))", offset: f.offset, chunk: f.index)
        }
        do { try decompressor!.feed(data) } catch let e as PayloadCodecError {
            throw ArchiveError(.payloadMalformed, e.reason, offset: f.offset, chunk: f.index)
        }
    }
}

/// One-call conveniences over the streaming reader and writer.
public enum InnerBlob {
    /// Reads only the header (no keys): what an inspector holding the outer key can show.
    public static func inspectHeader(_ prefix: [UInt8]) throws -> InnerHeader {
        try InnerHeader.parse(prefix: prefix)
    }

    /// Full verification: every check of the format, the tar and every object digest.
    public static func open(_ blob: [UInt8], keyring: BackupKeyring) throws -> (header: InnerHeader, bundle: PayloadBundle) {
        let opener = InnerBlobOpener(keyring: keyring)
        try opener.feed(blob)
        let bundle = try opener.finishBundle()
        return (opener.header!, bundle)
    }

    /// Seals a payload bundle into a blob in memory.
    public static func seal(_ bundle: PayloadBundle, metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64,
                            keyring: BackupKeyring, ebk: EphemeralBackupKey,
                            chunkSize: Int = InnerFormat.defaultChunkSize) throws -> [UInt8] {
        var out: [UInt8] = []
        try seal(bundle, metadata: metadata, backupId: backupId, createdAt: createdAt, keyring: keyring, ebk: ebk,
                 chunkSize: chunkSize) { out.append(contentsOf: $0) }
        return out
    }

    /// Seals a payload bundle, streaming the blob to `sink`.
    public static func seal(_ bundle: PayloadBundle, metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64,
                            keyring: BackupKeyring, ebk: EphemeralBackupKey, chunkSize: Int = InnerFormat.defaultChunkSize,
                            sink: @escaping ([UInt8]) throws -> Void) throws {
        guard metadata.manufacturerId == keyring.manufacturerId else {
            throw ArchiveError(.invalidArgument, "metadata and keyring name different manufacturers")
        }
        guard chunkSize >= InnerFormat.minimumChunkSize, chunkSize <= InnerFormat.maximumChunkSize else {
            throw ArchiveError(.invalidArgument, "chunk size \(chunkSize) outside the format's limits")
        }
        let tar = try bundle.tarBytes()
        let compressed: [UInt8]
        do { compressed = try Zstd.compress(tar) } catch let e as PayloadCodecError {
            throw ArchiveError(.payloadMalformed, e.reason)
        }
        let counts = bundle.counts
        let descriptor = PayloadDescriptor(chunkSize: UInt32(chunkSize), payloadBytes: UInt64(tar.count),
                                           userCount: UInt32(counts.users), keyCount: UInt32(counts.keys),
                                           policyCount: UInt32(counts.policies))
        let writer = try InnerBlobWriter(metadata: metadata, backupId: backupId, createdAt: createdAt, payload: descriptor,
                                         pbk: try keyring.pbk(), ebk: ebk, sink: sink)
        var at = 0
        while at < compressed.count {
            let end = min(at + (1 << 20), compressed.count)
            try writer.write(Array(compressed[at..<end]))
            at = end
        }
        try writer.finish()
    }
}
