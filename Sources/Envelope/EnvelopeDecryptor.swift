import BackupCrypto
import ByteCoding
import Foundation

/// Options of a decryptor.
public struct DecryptOptions: Sendable {
    public var policy: CommitmentPolicy = .requireCommitment
    public var limits = HeaderLimits()
    /// A non-framed body must be held whole until its tag verifies; this caps it (named limit).
    public var maximumNonFramedBodyBytes: Int = 64 << 20
    /// 0: the decryptor asks its source for exactly the bytes it needs next (inspection reads the
    /// header and nothing more). Larger: it reads ahead in blocks of this size (file decryption;
    /// `EnvelopeFile.decrypt` sets 1 MiB). Plaintext is released per frame either way.
    public var readAheadBytes: Int = 0
    public init(policy: CommitmentPolicy = .requireCommitment) { self.policy = policy }
}

/// Streaming decryption from a source (spec/FORMAT.md §3.3, §3.4; ESDK digest §9).
///
/// `init` reads the header (and nothing more), opens an EDK with the keyrings, checks the
/// commitment key in constant time, then the header tag. `nextChunk()` returns the plaintext of
/// one frame only after its tag verified (`withNextChunk` lends it from a reused, wiped buffer
/// instead of copying it); for signed suites the final frame's plaintext is held until the footer
/// signature verified. After the final frame (and footer) the input must end. Once a call has
/// failed, the decryptor stays failed. All frames are opened on one GCM context (one key schedule
/// per message), straight from the reader's buffer.
public final class EnvelopeDecryptor {
    public let header: MessageHeader
    /// The EDK that opened the message.
    public let openedEDK: EncryptedDataKey
    /// Which keyring opened it.
    public let openedBy: String

    private let reader: CountingReader
    private let keys: KeyDerivation.Keys
    private let verifier: P384Verifier?
    private let options: DecryptOptions
    /// The next frame's sequence number; UInt64 so that the step past a final frame numbered
    /// FFFFFFFF (the 2^32 − 1st frame) cannot overflow. Internal: tests start it near the end.
    var expected: UInt64 = 1
    private var finished = false
    /// The first error of a call (of any type: a source's own error too); later calls throw it.
    private var failure: Error?
    private var inBody = true
    /// Opens every frame: one GCM context and key schedule for the message.
    private let opener: AESGCMFrameOpener
    /// The current frame's plaintext, verified before anyone sees it; reused, wiped on deinit and on failure.
    private let plaintext = SecretBuffer()
    /// Frames decrypted so far (the final frame included once done).
    public var framesRead: UInt32 { UInt32(expected - 1) }

    public convenience init(source: ByteSource, keyrings: [Keyring], options: DecryptOptions = DecryptOptions()) throws {
        try self.init(reader: CountingReader(source, readAhead: options.readAheadBytes), keyrings: keyrings, options: options)
    }

    init(reader: CountingReader, keyrings: [Keyring], options: DecryptOptions) throws {
        self.reader = reader
        self.options = options
        let header = try HeaderReader.read(from: reader, policy: options.policy, limits: options.limits)
        self.header = header

        if header.suite.signs {
            let b64 = header.context.value(forKey: EncryptionContext.publicKeyKey) ?? ""
            guard let raw = Data(base64Encoded: b64), let pub = try? P384PublicKey(encodedPoint: [UInt8](raw)),
                  let v = try? P384Verifier(publicKey: pub) else {
                throw EnvelopeError(.reservedContextKey, "\(EncryptionContext.publicKeyKey) is not a Base64 P-384 point")
            }
            v.update(header.bytes)
            verifier = v
        } else {
            verifier = nil
        }

        let (dataKey, edk, by) = try Self.openDataKey(header: header, keyrings: keyrings)
        openedEDK = edk
        openedBy = by
        keys = try KeyDerivation.derive(suite: header.suite, dataKey: dataKey, messageID: header.messageID)
        if header.suite.commits {
            guard constantTimeEqual(keys.commitKey, header.suiteData) else {
                throw EnvelopeError(.commitmentMismatch, "the derived commitment key differs from the header's: wrong data key or forged message",
                                    offset: header.bodyBytes.count - header.suite.suiteDataByteCount)
            }
        }
        let iv = header.version == 1 ? header.headerIV : [UInt8](repeating: 0, count: 12)
        let tag = (try? KeyDerivation.headerTag(body: header.bodyBytes, key: keys.contentKey, iv: iv)) ?? []
        guard constantTimeEqual(tag, header.headerTag) else {
            throw EnvelopeError(.headerAuthenticationFailed, "the header tag does not verify", offset: header.bodyBytes.count + header.headerIV.count)
        }
        do { opener = try AESGCMFrameOpener(key: keys.contentKey) } catch {
            throw EnvelopeError(.invalidArgument, "AES-GCM context: \(error)")
        }
        reader.observers.append { [unowned self] bytes in
            guard self.inBody else { return }
            self.verifier?.update(bytes)
        }
    }

