import COpenSSL

/// Owns one EVP_CIPHER_CTX and frees it on deinit. Every symmetric cipher in this module runs
/// through it, so no OpenSSL pointer escapes the module.
final class CipherContext {
    let ctx: OpaquePointer

    init() throws {
        guard let c = EVP_CIPHER_CTX_new() else { throw CryptoError.openSSL("EVP_CIPHER_CTX_new") }
        ctx = c
    }

    deinit { EVP_CIPHER_CTX_free(ctx) }

    /// One EVP_CipherUpdate over `input`, returning what it wrote into a buffer of `capacity`.
    func update(_ input: UnsafeRawBufferPointer, capacity: Int, function: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: max(capacity, 1))
        var outLen: Int32 = 0
        let ok = out.withUnsafeMutableBytes { o in
            EVP_CipherUpdate(ctx, o.baseAddress!.assumingMemoryBound(to: UInt8.self), &outLen,
                             input.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(input.count))
        }
        guard ok == 1, outLen >= 0 else { throw CryptoError.openSSL(function) }
        out.removeLast(out.count - Int(outLen))
        return out
    }
}
