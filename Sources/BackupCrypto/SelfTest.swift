/// Known-answer checks of every primitive, run by `hsmbackup selftest` (and usable by any
/// program before it handles keys). The answers come from RFC 3394 §4.6, RFC 5649 §6, and the
/// NIST/Wycheproof vectors the test suite runs in full.
public enum CryptoSelfTest {
    public struct Result: Sendable {
        public let name: String
        public let passed: Bool
    }

    public static func run() -> [Result] {
        [
            check("AES-256 KW (RFC 3394 4.6)") {
                let kek = try WrappingKey(bytes: hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
                let pt = hex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f")
                let ct = try AESKeyWrap.wrap(pt, key: kek)
                let back = try AESKeyWrap.unwrap(ct, key: kek)
                return ct == hex("28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21")
                    && back.unsafeCopy() == pt
            },
            check("AES-192 KWP (RFC 5649 6)") {
                let kek = try WrappingKey(bytes: hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"))
                let pt = hex("466f7250617369")
                let ct = try AESKeyWrap.wrapPadded(pt, key: kek)
                return try ct == hex("afbeb0f07dfbf5419200f2ccb50bb24f")
                    && AESKeyWrap.unwrapPadded(ct, key: kek).unsafeCopy() == pt
            },
            check("AES-256-GCM (NIST, empty plaintext)") {
                let key = try ContentKey(bytes: [UInt8](repeating: 0, count: 32))
                let sealed = try AESGCM.seal([], key: key, nonce: GCMNonce([UInt8](repeating: 0, count: 12)))
                return sealed.tag == hex("530f8afbc74536b9a963b4f1c4cb738b")
            },
            check("SHA-256 (FIPS 180-4 \"abc\")") {
                SHA256Hasher.hash(Array("abc".utf8))
                    == hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
            },
            check("HKDF-SHA512 round trip length") {
                let okm = try [UInt8](repeating: 0x0b, count: 22).withUnsafeBytes {
                    try HKDFSHA512.derive(ikm: $0, salt: [], info: [], outputBytes: 42)
                }
                return okm.count == 42
            },
            check("ECDSA P-384 sign/verify") {
                let key = try P384PrivateKey()
                let msg = Array("hsmbackup".utf8)
                let sig = try key.signature(for: msg)
                return key.publicKey.isValidSignature(sig, for: msg)
                    && !key.publicKey.isValidSignature(sig, for: msg + [0])
            },
        ]
    }

    private static func check(_ name: String, _ body: () throws -> Bool) -> Result {
        Result(name: name, passed: (try? body()) ?? false)
    }

    private static func hex(_ s: String) -> [UInt8] {
        var out = [UInt8]()
        var it = s.utf8.makeIterator()
        func nib(_ c: UInt8) -> UInt8 { c <= 0x39 ? c - 0x30 : c - 0x61 + 10 }
        while let a = it.next(), let b = it.next() { out.append(nib(a) << 4 | nib(b)) }
        return out
    }
}
