import COpenSSL

/// HMAC (one-shot, EVP_Q_mac) and RFC 5869 HKDF over a chosen SHA-2 hash. Added for the
/// envelope's legacy (message format v1) suites, which derive with HKDF-SHA256 and
/// HKDF-SHA384; the v2 suites use `HKDFSHA512`.
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

public enum HKDF {
    /// Extract (salt empty = HashLen zero bytes, as RFC 5869 says) then expand to `outputBytes`.
    public static func derive(_ hash: HMACHash, ikm: UnsafeRawBufferPointer, salt: [UInt8], info: [UInt8],
                              outputBytes: Int) throws -> SecureBytes {
        guard outputBytes > 0, outputBytes <= 255 * hash.byteCount else {
            throw CryptoError(.outputTooLarge, "HKDF-\(hash.rawValue) output must be 1...\(255 * hash.byteCount) bytes, got \(outputBytes)")
        }
        let realSalt = salt.isEmpty ? [UInt8](repeating: 0, count: hash.byteCount) : salt
        let prk = try realSalt.withUnsafeBytes { s in
            try HMAC.authenticationCode(hash, key: s, data: ikm.count > 0 ? Array(ikm) : [])
        }
        var okm = [UInt8]()
        var previous = [UInt8]()
        var counter: UInt8 = 1
        defer { wipe(&previous) }
        while okm.count < outputBytes {
            var block = previous
            block.append(contentsOf: info)
            block.append(counter)
            let t = try prk.withUnsafeBytes { try HMAC.authenticationCode(hash, key: $0, data: block) }
            wipe(&block)
            wipe(&previous)
            previous = t.unsafeCopy()
            okm.append(contentsOf: previous)
            counter &+= 1
        }
        defer { wipe(&okm) }
        return SecureBytes(copying: okm.prefix(outputBytes))
    }
}
