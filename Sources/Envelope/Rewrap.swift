import BackupCrypto
import ByteCoding
import Foundation

/// Rewrap (spec/FORMAT.md §3.7): a new header for another set of keys, the body bytes reused.
///
/// The data key is opened with `keyrings`; a new header is written with the same suite,
/// message ID, commitment key, frame length and caller context, and one EDK per `newKeyrings`.
/// Every body frame is verified (tag) while it is copied unchanged. For the signed suite the old
/// signature is verified, a fresh P-384 key replaces `aws-crypto-public-key`, and a new
/// signature covers the new header and the same body. Memory is bounded by the frame length.
public enum Rewrap {
    @discardableResult
    public static func rewrap(source: ByteSource, sink: ByteSink, keyrings: [Keyring], newKeyrings: [Keyring],
                              options: DecryptOptions = DecryptOptions()) throws -> MessageHeader {
        guard !newKeyrings.isEmpty else { throw EnvelopeError(.invalidArgument, "rewrap needs at least one new keyring") }
        let d = try EnvelopeDecryptor(reader: CountingReader(source), keyrings: keyrings, options: options)
        let old = d.header
        guard old.version == 2 else {
            throw EnvelopeError(.invalidArgument, "only format v2 messages are rewrapped; decrypt and re-encrypt v1 messages")
        }
        d.collectRawBody = true
        let callerContext = old.context.removing(EncryptionContext.publicKeyKey)
        let signingKey: P384PrivateKey?
        var context = callerContext
        if old.suite.signs {
            do {
                let k = try P384PrivateKey()
                context = try context.setting(EncryptionContext.publicKeyKey,
                                              to: Data(try k.publicKey.encodedPoint(compressed: true)).base64EncodedString())
                signingKey = k
            } catch let e as EnvelopeError { throw e } catch { throw EnvelopeError(.invalidArgument, "signing key: \(error)") }
        } else {
            signingKey = nil
        }
        let edks = try newKeyrings.map { try $0.wrap(d.dataKey, context: context) }
        let unsigned = try MessageHeader.makeV2(suite: old.suite, messageID: old.messageID, context: context, edks: edks,
                                                frameLength: old.frameLength, commitKey: old.suiteData, contentType: old.contentType)
        let tag: [UInt8]
        do { tag = try KeyDerivation.headerTag(body: unsigned.bodyBytes, key: d.keys.contentKey, iv: [UInt8](repeating: 0, count: 12)) } catch {
            throw EnvelopeError(.invalidArgument, "header tag: \(error)")
        }
        let header = unsigned.withTag(tag)
        let signer: P384Signer?
        do { signer = try signingKey.map { try P384Signer(privateKey: $0) } } catch { throw EnvelopeError(.invalidArgument, "\(error)") }
        signer?.update(header.bytes)
        try sink.write(header.bytes)
        // Each frame is verified (the plaintext stays in the decryptor's wiped buffer), then its
        // raw bytes are copied out unchanged.
        while try d.withNextChunk({ _ in true }) != nil {
            let raw = d.takeRawBody()
            signer?.update(raw)
            try sink.write(raw)
        }
        if let signer {
            let sig: [UInt8]
            do { sig = try signer.finish() } catch { throw EnvelopeError(.invalidArgument, "signing: \(error)") }
            var w = ByteWriter()
            w.writeUInt16(UInt16(sig.count))
            w.writeBytes(sig)
            try sink.write(w.bytes)
        }
        return header
    }

    /// Rewraps the file at `path` in place: the new message goes to a temp file beside it and
    /// replaces the old one atomically only after every frame (and the old signature) verified.
    @discardableResult
    public static func rewrapFile(at path: String, keyrings: [Keyring], newKeyrings: [Keyring],
                                  options: DecryptOptions = DecryptOptions()) throws -> MessageHeader {
        let source = try FileHandleSource(path: path)
        let mode = ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.uint16Value ?? 0o600
        let sink = try AtomicFileSink(path: path, mode: mode_t(mode))
        do {
            let h = try rewrap(source: source, sink: sink, keyrings: keyrings, newKeyrings: newKeyrings, options: options)
            try sink.commit()
            return h
        } catch {
            sink.abort()
            throw error
        }
    }
}
