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

    /// Two archived objects with the same class, label and CKA_ID (PKCS#11 allows it) find the
    /// same token objects: --replace must destroy each once and report a complete restore.
    func testReplaceWithTwinObjectsDestroysEachOnce() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "B"] { try fx.initToken(t); _ = try fx.provision(t, manufacturer: Self.manufacturer, keys: keys) }
        let sa = try fx.session("A")
        for _ in 0..<2 {
            try TestObjects.secret(sa, CK.kAES, CK.mAESKeyGen, bytes: 32, label: "twin", id: 0x50, sensitive: true, encrypt: true, sign: false)
        }
        let archive = try backup(try fx.open("A"))
        let b = try fx.open("B")
        try restore(archive, onto: b)
        XCTAssertEqual(try fx.objectCount("B"), 2)
        do {
            try restore(archive, onto: b)
            XCTFail("a second restore without --replace must be refused")
        } catch let e as PKCS11Error {
            XCTAssertEqual(e.code, .duplicateObject)
            XCTAssertTrue(e.reason.hasPrefix("2 object(s)"), e.reason)
        }
        b.options.replace = true
        try restore(archive, onto: b)
        XCTAssertEqual(try fx.objectCount("B"), 2)
        XCTAssertEqual(b.lastRestore?.replaced, 2)
    }
}

/// The module is initialized once per process: an instance whose C_Initialize answered
/// CKR_CRYPTOKI_ALREADY_INITIALIZED must not C_Finalize the library under the one that did.
final class PKCS11ModuleLifetimeReviewTests: XCTestCase {
    func testReleasingASecondSpellingOfTheModuleKeepsTheFirstOnesSessionsAlive() throws {
        let fx = try SoftHSMFixture()
        try fx.initToken("A")
        let s = try fx.session("A")
        XCTAssertNoThrow(try s.find([]))
        // Another spelling of the same library: a second PKCS11Module, the same loaded library.
        let alias = (SoftHSMFixture.module as NSString).deletingLastPathComponent + "/./" + (SoftHSMFixture.module as NSString).lastPathComponent
        do {
            let second = try PKCS11Module.open(path: alias)
            XCTAssertFalse(try second.tokens().isEmpty)
        }
        // Before the fix the second instance's deinit ran C_Finalize: CKR_CRYPTOKI_NOT_INITIALIZED here.
        XCTAssertNoThrow(try s.find([]))
        XCTAssertNoThrow(try s.module.tokens())
    }
}

extension PKCS11CLITests {
    /// Non-modifiable objects cannot take the temporary label: phase 2 makes them after every
    /// modifiable one, so a restore killed while it makes the modifiable ones leaves only objects
    /// under the temporary label (which the next restore removes), never one under a final label.
    func testARestoreKilledInPhase2LeavesNoObjectUnderItsFinalLabel() throws {
        let archive = try restoreOfSixDataObjectsKilled(afterMaking: 3)
        let s = try fx.session("B")
        let labels = try s.find([.bool(0x1, true)]).map { h -> String in
            guard case .success(.bytes(let b)) = try s.attribute(h, 0x3, as: .bytes) else { return "" }
            return String(decoding: b, as: UTF8.self)
        }.filter { !$0.hasPrefix(PKCS11Labels.pbkPrefix) && !$0.hasPrefix(PKCS11Labels.tokenPBKPrefix) }
        XCTAssertEqual(labels.count, 3, "\(labels)")
        XCTAssertTrue(labels.allSatisfy { $0.hasPrefix(PKCS11Labels.restoringPrefix) }, "\(labels)")
        let r = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try fx.objectCount("B"), 6)
    }
}

extension PKCS11CLITests {
    /// A restore killed after some objects took their final labels (the non-modifiable ones)
    /// leaves a journal beside the token's lock: the next restore's duplicate refusal names the
    /// interrupted restore and says that --replace finishes it; that run then removes the journal.
    func testAnInterruptedRestoreIsNamedByTheNextOne() throws {
        // Five made: the three modifiable ones (temporary label), two non-modifiable (final labels).
        let archive = try restoreOfSixDataObjectsKilled(afterMaking: 5)
        let refused = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(refused.status, 64, refused.err)
        XCTAssertTrue(refused.err.contains("duplicateObject") && refused.err.contains("interrupted in phase 2"), refused.err)
        XCTAssertTrue(refused.err.contains("--replace completes it"), refused.err)
        let done = try run(["restore", archive] + token + ["--token", "B", "--replace"])
        XCTAssertEqual(done.status, 0, done.err)
        XCTAssertEqual(try fx.objectCount("B"), 6)
        // The journal went with the restore that finished: a later refusal is a plain one.
        let again = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(again.status, 64, again.err)
        XCTAssertFalse(again.err.contains("interrupted"), again.err)
    }
}

extension PKCS11CLITests {
    /// Tokens A and B provisioned; six data objects on A, the odd ones non-modifiable (so phase 2
    /// makes them after the others, under their final labels); A backed up; a restore onto B
    /// killed once phase 2 has made `made` token objects. Returns the archive.
    func restoreOfSixDataObjectsKilled(afterMaking made: Int) throws -> String {
        try provisionAB()
        let sa = try fx.session("A")
        for i in 0..<6 {
            _ = try sa.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bool(0x170, i % 2 == 1),
                               .bytes(0x3, Array("data-\(i)".utf8)), .bytes(0x11, [UInt8(i)])])
        }
        let archive = fx.dir + "/six-\(made).hsmbak"
        XCTAssertEqual(try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive]).status, 0)
        let marker = fx.dir + "/paused-six-\(made)"
        let (p, _, err) = try launch(["restore", archive] + token + ["--token", "B"],
                                     env: environment(extra: ["HSMBACKUP_TEST_PKCS11_PAUSE": "phase2:\(made):\(marker)"]))
        var waited = 0
        while !FileManager.default.fileExists(atPath: marker) && p.isRunning && waited < 1200 { usleep(50_000); waited += 1 }
        XCTAssertTrue(FileManager.default.fileExists(atPath: marker), (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        return archive
    }
}
