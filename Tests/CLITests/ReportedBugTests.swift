import Foundation
import XCTest

/// Regression tests for bugs the CLI transcript tests found (exit codes and a swapped archive).
final class ReportedBugTests: CLIWorldTestCase {

    /// Bug 1: envelope-level verify with no key that opens the archive should be 67 (no usable key), not 65.
    func testEnvelopeVerifyWithNoUsableKeyIs67() throws {
        let archive = try w.createArchiveFile()
        try w.expect(0, ["kms", "create-key", "unrelated"])
        try w.expect(67, ["verify", archive, "--level", "envelope", "--kms-key", "unrelated"])
        let fresh = try CLI.makeHome()
        XCTAssertEqual(try CLI.run(["kms", "create-key", "other"], home: fresh).exitCode, 0)
        let r = try CLI.run(["verify", archive, "--level", "envelope"], home: fresh)
        XCTAssertEqual(r.exitCode, 67, r.description)
    }

    /// Bug 2: full verify with an HSM of the same manufacturer name but other backup keys should be 68 like restore.
    func testFullVerifyWithOtherBackupKeysIs68() throws {
        let archive = try w.createArchiveFile()
        let otherHome = w.path("home-other-keys"), hsm = w.path("hsm-other-keys")
        for args in [["manufacturer", "create", "acme"], ["operator", "init"],
                     ["hsm", "create", hsm, "--manufacturer", "acme", "--model", "M1", "--serial", "Z9", "--cluster", "c1"]] {
            XCTAssertEqual(try CLI.run(args, home: otherHome).exitCode, 0)
        }
        try w.expect(68, ["verify", archive, "--level", "full", "--hsm", hsm])
    }

    /// Bug 3: a stored backup whose archive names another backup id must not verify clean.
    func testStoredArchiveOfAnotherBackupIsAFinding() throws {
        let id = try w.createStoredBackup()
        let twin = String(id.prefix(12)) + String(repeating: "0", count: 20)
        let objects = try JSON.any(try w.expect(0, ["store", "ls", "--objects", "--prefix", "backups/\(id)/", "--json"]).stdout) as? [String] ?? []
        let metaKey = try XCTUnwrap(objects.filter { $0.contains("/meta-") }.max())
        let metaFile = w.path("meta"), archiveFile = w.path("archive")
        try w.expect(0, ["store", "get", metaKey, "-o", metaFile])
        try w.expect(0, ["store", "get", "backups/\(id)/archive", "-o", archiveFile])
        var meta = try Files.read(metaFile)
        Files.replaceAll(&meta, Array(id.utf8), Array(twin.utf8))
        try Files.write(meta, metaFile)
        try w.expect(0, ["store", "put", "--allow-reserved", "backups/\(twin)/" + metaKey.split(separator: "/").last!, metaFile])
        try w.expect(0, ["store", "put", "--allow-reserved", "backups/\(twin)/archive", archiveFile])
        try w.expect(0, ["store", "reindex"])
        let r = try w.run(["verify", twin, "--level", "full", "--hsm", w.targetHSM])
        XCTAssertEqual(r.exitCode, 65, r.description)
    }

    /// Bug 4: --tag / --never-expires with --out are silently dropped (no catalog entry); expected a usage error.
    func testTagWithOutIsRefused() throws {
        let out = w.path("t") + ".hsmb"
        try w.expect(64, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", out, "--tag", "env=prod"])
        XCTAssertFalse(Files.exists(out))
    }
}
