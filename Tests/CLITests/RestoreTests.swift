import Foundation
import XCTest

/// Transcript tests of `restore`: contents reproduced, dry run, refusals leave the target
/// byte-identical.
final class RestoreTests: CLIWorldTestCase {
    nonisolated(unsafe) static var archive: String!
    var archive: String { Self.archive }

    override class func setUp() {
        super.setUp()
        archive = try! world.createArchiveFile(["--signed", "--frame-length", "2048"])
    }

    func testRestoreFromAFileReproducesTheContents() throws {
        let target = try w.makeHSM(keys: 3, seed: 1)  // contents to be replaced
        let source = try w.contents(w.sourceHSM)
        XCTAssertNotEqual(try w.contents(target).keys, source.keys)
        let r = try w.expect(0, ["restore", archive, "--hsm", target])
        XCTAssertTrue(r.stdout.hasPrefix("restored backup "), r.description)
        XCTAssertTrue(r.stdout.contains("\(CLIWorld.userCount) users, \(CLIWorld.keyCount) keys"), r.description)
        let restored = try w.contents(target)
        XCTAssertEqual(restored.keys, source.keys)
        XCTAssertEqual(restored.users, source.users)
        // The target keeps its own identity.
        let show = try JSON.object(try w.expect(0, ["hsm", "show", target, "--json"]).stdout)
        XCTAssertNotEqual((show["identity"] as? [String: Any])?["hsmId"] as? String, "hsm-S1")
    }

    func testRestoreFromTheStoreByIdPrefixWithJSON() throws {
        let id = try w.createStoredBackup(["--kms-key", "k2"])
        let target = try w.makeHSM()
        let r = try w.expect(0, ["restore", String(id.prefix(10)), "--hsm", target, "--kms-key", "k2", "--json"])
        let j = try JSON.object(r.stdout)
        XCTAssertEqual(j["backupId"] as? String, id)
        XCTAssertEqual(j["dryRun"] as? Bool, false)
        XCTAssertEqual(j["keys"] as? Int, CLIWorld.keyCount)
        XCTAssertEqual(j["users"] as? Int, CLIWorld.userCount)
        XCTAssertEqual(j["sourceHSM"] as? String, "hsm-S1")
        XCTAssertEqual(try w.contents(target).keys, try w.contents(w.sourceHSM).keys)
        XCTAssertEqual(try w.contents(target).users, try w.contents(w.sourceHSM).users)
    }

    func testDryRunChangesNothing() throws {
        let target = try w.makeHSM(keys: 4, seed: 2)
        let before = try Files.snapshot(target)
        let r = try w.expect(0, ["restore", archive, "--hsm", target, "--dry-run"])
        XCTAssertTrue(r.stdout.hasPrefix("dry run: would restore"), r.description)
        XCTAssertTrue(r.stdout.contains("nothing changed"), r.description)
        XCTAssertEqual(try Files.snapshot(target), before, "the HSM's state directory is byte-identical")
        let j = try JSON.object(try w.expect(0, ["restore", archive, "--hsm", target, "--dry-run", "--json"]).stdout)
        XCTAssertEqual(j["dryRun"] as? Bool, true)
        XCTAssertEqual(j["keys"] as? Int, CLIWorld.keyCount)
        XCTAssertEqual(try Files.snapshot(target), before)
    }

    func testAnotherManufacturerIsRefusedAndTheTargetUntouched() throws {
        let foreign = try w.makeHSM(manufacturer: "other", keys: 3, seed: 3)
        let before = try Files.snapshot(foreign)
        let r = try w.expect(68, ["restore", archive, "--hsm", foreign])
        XCTAssertTrue(r.stderr.contains("incompatibleHSM"), r.description)
        XCTAssertEqual(r.stdout, "")
        XCTAssertEqual(try Files.snapshot(foreign), before)
        try w.expect(68, ["restore", archive, "--hsm", foreign, "--dry-run"])
        let id = try w.createStoredBackup()
        try w.expect(68, ["restore", id, "--hsm", foreign])
        XCTAssertEqual(try Files.snapshot(foreign), before)
    }

