import BackupCrypto
import ByteCoding
import Foundation

/// What one message is encrypted with: the data key, its EDKs, the full context (including the
/// verification key for the signed suite) and the per-message signing key.
public struct EncryptionMaterials {
    public let suite: AlgorithmSuite
    public let dataKey: DataKey
    public let encryptedDataKeys: [EncryptedDataKey]
    public let context: EncryptionContext
    public let signingKey: P384PrivateKey?

    public init(suite: AlgorithmSuite, dataKey: DataKey, encryptedDataKeys: [EncryptedDataKey],
                context: EncryptionContext, signingKey: P384PrivateKey?) {
        self.suite = suite
        self.dataKey = dataKey
        self.encryptedDataKeys = encryptedDataKeys
        self.context = context
        self.signingKey = signingKey
    }

    /// A fresh data key wrapped by every keyring (one EDK each, in keyring order); for the signed
    /// suite a fresh P-384 key whose compressed point goes into the context.
    public static func generate(keyrings: [Keyring], context: EncryptionContext,
                                suite: AlgorithmSuite = .committing, dataKey: DataKey? = nil) throws -> EncryptionMaterials {
        guard suite.messageFormatVersion == 2 else {
            throw EnvelopeError(.invalidArgument, "new messages use suite 0x0478 or 0x0578, not \(suite.idHex)")
        }
        guard !keyrings.isEmpty else { throw EnvelopeError(.invalidArgument, "at least one keyring is needed") }
        guard !context.containsKey(EncryptionContext.publicKeyKey) else {
            throw EnvelopeError(.reservedContextKey, "callers may not set \(EncryptionContext.publicKeyKey)")
        }
        var full = context.sorted
        var signingKey: P384PrivateKey?
        if suite.signs {
            let key: P384PrivateKey
            do { key = try P384PrivateKey() } catch { throw EnvelopeError(.invalidArgument, "P-384 key generation: \(error)") }
            let point: [UInt8]
            do { point = try key.publicKey.encodedPoint(compressed: true) } catch { throw EnvelopeError(.invalidArgument, "\(error)") }
            full = try full.setting(EncryptionContext.publicKeyKey, to: Data(point).base64EncodedString())
            signingKey = key
        }
        let dk: DataKey
        var edks: [EncryptedDataKey] = []
        if let dataKey { dk = dataKey } else if let generator = keyrings[0] as? GeneratingKeyring {
            let (generated, edk) = try generator.generate(byteCount: DataKeyRole.allowedByteCounts[0], context: full)
            dk = generated
            edks.append(edk)
        } else {
            do { dk = try DataKey.random() } catch { throw EnvelopeError(.invalidArgument, "\(error)") }
        }
        edks += try keyrings.dropFirst(edks.count).map { try $0.wrap(dk, context: full) }
        return EncryptionMaterials(suite: suite, dataKey: dk, encryptedDataKeys: edks, context: full, signingKey: signingKey)
    }
}

/// Streaming encryption to a sink (spec/FORMAT.md §3.3): the header is written at once, then a
/// regular frame each time `frameLength` plaintext bytes have arrived, and on `finish()` the final
/// frame (empty when the plaintext is an exact multiple, as the Python SDK writes it) and, for the
/// signed suite, the footer. Memory is bounded by the frame length.
///
/// One GCM context (one key schedule) seals every frame; a whole frame found in the caller's
/// buffer is sealed from there, only a partial frame is copied (into a wiped buffer); each frame
/// is assembled in one reused output buffer and handed to the sink in one write.
public final class EnvelopeEncryptor {
    /// 64 KiB: a multiple of 128 (the Python SDK's encrypt takes only those) and 16× the SDK's
    /// 4096, which puts the per-frame costs (40 bytes, one GCM restart, one sink write) under 0.1%
    /// of a frame; memory stays bounded by one frame. See spec/FORMAT.md §3.3.
    public static let defaultFrameLength: UInt32 = 65536

    public let header: MessageHeader
    private let sink: ByteSink
    private let sealer: AESGCMFrameSealer
    private let signer: P384Signer?
    private let frameLength: Int
    /// A partial frame's plaintext.
    private let pending = SecretBuffer()
    private var pendingCount = 0
    /// The frame being written (ciphertext).
    private let frameOut = SecretBuffer()
    /// The next frame's sequence number; UInt64 so the step past a final frame FFFFFFFF cannot
    /// overflow. Internal: tests start it near the end.
    var sequence: UInt64 = 1
    private var state: State = .open
    /// Plaintext bytes taken so far.
    public private(set) var plaintextByteCount: UInt64 = 0
    /// Message bytes written so far.
    public private(set) var messageByteCount: UInt64 = 0

    private enum State { case open, finished, failed }

