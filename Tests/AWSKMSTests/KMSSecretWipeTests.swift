// The data key's copies in KMSClient's buffers (review finding 6): the Encrypt request body (the
// key in base64) and the GenerateDataKey / Decrypt answer bodies are zeroed where they lie once
// the call is over, including when it fails; the key is decoded from base64 straight into
// SecureBytes. The transport here keeps the very buffers it was handed and answered with, so
// the test sees what is left in them after the call returns.
import AWSCore
@testable import AWSKMS
import BackupCrypto
import Envelope
import Foundation
import XCTest

/// Answers KMS calls with fixed JSON and keeps each request body it was given and each answer
/// body it returned (the same storage, not copies).
final class KeepingKMSTransport: HTTPTransport, @unchecked Sendable {
    static let arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    let key: [UInt8]
    let failEncrypt: Bool
    private let lock = NSLock()
    private var _sent: [Data] = []
    private var _answered: [Data] = []
    private var _keyInRequest: [Bool] = []
    var sent: [Data] { lock.lock(); defer { lock.unlock() }; return _sent }
    var answered: [Data] { lock.lock(); defer { lock.unlock() }; return _answered }
    /// For each request: whether its body held the key's base64 when it was sent.
    var keyInRequest: [Bool] { lock.lock(); defer { lock.unlock() }; return _keyInRequest }

    init(key: [UInt8], failEncrypt: Bool = false) { self.key = key; self.failEncrypt = failEncrypt }

    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        let b64 = Data(key).base64EncodedString()
        let blob = Data(repeating: 0xC7, count: 96).base64EncodedString()
        var status = 200
        let json: String
        switch request.headers["x-amz-target"] {
        case "TrentService.GenerateDataKey": json = #"{"CiphertextBlob":"\#(blob)","Plaintext":"\#(b64)","KeyId":"\#(Self.arn)"}"#
        case "TrentService.Decrypt": json = #"{"Plaintext":"\#(b64)","KeyId":"\#(Self.arn)","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#
        case "TrentService.Encrypt" where failEncrypt:
            status = 400
            json = #"{"__type":"AccessDeniedException","message":"refused by the test"}"#
        default: json = #"{"CiphertextBlob":"\#(blob)","KeyId":"\#(Self.arn)","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#
        }
        let body = Data(json.utf8)
        lock.lock()
        _sent.append(request.body)
        _answered.append(body)
        _keyInRequest.append(String(decoding: request.body, as: UTF8.self).contains(b64))
        lock.unlock()
        return HTTPResponse(status: status, headers: HTTPHeaders([("Content-Type", "application/x-amz-json-1.1")]), body: body)
    }
}

final class KMSSecretWipeTests: XCTestCase {
    let key = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }

    func client(_ t: HTTPTransport) -> KMSClient {
        KMSClient(client: AWSClient(service: "kms", region: "us-east-1", endpoint: URL(string: "http://127.0.0.1:9")!,
                                    credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: AWSSecretKey("secret")),
                                    transport: t, retry: .none))
    }

    func allZero(_ d: Data) -> Bool { !d.isEmpty && d.allSatisfy { $0 == 0 } }

    func testAnswerBodiesHoldingTheDataKeyAreZeroedAfterTheCall() throws {
        let t = KeepingKMSTransport(key: key)
        let kms = client(t)
        let ctx = try EncryptionContext(["purpose": "wipe"])
        let generated = try kms.generateDataKey(keyID: KeepingKMSTransport.arn, numberOfBytes: 32, context: ctx)
        XCTAssertEqual(generated.plaintext.unsafeCopy(), key)
        XCTAssertEqual(generated.ciphertextBlob, [UInt8](repeating: 0xC7, count: 96))
        let decrypted = try kms.decrypt(keyID: KeepingKMSTransport.arn, ciphertextBlob: generated.ciphertextBlob, context: ctx)
        XCTAssertEqual(decrypted.plaintext.unsafeCopy(), key)
        XCTAssertEqual(t.answered.count, 2)
        for (i, body) in t.answered.enumerated() {
            XCTAssertTrue(allZero(body), "answer \(i) still holds: \(String(decoding: body, as: UTF8.self))")
        }
    }

    func testTheEncryptRequestBodyIsZeroedAfterTheCallAlsoWhenItFails() throws {
        for fail in [false, true] {
            let t = KeepingKMSTransport(key: key, failEncrypt: fail)
            let kms = client(t)
            let plaintext = SecureBytes(copying: key)
            do {
                let r = try kms.encrypt(keyID: KeepingKMSTransport.arn, plaintext: plaintext, context: .empty)
                XCTAssertFalse(fail)
                XCTAssertEqual(r.keyID, KeepingKMSTransport.arn)
            } catch let e as AWSError {
                XCTAssertTrue(fail, "\(e)")
                XCTAssertEqual(e.code, "AccessDeniedException")
            }
            XCTAssertEqual(t.keyInRequest, [true], "the request carried the key")
            XCTAssertTrue(allZero(t.sent[0]), "fail \(fail): the request body still holds: \(String(decoding: t.sent[0], as: UTF8.self))")
            // The caller's own key is untouched.
            XCTAssertEqual(plaintext.unsafeCopy(), key)
        }
    }

    func testSecretBase64DecodesExactlyWhatDataDoesAndRefusesTheRest() throws {
        for n in 0..<40 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 97 &+ 5) }
            let text = Data(bytes).base64EncodedString()
            XCTAssertEqual(secretFromBase64(text)?.unsafeCopy(), bytes, text)
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "=Zm9", "Zm 9", "Zm9v\n", "Zg=a"] {
            XCTAssertNil(secretFromBase64(bad), bad)
        }
    }
}
