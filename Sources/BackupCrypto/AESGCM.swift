import COpenSSL

/// AES-GCM with a 12-byte nonce and a 16-byte tag (the only sizes the project uses), one-shot
/// and incremental. Keys are AES keys of any role (the envelope uses 256-bit content keys).
public enum AESGCM {
    public static let tagByteCount = 16

    public static func seal<R: AESKeyRole>(_ plaintext: [UInt8], key: SecretKey<R>, nonce: GCMNonce,
                                           aad: [UInt8] = []) throws -> (ciphertext: [UInt8], tag: [UInt8]) {
        let sealer = try AESGCMSealer(key: key, nonce: nonce, aad: aad)
        let ct = try sealer.update(plaintext)
        return (ct, try sealer.finish())
    }

    /// Decrypts and verifies; no plaintext is returned unless the tag verifies.
    public static func open<R: AESKeyRole>(_ ciphertext: [UInt8], tag: [UInt8], key: SecretKey<R>,
                                           nonce: GCMNonce, aad: [UInt8] = []) throws -> [UInt8] {
        let opener = try AESGCMOpener(key: key, nonce: nonce, aad: aad)
        var pt = try opener.updateUnverified(ciphertext)
        do {
            try opener.finish(tag: tag)
        } catch {
            wipe(&pt)
            throw error
        }
        return pt
    }

    fileprivate static func makeContext<R: AESKeyRole>(key: SecretKey<R>, nonce: GCMNonce, aad: [UInt8],
                                                       encrypt: Bool) throws -> CipherContext {
        let cipher: OpaquePointer?
        switch key.byteCount {
        case 16: cipher = EVP_aes_128_gcm()
        case 24: cipher = EVP_aes_192_gcm()
        case 32: cipher = EVP_aes_256_gcm()
        default: throw CryptoError(.invalidKeySize, "AES-GCM takes 16, 24 or 32-byte keys, got \(key.byteCount)")
        }
        let context = try CipherContext()
        let ok = key.withUnsafeBytes { k in
            nonce.bytes.withUnsafeBufferPointer { iv in
                EVP_CipherInit_ex(context.ctx, cipher, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                  iv.baseAddress, encrypt ? 1 : 0)
            }
        }
        guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherInit_ex(gcm)") }
        if !aad.isEmpty {
            var outLen: Int32 = 0
            let ok = aad.withUnsafeBufferPointer {
                EVP_CipherUpdate(context.ctx, nil, &outLen, $0.baseAddress, Int32($0.count))
            }
            guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherUpdate(gcm aad)") }
        }
        return context
    }
}

extension AESGCM {
    /// A context holding the cipher and the key schedule of `key`, with no nonce yet.
    fileprivate static func makeKeyedContext<R: AESKeyRole>(key: SecretKey<R>, encrypt: Bool) throws -> CipherContext {
        let cipher: OpaquePointer?
        switch key.byteCount {
        case 16: cipher = EVP_aes_128_gcm()
        case 24: cipher = EVP_aes_192_gcm()
        case 32: cipher = EVP_aes_256_gcm()
        default: throw CryptoError(.invalidKeySize, "AES-GCM takes 16, 24 or 32-byte keys, got \(key.byteCount)")
        }
        let context = try CipherContext()
        let ok = key.withUnsafeBytes { k in
            EVP_CipherInit_ex(context.ctx, cipher, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self), nil, encrypt ? 1 : 0)
        }
        guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherInit_ex(gcm key)") }
        return context
    }

    /// Starts a new message on a keyed context: only the nonce is set (no cipher and no key, so
    /// OpenSSL keeps the key schedule), then the AAD.
    fileprivate static func restart(_ context: CipherContext, nonce: GCMNonce, aad: UnsafeRawBufferPointer, encrypt: Bool) throws {
        let ok = nonce.bytes.withUnsafeBufferPointer { iv in
            EVP_CipherInit_ex(context.ctx, nil, nil, nil, iv.baseAddress, encrypt ? 1 : 0)
        }
        guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherInit_ex(gcm nonce)") }
        if aad.count > 0 {
            guard aad.count <= Int(Int32.max) else { throw CryptoError(.invalidInputSize, "AES-GCM AAD over 2^31-1 bytes") }
            var outLen: Int32 = 0
            guard EVP_CipherUpdate(context.ctx, nil, &outLen, aad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(aad.count)) == 1 else {
                throw CryptoError.openSSL("EVP_CipherUpdate(gcm aad)")
            }
        }
    }

    /// One EVP_CipherUpdate from `input` into `output` (same length, at most 2^31-1 bytes).
    fileprivate static func transform(_ context: CipherContext, _ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws {
        guard input.count > 0 else { return }
        guard output.count >= input.count else { throw CryptoError(.invalidInputSize, "AES-GCM output buffer of \(output.count) bytes for \(input.count)") }
        guard input.count <= Int(Int32.max) else { throw CryptoError(.invalidInputSize, "AES-GCM piece over 2^31-1 bytes") }
        var outLen: Int32 = 0
        let ok = EVP_CipherUpdate(context.ctx, output.baseAddress!.assumingMemoryBound(to: UInt8.self), &outLen,
                                  input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(input.count))
        guard ok == 1, Int(outLen) == input.count else { throw CryptoError.openSSL("EVP_CipherUpdate(gcm)") }
    }
}

