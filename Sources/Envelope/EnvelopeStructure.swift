/// Structure-level check with no key (verification level 1; spec/FORMAT.md §3.9): the header
/// parses, frames carry consecutive sequence numbers and whole sizes, exactly one final frame
/// whose length is within the frame length, the footer is framed when the suite signs, and
/// nothing follows. Tags and the signature are not checked (that needs the data key).
public struct EnvelopeStructure: Sendable {
    public let header: MessageHeader
    /// Frames including the final one (1 for a non-framed body).
    public let frameCount: UInt32
    public let finalFrameContentBytes: UInt64
    /// Plaintext bytes (equal to ciphertext content bytes in GCM).
    public let plaintextBytes: UInt64
    public let signatureBytes: Int?
    public let messageBytes: Int
    /// The format's cap on non-framed content (2^36 - 32 bytes).
    public static let maximumNonFramedContentBytes: UInt64 = (1 << 36) - 32

    public static func walk(_ source: ByteSource, policy: CommitmentPolicy = .requireCommitment,
                            limits: HeaderLimits = HeaderLimits()) throws -> EnvelopeStructure {
        try walk(source, policy: policy, limits: limits, firstSequence: 1)
    }

    /// `firstSequence` > 1 only in tests: it lets a short message stand for the end of one with
    /// 2^32 − 1 frames (a regular frame FFFFFFFE, then the final frame FFFFFFFF).
    static func walk(_ source: ByteSource, policy: CommitmentPolicy, limits: HeaderLimits,
                     firstSequence: UInt32) throws -> EnvelopeStructure {
        let r = CountingReader(source)
        let header = try HeaderReader.read(from: r, policy: policy, limits: limits)
        func u(_ b: [UInt8]) -> UInt64 { b.reduce(0) { $0 << 8 | UInt64($1) } }
        func skip(_ n: UInt64, frame: UInt32, _ what: String, start: Int) throws -> [UInt8] {
            // Reads in bounded pieces; returns nothing (content is not kept).
            var left = n
            while left > 0 {
                let piece = Int(min(left, 1 << 16))
                let b = try r.read(piece)
                guard b.count == piece else {
                    throw EnvelopeError(.truncatedFrame, "the input ends inside frame \(frame) (\(what))", frame: frame, offset: start)
                }
                left -= UInt64(piece)
            }
            return []
        }
        func exact(_ n: Int, frame: UInt32, _ what: String, start: Int) throws -> [UInt8] {
            let b = try r.read(n)
            guard b.count == n else { throw EnvelopeError(.truncatedFrame, "the input ends inside frame \(frame) (\(what))", frame: frame, offset: start) }
            return b
        }
        var frames: UInt32 = 0
        var plain: UInt64 = 0
        var finalLen: UInt64 = 0
        if header.contentType == .nonFramed {
            let start = r.offset
            _ = try exact(12, frame: 1, "IV", start: start)
            let at = r.offset
            finalLen = u(try exact(8, frame: 1, "content length", start: start))
            guard finalLen <= maximumNonFramedContentBytes else {
                throw EnvelopeError(.bodyTooLarge, "non-framed content of \(finalLen) bytes exceeds the format's 2^36-32", frame: 1, offset: at)
            }
            _ = try skip(finalLen + 16, frame: 1, "content", start: start)
            frames = 1
            plain = finalLen
        } else {
            var expected: UInt32 = firstSequence
            while true {
                let start = r.offset
                let first = try r.read(4)
                if first.isEmpty { throw EnvelopeError(.missingFinalFrame, "no final frame after frame \(expected - 1)", frame: expected, offset: start) }
                guard first.count == 4 else { throw EnvelopeError(.truncatedFrame, "the input ends inside frame \(expected)", frame: expected, offset: start) }
                let isFinal = u(first) == UInt64(KeyDerivation.finalFrameMarker)
                let seq = isFinal ? u(try exact(4, frame: expected, "sequence number", start: start)) : u(first)
                guard seq == UInt64(expected) else {
                    throw EnvelopeError(.frameOutOfSequence, "frame \(expected) carries sequence number \(seq)", frame: expected, offset: start)
                }
                _ = try exact(12, frame: expected, "IV", start: start)
                var len = UInt64(header.frameLength)
                if isFinal {
                    let at = r.offset
                    len = u(try exact(4, frame: expected, "content length", start: start))
                    guard len <= UInt64(header.frameLength) else {
                        throw EnvelopeError(.finalFrameTooLong, "final frame holds \(len) bytes, frame length is \(header.frameLength)", frame: expected, offset: at)
                    }
                }
                _ = try skip(len + 16, frame: expected, "content and tag", start: start)
                plain += len
                frames = expected
                if isFinal { finalLen = len; break }
                // A regular frame carries at most FFFFFFFE (FFFFFFFF marks the final frame), so
                // this cannot overflow, and no message holds more than 2^32 − 1 frames (§3.3.2).
                expected += 1
            }
        }
        var sigLen: Int?
        if header.suite.signs {
            let at = r.offset
            let lb = try r.read(2)
            guard lb.count == 2 else { throw EnvelopeError(.truncatedFooter, "the input ends before the signature footer", offset: at) }
            let n = Int(u(lb))
            guard try r.read(n).count == n else { throw EnvelopeError(.truncatedFooter, "the input ends inside the signature", offset: at) }
            sigLen = n
        }
        let end = r.offset
        guard try r.atEnd() else { throw EnvelopeError(.trailingBytes, "bytes follow the end of the message", offset: end) }
        return EnvelopeStructure(header: header, frameCount: frames, finalFrameContentBytes: finalLen, plaintextBytes: plain,
                                 signatureBytes: sigLen, messageBytes: end)
    }

    /// The frame count implied by the total size of an unsigned framed message, with no read
    /// beyond the header; nil when the size cannot belong to such a message (or it is signed).
    public static func frameCount(header: MessageHeader, messageBytes: UInt64) -> UInt32? {
        guard header.contentType == .framed, !header.suite.signs, messageBytes >= UInt64(header.byteCount) + 40 else { return nil }
        let body = messageBytes - UInt64(header.byteCount) - 40
        let regular = UInt64(header.frameLength) + 32
        let n = body / regular
        guard body - n * regular <= UInt64(header.frameLength), n < UInt64(UInt32.max) else { return nil }
        return UInt32(n + 1)
    }
}
