import BackupCrypto
import Envelope

enum FuzzEnvelope {
    /// Limits for untrusted input: small enough that one input cannot allocate much.
    static var limits: HeaderLimits {
        var l = HeaderLimits()
        l.maximumFrameLength = 1 << 16
        l.maximumHeaderBytes = 1 << 17
        return l
    }

    /// The header parsers. Canonicity: a header that parses serializes to exactly its bytes, the
    /// whole input is the header, and the streaming reader agrees with the in-memory parser.
    static func header(_ data: [UInt8]) {
        for policy in [CommitmentPolicy.allowLegacyDecrypt, .requireCommitment] {
            var parsed: MessageHeader?
            do {
                let h = try MessageHeader.parse(data, policy: policy, limits: limits)
                parsed = h
                let body = try h.serializeBody()
                check(body == h.bodyBytes, "header body does not re-serialize to its bytes")
                check(h.bytes == data, "parsed header bytes differ from the input")
                check(h.byteCount == data.count, "header byte count differs from the input")
                _ = try? ArchiveMetadata(context: h.context)
            } catch { expectTyped(error, "MessageHeader.parse") }

            // The streaming reader over the same bytes: it reads exactly one header.
            let source = MemorySource(data)
            do {
                let h = try HeaderReader.read(from: source, policy: policy, limits: limits)
                check(source.bytesRead == h.byteCount, "HeaderReader read \(source.bytesRead) bytes for a \(h.byteCount)-byte header")
                check(Array(data.prefix(h.byteCount)) == h.bytes, "HeaderReader's header bytes are not the input's prefix")
                if h.byteCount == data.count {
                    check(parsed != nil, "HeaderReader accepts a header MessageHeader.parse refuses")
                }
            } catch {
                expectTyped(error, "HeaderReader.read")
                check(parsed == nil, "MessageHeader.parse accepts a header HeaderReader refuses: \(error)")
            }
        }
    }

    /// Frames and footer. Input byte 0 selects the mode:
    /// - even: the rest is a message, walked without a key and decrypted under the fixed keyring;
    /// - odd: a message is built from the input (suite, frame length, plaintext) under the fixed
    ///   keyring, then altered by a mutation script from the input. An unaltered message must
    ///   decrypt to its plaintext; an altered one must never decrypt.
    static func frames(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        if mode & 1 == 0 {
            message(Array(data.dropFirst()), original: nil)
            return
        }
        var input = FuzzInput(Array(data.dropFirst()))
        let flags = input.byte()
        let frameLength = UInt32(1 + Int(input.byte()) % 64)
        let mutations = Int(input.byte() % 4)
        let plainLength = min(input.u16() % 512, 512)
        var plaintext = input.take(plainLength)
        if plaintext.count < plainLength { plaintext += [UInt8](repeating: 0xA5, count: plainLength - plaintext.count) }
        let suite: AlgorithmSuite = flags & 1 == 0 ? .committing : .committingSigned
        let context = flags & 2 == 0 ? EncryptionContext.empty : try! EncryptionContext(["purpose": "fuzz", "z": ""])
        let built: [UInt8]
        do {
            built = try EnvelopeEncryptor.encrypt(plaintext, keyrings: [FuzzKeys.envelopeKeyring()], context: context,
                                                  suite: suite, frameLength: frameLength)
        } catch { finding("encrypting a message for the frame target: \(error)") }
        let altered = mutate(built, script: &input, count: mutations)
        if altered == built {
            message(built, original: (built, plaintext))
        } else {
            message(altered, original: nil, builtAndAltered: true)
        }
    }

    /// Walks and decrypts one message. With `original`, the message is an unaltered one of known
    /// plaintext: both passes must succeed. Without, a successful decryption must agree with the
    /// walk (and, for altered messages, is itself a finding: the caller passes `original` for
    /// every unaltered message it built).
    static func message(_ bytes: [UInt8], original: ([UInt8], [UInt8])?, builtAndAltered: Bool = false) {
        var walked: EnvelopeStructure?
        do {
            let s = try EnvelopeStructure.walk(MemorySource(bytes), policy: .allowLegacyDecrypt, limits: limits)
            walked = s
            check(s.messageBytes == bytes.count, "walk ended at \(s.messageBytes) of \(bytes.count) bytes")
            let h = try s.header.serializeBody()
            check(h == s.header.bodyBytes, "walked header does not re-serialize")
            if s.header.contentType == .framed, !s.header.suite.signs {
                check(EnvelopeStructure.frameCount(header: s.header, messageBytes: UInt64(bytes.count)) == s.frameCount,
                      "frameCount(header:messageBytes:) disagrees with the walk")
            }
        } catch { expectTyped(error, "EnvelopeStructure.walk") }

        var options = DecryptOptions(policy: .allowLegacyDecrypt)
        options.limits = limits
        options.maximumNonFramedBodyBytes = 1 << 16
        do {
            let d = try EnvelopeDecryptor(source: MemorySource(bytes), keyrings: [FuzzKeys.envelopeKeyring()], options: options)
            var plain: [UInt8] = []
            while let piece = try d.nextChunk() { plain += piece }
            check(try d.nextChunk() == nil, "a finished decryptor returned more")
            guard let walked else { finding("a message decrypts but its structure walk fails") }
            check(UInt64(plain.count) == walked.plaintextBytes, "decrypted \(plain.count) bytes, walk says \(walked.plaintextBytes)")
            check(d.framesRead == walked.frameCount, "decryptor read \(d.framesRead) frames, walk says \(walked.frameCount)")
            if let (built, expected) = original {
                check(bytes == built && plain == expected, "an unaltered message decrypts to other plaintext")
            }
            if builtAndAltered { finding("an altered message still decrypts") }
        } catch {
            expectTyped(error, "EnvelopeDecryptor")
            if original != nil { finding("an unaltered message does not decrypt: \(error)") }
        }
    }
}
