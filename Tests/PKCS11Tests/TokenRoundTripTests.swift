import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PKCS11HSM
import XCTest

/// Backups and restores on real SoftHSM2 tokens through the HSM abstraction (BackupSource /
/// RestoreTarget), in process. Token A is the source; B has A's manufacturer key and operator
/// key; C has another operator key.
final class TokenRoundTripTests: XCTestCase {
    static let manufacturer = "softhsm-test"

    func backup(_ hsm: PKCS11HSM) throws -> (blob: [UInt8], context: [String: String]) {
        var blob: [UInt8] = []
        let context = try hsm.archiveContext()
        try hsm.backup(to: { blob += $0 }, chunkSize: 4096)
        return (blob, context)
    }

    @discardableResult
    func restore(_ b: (blob: [UInt8], context: [String: String]), onto hsm: PKCS11HSM, dryRun: Bool) throws -> RestoreSummary {
        let s = try hsm.beginRestore(dryRun: dryRun, archiveContext: b.context)
        try s.feed(b.blob)
        return try s.finish()
    }

    func code(_ body: () throws -> Void) -> String {
        do { try body(); return "ok" } catch let e as PKCS11Error { return "pkcs11." + e.code.rawValue } catch let e as ArchiveError {
            return "archive." + e.code.rawValue
        } catch { return "other: \(error)" }
    }

