import BackupCrypto
import ByteCoding
import PayloadCodec

/// Streaming writer of an inner blob (spec 4.5, 4.6): the sealed header goes to the sink at once;
/// the payload is then cut into chunk-size pieces, and each piece is compressed into its own zstd
/// frame, bound to its position and KWP-wrapped under the EBK on the worker threads of an
/// `OrderedPipeline` (16 chunks per multi-lane KWP call). Frames reach the sink in order, on the
/// caller's thread. Memory: a few batches of chunks, whatever the payload's size.
///
/// The payload size is declared up front (it is in the header), so the last chunk is known
/// without holding anything back. Once failed it stays failed; the sink must discard what it
/// got if `finish` does not return. Payload pieces are wiped once wrapped.
public final class InnerBlobWriter {
    public let header: InnerHeader
    private let ebk: EphemeralBackupKey
    private let headerDigest: [UInt8]
    private let payload: PayloadDescriptor
    private let sink: ([UInt8]) throws -> Void
    private var piece: [UInt8] = []
    private var batch: [[UInt8]] = []
    /// Chunks handed to the pipeline, and chunks whose frames reached the sink.
    private var submittedChunks = 0
    private var nextChunk = 0
    private var received: UInt64 = 0
    private var rawChunks = false
    private var state = State.open
    private let pipeline: OrderedPipeline<WrapJob, Result<WrappedFrames, ArchiveError>>
    public private(set) var bytesWritten = 0

    private enum State { case open, finished, failed }

    /// Chunks wrapped per call: 16 × 64 KiB of working state stays in a core's L2 cache, and 16
    /// lanes keep AES-NI's pipeline full (see AESKeyWrapLanes).
    public static let batchChunks = 16

    struct WrapJob {
        var firstIndex: Int
        var pieces: [[UInt8]]
        var compressed: Bool
    }

    struct WrappedFrames {
        var bytes: [UInt8]
        var count: Int
    }

    /// Wraps the EBK under the PBK, builds and seals the header, and writes it to `sink`.
    public convenience init(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64, payload: PayloadDescriptor,
                            pbk: PersistentBackupKey, ebk: EphemeralBackupKey, workers: Int? = nil,
                            sink: @escaping ([UInt8]) throws -> Void) throws {
        try self.init(metadata: metadata, backupId: backupId, createdAt: createdAt, payload: payload, pbk: pbk, ebk: ebk,
                      workers: workers, minorVersion: InnerFormat.versionMinor, appendedFields: [], sink: sink)
    }

    /// The same with a later minor version's appended header fields (vectors only: this
    /// writer is minor 0).
    @_spi(Testing)
    public convenience init(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64, payload: PayloadDescriptor,
                pbk: PersistentBackupKey, ebk: EphemeralBackupKey, workers: Int? = nil, minorVersion: UInt8,
                appendedFields: [UInt8], sink: @escaping ([UInt8]) throws -> Void) throws {
        let fingerprint = try KeyHierarchy.fingerprint(of: pbk, manufacturerId: metadata.manufacturerId)
        let wrapped = try AESKeyWrap.wrap(key: ebk, under: pbk)
        try self.init(metadata: metadata, backupId: backupId, createdAt: createdAt, payload: payload, pbkFingerprint: fingerprint,
                      wrappedEBK: wrapped, ebk: ebk, workers: workers, minorVersion: minorVersion, appendedFields: appendedFields,
                      sink: sink)
    }

    /// The same for an HSM that keeps its PBK where this process cannot see it (a PKCS#11 token):
    /// it gives the fingerprint and `wrappedEBK = KW(PBK, EBK)`, made inside it.
    public convenience init(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64, payload: PayloadDescriptor,
                            pbkFingerprint: [UInt8], wrappedEBK: [UInt8], ebk: EphemeralBackupKey, workers: Int? = nil,
                            sink: @escaping ([UInt8]) throws -> Void) throws {
        try self.init(metadata: metadata, backupId: backupId, createdAt: createdAt, payload: payload, pbkFingerprint: pbkFingerprint,
                      wrappedEBK: wrappedEBK, ebk: ebk, workers: workers, minorVersion: InnerFormat.versionMinor,
                      appendedFields: [], sink: sink)
    }

