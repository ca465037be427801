import AWSCore
import AWSKMS
import BackupCrypto
import Envelope
import Foundation
import XCTest

/// The AWS KMS keyring against moto with signature checks on (S3-KMS digest §4, §5).
final class KMSKeyringTests: XCTestCase {
    let plaintext = Array((0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })

    func testGeneratorSendsWhatTheESDKSendsAndTheEDKNamesTheKeyARN() throws {
        let moto = try Moto.require()
        let arn1 = try moto.createKey(), arn2 = try moto.createKey()
        let rec = RecordingTransport()
        let ctx = try EncryptionContext(["purpose": "backup", "tenant": "t1"])
        let message = try EnvelopeEncryptor.encrypt(plaintext, keyrings: [try moto.keyring(arn1, transport: rec), try moto.keyring(arn2, transport: rec)],
                                                    context: ctx, suite: .committingSigned)
        XCTAssertEqual(rec.operations, ["TrentService.GenerateDataKey", "TrentService.Encrypt"])
        let gen = rec.json(0), enc = rec.json(1)
        XCTAssertEqual(gen["KeyId"] as? String, arn1)
        XCTAssertEqual(gen["NumberOfBytes"] as? Int, 32)
        XCTAssertNil(gen["KeySpec"])
        let sentContext = try XCTUnwrap(gen["EncryptionContext"] as? [String: String])
        XCTAssertEqual(Set(sentContext.keys), ["purpose", "tenant", "aws-crypto-public-key"], "the full context, with the verification key")
        XCTAssertEqual(enc["EncryptionContext"] as? [String: String], sentContext, "Encrypt carries the identical context")
        XCTAssertEqual(enc["KeyId"] as? String, arn2)
        for r in rec.requests {
            XCTAssertEqual(r.headers["content-type"], "application/x-amz-json-1.1")
            XCTAssertTrue(r.headers["authorization"]!.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-target,"))
        }
        let (header, opened) = try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(arn2)])
        XCTAssertEqual(opened, plaintext)
        XCTAssertEqual(header.encryptedDataKeys.map(\.providerID), ["aws-kms", "aws-kms"])
        XCTAssertEqual(header.encryptedDataKeys.map { String(decoding: $0.providerInfo, as: UTF8.self) }, [arn1, arn2])
        XCTAssertEqual(header.context.value(forKey: "aws-crypto-public-key"), sentContext["aws-crypto-public-key"])
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(arn1)]).plaintext, plaintext)
    }

    func testAliasesEncryptAndTheEDKNamesTheKeyARN() throws {
        let moto = try Moto.require()
        let meta = try moto.kms().createKey(description: "alias target")
        let alias = "alias/hsmbackup-\(UUID().uuidString.prefix(8))"
        try moto.kms().createAlias(aliasName: alias, targetKeyID: meta.keyID)
        let aliasARN = "arn:aws:kms:\(moto.region):\(moto.account):\(alias)"
        for id in [alias, aliasARN] {
            let message = try EnvelopeEncryptor.encrypt(plaintext, keyrings: [try moto.keyring(id)])
            let header = try HeaderReader.read(from: MemorySource(message))
            XCTAssertEqual(String(decoding: header.encryptedDataKeys[0].providerInfo, as: UTF8.self), meta.arn, id)
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(meta.arn)]).plaintext, plaintext)
            // Decrypt matches EDKs by key ARN only, as the ESDK's strict keyring does.
            XCTAssertThrowsError(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(id)])) { e in
                XCTAssertEqual((e as? EnvelopeError)?.code, .noUsableKey)
                XCTAssertTrue("\(e)".contains("it opens with: aws-kms key \(meta.arn)"), "\(e)")
            }
        }
    }

    func testOnlyMatchingEDKsAreTriedAndEveryFailureIsReported() throws {
        let moto = try Moto.require()
        let arn1 = try moto.createKey(), arn2 = try moto.createKey(), other = try moto.createKey()
        let message = try EnvelopeEncryptor.encrypt(plaintext, keyrings: [try moto.keyring(arn1), try moto.keyring(arn2)],
                                                    context: try EncryptionContext(["k": "v"]))
        // A key the message is not for: no KMS call at all.
        let rec = RecordingTransport()
        XCTAssertThrowsError(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(other, transport: rec)])) { e in
            XCTAssertEqual((e as? EnvelopeError)?.code, .noUsableKey)
        }
        XCTAssertEqual(rec.requests.count, 0)
        // Both keys, bad credentials: each attempt's error is in the report.
        let bad = AWSCredentials(accessKeyID: moto.accessKeyID, secretAccessKey: AWSSecretKey("not-the-secret"))
        let rings: [Keyring] = try [arn1, arn2].map {
            AWSKMSKeyring(key: try KMSKeyIdentifier($0), client: moto.kms(credentials: bad))
        }
        XCTAssertThrowsError(try EnvelopeDecryptor.decrypt(message, keyrings: rings)) { e in
            let s = "\(e)"
            XCTAssertEqual((e as? EnvelopeError)?.code, .noUsableKey)
            XCTAssertTrue(s.contains("aws-kms key \(arn1): KMS Decrypt: SignatureDoesNotMatch (HTTP 403)"), s)
            XCTAssertTrue(s.contains("aws-kms key \(arn2): KMS Decrypt: SignatureDoesNotMatch (HTTP 403)"), s)
        }
    }

    func testTheContextIsBoundByKMS() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let ring = try moto.keyring(arn)
        let ctx = try EncryptionContext(["tenant": "a"])
        let (dk, edk) = try ring.generate(byteCount: 32, context: ctx)
        guard case .opened(let back) = try ring.unwrap(edk, context: ctx) else { return XCTFail("the EDK did not open") }
        XCTAssertTrue(back.constantTimeEquals(dk))
        guard case .failed(let why) = try ring.unwrap(edk, context: try EncryptionContext(["tenant": "b"])) else {
            return XCTFail("an altered context opened the EDK")
        }
        XCTAssertTrue(why.contains("InvalidCiphertextException"), why)
        // A foreign provider or another ARN is not ours.
        let foreign = EncryptedDataKey(providerID: "aws-kms", providerInfo: Array((arn + "x").utf8), ciphertext: edk.ciphertext)
        guard case .notMine = try ring.unwrap(foreign, context: ctx) else { return XCTFail("another ARN was tried") }
    }

    func testMixedWithTheLocalKMSInOneMessage() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let dir = NSTemporaryDirectory() + "kmsmix-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let local = LocalKMS(directory: dir)
        try local.createKey("lk")
        for rings in [[try local.keyring("lk"), try moto.keyring(arn)] as [Keyring], [try moto.keyring(arn), try local.keyring("lk")]] {
            let message = try EnvelopeEncryptor.encrypt(plaintext, keyrings: rings)
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [try local.keyring("lk")]).plaintext, plaintext)
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(arn)]).plaintext, plaintext)
        }
    }

    func testWrongCredentialsAndMissingKeysAreTypedErrors() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let bad = AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: AWSSecretKey("nope"))
        let ring = AWSKMSKeyring(key: try KMSKeyIdentifier(arn), client: moto.kms(credentials: bad))
        XCTAssertThrowsError(try EnvelopeEncryptor.encrypt(plaintext, keyrings: [ring])) { e in
            let e = e as! AWSError
            XCTAssertEqual(e.category, .authentication, "\(e)")
            XCTAssertEqual(e.operation, "GenerateDataKey")
            XCTAssertEqual(e.attempts, 1, "authentication errors are not retried")
        }
        let missing = "arn:aws:kms:\(moto.region):\(moto.account):key/00000000-0000-0000-0000-000000000000"
        XCTAssertThrowsError(try EnvelopeEncryptor.encrypt(plaintext, keyrings: [try moto.keyring(missing)])) { e in
            XCTAssertEqual((e as? AWSError)?.code, "NotFoundException")
            XCTAssertEqual((e as? AWSError)?.category, .notFound)
        }
    }

    func testNFCAndNFDContextKeysReachKMSApart() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let nfc = Array("caf\u{E9}".utf8), nfd = Array("cafe\u{301}".utf8)
        let ctx = try EncryptionContext(rawPairs: [(nfc, Array("1".utf8)), (nfd, Array("2".utf8))])
        XCTAssertEqual(ctx.count, 2)
        let message = try EnvelopeEncryptor.encrypt(plaintext, keyrings: [try moto.keyring(arn)], context: ctx)
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(arn)]).plaintext, plaintext)
    }
}