    /// Encrypts under every keyring (one EDK each) with a fresh data key.
    public convenience init(sink: ByteSink, keyrings: [Keyring], context: EncryptionContext = .empty,
                            suite: AlgorithmSuite = .committing, frameLength: UInt32 = EnvelopeEncryptor.defaultFrameLength) throws {
        let materials = try EncryptionMaterials.generate(keyrings: keyrings, context: context, suite: suite)
        try self.init(sink: sink, materials: materials, frameLength: frameLength)
    }

    /// With given materials and a fresh random message ID.
    public convenience init(sink: ByteSink, materials: EncryptionMaterials,
                            frameLength: UInt32 = EnvelopeEncryptor.defaultFrameLength) throws {
        try self.init(sink: sink, materials: materials, frameLength: frameLength, messageID: nil)
    }

    /// With a given message ID: for known-answer tests and deterministic vectors only, so it is
    /// not public. One (data key, message ID) pair MUST never head two different messages: the
    /// header tag is GCM under the all-zero IV, and two tags under one key and IV give away
    /// GCM's hash key (spec/FORMAT.md §3.7, §7). Callers derive the ID from everything the
    /// message holds, or use a fresh data key.
    package init(sink: ByteSink, materials: EncryptionMaterials, frameLength: UInt32, messageID: [UInt8]?) throws {
        let suite = materials.suite
        guard suite.messageFormatVersion == 2 else { throw EnvelopeError(.invalidArgument, "new messages use suite 0x0478 or 0x0578") }
        guard frameLength >= 1, frameLength <= HeaderLimits.formatMaximumFrameLength else {
            throw EnvelopeError(.invalidFrameLength, "frame length must be 1...\(HeaderLimits.formatMaximumFrameLength), got \(frameLength)")
        }
        guard suite.signs == (materials.signingKey != nil),
              suite.signs == materials.context.containsKey(EncryptionContext.publicKeyKey) else {
            throw EnvelopeError(.reservedContextKey, "signing key and \(EncryptionContext.publicKeyKey) must be present exactly for the signed suite")
        }
        let id = messageID ?? SecureRandom.bytes(count: suite.messageIDByteCount)
        guard id.count == suite.messageIDByteCount else { throw EnvelopeError(.invalidArgument, "message ID must be \(suite.messageIDByteCount) bytes") }
        let keys = try KeyDerivation.derive(suite: suite, dataKey: materials.dataKey, messageID: id)
        let unsigned = try MessageHeader.makeV2(suite: suite, messageID: id, context: materials.context, edks: materials.encryptedDataKeys,
                                         frameLength: frameLength, commitKey: keys.commitKey)
        let tag: [UInt8]
        do { tag = try KeyDerivation.headerTag(body: unsigned.bodyBytes, key: keys.contentKey, iv: [UInt8](repeating: 0, count: 12)) } catch {
            throw EnvelopeError(.invalidArgument, "header tag: \(error)")
        }
        header = unsigned.withTag(tag)
        do { sealer = try AESGCMFrameSealer(key: keys.contentKey) } catch {
            throw EnvelopeError(.invalidArgument, "AES-GCM context: \(error)")
        }
        self.sink = sink
        self.frameLength = Int(frameLength)
        if let key = materials.signingKey {
            do { signer = try P384Signer(privateKey: key) } catch { throw EnvelopeError(.invalidArgument, "\(error)") }
        } else {
            signer = nil
        }
        try emit(header.bytes)
    }

    /// Takes plaintext; writes every frame that becomes full.
    public func write(_ plaintext: [UInt8]) throws {
        try plaintext.withUnsafeBytes { try write($0) }
    }

    public func write(_ plaintext: UnsafeRawBufferPointer) throws {
        guard state == .open else { throw EnvelopeError(.invalidArgument, "the encryptor is \(state == .finished ? "finished" : "failed")") }
        var offset = 0
        while offset < plaintext.count {
            let rest = plaintext.count - offset
            if pendingCount == 0 && rest >= frameLength {
                // A whole frame in the caller's buffer: sealed from there.
                try guarded { try sealFrame(UnsafeRawBufferPointer(rebasing: plaintext[offset..<(offset + frameLength)]), final: false) }
                offset += frameLength
                plaintextByteCount += UInt64(frameLength)
                continue
            }
            let n = min(frameLength - pendingCount, rest)
            if pendingCount + n > pending.capacity {
                // Grows with what arrives (a frame at most), not with the declared frame length.
                pending.reserve(min(frameLength, max(pendingCount + n, 2 * pending.capacity)), preserving: pendingCount)
            }
            pending.withUnsafeMutableBytes {
                $0.baseAddress!.advanced(by: pendingCount).copyMemory(from: plaintext.baseAddress!.advanced(by: offset), byteCount: n)
            }
            pendingCount += n
            offset += n
            plaintextByteCount += UInt64(n)
            if pendingCount == frameLength {
                try guarded { try sealPending(final: false) }
            }
        }
    }