    /// Same manufacturer name, but another home's MKBK and AKBK (another PBK): refused, 68.
    func testSameManufacturerNameWithOtherBackupKeysIsRefused() throws {
        let otherHome = w.path("home-other-keys")
        let hsm = w.path("hsm-other-keys")
        for args in [["manufacturer", "create", "acme"], ["operator", "init"],
                     ["hsm", "create", hsm, "--manufacturer", "acme", "--model", "M1", "--serial", "Z9", "--cluster", "c1"]] {
            let r = try CLI.run(args, home: otherHome)
            XCTAssertEqual(r.exitCode, 0, r.description)
        }
        let before = try Files.snapshot(hsm)
        let r = try w.expect(68, ["restore", archive, "--hsm", hsm])
        XCTAssertTrue(r.stderr.contains("pbkMismatch"), r.description)
        try w.expect(68, ["restore", archive, "--hsm", hsm, "--dry-run"])
        XCTAssertEqual(try Files.snapshot(hsm), before)
    }

    func testADamagedArchiveIsRefusedAndTheTargetUntouched() throws {
        let target = try w.makeHSM(keys: 3, seed: 4)
        let before = try Files.snapshot(target)
        let size = try Files.size(archive)
        // A frame in the middle, and the signature footer at the very end.
        for offset in [size / 2, size - 5] {
            let bad = w.path("bad") + ".hsmb"
            try Files.flipped(archive, at: offset, into: bad)
            let r = try w.expect(65, ["restore", bad, "--hsm", target])
            XCTAssertEqual(r.stdout, "", r.description)
            XCTAssertEqual(try Files.snapshot(target), before, "offset \(offset): target untouched")
        }
        let truncated = w.path("short") + ".hsmb"
        try Files.write(Array(try Files.read(archive).prefix(size - 100)), truncated)
        try w.expect(65, ["restore", truncated, "--hsm", target])
        XCTAssertEqual(try Files.snapshot(target), before)
    }

    func testAPendingDeletionBackupIsRefused() throws {
        let id = try w.createStoredBackup()
        let target = try w.makeHSM(keys: 2, seed: 5)
        let before = try Files.snapshot(target)
        try w.expect(0, ["backup", "delete", id])
        let r = try w.run(["restore", id, "--hsm", target])
        XCTAssertEqual(r.exitCode, 66, r.description)
        XCTAssertTrue(r.stderr.contains("PENDING_DELETION"), r.description)
        XCTAssertEqual(try Files.snapshot(target), before)
        // Undeleted, it restores.
        try w.expect(0, ["backup", "undelete", id])
        try w.expect(0, ["restore", id, "--hsm", target])
        XCTAssertEqual(try w.contents(target).keys, try w.contents(w.sourceHSM).keys)
    }

    func testRestoreUsageAndNotFound() throws {
        try w.expect(64, ["restore", archive])                                        // --hsm missing
        try w.expect(66, ["restore", archive, "--hsm", w.path("none")])
        try w.expect(66, ["restore", "ffffffffffff0000", "--hsm", w.targetHSM])
        try w.expect(66, ["restore", archive, "--hsm", w.targetHSM, "--kms-key", "no-such-key"])
        try w.expect(64, ["restore", archive, "--hsm", w.targetHSM, "--yes-really"])
        XCTAssertEqual(try w.contents(w.targetHSM).keys, [])
    }

    func testNoKeyThatOpensItIs67AndTheTargetUntouched() throws {
        let target = try w.makeHSM(keys: 2, seed: 6)
        let before = try Files.snapshot(target)
        try w.expect(0, ["kms", "create-key", "unrelated"])
        try w.expect(67, ["restore", archive, "--hsm", target, "--kms-key", "unrelated"])
        XCTAssertEqual(try Files.snapshot(target), before)
    }
}
