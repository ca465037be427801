import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PKCS11HSM
import XCTest

/// Regression tests of the second review of the PKCS#11 bridge (real SoftHSM2 tokens), one per
/// finding: sign checks recorded only when they pass on the source (1), objects that refuse
/// C_DestroyObject (2), attribute reads that fail (3), labels that are not UTF-8 (4), lengths a
/// module reports (6).
final class PKCS11ReviewFindingTests: XCTestCase {
    static let manufacturer = "softhsm-findings"

    func backup(_ hsm: PKCS11HSM) throws -> (blob: [UInt8], context: [String: String]) {
        var blob: [UInt8] = []
        let context = try hsm.archiveContext()
        try hsm.backup(to: { blob += $0 }, chunkSize: 4096)
        return (blob, context)
    }

    func restore(_ b: (blob: [UInt8], context: [String: String]), onto hsm: PKCS11HSM, dryRun: Bool) throws {
        let s = try hsm.beginRestore(dryRun: dryRun, archiveContext: b.context)
        try s.feed(b.blob)
        _ = try s.finish()
    }

    /// Two provisioned tokens with the same keys.
    func tokens(_ fx: SoftHSMFixture, _ labels: [String] = ["A", "B"]) throws {
        let keys = try BackupKeys.random()
        for t in labels { try fx.initToken(t); _ = try fx.provision(t, manufacturer: Self.manufacturer, keys: keys) }
    }

    // MARK: finding 1

    /// A backup recorded a `sign` check for every private key with CKA_SIGN and a public half,
    /// without trying it: a DSA pair (the restore signs with SHA256-RSA-PKCS), a PSS-only RSA key,
    /// a CKA_ALWAYS_AUTHENTICATE key and an EC key whose public half has CKA_VERIFY false made
    /// every dry run and restore fail (checkFailed). Now those keys carry no check and restore
    /// unchecked; the plain RSA and EC pairs are still checked.
    func testSignChecksAreRecordedOnlyWhenTheyPassOnTheSource() throws {
        let fx = try SoftHSMFixture()
        try tokens(fx)
        let s = try fx.session("A")
        try TestObjects.dsaPair(s, label: "dsa-1024", id: 0x60)
        try TestObjects.pair(s, rsaBits: 2048, label: "rsa-pss-only", id: 0x61, privateExtra: [Attribute(0x4000_0600, .ulongs([0x43]))])
        try TestObjects.pair(s, rsaBits: 2048, label: "rsa-always-auth", id: 0x62, privateExtra: [.bool(0x202, true)])
        try TestObjects.pair(s, curve: TestObjects.p256, label: "ec-no-verify", id: 0x63, publicVerify: false)
        try TestObjects.pair(s, rsaBits: 2048, label: "rsa-plain", id: 0x64)
        try TestObjects.pair(s, curve: TestObjects.p256, label: "ec-plain", id: 0x65)

        let archive = try backup(try fx.open("A"))
        let b = try fx.open("B")
        try restore(archive, onto: b, dryRun: true)
        XCTAssertEqual(b.lastRestore?.checked, 2, "\(String(describing: b.lastRestore))")
        XCTAssertEqual(b.lastRestore?.unchecked, 4, "\(String(describing: b.lastRestore))")
        try restore(archive, onto: b, dryRun: false)
        XCTAssertEqual(try fx.objectCount("B"), 12)
        XCTAssertEqual(b.lastRestore?.checked, 2)
    }