    /// Tries the EDKs in header order against each keyring; when none opens, names the keys that would.
    static func openDataKey(header: MessageHeader, keyrings: [Keyring]) throws -> (DataKey, EncryptedDataKey, String) {
        var failures: [String] = []
        var altered: [String] = []
        var disabled: EnvelopeError?
        for edk in header.encryptedDataKeys {
            for k in keyrings {
                let outcome: UnwrapOutcome
                do { outcome = try k.unwrap(edk, context: header.context) } catch let e as EnvelopeError where e.code == .keyVersionDisabled {
                    disabled = e
                    continue
                }
                switch outcome {
                case .notMine: continue
                case .failed(let why): failures.append("\(edk.keyDescription): \(why)")
                case .altered(let why): altered.append("\(edk.keyDescription): \(why)")
                case .opened(let dk): return (dk, edk, k.keyDescription)
                }
            }
        }
        if let disabled { throw disabled }
        if !altered.isEmpty {
            throw EnvelopeError(.encryptedDataKeyAuthenticationFailed,
                                "a keystore holds the very key version an EDK names, and the EDK does not authenticate under it: "
                                + "the message's encryption context or EDK was altered (or that keystore's key of the name is "
                                + "another keystore's): " + (altered + failures).joined(separator: "; "))
        }
        let would = header.encryptedDataKeys.map(\.keyDescription).joined(separator: "; ")
        var reason = "no key we have opens this message; it opens with: \(would)"
        if !failures.isEmpty { reason += ". Tried and failed: " + failures.joined(separator: "; ") }
        throw EnvelopeError(.noUsableKey, reason)
    }

    /// The next verified plaintext piece (one frame), or nil once the message ended cleanly.
    public func nextChunk() throws -> [UInt8]? {
        try withNextChunk { Array($0) }
    }

