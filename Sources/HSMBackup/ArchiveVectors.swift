import BackupCrypto
import ByteCoding
import Durability
import Envelope
import Foundation
import HSMArchive
import ObjectStore
import SimulatedHSM

/// Generates spec/vectors/archive (whole archives, spec/FORMAT.md §3.10) and spec/vectors/store
/// (a 3-replica store, §5.10) deterministically: `make samples` runs it, and tests regenerate
/// into a temp dir and compare. Nothing here is random:
/// - the inner blobs come from the inner vectors' keys (SpecVectors) and a seeded random source;
/// - each archive's data key is SHA-256 of a label and the vector's name, its EDK IVs and its
///   message ID are SHA-256 of a label and everything the message holds (name, suite, data key,
///   context, EDKs, frame length, plaintext), so no (data key, message ID) pair heads two
///   different messages (§3.7);
/// - the signed archive's P-384 key is a published test key; its ECDSA signature is randomized
///   by OpenSSL 3.0, so the generator keeps the footer already in the output directory when every
///   byte before it is identical and it verifies, and writes a fresh one otherwise;
/// - the store has a fixed store id and a manual clock.
public enum ArchiveVectors {
    public static let vectorsFileName = "vectors.json"
    public static let expectedFileName = "expected.json"

    // Test keys only: published so anyone can open the vectors.
    public static let kmsProviderID = LocalKMS.namespace
    public static let kmsKeyName = "vectors-kms/v1"
    public static let kmsKeyBytes: [UInt8] = Array(0x60...0x7f)
    public static let rewrapKeyName = "vectors-kms/v2"
    public static let rewrapKeyBytes: [UInt8] = Array(0xa0...0xbf)
    public static let rawNamespace = "hsmbackup-vectors"
    public static let rawKeyName = "raw-aes-1"
    public static let rawKeyBytes: [UInt8] = Array(0x80...0x9f)
    /// SEC1 ECPrivateKey DER of the signed vector's P-384 key (made once with `openssl ecparam`).
    public static let signingKeyDER = "3081a40201010430661b9542f4992b8e08233c8f8f4a4b4aa34c68beac91170516c6d67cc4237be108a76517d6a1a630dee551425592d9c0a00706052b81040022a16403620004c30f1527b2c9ef46f21d33445dde6dfdba305bf49ef7746920c7f0e1fb18c99359f233a8ae32446ae823fcda026b105b38ab98ea1d714f2631f40d1d39abc95002aed598d3d8e55a6c549a55ef6301b73736c732a400fb796f41827766b6700a"
    public static let storeId: [UInt8] = Array(0xc0...0xcf)
    /// The store's clock starts here (2026-09-21T12:00:00Z, after every backup's creation time).
    public static let storeClockStart: UInt64 = 1_790_000_000_000 + 3_600_000

    // MARK: index format (vectors.json)

    /// A key that opens an archive's EDK: raw AES layout (§3.5); the local KMS's EDKs are the
    /// same layout under provider ID `hsmbackup-local-kms`.
    public struct WrappingKey: Codable, Sendable, Equatable {
        public let providerID: String
        public let keyName: String
        public let key: String
    }

    public struct EDK: Codable, Sendable, Equatable {
        public let providerID: String
        public let keyName: String
        /// The AES-GCM IV of the wrap (the last 12 bytes of the provider info).
        public let iv: String
        public let providerInfo: String
        /// The wrapped data key and its GCM tag (48 bytes).
        public let ciphertext: String
    }

    public struct Frame: Codable, Sendable, Equatable {
        public let sequence: UInt32
        public let final: Bool
        /// Offset of the frame's first byte in the archive.
        public let offset: Int
        public let iv: String
        public let plaintextBytes: Int
        public let tag: String
    }