    /// Writes the final frame and, for the signed suite, the footer.
    public func finish() throws {
        guard state == .open else { throw EnvelopeError(.invalidArgument, "the encryptor is \(state == .finished ? "finished" : "failed")") }
        try guarded {
            try sealPending(final: true)
            pending.wipe()
            if let signer {
                let sig: [UInt8]
                do { sig = try signer.finish() } catch { throw EnvelopeError(.invalidArgument, "signing: \(error)") }
                var w = ByteWriter()
                w.writeUInt16(UInt16(sig.count))
                w.writeBytes(sig)
                try sink.write(w.bytes)
                messageByteCount += UInt64(w.count)
            }
        }
        state = .finished
    }

    /// One call: the whole plaintext to a complete message in memory.
    public static func encrypt(_ plaintext: [UInt8], keyrings: [Keyring], context: EncryptionContext = .empty,
                               suite: AlgorithmSuite = .committing, frameLength: UInt32 = defaultFrameLength) throws -> [UInt8] {
        let sink = MemorySink()
        let e = try EnvelopeEncryptor(sink: sink, keyrings: keyrings, context: context, suite: suite, frameLength: frameLength)
        try e.write(plaintext)
        try e.finish()
        return sink.bytes
    }

    private func guarded(_ body: () throws -> Void) throws {
        do { try body() } catch { state = .failed; pending.wipe(); throw error }
    }

    private func emit(_ bytes: [UInt8]) throws {
        signer?.update(bytes)
        try sink.write(bytes)
        messageByteCount += UInt64(bytes.count)
    }

    private func emit(_ bytes: UnsafeRawBufferPointer) throws {
        signer?.update(bytes)
        try sink.write(bytes)
        messageByteCount += UInt64(bytes.count)
    }

    private func sealPending(final: Bool) throws {
        let n = pendingCount
        pendingCount = 0
        try pending.withUnsafeMutableBytes { try sealFrame(UnsafeRawBufferPointer(rebasing: $0[0..<n]), final: final) }
    }

    /// Regular frame: u32 sequence ‖ IV ‖ ciphertext ‖ tag. Final frame: u32 0xFFFFFFFF ‖ u32
    /// sequence ‖ IV ‖ u32 length ‖ ciphertext ‖ tag (spec/FORMAT.md §3.3).
    private func sealFrame(_ plaintext: UnsafeRawBufferPointer, final: Bool) throws {
        // Regular frames carry 1...FFFFFFFE (FFFFFFFF is the final-frame marker); the final frame
        // may carry FFFFFFFF. So a message holds at most 2^32 − 1 frames.
        let marker = UInt64(KeyDerivation.finalFrameMarker)
        guard self.sequence < marker || (final && self.sequence == marker) else {
            throw EnvelopeError(.tooManyFrames, "a message holds at most 2^32-1 frames", frame: KeyDerivation.finalFrameMarker)
        }
        let sequence = UInt32(self.sequence)
        let count = plaintext.count
        let iv = KeyDerivation.frameIV(sequence)
        let aad = KeyDerivation.bodyAAD(messageID: header.messageID,
                                        label: final ? KeyDerivation.finalFrameLabel : KeyDerivation.frameLabel,
                                        sequence: sequence, length: UInt64(count))
        let prefix = (final ? 12 : 4) + iv.count
        let total = prefix + count + AESGCM.tagByteCount
        frameOut.reserve(total)
        try frameOut.withUnsafeMutableBytes { out in
            var at = 0
            func put(_ v: UInt32) {
                out[at] = UInt8(v >> 24); out[at + 1] = UInt8((v >> 16) & 0xff)
                out[at + 2] = UInt8((v >> 8) & 0xff); out[at + 3] = UInt8(v & 0xff)
                at += 4
            }
            if final { put(KeyDerivation.finalFrameMarker) }
            put(sequence)
            for b in iv { out[at] = b; at += 1 }
            if final { put(UInt32(count)) }
            precondition(at == prefix)
            do {
                try aad.withUnsafeBytes { a in
                    try sealer.seal(plaintext, nonce: try GCMNonce(iv), aad: a,
                                    ciphertext: UnsafeMutableRawBufferPointer(rebasing: out[prefix..<(prefix + count)]),
                                    tag: UnsafeMutableRawBufferPointer(rebasing: out[(prefix + count)..<total]))
                }
            } catch {
                throw EnvelopeError(.invalidArgument, "frame encryption: \(error)", frame: sequence)
            }
            try emit(UnsafeRawBufferPointer(rebasing: out[0..<total]))
        }
        self.sequence += 1
    }
}

/// An encryptor is a sink for plaintext (call `finish()` after the last write).
extension EnvelopeEncryptor: ByteSink {}