    private init(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64, payload: PayloadDescriptor,
                 pbkFingerprint fingerprint: [UInt8], wrappedEBK wrapped: [UInt8], ebk: EphemeralBackupKey, workers: Int?,
                 minorVersion: UInt8, appendedFields: [UInt8], sink: @escaping ([UInt8]) throws -> Void) throws {
        header = try InnerHeader.make(metadata: metadata, backupId: backupId, createdAt: createdAt,
                                      pbkFingerprint: fingerprint, wrappedEBK: wrapped, payload: payload, ebk: ebk,
                                      minorVersion: minorVersion, appendedFields: appendedFields)
        self.ebk = ebk
        self.headerDigest = header.digest
        self.payload = payload
        self.sink = sink
        let n = workers ?? OrderedPipeline<WrapJob, Result<WrappedFrames, ArchiveError>>.defaultWorkers
        let compressors = try (0..<n).map { _ in try ZstdCompressor() }
        let digest = header.digest
        let last = payload.chunkCount - 1
        pipeline = OrderedPipeline(workers: n, discardInput: { job in for i in job.pieces.indices { wipe(&job.pieces[i]) } },
                                   work: { job, worker in
            Self.wrap(job, compressor: compressors[worker], ebk: ebk, headerDigest: digest, lastIndex: last)
        })
        try emit(header.encoded)
    }

    deinit { pipeline.shutdown() }

