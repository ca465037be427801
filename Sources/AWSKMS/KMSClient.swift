#if canImport(Glibc)
import Glibc
#endif
import AWSCore
import BackupCrypto
import Envelope
import Foundation

/// The AWS KMS JSON API (1.1 protocol, `X-Amz-Target: TrentService.<Op>`; S3-KMS digest §3):
/// the operations the keyring needs, and CreateKey/CreateAlias/DescribeKey for setting up.
/// Every call is one `POST /` through an `AWSClient` (signing, retries, error codes).
///
/// Secret hygiene: a data key's plaintext is base64 in the request (Encrypt) and the answer
/// (GenerateDataKey, Decrypt). Our own buffers holding it are wiped: the request and answer
/// bodies where they lie once the call is over; the answer's `Plaintext` is taken from the body's
/// bytes and decoded from base64 straight into `SecureBytes` (`SecretJSONField`), and the JSON
/// parser only ever sees a copy with that value emptied, so no Foundation `String` holds the key.
/// The transport wipes its scratch buffers when an exchange ends and a body it had to grow, and
/// libssl wipes each decrypted record once read (SSL_OP_CLEANSE_PLAINTEXT).
public final class KMSClient: Sendable {
    public let client: AWSClient

    public init(client: AWSClient) { self.client = client }

    /// A client for `region`, with credentials and the endpoint resolved the AWS way
    /// (`AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, config file, else kms.<region>.amazonaws.com).
    public static func make(region: String, credentials: AWSCredentials, environment: AWSEnvironment = .process,
                            transport: HTTPTransport = DefaultHTTPTransport.shared, retry: RetryPolicy = .default) throws -> KMSClient {
        let endpoint = try AWSConfiguration.endpoint(service: "kms", region: region, environment)
        // GenerateDataKey and Decrypt answer with the plaintext data key, and Encrypt sends it:
        // over plain HTTP anyone on the path reads the key of the whole archive. Only a loopback
        // endpoint (a local test server such as moto) may be plain HTTP.
        if endpoint.url.scheme?.lowercased() == "http", !isLoopback(endpoint.url.host ?? "") {
            throw AWSError.configuration("InsecureEndpoint", "the KMS endpoint \(endpoint.url.absoluteString) from \(endpoint.source) is plain HTTP: "
                + "KMS answers carry plaintext data keys; use https (plain http is accepted only on loopback)", service: "kms")
        }
        return KMSClient(client: AWSClient(service: "kms", region: region, endpoint: endpoint.url, credentials: credentials,
                                           signingOptions: .standard, transport: transport, retry: retry))
    }

    public var region: String { client.region }

