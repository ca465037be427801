import COpenSSL

/// AES key wrap, SP 800-38F: KW (RFC 3394) and KW with padding, KWP (RFC 5649), on OpenSSL's
/// EVP wrap ciphers. OpenSSL accepts empty input and returns success, so the size rules of the
/// modes are checked here before any call.
public enum AESKeyWrap {
    /// The largest input we wrap in one call: KWP's 32-bit length field, and Int32 for EVP.
    public static let maximumInputBytes = Int(Int32.max) - 16

    // MARK: KW (RFC 3394)

    /// Wraps `plaintext` (a multiple of 8 bytes, at least 16) under `key`.
    public static func wrap<R: AESKeyRole>(_ plaintext: UnsafeRawBufferPointer, key: SecretKey<R>) throws -> [UInt8] {
        guard plaintext.count >= 16, plaintext.count % 8 == 0, plaintext.count <= maximumInputBytes else {
            throw CryptoError(.invalidInputSize,
                              "KW plaintext must be a multiple of 8 bytes and at least 16, got \(plaintext.count)")
        }
        return try run(plaintext, key: key, padded: false, encrypt: true)
    }

    /// Unwraps a KW ciphertext (a multiple of 8 bytes, at least 24) into wiped memory.
    public static func unwrap<R: AESKeyRole>(_ ciphertext: UnsafeRawBufferPointer, key: SecretKey<R>) throws -> SecureBytes {
        guard ciphertext.count >= 24, ciphertext.count % 8 == 0, ciphertext.count <= maximumInputBytes else {
            throw CryptoError(.invalidInputSize,
                              "KW ciphertext must be a multiple of 8 bytes and at least 24, got \(ciphertext.count)")
        }
        return try runSecure(ciphertext, key: key, padded: false)
    }

    // MARK: KWP (RFC 5649)

    /// Wraps `plaintext` (1 byte or more) under `key` with padding.
    public static func wrapPadded<R: AESKeyRole>(_ plaintext: UnsafeRawBufferPointer, key: SecretKey<R>) throws -> [UInt8] {
        guard plaintext.count >= 1, plaintext.count <= maximumInputBytes else {
            throw CryptoError(.invalidInputSize, "KWP plaintext must be 1 byte or more, got \(plaintext.count)")
        }
        return try run(plaintext, key: key, padded: true, encrypt: true)
    }

    /// Unwraps a KWP ciphertext (a multiple of 8 bytes, at least 16) into wiped memory.
    public static func unwrapPadded<R: AESKeyRole>(_ ciphertext: UnsafeRawBufferPointer, key: SecretKey<R>) throws -> SecureBytes {
        guard ciphertext.count >= 16, ciphertext.count % 8 == 0, ciphertext.count <= maximumInputBytes else {
            throw CryptoError(.invalidInputSize,
                              "KWP ciphertext must be a multiple of 8 bytes and at least 16, got \(ciphertext.count)")
        }
        return try runSecure(ciphertext, key: key, padded: true)
    }

    // MARK: Array conveniences

    public static func wrap<R: AESKeyRole>(_ plaintext: [UInt8], key: SecretKey<R>) throws -> [UInt8] {
        try plaintext.withUnsafeBytes { try wrap($0, key: key) }
    }
    public static func unwrap<R: AESKeyRole>(_ ciphertext: [UInt8], key: SecretKey<R>) throws -> SecureBytes {
        try ciphertext.withUnsafeBytes { try unwrap($0, key: key) }
    }
    public static func wrapPadded<R: AESKeyRole>(_ plaintext: [UInt8], key: SecretKey<R>) throws -> [UInt8] {
        try plaintext.withUnsafeBytes { try wrapPadded($0, key: key) }
    }
    public static func unwrapPadded<R: AESKeyRole>(_ ciphertext: [UInt8], key: SecretKey<R>) throws -> SecureBytes {
        try ciphertext.withUnsafeBytes { try unwrapPadded($0, key: key) }
    }
    /// Wraps one key under another (e.g. the EBK under the PBK) without the bytes leaving wiped memory.
    public static func wrap<R: AESKeyRole, S: SecretKeyRole>(key wrapped: SecretKey<S>, under key: SecretKey<R>) throws -> [UInt8] {
        try wrapped.withUnsafeBytes { try wrap($0, key: key) }
    }

    // MARK: Core

    private static func cipher(keyBytes: Int, padded: Bool) throws -> OpaquePointer {
        let c: OpaquePointer?
        switch (keyBytes, padded) {
        case (16, false): c = EVP_aes_128_wrap()
        case (24, false): c = EVP_aes_192_wrap()
        case (32, false): c = EVP_aes_256_wrap()
        case (16, true): c = EVP_aes_128_wrap_pad()
        case (24, true): c = EVP_aes_192_wrap_pad()
        case (32, true): c = EVP_aes_256_wrap_pad()
        default: throw CryptoError(.invalidKeySize, "AES key wrap takes 16, 24 or 32-byte keys, got \(keyBytes)")
        }
        guard let c else { throw CryptoError.openSSL("EVP_aes_*_wrap") }
        return c
    }

    private static func context<R: AESKeyRole>(key: SecretKey<R>, padded: Bool, encrypt: Bool) throws -> CipherContext {
        let cipher = try cipher(keyBytes: key.byteCount, padded: padded)
        let context = try CipherContext()
        EVP_CIPHER_CTX_set_flags(context.ctx, hsmb_wrap_allow_flag())
        let ok = key.withUnsafeBytes { k in
            EVP_CipherInit_ex(context.ctx, cipher, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self),
                              nil, encrypt ? 1 : 0)
        }
        guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherInit_ex(wrap)") }
        return context
    }

    private static func run<R: AESKeyRole>(_ input: UnsafeRawBufferPointer, key: SecretKey<R>,
                                           padded: Bool, encrypt: Bool) throws -> [UInt8] {
        let context = try context(key: key, padded: padded, encrypt: encrypt)
        return try context.update(input, capacity: input.count + 16, function: "EVP_CipherUpdate(wrap)")
    }

    private static func runSecure<R: AESKeyRole>(_ input: UnsafeRawBufferPointer, key: SecretKey<R>,
                                                 padded: Bool) throws -> SecureBytes {
        let context = try context(key: key, padded: padded, encrypt: false)
        var outLen: Int32 = 0
        // Unwrap into a scratch buffer in wiped memory, then copy the exact length.
        let scratch = try SecureBytes(count: input.count) { out in
            let ok = EVP_CipherUpdate(context.ctx, out.baseAddress!.assumingMemoryBound(to: UInt8.self), &outLen,
                                      input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(input.count))
            guard ok == 1, outLen > 0 else {
                CryptoError.clearQueue()
                throw CryptoError(.authenticationFailed,
                                  padded ? "KWP unwrap failed: integrity check (AIV, length or padding) did not pass"
                                         : "KW unwrap failed: integrity check value did not match")
            }
        }
        return scratch.withUnsafeBytes { SecureBytes(copying: $0.prefix(Int(outLen))) }
    }
}
