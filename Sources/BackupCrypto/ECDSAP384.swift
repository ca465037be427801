import COpenSSL

/// Owns one EVP_PKEY.
final class PKeyBox: @unchecked Sendable {
    let pkey: OpaquePointer
    init(_ pkey: OpaquePointer) { self.pkey = pkey }
    deinit { EVP_PKEY_free(pkey) }
}

/// An ECDSA P-384 public key (from an encoded point, compressed or not).
public struct P384PublicKey: Sendable {
    let box: PKeyBox

    /// `point` is 04||X||Y (97 bytes) or 02/03||X (49 bytes).
    public init(encodedPoint point: [UInt8]) throws {
        guard point.count == 97 || point.count == 49 else {
            throw CryptoError(.invalidPublicKey, "a P-384 point is 49 or 97 bytes, got \(point.count)")
        }
        guard let p = point.withUnsafeBufferPointer({ hsmb_p384_public_from_point($0.baseAddress, $0.count) }) else {
            CryptoError.clearQueue()
            throw CryptoError(.invalidPublicKey, "the point is not a valid P-384 public key")
        }
        box = PKeyBox(p)
    }

    init(box: PKeyBox) { self.box = box }

    /// The SEC1 encoding of the point, compressed (49 bytes) or uncompressed (97 bytes).
    public func encodedPoint(compressed: Bool = true) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 97)
        let n = hsmb_ec_public_point(box.pkey, 0, &out, out.count)
        guard n == 97, out[0] == 0x04 else { throw CryptoError.openSSL("EVP_PKEY_get_octet_string_param(encoded-pub-key)") }
        guard compressed else { return out }
        // SEC1 2.3.3 point compression: the parity of Y picks 02 or 03, then X.
        return [0x02 | (out[96] & 1)] + out[1...48]
    }

    /// Verifies a DER signature over `message` (hashed with SHA-384). Non-DER encodings fail.
    public func isValidSignature(_ derSignature: [UInt8], for message: [UInt8]) -> Bool {
        guard let verifier = try? P384Verifier(publicKey: self) else { return false }
        verifier.update(message)
        return verifier.verify(derSignature)
    }
}

/// An ECDSA P-384 private key. Generated fresh (the envelope signs with a key per message).
public final class P384PrivateKey: @unchecked Sendable {
    let box: PKeyBox

    public init() throws {
        guard let p = hsmb_p384_generate() else { throw CryptoError.openSSL("EVP_PKEY_generate(P-384)") }
        box = PKeyBox(p)
    }

    /// A fixed key from DER (SEC1 ECPrivateKey with its public key, or PKCS#8): for published
    /// test vectors only (spec/vectors/archive), so their headers are reproducible. Not public: a
    /// message key is fresh for every message.
    package init(der: [UInt8]) throws {
        guard let p = der.withUnsafeBufferPointer({ hsmb_p384_private_from_der($0.baseAddress, $0.count) }) else {
            CryptoError.clearQueue()
            throw CryptoError(.invalidPublicKey, "not a DER P-384 private key")
        }
        box = PKeyBox(p)
    }

    public var publicKey: P384PublicKey { P384PublicKey(box: box) }

    public func signature(for message: [UInt8]) throws -> [UInt8] {
        let signer = try P384Signer(privateKey: self)
        signer.update(message)
        return try signer.finish()
    }
}

/// Owns one EVP_MD_CTX set up for DigestSign or DigestVerify.
final class MDContext {
    let ctx: OpaquePointer
    init() throws {
        guard let c = EVP_MD_CTX_new() else { throw CryptoError.openSSL("EVP_MD_CTX_new") }
        ctx = c
    }
    deinit { EVP_MD_CTX_free(ctx) }
}

/// Incremental ECDSA P-384 / SHA-384 signing (for streams whose signature covers every byte).
public final class P384Signer {
    private let md: MDContext
    private let key: P384PrivateKey
    /// The first failed update: the signature would not cover every byte, so `finish` throws it.
    private var failure: CryptoError?
    /// EVP_DigestSignUpdate; a test replaces it to make an update fail (OpenSSL offers no way).
    var updateCall: (OpaquePointer, UnsafeRawPointer?, Int) -> Int32 = { EVP_DigestSignUpdate($0, $1, $2) }

    public init(privateKey: P384PrivateKey) throws {
        key = privateKey
        md = try MDContext()
        guard EVP_DigestSignInit(md.ctx, nil, EVP_sha384(), nil, privateKey.box.pkey) == 1 else {
            throw CryptoError.openSSL("EVP_DigestSignInit")
        }
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0, failure == nil else { return }
        if updateCall(md.ctx, bytes.baseAddress, bytes.count) != 1 { failure = CryptoError.openSSL("EVP_DigestSignUpdate") }
    }
    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The DER signature.
    public func finish() throws -> [UInt8] {
        if let failure { throw failure }
        var len = 0
        guard EVP_DigestSignFinal(md.ctx, nil, &len) == 1 else { throw CryptoError.openSSL("EVP_DigestSignFinal") }
        var out = [UInt8](repeating: 0, count: len)
        guard EVP_DigestSignFinal(md.ctx, &out, &len) == 1 else { throw CryptoError.openSSL("EVP_DigestSignFinal") }
        return Array(out.prefix(len))
    }
}

/// Incremental ECDSA P-384 / SHA-384 verification.
public final class P384Verifier {
    private let md: MDContext
    private let key: P384PublicKey
    /// An update failed: the digest misses bytes, so no signature verifies (fail closed).
    private var failed = false
    /// EVP_DigestVerifyUpdate; a test replaces it to make an update fail (OpenSSL offers no way).
    var updateCall: (OpaquePointer, UnsafeRawPointer?, Int) -> Int32 = { EVP_DigestVerifyUpdate($0, $1, $2) }

    public init(publicKey: P384PublicKey) throws {
        key = publicKey
        md = try MDContext()
        guard EVP_DigestVerifyInit(md.ctx, nil, EVP_sha384(), nil, publicKey.box.pkey) == 1 else {
            throw CryptoError.openSSL("EVP_DigestVerifyInit")
        }
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0, !failed else { return }
        if updateCall(md.ctx, bytes.baseAddress, bytes.count) != 1 {
            failed = true
            CryptoError.clearQueue()
        }
    }
    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// True only for a valid DER signature (OpenSSL re-encodes and refuses non-DER forms) over
    /// every byte given: false once an update failed.
    public func verify(_ derSignature: [UInt8]) -> Bool {
        guard !failed else { return false }
        let ok = derSignature.withUnsafeBufferPointer { EVP_DigestVerifyFinal(md.ctx, $0.baseAddress, $0.count) }
        CryptoError.clearQueue()
        return ok == 1
    }
}