    /// An archive from before that fix carries `sign` checks on keys the check cannot pass on any
    /// token (PSS-only, CKA_ALWAYS_AUTHENTICATE, a public half with CKA_VERIFY false): the
    /// archive's own attributes show it, so those keys restore unchecked instead of never.
    func testAnOlderArchivesSignChecksOnKeysThatCannotPassThemCountAsUnchecked() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "B"] { try fx.initToken(t); _ = try fx.provision(t, manufacturer: Self.manufacturer, keys: keys) }
        let s = try fx.session("A")
        try TestObjects.pair(s, rsaBits: 2048, label: "rsa-pss-only", id: 0x61, privateExtra: [Attribute(0x4000_0600, .ulongs([0x43]))])
        try TestObjects.pair(s, rsaBits: 2048, label: "rsa-always-auth", id: 0x62, privateExtra: [.bool(0x202, true)])
        try TestObjects.pair(s, curve: TestObjects.p256, label: "ec-no-verify", id: 0x63, publicVerify: false)
        let archive = try backup(try fx.open("A"))
        let (_, bundle) = try InnerBlob.open(archive.blob, keyring: BackupKeyring(manufacturerId: Self.manufacturer, mkbk: keys.mkbk, akbk: keys.akbk))
        let (record, objects) = try PKCS11Payload.decode(bundle.objects)
        // As the earlier version wrote them: a `sign` check on every private key with a public half.
        let old = objects.map { o -> TokenObject in
            guard o.objectClass == CK.oPrivateKey,
                  let pub = objects.firstIndex(where: { $0.objectClass == CK.oPublicKey && $0.idHex == o.idHex }) else { return o }
            return TokenObject(objectClass: o.objectClass, className: o.className, keyType: o.keyType, keyTypeName: o.keyTypeName,
                               attributes: o.attributes, info: o.info, wrapped: o.wrapped, check: KeyCheck(kind: "sign", value: "", publicKey: pub))
        }
        XCTAssertEqual(old.filter { $0.check?.kind == "sign" }.count, 3)
        let b = try fx.open("B")
        try b.apply(record: record, objects: old, restoreId: "t", dryRun: true)
        XCTAssertEqual(b.lastRestore?.checked, 0, "\(String(describing: b.lastRestore))")
        XCTAssertEqual(b.lastRestore?.unchecked, 3, "\(String(describing: b.lastRestore))")
    }

    // MARK: finding 3

    /// A value over the 16 MiB read limit was left out silently (the data object came back
    /// without its CKA_VALUE); now the object is listed and the backup fails without --allow-partial.
    func testAnOversizeAttributeIsAListedSkipNotASilentOmission() throws {
        let fx = try SoftHSMFixture()
        try tokens(fx, ["A"])
        let s = try fx.session("A")
        _ = try s.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bytes(0x3, Array("huge".utf8)),
                          .bytes(0x11, [UInt8](repeating: 0x5A, count: PKCS11Limits.attributeBytes + 1))])
        try TestObjects.secret(s, CK.kAES, CK.mAESKeyGen, bytes: 16, label: "small", id: 1, sensitive: true, encrypt: true, sign: false)
        let a = try fx.open("A")
        var written = 0
        XCTAssertThrowsError(try a.backup(to: { written += $0.count }, chunkSize: 4096)) { e in
            guard let e = e as? PKCS11Error else { return XCTFail("\(e)") }
            XCTAssertEqual(e.code, .partialBackup)
            XCTAssertEqual(e.skipped.map(\.label), ["huge"])
            XCTAssertTrue(e.skipped.first?.reason.contains("CKA_VALUE is \(PKCS11Limits.attributeBytes + 1) bytes") ?? false, "\(e.skipped)")
        }
        XCTAssertEqual(written, 0)
    }

    /// A secret or private key whose archive lacks CKA_SENSITIVE, CKA_EXTRACTABLE or CKA_PRIVATE
    /// takes the safe value, never the target token's default (SoftHSM: not sensitive).
    func testMissingSecurityAttributesGetTheSafeValues() throws {
        func object(_ cls: UInt64, _ attrs: [EncodedAttribute]) -> TokenObject {
            TokenObject(objectClass: cls, className: CK.className(cls), keyType: cls == CK.oData ? nil : CK.kAES,
                        keyTypeName: nil, attributes: attrs, info: [], wrapped: nil, check: nil)
        }
        let label = EncodedAttribute(type: 0x3, name: "CKA_LABEL", value: Hex.encode(Array("k".utf8)))
        for cls in [CK.oSecretKey, CK.oPrivateKey] {
            let t = try object(cls, [label]).restoreAttributes()
            XCTAssertTrue(t.contains(.bool(0x103, true)) && t.contains(.bool(0x162, false)) && t.contains(.bool(0x2, true)), "\(t)")
            // Recorded values are kept (a key the source made readable stays readable, no duplicates).
            let kept = try object(cls, [label, EncodedAttribute(type: 0x103, name: "CKA_SENSITIVE", value: "00")]).restoreAttributes()
            XCTAssertEqual(kept.filter { $0.type == 0x103 }, [.bool(0x103, false)])
        }
        XCTAssertEqual(try object(CK.oData, [label]).restoreAttributes(), [.bytes(0x3, Array("k".utf8))])
    }

    // MARK: finding 4

    /// Label bytes that are not UTF-8 came back with U+FFFD, and the duplicate search missed the
    /// original: the label now round-trips byte for byte and a second restore is refused.
    func testANonUTF8LabelRoundTripsByteForByte() throws {
        let fx = try SoftHSMFixture()
        try tokens(fx)
        let label: [UInt8] = [0xFF, 0x41]
        let sa = try fx.session("A")
        _ = try sa.generateKey(CK.mAESKeyGen, [
            .ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .ulong(0x161, 16), .bool(0x1, true), .bool(0x2, true),
            .bool(0x103, true), .bool(0x162, true), .bool(0x104, true), .bytes(0x3, label), .bytes(0x102, [0x70])])
        _ = try sa.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bytes(0x3, [0x63, 0x61, 0x66, 0xE9]),
                           .bytes(0x11, [1, 2, 3])])
        let archive = try backup(try fx.open("A"))
        let b = try fx.open("B")
        try restore(archive, onto: b, dryRun: false)
        let sb = try fx.session("B")
        XCTAssertEqual(try sb.find([.ulong(0x0, CK.oSecretKey), .bool(0x1, true), .bytes(0x3, label)]).count, 1)
        XCTAssertEqual(try sb.find([.ulong(0x0, CK.oData), .bool(0x1, true), .bytes(0x3, [0x63, 0x61, 0x66, 0xE9])]).count, 1)
        XCTAssertEqual(try fx.objectCount("B"), 2)
        XCTAssertThrowsError(try restore(archive, onto: b, dryRun: false)) { e in
            XCTAssertEqual((e as? PKCS11Error)?.code, .duplicateObject, "\(e)")
        }
        XCTAssertEqual(try fx.objectCount("B"), 2)
    }

    // MARK: finding 7

    /// A provision killed after the SO made PBK_T left it alone; the retry made a second one.
    /// Now the retry replaces it: one pair, found.
    func testARetriedProvisionReplacesTheLonePBKTOfAKilledOne() throws {
        let fx = try SoftHSMFixture()
        try fx.initToken("A")
        let keys = try BackupKeys.random()
        let fp = try KeyHierarchy.fingerprint(of: try KeyHierarchy.derivePBK(mkbk: keys.mkbk, akbk: keys.akbk, manufacturerId: Self.manufacturer),
                                              manufacturerId: Self.manufacturer)
        let tLabel = Array((PKCS11Labels.tokenPBKPrefix + Self.manufacturer).utf8)
        do {
            let m = try PKCS11Module.open(path: SoftHSMFixture.module)
            let so = try m.openSession(slot: try m.token(labelled: "A").slot)
            try so.login(user: CK.userSO, pin: SoftHSMFixture.pin(SoftHSMFixture.soPIN))
            _ = try so.generateKey(CK.mAESKeyGen, [.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .ulong(0x161, 32), .bool(0x1, true),
                                                   .bool(0x2, false), .bool(0x103, true), .bool(0x162, false), .bool(0x106, true),
                                                   .bytes(0x3, tLabel), .bytes(0x102, fp)])
            so.logout()
        }
        XCTAssertNil(try fx.open("A").fingerprint)
        _ = try fx.provision("A", manufacturer: Self.manufacturer, keys: keys)
        XCTAssertEqual(try fx.open("A").fingerprint, fp)
        let s = try fx.session("A")
        XCTAssertEqual(try s.find([.ulong(0x0, CK.oSecretKey), .bool(0x1, true), .bytes(0x3, tLabel), .bytes(0x102, fp)]).count, 1)
    }

    // MARK: finding 6

    /// Lengths and counts a module reports: Int(exactly:) and a named bound, never a trap.
    func testReportedLengthsAreBoundedNotTrapped() throws {
        XCTAssertEqual(try PKCS11Limits.length(100, limit: PKCS11Limits.attributeBytes, "C_Sign", "signing"), 100)
        XCTAssertEqual(try PKCS11Limits.length(UInt64(PKCS11Limits.attributeBytes), limit: PKCS11Limits.attributeBytes, "C_Sign", "x"),
                       PKCS11Limits.attributeBytes)
        for bad: UInt64 in [UInt64(PKCS11Limits.attributeBytes) + 1, UInt64(Int.max) + 1, UInt64.max - 1, UInt64.max] {
            XCTAssertThrowsError(try PKCS11Limits.length(bad, limit: PKCS11Limits.attributeBytes, "C_WrapKey", "wrapping object 7")) { e in
                guard let e = e as? PKCS11Error else { return XCTFail("\(e)") }
                XCTAssertEqual(e.code, .callFailed)
                XCTAssertEqual(e.function, "C_WrapKey")
                XCTAssertTrue(e.reason.contains("wrapping object 7") && e.reason.contains("\(bad)"), e.reason)
            }
        }
        XCTAssertThrowsError(try PKCS11Limits.length(UInt64(PKCS11Limits.slots) + 1, limit: PKCS11Limits.slots, "C_GetSlotList", "listing slots"))
    }
}

