@testable import BackupCrypto
import ByteCoding
import XCTest

/// AES-GCM against NIST CAVP (96-bit IVs) and Wycheproof; ECDSA P-384/SHA-384 against
/// Wycheproof (DER) and NIST SigVer.
final class AEADAndSignatureVectorTests: XCTestCase {
    func testNISTGCMEncrypt() throws {
        var tally = VectorTally(file: "gcmEncryptExtIV256_IV96.rsp")
        for r in CAVP.parse(try Vectors.text("gcmEncryptExtIV256_IV96.rsp")) {
            let key = try ContentKey(bytes: r.hex("Key"))
            let sealed = try AESGCM.seal(r.hex("PT"), key: key, nonce: GCMNonce(r.hex("IV")), aad: r.hex("AAD"))
            XCTAssertEqual(sealed.ciphertext, r.hex("CT"), "Count \(r.fields["Count"] ?? "?")")
            // Shorter-tag sections list the full tag truncated: our 16-byte tag must start with it.
            let tag = r.hex("Tag")
            XCTAssertEqual(Array(sealed.tag.prefix(tag.count)), tag)
            tally.passed += 1
        }
        XCTAssertEqual(tally.passed, 2625)
        tally.report()
    }

    func testNISTGCMDecrypt() throws {
        var tally = VectorTally(file: "gcmDecrypt256_IV96.rsp")
        var failRecords = 0
        for r in CAVP.parse(try Vectors.text("gcmDecrypt256_IV96.rsp")) {
            let key = try ContentKey(bytes: r.hex("Key"))
            let nonce = try GCMNonce(r.hex("IV"))
            if r.fail { failRecords += 1 }
            let open = { try AESGCM.open(r.hex("CT"), tag: r.hex("Tag"), key: key, nonce: nonce, aad: r.hex("AAD")) }
            if r.section["Taglen"] != "128" {
                // Only 16-byte tags are accepted: every shorter-tag record is refused.
                XCTAssertThrowsError(try open()) { XCTAssertEqual(($0 as? CryptoError)?.code, .unsupportedTagLength) }
                tally.refusedUnsupported += 1
            } else if r.fail {
                XCTAssertThrowsError(try open()) { XCTAssertEqual(($0 as? CryptoError)?.code, .authenticationFailed) }
                tally.rejected += 1
            } else {
                XCTAssertEqual(try open(), r.hex("PT"), "Count \(r.fields["Count"] ?? "?")")
                tally.passed += 1
            }
        }
        XCTAssertEqual(tally.total, 2625)
        XCTAssertEqual(failRecords, 1317)
        XCTAssertEqual(tally.passed + tally.rejected, 375)
        tally.report()
    }

    func testWycheproofGCM() throws {
        var tally = VectorTally(file: "aes_gcm_test.json")
        for (g, t) in try Vectors.wycheproof("aes_gcm_test.json") {
            let id = t["tcId"] as! Int
            let key = try ContentKey(bytes: XCTUnwrap(Hex.decode(t["key"] as! String)))
            let iv = try XCTUnwrap(Hex.decode(t["iv"] as! String))
            let aad = try XCTUnwrap(Hex.decode(t["aad"] as! String))
            let msg = try XCTUnwrap(Hex.decode(t["msg"] as! String))
            let ct = try XCTUnwrap(Hex.decode(t["ct"] as! String))
            let tag = try XCTUnwrap(Hex.decode(t["tag"] as! String))
            guard g["ivSize"] as? Int == 96 else {
                XCTAssertThrowsError(try GCMNonce(iv), "tcId \(id)") { XCTAssertEqual(($0 as? CryptoError)?.code, .unsupportedNonceLength) }
                tally.refusedUnsupported += 1
                continue
            }
            let nonce = try GCMNonce(iv)
            if t["result"] as! String == "valid" {
                let sealed = try AESGCM.seal(msg, key: key, nonce: nonce, aad: aad)
                XCTAssertEqual(sealed.ciphertext, ct, "tcId \(id)")
                XCTAssertEqual(sealed.tag, tag, "tcId \(id)")
                XCTAssertEqual(try AESGCM.open(ct, tag: tag, key: key, nonce: nonce, aad: aad), msg, "tcId \(id)")
                tally.passed += 1
            } else {
                XCTAssertThrowsError(try AESGCM.open(ct, tag: tag, key: key, nonce: nonce, aad: aad), "tcId \(id)")
                tally.rejected += 1
            }
        }
        XCTAssertEqual(tally.total, 316)
        tally.report()
    }

