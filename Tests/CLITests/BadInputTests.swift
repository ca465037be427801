import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Issue 14 part B: bad input gets a clear error and a documented exit code, never a crash, a
/// hang, a replaced device node or a wrong result. Commands that could hang are bounded by the
/// harness (`CLI.hangBound`); a hang fails the test as `timedOut`.
final class BadInputTests: CLIWorldTestCase {

    // MARK: helpers

    private func scratch() throws -> String {
        let dir = w.path("bad-input")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        return dir
    }

    private func fifo(in dir: String, _ name: String = "fifo") throws -> String {
        let p = dir + "/" + name
        guard mkfifo(p, 0o600) == 0 else { throw CLIWorldError("mkfifo \(p): \(String(cString: strerror(errno)))") }
        return p
    }

    /// A character device node like /dev/null (1,3) or /dev/full (1,7) in `dir`; needs root.
    private func device(in dir: String, _ name: String, minor: Int) throws -> String {
        guard getuid() == 0 else { throw XCTSkip("device nodes need root") }
        let p = dir + "/" + name
        let r = try CLI.runShell("mknod '\(p)' c 1 \(minor)")
        guard r.exitCode == 0 else { throw XCTSkip("mknod not permitted here: \(r.stderr)") }
        return p
    }

    /// The node's type and device number, to show it survived.
    private func node(_ path: String) -> (mode: mode_t, rdev: dev_t)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (st.st_mode & S_IFMT, st.st_rdev)
    }

    private func assertRefused(_ r: CLIRun, _ code: Int32, mentioning text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.timedOut, "hung: \(r.description)", file: file, line: line)
        XCTAssertEqual(r.exitCode, code, r.description, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(text), "stderr should mention \"\(text)\": \(r.description)", file: file, line: line)
    }

    private func plainFile(_ dir: String, _ text: String = "hello, envelope\n") throws -> String {
        let p = dir + "/plain.txt"
        try Files.write(Array(text.utf8), p)
        return p
    }

    /// A scratch directory with a plain file, a message of it under k1 and (with `storedAs`)
    /// the plain file stored under that key.
    private func messageFixture(storedAs key: String? = nil) throws -> (dir: String, plain: String, message: String) {
        let dir = try scratch()
        let plain = try plainFile(dir)
        let message = dir + "/m.env"
        try w.expect(0, ["envelope", "encrypt", plain, "-o", message, "--kms-key", "k1"])
        if let key { try w.expect(0, ["store", "put", key, plain]) }
        return (dir, plain, message)
    }

    // MARK: item 10: output onto a device or FIFO

    func testOutputOntoADeviceOrFIFOIsRefusedAndTheNodeSurvives() throws {
        let (dir, plain, message) = try messageFixture(storedAs: "misc/device-test")
        let targets = [try device(in: dir, "null", minor: 3), try device(in: dir, "full", minor: 7), try fifo(in: dir)]
        for target in targets {
            let before = try XCTUnwrap(node(target))
            for args in [["envelope", "decrypt", message, "-o", target, "--kms-key", "k1"],
                         ["envelope", "encrypt", plain, "-o", target, "--kms-key", "k1"],
                         ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", target],
                         ["store", "get", "misc/device-test", "-o", target]] {
                assertRefused(try w.run(args), 64, mentioning: "not a regular file")
                let after = try XCTUnwrap(node(target), "the node is gone after \(args)")
                XCTAssertEqual(after.mode, before.mode, "the node was replaced by \(args)")
                XCTAssertEqual(after.rdev, before.rdev)
            }
        }
        XCTAssertEqual(try Files.list(dir).sorted(), ["fifo", "full", "m.env", "null", "plain.txt"], "no temp file left beside the targets")
    }

    // MARK: outputs through symbolic links; directories that are not ours to take

    /// `-o /dev/stdout` with stdout redirected to a file (as the harness does): refused before
    /// anything is written, never a temp file in /dev (as root the rename would have replaced the
    /// system's /dev/stdout). Another link is replaced by the output, never written through (a
    /// link planted in a shared directory cannot aim the command at another file).
    func testOutputsReplaceLinksAndStdoutLinksAreRefused() throws {
        let (dir, _, message) = try messageFixture(storedAs: "misc/link-test")
        XCTAssertEqual(symlink("/dev/stdout", dir + "/to-stdout"), 0)
        for target in ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", dir + "/to-stdout"] {
            for args in [["envelope", "decrypt", message, "-o", target, "--kms-key", "k1"],
                         ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", target],
                         ["store", "get", "misc/link-test", "-o", target]] {
                let r = try w.run(args)
                assertRefused(r, 64, mentioning: "not a file of its own")
                XCTAssertTrue(r.stdout.isEmpty || !r.stdout.contains("hello, envelope"), r.description)
            }
        }
        var st = stat()
        XCTAssertEqual(lstat("/dev/stdout", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFLNK, "/dev/stdout is still a link")
        XCTAssertFalse(try Files.list("/dev").contains { $0.contains(".tmp-") }, "no temp file in /dev")

        // Another link is replaced by the output; the file it named is left as it was.
        try Files.write(Array("old\n".utf8), dir + "/real.txt")
        XCTAssertEqual(symlink("real.txt", dir + "/link.txt"), 0)
        try w.expect(0, ["envelope", "decrypt", message, "-o", dir + "/link.txt", "--kms-key", "k1"])
        XCTAssertEqual(lstat(dir + "/link.txt", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(String(decoding: try Files.read(dir + "/link.txt"), as: UTF8.self), "hello, envelope\n")
        XCTAssertEqual(String(decoding: try Files.read(dir + "/real.txt"), as: UTF8.self), "old\n")
        XCTAssertFalse(try Files.list(dir).contains { $0.contains(".tmp-") }, "no temp left")
        assertRefused(try w.run(["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", "-"], cwd: dir), 64, mentioning: "standard output")
        XCTAssertFalse(Files.exists(dir + "/-"), "no file named -")
    }

    /// `envelope rewrap` of a symbolic link, or of a file with another hard link, is refused and
    /// changes nothing: the file the link names, or the other name, would keep the old keys' message.
    func testRewrapRefusesALinkAndAHardLinkedFile() throws {
        let (dir, _, message) = try messageFixture()
        XCTAssertEqual(symlink("m.env", dir + "/via-link.env"), 0)
        let original = try Files.read(message)
        assertRefused(try w.run(["envelope", "rewrap", dir + "/via-link.env", "--kms-key", "k1", "--to-kms-key", "k2"]), 64,
                      mentioning: "symbolic link")
        var st = stat()
        XCTAssertEqual(lstat(dir + "/via-link.env", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFLNK, "the link is still a link")
        XCTAssertEqual(try Files.read(message), original)
        try w.expect(0, ["envelope", "rewrap", message, "--kms-key", "k1", "--to-kms-key", "k2"])
        assertRefused(try w.run(["envelope", "decrypt", message, "-o", dir + "/out1", "--kms-key", "k1"]), 67, mentioning: "k2")

        XCTAssertEqual(link(message, dir + "/hard.env"), 0)
        let before = try Files.read(message)
        assertRefused(try w.run(["envelope", "rewrap", message, "--kms-key", "k2", "--to-kms-key", "k1"]), 64, mentioning: "hard links")
        XCTAssertEqual(try Files.read(message), before, "refused: the message is unchanged")
        XCTAssertFalse(try Files.list(dir).contains { $0.contains(".tmp-") }, "no temp left")
    }

    /// `hsm create` on a file (or device) is refused before its mode changes.
    func testHSMCreateOnAFileIsRefusedAndTheFileIsUntouched() throws {
        let dir = try scratch()
        let file = try plainFile(dir)
        XCTAssertEqual(chmod(file, 0o640), 0)
        for target in [file, file + "/sub"] {
            assertRefused(try w.run(["hsm", "create", target, "--manufacturer", "acme", "--model", "M1", "--serial", "F1", "--cluster", "c1"]),
                          64, mentioning: "not a directory")
        }
        var st = stat()
        XCTAssertEqual(stat(file, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o640, "the file's mode is unchanged")
        if getuid() == 0 {
            let null = try device(in: dir, "null", minor: 3)
            assertRefused(try w.run(["hsm", "create", null, "--manufacturer", "acme", "--model", "M1", "--serial", "F2", "--cluster", "c1"]),
                          64, mentioning: "not a directory")
            XCTAssertEqual(stat(null, &st), 0)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR)
        }
    }

    /// `store init --replica-dir` on another store's replica is refused before any marker is
    /// written: the other store keeps its replica.
    func testStoreInitRefusesAnotherStoresReplica() throws {
        let dir = try scratch()
        let theirs = w.home + "/store/replica-1"
        let marker = try Files.read(theirs + "/REPLICA")
        let home = dir + "/second-home"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        let fresh = dir + "/fresh-replica"
        let r = try CLI.run(["store", "init", "--replica-dir", fresh, "--replica-dir", theirs], home: home)
        assertRefused(r, 64, mentioning: "replica marker")
        XCTAssertEqual(try Files.read(theirs + "/REPLICA"), marker, "their marker is unchanged")
        XCTAssertFalse(Files.exists(fresh + "/REPLICA"), "no marker written before the refusal")
        XCTAssertFalse(Files.exists(home + "/store/store.conf"))
        try w.expect(0, ["store", "fsck"])
        // A replica path that is a file: refused before any marker, so a retry with a good path works.
        let file = try plainFile(dir)
        let r2 = try CLI.run(["store", "init", "--replica-dir", fresh, "--replica-dir", file], home: home)
        assertRefused(r2, 64, mentioning: "not a directory")
        XCTAssertFalse(Files.exists(fresh + "/REPLICA"))
        let r3 = try CLI.run(["store", "init", "--replica-dir", fresh, "--replica-dir", dir + "/second"], home: home)
        XCTAssertEqual(r3.exitCode, 0, r3.description)
    }

    // MARK: item 11: stdout on a full disk

    func testAFullStdoutExits74WithAMessageNeverACrash() throws {
        let dir = try scratch()
        let id = try w.createStoredBackup()
        let plain = try plainFile(dir)
        let message = dir + "/m.env"
        try w.expect(0, ["envelope", "encrypt", plain, "-o", message, "--kms-key", "k1"])
        try w.expect(0, ["store", "put", "misc/stdout-test", plain])
        let commands: [[String]] = [
            ["backup", "list"], ["backup", "list", "--json"],
            ["inspect", id], ["inspect", id, "--json"],
            ["verify", id, "--level", "structure"], ["verify", id, "--level", "structure", "--json"],
            ["restore", id, "--hsm", w.targetHSM, "--dry-run", "--json"],
            ["backup", "tag", id, "--set", "k=v", "--json"],
            ["store", "scrub", "--json"], ["store", "fsck", "--json"], ["store", "fsck"],
            ["kms", "list"], ["kms", "list", "--json"],
            ["store", "get", "misc/stdout-test"], ["store", "get", "misc/stdout-test", "-o", "-"],
            ["envelope", "decrypt", message, "-o", "-", "--kms-key", "k1"],
            ["envelope", "inspect", message, "--json"],
        ]
        for args in commands {
            let r = try w.run(args, stdoutPath: "/dev/full")
            XCTAssertEqual(r.exitCode, 74, r.description)
            XCTAssertTrue(r.stderr.contains("No space left on device"), r.description)
        }
    }

    func testBackupCreateJSONOntoAFullStdoutSaysTheBackupIsReady() throws {
        let before = try JSON.array(try w.expect(0, ["backup", "list", "--json"]).stdout).count
        let r = try w.run(["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--json"], stdoutPath: "/dev/full")
        XCTAssertEqual(r.exitCode, 74, r.description)
        let list = try JSON.array(try w.expect(0, ["backup", "list", "--json"]).stdout)
        XCTAssertEqual(list.count, before + 1)
        let newest = try XCTUnwrap(list.compactMap { $0["backupId"] as? String }.first { r.stderr.contains($0) }, "stderr names the backup: \(r.stderr)")
        XCTAssertEqual(try w.entry(newest)["state"] as? String, "READY")
    }

    // MARK: item 12: FIFOs and other non-regular files as inputs

    func testNonRegularInputFilesAreRefusedNeverAHang() throws {
        let dir = try scratch()
        let fifo = try fifo(in: dir)
        let sub = dir + "/sub"
        try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: false)
        // One code for every kind of non-regular input, on every command that reads a file.
        for (path, kind) in [(fifo, "FIFO"), ("/dev/zero", "character device"), (sub, "directory")] {
            for args in [["inspect", path], ["verify", path, "--level", "structure"], ["verify", path, "--level", "envelope"],
                         ["restore", path, "--hsm", w.targetHSM, "--dry-run"],
                         ["envelope", "decrypt", path, "-o", dir + "/out", "--kms-key", "k1"],
                         ["envelope", "encrypt", path, "-o", dir + "/out", "--kms-key", "k1"],
                         ["envelope", "inspect", path], ["store", "put", "misc/fifo", path]] {
                assertRefused(try w.run(args), 64, mentioning: "is a \(kind), not a regular file")
            }
        }
        XCTAssertFalse(Files.exists(dir + "/out"))
    }

    // MARK: item 14: raw keys never on the command line

    func testARawKeyOnTheCommandLineIsRefused() throws {
        let dir = try scratch()
        let plain = try plainFile(dir)
        let hex = String(repeating: "ab", count: 32)
        let r = try w.run(["envelope", "encrypt", plain, "-o", dir + "/m", "--raw-aes-key", hex, "--key-namespace", "esc", "--key-name", "e1"])
        assertRefused(r, 64, mentioning: "never the key itself")
        let rw = try w.run(["envelope", "rewrap", plain, "--to-raw-aes-key", hex, "--to-key-namespace", "esc", "--to-key-name", "e1"])
        assertRefused(rw, 64, mentioning: "never the key itself")
        XCTAssertFalse(Files.exists(dir + "/m"))
    }

    func testRawKeysComeFromAFileADescriptorOrTheEnvironment() throws {
        let dir = try scratch()
        let plain = try plainFile(dir)
        let keyFile = dir + "/escrow.hex"
        try Files.write(Array((try w.expect(0, ["kms", "export", "k2"]).stdout).utf8), keyFile)
        let hex = try String(contentsOfFile: keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let message = dir + "/m.env"
        try w.expect(0, ["envelope", "encrypt", plain, "-o", message, "--kms-key", "k1",
                         "--raw-aes-key", "file:" + keyFile, "--key-namespace", "esc", "--key-name", "e1"])
        let raw = ["--key-namespace", "esc", "--key-name", "e1", "--kms-dir", dir + "/no-kms"]
        let viaEnv = try w.run(["envelope", "decrypt", message, "-o", "-", "--raw-aes-key", "env:ESCROW_KEY"] + raw,
                               environment: ["ESCROW_KEY": hex])
        XCTAssertEqual(viaEnv.exitCode, 0, viaEnv.description)
        XCTAssertEqual(viaEnv.stdout, "hello, envelope\n")
        let quoted = ([CLI.binary.path, "envelope", "decrypt", message, "-o", "-", "--raw-aes-key", "fd:3"] + raw)
            .map { "'" + $0 + "'" }.joined(separator: " ")
        let viaFD = try CLI.runShell("exec \(quoted) 3<'\(keyFile)'", home: w.home)
        XCTAssertEqual(viaFD.exitCode, 0, viaFD.description)
        XCTAssertEqual(viaFD.stdout, "hello, envelope\n")
        let unset = try w.run(["envelope", "decrypt", message, "-o", "-", "--raw-aes-key", "env:NO_SUCH_KEY_VARIABLE"] + raw)
        assertRefused(unset, 64, mentioning: "NO_SUCH_KEY_VARIABLE is not set")
        // fd:0 with the message on standard input too: refused, never a key read from the message.
        let both = try w.run(["envelope", "decrypt", "-", "-o", "-", "--raw-aes-key", "fd:0"] + raw, stdin: try Data(contentsOf: URL(fileURLWithPath: message)))
        assertRefused(both, 64, mentioning: "reads standard input")
        XCTAssertEqual(both.stdout, "")
    }

    // MARK: item 15: named keys are the only keys tried

    func testWhenKeysAreNamedOnlyThoseAreTried() throws {
        let dir = try scratch()
        let plain = try plainFile(dir)
        let escrow = dir + "/escrow.hex", wrong = dir + "/wrong.hex"
        try Files.write(Array((try w.expect(0, ["kms", "export", "k2"]).stdout).utf8), escrow)
        try Files.write(Array((String(repeating: "5a", count: 32) + "\n").utf8), wrong)
        let message = dir + "/m.env"
        try w.expect(0, ["envelope", "encrypt", plain, "-o", message, "--kms-key", "k1",
                         "--raw-aes-key", "file:" + escrow, "--key-namespace", "esc", "--key-name", "e1"])
        let out = dir + "/out"
        // A raw key the message has no EDK for: the local keystore (which could open it) is not tried.
        assertRefused(try w.run(["envelope", "decrypt", message, "-o", out, "--raw-aes-key", "file:" + wrong,
                                 "--key-namespace", "x", "--key-name", "y"]), 67, mentioning: "noUsableKey")
        // A wrong escrow key under the right name.
        assertRefused(try w.run(["envelope", "decrypt", message, "-o", out, "--raw-aes-key", "file:" + wrong,
                                 "--key-namespace", "esc", "--key-name", "e1"]), 67, mentioning: "noUsableKey")
        // Another local key named: k1 is not tried.
        assertRefused(try w.run(["envelope", "decrypt", message, "-o", out, "--kms-key", "k2"]), 67, mentioning: "noUsableKey")
        XCTAssertFalse(Files.exists(out))
        try w.expect(0, ["envelope", "decrypt", message, "-o", out, "--raw-aes-key", "file:" + escrow, "--key-namespace", "esc", "--key-name", "e1"])
        XCTAssertEqual(try Files.read(out), Array("hello, envelope\n".utf8))
    }

    // MARK: item 16: a file and a backup id with the same name

    func testAFileNamedLikeAStoredBackupIsRefusedAsAmbiguous() throws {
        let dir = try scratch()
        let stored = try w.createStoredBackup()
        let name = String(stored.prefix(8))
        // Another backup's archive under the stored backup's prefix.
        let other = try w.createArchiveFile(hsm: try w.makeHSM(keys: 3))
        try FileManager.default.copyItem(atPath: other, toPath: dir + "/" + name)
        let otherID = try XCTUnwrap(JSON.object(try w.expect(0, ["inspect", other, "--json"]).stdout)["metadata"] as? [String: Any])["backupID"] as? String
        let target = try w.makeHSM()
        let snapshot = try Files.snapshot(target)
        for args in [["restore", name, "--hsm", target], ["inspect", name], ["verify", name, "--level", "structure"]] {
            assertRefused(try w.run(args, cwd: dir), 64, mentioning: "both a file here and a backup in the store")
        }
        XCTAssertEqual(try Files.snapshot(target), snapshot, "the HSM is unchanged")
        // ./NAME is the file; elsewhere the bare name is the stored backup.
        let file = try JSON.object(try w.run(["inspect", "./" + name, "--json"], cwd: dir).stdout)
        XCTAssertEqual((file["metadata"] as? [String: Any])?["backupID"] as? String, otherID)
        let inStore = try JSON.object(try w.run(["inspect", name, "--json"], cwd: w.root).stdout)
        XCTAssertEqual((inStore["metadata"] as? [String: Any])?["backupID"] as? String, stored)
    }

    // MARK: item 17

    func testControlCharactersAreEscapedOrRefused() throws {
        let dir = try scratch()
        let id = try w.createStoredBackup()
        assertRefused(try w.run(["backup", "tag", id, "--set", "note=x\nREADY fake line"]), 64, mentioning: "control character")
        assertRefused(try w.run(["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--tag", "a=\u{1b}[2J"]), 64, mentioning: "control character")
        // A message's context is anyone's text: shown escaped, exact in JSON.
        let plain = try plainFile(dir)
        let message = dir + "/m.env"
        let hostile = "line1\nFAKE LINE\u{1b}[2J\u{9b}"
        try w.expect(0, ["envelope", "encrypt", plain, "-o", message, "--kms-key", "k1", "--context", "note=" + hostile])
        let text = try w.expect(0, ["envelope", "inspect", message]).stdout
        XCTAssertFalse(text.split(separator: "\n").contains { $0.hasPrefix("FAKE LINE") }, text)
        XCTAssertFalse(text.unicodeScalars.contains { $0 == "\u{1b}" || $0 == "\u{9b}" }, text)
        XCTAssertTrue(text.contains("note = line1\\nFAKE LINE\\u{1B}[2J\\u{9B}"), text)
        let jsonText = try w.expect(0, ["envelope", "inspect", message, "--json"]).stdout
        XCTAssertFalse(jsonText.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" || (0x7F...0x9F).contains($0.value) }, jsonText)
        let json = try JSON.object(jsonText)
        let pairs = json["context"] as? [[String: Any]] ?? []
        XCTAssertEqual(pairs.first { $0["key"] as? String == "note" }?["value"] as? String, hostile)
    }

    func testStorePutOfACatalogKeyIsRefused() throws {
        let dir = try scratch()
        let plain = try plainFile(dir)
        for key in ["backups/0123456789abcdef0123456789abcdef/meta-0000000000000001", "backups/x/archive", "clusters/c1/policy-0000000000000001"] {
            assertRefused(try w.run(["store", "put", key, plain]), 64, mentioning: "belong to the backup catalog")
        }
        try w.expect(0, ["store", "fsck"])
        try w.expect(0, ["store", "put", "misc/plain", plain])
    }

    func testStoreGetDashWritesStdout() throws {
        let dir = try scratch()
        let plain = try plainFile(dir, "object bytes\n")
        try w.expect(0, ["store", "put", "misc/dash", plain])
        let r = try w.run(["store", "get", "misc/dash", "--output", "-"], cwd: dir)
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertEqual(r.stdout, "object bytes\n")
        XCTAssertFalse(Files.exists(dir + "/-"), "no file named -")
    }

    func testATamperedContextIsAVerificationFailureNotAMissingKey() throws {
        let archive = try w.createArchiveFile()
        var bytes = try Files.read(archive)
        // The cluster id's value in the header's encryption context: "c1" → "c9".
        let key = Array("hsmbackup.cluster-id".utf8) + [0, 2] + Array("c1".utf8)
        let at = try XCTUnwrap((0...(bytes.count - key.count)).first { Array(bytes[$0..<($0 + key.count)]) == key })
        bytes[at + key.count - 1] = UInt8(ascii: "9")
        let tampered = w.path("tampered") + ".hsmb"
        try Files.write(bytes, tampered)
        let out = w.path("tampered-out")
        for args in [["verify", tampered, "--level", "envelope"], ["restore", tampered, "--hsm", w.targetHSM, "--dry-run"],
                     ["envelope", "decrypt", tampered, "-o", out], ["inspect", tampered, "--kms-key", "k1"]] {
            // verify reports its findings on stdout, the other commands say it on stderr.
            let r = try w.run(args)
            XCTAssertEqual(r.exitCode, 65, r.description)
            XCTAssertTrue((r.stdout + r.stderr).contains("encryptedDataKeyAuthenticationFailed") && (r.stdout + r.stderr).contains("altered"),
                          r.description)
        }
        XCTAssertFalse(Files.exists(out))
        // Without the key its name asks for, it is still "no usable key".
        try w.expect(67, ["verify", tampered, "--level", "envelope", "--kms-key", "k2"])
    }

    func testASymlinkLoopSaysSo() throws {
        let dir = try scratch()
        XCTAssertEqual(symlink("loop2", dir + "/loop1"), 0)
        XCTAssertEqual(symlink("loop1", dir + "/loop2"), 0)
        for args in [["inspect", "loop1"], ["verify", "loop1", "--level", "structure"], ["inspect", dir + "/loop1"],
                     ["envelope", "inspect", "loop1"]] {
            let r = try w.run(args, cwd: dir)
            assertRefused(r, 66, mentioning: "symbolic link loop")
            XCTAssertFalse(r.stderr.contains("no backup"), r.description)
        }
    }

    func testHomeAndDaysArgumentsGetClearErrors() throws {
        let dir = try scratch()
        let file = try plainFile(dir)
        assertRefused(try CLI.run(["--home", file, "kms", "create-key", "x"]), 64, mentioning: "not a directory")
        assertRefused(try CLI.run(["--home=" + file, "backup", "list"]), 64, mentioning: "not a directory")
        assertRefused(try CLI.run(["--home", "", "backup", "list"]), 64, mentioning: "--home needs a directory")
        XCTAssertFalse(Files.exists(file + "/kms"))
        for days in ["-1", "0", "380"] {
            assertRefused(try w.run(["retention", "set", "--cluster", "c1", "--days", days]), 64, mentioning: "--days must be 7...379, got \(days)")
        }
    }
}

/// Bad replicas (item 12 and the last of item 17): a class of its own, since it damages the store.
final class BadReplicaTests: CLIWorldTestCase {
    func testAFIFOInAReplicasPlaceIsABadReplicaNotAHang() throws {
        let id = try w.createStoredBackup()
        let key = "backups/\(id)/archive"
        let replica = try w.replicaFile(replica: 0, key: key)
        func makeFIFO() throws {
            try FileManager.default.removeItem(atPath: replica)
            XCTAssertEqual(mkfifo(replica, 0o600), 0)
        }
        try makeFIFO()
        let scrub = try w.run(["store", "scrub"])
        XCTAssertFalse(scrub.timedOut, scrub.description)
        XCTAssertEqual(scrub.exitCode, 65, scrub.description)
        XCTAssertTrue(scrub.stdout.contains("FIFO"), scrub.description)
        let verify = try w.run(["verify", id, "--level", "structure"])
        XCTAssertFalse(verify.timedOut, verify.description)
        XCTAssertEqual(verify.exitCode, 0, verify.description)
        XCTAssertTrue(verify.stdout.contains("FIFO"), verify.description)
        try makeFIFO()
        let restore = try w.run(["restore", id, "--hsm", w.targetHSM, "--dry-run"])
        XCTAssertFalse(restore.timedOut, restore.description)
        XCTAssertEqual(restore.exitCode, 0, restore.description)
        try makeFIFO()
        try w.expect(0, ["store", "scrub", "--repair"])
        try w.expect(0, ["store", "scrub"])
    }

    func testAFIFOReplicaMarkerMakesTheReplicaUnavailableNotAHang() throws {
        let id = try w.createStoredBackup()
        let marker = w.home + "/store/replica-1/REPLICA"
        let saved = try Files.read(marker)
        try FileManager.default.removeItem(atPath: marker)
        XCTAssertEqual(mkfifo(marker, 0o600), 0)
        defer {
            try? FileManager.default.removeItem(atPath: marker)
            try? Files.write(saved, marker)
        }
        let list = try w.run(["backup", "list"])
        XCTAssertFalse(list.timedOut, list.description)
        XCTAssertEqual(list.exitCode, 0, list.description)
        let fsck = try w.run(["store", "fsck"])
        XCTAssertFalse(fsck.timedOut, fsck.description)
        XCTAssertEqual(fsck.exitCode, 65, fsck.description)
        XCTAssertTrue(fsck.stdout.contains("replica 1") && fsck.stdout.contains("FIFO"), fsck.description)
        let verify = try w.run(["verify", id, "--level", "structure"])
        XCTAssertEqual(verify.exitCode, 0, verify.description)
    }

    /// One replica damaged and impossible to repair (its temp directory is a file: ENOTDIR),
    /// two intact: the archive verifies, and the warning says why the repair failed.
    func testAnUnrepairableReplicaIsAWarningThatNamesTheErrno() throws {
        let id = try w.createStoredBackup()
        let replica = try w.replicaFile(replica: 0, key: "backups/\(id)/archive")
        try Files.flipInPlace(replica, at: 100)
        let tmp = w.home + "/store/replica-0/tmp"
        try FileManager.default.removeItem(atPath: tmp)
        try Files.write([0], tmp)
        defer {
            try? FileManager.default.removeItem(atPath: tmp)
            try? FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: false)
            _ = try? w.run(["store", "scrub", "--repair"])
        }
        let r = try w.run(["verify", id, "--level", "structure"])
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertTrue(r.stdout.contains("PASS"), r.description)
        XCTAssertTrue(r.stdout.contains("ENOTDIR"), "the warning names the errno: \(r.description)")
        XCTAssertTrue(r.stdout.contains("2 of 3 replicas intact"), r.description)
        let json = try JSON.object(try w.run(["verify", id, "--level", "structure", "--json"]).stdout)
        let findings = json["findings"] as? [[String: Any]] ?? []
        XCTAssertFalse(findings.isEmpty)
        XCTAssertTrue(findings.allSatisfy { $0["severity"] as? String == "warning" }, "\(findings)")
    }
}
