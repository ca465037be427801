import BackupCrypto
import ByteCoding
import XCTest

/// SP 800-108 counter-mode KBKDF (HMAC-SHA256, 32-bit counter before the fixed data) against
/// the NIST CAVP file, and HKDF-SHA512 against Wycheproof.
final class KDFVectorTests: XCTestCase {
    func testKBKDFCounterHMACSHA256BeforeFixed32Bit() throws {
        var tally = VectorTally(file: "KBKDF_CTR_HMAC_SHA256.txt [CTRLOCATION=BEFORE_FIXED][RLEN=32_BITS]")
        var otherSections = 0
        for r in CAVP.parse(try Vectors.text("KBKDF_CTR_HMAC_SHA256.txt")) {
            XCTAssertEqual(r.section["PRF"], "HMAC_SHA256", "only HMAC_SHA256 sections are in the file")
            guard r.section["CTRLOCATION"] == "BEFORE_FIXED", r.section["RLEN"] == "32_BITS" else {
                otherSections += 1   // other counter positions/widths: not what the format uses
                continue
            }
            let bits = try XCTUnwrap(Int(r.fields["L"] ?? ""))
            let ko = try r.hex("KI").withUnsafeBytes {
                try KBKDF.derive(key: $0, fixedInput: r.hex("FixedInputData"), outputBytes: bits / 8)
            }
            XCTAssertEqual(ko.unsafeCopy(), r.hex("KO"), "COUNT \(r.fields["COUNT"] ?? "?")")
            tally.passed += 1
        }
        XCTAssertEqual(tally.passed, 40)
        XCTAssertEqual(otherSections, 440)
        tally.report()
    }

    func testKBKDFFixedInputLayout() {
        // Label || 0x00 || Context || [L]32 (SP 800-108 §5), L in bits.
        XCTAssertEqual(KBKDF.fixedInput(label: [0x41], context: [0x42, 0x43], outputBytes: 32),
                       [0x41, 0x00, 0x42, 0x43, 0x00, 0x00, 0x01, 0x00])
    }

    func testKBKDFLimits() {
        let k = [UInt8](repeating: 7, count: 32)
        XCTAssertThrowsError(try k.withUnsafeBytes { try KBKDF.derive(key: $0, fixedInput: [], outputBytes: 0) })
        XCTAssertThrowsError(try k.withUnsafeBytes { try KBKDF.derive(key: $0, fixedInput: [], outputBytes: 4096) }) {
            XCTAssertEqual(($0 as? CryptoError)?.code, .outputTooLarge)
        }
    }

    func testWycheproofHKDFSHA512() throws {
        var tally = VectorTally(file: "hkdf_sha512_test.json")
        for (_, t) in try Vectors.wycheproof("hkdf_sha512_test.json") {
            let ikm = try XCTUnwrap(Hex.decode(t["ikm"] as! String))
            let salt = try XCTUnwrap(Hex.decode(t["salt"] as! String))
            let info = try XCTUnwrap(Hex.decode(t["info"] as! String))
            let size = t["size"] as! Int
            let id = t["tcId"] as! Int
            if t["result"] as! String == "valid" {
                let okm = try ikm.withUnsafeBytes { try HKDFSHA512.derive(ikm: $0, salt: salt, info: info, outputBytes: size) }
                XCTAssertEqual(Hex.encode(okm.unsafeCopy()), t["okm"] as! String, "tcId \(id)")
                tally.passed += 1
            } else {
                XCTAssertThrowsError(try ikm.withUnsafeBytes { try HKDFSHA512.derive(ikm: $0, salt: salt, info: info, outputBytes: size) }) {
                    XCTAssertEqual(($0 as? CryptoError)?.code, .outputTooLarge)
                }
                tally.rejected += 1
            }
        }
        XCTAssertEqual([tally.passed, tally.rejected], [80, 3])
        tally.report()
    }
}
