import CZstd

// Implements the compression rules of spec/FORMAT.md section 4.7: every chunk's data is one
// standard zstd frame (RFC 8878, magic 28 B5 2F FD) that declares its content size, and that
// size is exactly the chunk's share of the payload. Its frame header (RFC 8878 3.1.1.1) names no
// dictionary and is single-segment or has a window no larger than the content, so a streaming
// decoder's memory is bounded by the chunk. Each frame is compressed and decompressed in
// one call (no streaming state crosses a chunk), so chunks are independent and any core can
// process any chunk.

public enum Zstd {
    /// Level 1: on HSM payloads (canonical JSON, hex key material) in 64 KiB frames it compresses
    /// as well as level 3 (3.07× vs 3.03× measured) at 2.2× the speed (275 vs 127 MB/s per core).
    public static let defaultLevel: Int32 = 1
    /// Level 1's match finder, narrowed for 64 KiB frames (`ZstdCompressor.tuned`): a 2^12-entry
    /// hash table (16 KiB, cleared for every frame and within L1) instead of 2^13, and matches of 7
    /// bytes or more instead of 6 (a hex key's short chance matches cost more than they save). On
    /// the bench payload (97,826 key records, 251 MiB) one core compresses it in 0.447 s instead
    /// of 0.527 s, to 87.56 MB instead of 87.58 MB. The frames are standard either way.
    public static let tunedHashLog: Int32 = 12
    public static let tunedMinMatch: Int32 = 7
    public static let frameMagic: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD]

    /// The most bytes a frame may have for `n` bytes of content: `n + n/256 + 64`, the spec's
    /// bound (section 4.5). It is never below libzstd's own worst case (ZSTD_compressBound).
    public static func maximumFrameBytes(contentBytes n: Int) -> Int { n + n / 256 + 64 }

    /// One frame, content size declared. (A convenience over `ZstdCompressor`.)
    public static func compress(_ input: [UInt8], level: Int32 = defaultLevel) throws -> [UInt8] {
        try ZstdCompressor(level: level).compress(input[...])
    }

    /// Decodes one whole frame that MUST declare and expand to exactly `exactSize` bytes.
    public static func decompress(_ frame: [UInt8], exactSize: Int) throws -> [UInt8] {
        try ZstdDecompressor().decompress(frame[...], exactSize: exactSize)
    }
}

/// A compression context, reused across frames (one per thread; not thread-safe).
public final class ZstdCompressor {
    private let cctx: OpaquePointer
    public let level: Int32

    /// `tuned` (the default) narrows level 1's match finder for 64 KiB frames (see
    /// `Zstd.tunedHashLog`); `false` gives libzstd's own parameters for `level`.
    public init(level: Int32 = Zstd.defaultLevel, tuned: Bool = true) throws {
        guard let c = ZSTD_createCCtx() else { throw PayloadCodecError(.compressFailed, "ZSTD_createCCtx failed") }
        // Set before `cctx` is stored: a throw from here on frees the context itself (no deinit).
        var settings: [(ZSTD_cParameter, Int32)] = [(ZSTD_c_compressionLevel, level), (ZSTD_c_contentSizeFlag, 1)]
        if tuned && level == 1 {
            settings += [(ZSTD_c_hashLog, Zstd.tunedHashLog), (ZSTD_c_minMatch, Zstd.tunedMinMatch)]
        }
        for (parameter, value) in settings {
            let r = ZSTD_CCtx_setParameter(c, parameter, value)
            guard ZSTD_isError(r) == 0 else {
                ZSTD_freeCCtx(c)
                throw PayloadCodecError(.compressFailed, "ZSTD_CCtx_setParameter: " + String(cString: ZSTD_getErrorName(r)))
            }
        }
        cctx = c
        self.level = level
    }

    deinit { ZSTD_freeCCtx(cctx) }

    /// One zstd frame with the content size in its header (ZSTD_compress2 knows the size and
    /// the context's content-size flag is set).
    public func compress(_ input: ArraySlice<UInt8>) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        // Not zero-filled first (a 64 KiB memset per chunk): the array holds only the bytes
        // libzstd wrote.
        return try [UInt8](unsafeUninitializedCapacity: max(bound, 1)) { o, initialized in
            let n = input.withUnsafeBytes { i in
                ZSTD_compress2(cctx, o.baseAddress, bound, i.baseAddress, i.count)
            }
            guard ZSTD_isError(n) == 0 else {
                initialized = 0
                throw PayloadCodecError(.compressFailed, String(cString: ZSTD_getErrorName(n)))
            }
            initialized = n
        }
    }
}

