import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PKCS11HSM
import XCTest

/// Regression tests of the review fixes to the PKCS#11 bridge (real SoftHSM2 tokens).
final class PKCS11ReviewFixTests: XCTestCase {
    static let manufacturer = "softhsm-review"

    func backup(_ hsm: PKCS11HSM) throws -> (blob: [UInt8], context: [String: String]) {
        var blob: [UInt8] = []
        let context = try hsm.archiveContext()
        try hsm.backup(to: { blob += $0 }, chunkSize: 4096)
        return (blob, context)
    }

    func restore(_ b: (blob: [UInt8], context: [String: String]), onto hsm: PKCS11HSM) throws {
        let s = try hsm.beginRestore(dryRun: false, archiveContext: b.context)
        try s.feed(b.blob)
        _ = try s.finish()
    }

    /// A key whose CKA_UNWRAP_TEMPLATE forces what it unwraps to be sensitive would come back
    /// without that template (it is not carried): it must be listed, not silently weakened.
    func testAKeyWithAnUnwrapTemplateIsListedNotWeakened() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        try fx.initToken("A")
        _ = try fx.provision("A", manufacturer: Self.manufacturer, keys: keys)
        let s = try fx.session("A")
        _ = try s.generateKey(CK.mAESKeyGen, [
            .ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .ulong(0x161, 32), .bool(0x1, true), .bool(0x2, true),
            .bool(0x103, true), .bool(0x162, true), .bool(0x106, true), .bool(0x107, true),
            .bytes(0x3, Array("kek-with-template".utf8)), .bytes(0x102, [0x40]),
            Attribute(0x4000_0212, .template([.bool(0x103, true), .bool(0x162, false)]))])
        try TestObjects.secret(s, CK.kAES, CK.mAESKeyGen, bytes: 16, label: "plain-aes", id: 0x41, sensitive: true, encrypt: true, sign: false)

        let a = try fx.open("A")
        var written = 0
        XCTAssertThrowsError(try a.backup(to: { written += $0.count }, chunkSize: 4096)) { e in
            guard let e = e as? PKCS11Error else { return XCTFail("\(e)") }
            XCTAssertEqual(e.code, .partialBackup)
            XCTAssertEqual(e.skipped.map(\.label), ["kek-with-template"])
            XCTAssertTrue(e.skipped.first?.reason.contains("CKA_UNWRAP_TEMPLATE") ?? false, "\(e.skipped)")
        }
        XCTAssertEqual(written, 0)
        a.options.allowPartial = true
        _ = try backup(a)
        XCTAssertEqual(a.lastBackup?.objects, 1)
        XCTAssertEqual(a.lastBackup?.skipped.map(\.label), ["kek-with-template"])
    }
}