    /// localhost, 127.0.0.0/8 or ::1.
    static func isLoopback(_ host: String) -> Bool {
        let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if h == "localhost" || h == "::1" { return true }
        let parts = h.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    // MARK: operations

    public struct GeneratedDataKey: Sendable {
        public let plaintext: SecureBytes
        public let ciphertextBlob: [UInt8]
        /// The key ARN KMS used (always an ARN, also when an alias was given).
        public let keyID: String
    }

    public func generateDataKey(keyID: String, numberOfBytes: Int, context: EncryptionContext, grantTokens: [String] = []) throws -> GeneratedDataKey {
        var body = JSONWriter()
        body.field("KeyId", keyID)
        body.field("NumberOfBytes", numberOfBytes)
        body.context("EncryptionContext", context)
        if !grantTokens.isEmpty { body.field("GrantTokens", grantTokens) }
        let answer = try call("GenerateDataKey", body: body.finish(), resource: keyID)
        return GeneratedDataKey(plaintext: try answer.secretPlaintext(),
                                ciphertextBlob: try answer.blob("CiphertextBlob"), keyID: try answer.string("KeyId"))
    }

    public struct EncryptResult: Sendable {
        public let ciphertextBlob: [UInt8]
        public let keyID: String
    }

    public func encrypt(keyID: String, plaintext: SecureBytes, context: EncryptionContext, grantTokens: [String] = []) throws -> EncryptResult {
        var body = JSONWriter()
        body.field("KeyId", keyID)
        body.context("EncryptionContext", context)
        if !grantTokens.isEmpty { body.field("GrantTokens", grantTokens) }
        body.secretBase64Field("Plaintext", plaintext) // last: nothing after it reallocates the buffer
        let answer = try call("Encrypt", body: body.finish(), resource: keyID, secretBody: true)
        return EncryptResult(ciphertextBlob: try answer.blob("CiphertextBlob"), keyID: try answer.string("KeyId"))
    }

    public struct DecryptResult: Sendable {
        public let plaintext: SecureBytes
        public let keyID: String
    }

    public func decrypt(keyID: String?, ciphertextBlob: [UInt8], context: EncryptionContext, grantTokens: [String] = []) throws -> DecryptResult {
        var body = JSONWriter()
        if let keyID { body.field("KeyId", keyID) }
        body.field("CiphertextBlob", Data(ciphertextBlob).base64EncodedString())
        body.context("EncryptionContext", context)
        if !grantTokens.isEmpty { body.field("GrantTokens", grantTokens) }
        let answer = try call("Decrypt", body: body.finish(), resource: keyID)
        return DecryptResult(plaintext: try answer.secretPlaintext(), keyID: try answer.string("KeyId"))
    }

    public struct KeyMetadata: Sendable {
        public let keyID: String
        public let arn: String
        public let enabled: Bool
        public let keyState: String?
    }

    /// A symmetric encryption key (`ENCRYPT_DECRYPT`, `SYMMETRIC_DEFAULT`).
    public func createKey(description: String = "") throws -> KeyMetadata {
        var body = JSONWriter()
        body.field("Description", description)
        body.field("KeyUsage", "ENCRYPT_DECRYPT")
        body.field("KeySpec", "SYMMETRIC_DEFAULT")
        return try metadata(call("CreateKey", body: body.finish(), resource: nil, idempotent: false))
    }

    public func describeKey(keyID: String) throws -> KeyMetadata {
        var body = JSONWriter()
        body.field("KeyId", keyID)
        return try metadata(call("DescribeKey", body: body.finish(), resource: keyID))
    }

    /// `aliasName` is `alias/NAME`.
    public func createAlias(aliasName: String, targetKeyID: String) throws {
        var body = JSONWriter()
        body.field("AliasName", aliasName)
        body.field("TargetKeyId", targetKeyID)
        _ = try call("CreateAlias", body: body.finish(), resource: aliasName, idempotent: false)
    }

    // MARK: plumbing

    private func metadata(_ a: Answer) throws -> KeyMetadata {
        guard let m = a.object["KeyMetadata"] as? [String: Any], let id = m["KeyId"] as? String, let arn = m["Arn"] as? String else {
            throw a.invalid("no KeyMetadata with KeyId and Arn")
        }
        return KeyMetadata(keyID: id, arn: arn, enabled: (m["Enabled"] as? Bool) ?? false, keyState: m["KeyState"] as? String)
    }

    struct Answer {
        let operation: String
        let object: [String: Any]
        let region: String
        /// The answer's `Plaintext` (a data key), taken from the body's bytes: `object` has it emptied.
        var plaintext: SecureBytes? = nil

        func invalid(_ why: String) -> AWSError {
            AWSError(kind: .invalidResponse, service: "kms", operation: operation, code: "InvalidResponse", message: why)
        }
        func string(_ name: String) throws -> String {
            guard let s = object[name] as? String, !s.isEmpty else { throw invalid("the answer has no \(name)") }
            return s
        }
        func blob(_ name: String) throws -> [UInt8] {
            guard let s = object[name] as? String, let bytes = Data(base64Encoded: s) else {
                throw invalid("the answer's \(name) is missing or not base64")
            }
            return [UInt8](bytes)
        }
        /// The data key (`Plaintext`), decoded into wiped memory from the body's bytes.
        func secretPlaintext() throws -> SecureBytes {
            guard let key = plaintext else { throw invalid("the answer has no Plaintext") }
            return key
        }
    }

    /// `secretBody`: the request holds a data key (Encrypt).
    private func call(_ op: String, body: Data, resource: String?, idempotent: Bool = true, secretBody: Bool = false) throws -> Answer {
        // Every copy of the body handed down (AWSRequest, HTTPRequest) shares this storage, so
        // zeroing it where it lies reaches them all, also when the call fails.
        defer { if secretBody { wipeStorage(ofData: body) } }
        var headers = HTTPHeaders()
        headers.add("Content-Type", "application/x-amz-json-1.1")
        headers.add("X-Amz-Target", "TrentService.\(op)")
        var request = AWSRequest(method: "POST", path: "/", headers: headers, body: body, operation: op, resource: resource)
        request.idempotent = idempotent
        let response = try client.send(request)
        // In place: `resetBytes` would give a copy fresh storage if another holder shared it.
        defer { wipeStorage(ofData: response.body) }
        let space: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        if response.body.allSatisfy(space) {
            return Answer(operation: op, object: [:], region: client.region) // CreateAlias answers with no body
        }
        func invalid(_ why: String) -> AWSError {
            AWSError(kind: .invalidResponse, service: "kms", operation: op, status: response.status, code: "InvalidResponse",
                     message: why, resource: resource)
        }
        // The data key is taken from the bytes first (straight into SecureBytes); the parser gets
        // the body without it. A body the strict scan refuses is an error, whatever the parser
        // would make of it (a key it did not take could otherwise end up in a String).
        let plaintext: SecureBytes?
        let rest: Data
        do {
            (plaintext, rest) = try SecretJSONField.extract("Plaintext", from: response.body)
        } catch let e as SecretJSONField.Malformed {
            let trimmed = response.body.drop(while: space).reversed().drop(while: space)
            if Array(trimmed.reversed()) == Array("null".utf8) { return Answer(operation: op, object: [:], region: client.region) } // moto's CreateAlias
            throw invalid("the answer is not a JSON object as KMS sends: \(e)")
        }
        guard let obj = (try? JSONSerialization.jsonObject(with: rest)) as? [String: Any] else {
            throw invalid("the answer is not a JSON object")
        }
        return Answer(operation: op, object: obj, region: client.region, plaintext: plaintext)
    }
}

/// Decodes padded standard base64 (KMS's blobs) straight into wiped memory: `Data(base64Encoded:)`
/// would leave the secret in a buffer freed unwiped. Nil when `s` is not base64.
func secretFromBase64(_ s: String) -> SecureBytes? { secretFromBase64(bytes: s.utf8) }

/// The same from bytes where they lie (a KMS answer's body).
private struct NotBase64: Error {}

func secretFromBase64<C: BidirectionalCollection>(bytes text: C) -> SecureBytes? where C.Element == UInt8 {
    guard text.count % 4 == 0 else { return nil }
    var padding = 0
    for c in text.reversed().prefix(2) { if c == 0x3D { padding += 1 } else { break } }
    let count = text.count / 4 * 3 - padding
    return try? SecureBytes(count: count) { out in
        var acc: UInt32 = 0, bits = 0, n = 0 // at most 14 live bits
        for (i, c) in text.enumerated() {
            let v: UInt32
            switch c {
            case 0x41...0x5A: v = UInt32(c - 0x41)
            case 0x61...0x7A: v = UInt32(c - 0x61 + 26)
            case 0x30...0x39: v = UInt32(c - 0x30 + 52)
            case 0x2B: v = 62
            case 0x2F: v = 63
            case 0x3D where i >= text.count - padding: continue
            default: throw NotBase64()
            }
            acc = (acc << 6 | v) & 0x3FFF
            bits += 6
            if bits >= 8 {
                bits -= 8
                guard n < count else { throw NotBase64() }
                out[n] = UInt8(truncatingIfNeeded: acc >> bits)
                n += 1
            }
        }
        guard n == count else { throw NotBase64() }
    }
}

/// Zeroes the bytes of `data` where they lie, also while other copies of the value share the
/// storage (they read zeros afterwards), as `wipeStorage(of:)` does for arrays. For buffers at
/// the end of their life.
func wipeStorage(ofData data: Data) {
    data.withUnsafeBytes { b in
        guard let p = b.baseAddress, b.count > 0 else { return }
        #if canImport(Glibc)
        explicit_bzero(UnsafeMutableRawPointer(mutating: p), b.count)
        #else
        UnsafeMutableRawBufferPointer(mutating: b).initializeMemory(as: UInt8.self, repeating: 0)
        #endif
    }
}

/// Writes a flat JSON object with exact bytes: the encryption context is written pair by pair
/// from its UTF-8 bytes (a Swift dictionary would merge canonically equivalent keys, NFC and NFD
/// `café`, which the format keeps apart). The buffer is wiped after it is copied out.
struct JSONWriter {
    private var out: [UInt8] = [0x7B]
    private var first = true