    func testIncrementalGCMMatchesOneShot() throws {
        let key = try ContentKey.random()
        let nonce = GCMNonce.random()
        let pt = SecureRandom.bytes(count: 10_000)
        let oneShot = try AESGCM.seal(pt, key: key, nonce: nonce, aad: [1, 2, 3])
        let sealer = try AESGCMSealer(key: key, nonce: nonce, aad: [1, 2, 3])
        var ct: [UInt8] = []
        for piece in stride(from: 0, to: pt.count, by: 777) { ct += try sealer.update(Array(pt[piece..<min(piece + 777, pt.count)])) }
        XCTAssertEqual(ct, oneShot.ciphertext)
        XCTAssertEqual(try sealer.finish(), oneShot.tag)
        var badTag = oneShot.tag
        badTag[0] ^= 1
        XCTAssertThrowsError(try AESGCM.open(ct, tag: badTag, key: key, nonce: nonce, aad: [1, 2, 3]))
    }

    /// One keyed context for many messages (the envelope's frames): each seal/open with a new
    /// nonce must give exactly what a fresh one-shot context gives, whatever came before.
    func testFrameContextsMatchOneShotAcrossManyMessages() throws {
        let key = try ContentKey.random()
        let sealer = try AESGCMFrameSealer(key: key)
        let opener = try AESGCMFrameOpener(key: key)
        for (i, size) in [0, 1, 15, 16, 17, 4096, 65_536, 100_003, 0, 33].enumerated() {
            var ivBytes = [UInt8](repeating: 0, count: 12)
            ivBytes[11] = UInt8(i + 1)
            let nonce = try GCMNonce(ivBytes)
            let pt = SecureRandom.bytes(count: size)
            let aad = i % 3 == 0 ? [] : SecureRandom.bytes(count: 13 * i)
            let oneShot = try AESGCM.seal(pt, key: key, nonce: nonce, aad: aad)
            var ct = [UInt8](repeating: 0xAA, count: size)
            var tag = [UInt8](repeating: 0, count: 16)
            try pt.withUnsafeBytes { p in try aad.withUnsafeBytes { a in try ct.withUnsafeMutableBytes { c in try tag.withUnsafeMutableBytes { t in
                try sealer.seal(p, nonce: nonce, aad: a, ciphertext: c, tag: t) } } } }
            XCTAssertEqual(ct, oneShot.ciphertext, "message \(i)")
            XCTAssertEqual(tag, oneShot.tag, "message \(i)")
            var out = [UInt8](repeating: 0, count: size)
            try ct.withUnsafeBytes { c in try tag.withUnsafeBytes { t in try aad.withUnsafeBytes { a in try out.withUnsafeMutableBytes { o in
                try opener.open(c, tag: t, nonce: nonce, aad: a, plaintext: o) } } } }
            XCTAssertEqual(out, pt, "message \(i)")
            // A wrong tag: the call throws authenticationFailed and leaves no plaintext behind.
            guard size > 0 else { continue }
            var bad = tag
            bad[i % 16] ^= 0x01
            var leak = [UInt8](repeating: 0, count: size)
            XCTAssertThrowsError(try ct.withUnsafeBytes { c in try bad.withUnsafeBytes { t in try aad.withUnsafeBytes { a in
                try leak.withUnsafeMutableBytes { o in try opener.open(c, tag: t, nonce: nonce, aad: a, plaintext: o) } } } }) {
                XCTAssertEqual(($0 as? CryptoError)?.code, .authenticationFailed)
            }
            XCTAssertEqual(leak, [UInt8](repeating: 0, count: size), "unauthenticated plaintext was left in the buffer")
        }
    }

    func testWycheproofECDSAP384SHA384() throws {
        var tally = VectorTally(file: "ecdsa_secp384r1_sha384_test.json")
        for (g, t) in try Vectors.wycheproof("ecdsa_secp384r1_sha384_test.json") {
            let pub = try P384PublicKey(encodedPoint: XCTUnwrap(Hex.decode((g["publicKey"] as! [String: Any])["uncompressed"] as! String)))
            let msg = try XCTUnwrap(Hex.decode(t["msg"] as! String))
            let sig = try XCTUnwrap(Hex.decode(t["sig"] as! String))
            let id = t["tcId"] as! Int
            switch t["result"] as! String {
            case "valid":
                XCTAssertTrue(pub.isValidSignature(sig, for: msg), "tcId \(id)")
                tally.passed += 1
            case "invalid":
                XCTAssertFalse(pub.isValidSignature(sig, for: msg), "tcId \(id)")
                tally.rejected += 1
            default:
                XCTFail("unexpected result class in tcId \(id)")
            }
        }
        XCTAssertEqual([tally.passed, tally.rejected], [194, 310])
        tally.report()
    }

