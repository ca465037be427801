import CZstd

/// zstd (RFC 8878), one frame per payload. Compression is one-shot; decompression streams and
/// never produces more than the size the caller declares (a zstd bomb is refused, not inflated).
public enum Zstd {
    public static let defaultLevel: Int32 = 3
    /// The decoder's window is bounded so a hostile frame cannot demand a huge window buffer.
    public static let maximumWindowLog: Int32 = 27

    public static func compress(_ input: [UInt8], level: Int32 = defaultLevel) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = input.withUnsafeBytes { i in
            out.withUnsafeMutableBytes { o in
                ZSTD_compress(o.baseAddress, o.count, i.baseAddress, i.count, level)
            }
        }
        guard ZSTD_isError(n) == 0 else {
            throw PayloadCodecError(.compressFailed, String(cString: ZSTD_getErrorName(n)))
        }
        out.removeLast(out.count - n)
        return out
    }

    /// Decompresses one whole frame that MUST expand to exactly `expectedSize` bytes.
    public static func decompress(_ input: [UInt8], expectedSize: Int) throws -> [UInt8] {
        let d = try BoundedDecompressor(expectedSize: expectedSize)
        try d.feed(input)
        return try d.finish()
    }
}

/// Streaming zstd decoder with a hard output limit: feed compressed bytes as they authenticate,
/// then `finish` checks the frame ended, nothing followed it, and the size is exact. Once it has
/// failed it stays failed.
public final class BoundedDecompressor {
    public let expectedSize: Int
    private let dctx: OpaquePointer
    private var output: [UInt8] = []
    private var frameEnded = false
    private var consumed = 0
    private var failed: PayloadCodecError?
    /// The first input bytes (up to a frame header's maximum), to check the frame's declared
    /// content size once it ends: libzstd's streaming decoder does not always check it itself
    /// (fed byte by byte, a frame declaring 5 bytes with an empty last block ends cleanly).
    private var frameHeader: [UInt8] = []
    private static let frameHeaderMaximumBytes = 18

    public init(expectedSize: Int) throws {
        precondition(expectedSize >= 0)
        guard let d = ZSTD_createDCtx() else { throw PayloadCodecError(.malformedCompressed, "ZSTD_createDCtx failed") }
        dctx = d
        _ = ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, Zstd.maximumWindowLog)
        self.expectedSize = expectedSize
        output.reserveCapacity(min(expectedSize, 1 << 24))
    }

    deinit { ZSTD_freeDCtx(dctx) }

    public var producedBytes: Int { output.count }

    public func feed(_ input: [UInt8]) throws {
        if let failed { throw failed }
        do { try feedUnchecked(input) } catch let e as PayloadCodecError { failed = e; throw e }
    }

    private func feedUnchecked(_ input: [UInt8]) throws {
        guard !input.isEmpty else { return }
        if frameEnded {
            throw PayloadCodecError(.trailingCompressed, "bytes after the end of the zstd frame", offset: consumed)
        }
        if frameHeader.count < Self.frameHeaderMaximumBytes {
            frameHeader += input.prefix(Self.frameHeaderMaximumBytes - frameHeader.count)
            // Only a current zstd frame: legacy (v0.x) frames decode differently streamed and whole.
            if frameHeader.count >= 4, frameHeader.prefix(4) != [0x28, 0xb5, 0x2f, 0xfd] {
                throw PayloadCodecError(.malformedCompressed, "not a zstd frame (magic)", offset: 0)
            }
        }
        var scratch = [UInt8](repeating: 0, count: 1 << 16)
        try input.withUnsafeBytes { i in
            var inBuf = ZSTD_inBuffer(src: i.baseAddress, size: i.count, pos: 0)
            while inBuf.pos < inBuf.size || !frameEnded {
                let before = inBuf.pos
                let (ret, produced) = scratch.withUnsafeMutableBytes { o -> (Int, Int) in
                    var outBuf = ZSTD_outBuffer(dst: o.baseAddress, size: o.count, pos: 0)
                    let r = ZSTD_decompressStream(dctx, &outBuf, &inBuf)
                    return (r, outBuf.pos)
                }
                guard ZSTD_isError(ret) == 0 else {
                    throw PayloadCodecError(.malformedCompressed, String(cString: ZSTD_getErrorName(ret)), offset: consumed + before)
                }
                guard output.count + produced <= expectedSize else {
                    throw PayloadCodecError(.sizeLimitExceeded, "output exceeds the declared \(expectedSize) bytes")
                }
                output.append(contentsOf: scratch[0..<produced])
                if ret == 0 {
                    frameEnded = true
                    let declared = frameHeader.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }
                    if declared != hsmb_zstd_content_size_unknown(), declared != hsmb_zstd_content_size_error(),
                       declared != UInt64(output.count) {
                        throw PayloadCodecError(.malformedCompressed, "the zstd frame declares \(declared) bytes but holds \(output.count)", offset: 0)
                    }
                    if inBuf.pos < inBuf.size {
                        throw PayloadCodecError(.trailingCompressed, "bytes after the end of the zstd frame", offset: consumed + inBuf.pos)
                    }
                    break
                }
                // Input used up and the output buffer not full: the decoder needs more input.
                if inBuf.pos == inBuf.size && produced < scratch.count { break }
            }
            consumed += i.count
        }
    }

    public func finish() throws -> [UInt8] {
        if let failed { throw failed }
        guard frameEnded else {
            failed = PayloadCodecError(.truncatedCompressed, "the zstd frame is incomplete", offset: consumed)
            throw failed!
        }
        guard output.count == expectedSize else {
            failed = PayloadCodecError(.sizeMismatch, "\(output.count) bytes decompressed, \(expectedSize) declared")
            throw failed!
        }
        let out = output
        output = []
        return out
    }
}
