// SipHash-2-4 with a 128-bit output (Aumasson and Bernstein, the reference code's `outlen = 16`
// variant): a keyed hash for the manifest's set of paths seen (issue 17). The set keeps a path's
// 128-bit hash, not the path, under a random key per process, so distinct paths a manifest's
// author chooses collide only by chance (2^-128 per pair) and cannot crowd one slot.
//
// Why not Swift's `Hasher` twice (what the set used): two opaque calls per path, each seeding,
// combining and finalizing SipHash-1-3, were 37% of the main thread's time while it parses a
// 97,868-record manifest, the one stretch of a verification where the other threads wait for
// it. One inlined pass is a fifth of that. The output equals OpenSSL's EVP_MAC "SIPHASH" with
// size 16 (`SipHashTests`).

public struct SipHash128: Sendable {
    private let k0: UInt64
    private let k1: UInt64

    /// A 16-byte key (little-endian k0 || k1, as the reference code reads it).
    public init(key: [UInt8]) {
        precondition(key.count == 16, "SipHash takes a 16-byte key")
        k0 = key.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self)) }
        k1 = key.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
    }

    /// A key from the CSPRNG.
    public static func randomlyKeyed() -> SipHash128 {
        SipHash128(key: SecureRandom.bytes(count: 16))
    }

    /// The 16-byte output as two words: (bytes 0-7, bytes 8-15), little-endian.
    @inline(__always)
    public func hash(_ bytes: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        var v = State(v0: 0x736F_6D65_7073_6575 ^ k0, v1: 0x646F_7261_6E64_6F6D ^ k1 ^ 0xEE,
                      v2: 0x6C79_6765_6E65_7261 ^ k0, v3: 0x7465_6462_7974_6573 ^ k1)
        let count = bytes.count
        let whole = count & ~7
        var at = 0
        while at < whole {
            v.absorb(UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self)))
            at += 8
        }
        var last = UInt64(truncatingIfNeeded: count) << 56
        var shift: UInt64 = 0
        while at < count {
            last |= UInt64(bytes[at]) << shift
            shift += 8
            at += 1
        }
        v.absorb(last)

        v.v2 ^= 0xEE
        v.round(); v.round(); v.round(); v.round()
        let first = v.v0 ^ v.v1 ^ v.v2 ^ v.v3
        v.v1 ^= 0xDD
        v.round(); v.round(); v.round(); v.round()
        return (first, v.v0 ^ v.v1 ^ v.v2 ^ v.v3)
    }

    /// The four words, in registers: a value type with inlined methods (a nested function
    /// capturing the words was compiled as a call per round).
    private struct State {
        var v0, v1, v2, v3: UInt64

        @inline(__always) mutating func round() {
            v0 &+= v1; v1 = (v1 << 13) | (v1 >> 51); v1 ^= v0; v0 = (v0 << 32) | (v0 >> 32)
            v2 &+= v3; v3 = (v3 << 16) | (v3 >> 48); v3 ^= v2
            v0 &+= v3; v3 = (v3 << 21) | (v3 >> 43); v3 ^= v0
            v2 &+= v1; v1 = (v1 << 17) | (v1 >> 47); v1 ^= v2; v2 = (v2 << 32) | (v2 >> 32)
        }

        /// One message word, two compression rounds (SipHash-2-x).
        @inline(__always) mutating func absorb(_ m: UInt64) {
            v3 ^= m
            round(); round()
            v0 ^= m
        }
    }
}
