import COpenSSL

/// SHA-256, one-shot and incremental (EVP_MD_CTX owned by the hasher).
public final class SHA256Hasher {
    public static let digestByteCount = 32
    private let ctx: OpaquePointer
    private var finished = false

    /// The implementation, fetched once (issue 17): with OpenSSL 3, initialising with
    /// `EVP_sha256()` looks the algorithm up in the provider store again on every init (a
    /// locked, case-insensitive name search), and a verify or restore makes a hasher per object.
    nonisolated(unsafe) private static let algorithm: OpaquePointer? = EVP_MD_fetch(nil, "SHA256", nil)

    public init() {
        guard let c = EVP_MD_CTX_new(), EVP_DigestInit_ex(c, Self.algorithm ?? EVP_sha256(), nil) == 1 else {
            fatalError("SHA-256 is not available from OpenSSL")
        }
        ctx = c
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(!finished, "SHA256Hasher used after finalize()")
        if bytes.count > 0 { _ = EVP_DigestUpdate(ctx, bytes.baseAddress, bytes.count) }
    }

    public func update<C: ContiguousCollection>(_ bytes: C) {
        bytes.withContiguousBytes { update($0) }
    }

    /// Starts a new digest on the same context (the algorithm is kept): a thread that hashes
    /// many small objects reuses one hasher instead of allocating a context per object.
    public func reset() {
        guard EVP_DigestInit_ex2(ctx, nil, nil) == 1 else { fatalError("SHA-256 context could not be reset") }
        finished = false
    }

    public func finalize() -> [UInt8] {
        precondition(!finished, "SHA256Hasher finalized twice")
        finished = true
        var out = [UInt8](repeating: 0, count: Self.digestByteCount)
        var len: UInt32 = 0
        _ = out.withUnsafeMutableBufferPointer { EVP_DigestFinal_ex(ctx, $0.baseAddress, &len) }
        return out
    }

    public static func hash<C: ContiguousCollection>(_ bytes: C) -> [UInt8] {
        let h = SHA256Hasher()
        h.update(bytes)
        return h.finalize()
    }
}

/// Byte collections with contiguous storage ([UInt8], ArraySlice<UInt8>).
public protocol ContiguousCollection {
    func withContiguousBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}
extension Array: ContiguousCollection where Element == UInt8 {
    public func withContiguousBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}
extension ArraySlice: ContiguousCollection where Element == UInt8 {
    public func withContiguousBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}
