import Foundation
import XCTest

/// Transcript tests of `inspect` and `verify`: on files and stored backups, good and damaged.
final class InspectVerifyTests: CLIWorldTestCase {
    /// An archive file with small frames (so a flipped byte lands in a known frame).
    nonisolated(unsafe) static var archive: String!
    var archive: String { Self.archive }

    static let frameLength = 1024

    override class func setUp() {
        super.setUp()
        archive = try! world.createArchiveFile(["--frame-length", "\(frameLength)", "--kms-key", "k2"])
    }


    // MARK: inspect

    func testInspectFileWithoutKeyShowsDocumentedFields() throws {
        let r = try w.expect(0, ["inspect", archive, "--json"])
        let j = try JSON.object(r.stdout)
        let meta = try XCTUnwrap(j["metadata"] as? [String: Any], r.description)
        for field in ["backupID", "clusterID", "hsmID", "manufacturer", "model", "firmware", "created", "formatVersion",
                      "keyCount", "userCount", "objectCount", "payloadBytes"] {
            XCTAssertNotNil(meta[field], "metadata.\(field) missing: \(r.description)")
        }
        XCTAssertEqual(meta["manufacturer"] as? String, "acme")
        XCTAssertEqual(meta["clusterID"] as? String, "c1")
        XCTAssertEqual(meta["hsmID"] as? String, "hsm-S1")
        XCTAssertEqual(meta["keyCount"] as? Int, CLIWorld.keyCount)
        let env = try XCTUnwrap(j["envelope"] as? [String: Any])
        for field in ["suiteID", "suite", "signed", "messageID", "contentType", "frameLength", "frameCount", "headerBytes", "keys", "formatVersion"] {
            XCTAssertNotNil(env[field], "envelope.\(field) missing: \(r.description)")
        }
        XCTAssertEqual(env["suiteID"] as? String, "0x0478")
        XCTAssertEqual(env["frameLength"] as? Int, Self.frameLength)
        let keys = try XCTUnwrap(env["keys"] as? [[String: Any]])
        XCTAssertEqual(keys.compactMap { $0["key"] as? String }, ["k1/v1", "k2/v1"])
        XCTAssertNil(j["inner"] as? [String: Any], "no key, no inner header")
        let bytesRead = try XCTUnwrap(j["bytesRead"] as? Int)
        XCTAssertEqual(bytesRead, env["headerBytes"] as? Int, "with no key inspect reads the header and nothing more")

        let text = try w.expect(0, ["inspect", archive])
        XCTAssertTrue(text.stdout.contains("backup \(meta["backupID"] as! String)"), text.description)
        XCTAssertTrue(text.stdout.contains("manufacturer acme"), text.description)
        XCTAssertTrue(text.stdout.contains("opens with: hsmbackup-local-kms k1/v1"), text.description)
    }

    func testInspectWithKMSKeyAddsTheInnerHeader() throws {
        let j = try JSON.object(try w.expect(0, ["inspect", archive, "--kms-key", "k2", "--json"]).stdout)
        let inner = try XCTUnwrap(j["inner"] as? [String: Any], "\(j)")
        XCTAssertFalse(inner.isEmpty)
        XCTAssertEqual(j["openedBy"] as? String, "hsmbackup-local-kms key \"k2\"")
        let text = try w.expect(0, ["inspect", archive, "--kms-key", "k1"])
        XCTAssertTrue(text.stdout.contains("inner header (opened with"), text.description)
        XCTAssertTrue(text.stdout.contains("PBK fingerprint"), text.description)

        // A key that does not open it: 67; a key that does not exist: 66.
        try w.expect(0, ["kms", "create-key", "stranger"])
        try w.expect(67, ["inspect", archive, "--kms-key", "stranger"])
        try w.expect(66, ["inspect", archive, "--kms-key", "no-such-key"])
    }

    func testInspectStoredBackupAndFailures() throws {
        let id = try w.createStoredBackup()
        let j = try JSON.object(try w.expect(0, ["inspect", id, "--json"]).stdout)
        XCTAssertEqual((j["metadata"] as? [String: Any])?["backupID"] as? String, id)
        XCTAssertEqual((j["envelope"] as? [String: Any])?["frameCount"] as? Int, 1)

        try w.expect(66, ["inspect", w.path("missing") + ".hsmb"])
        let junk = w.path("junk")
        try Files.write(Array(repeating: 0x41, count: 4096), junk)
        try w.expect(65, ["inspect", junk])
        let empty = w.path("empty")
        try Files.write([], empty)
        try w.expect(65, ["inspect", empty])
        try w.expect(64, ["inspect"])
        try w.expect(64, ["inspect", w.root])                         // a directory: not a regular file (64 everywhere)
        try w.expect(64, ["inspect", archive, "--frobnicate"])
    }