extension TestObjects {
    /// A DSA-1024 pair (domain parameters generated in the token as a session object).
    static func dsaPair(_ s: PKCS11Session, label: String, id: UInt8) throws {
        let params = try s.generateKey(0x2000, [.ulong(0x0, 6), .ulong(0x100, 1), .bool(0x1, false), .ulong(0x133, 1024)])
        defer { try? s.destroy(params) }
        var pub: [Attribute] = [.bool(0x1, true), .bool(0x10A, true), .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])]
        for t: UInt64 in [0x130, 0x131, 0x132] { pub.append(Attribute(t, try s.required(params, t, as: .bytes))) }
        let priv: [Attribute] = [.bool(0x1, true), .bool(0x2, true), .bool(0x103, true), .bool(0x162, true), .bool(0x108, true),
                                 .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])]
        _ = try s.generateKeyPair(0x10, publicKey: pub, privateKey: priv)
    }

    /// `pair` with extra private-key attributes, or a public half without CKA_VERIFY.
    static func pair(_ s: PKCS11Session, rsaBits: UInt64? = nil, curve: [UInt8]? = nil, label: String, id: UInt8,
                     privateExtra: [Attribute] = [], publicVerify: Bool = true) throws {
        var pub: [Attribute] = [.bool(0x1, true), .bool(0x10A, publicVerify), .bool(0x104, false), .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])]
        if let rsaBits { pub += [.ulong(0x121, rsaBits), .bytes(0x122, [1, 0, 1])] }
        if let curve { pub.append(.bytes(0x180, curve)) }
        let priv: [Attribute] = [.bool(0x1, true), .bool(0x2, true), .bool(0x103, true), .bool(0x162, true), .bool(0x108, true),
                                 .bool(0x105, false), .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])] + privateExtra
        _ = try s.generateKeyPair(rsaBits != nil ? CK.mRSAKeyPairGen : CK.mECKeyPairGen, publicKey: pub, privateKey: priv)
    }
}