    /// Lends the next verified plaintext piece (one frame) to `body`, or returns nil once the
    /// message ended cleanly. The bytes live in a buffer the next call reuses (and deinit wipes):
    /// valid only inside `body`.
    public func withNextChunk<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        if let failure { throw failure }
        if finished { return nil }
        let count: Int
        do {
            count = try header.contentType == .framed ? readFrame() : readNonFramed()
        } catch {
            // Whatever failed (a tag, or the source mid-frame with its own error type, which the
            // first throw keeps for the caller's exit code), the reader is mid-frame and the
            // verifier may have stopped: no later call may go on from here.
            failure = error
            plaintext.wipe()
            throw error
        }
        return try plaintext.withUnsafeMutableBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }

    /// Decrypts everything into `sink`, frame by frame.
    public func decryptAll(to sink: ByteSink) throws {
        while try withNextChunk({ (chunk: UnsafeRawBufferPointer) -> Bool in
            if !chunk.isEmpty { try sink.write(chunk) }
            return true
        }) != nil {}
    }

    /// One call on an in-memory message.
    public static func decrypt(_ message: [UInt8], keyrings: [Keyring], options: DecryptOptions = DecryptOptions()) throws -> (header: MessageHeader, plaintext: [UInt8]) {
        let d = try EnvelopeDecryptor(source: MemorySource(message), keyrings: keyrings, options: options)
        let sink = MemorySink()
        try d.decryptAll(to: sink)
        return (d.header, sink.bytes)
    }

    // MARK: body

    private func readExact(_ n: Int, frame: UInt32, _ what: String, start: Int) throws -> [UInt8] {
        let b = try reader.read(n)
        guard b.count == n else {
            throw EnvelopeError(.truncatedFrame, "the input ends inside frame \(frame) (\(what))", frame: frame, offset: start)
        }
        return b
    }

    private func u32(_ b: [UInt8]) -> UInt32 { b.reduce(0) { $0 << 8 | UInt32($1) } }

    /// Reads, verifies and decrypts one frame into `plaintext`; returns its length.
    private func readFrame() throws -> Int {
        let frame = UInt32(expected)
        let start = reader.offset
        let first = try reader.read(4)
        if first.isEmpty {
            throw EnvelopeError(.missingFinalFrame, "the input ends after frame \(frame - 1) without a final frame", frame: frame, offset: start)
        }
        guard first.count == 4 else {
            throw EnvelopeError(.truncatedFrame, "the input ends inside frame \(frame) (sequence number)", frame: frame, offset: start)
        }
        let isFinal = u32(first) == KeyDerivation.finalFrameMarker
        var seq = u32(first)
        if isFinal { seq = u32(try readExact(4, frame: frame, "sequence number", start: start)) }
        guard seq == frame else {
            throw EnvelopeError(.frameOutOfSequence, "frame \(frame) carries sequence number \(seq)", frame: frame, offset: start)
        }
        let iv = try readExact(12, frame: frame, "IV", start: start)
        var length = header.frameLength
        if isFinal {
            let lenAt = reader.offset
            length = u32(try readExact(4, frame: frame, "content length", start: start))
            guard length <= header.frameLength else {
                throw EnvelopeError(.finalFrameTooLong, "final frame holds \(length) bytes, frame length is \(header.frameLength)", frame: frame, offset: lenAt)
            }
        }
        let aad = KeyDerivation.bodyAAD(messageID: header.messageID,
                                        label: isFinal ? KeyDerivation.finalFrameLabel : KeyDerivation.frameLabel,
                                        sequence: seq, length: UInt64(length))
        let count = Int(length)
        // Content and tag are lent from the reader's buffer; the plaintext buffer grows only once
        // the bytes are there (a declared length alone allocates nothing).
        try reader.withBytes(count + AESGCM.tagByteCount) { body in
            guard body.count == count + AESGCM.tagByteCount else {
                throw EnvelopeError(.truncatedFrame, "the input ends inside frame \(frame) (\(body.count < count ? "content" : "tag"))",
                                    frame: frame, offset: start)
            }
            plaintext.reserve(count)
            do {
                try plaintext.withUnsafeMutableBytes { out in
                    try aad.withUnsafeBytes { a in
                        try opener.open(UnsafeRawBufferPointer(rebasing: body[0..<count]),
                                        tag: UnsafeRawBufferPointer(rebasing: body[count...]),
                                        nonce: try GCMNonce(iv), aad: a, plaintext: out)
                    }
                }
            } catch {
                throw EnvelopeError(.frameAuthenticationFailed, "frame \(frame) does not authenticate", frame: frame, offset: start)
            }
        }
        if isFinal {
            try readFooterAndEnd(frame: frame)
            finished = true
        }
        // No frame limit to check: a regular frame cannot carry FFFFFFFF (the final-frame
        // marker), so the sequence rule alone caps a message at 2^32 − 1 frames (§3.3.2).
        expected += 1
        return count
    }

    private func readNonFramed() throws -> Int {
        let start = reader.offset
        let iv = try readExact(12, frame: 1, "IV", start: start)
        let lenAt = reader.offset
        let lb = try readExact(8, frame: 1, "content length", start: start)
        let length = lb.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length <= UInt64(options.maximumNonFramedBodyBytes) else {
            throw EnvelopeError(.bodyTooLarge, "non-framed content of \(length) bytes exceeds this reader's limit of \(options.maximumNonFramedBodyBytes)", frame: 1, offset: lenAt)
        }
        let ct = try readExact(Int(length), frame: 1, "content", start: start)
        let tag = try readExact(16, frame: 1, "tag", start: start)
        let aad = KeyDerivation.bodyAAD(messageID: header.messageID, label: KeyDerivation.singleBlockLabel, sequence: 1, length: length)
        plaintext.reserve(ct.count)
        do {
            try plaintext.withUnsafeMutableBytes { out in
                try ct.withUnsafeBytes { c in
                    try tag.withUnsafeBytes { t in
                        try aad.withUnsafeBytes { a in
                            try opener.open(c, tag: t, nonce: try GCMNonce(iv), aad: a, plaintext: out)
                        }
                    }
                }
            }
        } catch {
            throw EnvelopeError(.frameAuthenticationFailed, "the non-framed body does not authenticate", frame: 1, offset: start)
        }
        try readFooterAndEnd(frame: 1)
        finished = true
        expected = 2
        return ct.count
    }

    private func readFooterAndEnd(frame: UInt32) throws {
        inBody = false
        if let verifier {
            let at = reader.offset
            let lb = try reader.read(2)
            guard lb.count == 2 else { throw EnvelopeError(.truncatedFooter, "the input ends before the signature footer", offset: at) }
            let n = Int(lb[0]) << 8 | Int(lb[1])
            let sig = try reader.read(n)
            guard sig.count == n else { throw EnvelopeError(.truncatedFooter, "the input ends inside the signature (\(sig.count) of \(n) bytes)", offset: at) }
            guard verifier.verify(sig) else { throw EnvelopeError(.invalidSignature, "the footer signature does not verify", offset: at) }
        }
        let endAt = reader.offset
        guard try reader.atEnd() else {
            throw EnvelopeError(.trailingBytes, "bytes follow the end of the message", offset: endAt)
        }
    }
}
