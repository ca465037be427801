import BackupCrypto
import ByteCoding
import Foundation
import PKCS11HSM
import XCTest

/// The built `hsmbackup` against SoftHSM2 tokens, one process per command (each process
/// initializes the module with this test's SOFTHSM2_CONF). PINs only ever travel in the environment.
final class PKCS11CLITests: XCTestCase {
    static var binary: String {
        if let o = ProcessInfo.processInfo.environment["HSMBACKUP_BIN"] { return o }
        let bundle = Bundle(for: PKCS11CLITests.self).bundleURL
        for dir in [bundle, bundle.deletingLastPathComponent()] where FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("hsmbackup").path) {
            return dir.appendingPathComponent("hsmbackup").path
        }
        return bundle.deletingLastPathComponent().appendingPathComponent("hsmbackup").path
    }

    var fx: SoftHSMFixture!
    var home = ""
    let module = SoftHSMFixture.module

    override func setUpWithError() throws {
        fx = try SoftHSMFixture()
        home = fx.dir + "/home"
        for args in [["manufacturer", "create", "softhsm"], ["operator", "init"], ["kms", "create-key", "k"], ["store", "init", "--replicas", "1"]] {
            let r = try run(args)
            XCTAssertEqual(r.status, 0, "\(args) \(r.err)")
        }
    }

    /// XCTest keeps every test case object until the process ends: release the fixture here, so
    /// its token directory goes when the test does.
    override func tearDown() {
        fx = nil
        super.tearDown()
    }

    struct Result { let status: Int32; let out: String; let err: String }

    func environment(pin: String? = SoftHSMFixture.userPIN, extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["HSMBACKUP_HOME"] = home
        env["SOFTHSM2_CONF"] = fx.conf
        env["HSMBACKUP_PKCS11_SO_PIN"] = SoftHSMFixture.soPIN
        env["HSMBACKUP_PKCS11_PIN"] = pin
        env.removeValue(forKey: "HSMBACKUP_TEST_PKCS11_PAUSE")
        for (k, v) in extra { env[k] = v }
        return env
    }

    func launch(_ args: [String], env: [String: String]) throws -> (Process, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        p.environment = env
        let out = fx.dir + "/out-\(UUID().uuidString)", err = fx.dir + "/err-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        _ = FileManager.default.createFile(atPath: err, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        p.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        try p.run()
        return (p, out, err)
    }

    @discardableResult
    func run(_ args: [String], pin: String? = SoftHSMFixture.userPIN, extra: [String: String] = [:]) throws -> Result {
        let (p, out, err) = try launch(args, env: environment(pin: pin, extra: extra))
        p.waitUntilExit()
        return Result(status: p.terminationStatus, out: try String(contentsOfFile: out, encoding: .utf8),
                      err: try String(contentsOfFile: err, encoding: .utf8))
    }

    var token: [String] { ["--pkcs11", "--module", module] }

    /// Two provisioned tokens; A holds the test objects (and, with `unbackable`, two it cannot back up).
    func prepare(unbackable: Bool) throws {
        for t in ["A", "B"] {
            try fx.initToken(t)
            let r = try run(["pkcs11", "provision", "--module", module, "--token", t, "--manufacturer", "softhsm"])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("PBK fingerprint"), r.out)
        }
        try TestObjects.populate(try fx.session("A"), unbackable: unbackable)
    }

    func testProvisionBackupVerifyRestoreThroughTheCLI() throws {
        try prepare(unbackable: true)
        let archive = fx.dir + "/a.hsmbak"
        // Keys that cannot be backed up: listed with their codes, exit 65, no file.
        var r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive])
        XCTAssertEqual(r.status, 65, r.err)
        XCTAssertTrue(r.err.contains("aes-locked") && r.err.contains("CKR_KEY_UNEXTRACTABLE (0x6a)"), r.err)
        XCTAssertTrue(r.err.contains("aes-wrap-with-trusted") && r.err.contains("CKR_KEY_NOT_WRAPPABLE (0x69)"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: archive))
        r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive, "--allow-partial"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("warning: not backed up") && r.err.contains("aes-locked"), r.err)
        XCTAssertTrue(r.out.contains("\(TestObjects.backedUp) keys"), r.out)
        r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", fx.dir + "/b.hsmbak", "--allow-partial", "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
        let skipped = json?["pkcs11Skipped"] as? [[String: Any]]
        XCTAssertEqual(skipped?.compactMap { $0["rvName"] as? String }.sorted(), ["CKR_KEY_NOT_WRAPPABLE", "CKR_KEY_UNEXTRACTABLE"], r.out)

        // Public metadata: the check values and the token's maker are in the envelope context.
        r = try run(["inspect", archive, "--json"])
        XCTAssertEqual(r.status, 0, r.err)

        r = try run(["verify", archive, "--level", "full"] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        XCTAssertTrue(r.out.hasPrefix("PASS"), r.out)
        r = try run(["restore", archive] + token + ["--token", "B", "--dry-run"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try fx.objectCount("B"), 0)
        r = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("8 keys passed their functional check"), r.out)
        XCTAssertTrue(r.out.contains("not in the backup") && r.out.contains("aes-locked"), r.out)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
        // Duplicates: refused (64) and nothing changes; --replace replaces.
        r = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 64, r.err)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
        r = try run(["restore", archive] + token + ["--token", "B", "--replace"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)

        // Interop: B's restored RSA key signs; OpenSSL verifies with the public key read from A by pkcs11-tool.
        let message = Array("signed on token B".utf8)
        let sig = try { () throws -> [UInt8] in
            let s = try fx.session("B")
            return try s.sign(CK.mSHA256RSAPKCS, key: try TestObjects.handle(s, CK.oPrivateKey, "rsa-2048"), message)
        }()
        try Data(message).write(to: URL(fileURLWithPath: fx.dir + "/msg"))
        try Data(sig).write(to: URL(fileURLWithPath: fx.dir + "/sig"))
        try fx.tool("/usr/bin/pkcs11-tool", ["--module", module, "--token-label", "A", "--read-object", "--type", "pubkey",
                                             "--label", "rsa-2048", "-o", fx.dir + "/pub.der"])
        try fx.tool("/usr/bin/openssl", ["pkey", "-pubin", "-inform", "DER", "-in", fx.dir + "/pub.der", "-out", fx.dir + "/pub.pem"])
        let (status, text) = try fx.tool("/usr/bin/openssl", ["dgst", "-sha256", "-verify", fx.dir + "/pub.pem", "-signature", fx.dir + "/sig",
                                                              fx.dir + "/msg"])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(text.contains("Verified OK"), text)
    }

    func testStoredBackupAndErrorsExitWithTheirCodes() throws {
        try prepare(unbackable: false)
        var r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--cluster", "softhsm-lab"])
        XCTAssertEqual(r.status, 0, r.err)
        let id = String(r.out.split(separator: " ")[1])
        r = try run(["backup", "list"])
        XCTAssertTrue(r.out.contains(id) && r.out.contains("softhsm-lab"), r.out)
        r = try run(["restore", id] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)

        r = try run(["pkcs11", "show"] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("quirks: softhsm-2.6-kwp-zero-pad") && r.out.contains("provisioned: manufacturer softhsm"), r.out)
        // Wrong PIN 67, absent token 66, not a PKCS#11 module 66, no PIN and no terminal 64, --pkcs11 with --hsm 64.
        XCTAssertEqual(try run(["restore", id] + token + ["--token", "B", "--dry-run"], pin: "not-the-pin").status, 67)
        XCTAssertEqual(try run(["restore", id] + token + ["--token", "Z", "--dry-run"]).status, 66)
        r = try run(["restore", id, "--pkcs11", "--module", "/usr/lib/x86_64-linux-gnu/libz.so.1", "--token", "B", "--dry-run"])
        XCTAssertEqual(r.status, 66, r.err)
        XCTAssertTrue(r.err.contains("not a PKCS#11 module"), r.err)
        r = try run(["restore", id] + token + ["--token", "B", "--dry-run"], pin: nil)
        XCTAssertEqual(r.status, 64, r.err)
        XCTAssertTrue(r.err.contains("HSMBACKUP_PKCS11_PIN"), r.err)
        XCTAssertEqual(try run(["restore", id, "--hsm", fx.dir] + token + ["--token", "B"]).status, 64)
        // A simulated HSM refuses a PKCS#11 archive (another manufacturer), and a token refuses a simulated HSM's.
        r = try run(["hsm", "create", fx.dir + "/sim", "--manufacturer", "softhsm", "--model", "m", "--serial", "1", "--cluster", "c"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try run(["restore", id, "--hsm", fx.dir + "/sim", "--dry-run"]).status, 65)
        r = try run(["backup", "create", "--hsm", fx.dir + "/sim", "--kms-key", "k", "--out", fx.dir + "/sim.hsmbak"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try run(["restore", fx.dir + "/sim.hsmbak"] + token + ["--token", "B", "--dry-run"])
        XCTAssertEqual(r.status, 68, r.err)
    }

    /// `verify --all --level full` on one token (issue 17): the token has one session, so its dry
    /// runs take turns whatever --jobs says; with 1 and 3 jobs every archive passes with the same
    /// counts, and the token is left as it was.
    func testVerifyAllOnOneTokenWithSeveralJobs() throws {
        try prepare(unbackable: false)
        var ids: [String] = []
        for _ in 0..<3 {
            let r = try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--cluster", "lab", "--json"])
            XCTAssertEqual(r.status, 0, r.err)
            let j = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
            ids.append(try XCTUnwrap(j?["backupId"] as? String, r.out))
        }
        var seen: [[String]] = []
        for jobs in ["1", "3"] {
            let r = try run(["verify", "--all", "--level", "full"] + token + ["--token", "B", "--cluster", "lab", "--jobs", jobs, "--json"])
            XCTAssertEqual(r.status, 0, r.out + r.err)
            let j = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
            let archives = try XCTUnwrap(j?["archives"] as? [[String: Any]], r.out)
            XCTAssertEqual(Set(archives.compactMap { $0["backupId"] as? String }), Set(ids), r.out)
            seen.append(archives.map { a in
                let report = a["report"] as? [String: Any] ?? [:]
                return "\(a["backupId"] ?? "") \(a["result"] ?? "") \(report["levelsChecked"] ?? "") \(report["objectsChecked"] ?? "")"
            })
            for a in archives {
                XCTAssertEqual(a["result"] as? String, "passed", "\(a)")
                XCTAssertEqual((a["report"] as? [String: Any])?["objectsChecked"] as? Int, TestObjects.backedUp, "\(a)")
            }
        }
        XCTAssertEqual(seen[0], seen[1])
        XCTAssertEqual(try fx.objectCount("B"), 0, "dry runs leave no object on the token")
    }

    /// kill -9 between the phases leaves no new object; killed inside phase 2, the objects it made
    /// carry the temporary label and the next restore removes them. Then the restore runs again.
    func testARestoreKilledPartWayLeavesNoNewObjects() throws {
        try prepare(unbackable: false)
        let archive = fx.dir + "/a.hsmbak"
        XCTAssertEqual(try run(["backup", "create"] + token + ["--token", "A", "--kms-key", "k", "--out", archive]).status, 0)
        for (pause, left) in [("between", 0), ("phase2:5", 5)] {
            let marker = fx.dir + "/paused-\(UUID().uuidString)"
            let spec = pause == "between" ? "between:\(marker)" : "\(pause):\(marker)"
            let (p, _, err) = try launch(["restore", archive] + token + ["--token", "B"],
                                         env: environment(extra: ["HSMBACKUP_TEST_PKCS11_PAUSE": spec]))
            // Wait for the hook (a bound so a regression fails rather than hangs; not a timing assertion).
            var waited = 0
            while !FileManager.default.fileExists(atPath: marker) && p.isRunning && waited < 1200 { usleep(50_000); waited += 1 }
            XCTAssertTrue(FileManager.default.fileExists(atPath: marker), (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationReason, .uncaughtSignal)
            let s = try fx.session("B")
            let labels = try s.find([.bool(0x1, true)]).map { h -> String in
                guard case .success(.bytes(let b)) = try s.attribute(h, 0x3, as: .bytes) else { return "" }
                return String(decoding: b, as: UTF8.self)
            }.filter { !$0.hasPrefix(PKCS11Labels.pbkPrefix) && !$0.hasPrefix(PKCS11Labels.tokenPBKPrefix) }
            XCTAssertEqual(labels.count, left, "\(pause): \(labels)")
            XCTAssertTrue(labels.allSatisfy { $0.hasPrefix(PKCS11Labels.restoringPrefix) }, "\(labels)")
        }
        let r = try run(["restore", archive] + token + ["--token", "B"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("5 left by an unfinished restore removed"), r.out)
        XCTAssertEqual(try fx.objectCount("B"), TestObjects.backedUp)
    }
}
