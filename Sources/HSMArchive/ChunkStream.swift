import BackupCrypto
import ByteCoding
import PayloadCodec

// Implements spec/FORMAT.md section 4.5 (chunk frames). Grammar:
//
//   chunks = *frame(type = 0x01) frame(type = 0x02) END      (ceil(payload size / chunk size) frames)
//   frame  = type(u8) length(u32) ciphertext(length)
//   ciphertext = KWP-AES-256(EBK, binding || data)
//   binding    = headerDigest(32) index(u32) final(u8: 0x00 or 0x01)
//   data       = one zstd frame of the chunk's piece of the payload
//
// Every chunk but the last carries a chunk-size piece of the payload, the last the rest; its
// compressed data is at most `Zstd.maximumFrameBytes(piece)` bytes.

public enum ChunkFormat {
    public static let typeChunk: UInt8 = 0x01
    public static let typeFinal: UInt8 = 0x02
    public static let frameHeaderByteCount = 5
    public static let bindingByteCount = 32 + 4 + 1

    /// KWP output length for `n` plaintext bytes: the input padded to a multiple of 8, plus 8.
    public static func ciphertextLength(dataBytes n: Int) -> Int {
        let p = bindingByteCount + n
        return ((p + 7) / 8) * 8 + 8
    }

    /// The keyless length rule for a chunk carrying `pieceBytes` of payload: a multiple of 8
    /// from the length of one data byte up to that of the largest frame the piece may need.
    public static func allowedCiphertextLengths(pieceBytes: Int) -> ClosedRange<Int> {
        ciphertextLength(dataBytes: 1)...ciphertextLength(dataBytes: Zstd.maximumFrameBytes(contentBytes: pieceBytes))
    }

    static func binding(headerDigest: [UInt8], index: Int, final: Bool) -> [UInt8] {
        var w = ByteWriter(capacity: bindingByteCount)
        w.writeBytes(headerDigest)
        w.writeUInt32(UInt32(index))
        w.writeUInt8(final ? 1 : 0)
        return w.bytes
    }
}

/// One chunk frame as found in the stream (no crypto applied).
public struct ChunkFrame: Sendable {
    public let index: Int
    public let isFinal: Bool
    /// Absolute offset of the frame's type byte in the blob.
    public let offset: Int
    public let ciphertext: [UInt8]
}

/// The keyless parser of an inner blob: prelude, header, then chunk frames with every length,
/// count and ordering rule checked. Push bytes in any pieces; memory stays bounded by one frame.
/// Once failed it stays failed.
public struct InnerFrameParser {
    public private(set) var header: InnerHeader?
    public private(set) var chunkCount = 0
    public private(set) var finished = false
    /// Absolute offset of the next unconsumed byte.
    public private(set) var offset = 0
    private var buffer: [UInt8] = []
    private var start = 0
    private var failure: ArchiveError?
    /// False for a caller that only checks the structure: its frames come with an empty
    /// `ciphertext` (no copy of each frame; a full verification parses the blob twice).
    private let keepsCiphertext: Bool

    public init() { keepsCiphertext = true }

    init(keepsCiphertext: Bool) { self.keepsCiphertext = keepsCiphertext }

    /// Feeds bytes; calls `onHeader` once, then `onFrame` for each complete frame, in order.
    public mutating func feed(_ bytes: [UInt8], onHeader: (InnerHeader) throws -> Void,
                              onFrame: (ChunkFrame) throws -> Void) throws {
        if let failure { throw failure }
        do {
            try feedUnchecked(bytes, onHeader: onHeader, onFrame: onFrame)
        } catch let e as ArchiveError {
            failure = e
            throw e
        }
    }

    /// The input has ended: it must end exactly after the final chunk.
    public mutating func finish() throws {
        if let failure { throw failure }
        let pending = buffer.count - start
        var e: ArchiveError?
        if header == nil {
            e = ArchiveError(.truncated, "the input ends inside the header", offset: offset + pending, field: "header")
        } else if !finished {
            e = pending == 0
                ? ArchiveError(.missingFinalChunk, "the chunk stream ends without a final chunk", offset: offset, chunk: chunkCount)
                : ArchiveError(.truncated, "the input ends inside a chunk frame", offset: offset + pending, chunk: chunkCount)
        }
        if let e { failure = e; throw e }
    }

    private mutating func feedUnchecked(_ bytes: [UInt8], onHeader: (InnerHeader) throws -> Void,
                                        onFrame: (ChunkFrame) throws -> Void) throws {
        if finished, !bytes.isEmpty {
            throw ArchiveError(.dataAfterFinalChunk, "\(bytes.count) bytes after the final chunk", offset: offset)
        }
        // A frame begun in an earlier piece is completed with just the bytes it still needs, so
        // that the rest of this piece can be parsed where it lies: a frame inside a piece is
        // copied once (into its `ciphertext`), not first into `buffer` as well.
        var from = 0
        while start < buffer.count, from < bytes.count {
            let n = min(bytes.count - from, bytesToCompletePending())
            buffer.append(contentsOf: bytes[from..<(from + n)])
            from += n
            var used = 0
            // Also when `onFrame` throws: what was consumed stays consumed.
            defer { start += used; compact() }
            try parse(buffer[start...], used: &used, onHeader: onHeader, onFrame: onFrame)
        }
        guard from < bytes.count else { return }
        buffer.removeAll(keepingCapacity: true)
        start = 0
        var used = 0
        defer { if from + used < bytes.count { buffer.append(contentsOf: bytes[(from + used)...]) } }
        try parse(bytes[from...], used: &used, onHeader: onHeader, onFrame: onFrame)
    }

