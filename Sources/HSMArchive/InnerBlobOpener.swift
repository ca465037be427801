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
/// checks, in this order: manufacturer, PBK fingerprint, EBK unwrap, header seal. Then chunks go,
/// 16 at a time, to the worker threads of an `OrderedPipeline`: one multi-lane KWP unwrap, each
/// chunk's binding (header digest, index, final flag), then its zstd frame decoded to exactly its
/// share of the payload. The decoded pieces reach `payloadSink` strictly in order, on the
/// caller's thread, and only for chunks that authenticated; the first bad chunk in order is the
/// one reported. Memory: a few batches of chunks, whatever the blob's size.
public final class InnerBlobOpener {
    private let unlocker: any EBKUnlocker
    private let payloadSink: (UnsafeRawBufferPointer) throws -> Void
    private let onHeader: (InnerHeader) throws -> Void
    private var parser = InnerFrameParser()
    private var batch: [ChunkFrame] = []
    private var failure: Error?
    /// A delivered chunk (or the sink) failed: nothing after it may be delivered.
    private var chunkFailed = false
    private var pipeline: OrderedPipeline<[ChunkFrame], OpenedChunks>?
    private let workers: Int

    /// What a worker returns for a batch: the decoded pieces of the chunks that passed, in
    /// order, and the error of the first that did not (the rest of the batch is not opened).
    struct OpenedChunks {
        var pieces: [[UInt8]]
        var error: ArchiveError?
    }

    /// `onHeader` runs once the header authenticated (after the seal check), before any chunk;
    /// `payloadSink` receives the payload (the tar) in order, in pieces.
    public convenience init(keyring: BackupKeyring, workers: Int? = nil, onHeader: @escaping (InnerHeader) throws -> Void = { _ in },
                            payloadSink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.init(unlocker: keyring, workers: workers, onHeader: onHeader, payloadSink: payloadSink)
    }

    /// The same with the EBK from `unlocker` (a token that holds the PBK, for example).
    public init(unlocker: any EBKUnlocker, workers: Int? = nil, onHeader: @escaping (InnerHeader) throws -> Void = { _ in },
                payloadSink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.unlocker = unlocker
        self.onHeader = onHeader
        self.payloadSink = payloadSink
        self.workers = workers ?? OrderedPipeline<[ChunkFrame], OpenedChunks>.defaultWorkers
    }

    deinit { pipeline?.shutdown() }

    public var header: InnerHeader? { parser.header }
    public var chunkCount: Int { parser.chunkCount }

    public func feed(_ bytes: [UInt8]) throws {
        if let failure { throw failure }
        do {
            try parser.feed(bytes, onHeader: { try self.openHeader($0) }, onFrame: { try self.queueChunk($0) })
        } catch { throw fail(firstInOrder(error)) }
    }

    /// A framing error at frame k is reported only if chunks 0 ..< k all open: the spec's order
    /// is per chunk (framing, unwrap, binding, data), and those chunks may still be in flight.
    private func firstInOrder(_ framingError: Error) -> Error {
        // A chunk's own failure (delivered in order) is already the first: deliver nothing more.
        if chunkFailed { return framingError }
        do {
            try submitBatch()
            try pipeline?.drain { try self.deliver($0) }
        } catch { return error }
        return framingError
    }

    // The parser calls back while it is being mutated: the callbacks must not read `parser`.

    /// Ends the input: every chunk is opened and delivered, and the blob ended exactly after the
    /// final chunk. (The payload's own checks are the sink's.)
    public func finish() throws {
        if let failure { throw failure }
        do {
            try submitBatch()
            try pipeline?.drain { try self.deliver($0) }
            try parser.finish()
        } catch { throw fail(error) }
        pipeline?.shutdown()
    }

    private func fail(_ error: Error) -> Error {
        failure = error
        pipeline?.shutdown()
        batch = []
        return error
    }

    private func openHeader(_ h: InnerHeader) throws {
        let ebk = try unlocker.unlockEBK(h)
        try h.verifySeal(ebk: ebk)
        try onHeader(h)
        let decompressors = try (0..<workers).map { _ in try ZstdDecompressor() }
        let digest = h.digest
        let payload = h.payload
        pipeline = OrderedPipeline(workers: workers, discardOutput: { out in for i in out.pieces.indices { wipe(&out.pieces[i]) } }) {
            frames, worker in
            Self.open(frames, ebk: ebk, headerDigest: digest, payload: payload, decompressor: decompressors[worker])
        }
    }

    private func queueChunk(_ f: ChunkFrame) throws {
        batch.append(f)
        if batch.count == InnerBlobWriter.batchChunks || f.isFinal { try submitBatch() }
    }

    private func submitBatch() throws {
        guard !batch.isEmpty, let pipeline else { return }
        let frames = batch
        batch = []
        try pipeline.submit(frames) { try self.deliver($0) }
    }

    private func deliver(_ opened: OpenedChunks) throws {
        // The sink sees each piece only for its call; then the pieces' storage, shared with the
        // pipeline's copy of the result, is wiped in place.
        defer { for p in opened.pieces { wipeStorage(of: p) } }
        do {
            for p in opened.pieces { try p.withUnsafeBytes { try payloadSink($0) } }
            if let e = opened.error { throw e }
        } catch {
            chunkFailed = true
            throw error
        }
    }