/// AES-GCM encryption of many messages under one key (the envelope's frames, spec/FORMAT.md
/// §3.3). The OpenSSL context and the AES key schedule are made once; each `seal` sets only a
/// new nonce and works between caller-owned buffers, so a frame costs no context, no key
/// schedule and no allocation. The caller must never repeat a nonce (the envelope's nonce is the
/// frame's sequence number under a per-message key).
public final class AESGCMFrameSealer {
    private let context: CipherContext

    public init<R: AESKeyRole>(key: SecretKey<R>) throws {
        context = try AESGCM.makeKeyedContext(key: key, encrypt: true)
    }

    /// Encrypts `plaintext` into the first `plaintext.count` bytes of `ciphertext` (which must
    /// not overlap it unless it is the same memory) and writes the 16-byte tag into `tag`.
    public func seal(_ plaintext: UnsafeRawBufferPointer, nonce: GCMNonce, aad: UnsafeRawBufferPointer,
                     ciphertext: UnsafeMutableRawBufferPointer, tag: UnsafeMutableRawBufferPointer) throws {
        guard tag.count >= AESGCM.tagByteCount else { throw CryptoError(.unsupportedTagLength, "AES-GCM tag buffer under 16 bytes") }
        try AESGCM.restart(context, nonce: nonce, aad: aad, encrypt: true)
        try AESGCM.transform(context, plaintext, into: ciphertext)
        var outLen: Int32 = 0
        var scratch: (UInt64, UInt64) = (0, 0)
        let ok = withUnsafeMutableBytes(of: &scratch) { s in
            EVP_CipherFinal_ex(context.ctx, s.baseAddress!.assumingMemoryBound(to: UInt8.self), &outLen)
        }
        guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherFinal_ex(gcm)") }
        guard EVP_CIPHER_CTX_ctrl(context.ctx, EVP_CTRL_GCM_GET_TAG, Int32(AESGCM.tagByteCount), tag.baseAddress) == 1 else {
            throw CryptoError.openSSL("EVP_CTRL_GCM_GET_TAG")
        }
    }
}

/// AES-GCM decryption of many messages under one key (the envelope's frames): the counterpart
/// of `AESGCMFrameSealer`. `open` writes plaintext into a caller-owned buffer and returns only
/// after the tag verified; when it does not, the bytes written are wiped before it throws, so
/// the caller never sees unauthenticated plaintext.
public final class AESGCMFrameOpener {
    private let context: CipherContext

    public init<R: AESKeyRole>(key: SecretKey<R>) throws {
        context = try AESGCM.makeKeyedContext(key: key, encrypt: false)
    }

    public func open(_ ciphertext: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer, nonce: GCMNonce,
                     aad: UnsafeRawBufferPointer, plaintext: UnsafeMutableRawBufferPointer) throws {
        guard tag.count == AESGCM.tagByteCount else {
            throw CryptoError(.unsupportedTagLength, "AES-GCM tag must be 16 bytes, got \(tag.count)")
        }
        try AESGCM.restart(context, nonce: nonce, aad: aad, encrypt: false)
        do {
            try AESGCM.transform(context, ciphertext, into: plaintext)
        } catch {
            if ciphertext.count > 0, plaintext.count > 0 { hsmb_cleanse(plaintext.baseAddress, min(ciphertext.count, plaintext.count)) }
            throw error
        }
        var t: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &t) { $0.copyMemory(from: tag) }
        guard withUnsafeMutableBytes(of: &t, { EVP_CIPHER_CTX_ctrl(context.ctx, EVP_CTRL_GCM_SET_TAG, Int32(AESGCM.tagByteCount), $0.baseAddress) }) == 1 else {
            if ciphertext.count > 0 { hsmb_cleanse(plaintext.baseAddress, ciphertext.count) }
            throw CryptoError.openSSL("EVP_CTRL_GCM_SET_TAG")
        }
        var outLen: Int32 = 0
        var scratch: (UInt64, UInt64) = (0, 0)
        let ok = withUnsafeMutableBytes(of: &scratch) { s in
            EVP_CipherFinal_ex(context.ctx, s.baseAddress!.assumingMemoryBound(to: UInt8.self), &outLen)
        }
        guard ok == 1 else {
            if ciphertext.count > 0 { hsmb_cleanse(plaintext.baseAddress, ciphertext.count) }
            CryptoError.clearQueue()
            throw CryptoError(.authenticationFailed, "AES-GCM tag did not verify")
        }
    }
}