    public struct EnvelopeInfo: Codable, Sendable, Equatable {
        public let suite: String
        public let dataKey: String
        public let messageID: String
        /// HKDF-SHA512(salt = message ID, ikm = data key, info = suite ID ‖ "DERIVEKEY").
        public let contentKey: String
        /// HKDF-SHA512(salt = message ID, ikm = data key, info = "COMMITKEY"): the suite data.
        public let commitKey: String
        /// The encryption context in header order (sorted by key bytes): [key, value] pairs.
        public let context: [[String]]
        /// The canonical serialization of the context: the AAD of every EDK.
        public let contextBytes: String
        public let edks: [EDK]
        public let frameLength: UInt32
        /// Header body length (the header tag follows it).
        public let headerBodyBytes: Int
        public let headerTag: String
        public let frames: [Frame]
        /// Signed suite: the test key (SEC1 DER), its compressed point, the footer offset and
        /// the DER signature in the file (one valid signature; any valid one is accepted).
        public let signingKeyDER: String?
        public let publicKey: String?
        public let footerOffset: Int?
        public let signature: String?
        public let archiveBytes: Int
        public let archiveSha256: String
    }

    /// The inner blob (the envelope's plaintext) and its intermediates, as in spec/vectors/inner.
    public struct Inner: Codable, Sendable, Equatable {
        public let file: String
        public let bytes: Int
        public let sha256: String
        public let backupKeys: SpecVectors.KeySet
        public let pbk: String
        public let pbkFingerprint: String
        public let ebk: String
        public let wrappedEBK: String
        public let sealKey: String
        public let headerSeal: String
        public let headerDigest: String
        public let backupId: String
        public let createdAt: UInt64
        public let chunkSize: Int
        public let chunks: Int
        public let payloadBytes: Int
        public let payloadSha256: String
    }

    public struct Vector: Codable, Sendable, Equatable {
        public let name: String
        public let description: String
        public let file: String
        /// "ok", or the code a reader MUST fail with (`EnvelopeError`, `ArchiveError` or
        /// `HSMBackupError` code; §3.9, §4.9).
        public let expect: String
        /// Keys that open the envelope (any one suffices) and the backup keys of the inner layer.
        public let openWith: [WrappingKey]
        public let backupKeys: SpecVectors.KeySet
        /// The ok vector this one was made from, for must-fail vectors.
        public let derivedFrom: String?
        public let envelope: EnvelopeInfo?
        public let inner: Inner?
    }

    public struct VectorFile: Codable, Sendable, Equatable {
        public let format: String
        public let spec: String
        public let vectors: [Vector]
    }

    // MARK: building blocks

    static func sha256(_ b: [UInt8]) -> [UInt8] { SHA256Hasher.hash(b) }

    /// SHA-256 of a label and length-prefixed parts: how every fixed value of a vector is made.
    static func derive(_ label: String, _ parts: [[UInt8]]) -> [UInt8] {
        var w = ByteWriter()
        w.writeBytes(Array("hsmbackup archive vectors v1 \(label)".utf8))
        for p in parts {
            w.writeUInt32(UInt32(p.count))
            w.writeBytes(p)
        }
        return sha256(w.bytes)
    }

