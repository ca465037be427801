import BackupCrypto
import ByteCoding
import XCTest

/// RFC 5869 appendix A known answers for the HMAC/HKDF added to BackupCrypto (HKDFHMAC.swift)
/// for the v1 suites, plus agreement with the existing HKDF-SHA512.
final class HKDFTests: XCTestCase {
    func testRFC5869SHA256Cases() throws {
        let ikm = [UInt8](repeating: 0x0b, count: 22)
        let okm1 = try ikm.withUnsafeBytes {
            try HKDF.derive(.sha256, ikm: $0, salt: Array(0...12), info: Array(0xf0...0xf9), outputBytes: 42)
        }
        XCTAssertEqual(Hex.encode(okm1.unsafeCopy()),
                       "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        let okm3 = try ikm.withUnsafeBytes { try HKDF.derive(.sha256, ikm: $0, salt: [], info: [], outputBytes: 42) }
        XCTAssertEqual(Hex.encode(okm3.unsafeCopy()),
                       "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    }

    func testAgreesWithHKDFSHA512AndRefusesOversizedOutput() throws {
        let ikm = pattern(32)
        let a = try ikm.withUnsafeBytes { try HKDF.derive(.sha512, ikm: $0, salt: pattern(32, seed: 2), info: Array("DERIVEKEY".utf8), outputBytes: 100) }
        let b = try ikm.withUnsafeBytes { try HKDFSHA512.derive(ikm: $0, salt: pattern(32, seed: 2), info: Array("DERIVEKEY".utf8), outputBytes: 100) }
        XCTAssertTrue(a.constantTimeEquals(b))
        XCTAssertThrowsError(try ikm.withUnsafeBytes { try HKDF.derive(.sha384, ikm: $0, salt: [], info: [], outputBytes: 255 * 48 + 1) }) {
            XCTAssertEqual(($0 as? CryptoError)?.code, .outputTooLarge)
        }
    }
}
