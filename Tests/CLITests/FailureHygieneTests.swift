import Foundation
import XCTest

/// A failed command leaves no output file and no temp file beside it; unknown flags are usage
/// errors (64) everywhere.
final class FailureHygieneTests: CLIWorldTestCase {
    /// An empty directory for one command's output.
    func outputDirectory() throws -> String {
        let dir = w.path("out")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func testFailedBackupCreateLeavesNoFile() throws {
        let cases: [(String, [String], Int32)] = [
            ("unknown --kms-key", ["--hsm", w.sourceHSM, "--kms-key", "no-such-key"], 66),
            ("HSM dir that does not exist", ["--hsm", w.path("no-hsm"), "--kms-key", "k1"], 66),
            ("a directory that is not an HSM", ["--hsm", w.home, "--kms-key", "k1"], 66),
            ("one good key and one unknown", ["--hsm", w.sourceHSM, "--kms-key", "k1", "--kms-key", "nope"], 66),
        ]
        for (name, args, code) in cases {
            let dir = try outputDirectory()
            let out = dir + "/backup.hsmb"
            let r = try w.run(["backup", "create"] + args + ["--out", out])
            XCTAssertEqual(r.exitCode, code, "\(name): \(r.description)")
            XCTAssertEqual(try Files.list(dir), [], "\(name): no file and no temp file: \(r.description)")
        }
        // A failed create into the store leaves no entry either.
        let before = try w.expect(0, ["backup", "list", "--json"]).stdout
        try w.expect(66, ["backup", "create", "--hsm", w.path("no-hsm"), "--kms-key", "k1"])
        try w.expect(66, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "nope"])
        XCTAssertEqual(try w.expect(0, ["backup", "list", "--json"]).stdout, before)
    }

    /// Into a missing directory: the file system failed (74). Onto a directory: the argument is
    /// not a regular file, 64, as for every file argument (issue 14 item 17).
    func testOutputIntoAMissingDirectoryIsAnIOErrorAndOntoADirectoryAUsageError() throws {
        let parent = try outputDirectory()
        try w.expect(74, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", parent + "/missing/x.hsmb"])
        XCTAssertEqual(try Files.list(parent), [])
        let sub = parent + "/sub"
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: false)
        try w.expect(64, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", sub])
        XCTAssertEqual(try Files.list(parent), ["sub"], "no temp file left beside it")
        XCTAssertEqual(try Files.list(sub), [])
    }

    func testAnExistingOutputFileIsNotDamagedByAFailedCreate() throws {
        let dir = try outputDirectory()
        let out = dir + "/keep.hsmb"
        try Files.write(Array("previous contents".utf8), out)
        let r = try w.run(["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "no-such-key", "--out", out])
        XCTAssertEqual(r.exitCode, 66, r.description)
        XCTAssertEqual(try Files.read(out), Array("previous contents".utf8))
        XCTAssertEqual(try Files.list(dir), ["keep.hsmb"])
    }

    func testEnvelopeDecryptOfADamagedMessageLeavesNoOutput() throws {
        let dir = try outputDirectory()
        let plain = dir + "/plain.txt", enc = dir + "/msg.enc"
        try Files.write(Array(repeating: 0x61, count: 5000), plain)
        try w.expect(0, ["envelope", "encrypt", plain, "-o", enc, "--kms-key", "k1", "--frame-length", "1024"])
        let good = dir + "/good.out"
        try w.expect(0, ["envelope", "decrypt", enc, "-o", good])
        XCTAssertEqual(try Files.read(good), try Files.read(plain))

        let size = try Files.size(enc)
        for offset in [size / 2, size - 3] {
            let work = try outputDirectory()
            let bad = work + "/bad.enc", out = work + "/bad.out"
            try Files.flipped(enc, at: offset, into: bad)
            let r = try w.run(["envelope", "decrypt", bad, "-o", out])
            XCTAssertEqual(r.exitCode, 65, r.description)
            XCTAssertEqual(try Files.list(work), ["bad.enc"], "offset \(offset): no output, no temp: \(r.description)")
        }
        // No key that opens it: 67, and no output.
        let work = try outputDirectory()
        try w.expect(0, ["kms", "create-key", "hygiene-other"])
        let r = try w.run(["envelope", "decrypt", enc, "-o", work + "/x.out", "--kms-key", "hygiene-other"])
        XCTAssertEqual(r.exitCode, 67, r.description)
        XCTAssertEqual(try Files.list(work), [])
        try w.expect(66, ["envelope", "decrypt", dir + "/missing.enc", "-o", work + "/y.out"])
        XCTAssertEqual(try Files.list(work), [])
    }

    func testUnknownFlagsAreUsageErrors() throws {
        let commands: [[String]] = [
            ["manufacturer", "create", "x"], ["operator", "init"], ["kms", "list"], ["kms", "create-key", "x"],
            ["store", "init"], ["hsm", "show", w.sourceHSM], ["hsm", "populate", w.sourceHSM, "--keys", "1", "--users", "1", "--seed", "1"],
            ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1"], ["backup", "list"], ["backup", "delete", "abcdef"],
            ["backup", "undelete", "abcdef"], ["backup", "purge"], ["backup", "copy", "abcdef", "--to-store", w.root],
            ["backup", "rewrap", "abcdef", "--kms-key", "k1"], ["backup", "tag", "abcdef"],
            ["retention", "set", "--cluster", "c1", "--days", "30"], ["retention", "apply"],
            ["inspect", "abcdef"], ["verify", "abcdef"], ["restore", "abcdef", "--hsm", w.sourceHSM],
            ["envelope", "inspect", "x"],
        ]
        let before = try Files.snapshot(w.home)
        for c in commands {
            let r = try w.run(c + ["--no-such-flag"])
            XCTAssertEqual(r.exitCode, 64, r.description)
            XCTAssertTrue(r.stderr.contains("Unknown option"), r.description)
        }
        try w.expect(64, ["backup", "frobnicate"])
        try w.expect(64, ["retention", "forget"])
        XCTAssertEqual(try Files.snapshot(w.home), before, "a usage error changes nothing in the home")
    }
}
