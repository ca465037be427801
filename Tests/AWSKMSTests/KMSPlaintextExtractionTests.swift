// The data key in a GenerateDataKey / Decrypt answer is taken from the body's bytes and decoded
// from base64 straight into SecureBytes (SecretJSONField); JSONSerialization only sees a copy with
// that value emptied, so no Foundation String ever holds the key. The scan is strict: what KMS
// sends, escaped characters and any field order included; anything else is an error.
import AWSCore
@testable import AWSKMS
import BackupCrypto
import Envelope
import Foundation
import XCTest

/// Answers every KMS call with one fixed body.
final class FixedKMSTransport: HTTPTransport, @unchecked Sendable {
    let body: String
    init(_ body: String) { self.body = body }
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/x-amz-json-1.1")]), body: Data(body.utf8))
    }
}

final class KMSPlaintextExtractionTests: XCTestCase {
    let key = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 53 &+ 250) }
    let arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    var b64: String { Data(key).base64EncodedString() }

    func extract(_ json: String) throws -> (SecureBytes?, [String: Any]) {
        let (secret, rest) = try SecretJSONField.extract("Plaintext", from: Data(json.utf8))
        let text = String(decoding: rest, as: UTF8.self)
        if secret != nil { XCTAssertFalse(text.contains(b64), text) }
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: rest) as? [String: Any], text)
        return (secret, object)
    }

    func testThePlaintextFieldIsTakenFromTheBytesInAnyOrderAndSpelling() throws {
        XCTAssertTrue(b64.contains("/") && b64.contains("i"), "the sample key's base64 has a / (which JSON may escape) and an i: \(b64)")
        let escapedSlash = b64.replacingOccurrences(of: "/", with: #"\/"#)
        let unicodeEscaped = b64.replacingOccurrences(of: "/", with: #"\u002F"#).replacingOccurrences(of: "i", with: #"\u0069"#)
        let bodies = [
            #"{"CiphertextBlob":"AQID","Plaintext":"\#(b64)","KeyId":"\#(arn)"}"#,
            #"{"Plaintext":"\#(b64)","KeyId":"\#(arn)","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#,
            #"{"KeyId":"\#(arn)","CiphertextBlob":"AQID","Plaintext":"\#(b64)"}"#,
            "{\n  \"KeyId\" : \"\(arn)\",\n\t\"Plaintext\"\r\n:\n \"\(b64)\"  ,\"n\": -1.5e+3 }\n",
            #"{"KeyId":"\#(arn)","Plaintext":"\#(escapedSlash)"}"#,
            #"{"KeyId":"\#(arn)","Plaintext":"\#(unicodeEscaped)"}"#,
            #"{"KeyId":"\#(arn)","Plain\u0074ext":"\#(b64)"}"#,
            // Quotes, braces and a nested "Plaintext" in other values: only the object's own field counts.
            #"{"Note":"a \"Plaintext\":\"AAAA\" }{","X":{"Plaintext":"AAAA","y":[1,true,null,{"z":"]"}]},"KeyId":"\#(arn)","Plaintext":"\#(b64)"}"#,
        ]
        for body in bodies {
            let (secret, object) = try extract(body)
            XCTAssertEqual(try XCTUnwrap(secret, body).unsafeCopy(), key, body)
            XCTAssertEqual(object["KeyId"] as? String, arn, body)
            XCTAssertEqual(object["Plaintext"] as? String, "", "emptied for the parser: \(body)")
        }
        // Missing: nil, and the body parses as it is.
        let (none, object) = try extract(#"{"CiphertextBlob":"AQID","KeyId":"\#(arn)","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#)
        XCTAssertNil(none)
        XCTAssertEqual(object["CiphertextBlob"] as? String, "AQID")
        XCTAssertNil(try extract("{}").0)
        XCTAssertNil(try extract(#"{"X":{"Plaintext":"\#(b64)"}}"#).0, "a nested field is not the answer's")
    }

    func testAnythingButWhatKMSSendsIsRefused() throws {
        let bad = [
            #"{"Plaintext":"\#(b64)","Plaintext":"\#(b64)"}"#,            // twice
            #"{"Plaintext":123}"#,                                       // not a string
            #"{"Plaintext":null}"#,
            #"{"Plaintext":"Zm9v!A=="}"#,                                // not base64
            #"{"Plaintext":"Zg="}"#,
            #"{"Plaintext":"Zm9v\nYmFy"}"#,                              // an escape base64 never has
            #"{"Plaintext":"\u00e9AAA"}"#,
            #"{"Plaintext":"\#(b64)""#,                                  // unterminated
            #"{"Plaintext":"\#(b64)"} x"#,                               // after the object
            #"[{"Plaintext":"\#(b64)"}]"#,                               // not an object
            #"{"Plaintext":"\#(b64)",}"#,
            "{\"Plaintext\":\"\(b64)\",\"K\":\"a\u{01}b\"}",             // a raw control character
            #"{"Plaintext":"\#(b64)","K":"\x"}"#,                        // a bad escape
            #"{"Plaintext":"\#(b64)","K":tru}"#,
            #"{"Plaintext":"\#(b64)","K":-}"#,
            String(repeating: "{\"a\":", count: 100) + "1" + String(repeating: "}", count: 100),
        ]
        for body in bad {
            XCTAssertThrowsError(try SecretJSONField.extract("Plaintext", from: Data(body.utf8)), body) { e in
                XCTAssertTrue(e is SecretJSONField.Malformed, "\(e)")
                XCTAssertFalse("\(e)".contains(self.b64), "\(e)")
            }
        }
    }

    func testKMSCallsUseTheExtractedKeyAndFailClearlyWithoutIt() throws {
        func kms(_ body: String) -> KMSClient {
            KMSClient(client: AWSClient(service: "kms", region: "us-east-1", endpoint: URL(string: "http://127.0.0.1:9")!,
                                        credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: AWSSecretKey("secret")),
                                        transport: FixedKMSTransport(body), retry: .none))
        }
        let escaped = b64.replacingOccurrences(of: "/", with: #"\/"#)
        let generated = try kms(#"{ "KeyId": "\#(arn)", "Plaintext": "\#(escaped)", "CiphertextBlob": "AQID" }"#)
            .generateDataKey(keyID: arn, numberOfBytes: 32, context: .empty)
        XCTAssertEqual(generated.plaintext.unsafeCopy(), key)
        XCTAssertEqual(generated.ciphertextBlob, [1, 2, 3])
        XCTAssertEqual(generated.keyID, arn)
        let decrypted = try kms(#"{"Plaintext":"\#(b64)","KeyId":"\#(arn)"}"#).decrypt(keyID: nil, ciphertextBlob: [1], context: .empty)
        XCTAssertEqual(decrypted.plaintext.unsafeCopy(), key)
        for (body, why) in [(#"{"KeyId":"\#(arn)","CiphertextBlob":"AQID"}"#, "the answer has no Plaintext"),
                            (#"{"KeyId":"\#(arn)","Plaintext":"\#(b64)","Plaintext":"\#(b64)"}"#, "a second Plaintext field"),
                            (#"{"KeyId":"\#(arn)","Plaintext":"not base64!"}"#, "not base64"),
                            ("null", "the answer has no Plaintext")] {
            XCTAssertThrowsError(try kms(body).decrypt(keyID: nil, ciphertextBlob: [1], context: .empty), body) { e in
                XCTAssertEqual((e as? AWSError)?.kind, .invalidResponse, "\(e)")
                XCTAssertEqual((e as? AWSError)?.code, "InvalidResponse", "\(e)")
                XCTAssertTrue("\(e)".contains(why), "\(e)")
                XCTAssertFalse("\(e)".contains(self.b64), "\(e)")
            }
        }
        // Answers without a key still parse as before (Encrypt; moto's CreateAlias answers `null`).
        let encrypted = try kms(#"{"CiphertextBlob":"AQID","KeyId":"\#(arn)","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#)
            .encrypt(keyID: arn, plaintext: SecureBytes(copying: key), context: .empty)
        XCTAssertEqual(encrypted.ciphertextBlob, [1, 2, 3])
        XCTAssertNoThrow(try kms("null").createAlias(aliasName: "alias/x", targetKeyID: arn))
        XCTAssertNoThrow(try kms(" \n").createAlias(aliasName: "alias/x", targetKeyID: arn))
    }
}