/// A decompression context, reused across frames (one per thread; not thread-safe). It accepts
/// exactly one standard frame that declares `exactSize` bytes of content and holds them; output
/// never exceeds `exactSize` (a zstd bomb is refused, not inflated).
public final class ZstdDecompressor {
    private let dctx: OpaquePointer

    public init() throws {
        guard let d = ZSTD_createDCtx() else { throw PayloadCodecError(.malformedCompressed, "ZSTD_createDCtx failed") }
        dctx = d
    }

    deinit { ZSTD_freeDCtx(dctx) }

    public func decompress(_ frame: ArraySlice<UInt8>, exactSize: Int) throws -> [UInt8] {
        precondition(exactSize >= 0)
        var out = [UInt8](repeating: 0, count: exactSize)
        try decompress(frame, into: &out)
        return out
    }

    public func decompress(_ frame: ArraySlice<UInt8>, into out: inout [UInt8]) throws {
        try frame.withUnsafeBytes { try decompress($0, into: &out) }
    }

    /// Decodes into `out`, whose count is the exact content size required.
    public func decompress(_ f: UnsafeRawBufferPointer, into out: inout [UInt8]) throws {
        let exactSize = out.count
        guard f.count >= 4, f.prefix(4).elementsEqual(Zstd.frameMagic) else {
            throw PayloadCodecError(.malformedCompressed, "not a zstd frame (magic)", offset: 0)
        }
        do {
            let declared = ZSTD_getFrameContentSize(f.baseAddress, f.count)
            if declared == hsmb_zstd_content_size_error() {
                throw PayloadCodecError(.malformedCompressed, "the zstd frame header is malformed or incomplete", offset: 0)
            }
            guard declared != hsmb_zstd_content_size_unknown() else {
                throw PayloadCodecError(.malformedCompressed, "the zstd frame does not declare its content size", offset: 0)
            }
            guard declared == UInt64(exactSize) else {
                throw PayloadCodecError(declared > UInt64(exactSize) ? .sizeLimitExceeded : .sizeMismatch,
                                        "the zstd frame declares \(declared) bytes; exactly \(exactSize) are required", offset: 0)
            }
            try Self.checkFrameHeader(f, contentBytes: exactSize)
            let length = ZSTD_findFrameCompressedSize(f.baseAddress, f.count)
            guard ZSTD_isError(length) == 0 else {
                throw PayloadCodecError(.truncatedCompressed, "the zstd frame is incomplete: \(String(cString: ZSTD_getErrorName(length)))",
                                        offset: f.count)
            }
            guard length == f.count else {
                throw PayloadCodecError(.trailingCompressed, "\(f.count - length) bytes after the end of the zstd frame", offset: length)
            }
            let n = out.withUnsafeMutableBytes { o in
                ZSTD_decompressDCtx(dctx, o.baseAddress, o.count, f.baseAddress, f.count)
            }
            guard ZSTD_isError(n) == 0 else {
                let name = String(cString: ZSTD_getErrorName(n))
                throw PayloadCodecError(hsmb_zstd_dst_too_small(n) != 0 ? .sizeLimitExceeded : .malformedCompressed,
                                        name, offset: 0)
            }
            guard n == exactSize else {
                throw PayloadCodecError(.sizeMismatch, "\(n) bytes decompressed, \(exactSize) required", offset: 0)
            }
        }
    }

    /// The frame header rules of spec 4.7 that libzstd does not enforce by itself. The
    /// Frame_Header_Descriptor (byte 4): bits 0-1 Dictionary_ID_flag, bit 5 Single_Segment_flag;
    /// without Single_Segment_flag, byte 5 is the Window_Descriptor (exponent 5 bits, mantissa 3).
    static func checkFrameHeader(_ f: UnsafeRawBufferPointer, contentBytes: Int) throws {
        guard f.count >= 6 else {
            throw PayloadCodecError(.malformedCompressed, "the zstd frame header is incomplete", offset: f.count)
        }
        let descriptor = f[4]
        guard descriptor & 0x03 == 0 else {
            throw PayloadCodecError(.unsupportedFrame, "the zstd frame names a dictionary (Dictionary_ID_flag \(descriptor & 0x03))", offset: 4)
        }
        if descriptor & 0x20 == 0 {
            let exponent = Int(f[5] >> 3), mantissa = Int(f[5] & 0x07)
            let base = 1 << (10 + exponent)
            let window = base + (base / 8) * mantissa
            guard window <= contentBytes else {
                throw PayloadCodecError(.unsupportedFrame,
                                        "the zstd frame's window is \(window) bytes, more than its \(contentBytes) bytes of content", offset: 5)
            }
        }
    }
}
