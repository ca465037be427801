import COpenSSL

// Added by the HSM work (issue 3): HMAC-SHA256 for the inner header seal, and key-material
// generation for the simulated HSM's `populate` (RSA from OpenSSL's generator; P-384 key pairs
// from a given scalar, so a seeded populate is reproducible).

/// HMAC-SHA256 (FIPS 198-1) over a message, keyed by a derivation/MAC key.
public enum HMACSHA256 {
    public static let byteCount = 32

    public static func authenticationCode<C: ContiguousCollection>(key: DerivationKey, message: C) throws -> [UInt8] {
        try key.withUnsafeBytes { k in
            try message.withContiguousBytes { m in try HMAC.authenticationCode(.sha256, key: k, data: Array(m)) }
        }.unsafeCopy()
    }
}

/// Asymmetric key material for HSM-held keys, exported as DER into wiped memory.
public enum AsymmetricKeyMaterial {
    public static let allowedRSABits = 1024...16384

    /// A fresh RSA key pair of `bits` (public exponent 65537) from OpenSSL's generator,
    /// returned as a DER RSAPrivateKey (PKCS #1). Not reproducible from a seed.
    public static func generateRSA(bits: Int) throws -> SecureBytes {
        guard allowedRSABits.contains(bits) else {
            throw CryptoError(.invalidKeySize, "RSA modulus must be \(allowedRSABits) bits, got \(bits)")
        }
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else { throw CryptoError.openSSL("EVP_PKEY_CTX_new_from_name(RSA)") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) > 0, EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, Int32(bits)) > 0 else {
            throw CryptoError.openSSL("EVP_PKEY_keygen_init(RSA)")
        }
        var pkey: OpaquePointer? = nil
        guard EVP_PKEY_generate(ctx, &pkey) > 0, let pkey else { throw CryptoError.openSSL("EVP_PKEY_generate(RSA)") }
        defer { EVP_PKEY_free(pkey) }
        return try exportDER(pkey)
    }

    /// A P-384 key pair from a private scalar (48 bytes, 1 <= d < n): returns d || Q with Q the
    /// uncompressed public point (04 || X || Y), 48 + 97 bytes. Throws if d is out of range.
    public static func p384KeyPair(scalar: SecureBytes) throws -> SecureBytes {
        guard scalar.count == 48 else { throw CryptoError(.invalidKeySize, "P-384 scalar must be 48 bytes, got \(scalar.count)") }
        guard let group = EC_GROUP_new_by_curve_name(NID_secp384r1) else { throw CryptoError.openSSL("EC_GROUP_new_by_curve_name") }
        defer { EC_GROUP_free(group) }
        guard let bnCtx = BN_CTX_new() else { throw CryptoError.openSSL("BN_CTX_new") }
        defer { BN_CTX_free(bnCtx) }
        guard let d = scalar.withUnsafeBytes({ BN_bin2bn($0.baseAddress!.assumingMemoryBound(to: UInt8.self), 48, nil) }) else {
            throw CryptoError.openSSL("BN_bin2bn")
        }
        defer { BN_clear_free(d) }
        guard let order = EC_GROUP_get0_order(group) else { throw CryptoError.openSSL("EC_GROUP_get0_order") }
        guard BN_is_zero(d) == 0, BN_cmp(d, order) < 0 else {
            throw CryptoError(.invalidKeySize, "P-384 scalar out of range")
        }
        guard let q = EC_POINT_new(group) else { throw CryptoError.openSSL("EC_POINT_new") }
        defer { EC_POINT_free(q) }
        guard EC_POINT_mul(group, q, d, nil, nil, bnCtx) == 1 else { throw CryptoError.openSSL("EC_POINT_mul") }
        var point = [UInt8](repeating: 0, count: 97)
        let n = EC_POINT_point2oct(group, q, POINT_CONVERSION_UNCOMPRESSED, &point, 97, bnCtx)
        guard n == 97 else { throw CryptoError.openSSL("EC_POINT_point2oct") }
        return SecureBytes(count: 48 + 97) { out in
            scalar.withUnsafeBytes { s in out.baseAddress!.copyMemory(from: s.baseAddress!, byteCount: 48) }
            point.withUnsafeBytes { p in (out.baseAddress! + 48).copyMemory(from: p.baseAddress!, byteCount: 97) }
        }
    }

    private static func exportDER(_ pkey: OpaquePointer) throws -> SecureBytes {
        let len = i2d_PrivateKey(pkey, nil)
        guard len > 0 else { throw CryptoError.openSSL("i2d_PrivateKey") }
        return try SecureBytes(count: Int(len)) { out in
            var p: UnsafeMutablePointer<UInt8>? = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
            guard i2d_PrivateKey(pkey, &p) == len else { throw CryptoError.openSSL("i2d_PrivateKey") }
        }
    }
}
