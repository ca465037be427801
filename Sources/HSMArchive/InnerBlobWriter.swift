import BackupCrypto
import ByteCoding

/// Streaming writer of an inner blob (spec 4.6, write ordering): the sealed header goes to the
/// sink at once, then the chunks, in order, a batch at a time (a chunk is known to be non-final
/// once the next one's first byte arrives); sizes are never needed in advance. Once failed it stays failed; the
/// sink must discard what it got if `finish` does not return.
public final class InnerBlobWriter {
    public let header: InnerHeader
    private let ebk: EphemeralBackupKey
    private let headerDigest: [UInt8]
    private let chunkSize: Int
    private let sink: ([UInt8]) throws -> Void
    private var pending: [UInt8] = []
    /// Chunk plaintexts (binding ‖ data) waiting to be wrapped together (`batchChunks` at a time,
    /// one multi-lane KWP call; see AESKeyWrapLanes).
    private var batch: [[UInt8]] = []
    private var batchFinal = false
    private var index = 0
    private var state = State.open
    public private(set) var bytesWritten = 0

    private enum State { case open, finished, failed }

    /// Chunks wrapped per call: 16 × 64 KiB of working state stays in a core's L2 cache.
    public static let batchChunks = 16

    /// Wraps the EBK under the PBK, builds and seals the header, and writes it to `sink`.
    public init(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64, payload: PayloadDescriptor,
                pbk: PersistentBackupKey, ebk: EphemeralBackupKey, sink: @escaping ([UInt8]) throws -> Void) throws {
        let fingerprint = try KeyHierarchy.fingerprint(of: pbk, manufacturerId: metadata.manufacturerId)
        let wrapped = try AESKeyWrap.wrap(key: ebk, under: pbk)
        header = try InnerHeader.make(metadata: metadata, backupId: backupId, createdAt: createdAt,
                                      pbkFingerprint: fingerprint, wrappedEBK: wrapped, payload: payload, ebk: ebk)
        self.ebk = ebk
        self.headerDigest = header.digest
        self.chunkSize = Int(payload.chunkSize)
        self.sink = sink
        try emit(header.encoded)
    }

    /// Appends compressed payload bytes.
    public func write(_ bytes: [UInt8]) throws {
        try guardOpen()
        pending.append(contentsOf: bytes)
        do {
            var used = 0
            while pending.count - used > chunkSize {
                try emitChunk(pending[used..<(used + chunkSize)], final: false)
                used += chunkSize
            }
            if used > 0 { pending.removeFirst(used) }
        } catch { state = .failed; throw error }
    }

    /// Writes the final chunk (1...chunkSize bytes; at least one byte must have been written).
    public func finish() throws {
        try guardOpen()
        guard !pending.isEmpty else {
            state = .failed
            throw ArchiveError(.invalidArgument, "an inner blob carries at least one payload byte")
        }
        do {
            try emitChunk(pending[...], final: true)
            try flushBatch()
        } catch { state = .failed; throw error }
        pending = []
        state = .finished
    }

    private func guardOpen() throws {
        guard state == .open else { throw ArchiveError(.writerFailed, "the writer has already \(state == .finished ? "finished" : "failed")") }
    }

    private func emitChunk(_ data: ArraySlice<UInt8>, final: Bool) throws {
        guard index + batch.count < InnerFormat.maximumChunks else {
            throw ArchiveError(.limitExceeded, "more than \(InnerFormat.maximumChunks) chunks", chunk: index + batch.count)
        }
        var plaintext = ChunkFormat.binding(headerDigest: headerDigest, index: index + batch.count, final: final)
        plaintext.append(contentsOf: data)
        batch.append(plaintext)
        batchFinal = final
        if batch.count == Self.batchChunks { try flushBatch() }
    }

    /// Wraps the waiting chunks in one multi-lane KWP call and writes their frames in order.
    private func flushBatch() throws {
        guard !batch.isEmpty else { return }
        defer {
            for i in batch.indices { wipe(&batch[i]) }
            batch.removeAll(keepingCapacity: true)
        }
        let ciphertexts = try AESKeyWrapLanes.wrapPadded(batch, key: ebk)
        for (i, ciphertext) in ciphertexts.enumerated() {
            let final = batchFinal && i == ciphertexts.count - 1
            var w = ByteWriter(capacity: ChunkFormat.frameHeaderByteCount + ciphertext.count)
            w.writeUInt8(final ? ChunkFormat.typeFinal : ChunkFormat.typeChunk)
            w.writeUInt32(UInt32(ciphertext.count))
            w.writeBytes(ciphertext)
            try emit(w.bytes)
            index += 1
        }
    }

    private func emit(_ bytes: [UInt8]) throws {
        do { try sink(bytes) } catch { state = .failed; throw error }
        bytesWritten += bytes.count
    }
}
