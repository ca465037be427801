import COpenSSL

/// SP 800-108 KDF in counter mode with HMAC-SHA256 and a 32-bit big-endian counter placed
/// before the fixed input data.
public enum KBKDF {
    /// Largest output: SP 800-108 allows 2^32-1 PRF blocks; we cap far lower, at 1 KiB, which
    /// is more than any key this project derives.
    public static let maximumOutputBytes = 1024

    /// The fixed input data as SP 800-108 §5 lays it out: Label || 0x00 || Context || [L]32,
    /// with L the output length in bits, big-endian.
    public static func fixedInput(label: [UInt8], context: [UInt8], outputBytes: Int) -> [UInt8] {
        var out = label
        out.append(0x00)
        out.append(contentsOf: context)
        let bits = UInt32(outputBytes * 8)
        out.append(contentsOf: [UInt8(bits >> 24), UInt8(truncatingIfNeeded: bits >> 16),
                                UInt8(truncatingIfNeeded: bits >> 8), UInt8(truncatingIfNeeded: bits)])
        return out
    }

    /// Derives `outputBytes` from `key` and an opaque fixed input (as the NIST vectors give it).
    public static func derive(key: UnsafeRawBufferPointer, fixedInput: [UInt8], outputBytes: Int) throws -> SecureBytes {
        guard outputBytes > 0, outputBytes <= maximumOutputBytes else {
            throw CryptoError(.outputTooLarge, "KBKDF output must be 1...\(maximumOutputBytes) bytes, got \(outputBytes)")
        }
        guard key.count > 0 else { throw CryptoError(.invalidKeySize, "KBKDF key must not be empty") }
        return try SecureBytes(count: outputBytes) { out in
            let ok = fixedInput.withUnsafeBufferPointer { f in
                hsmb_kbkdf_ctr_hmac_sha256(key.baseAddress!.assumingMemoryBound(to: UInt8.self), key.count,
                                           f.baseAddress, f.count,
                                           out.baseAddress!.assumingMemoryBound(to: UInt8.self), outputBytes)
            }
            guard ok == 1 else { throw CryptoError.openSSL("EVP_KDF_derive(KBKDF)") }
        }
    }

    /// Derives a typed key from a secret with a label and a context (the only way a derived
    /// secret becomes a key).
    public static func deriveKey<R: SecretKeyRole>(_ role: R.Type = R.self, from secret: SecureBytes,
                                                   label: String, context: [UInt8]) throws -> SecretKey<R> {
        let n = R.allowedByteCounts.max()!
        let fixed = fixedInput(label: Array(label.utf8), context: context, outputBytes: n)
        let bytes = try secret.withUnsafeBytes { try derive(key: $0, fixedInput: fixed, outputBytes: n) }
        return try SecretKey<R>(secret: bytes)
    }
}

/// HKDF (RFC 5869) with SHA-512, extract then expand: the v2 envelope suites' KDF.
public enum HKDFSHA512 {
    public static let maximumOutputBytes = 255 * 64

    public static func derive(ikm: UnsafeRawBufferPointer, salt: [UInt8], info: [UInt8], outputBytes: Int) throws -> SecureBytes {
        try HKDF.derive(.sha512, ikm: ikm, salt: salt, info: info, outputBytes: outputBytes)
    }

    /// Derives a typed key from another key's bytes.
    public static func deriveKey<R: SecretKeyRole, S: SecretKeyRole>(_ role: R.Type = R.self, from key: SecretKey<S>,
                                                                   salt: [UInt8], info: [UInt8], byteCount: Int? = nil) throws -> SecretKey<R> {
        let n = byteCount ?? R.allowedByteCounts.max()!
        let bytes = try key.withUnsafeBytes { try derive(ikm: $0, salt: salt, info: info, outputBytes: n) }
        return try SecretKey<R>(secret: bytes)
    }
}
