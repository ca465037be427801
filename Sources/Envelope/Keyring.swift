import BackupCrypto
import ByteCoding

/// What a keyring says about one EDK.
public enum UnwrapOutcome: Sendable {
    /// The EDK is not addressed to this keyring.
    case notMine
    /// The EDK is addressed to this keyring but did not open (wrong key bytes or altered context).
    case failed(String)
    /// The EDK names a key this keyring holds exactly (the local KMS: the very key version it
    /// names) and did not authenticate under it: the EDK or the message's encryption context was
    /// altered (or the keystore's key of that name is another keystore's). A verification
    /// failure, not a missing key (spec/FORMAT.md §3.5, §3.9).
    case altered(String)
    case opened(DataKey)
}

/// Produces and opens encrypted data keys (spec/FORMAT.md §3.5). Implementations: the raw AES
/// keyring, the local KMS; later AWS KMS over HTTP.
public protocol Keyring: Sendable {
    /// Which key this is, for messages ("hsm-backup key \"test-key\"").
    var keyDescription: String { get }
    /// Encrypts the data key; `context` is the full encryption context of the message.
    func wrap(_ dataKey: DataKey, context: EncryptionContext) throws -> EncryptedDataKey
    /// Tries to open one EDK. Throws only for conditions the caller must hear about (a disabled
    /// key version); an EDK that does not open is `.failed`, never a throw.
    func unwrap(_ edk: EncryptedDataKey, context: EncryptionContext) throws -> UnwrapOutcome
}

/// A keyring that can make the data key itself, as the ESDK's generator does (AWS KMS
/// GenerateDataKey: the service returns the plaintext key and its first EDK in one call). When
/// the first keyring of a message is one, it generates the data key and the others wrap it; when
/// it is not, the data key comes from the local CSPRNG (spec/FORMAT.md §3.5).
public protocol GeneratingKeyring: Keyring {
    /// A fresh data key of `byteCount` bytes and its EDK; `context` is the full encryption context.
    func generate(byteCount: Int, context: EncryptionContext) throws -> (DataKey, EncryptedDataKey)
}

/// The Raw AES keyring, laid out exactly as the AWS Encryption SDK's (ESDK digest §7):
/// provider ID = namespace; provider info = key name ‖ u32 tag bits (128) ‖ u32 IV length (12) ‖
/// IV(12); ciphertext = AES-GCM(wrapping key, IV, data key, AAD = sorted serialized context) ‖ tag.
public struct RawAESKeyring: Keyring {
    /// u32 tag bits ‖ u32 IV length ‖ IV after the key name.
    public static let infoSuffixByteCount = 4 + 4 + 12
    public static let tagBits: UInt32 = 128

    public let namespace: String
    public let name: String
    public let wrappingKey: WrappingKey

    public init(namespace: String, name: String, wrappingKey: WrappingKey) throws {
        guard !namespace.utf8.elementsEqual("aws-kms".utf8) else { throw EnvelopeError(.invalidArgument, "a raw AES key namespace may not be \"aws-kms\"") }
        guard !namespace.isEmpty, namespace.utf8.count <= Int(UInt16.max) else {
            throw EnvelopeError(.invalidArgument, "the key namespace must be 1...65535 bytes")
        }
        guard name.utf8.count + Self.infoSuffixByteCount <= Int(UInt16.max) else {
            throw EnvelopeError(.invalidArgument, "the key name is too long")
        }
        self.namespace = namespace
        self.name = name
        self.wrappingKey = wrappingKey
    }

    public var keyDescription: String { "\(namespace) key \"\(name)\"" }

    public func wrap(_ dataKey: DataKey, context: EncryptionContext) throws -> EncryptedDataKey {
        try wrap(dataKey, context: context, nonce: GCMNonce.random())
    }

    /// With a given IV: for known-answer tests that reproduce SDK output byte for byte. Not
    /// public: an IV given twice under one wrapping key with another context reuses a GCM nonce.
    package func wrap(_ dataKey: DataKey, context: EncryptionContext, nonce: GCMNonce) throws -> EncryptedDataKey {
        let aad = try context.serialized(canonical: true)
        var plain = dataKey.secret.unsafeCopy()
        defer { wipe(&plain) }
        let sealed: (ciphertext: [UInt8], tag: [UInt8])
        do { sealed = try AESGCM.seal(plain, key: wrappingKey, nonce: nonce, aad: aad) } catch {
            throw EnvelopeError(.invalidArgument, "wrapping the data key: \(error)")
        }
        var info = ByteWriter()
        info.writeBytes(Array(name.utf8))
        info.writeUInt32(Self.tagBits)
        info.writeUInt32(UInt32(GCMNonce.byteCount))
        info.writeBytes(nonce.bytes)
        return EncryptedDataKey(providerID: namespace, providerInfo: info.bytes, ciphertext: sealed.ciphertext + sealed.tag)
    }

    public func unwrap(_ edk: EncryptedDataKey, context: EncryptionContext) throws -> UnwrapOutcome {
        guard edk.hasProviderID(namespace), edk.hasRawAESKeyName(name) else { return .notMine }
        return Self.open(edk, key: wrappingKey, context: context)
    }

    /// Opens a raw-AES-layout EDK with `key` (also used by the local KMS).
    static func open(_ edk: EncryptedDataKey, key: WrappingKey, context: EncryptionContext) -> UnwrapOutcome {
        let iv = edk.providerInfo.suffix(GCMNonce.byteCount)
        guard edk.ciphertext.count == DataKeyRole.allowedByteCounts[0] + AESGCM.tagByteCount,
              let nonce = try? GCMNonce(iv) else {
            return .failed("EDK ciphertext is \(edk.ciphertext.count) bytes, expected 48")
        }
        guard let aad = try? context.serialized(canonical: true) else { return .failed("context does not serialize") }
        let ct = Array(edk.ciphertext.prefix(edk.ciphertext.count - AESGCM.tagByteCount))
        let tag = Array(edk.ciphertext.suffix(AESGCM.tagByteCount))
        do {
            var plain = try AESGCM.open(ct, tag: tag, key: key, nonce: nonce, aad: aad)
            defer { wipe(&plain) }
            return .opened(try DataKey(bytes: plain))
        } catch {
            return .failed("the EDK did not authenticate (wrong key bytes, or the context was altered)")
        }
    }
}