    static func u32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }

    static var backupKeySet: SpecVectors.KeySet {
        SpecVectors.KeySet(manufacturerId: SpecVectors.manufacturerId, mkbk: Hex.encode(SpecVectors.mkbkBytes),
                           akbk: Hex.encode(SpecVectors.akbkBytes))
    }

    static func kmsKey() throws -> RawAESKeyring {
        try RawAESKeyring(namespace: kmsProviderID, name: kmsKeyName, wrappingKey: try BackupCrypto.WrappingKey(bytes: kmsKeyBytes))
    }
    static func rewrapKey() throws -> RawAESKeyring {
        try RawAESKeyring(namespace: kmsProviderID, name: rewrapKeyName, wrappingKey: try BackupCrypto.WrappingKey(bytes: rewrapKeyBytes))
    }
    static func rawKey() throws -> RawAESKeyring {
        try RawAESKeyring(namespace: rawNamespace, name: rawKeyName, wrappingKey: try BackupCrypto.WrappingKey(bytes: rawKeyBytes))
    }

    /// The keyrings a reader of these vectors needs (every wrapping key above).
    public static func keyrings(for keys: [WrappingKey]) throws -> [Keyring] {
        try keys.map { k in
            guard let bytes = Hex.decode(k.key) else { throw HSMBackupError(.invalidArgument, "key \(k.keyName) is not hex") }
            return try RawAESKeyring(namespace: k.providerID, name: k.keyName, wrappingKey: try BackupCrypto.WrappingKey(bytes: bytes))
        }
    }

    static func describe(_ k: RawAESKeyring, _ bytes: [UInt8]) -> WrappingKey {
        WrappingKey(providerID: k.namespace, keyName: k.name, key: Hex.encode(bytes))
    }

    struct InnerBuilt {
        let blob: [UInt8]
        let info: Inner
    }

    /// An inner blob of a simulated HSM under the inner vectors' backup keys.
    static func innerBlob(file: String, contents: HSMContents, identity: HSMIdentity, seed: UInt64, createdAt: UInt64,
                          chunkSize: Int) throws -> InnerBuilt {
        let rnd = SeededRandomSource(seed: seed)
        let backupId = rnd.bytes(count: InnerFormat.backupIdByteCount)
        let ebk = try EphemeralBackupKey(secret: rnd.secureBytes(count: 32))
        let keyring = try backupKeySet.keyring()
        let bundle = try contents.payloadBundle()
        let blob = try InnerBlob.seal(bundle, metadata: identity.metadata, backupId: backupId, createdAt: createdAt,
                                      keyring: keyring, ebk: ebk, chunkSize: chunkSize)
        let header = try InnerHeader.parse(prefix: blob)
        let pbk = try keyring.pbk()
        let tar = try bundle.tarBytes()
        let info = Inner(
            file: file, bytes: blob.count, sha256: Hex.encode(sha256(blob)), backupKeys: backupKeySet,
            pbk: Hex.encode(pbk.secret.unsafeCopy()), pbkFingerprint: Hex.encode(header.pbkFingerprint),
            ebk: Hex.encode(ebk.secret.unsafeCopy()), wrappedEBK: Hex.encode(header.wrappedEBK),
            sealKey: Hex.encode(try KeyHierarchy.sealKey(ebk: ebk, backupId: backupId).secret.unsafeCopy()),
            headerSeal: Hex.encode(header.seal), headerDigest: Hex.encode(header.digest), backupId: Hex.encode(backupId),
            createdAt: createdAt, chunkSize: chunkSize, chunks: try InnerStructureChecker.check(blob).chunkCount,
            payloadBytes: tar.count, payloadSha256: Hex.encode(sha256(tar)))
        return InnerBuilt(blob: blob, info: info)
    }

    struct ArchiveBuilt {
        let bytes: [UInt8]
        let envelope: EnvelopeInfo
    }

    /// One archive: the inner blob under an envelope made only of values derived from the
    /// vector's name and contents. `metadata` may change the public metadata (for a must-fail
    /// vector); `previous` is the file already in the output directory (signed suite: its footer
    /// is kept when everything before it is identical and it verifies).
    static func archive(name: String, inner: [UInt8], keys: [RawAESKeyring], signed: Bool, frameLength: UInt32,
                        operatorContext: [(String, String)] = [], previous: [UInt8]? = nil,
                        metadata edit: ((inout ArchiveMetadata) -> Void)? = nil) throws -> ArchiveBuilt {
        let suite: AlgorithmSuite = signed ? .committingSigned : .committing
        var meta = ArchiveMetadata(innerHeader: try InnerHeader.parse(prefix: inner))
        edit?(&meta)
        var context = try meta.merged(into: try EncryptionContext(pairs: operatorContext)).sorted
        var signingKey: P384PrivateKey?
        var publicKey: [UInt8]?
        if signed {
            guard let der = Hex.decode(signingKeyDER) else { throw HSMBackupError(.invalidArgument, "signing key is not hex") }
            let key = try P384PrivateKey(der: der)
            let point = try key.publicKey.encodedPoint(compressed: true)
            context = try context.setting(EncryptionContext.publicKeyKey, to: Data(point).base64EncodedString()).sorted
            signingKey = key
            publicKey = point
        }
        let contextBytes = try context.serialized(canonical: true)
        let nameBytes = Array(name.utf8)
        let dataKeyBytes = derive("data key", [nameBytes])
        let dataKey = try DataKey(bytes: dataKeyBytes)
        let suiteID = [UInt8(suite.id >> 8), UInt8(suite.id & 0xff)]
        var edks: [EncryptedDataKey] = []
        for (i, k) in keys.enumerated() {
            let iv = Array(derive("EDK IV", [nameBytes, u32(UInt32(i)), Array(k.namespace.utf8), Array(k.name.utf8),
                                             dataKeyBytes, contextBytes]).prefix(12))
            edks.append(try k.wrap(dataKey, context: context, nonce: try GCMNonce(iv)))
        }
        let edkBytes = edks.flatMap { Array($0.providerID.utf8) + $0.providerInfo + $0.ciphertext }
        let messageID = derive("message ID", [nameBytes, suiteID, dataKeyBytes, contextBytes, edkBytes, u32(frameLength), sha256(inner)])
        let sink = MemorySink()
        let e = try EnvelopeEncryptor(sink: sink, materials: EncryptionMaterials(suite: suite, dataKey: dataKey, encryptedDataKeys: edks,
                                                                                 context: context, signingKey: signingKey),
                                      frameLength: frameLength, messageID: messageID)
        try e.write(inner)
        try e.finish()
        var bytes = sink.bytes
        let header = e.header

        // Frames, walked from the bytes (§3.3.2).
        var frames: [Frame] = []
        var at = header.byteCount
        func be32(_ o: Int) -> UInt32 { UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3]) }
        while true {
            let final = be32(at) == 0xFFFF_FFFF
            let seqAt = final ? at + 4 : at
            let ivAt = seqAt + 4
            let len = final ? Int(be32(ivAt + 12)) : Int(frameLength)
            let ctAt = ivAt + 12 + (final ? 4 : 0)
            frames.append(Frame(sequence: be32(seqAt), final: final, offset: at, iv: Hex.encode(bytes[ivAt..<(ivAt + 12)]),
                                plaintextBytes: len, tag: Hex.encode(bytes[(ctAt + len)..<(ctAt + len + 16)])))
            at = ctAt + len + 16
            if final { break }
        }
        var signature: [UInt8]?
        if signed, let publicKey {
            // OpenSSL's ECDSA is randomized: keep the committed footer when it still fits.
            if let previous, previous.count > at + 2, Array(previous.prefix(at)) == Array(bytes.prefix(at)) {
                let n = Int(previous[at]) << 8 | Int(previous[at + 1])
                let sig = Array(previous[(at + 2)...])
                if sig.count == n, try P384PublicKey(encodedPoint: publicKey).isValidSignature(sig, for: Array(bytes.prefix(at))) {
                    bytes = previous
                }
            }
            signature = Array(bytes[(at + 2)...])
        }
        let contentKey = try dataKey.withUnsafeBytes {
            try HKDF.derive(.sha512, ikm: $0, salt: messageID, info: suiteID + Array("DERIVEKEY".utf8), outputBytes: 32)
        }
        let commitKey = try dataKey.withUnsafeBytes {
            try HKDF.derive(.sha512, ikm: $0, salt: messageID, info: Array("COMMITKEY".utf8), outputBytes: 32)
        }
        let env = EnvelopeInfo(
            suite: Hex.encode(suiteID), dataKey: Hex.encode(dataKeyBytes), messageID: Hex.encode(messageID),
            contentKey: Hex.encode(contentKey.unsafeCopy()), commitKey: Hex.encode(commitKey.unsafeCopy()),
            context: context.pairs.map { [$0.keyString, $0.valueString] }, contextBytes: Hex.encode(contextBytes),
            edks: edks.map { EDK(providerID: $0.providerID, keyName: $0.rawAESKeyName ?? "", iv: Hex.encode($0.providerInfo.suffix(12)),
                                 providerInfo: Hex.encode($0.providerInfo), ciphertext: Hex.encode($0.ciphertext)) },
            frameLength: frameLength, headerBodyBytes: header.bodyBytes.count, headerTag: Hex.encode(header.headerTag),
            frames: frames, signingKeyDER: signed ? signingKeyDER : nil, publicKey: publicKey.map { Data($0).base64EncodedString() },
            footerOffset: signed ? at : nil, signature: signature.map(Hex.encode),
            archiveBytes: bytes.count, archiveSha256: Hex.encode(sha256(bytes)))
        return ArchiveBuilt(bytes: bytes, envelope: env)
    }

    static func prettyJSON<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(value)) + [0x0a]
    }

    static func identity(hsmId: String = "hsm-example-1", cluster: String = "cluster-example", serial: String = "EX1K-000042") -> HSMIdentity {
        HSMIdentity(manufacturerId: SpecVectors.manufacturerId, model: "EX-1000", firmwareVersion: "2.4.1",
                    serialNumber: serial, hsmId: hsmId, clusterId: cluster)
    }

    static func readIfPresent(_ path: String) -> [UInt8]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try? AtomicFile.read(path, limit: 16 << 20)
    }

    // MARK: spec/vectors/archive

    /// Writes spec/vectors/archive; returns the paths written.
    @discardableResult
    public static func generateArchives(directory: String) throws -> [String] {
        var files: [(String, [UInt8])] = []
        var vectors: [Vector] = []
        let kms = try kmsKey(), raw = try rawKey()
        let kmsInfo = describe(kms, kmsKeyBytes), rawInfo = describe(raw, rawKeyBytes)

        // Inner blob A: 3 keys, 2 users, 2 policies, 256-byte chunks (several chunks).
        let small = try SimulatedHSM.makeContents(keys: 3, users: 2, seed: 2, options: .deterministic)
        let a = try innerBlob(file: "inner-a.blob", contents: small, identity: identity(), seed: 1001,
                              createdAt: SpecVectors.createdAt, chunkSize: 256)
        files.append((a.info.file, a.blob))

        // Inner blob B: its serial number padded so the blob is a multiple of 128 bytes, for an
        // empty final frame at frame length 128 (the header's length is linear in the serial's,
        // and 128 is the smallest frame length the Python SDK's encrypt takes).
        let b0 = try innerBlob(file: "inner-b.blob", contents: small, identity: identity(serial: "EX1K-000043"), seed: 1002,
                               createdAt: SpecVectors.createdAt + 60, chunkSize: 256)
        let pad = (128 - b0.blob.count % 128) % 128
        let serialB = "EX1K-000043" + String(repeating: "-", count: pad)
        let b = try innerBlob(file: "inner-b.blob", contents: small, identity: identity(serial: serialB), seed: 1002,
                              createdAt: SpecVectors.createdAt + 60, chunkSize: 256)
        guard b.blob.count % 128 == 0 else { throw HSMBackupError(.invalidArgument, "inner blob B is \(b.blob.count) bytes, not a multiple of 128") }
        files.append((b.info.file, b.blob))

        func addOK(_ name: String, _ description: String, inner: InnerBuilt, keys: [RawAESKeyring], open: [WrappingKey],
                   signed: Bool = false, frameLength: UInt32 = EnvelopeEncryptor.defaultFrameLength,
                   operatorContext: [(String, String)] = []) throws -> ArchiveBuilt {
            let file = "\(name).hsmbak"
            let built = try archive(name: name, inner: inner.blob, keys: keys, signed: signed, frameLength: frameLength,
                                    operatorContext: operatorContext, previous: readIfPresent(directory + "/" + file))
            files.append((file, built.bytes))
            vectors.append(Vector(name: name, description: description, file: file, expect: "ok", openWith: open,
                                  backupKeys: backupKeySet, derivedFrom: nil, envelope: built.envelope, inner: inner.info))
            return built
        }
        func addReject(_ name: String, _ expect: String, _ description: String, from: String, _ bytes: [UInt8],
                       open: [WrappingKey] = [kmsInfo]) {
            let file = "\(name).hsmbak"
            files.append((file, bytes))
            vectors.append(Vector(name: name, description: description, file: file, expect: expect, openWith: open,
                                  backupKeys: backupKeySet, derivedFrom: from, envelope: nil, inner: nil))
        }

        let unsigned = try addOK("ok-unsigned", "suite 04 78, one EDK (local KMS key vectors-kms/v1), 64 KiB frames: one final frame",
                                 inner: a, keys: [kms], open: [kmsInfo])
        let signed = try addOK("ok-signed", "suite 05 78 (ECDSA P-384 footer), one EDK, 64 KiB frames", inner: a, keys: [kms], open: [kmsInfo],
                               signed: true)
        _ = try addOK("ok-two-edks", "two EDKs (local KMS key, then a raw AES key), either opens it; an operator context pair",
                      inner: a, keys: [kms, raw], open: [kmsInfo, rawInfo], operatorContext: [("department", "vault-ops")])
        let multi = try addOK("ok-frames-short-final", "1024-byte frames: \(a.blob.count / 1024) full frames and a final frame of \(a.blob.count % 1024) bytes",
                              inner: a, keys: [kms], open: [kmsInfo], frameLength: 1024)
        _ = try addOK("ok-frames-empty-final", "128-byte frames over a \(b.blob.count)-byte inner blob (an exact multiple): \(b.blob.count / 128) full frames and an empty final frame",
                      inner: b, keys: [kms], open: [kmsInfo], frameLength: 128)

        // Must-fail archives.
        let mismatch = try archive(name: "reject-metadata-mismatch", inner: a.blob, keys: [kms], signed: false,
                                   frameLength: EnvelopeEncryptor.defaultFrameLength) { $0.hsmID = "hsm-example-2" }
        addReject("reject-metadata-mismatch", HSMBackupError.Code.metadataMismatch.rawValue,
                  "a valid envelope whose hsmbackup.hsm-id (hsm-example-2) disagrees with the inner header's HSM id (hsm-example-1)",
                  from: "ok-unsigned", mismatch.bytes)
        let footer = try required(signed.envelope.footerOffset)
        addReject("reject-signature-stripped", EnvelopeError.Code.truncatedFooter.rawValue,
                  "ok-signed without its footer (the message ends after the final frame)", from: "ok-signed", Array(signed.bytes.prefix(footer)))
        var badSig = signed.bytes
        badSig[badSig.count - 1] ^= 0x01
        addReject("reject-signature-flipped", EnvelopeError.Code.invalidSignature.rawValue,
                  "ok-signed with the last byte of its signature changed", from: "ok-signed", badSig)
        var badTag = multi.bytes
        let f2 = multi.envelope.frames[1]
        badTag[f2.offset + 4 + 12 + f2.plaintextBytes] ^= 0x01
        addReject("reject-frame-tag", EnvelopeError.Code.frameAuthenticationFailed.rawValue,
                  "ok-frames-short-final with the first byte of frame 2's tag changed", from: "ok-frames-short-final", badTag)
        addReject("reject-truncated-frame", EnvelopeError.Code.truncatedFrame.rawValue,
                  "ok-frames-short-final cut 10 bytes into frame 3", from: "ok-frames-short-final",
                  Array(multi.bytes.prefix(multi.envelope.frames[2].offset + 10)))
        addReject("reject-missing-final-frame", EnvelopeError.Code.missingFinalFrame.rawValue,
                  "ok-frames-short-final cut before its final frame (at a frame boundary)", from: "ok-frames-short-final",
                  Array(multi.bytes.prefix(try required(multi.envelope.frames.last, "final frame").offset)))
        addReject("reject-trailing-byte", EnvelopeError.Code.trailingBytes.rawValue,
                  "ok-unsigned and one zero byte", from: "ok-unsigned", unsigned.bytes + [0])
        addReject("reject-wrong-key", EnvelopeError.Code.noUsableKey.rawValue,
                  "ok-two-edks opened with the rewrap key vectors-kms/v2 only (no EDK for it)", from: "ok-two-edks",
                  try required(files.first { $0.0 == "ok-two-edks.hsmbak" }?.1), open: [describe(try rewrapKey(), rewrapKeyBytes)])
        // The envelope is valid; the inner blob inside it is not (level full finds it).
        var innerBad = a.blob
        innerBad[innerBad.count - 9] ^= 0x80
        let innerDamaged = try archive(name: "reject-inner-chunk", inner: innerBad, keys: [kms], signed: false,
                                       frameLength: EnvelopeEncryptor.defaultFrameLength)
        addReject("reject-inner-chunk", ArchiveError.Code.chunkAuthenticationFailed.rawValue,
                  "a valid envelope around inner-a.blob with a byte of its final chunk's KWP ciphertext changed (only level full sees it)",
                  from: "ok-unsigned", innerDamaged.bytes)

        let file = VectorFile(format: "hsmbackup archive vectors v1", spec: "spec/FORMAT.md sections 3.10, 3, 4", vectors: vectors)
        files.append((vectorsFileName, try prettyJSON(file)))
        try AtomicFile.makeDirectory(directory, mode: 0o755)
        var written: [String] = []
        for (name, bytes) in files {
            try AtomicFile.write(bytes, to: directory + "/" + name, mode: 0o644)
            written.append(directory + "/" + name)
        }
        return written
    }

    /// Unwraps for generator code: a missing value is a generator bug, reported as an error.
    static func required<T>(_ v: T?, _ what: String = "value") throws -> T {
        guard let v else { throw HSMBackupError(.invalidArgument, "vector generator: missing \(what)") }
        return v
    }
}