    private mutating func key(_ k: String) {
        if !first { out.append(0x2C) }
        first = false
        string(Array(k.utf8))
        out.append(0x3A)
    }

    private mutating func string(_ bytes: [UInt8]) {
        out.append(0x22)
        for c in bytes {
            switch c {
            case 0x22: out += [0x5C, 0x22]
            case 0x5C: out += [0x5C, 0x5C]
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += [0x5C, 0x75, 0x30, 0x30, hex[Int(c >> 4)], hex[Int(c & 0xF)]]
            default: out.append(c)
            }
        }
        out.append(0x22)
    }

    mutating func field(_ k: String, _ v: String) { key(k); string(Array(v.utf8)) }
    mutating func field(_ k: String, _ v: Int) { key(k); out += Array(String(v).utf8) }
    mutating func field(_ k: String, _ v: [String]) {
        key(k)
        out.append(0x5B)
        for (i, s) in v.enumerated() { if i > 0 { out.append(0x2C) }; string(Array(s.utf8)) }
        out.append(0x5D)
    }

    mutating func context(_ k: String, _ c: EncryptionContext) {
        key(k)
        out.append(0x7B)
        for (i, p) in c.sorted.pairs.enumerated() {
            if i > 0 { out.append(0x2C) }
            string(p.key)
            out.append(0x3A)
            string(p.value)
        }
        out.append(0x7D)
    }

    /// Base64 of a secret, written straight into the (wiped) buffer.
    mutating func secretBase64Field(_ k: String, _ secret: SecureBytes) {
        key(k)
        out.append(0x22)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        secret.withUnsafeBytes { b in
            out.reserveCapacity(out.count + (b.count + 2) / 3 * 4 + 16)
            var i = 0
            while i < b.count {
                let n = min(3, b.count - i)
                let v = (UInt32(b[i]) << 16) | (n > 1 ? UInt32(b[i + 1]) << 8 : 0) | (n > 2 ? UInt32(b[i + 2]) : 0)
                out.append(alphabet[Int((v >> 18) & 63)])
                out.append(alphabet[Int((v >> 12) & 63)])
                out.append(n > 1 ? alphabet[Int((v >> 6) & 63)] : 0x3D)
                out.append(n > 2 ? alphabet[Int(v & 63)] : 0x3D)
                i += 3
            }
        }
        out.append(0x22)
    }

    mutating func finish() -> Data {
        out.append(0x7D)
        let d = Data(out)
        wipe(&out)
        return d
    }
}