    /// Worker side: unwrap the batch in one multi-lane call, then per chunk, in order: the
    /// binding, then the zstd frame (only data of an authenticated chunk is decoded).
    private static func open(_ frames: [ChunkFrame], ebk: EphemeralBackupKey, headerDigest: [UInt8], payload: PayloadDescriptor,
                             decompressor: ZstdDecompressor) -> OpenedChunks {
        var out = OpenedChunks(pieces: [], error: nil)
        let results = AESKeyWrapLanes.unwrapPadded(frames.map(\.ciphertext), key: ebk)
        for (f, result) in zip(frames, results) {
            guard case .success(let plain) = result else {
                out.error = ArchiveError(.chunkAuthenticationFailed, "chunk does not unwrap under the EBK", offset: f.offset, chunk: f.index)
                return out
            }
            let expected = ChunkFormat.binding(headerDigest: headerDigest, index: f.index, final: f.isFinal)
            // Not zeroed first: the decoder writes every byte or the piece is refused (and wiped).
            let pieceBytes = payload.pieceBytes(chunk: f.index)
            var piece = [UInt8](unsafeUninitializedCapacity: pieceBytes) { _, count in count = pieceBytes }
            let error: ArchiveError? = plain.withUnsafeBytes { p in
                guard p.count > ChunkFormat.bindingByteCount,
                      constantTimeEqual(p.prefix(ChunkFormat.bindingByteCount), expected) else {
                    return ArchiveError(.chunkBindingMismatch, "chunk is bound to another header, position or final flag",
                                        offset: f.offset, chunk: f.index)
                }
                let data = UnsafeRawBufferPointer(rebasing: p[ChunkFormat.bindingByteCount...])
                do {
                    try decompressor.decompress(data, into: &piece)
                } catch let e as PayloadCodecError {
                    return ArchiveError(.payloadMalformed, "chunk data: \(e.reason)", offset: f.offset, chunk: f.index)
                } catch {
                    return ArchiveError(.payloadMalformed, "chunk data: \(error)", offset: f.offset, chunk: f.index)
                }
                return nil
            }
            if let error {
                wipe(&piece)
                out.error = error
                return out
            }
            out.pieces.append(piece)
        }
        return out
    }
}

/// Full verification with the backup keys alone (no HSM): the opener feeding the streaming
/// payload check, so every chunk, the tar, the manifest and every object digest are checked in
/// bounded memory. (The HSM's own content rules need the HSM: `SimulatedHSM.beginRestore`.)
public final class InnerBlobChecker {
    private var opener: InnerBlobOpener!
    private var payload: PayloadReader?

    public init(keyring: BackupKeyring) {
        opener = InnerBlobOpener(keyring: keyring, onHeader: { [unowned self] h in
            self.payload = PayloadReader(descriptor: h.payload)
        }, payloadSink: { [unowned self] piece in try self.payload!.feed(piece) })
    }

    public var header: InnerHeader? { opener.header }

    /// A failure of the payload check that lies before the opener's own wins (`PayloadReader.earlierFailure`).
    public func feed(_ bytes: [UInt8]) throws {
        do { try opener.feed(bytes) } catch { throw payload?.earlierFailure() ?? error }
    }

    /// Ends the input; returns the payload's object counts once everything checked.
    public func finish() throws -> PayloadReader.Summary {
        do { try opener.finish() } catch { throw payload?.earlierFailure() ?? error }
        return try payload!.finish()
    }
}

/// One-call conveniences over the streaming reader and writer.
public enum InnerBlob {
    /// Reads only the header (no keys): what an inspector holding the outer key can show.
    public static func inspectHeader(_ prefix: [UInt8]) throws -> InnerHeader {
        try InnerHeader.parse(prefix: prefix)
    }

    /// Full verification in memory: every check of the format, the tar and every object digest.
    public static func open(_ blob: [UInt8], keyring: BackupKeyring) throws -> (header: InnerHeader, bundle: PayloadBundle) {
        var tar: [UInt8] = []
        let opener = InnerBlobOpener(keyring: keyring) { tar.append(contentsOf: $0) }
        defer { wipe(&tar) }
        try opener.feed(blob)
        try opener.finish()
        let header = opener.header!
        return (header, try PayloadBundle.parse(tar: tar, descriptor: header.payload))
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
        var tar = try bundle.tarBytes()
        defer { wipe(&tar) }
        let counts = bundle.counts
        let descriptor = PayloadDescriptor(chunkSize: UInt32(chunkSize), payloadBytes: UInt64(tar.count),
                                           userCount: UInt32(counts.users), keyCount: UInt32(counts.keys),
                                           policyCount: UInt32(counts.policies))
        let writer = try InnerBlobWriter(metadata: metadata, backupId: backupId, createdAt: createdAt, payload: descriptor,
                                         pbk: try keyring.pbk(), ebk: ebk, sink: sink)
        try writer.write(tar)
        try writer.finish()
    }
}
