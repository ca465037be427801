import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PKCS11HSM
import XCTest

/// Issue 15's last defects: the backup streams its payload (no piece of it larger than the spool's
/// 64 KiB is ever held to hand to the writer, whatever the object count), and a restore holds the
/// token's restore lock so a second one onto the same token fails at once and changes nothing.
final class PayloadStreamingTests: XCTestCase {
    func testTheBackupHandsThePayloadToTheWriterInBoundedPiecesAndItRestores() throws {
        let fx = try SoftHSMFixture()
        let keys = try BackupKeys.random()
        for t in ["A", "B"] { try fx.initToken(t); _ = try fx.provision(t, manufacturer: "softhsm-test", keys: keys) }
        let sa = try fx.session("A")
        try TestObjects.populate(sa, unbackable: false)
        // 160 data objects of 1,500 bytes: a payload of several times the 64 KiB piece.
        for i in 0..<160 {
            _ = try sa.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bytes(0x3, Array("bulk-\(i)".utf8)),
                               .bytes(0x11, [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1500))])
        }
        let a = try fx.open("A")
        var blob: [UInt8] = []
        let context = try a.archiveContext()
        try a.backup(to: { blob += $0 }, chunkSize: 16384)
        XCTAssertEqual(a.lastBackup?.objects, TestObjects.backedUp + 160)
        XCTAssertGreaterThan(a.lastBackupPayloadBytes, 6 * (64 << 10))
        XCTAssertGreaterThan(a.lastBackupLargestPiece, 0)
        XCTAssertLessThanOrEqual(a.lastBackupLargestPiece, 64 << 10)

        // The streamed payload is the one the reader accepts (manifest, sizes, SHA-256, order).
        let b = try fx.open("B")
        let s = try b.beginRestore(dryRun: false, archiveContext: context)
        try s.feed(blob)
        let summary = try s.finish()
        XCTAssertEqual(summary.keys, TestObjects.backedUp + 160)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp + 160)
        let sb = try fx.session("B")
        XCTAssertEqual(try TestObjects.value(sb, try TestObjects.handle(sb, CK.oData, "bulk-77")), [UInt8](repeating: 77, count: 1500))
    }
}

extension PKCS11CLITests {
    /// Two restores onto one token: while the first holds the token's lock (paused between its
    /// phases by the debug-only hook), the second fails at once with exit 75 (tokenBusy) and
    /// changes nothing; a dry run is not locked out; once the first is gone the lock is free.
    func testASecondRestoreOntoTheSameTokenFailsWhileTheFirstRuns() throws {
        try prepare(unbackable: false)
        let archive = fx.dir + "/lock.hsmbak"
        XCTAssertEqual(try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive]).status, 0)
        let marker = fx.dir + "/paused-lock"
        let (p, _, err) = try launch(["restore", archive] + token + ["--token", "B"],
                                     env: environment(extra: ["HSMBACKUP_TEST_PKCS11_PAUSE": "between:\(marker)"]))
        var waited = 0
        while !FileManager.default.fileExists(atPath: marker) && p.isRunning && waited < 1200 { usleep(50_000); waited += 1 }
        XCTAssertTrue(FileManager.default.fileExists(atPath: marker), (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")

        let second = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(second.status, 75, second.err)
        XCTAssertTrue(second.err.contains("tokenBusy"), second.err)
        XCTAssertTrue(second.err.contains("pid \(p.processIdentifier)"), second.err)
        XCTAssertEqual(try fx.objectCount("B"), 0)
        let dry = try run(["restore", archive] + token + ["--token", "B", "--dry-run"])
        XCTAssertEqual(dry.status, 0, dry.err)

        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let third = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(third.status, 0, third.err)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
    }
}
