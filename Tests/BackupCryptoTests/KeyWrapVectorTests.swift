import BackupCrypto
import ByteCoding
import XCTest

/// SP 800-38F KW and KWP against every NIST CAVP AE/AD file (AES-128/192/256) and Wycheproof.
final class KeyWrapVectorTests: XCTestCase {
    private func unwrap(_ ct: [UInt8], key: WrappingKey, padded: Bool) throws -> [UInt8] {
        padded ? try AESKeyWrap.unwrapPadded(ct, key: key).unsafeCopy() : try AESKeyWrap.unwrap(ct, key: key).unsafeCopy()
    }

    private func wrap(_ pt: [UInt8], key: WrappingKey, padded: Bool) throws -> [UInt8] {
        padded ? try AESKeyWrap.wrapPadded(pt, key: key) : try AESKeyWrap.wrap(pt, key: key)
    }

    private func runNIST(mode: String, padded: Bool) throws {
        for bits in [128, 192, 256] {
            // AE: wrap P under K, expect C; unwrapping C gives P back.
            var ae = VectorTally(file: "\(mode)_AE_\(bits).txt")
            for r in CAVP.parse(try Vectors.text("\(mode)_AE_\(bits).txt")) {
                let key = try WrappingKey(bytes: r.hex("K"))
                XCTAssertEqual(key.byteCount * 8, bits)
                let ct = try wrap(r.hex("P"), key: key, padded: padded)
                XCTAssertEqual(ct, r.hex("C"), "\(mode) AE \(bits) COUNT \(r.fields["COUNT"] ?? "?")")
                XCTAssertEqual(try unwrap(ct, key: key, padded: padded), r.hex("P"))
                ae.passed += 1
            }
            XCTAssertEqual(ae.total, 500)
            ae.report()

            // AD: unwrap C; FAIL records must be rejected with authenticationFailed.
            var ad = VectorTally(file: "\(mode)_AD_\(bits).txt")
            for r in CAVP.parse(try Vectors.text("\(mode)_AD_\(bits).txt")) {
                let key = try WrappingKey(bytes: r.hex("K"))
                if r.fail {
                    XCTAssertThrowsError(try unwrap(r.hex("C"), key: key, padded: padded)) {
                        XCTAssertEqual(($0 as? CryptoError)?.code, .authenticationFailed)
                    }
                    ad.rejected += 1
                } else {
                    XCTAssertEqual(try unwrap(r.hex("C"), key: key, padded: padded), r.hex("P"),
                                   "\(mode) AD \(bits) COUNT \(r.fields["COUNT"] ?? "?")")
                    ad.passed += 1
                }
            }
            XCTAssertEqual(ad.total, 500)
            XCTAssertEqual(ad.rejected, 100)
            ad.report()
        }
    }

    func testNISTKW() throws { try runNIST(mode: "KW", padded: false) }
    func testNISTKWP() throws { try runNIST(mode: "KWP", padded: true) }

    private func runWycheproof(file: String, padded: Bool) throws -> VectorTally {
        var tally = VectorTally(file: file)
        for (_, t) in try Vectors.wycheproof(file) {
            let id = t["tcId"] as? Int ?? -1
            let key = try WrappingKey(bytes: XCTUnwrap(Hex.decode(t["key"] as! String)))
            let msg = try XCTUnwrap(Hex.decode(t["msg"] as! String))
            let ct = try XCTUnwrap(Hex.decode(t["ct"] as! String))
            let flags = t["flags"] as? [String] ?? []
            switch t["result"] as! String {
            case "valid":
                XCTAssertEqual(try wrap(msg, key: key, padded: padded), ct, "tcId \(id)")
                XCTAssertEqual(try unwrap(ct, key: key, padded: padded), msg, "tcId \(id)")
                tally.passed += 1
            case "invalid":
                XCTAssertThrowsError(try unwrap(ct, key: key, padded: padded), "tcId \(id) must be rejected")
                if flags.contains("WrongDataSize") || flags.contains("EmptyKey") {
                    XCTAssertThrowsError(try wrap(msg, key: key, padded: padded), "tcId \(id): wrap must refuse")
                }
                tally.rejected += 1
            default:
                // "acceptable" (KW ShortKey, 8-byte keys): SP 800-38F does not define them; we
                // refuse both ways, as OpenSSL does.
                XCTAssertThrowsError(try wrap(msg, key: key, padded: padded), "tcId \(id)")
                XCTAssertThrowsError(try unwrap(ct, key: key, padded: padded), "tcId \(id)")
                tally.refusedUnsupported += 1
            }
        }
        tally.report()
        return tally
    }

    func testWycheproofKW() throws {
        let t = try runWycheproof(file: "aes_wrap_test.json", padded: false)
        XCTAssertEqual([t.passed, t.rejected, t.refusedUnsupported], [36, 126, 3])
    }

    func testWycheproofKWP() throws {
        let t = try runWycheproof(file: "aes_kwp_test.json", padded: true)
        XCTAssertEqual([t.passed, t.rejected], [77, 177])
    }

    /// OpenSSL accepts empty input and returns success; we must not.
    func testEmptyAndMisSizedInputsAreRefusedBeforeOpenSSL() throws {
        let key = try WrappingKey.random()
        for padded in [false, true] {
            XCTAssertThrowsError(try wrap([], key: key, padded: padded)) { XCTAssertEqual(($0 as? CryptoError)?.code, .invalidInputSize) }
            XCTAssertThrowsError(try unwrap([], key: key, padded: padded)) { XCTAssertEqual(($0 as? CryptoError)?.code, .invalidInputSize) }
            XCTAssertThrowsError(try unwrap([UInt8](repeating: 0, count: 23), key: key, padded: padded)) {
                XCTAssertEqual(($0 as? CryptoError)?.code, .invalidInputSize)
            }
        }
        XCTAssertThrowsError(try AESKeyWrap.wrap([UInt8](repeating: 0, count: 8), key: key))
        XCTAssertThrowsError(try AESKeyWrap.wrap([UInt8](repeating: 0, count: 17), key: key))
        XCTAssertThrowsError(try AESKeyWrap.unwrapPadded([UInt8](repeating: 0, count: 8), key: key))
    }

    func testTypedKeysRefuseWrongSizes() {
        XCTAssertThrowsError(try EphemeralBackupKey(bytes: [UInt8](repeating: 1, count: 16))) {
            XCTAssertEqual(($0 as? CryptoError)?.code, .invalidKeySize)
        }
        XCTAssertThrowsError(try WrappingKey(bytes: [UInt8](repeating: 1, count: 20)))
        XCTAssertNoThrow(try PersistentBackupKey(bytes: [UInt8](repeating: 1, count: 32)))
    }

    func testWrapKeyUnderKeyRoundTrip() throws {
        let pbk = try PersistentBackupKey.random()
        let ebk = try EphemeralBackupKey.random()
        let wrapped = try AESKeyWrap.wrap(key: ebk, under: pbk)
        XCTAssertEqual(wrapped.count, 40)
        let back = try EphemeralBackupKey(secret: AESKeyWrap.unwrap(wrapped, key: pbk))
        XCTAssertTrue(back.constantTimeEquals(ebk))
        XCTAssertFalse(String(describing: ebk).contains(Hex.encode(ebk.secret.unsafeCopy())))
    }
}