// MARK: finding 2

extension PKCS11CLITests {
    func provisionAB() throws {
        for t in ["A", "B"] {
            try fx.initToken(t)
            let r = try run(["pkcs11", "provision", "--module", module, "--token", t, "--manufacturer", "softhsm"])
            XCTAssertEqual(r.status, 0, r.err)
        }
    }

    func labels(_ t: String) throws -> [String] {
        let s = try fx.session(t)
        return try s.find([.bool(0x1, true)]).map { h -> String in
            guard case .success(.bytes(let b)) = try s.attribute(h, 0x3, as: .bytes) else { return "" }
            return String(decoding: b, as: UTF8.self)
        }.filter { !$0.hasPrefix(PKCS11Labels.pbkPrefix) && !$0.hasPrefix(PKCS11Labels.tokenPBKPrefix) }.sorted()
    }

    /// An object with CKA_DESTROYABLE false was made last under the temporary label: killed after
    /// it existed, every later restore failed in the sweep (exit 74). Now it is made under its
    /// final label after every other check passed, so the next restore names it as a duplicate
    /// (with or without --replace, which cannot destroy it) and changes nothing, and a backup takes it.
    func testARestoreKilledAfterANonDestroyableObjectLeavesTheTokenUsable() throws {
        try provisionAB()
        let sa = try fx.session("A")
        for i in 0..<2 { _ = try sa.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bytes(0x3, Array("keep-\(i)".utf8))]) }
        _ = try sa.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bool(0x172, false), .bytes(0x3, Array("fixed".utf8)),
                           .bytes(0x11, [9])])
        let archive = fx.dir + "/nd.hsmbak"
        XCTAssertEqual(try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive]).status, 0)
        let marker = fx.dir + "/paused-nd"
        let (p, _, err) = try launch(["restore", archive] + token + ["--token", "B"],
                                     env: environment(extra: ["HSMBACKUP_TEST_PKCS11_PAUSE": "phase2:3:\(marker)"]))
        var waited = 0
        while !FileManager.default.fileExists(atPath: marker) && p.isRunning && waited < 1200 { usleep(50_000); waited += 1 }
        XCTAssertTrue(FileManager.default.fileExists(atPath: marker), (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let left = try labels("B")
        XCTAssertEqual(left.filter { !$0.hasPrefix(PKCS11Labels.restoringPrefix) }, ["fixed"], "\(left)")
        XCTAssertEqual(left.count, 3, "\(left)")

        for extra in [[], ["--replace"]] {
            let r = try run(["restore", archive] + token + ["--token", "B"] + extra)
            XCTAssertEqual(r.status, 64, "\(extra) \(r.err)")
            XCTAssertTrue(r.err.contains("duplicateObject") && r.err.contains("\"fixed\""), r.err)
            XCTAssertEqual(try labels("B"), left, "\(extra): a refused restore changes nothing")
        }
        let r = try run(["backup", "create"] + token + ["--token", "B", "--kms-key", "k", "--out", fx.dir + "/b.hsmbak", "--allow-partial"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("1 keys"), r.out)
        XCTAssertTrue(r.err.contains("left by an unfinished restore"), r.err)
    }

    /// An object under the temporary label that refuses C_DestroyObject (from an earlier version)
    /// stopped every restore at the sweep (exit 74). Now the sweep skips and names it, the restore
    /// succeeds, and a backup lists it with the true reason.
    func testAStaleObjectThatCannotBeDestroyedIsNamedNotFatal() throws {
        try provisionAB()
        let sa = try fx.session("A")
        _ = try sa.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bytes(0x3, Array("config".utf8)), .bytes(0x11, [1])])
        let archive = fx.dir + "/a.hsmbak"
        XCTAssertEqual(try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive]).status, 0)
        let stale = PKCS11Labels.restoringPrefix + "0011/old"
        _ = try fx.session("B").create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bool(0x172, false),
                                        .bytes(0x3, Array(stale.utf8))])
        var r = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains(stale) && r.err.contains("CKA_DESTROYABLE false"), r.err)
        XCTAssertEqual(try labels("B"), ["config", stale])
        r = try run(["backup", "create"] + token + ["--token", "B", "--kms-key", "k", "--out", fx.dir + "/b.hsmbak"])
        XCTAssertEqual(r.status, 65, r.err)
        XCTAssertTrue(r.err.contains(stale) && r.err.contains("CKA_DESTROYABLE is false"), r.err)
    }
}

