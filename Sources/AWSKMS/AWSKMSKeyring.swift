import AWSCore
import BackupCrypto
import Envelope
import Foundation

/// The AWS KMS keyring, byte-compatible with the AWS Encryption SDK's (ESDK specification
/// `framework/aws-kms/aws-kms-keyring.md`; S3-KMS digest §4; spec/FORMAT.md §3.5):
///
/// - as the generator (the first keyring of a message): `GenerateDataKey` with `KeyId` = the
///   configured identifier, `NumberOfBytes` = 32, `EncryptionContext` = the message's full
///   context (with `aws-crypto-public-key` for the signed suite) and the grant tokens;
/// - as any further keyring: `Encrypt` of the data key with the same context and tokens;
/// - the EDK is (provider ID `aws-kms`, provider info = UTF-8 of the key ARN from the answer's
///   `KeyId`, ciphertext = `CiphertextBlob`); an answer whose `KeyId` is not a key ARN, or whose
///   plaintext has the wrong length, is refused;
/// - decrypt: only EDKs whose provider ID is `aws-kms` and whose provider info equals the
///   configured key ARN are tried, with `Decrypt` (`KeyId` = that ARN, the header's context);
///   the answer must name the same ARN and hold 32 bytes. A failure is reported as `.failed`
///   with the service's code and message, so the decryptor tries the other EDKs and keys and,
///   when none opens, lists every attempt's error.
public struct AWSKMSKeyring: GeneratingKeyring {
    public static let providerID = "aws-kms"

    public let key: KMSKeyIdentifier
    public let client: KMSClient
    public let grantTokens: [String]

    public init(key: KMSKeyIdentifier, client: KMSClient, grantTokens: [String] = []) {
        self.key = key
        self.client = client
        self.grantTokens = grantTokens
    }

    /// A keyring for `identifier` (key ARN, alias ARN or `alias/NAME`): the region comes from the
    /// ARN, else from the AWS configuration; credentials and endpoint are resolved the AWS way.
    public static func make(_ identifier: String, credentials: AWSCredentials, environment: AWSEnvironment = .process,
                            transport: HTTPTransport = DefaultHTTPTransport.shared, retry: RetryPolicy = .default,
                            grantTokens: [String] = []) throws -> AWSKMSKeyring {
        let key = try KMSKeyIdentifier(identifier)
        let region = try key.region ?? AWSConfiguration.requireRegion(environment, for: "KMS key \(identifier)")
        let client = try KMSClient.make(region: region, credentials: credentials, environment: environment, transport: transport, retry: retry)
        return AWSKMSKeyring(key: key, client: client, grantTokens: grantTokens)
    }

    public var keyDescription: String { "aws-kms key \(key.raw)" }

    public func generate(byteCount: Int, context: EncryptionContext) throws -> (DataKey, EncryptedDataKey) {
        let g = try client.generateDataKey(keyID: key.raw, numberOfBytes: byteCount, context: context, grantTokens: grantTokens)
        guard g.plaintext.count == byteCount else {
            throw invalid("GenerateDataKey", "returned a \(g.plaintext.count)-byte data key, not \(byteCount)")
        }
        return (try DataKey(secret: g.plaintext), try edk(keyID: g.keyID, blob: g.ciphertextBlob, operation: "GenerateDataKey"))
    }

    public func wrap(_ dataKey: DataKey, context: EncryptionContext) throws -> EncryptedDataKey {
        let r = try client.encrypt(keyID: key.raw, plaintext: dataKey.secret, context: context, grantTokens: grantTokens)
        return try edk(keyID: r.keyID, blob: r.ciphertextBlob, operation: "Encrypt")
    }

    public func unwrap(_ edk: EncryptedDataKey, context: EncryptionContext) throws -> UnwrapOutcome {
        guard edk.providerID == Self.providerID, key.kind == .keyARN, edk.providerInfo == Array(key.raw.utf8) else { return .notMine }
        let r: KMSClient.DecryptResult
        do {
            r = try client.decrypt(keyID: key.raw, ciphertextBlob: edk.ciphertext, context: context, grantTokens: grantTokens)
        } catch let e as AWSError {
            return .failed("KMS Decrypt: \(Self.describe(e))")
        }
        guard r.keyID == key.raw else { return .failed("KMS Decrypt answered for key \(r.keyID), not \(key.raw)") }
        guard r.plaintext.count == DataKeyRole.allowedByteCounts[0] else {
            return .failed("KMS Decrypt returned a \(r.plaintext.count)-byte data key, not \(DataKeyRole.allowedByteCounts[0])")
        }
        return .opened(try DataKey(secret: r.plaintext))
    }

    /// The service's code and message (and what failed before any answer), for `.failed`.
    static func describe(_ e: AWSError) -> String {
        var s = e.kind == .service ? e.code : "\(e.kind.rawValue) error [\(e.code)]"
        if let status = e.status { s += " (HTTP \(status))" }
        if !e.message.isEmpty { s += ": \(e.message)" }
        if e.attempts > 1 { s += " after \(e.attempts) attempts" }
        return s
    }

    private func edk(keyID: String, blob: [UInt8], operation: String) throws -> EncryptedDataKey {
        guard KMSKeyIdentifier.isKeyARN(keyID) else { throw invalid(operation, "answered with KeyId \"\(keyID)\", which is not a key ARN") }
        guard !blob.isEmpty, blob.count <= Int(UInt16.max) else { throw invalid(operation, "returned a \(blob.count)-byte CiphertextBlob") }
        return EncryptedDataKey(providerID: Self.providerID, providerInfo: Array(keyID.utf8), ciphertext: blob)
    }

    private func invalid(_ op: String, _ why: String) -> AWSError {
        AWSError(kind: .invalidResponse, service: "kms", operation: op, code: "InvalidResponse", message: why, resource: key.raw)
    }
}