    func testNISTSigVerP384SHA384() throws {
        var tally = VectorTally(file: "ecdsa_SigVer_P384_SHA384.rsp")
        for r in CAVP.parse(try Vectors.text("ecdsa_SigVer_P384_SHA384.rsp")) where r.fields["Msg"] != nil {
            let point = [0x04] + leftPad(r.hex("Qx"), 48) + leftPad(r.hex("Qy"), 48)
            let sig = derSignature(r: r.hex("R"), s: r.hex("S"))
            let expected = r.fields["Result"]?.hasPrefix("P") == true
            // A changed Q may not be on the curve at all: that is a rejection too.
            let ok = (try? P384PublicKey(encodedPoint: point))?.isValidSignature(sig, for: r.hex("Msg")) ?? false
            XCTAssertEqual(ok, expected, "Result \(r.fields["Result"] ?? "?")")
            if expected { tally.passed += 1 } else { tally.rejected += 1 }
        }
        XCTAssertEqual([tally.passed, tally.rejected], [3, 12])
        tally.report()
    }

    func testSignVerifyAndCompressedPoint() throws {
        let key = try P384PrivateKey()
        let compressed = try key.publicKey.encodedPoint(compressed: true)
        XCTAssertEqual(compressed.count, 49)
        let reloaded = try P384PublicKey(encodedPoint: compressed)
        let msg = SecureRandom.bytes(count: 1000)
        let signer = try P384Signer(privateKey: key)
        signer.update(Array(msg[..<500])); signer.update(Array(msg[500...]))
        let sig = try signer.finish()
        XCTAssertTrue(reloaded.isValidSignature(sig, for: msg))
        XCTAssertFalse(reloaded.isValidSignature(sig, for: Array(msg.dropLast())))
        XCTAssertThrowsError(try P384PublicKey(encodedPoint: [UInt8](repeating: 0x02, count: 49))) {
            XCTAssertEqual(($0 as? CryptoError)?.code, .invalidPublicKey)
        }
    }

    /// A failed EVP_DigestSignUpdate / EVP_DigestVerifyUpdate (made to fail here: OpenSSL has no
    /// input that does) leaves a digest that misses bytes: signing throws from `finish`, and
    /// verification says false, even for a signature of the bytes that did reach the digest.
    func testAFailedDigestUpdateFailsTheSignatureAndTheVerification() throws {
        let key = try P384PrivateKey()
        let msg = SecureRandom.bytes(count: 1000)
        let good = try key.signature(for: msg)
        XCTAssertTrue(key.publicKey.isValidSignature(good, for: msg))

        let signer = try P384Signer(privateKey: key)
        var calls = 0
        let realSign = signer.updateCall
        signer.updateCall = { ctx, data, count in
            calls += 1
            return calls == 2 ? 0 : realSign(ctx, data, count)
        }
        signer.update(Array(msg[..<300])); signer.update(Array(msg[300..<600])); signer.update(Array(msg[600...]))
        XCTAssertThrowsError(try signer.finish()) { XCTAssertEqual(($0 as? CryptoError)?.code, .openSSL, "\($0)") }

        let verifier = try P384Verifier(publicKey: key.publicKey)
        calls = 0
        let realVerify = verifier.updateCall
        verifier.updateCall = { ctx, data, count in
            calls += 1
            return calls == 2 ? 0 : realVerify(ctx, data, count)
        }
        verifier.update(Array(msg[..<300])); verifier.update(Array(msg[300..<600])); verifier.update(Array(msg[600...]))
        // Not even the signature of the bytes that did reach the digest.
        let ofTheRest = try key.signature(for: Array(msg[..<300]) + Array(msg[600...]))
        XCTAssertFalse(verifier.verify(ofTheRest), "a digest that missed bytes verifies nothing")
    }

    private func leftPad(_ b: [UInt8], _ n: Int) -> [UInt8] {
        b.count >= n ? Array(b.suffix(n)) : [UInt8](repeating: 0, count: n - b.count) + b
    }

    /// DER SEQUENCE { INTEGER r, INTEGER s } (minimal encodings).
    private func derSignature(r: [UInt8], s: [UInt8]) -> [UInt8] {
        func integer(_ v: [UInt8]) -> [UInt8] {
            var x = Array(v.drop { $0 == 0 })
            if x.isEmpty { x = [0] }
            if x[0] & 0x80 != 0 { x.insert(0, at: 0) }
            return [0x02, UInt8(x.count)] + x
        }
        let body = integer(r) + integer(s)
        return body.count < 128 ? [0x30, UInt8(body.count)] + body : [0x30, 0x81, UInt8(body.count)] + body
    }
}