    /// How many more bytes the pending header or frame in `buffer` needs before it can be parsed
    /// (at least 1; all there is while the header, whose length is not yet known, is pending).
    private func bytesToCompletePending() -> Int {
        let pending = buffer.count - start
        guard header != nil, !finished else { return .max }
        guard pending >= ChunkFormat.frameHeaderByteCount else { return ChunkFormat.frameHeaderByteCount - pending }
        var length = 0
        for k in 1...4 { length = length << 8 | Int(buffer[start + k]) }
        return max(1, ChunkFormat.frameHeaderByteCount + length - pending)
    }

    /// Drops consumed bytes once they are most of the buffer (amortized: no shift per frame).
    private mutating func compact() {
        if start > 1 << 16, start * 2 > buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
    }

    /// Parses what `input` holds (the bytes from `offset` on): the header, then every complete
    /// frame, adding to `used` what it consumed (`offset` moves by as many).
    private mutating func parse(_ input: ArraySlice<UInt8>, used: inout Int, onHeader: (InnerHeader) throws -> Void,
                                onFrame: (ChunkFrame) throws -> Void) throws {
        while true {
            let avail = input.dropFirst(used)
            if header == nil {
                guard let length = try InnerHeader.headerLength(prefix: avail), avail.count >= length else { break }
                let h = try InnerHeader.parse(prefix: avail.prefix(length))
                used += length
                offset += length
                header = h
                try onHeader(h)
                continue
            }
            if finished {
                if !avail.isEmpty {
                    throw ArchiveError(.dataAfterFinalChunk, "\(avail.count) bytes after the final chunk", offset: offset)
                }
                break
            }
            guard avail.count >= ChunkFormat.frameHeaderByteCount else { break }
            let frameAt = offset
            var r = ByteReader(avail, baseOffset: offset)
            let type = try! r.readUInt8("frame type")
            let length = Int(try! r.readUInt32("frame length"))
            guard type == ChunkFormat.typeChunk || type == ChunkFormat.typeFinal else {
                throw ArchiveError(.malformedFrame, "unknown frame type 0x\(String(type, radix: 16))", offset: frameAt, chunk: chunkCount)
            }
            let isFinal = type == ChunkFormat.typeFinal
            let payload = header!.payload
            let last = payload.chunkCount - 1
            guard isFinal == (chunkCount == last) else {
                throw ArchiveError(.malformedFrame, isFinal
                                   ? "chunk \(chunkCount) is flagged final; the header's sizes give \(last + 1) chunks"
                                   : "chunk \(chunkCount) must be the final chunk (the header's sizes give \(last + 1) chunks)",
                                   offset: frameAt, chunk: chunkCount)
            }
            let allowed = ChunkFormat.allowedCiphertextLengths(pieceBytes: payload.pieceBytes(chunk: chunkCount))
            guard allowed.contains(length), length % 8 == 0 else {
                throw ArchiveError(.malformedFrame, "chunk ciphertext length \(length) breaks the framing rules (a multiple of 8 in \(allowed))",
                                   offset: frameAt + 1, chunk: chunkCount)
            }
            guard avail.count >= ChunkFormat.frameHeaderByteCount + length else { break }
            let ciphertext = keepsCiphertext ? Array(try! r.readSlice(length, "chunk ciphertext")) : []
            used += ChunkFormat.frameHeaderByteCount + length
            offset += ChunkFormat.frameHeaderByteCount + length
            let frame = ChunkFrame(index: chunkCount, isFinal: isFinal, offset: frameAt, ciphertext: ciphertext)
            chunkCount += 1
            if isFinal { finished = true }
            try onFrame(frame)
        }
    }
}

/// Structure-only validation (verification level "structure", no keys): the header parses,
/// every frame follows the rules, the final chunk is present and nothing follows it.
public struct InnerStructureSummary: Sendable {
    public let header: InnerHeader
    public let chunkCount: Int
    public let totalBytes: Int
}

public struct InnerStructureChecker {
    private var parser = InnerFrameParser(keepsCiphertext: false)
    public init() {}

    /// The inner header, once its bytes have been fed.
    public var header: InnerHeader? { parser.header }
    /// Chunk frames seen so far.
    public var chunkCount: Int { parser.chunkCount }

    public mutating func feed(_ bytes: [UInt8]) throws {
        try parser.feed(bytes, onHeader: { _ in }, onFrame: { _ in })
    }

    public mutating func finish() throws -> InnerStructureSummary {
        try parser.finish()
        return InnerStructureSummary(header: parser.header!, chunkCount: parser.chunkCount, totalBytes: parser.offset)
    }

    public static func check(_ blob: [UInt8]) throws -> InnerStructureSummary {
        var c = InnerStructureChecker()
        try c.feed(blob)
        return try c.finish()
    }
}
