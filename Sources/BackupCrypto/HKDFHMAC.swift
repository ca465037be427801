import COpenSSL

/// HMAC (one-shot, EVP_Q_mac) and RFC 5869 HKDF over a chosen SHA-2 hash. The envelope's
/// legacy (v1) suites derive with HKDF-SHA256/384; the inner header seal is HMAC-SHA256.
public enum HMACHash: String, Sendable {
    case sha256 = "SHA256", sha384 = "SHA384", sha512 = "SHA512"

    public var byteCount: Int {
        switch self { case .sha256: 32; case .sha384: 48; case .sha512: 64 }
    }
}

public enum HMAC {
    /// HMAC of `data` under `key`. The result lands in wiped memory (it is often a PRK).
    public static func authenticationCode(_ hash: HMACHash, key: UnsafeRawBufferPointer,
                                          data: [UInt8]) throws -> SecureBytes {
        try SecureBytes(count: hash.byteCount) { out in
            var outLen = 0
            var zero: UInt8 = 0
            let r: UnsafeMutablePointer<UInt8>? = data.withUnsafeBufferPointer { d in
                withUnsafeMutablePointer(to: &zero) { z in
                    EVP_Q_mac(nil, "HMAC", nil, hash.rawValue, nil,
                              key.count > 0 ? key.baseAddress : UnsafeRawPointer(z), key.count,
                              d.count > 0 ? d.baseAddress : UnsafePointer(z), d.count,
                              out.baseAddress!.assumingMemoryBound(to: UInt8.self), out.count, &outLen)
                }
            }
            guard r != nil, outLen == hash.byteCount else { throw CryptoError.openSSL("EVP_Q_mac(HMAC-\(hash.rawValue))") }
        }
    }
}

/// HKDF (RFC 5869) over a chosen SHA-2 hash, on OpenSSL's HKDF. The v1 envelope suites use
/// SHA-256 and SHA-384; the v2 suites SHA-512 (`HKDFSHA512`).
public enum HKDF {
    /// Extract (an empty salt means HashLen zero bytes) then expand to `outputBytes`.
    public static func derive(_ hash: HMACHash, ikm: UnsafeRawBufferPointer, salt: [UInt8], info: [UInt8],
                              outputBytes: Int) throws -> SecureBytes {
        guard outputBytes > 0, outputBytes <= 255 * hash.byteCount else {
            throw CryptoError(.outputTooLarge, "HKDF-\(hash.rawValue) output must be 1...\(255 * hash.byteCount) bytes, got \(outputBytes)")
        }
        return try SecureBytes(count: outputBytes) { out in
            let ok = salt.withUnsafeBufferPointer { s in
                info.withUnsafeBufferPointer { i in
                    hsmb_hkdf(hash.rawValue, ikm.baseAddress?.assumingMemoryBound(to: UInt8.self), ikm.count,
                              s.baseAddress, s.count, i.baseAddress, i.count,
                              out.baseAddress!.assumingMemoryBound(to: UInt8.self), outputBytes)
                }
            }
            guard ok == 1 else { throw CryptoError.openSSL("EVP_KDF_derive(HKDF-\(hash.rawValue))") }
        }
    }
}