    func testEveryKeyTypeRoundTripsAndWorksOnTheOtherToken() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "B"] { try fx.initToken(t); _ = try fx.provision(t, manufacturer: Self.manufacturer, keys: keys) }
        try TestObjects.populate(try fx.session("A"))
        let a = try fx.open("A")
        XCTAssertEqual(a.quirks, [PKCS11Labels.quirkKWPZeroPad])

        // The unextractable and wrap-with-trusted keys are listed with their codes; nothing is written.
        var written = 0
        XCTAssertThrowsError(try a.backup(to: { written += $0.count }, chunkSize: 4096)) { e in
            guard let e = e as? PKCS11Error else { return XCTFail("\(e)") }
            XCTAssertEqual(e.code, .partialBackup)
            XCTAssertEqual(e.skipped.map(\.label).sorted(), ["aes-locked", "aes-wrap-with-trusted"])
            XCTAssertEqual(e.skipped.first { $0.label == "aes-locked" }?.rvName, "CKR_KEY_UNEXTRACTABLE")
            XCTAssertEqual(e.skipped.first { $0.label == "aes-wrap-with-trusted" }?.rvName, "CKR_KEY_NOT_WRAPPABLE")
            XCTAssertEqual(e.skipped.first { $0.label == "aes-locked" }?.id, "30")
        }
        XCTAssertEqual(written, 0)
        a.options.allowPartial = true
        let archive = try backup(a)
        XCTAssertEqual(a.lastBackup?.objects, TestObjects.backedUp)
        XCTAssertEqual(a.lastBackup?.skipped.count, TestObjects.unbackable)

        // Dry run: everything unwrapped and checked as session objects, nothing on B.
        let b = try fx.open("B")
        XCTAssertEqual(try fx.objectCount("B"), 0)
        let dry = try restore(archive, onto: b, dryRun: true)
        XCTAssertEqual(dry.keys, TestObjects.backedUp)
        XCTAssertEqual(try fx.objectCount("B"), 0)
        XCTAssertEqual(b.lastRestore?.checked, 8) // 2 AES KCVs, 2 HMACs, 4 sign/verify
        try restore(archive, onto: b, dryRun: false)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)

        let sa = try fx.session("A"), sb = try fx.session("B")
        // Generic secrets whose length is not a multiple of 8 come back at their true length.
        for label in ["hmac-36", "secret-13", "aes-256"] {
            let va = try TestObjects.value(sa, try TestObjects.handle(sa, CK.oSecretKey, label))
            let vb = try TestObjects.value(sb, try TestObjects.handle(sb, CK.oSecretKey, label))
            XCTAssertEqual(vb.count, va.count, label)
            XCTAssertTrue(constantTimeEqual(va, vb), label)
        }
        // Data encrypted under A decrypts under B (AES-128 and AES-256, CBC with padding).
        for label in ["aes-128", "aes-256"] {
            let iv = [UInt8](repeating: 7, count: 16), plain = Array("data sealed on token A, opened on token B".utf8)
            let c = try sa.encrypt(.withParameter(0x1085, iv), key: try TestObjects.handle(sa, CK.oSecretKey, label), plain)
            XCTAssertEqual(try sb.decrypt(.withParameter(0x1085, iv), key: try TestObjects.handle(sb, CK.oSecretKey, label), c), plain, label)
        }
        // HMAC keys give the same MAC.
        let msg = Array("mac me".utf8)
        XCTAssertEqual(try sa.sign(CK.mSHA256HMAC, key: try TestObjects.handle(sa, CK.oSecretKey, "hmac-45"), msg),
                       try sb.sign(CK.mSHA256HMAC, key: try TestObjects.handle(sb, CK.oSecretKey, "hmac-45"), msg))
        // Private keys restored on B sign; A's public keys verify.
        for (label, mech) in [("rsa-2048", CK.mSHA256RSAPKCS), ("rsa-3072", CK.mSHA256RSAPKCS), ("ec-p256", CK.mECDSA), ("ec-p384", CK.mECDSA)] {
            let data = mech == CK.mECDSA ? [UInt8](repeating: 0x42, count: 32) : msg
            let sig = try sb.sign(mech, key: try TestObjects.handle(sb, CK.oPrivateKey, label), data)
            XCTAssertTrue(try sa.verify(mech, key: try TestObjects.handle(sa, CK.oPublicKey, label), data, signature: sig), label)
        }
        XCTAssertEqual(try TestObjects.value(sb, try TestObjects.handle(sb, CK.oData, "config")), TestObjects.dataValue)
        XCTAssertEqual(try TestObjects.value(sb, try TestObjects.handle(sb, CK.oCertificate, "rsa-2048")), TestObjects.certValue)
        // The restored keys keep their protection.
        XCTAssertEqual(try sb.required(try TestObjects.handle(sb, CK.oSecretKey, "aes-128"), 0x103, as: .bool), .bool(true))
        if case .success = try sb.attribute(try TestObjects.handle(sb, CK.oSecretKey, "aes-128"), 0x11, as: .bytes) {
            XCTFail("a sensitive key's value is readable after restore")
        }
    }

    func testDuplicatePolicyRefusesThenReplaces() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "B"] { try fx.initToken(t); _ = try fx.provision(t, manufacturer: Self.manufacturer, keys: keys) }
        try TestObjects.populate(try fx.session("A"), unbackable: false)
        let archive = try backup(try fx.open("A"))
        let b = try fx.open("B")
        try restore(archive, onto: b, dryRun: false)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
        XCTAssertEqual(code { try self.restore(archive, onto: b, dryRun: false) }, "pkcs11.duplicateObject")
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
        b.options.replace = true
        try restore(archive, onto: b, dryRun: false)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
        XCTAssertEqual(b.lastRestore?.replaced, TestObjects.backedUp)
    }

    func testAnotherOperatorKeyOrAPlantedPBKIsRefusedBeforeAnyUnwrap() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "C", "D", "E"] { try fx.initToken(t) }
        let fa = try fx.provision("A", manufacturer: Self.manufacturer, keys: keys)
        _ = try fx.provision("C", manufacturer: Self.manufacturer, keys: BackupKeys(mkbk: keys.mkbk, akbk: try .random()))
        _ = try fx.provision("E", manufacturer: "another-maker", keys: keys)
        try TestObjects.populate(try fx.session("A"), unbackable: false)
        let archive = try backup(try fx.open("A"))
        XCTAssertEqual(code { try self.restore(archive, onto: try fx.open("C"), dryRun: false) }, "archive.pbkMismatch")
        XCTAssertEqual(code { try self.restore(archive, onto: try fx.open("E"), dryRun: false) }, "archive.wrongManufacturer")
        XCTAssertEqual(code { try self.restore(archive, onto: try fx.open("D"), dryRun: false) }, "pkcs11.notProvisioned")
        // D gets keys that carry A's fingerprint as CKA_ID but other values: the check value refuses them.
        let sd = try fx.session("D")
        for prefix in [PKCS11Labels.pbkPrefix, PKCS11Labels.tokenPBKPrefix] {
            _ = try sd.create([.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .bool(0x1, true), .bool(0x103, true), .bool(0x162, false),
                               .bool(0x106, true), .bool(0x107, true), .bytes(0x3, Array((prefix + Self.manufacturer).utf8)),
                               .bytes(0x102, Hex.decode(fa.pbkFingerprint)!), .bytes(0x11, SecureRandom.bytes(count: 32))])
        }
        XCTAssertEqual(code { try self.restore(archive, onto: try fx.open("D"), dryRun: false) }, "archive.pbkMismatch")
        XCTAssertEqual(try fx.objectCount("C"), 0)
        XCTAssertEqual(try fx.objectCount("E"), 0)
        // A PKCS#11 archive needs its check values in the envelope context.
        XCTAssertEqual(code { try self.restore((archive.blob, [:]), onto: try fx.open("C"), dryRun: true) }, "pkcs11.wrongManufacturer")
        var other = archive.context
        other[PKCS11Labels.contextTokenManufacturer] = "Another Vendor"
        XCTAssertEqual(code { try self.restore((archive.blob, other), onto: try fx.open("C"), dryRun: true) }, "pkcs11.wrongManufacturer")
    }

    func testWrongPINAbsentTokenAndNotAModule() throws {
        let fx = try SoftHSMFixture()
        try fx.initToken("A")
        XCTAssertThrowsError(try PKCS11HSM(modulePath: SoftHSMFixture.module, tokenLabel: "A", userPIN: SoftHSMFixture.pin("wrong-pin"))) { e in
            XCTAssertEqual((e as? PKCS11Error)?.code, .loginFailed)
            XCTAssertEqual((e as? PKCS11Error)?.rvName, "CKR_PIN_INCORRECT")
        }
        XCTAssertEqual(code { _ = try fx.open("no-such-token") }, "pkcs11.tokenNotFound")
        XCTAssertEqual(code { _ = try PKCS11HSM(modulePath: "/usr/lib/x86_64-linux-gnu/libz.so.1", tokenLabel: "A",
                                                userPIN: SoftHSMFixture.pin("x")) }, "pkcs11.moduleLoadFailed")
        XCTAssertEqual(code { _ = try PKCS11HSM(modulePath: fx.conf, tokenLabel: "A", userPIN: SoftHSMFixture.pin("x")) }, "pkcs11.moduleLoadFailed")
        XCTAssertEqual(code { _ = try PKCS11HSM(modulePath: fx.dir + "/absent.so", tokenLabel: "A", userPIN: SoftHSMFixture.pin("x")) },
                       "pkcs11.moduleLoadFailed")
        // Provisioning twice is refused; a token without a PBK cannot back up.
        let keys = try BackupKeys.random()
        XCTAssertEqual(code { _ = try fx.open("A").backup(to: { _ in }, chunkSize: 4096) }, "pkcs11.notProvisioned")
        _ = try fx.provision("A", manufacturer: Self.manufacturer, keys: keys)
        XCTAssertEqual(code { _ = try fx.provision("A", manufacturer: Self.manufacturer, keys: keys) }, "pkcs11.alreadyProvisioned")
        // The PBK's value is not readable, and the user cannot make a trusted key.
        let s = try fx.session("A")
        let pbk = try TestObjects.handle(s, CK.oSecretKey, PKCS11Labels.pbkPrefix + Self.manufacturer)
        guard case .failure(let r) = try s.attribute(pbk, 0x11, as: .bytes) else { return XCTFail("the PBK's value is readable") }
        XCTAssertEqual(CKR.name(r.rv), "CKR_ATTRIBUTE_SENSITIVE")
    }

    /// Every truncation and every byte flip of the wrapped TEK, of the RSA wrapping key and of
    /// a wrapped AES key, OAEP-wrapped secret and RSA key is refused by the token, and leaves nothing.
    func testEveryTruncationAndByteFlipOfTheWrappedBlobsIsRefused() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "B"] { try fx.initToken(t); _ = try fx.provision(t, manufacturer: Self.manufacturer, keys: keys) }
        try TestObjects.populate(try fx.session("A"), unbackable: false)
        let archive = try backup(try fx.open("A"))
        // The test holds MKBK and AKBK, so it can open the archive on the host and reach the blobs.
        let (_, bundle) = try InnerBlob.open(archive.blob, keyring: BackupKeyring(manufacturerId: Self.manufacturer, mkbk: keys.mkbk, akbk: keys.akbk))
        let (record, objects) = try PKCS11Payload.decode(bundle.objects)
        let b = try fx.open("B")
        try b.apply(record: record, objects: objects, restoreId: "t", dryRun: true) // the undamaged payload passes

        func variants(_ hex: String) -> [String] {
            let bytes = Hex.decode(hex)!
            var out = (0..<bytes.count).map { Hex.encode(bytes.prefix($0)) }
            for i in bytes.indices { var d = bytes; d[i] ^= 0xA5; out.append(Hex.encode(d)) }
            return out
        }
        func object(_ label: String, _ cls: UInt64) -> TokenObject { objects.first { $0.label == label && $0.objectClass == cls }! }
        func with(_ o: TokenObject, blob: String) -> TokenObject {
            TokenObject(objectClass: o.objectClass, className: o.className, keyType: o.keyType, keyTypeName: o.keyTypeName, attributes: o.attributes,
                        info: o.info, wrapped: WrappedValue(mechanism: o.wrapped!.mechanism, wrappingKey: o.wrapped!.wrappingKey, blob: blob,
                                                            valueLength: o.wrapped!.valueLength), check: o.check)
        }
        func recordWith(tek: String? = nil, swk: String? = nil) -> TokenRecord {
            TokenRecord(format: record.format, version: record.version, module: record.module, library: record.library, token: record.token,
                        quirks: record.quirks, role: record.role, wrappedTEK: tek ?? record.wrappedTEK, wrappedSWK: swk ?? record.wrappedSWK,
                        objectCount: record.objectCount, skipped: record.skipped)
        }
        var attempts = 0
        func refused(_ r: TokenRecord, _ objs: [TokenObject], _ what: String) {
            attempts += 1
            XCTAssertThrowsError(try b.apply(record: r, objects: objs, restoreId: "t", dryRun: false), what)
        }
        for v in variants(record.wrappedTEK) { refused(recordWith(tek: v), [object("aes-128", CK.oSecretKey)], "TEK") }
        let secret13 = object("secret-13", CK.oSecretKey)
        XCTAssertEqual(secret13.wrapped?.wrappingKey, "swk")
        for v in variants(record.wrappedSWK!) { refused(recordWith(swk: v), [secret13], "SWK") }
        for label in ["aes-128", "secret-13", "hmac-36"] {
            let o = object(label, CK.oSecretKey)
            for v in variants(o.wrapped!.blob) { refused(record, [with(o, blob: v)], label) }
        }
        let ec = object("ec-p256", CK.oPrivateKey), rsa = object("rsa-2048", CK.oPrivateKey)
        for v in variants(ec.wrapped!.blob) { refused(record, [with(ec, blob: v)], "ec-p256") }
        let rsaBlob = Hex.decode(rsa.wrapped!.blob)!
        for n in stride(from: 0, to: rsaBlob.count, by: 1) { refused(record, [with(rsa, blob: Hex.encode(rsaBlob.prefix(n)))], "rsa truncated") }
        for i in rsaBlob.indices { var d = rsaBlob; d[i] ^= 0xA5; refused(record, [with(rsa, blob: Hex.encode(d))], "rsa flipped") }
        XCTAssertGreaterThan(attempts, 3000)
        XCTAssertEqual(try fx.objectCount("B"), 0)
        XCTAssertEqual(try fx.session("B").find([.bool(0x1, false)]).count, 0, "no session object survives a refused restore")
    }

    func testUnknownPayloadVersionAndForeignPayloadsAreRefused() throws {
        func token(_ json: String) -> PayloadObject { PayloadObject(kind: .policy, path: TokenRecord.path, contents: Array(json.utf8)) }
        XCTAssertThrowsError(try PKCS11Payload.decode([token(#"{"format":"hsmbackup-pkcs11","version":2}"#)])) { e in
            XCTAssertEqual((e as? PKCS11Error)?.code, .unsupportedVersion)
        }
        XCTAssertThrowsError(try PKCS11Payload.decode([PayloadObject(kind: .policy, path: "policies/000001.json", contents: Array("{}".utf8))])) { e in
            XCTAssertEqual((e as? PKCS11Error)?.code, .malformedObject)
        }
        // Attribute values are portable: a CK_ULONG is 8 bytes big-endian whatever the host's CK_ULONG.
        XCTAssertEqual(AttributeRegistry.encode(.ulong(0x210A)), [0, 0, 0, 0, 0, 0, 0x21, 0x0A])
        XCTAssertEqual(try AttributeRegistry.decode([0, 0, 0, 0, 0, 0, 0x21, 0x0A], kind: .ulong, name: "x"), .ulong(0x210A))
        XCTAssertThrowsError(try AttributeRegistry.decode([0x21, 0x0A, 0, 0], kind: .ulong, name: "x"))
        XCTAssertThrowsError(try AttributeRegistry.decode([2], kind: .bool, name: "x"))
    }
}