    /// `inspect` of a 1 GiB archive reads only the header: the file is a real archive extended
    /// (sparse) to 1 GiB, so its body past the real message is zeros that must not be read.
    func testInspectOfAOneGiBArchiveReadsOnlyItsFirstBytes() throws {
        let big = w.path("big") + ".hsmb"
        try FileManager.default.copyItem(atPath: archive, toPath: big)
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: big))
        try h.truncate(atOffset: 1 << 30)
        try h.close()
        XCTAssertEqual(try Files.size(big), 1 << 30)

        let r = try w.expect(0, ["inspect", big, "--json"])
        let j = try JSON.object(r.stdout)
        let bytesRead = try XCTUnwrap(j["bytesRead"] as? Int, r.description)
        XCTAssertLessThanOrEqual(bytesRead, 64 * 1024, r.description)
        XCTAssertGreaterThan(bytesRead, 0)
        XCTAssertEqual((j["metadata"] as? [String: Any])?["manufacturer"] as? String, "acme")

        // With a key it still stops after the inner header (the first frames), far below 1 GiB.
        let k = try JSON.object(try w.expect(0, ["inspect", big, "--kms-key", "k1", "--json"]).stdout)
        XCTAssertLessThanOrEqual(try XCTUnwrap(k["bytesRead"] as? Int), 64 * 1024)
        XCTAssertNotNil(k["inner"] as? [String: Any])
        try? FileManager.default.removeItem(atPath: big)
    }

    // MARK: verify

    func testVerifyPassesAtEveryLevel() throws {
        for (level, extra) in [("structure", [String]()), ("envelope", []), ("full", ["--hsm", w.targetHSM])] {
            let r = try w.expect(0, ["verify", archive, "--level", level] + extra)
            XCTAssertTrue(r.stdout.hasPrefix("PASS \(archive) at level \(level)"), r.description)
        }
        let j = try JSON.object(try w.expect(0, ["verify", archive, "--level", "full", "--hsm", w.targetHSM, "--json"]).stdout)
        XCTAssertEqual(j["levelsChecked"] as? [String], ["structure", "envelope", "full"])
        XCTAssertEqual((j["findings"] as? [Any])?.count, 0)
        XCTAssertEqual(j["objectsChecked"] as? Int, CLIWorld.keyCount + CLIWorld.userCount + 2, "keys + users + 2 policies")
        XCTAssertGreaterThan(j["framesChecked"] as? Int ?? 0, 2)

        // Default level with no --hsm is envelope; a stored backup verifies the same way.
        XCTAssertTrue(try w.expect(0, ["verify", archive]).stdout.contains("at level envelope"))
        let id = try w.createStoredBackup(["--signed"])
        try w.expect(0, ["verify", id, "--level", "full", "--hsm", w.targetHSM])
        // The full check is a dry run: the HSM used for it is unchanged.
        XCTAssertEqual(try w.contents(w.targetHSM).keys, [])
    }

    func testVerifyUsageErrors() throws {
        try w.expect(64, ["verify", archive, "--level", "deep"])
        try w.expect(64, ["verify", archive, "--level", "full"])                   // full needs --hsm
        try w.expect(66, ["verify", archive, "--level", "full", "--hsm", w.path("none")])
        try w.expect(66, ["verify", w.path("none"), "--level", "structure"])
        try w.expect(64, ["verify", archive, "--unknown-flag"])
    }

    /// A byte flipped in an archive file at several places: exit 65 and a finding that says where.
    func testFlippedBytesAreFoundAndLocated() throws {
        let size = try Files.size(archive)
        let header = try XCTUnwrap(try JSON.object(try w.expect(0, ["inspect", archive, "--json"]).stdout)["envelope"] as? [String: Any])
        let headerBytes = try XCTUnwrap(header["headerBytes"] as? Int)
        let cases: [(name: String, offset: Int, level: String)] = [
            ("version byte", 0, "structure"),
            ("message id in the header", 20, "envelope"),
            ("first frame", headerBytes + 40, "envelope"),
            ("a middle frame", size / 2, "full"),
            ("near the end", size - 10, "envelope"),
        ]
        for c in cases {
            let bad = w.path("flip") + ".hsmb"
            try Files.flipped(archive, at: c.offset, into: bad)
            var args = ["verify", bad, "--level", c.level]
            if c.level == "full" { args += ["--hsm", w.targetHSM] }
            let r = try w.run(args + ["--json"])
            XCTAssertEqual(r.exitCode, 65, "\(c.name): \(r.description)")
            let j = try JSON.object(r.stdout)
            let errors = (j["findings"] as? [[String: Any]] ?? []).filter { $0["severity"] as? String == "error" }
            XCTAssertFalse(errors.isEmpty, "\(c.name): \(r.description)")
            let located = errors.contains {
                let loc = $0["location"] as? [String: Any] ?? [:]
                return loc["frame"] != nil || loc["offset"] != nil
            }
            XCTAssertTrue(located, "\(c.name): a finding names a frame or offset: \(r.description)")
            XCTAssertNotNil(errors.first?["code"] as? String)

            let text = try w.run(args)
            XCTAssertEqual(text.exitCode, 65, text.description)
            XCTAssertTrue(text.stdout.contains("FAIL \(bad)"), text.description)
        }

        // A flip in a middle frame names that frame (frame numbers start at 1).
        let bad = w.path("flip") + ".hsmb"
        // Into the ciphertext of the frame in the middle (not its sequence number or IV, whose
        // damage has its own codes). Each frame: 4 seq + 12 iv + frameLength + 16 tag.
        let frameBytes = 4 + 12 + Self.frameLength + 16
        let offset = headerBytes + ((size / 2 - headerBytes) / frameBytes) * frameBytes + 16 + 100
        try Files.flipped(archive, at: offset, into: bad)
        let j = try JSON.object(try w.run(["verify", bad, "--level", "envelope", "--json"]).stdout)
        let f = try XCTUnwrap((j["findings"] as? [[String: Any]])?.first)
        let frame = try XCTUnwrap((f["location"] as? [String: Any])?["frame"] as? Int, "\(f)")
        // Each frame of a non-signed framed message: 4 seq + 12 iv + frameLength + 16 tag.
        XCTAssertEqual(frame, (offset - headerBytes) / (4 + 12 + Self.frameLength + 16) + 1, "\(f)")
        XCTAssertEqual(f["code"] as? String, "frameAuthenticationFailed")

        // Truncated: structure alone sees it.
        let short = w.path("short") + ".hsmb"
        try Files.write(Array(try Files.read(archive).dropLast(7)), short)
        try w.expect(65, ["verify", short, "--level", "structure"])
    }

    /// One stored replica damaged: verify names the replica. On replica 0 (the one read) the read
    /// repairs it; on another, `store scrub --repair` does.
    func testDamagedStoreReplicaIsNamed() throws {
        for replica in [0, 1] {
            let id = try w.createStoredBackup()
            let key = try XCTUnwrap(try w.entry(id)["objectKey"] as? String)
            try Files.flipInPlace(try w.replicaFile(replica: replica, key: key), at: 3000)

            let r = try w.run(["verify", id, "--level", "envelope", "--json"])
            let j = try JSON.object(r.stdout)
            let store = (j["findings"] as? [[String: Any]] ?? []).filter { $0["layer"] as? String == "store" }
            XCTAssertEqual(store.count, 1, r.description)
            let loc = try XCTUnwrap(store.first?["location"] as? [String: Any], r.description)
            XCTAssertEqual(loc["replica"] as? Int, replica, r.description)
            XCTAssertEqual(loc["object"] as? String, key, r.description)
            XCTAssertEqual(j["levelsChecked"] as? [String], ["structure", "envelope"], "the archive itself is whole: \(r.description)")

            if replica == 0 {
                XCTAssertEqual(r.exitCode, 0, r.description)
                XCTAssertEqual(store.first?["severity"] as? String, "warning", r.description)
            } else {
                try w.expect(0, ["store", "scrub", "--repair"])
            }
            // Healed: the next verify has no finding.
            let again = try JSON.object(try w.expect(0, ["verify", id, "--level", "envelope", "--json"]).stdout)
            XCTAssertEqual((again["findings"] as? [Any])?.count, 0, "\(again)")
        }
    }

    /// Every replica damaged: verify names each one and fails; inspect and restore fail with 65
    /// and the target HSM is untouched.
    func testEveryReplicaDamagedIsUnrecoverable() throws {
        let id = try w.createStoredBackup()
        let key = try XCTUnwrap(try w.entry(id)["objectKey"] as? String)
        for replica in 0..<3 { try Files.flipInPlace(try w.replicaFile(replica: replica, key: key), at: 3000) }
        let r = try w.expect(65, ["verify", id, "--level", "structure", "--json"])
        let findings = try JSON.object(r.stdout)["findings"] as? [[String: Any]] ?? []
        let replicas = findings.filter { $0["layer"] as? String == "store" }.compactMap { ($0["location"] as? [String: Any])?["replica"] as? Int }
        XCTAssertEqual(replicas.sorted(), [0, 1, 2], r.description)
        XCTAssertTrue(findings.allSatisfy { $0["severity"] as? String == "error" }, r.description)
        try w.expect(65, ["inspect", id])
        let target = try w.makeHSM(keys: 2, seed: 8)
        let before = try Files.snapshot(target)
        try w.expect(65, ["restore", id, "--hsm", target])
        XCTAssertEqual(try Files.snapshot(target), before)
    }

    func testFullVerifyWithAnotherManufacturersHSMIs68() throws {
        let r = try w.expect(68, ["verify", archive, "--level", "full", "--hsm", w.foreignHSM])
        XCTAssertTrue(r.stderr.contains("incompatibleHSM"), r.description)
        let id = try w.createStoredBackup()
        try w.expect(68, ["verify", id, "--level", "full", "--hsm", w.foreignHSM])
    }

    func testSignedArchiveIsShownSignedAndItsFooterChecked() throws {
        let signed = try w.createArchiveFile(["--signed"])
        let env = try XCTUnwrap(try JSON.object(try w.expect(0, ["inspect", signed, "--json"]).stdout)["envelope"] as? [String: Any])
        XCTAssertEqual(env["suiteID"] as? String, "0x0578")
        XCTAssertEqual(env["signed"] as? Bool, true)
        try w.expect(0, ["verify", signed, "--level", "envelope"])
        let bad = w.path("sig") + ".hsmb"
        try Files.flipped(signed, at: try Files.size(signed) - 3, into: bad)   // inside the signature
        let r = try w.expect(65, ["verify", bad, "--level", "envelope", "--json"])
        XCTAssertFalse((try JSON.object(r.stdout)["findings"] as? [Any] ?? []).isEmpty, r.description)
    }

    /// Progress is drawn only on a terminal: with stderr captured, successful commands print nothing there.
    func testLongOperationsAreQuietWhenNotATerminal() throws {
        let out = w.path("quiet") + ".hsmb"
        for args in [["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", out],
                     ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1"],
                     ["verify", out, "--level", "full", "--hsm", w.targetHSM],
                     ["restore", out, "--hsm", w.targetHSM, "--dry-run"]] {
            let r = try w.expect(0, args)
            XCTAssertEqual(r.stderr, "", r.description)
        }
    }

    /// `--home DIR` before the command is the same home as HSMBACKUP_HOME.
    func testGlobalHomeOptionSelectsTheHome() throws {
        let viaEnv = try w.expect(0, ["backup", "list", "--json"]).stdout
        let viaFlag = try CLI.run(["--home", w.home, "backup", "list", "--json"], environment: ["HSMBACKUP_HOME": ""])
        XCTAssertEqual(viaFlag.exitCode, 0, viaFlag.description)
        XCTAssertEqual(viaFlag.stdout, viaEnv)
        let viaEquals = try CLI.run(["--home=" + w.home, "inspect", archive], environment: ["HSMBACKUP_HOME": ""])
        XCTAssertEqual(viaEquals.exitCode, 0, viaEquals.description)
    }

    func testStructureNeedsNoKey() throws {
        // A fresh home with no keystore at all verifies the structure of a file.
        let bare = try CLI.makeHome()
        defer { try? FileManager.default.removeItem(atPath: bare) }
        let r = try CLI.run(["verify", archive, "--level", "structure", "--json"], home: bare)
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertEqual(try JSON.object(r.stdout)["levelsChecked"] as? [String], ["structure"])
    }
}
