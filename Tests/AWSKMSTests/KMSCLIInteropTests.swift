import Foundation
import XCTest

/// `hsmbackup … --kms-key arn:aws:kms:…` against moto (signature checks on), and interop with
/// the official `aws-encryption-cli` both ways (issue 16 §5): the outer layer we write opens with
/// the AWS tool given the key ARN, and what the AWS tool writes opens with `envelope decrypt`.
final class KMSCLIInteropTests: XCTestCase {
    var moto: Moto!
    var root = ""
    var home: String { root + "/home" }
    var hsm: String { root + "/hsm" }

    override func setUpWithError() throws {
        moto = try Moto.require()
        root = NSTemporaryDirectory() + "kmscli-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        for args in [["manufacturer", "create", "acme"], ["operator", "init"], ["kms", "create-key", "lk"], ["store", "init"],
                     ["hsm", "create", hsm, "--manufacturer", "acme", "--model", "M1", "--serial", "S1", "--cluster", "c1"],
                     ["hsm", "populate", hsm, "--keys", "12", "--users", "2", "--seed", "5", "--no-rsa"]] {
            try expect(0, args)
        }
    }

    override func tearDownWithError() throws { if !root.isEmpty { try? FileManager.default.removeItem(atPath: root) } }

    // MARK: helpers

    func hsmbackup(_ args: [String], secret: String? = nil, env: [String: String] = [:]) throws -> ProcessRun {
        var e = moto.processEnvironment(secret: secret)
        e["HSMBACKUP_HOME"] = home
        for (k, v) in env { e[k] = v }
        return try ProcessRun.run(HSMBackupBinary.path, args, environment: e, cwd: root)
    }

    @discardableResult
    func expect(_ code: Int32, _ args: [String], secret: String? = nil, env: [String: String] = [:],
                file: StaticString = #filePath, line: UInt = #line) throws -> ProcessRun {
        let r = try hsmbackup(args, secret: secret, env: env)
        XCTAssertEqual(r.status, code, r.description, file: file, line: line)
        return r
    }

    /// `aws-encryption-cli` from the test venv, pointed at moto.
    @discardableResult
    func awsEncryptionCLI(_ args: [String], expect code: Int32 = 0, file: StaticString = #filePath, line: UInt = #line) throws -> ProcessRun {
        let r = try ProcessRun.run(moto.venv + "/bin/aws-encryption-cli", args + ["-S"], environment: moto.processEnvironment(), cwd: root)
        XCTAssertEqual(r.status, code, r.description, file: file, line: line)
        return r
    }

    func bytes(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: root + "/" + name))) }

    /// The inner blob's magic (spec §4): what the outer layer must decrypt to.
    func assertInnerBlob(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let b = try bytes(name)
        XCTAssertEqual(Array(b.prefix(8)), Array("HSMBINNR".utf8), "\(name) is not an inner blob", file: file, line: line)
    }

    // MARK: our archives open with the AWS Encryption SDK CLI

    func testBackupCreateWithKMSKeyOpensWithAWSEncryptionCLI() throws {
        let arn = try moto.createKey()
        try expect(0, ["backup", "create", "--hsm", hsm, "--kms-key", arn, "--out", "a.hsmb"])
        try awsEncryptionCLI(["-d", "-i", "a.hsmb", "-o", "a.inner", "--wrapping-keys", "key=\(arn)",
                              "--commitment-policy", "require-encrypt-require-decrypt"])
        try assertInnerBlob("a.inner")
        // Our own reader opens it with the ARN, and `inspect` names the key.
        let v = try expect(0, ["verify", "a.hsmb", "--level", "envelope", "--kms-key", arn])
        XCTAssertTrue(v.stdout.hasPrefix("PASS"), v.description)
        XCTAssertTrue(try expect(0, ["inspect", "a.hsmb"]).stdout.contains(arn))
    }

    func testSignedTwoKeyAndMixedArchivesOpenWithAWSEncryptionCLIUnderEitherKey() throws {
        let arn1 = try moto.createKey(), arn2 = try moto.createKey()
        try expect(0, ["backup", "create", "--hsm", hsm, "--kms-key", arn1, "--kms-key", arn2, "--signed", "--out", "s.hsmb"])
        for (i, arn) in [arn1, arn2].enumerated() {
            try awsEncryptionCLI(["-d", "-i", "s.hsmb", "-o", "s\(i).inner", "--wrapping-keys", "key=\(arn)"])
            try assertInnerBlob("s\(i).inner")
        }
        // A local KMS key and an AWS KMS key in one archive; each opens it alone.
        try expect(0, ["backup", "create", "--hsm", hsm, "--kms-key", "lk", "--kms-key", arn1, "--out", "m.hsmb"])
        try awsEncryptionCLI(["-d", "-i", "m.hsmb", "-o", "m.inner", "--wrapping-keys", "key=\(arn1)"])
        try assertInnerBlob("m.inner")
        try expect(0, ["verify", "m.hsmb", "--level", "envelope", "--kms-key", "lk"])
        try expect(0, ["verify", "m.hsmb", "--level", "envelope", "--kms-key", arn1])
    }

    func testStoredBackupUnderAnAliasVerifiesAndRestoresWithTheKeyARN() throws {
        let meta = try moto.kms().createKey(description: "alias target")
        let alias = "alias/hsmb-\(UUID().uuidString.prefix(8))"
        try moto.kms().createAlias(aliasName: alias, targetKeyID: meta.keyID)
        let r = try expect(0, ["backup", "create", "--hsm", hsm, "--kms-key", alias, "--json"])
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let id = try XCTUnwrap(obj["backupId"] as? String)
        XCTAssertEqual(obj["keys"] as? [String], ["aws-kms key \(meta.arn)"], "the EDK names the key ARN, not the alias")
        try expect(0, ["verify", id, "--level", "envelope", "--kms-key", meta.arn])
        let target = root + "/target"
        try expect(0, ["hsm", "create", target, "--manufacturer", "acme", "--model", "M1", "--serial", "S2", "--cluster", "c1"])
        let restored = try expect(0, ["restore", id, "--hsm", target, "--kms-key", meta.arn])
        XCTAssertTrue(restored.stdout.contains("12 keys"), restored.description)
        // The alias cannot open it (EDKs are matched by key ARN, as the ESDK's strict keyring does).
        let refused = try expect(67, ["verify", id, "--level", "envelope", "--kms-key", alias])
        XCTAssertTrue(refused.stderr.contains("it opens with: aws-kms key \(meta.arn)"), refused.description)
    }

    func testRewrapBetweenLocalAndAWSKMSKeys() throws {
        let arn1 = try moto.createKey(), arn2 = try moto.createKey()
        // A stored backup under a local key, rewrapped to an AWS key, then from it to another.
        let r = try expect(0, ["backup", "create", "--hsm", hsm, "--kms-key", "lk", "--json"])
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["backupId"] as? String)
        try expect(0, ["backup", "rewrap", id, "--kms-key", arn1, "--from-kms-key", "lk"])
        try expect(0, ["verify", id, "--level", "envelope", "--kms-key", arn1])
        try expect(67, ["verify", id, "--level", "envelope", "--kms-key", "lk"])
        try expect(0, ["backup", "rewrap", id, "--kms-key", arn2, "--from-kms-key", arn1])
        try expect(0, ["verify", id, "--level", "envelope", "--kms-key", arn2])
        // A message file rewrapped from an AWS key to a local one and back opens with the AWS tool.
        try Data((0..<5000).map { UInt8(truncatingIfNeeded: $0) }).write(to: URL(fileURLWithPath: root + "/m.bin"))
        try expect(0, ["envelope", "encrypt", "m.bin", "-o", "m.enc", "--kms-key", arn1])
        try expect(0, ["envelope", "rewrap", "m.enc", "--kms-key", arn1, "--to-kms-key", "lk", "--to-kms-key", arn2])
        try expect(0, ["envelope", "decrypt", "m.enc", "-o", "m.lk", "--kms-key", "lk"])
        try awsEncryptionCLI(["-d", "-i", "m.enc", "-o", "m.out", "--wrapping-keys", "key=\(arn2)"])
        XCTAssertEqual(try bytes("m.out"), try bytes("m.bin"))
    }

    // MARK: the AWS Encryption SDK CLI's messages open with hsmbackup

    func testAWSEncryptionCLIMessagesOpenWithEnvelopeDecrypt() throws {
        let arn1 = try moto.createKey(), arn2 = try moto.createKey()
        let plain = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try Data(plain).write(to: URL(fileURLWithPath: root + "/p.bin"))
        // The default suite (0x0578, signed) with one key and a context; then two keys.
        try awsEncryptionCLI(["-e", "-i", "p.bin", "-o", "one.enc", "--wrapping-keys", "key=\(arn1)", "-c", "purpose=interop", "tenant=t\u{E9}"])
        try awsEncryptionCLI(["-e", "-i", "p.bin", "-o", "two.enc", "--wrapping-keys", "key=\(arn1)", "key=\(arn2)"])
        let inspect = try expect(0, ["envelope", "inspect", "one.enc"])
        XCTAssertTrue(inspect.stdout.contains("0x0578"), inspect.description)
        try expect(0, ["envelope", "decrypt", "one.enc", "-o", "one.out", "--kms-key", arn1])
        XCTAssertEqual(try bytes("one.out"), plain)
        for (i, arn) in [arn1, arn2].enumerated() {
            try expect(0, ["envelope", "decrypt", "two.enc", "-o", "two\(i).out", "--kms-key", arn])
            XCTAssertEqual(try bytes("two\(i).out"), plain)
        }
        // And ours back to theirs, two keys, signed.
        try expect(0, ["envelope", "encrypt", "p.bin", "-o", "ours.enc", "--kms-key", arn2, "--kms-key", arn1, "--signed", "--context", "purpose=interop"])
        try awsEncryptionCLI(["-d", "-i", "ours.enc", "-o", "ours.out", "--wrapping-keys", "key=\(arn1)", "--encryption-context", "purpose=interop"])
        XCTAssertEqual(try bytes("ours.out"), plain)
    }

    // MARK: errors

    func testWrongCredentialsMissingKeysAndNoCredentialsHaveClearErrorsAndExitCodes() throws {
        let arn = try moto.createKey()
        // Wrong secret: 67, the service's code and message, and no output file.
        let bad = try expect(67, ["backup", "create", "--hsm", hsm, "--kms-key", arn, "--out", "bad.hsmb"], secret: "wrong-secret")
        XCTAssertTrue(bad.stderr.contains("kms GenerateDataKey (\(arn)): SignatureDoesNotMatch (HTTP 403)"), bad.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/bad.hsmb"))
        XCTAssertFalse(bad.stderr.contains("wrong-secret") || bad.stderr.contains(moto.secretAccessKey), "no secret in a message")
        // Nothing went into the store either.
        XCTAssertFalse(try expect(0, ["backup", "list"]).stdout.contains("c1"), "no backup of cluster c1 in the store")
        // Decrypt with the wrong secret: 67, and the failed attempt is reported.
        try expect(0, ["backup", "create", "--hsm", hsm, "--kms-key", arn, "--out", "ok.hsmb"])
        let d = try expect(67, ["envelope", "decrypt", "ok.hsmb", "-o", "x.out", "--kms-key", arn], secret: "wrong-secret")
        XCTAssertTrue(d.stderr.contains("KMS Decrypt: SignatureDoesNotMatch"), d.description)
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/x.out"))
        // A key that does not exist: 66 with the service's NotFoundException.
        let missing = "arn:aws:kms:\(moto.region):\(moto.account):key/00000000-0000-0000-0000-000000000000"
        let nf = try expect(66, ["envelope", "encrypt", "ok.hsmb", "-o", "y.enc", "--kms-key", missing])
        XCTAssertTrue(nf.stderr.contains("NotFoundException"), nf.description)
        // No credentials at all: 64 naming what to set. Not an ARN: 64.
        let none = try expect(64, ["envelope", "encrypt", "ok.hsmb", "-o", "y.enc", "--kms-key", arn],
                              env: ["AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""])
        XCTAssertTrue(none.stderr.contains("no AWS credentials"), none.description)
        let notARN = try expect(64, ["envelope", "encrypt", "ok.hsmb", "-o", "y.enc", "--kms-key", "arn:aws:kms:us-east-1:1:key/x"])
        XCTAssertTrue(notARN.stderr.contains("is not a KMS key ARN"), notARN.description)
        // An unreachable endpoint: 74 after the retries, naming the transport failure.
        let down = try expect(74, ["envelope", "encrypt", "ok.hsmb", "-o", "y.enc", "--kms-key", arn],
                              env: ["AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "2"])
        XCTAssertTrue(down.stderr.contains("transport error"), down.description)
    }
}