// MARK: finding 7

extension PKCS11CLITests {
    /// A lone PBK_T (a provision killed between the SO's and the user's step, or another operator
    /// key's) could be the one findProvisioning kept, so the token read "not provisioned" for
    /// ever. Now the pair is matched by fingerprint, and backups list the lone one.
    func testALonePBKTNeverHidesTheProvisionedPair() throws {
        try fx.initToken("A")
        // Lone PBK_Ts of the same manufacturer under other ids, made by the SO before and after the provision.
        func orphan(_ id: UInt8) throws {
            let m = try PKCS11Module.open(path: module)
            let s = try m.openSession(slot: try m.token(labelled: "A").slot)
            try s.login(user: CK.userSO, pin: SoftHSMFixture.pin(SoftHSMFixture.soPIN))
            defer { s.logout() }
            _ = try s.generateKey(CK.mAESKeyGen, [.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .ulong(0x161, 32), .bool(0x1, true),
                                                  .bool(0x2, false), .bool(0x103, true), .bool(0x162, false), .bool(0x106, true),
                                                  .bytes(0x3, Array((PKCS11Labels.tokenPBKPrefix + "softhsm").utf8)),
                                                  .bytes(0x102, [UInt8](repeating: id, count: 16))])
        }
        try orphan(1)
        try orphan(2)
        var r = try run(["pkcs11", "provision", "--module", module, "--token", "A", "--manufacturer", "softhsm"])
        XCTAssertEqual(r.status, 0, r.err)
        let fingerprint = r.out.split(separator: "\n").first { $0.contains("PBK fingerprint") }.map { String($0.split(separator: " ").last!) } ?? "?"
        try orphan(3)
        try orphan(4)
        r = try run(["pkcs11", "show"] + token + ["--token", "A"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("provisioned: manufacturer softhsm, PBK fingerprint \(fingerprint)"), r.out)
        // The lone ones are listed, not dropped silently.
        r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", fx.dir + "/a.hsmbak"])
        XCTAssertEqual(r.status, 65, r.err)
        XCTAssertEqual(r.err.components(separatedBy: "an hsmbackup PBK that is not the pair in use").count - 1, 4, r.err)
        r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", fx.dir + "/a.hsmbak", "--allow-partial"])
        XCTAssertEqual(r.status, 0, r.err)
    }
}