/// Incremental AES-GCM encryption: feed plaintext in pieces, then take the tag. Once it has
/// failed or finished it refuses further use.
public final class AESGCMSealer {
    private let context: CipherContext
    private var done = false

    public init<R: AESKeyRole>(key: SecretKey<R>, nonce: GCMNonce, aad: [UInt8] = []) throws {
        context = try AESGCM.makeContext(key: key, nonce: nonce, aad: aad, encrypt: true)
    }

    public func update(_ plaintext: UnsafeRawBufferPointer) throws -> [UInt8] {
        precondition(!done, "AESGCMSealer used after finish()")
        if plaintext.isEmpty { return [] }
        return try context.update(plaintext, capacity: plaintext.count, function: "EVP_CipherUpdate(gcm)")
    }

    public func update(_ plaintext: [UInt8]) throws -> [UInt8] {
        try plaintext.withUnsafeBytes { try update($0) }
    }

    public func finish() throws -> [UInt8] {
        precondition(!done, "AESGCMSealer finished twice")
        done = true
        var outLen: Int32 = 0
        var scratch = [UInt8](repeating: 0, count: 16)
        guard EVP_CipherFinal_ex(context.ctx, &scratch, &outLen) == 1 else { throw CryptoError.openSSL("EVP_CipherFinal_ex(gcm)") }
        var tag = [UInt8](repeating: 0, count: AESGCM.tagByteCount)
        guard EVP_CIPHER_CTX_ctrl(context.ctx, EVP_CTRL_GCM_GET_TAG, Int32(AESGCM.tagByteCount), &tag) == 1 else {
            throw CryptoError.openSSL("EVP_CTRL_GCM_GET_TAG")
        }
        return tag
    }
}

/// Incremental AES-GCM decryption. `updateUnverified` returns plaintext that is NOT yet
/// authenticated: the caller must hold it back until `finish(tag:)` succeeds (the envelope does
/// this per frame, so memory stays bounded by the frame size).
public final class AESGCMOpener {
    private let context: CipherContext
    private var done = false

    public init<R: AESKeyRole>(key: SecretKey<R>, nonce: GCMNonce, aad: [UInt8] = []) throws {
        context = try AESGCM.makeContext(key: key, nonce: nonce, aad: aad, encrypt: false)
    }

    public func updateUnverified(_ ciphertext: UnsafeRawBufferPointer) throws -> [UInt8] {
        precondition(!done, "AESGCMOpener used after finish()")
        if ciphertext.isEmpty { return [] }
        return try context.update(ciphertext, capacity: ciphertext.count, function: "EVP_CipherUpdate(gcm)")
    }

    public func updateUnverified(_ ciphertext: [UInt8]) throws -> [UInt8] {
        try ciphertext.withUnsafeBytes { try updateUnverified($0) }
    }

    /// Checks the tag; throws `authenticationFailed` if it does not match.
    public func finish(tag: [UInt8]) throws {
        precondition(!done, "AESGCMOpener finished twice")
        done = true
        guard tag.count == AESGCM.tagByteCount else {
            throw CryptoError(.unsupportedTagLength, "AES-GCM tag must be 16 bytes, got \(tag.count)")
        }
        var t = tag
        guard EVP_CIPHER_CTX_ctrl(context.ctx, EVP_CTRL_GCM_SET_TAG, Int32(t.count), &t) == 1 else {
            throw CryptoError.openSSL("EVP_CTRL_GCM_SET_TAG")
        }
        var outLen: Int32 = 0
        var scratch = [UInt8](repeating: 0, count: 16)
        guard EVP_CipherFinal_ex(context.ctx, &scratch, &outLen) == 1 else {
            CryptoError.clearQueue()
            throw CryptoError(.authenticationFailed, "AES-GCM tag did not verify")
        }
    }
}