    /// Appends payload bytes (the uncompressed tar); in all, exactly the declared payload size.
    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try guardOpen()
        guard !rawChunks else { throw fail(ArchiveError(.invalidArgument, "payload bytes after raw chunk data")) }
        guard received + UInt64(bytes.count) <= payload.payloadBytes else {
            throw fail(ArchiveError(.invalidArgument, "more than the declared \(payload.payloadBytes) payload bytes"))
        }
        received += UInt64(bytes.count)
        var at = 0
        do {
            while at < bytes.count {
                let pieceBytes = payload.pieceBytes(chunk: submittedChunks + batch.count)
                let want = pieceBytes - piece.count
                let take = min(want, bytes.count - at)
                if piece.isEmpty { piece.reserveCapacity(pieceBytes) }
                piece.append(contentsOf: bytes[at..<(at + take)])
                at += take
                if take == want {
                    batch.append(piece)
                    piece = []
                    if batch.count == Self.batchChunks { try submitBatch() }
                }
            }
        } catch { throw fail(error) }
    }

    /// Writes the chunks still pending; the payload must be complete.
    public func finish() throws {
        try guardOpen()
        do {
            if !rawChunks {
                guard received == payload.payloadBytes else {
                    throw ArchiveError(.invalidArgument, "\(received) payload bytes written, \(payload.payloadBytes) declared")
                }
                try submitBatch()
                try pipeline.drain { try self.emitFrames($0) }
            }
            guard nextChunk == payload.chunkCount else {
                throw ArchiveError(.invalidArgument, "\(nextChunk) chunks written, the sizes give \(payload.chunkCount)")
            }
        } catch { throw fail(error) }
        pipeline.shutdown()
        state = .finished
    }

    /// Writes one chunk whose data is given as is, not compressed by the writer: for tests that
    /// need an authenticated chunk with arbitrary (hostile) data. Not for producing backups.
    @_spi(Testing)
    public func writeChunkData(_ data: [UInt8]) throws {
        try guardOpen()
        guard received == 0, submittedChunks < payload.chunkCount else {
            throw fail(ArchiveError(.invalidArgument, "raw chunk data mixed with payload bytes, or too many chunks"))
        }
        rawChunks = true
        // A copy: the worker wipes its job's storage, which must not be the caller's array.
        let job = WrapJob(firstIndex: submittedChunks, pieces: [data.withUnsafeBufferPointer { Array($0) }], compressed: true)
        submittedChunks += 1
        do {
            try emitFrames(Self.wrap(job, compressor: nil, ebk: ebk, headerDigest: headerDigest,
                                     lastIndex: payload.chunkCount - 1))
        } catch { throw fail(error) }
    }

    private func guardOpen() throws {
        guard state == .open else { throw ArchiveError(.writerFailed, "the writer has already \(state == .finished ? "finished" : "failed")") }
    }

    private func fail(_ error: Error) -> Error {
        state = .failed
        pipeline.shutdown()
        wipe(&piece)
        for i in batch.indices { wipe(&batch[i]) }
        batch = []
        return error
    }

    private func submitBatch() throws {
        guard !batch.isEmpty else { return }
        let job = WrapJob(firstIndex: submittedChunks, pieces: batch, compressed: false)
        submittedChunks += batch.count
        batch = []
        try pipeline.submit(job) { try self.emitFrames($0) }
    }

    private func emitFrames(_ result: Result<WrappedFrames, ArchiveError>) throws {
        switch result {
        case .failure(let e): throw e
        case .success(let frames):
            try emit(frames.bytes)
            nextChunk += frames.count
        }
    }

    private func emit(_ bytes: [UInt8]) throws {
        do { try sink(bytes) } catch { state = .failed; throw error }
        bytesWritten += bytes.count
    }

    /// Worker side: compress each piece into one zstd frame, prefix its binding, wrap the batch
    /// in one multi-lane KWP call, and frame the ciphertexts. Plaintext is wiped before return.
    private static func wrap(_ job: WrapJob, compressor: ZstdCompressor?, ebk: EphemeralBackupKey, headerDigest: [UInt8],
                             lastIndex: Int) -> Result<WrappedFrames, ArchiveError> {
        var plaintexts: [[UInt8]] = []
        plaintexts.reserveCapacity(job.pieces.count)
        let pieces = job.pieces
        defer {
            // The job's storage itself (the pipeline still holds the job while this runs).
            for p in pieces { wipeStorage(of: p) }
            for i in plaintexts.indices { wipe(&plaintexts[i]) }
        }
        do {
            for (k, p) in pieces.enumerated() {
                let index = job.firstIndex + k
                guard index < InnerFormat.maximumChunks else {
                    throw ArchiveError(.limitExceeded, "more than \(InnerFormat.maximumChunks) chunks", chunk: index)
                }
                var plaintext = ChunkFormat.binding(headerDigest: headerDigest, index: index, final: index == lastIndex)
                if job.compressed {
                    plaintext.append(contentsOf: p)
                } else {
                    var frame: [UInt8]
                    do { frame = try compressor!.compress(p[...]) } catch let e as PayloadCodecError {
                        throw ArchiveError(.writerFailed, e.reason, chunk: index)
                    }
                    plaintext.append(contentsOf: frame)
                    wipe(&frame)
                }
                plaintexts.append(plaintext)
            }
            let ciphertexts = try AESKeyWrapLanes.wrapPadded(plaintexts, key: ebk)
            var w = ByteWriter(capacity: ciphertexts.reduce(0) { $0 + $1.count + ChunkFormat.frameHeaderByteCount })
            for (k, c) in ciphertexts.enumerated() {
                w.writeUInt8(job.firstIndex + k == lastIndex ? ChunkFormat.typeFinal : ChunkFormat.typeChunk)
                w.writeUInt32(UInt32(c.count))
                w.writeBytes(c)
            }
            return .success(WrappedFrames(bytes: w.bytes, count: ciphertexts.count))
        } catch let e as ArchiveError {
            return .failure(e)
        } catch {
            return .failure(ArchiveError(.writerFailed, "chunk wrap failed: \(error)", chunk: job.firstIndex))
        }
    }
}
