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
        // Not zero-filled first: the array holds only the bytes OpenSSL wrote.
        try [UInt8](unsafeUninitializedCapacity: max(capacity, 1)) { o, initialized in
            var outLen: Int32 = 0
            let ok = EVP_CipherUpdate(ctx, o.baseAddress!, &outLen,
                                      input.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(input.count))
            guard ok == 1, outLen >= 0, Int(outLen) <= o.count else {
                initialized = 0
                throw CryptoError.openSSL(function)
            }
            initialized = Int(outLen)
        }
    }
}