final class KMSKeyIdentifierTests: XCTestCase {
    func testForms() throws {
        let k = try KMSKeyIdentifier("arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab")
        XCTAssertEqual(k.kind, .keyARN)
        XCTAssertEqual(k.region, "eu-west-1")
        XCTAssertEqual(k.account, "111122223333")
        XCTAssertEqual(try KMSKeyIdentifier("arn:aws:kms:us-east-1:111122223333:alias/backup").kind, .aliasARN)
        XCTAssertEqual(try KMSKeyIdentifier("arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/x").partition, "aws-us-gov")
        let a = try KMSKeyIdentifier("alias/backup")
        XCTAssertEqual(a.kind, .aliasName)
        XCTAssertNil(a.region)
        for bad in ["", "alias/", "arn:aws:kms:us-east-1:1234:key/x", "arn:aws:s3:::bucket", "arn:aws:kms:us-east-1:111122223333:grant/x",
                    "arn:aws:kms::111122223333:key/x", "arn:aws:kms:us-east-1:111122223333:key/", "alias/a b"] {
            XCTAssertThrowsError(try KMSKeyIdentifier(bad), bad)
        }
        XCTAssertTrue(KMSKeyIdentifier.looksLikeAWS("alias/x"))
        XCTAssertFalse(KMSKeyIdentifier.looksLikeAWS("backup-key"))
    }
}
