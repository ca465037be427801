import COpenSSL

/// Bytes that hold a secret: one heap allocation, wiped (`hsmb_cleanse`) when the last
/// reference goes, never printed. Immutable after creation, so it is safe to share.
public final class SecureBytes: @unchecked Sendable {
    private let pointer: UnsafeMutableRawPointer
    public let count: Int

    /// Copies `bytes` in. The caller should wipe its own copy if it has one (see `wipe(_:)`).
    public init<C: Collection>(copying bytes: C) where C.Element == UInt8 {
        count = bytes.count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
        var i = 0
        for b in bytes { pointer.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    /// Allocates `count` bytes and lets `fill` write them; used so a secret produced by OpenSSL
    /// lands directly in wiped memory.
    public init(count: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        // Fill before the object exists: if `fill` throws, no deinit runs, so clean up here.
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: max(count, 1))
        do {
            try fill(UnsafeMutableRawBufferPointer(start: p, count: count))
        } catch {
            hsmb_cleanse(p, max(count, 1))
            p.deallocate()
            throw error
        }
        self.count = count
        pointer = p
    }

    deinit {
        hsmb_cleanse(pointer, max(count, 1))
        pointer.deallocate()
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// A plain copy of the secret. Only for the few places that must hand the bytes on (an
    /// explicit export command, writing a key file); the caller wipes it with `wipe(_:)`.
    public func unsafeCopy() -> [UInt8] {
        withUnsafeBytes { Array($0) }
    }

    /// Constant-time equality (CRYPTO_memcmp); lengths are not secret.
    public func constantTimeEquals(_ other: SecureBytes) -> Bool {
        guard count == other.count else { return false }
        return withUnsafeBytes { a in other.withUnsafeBytes { b in
            count == 0 || CRYPTO_memcmp(a.baseAddress, b.baseAddress, count) == 0 } }
    }
}

extension SecureBytes: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { "SecureBytes(\(count) bytes, redacted)" }
    public var debugDescription: String { description }
}

/// Overwrites an array that held secret bytes. The array must be the only reference to its
/// storage: if another copy of the value shares it, copy-on-write gives this one fresh storage
/// first, and the shared bytes are left as they were (see `wipeStorage(of:)`).
public func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { if $0.count > 0 { hsmb_cleanse($0.baseAddress, $0.count) } }
    bytes.removeAll()
}

/// Overwrites, in place, the storage an array's bytes live in, even while other copies of the
/// value share it (they read zeros afterwards). For buffers at the end of their life whose other
/// holders are about to release them unread, such as a pipeline job's pieces after its worker
/// used them: `wipe(&)` on such a copy would copy the secret to wipe the copy, and miss the
/// storage that held it.
public func wipeStorage(of bytes: [UInt8]) {
    bytes.withUnsafeBufferPointer { b in
        if let p = b.baseAddress, b.count > 0 { hsmb_cleanse(UnsafeMutableRawPointer(mutating: p), b.count) }
    }
}

/// Constant-time comparison of two byte strings (for tags, MACs, fingerprints).
public func constantTimeEqual<A: Collection, B: Collection>(_ a: A, _ b: B) -> Bool
where A.Element == UInt8, B.Element == UInt8 {
    guard a.count == b.count else { return false }
    let x = Array(a), y = Array(b)
    if x.isEmpty { return true }
    return x.withUnsafeBytes { p in y.withUnsafeBytes { q in
        CRYPTO_memcmp(p.baseAddress, q.baseAddress, x.count) == 0 } }
}

/// A reusable, growable working buffer for bytes that may be secret (plaintext frames, read and
/// write buffers of a stream): one heap allocation, wiped (`hsmb_cleanse`) when it grows
/// (the old storage), on `wipe()` and on deinit. Unlike `SecureBytes` it is mutable and owned by
/// one streaming object at a time; it is not Sendable and has no `description` of its contents.
public final class SecretBuffer {
    private var pointer: UnsafeMutableRawPointer
    public private(set) var capacity: Int

    public init(capacity: Int = 0) {
        self.capacity = max(capacity, 0)
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 1), alignment: 16)
    }

    deinit {
        hsmb_cleanse(pointer, max(capacity, 1))
        pointer.deallocate()
    }

    /// Makes the capacity at least `count`, keeping the first `preserving` bytes; the old
    /// storage is wiped before it is freed.
    public func reserve(_ count: Int, preserving: Int = 0) {
        guard count > capacity else { return }
        precondition(preserving >= 0 && preserving <= capacity, "SecretBuffer.reserve: preserving \(preserving) of \(capacity)")
        let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16)
        if preserving > 0 { p.copyMemory(from: pointer, byteCount: preserving) }
        hsmb_cleanse(pointer, max(capacity, 1))
        pointer.deallocate()
        pointer = p
        capacity = count
    }

    /// Overwrites the first `count` bytes (all of them by default).
    public func wipe(count: Int? = nil) {
        let n = min(count ?? capacity, capacity)
        if n > 0 { hsmb_cleanse(pointer, n) }
    }

    /// The whole capacity; valid only inside `body` (a later `reserve` moves the storage).
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: capacity))
    }
}

extension SecretBuffer: CustomStringConvertible, CustomDebugStringConvertible {
    public var description: String { "SecretBuffer(capacity \(capacity), redacted)" }
    public var debugDescription: String { description }
}
