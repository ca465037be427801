import AWSCore
import AWSKMS
import Envelope
import Foundation
import XCTest

/// Every request times out after it was sent: the service may have applied it.
final class LostAnswerTransport: HTTPTransport, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var targets: [String] = []
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        lock.lock(); targets.append(request.headers["x-amz-target"] ?? "?"); lock.unlock()
        throw AWSError(kind: .transport, service: "http", operation: request.method, code: "Timeout", message: "the answer was lost (test)")
    }
}

final class KMSNonIdempotentRetryTests: XCTestCase {
    func client(_ t: HTTPTransport) -> KMSClient {
        KMSClient(client: AWSClient(service: "kms", region: "us-east-1", endpoint: URL(string: "http://127.0.0.1:9")!,
                                    credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: AWSSecretKey("secret")),
                                    transport: t, retry: RetryPolicy(maximumAttempts: 4, random: { 0 }), sleeper: NoSleep()))
    }

    /// CreateKey and CreateAlias are not run again after an answer was lost (a second key, or an
    /// AlreadyExists failure for an alias the first attempt made); the data-key operations still are.
    func testCreateKeyAndCreateAliasAreNotRetriedAfterALostAnswer() throws {
        let t = LostAnswerTransport()
        let kms = client(t)
        XCTAssertThrowsError(try kms.createKey(description: "x")) { XCTAssertEqual(($0 as? AWSError)?.code, "Timeout") }
        XCTAssertEqual(t.targets, ["TrentService.CreateKey"])
        XCTAssertThrowsError(try kms.createAlias(aliasName: "alias/a", targetKeyID: "k")) { XCTAssertEqual(($0 as? AWSError)?.code, "Timeout") }
        XCTAssertEqual(t.targets.filter { $0 == "TrentService.CreateAlias" }.count, 1)
        XCTAssertThrowsError(try kms.generateDataKey(keyID: "arn:aws:kms:us-east-1:123456789012:key/k", numberOfBytes: 32, context: .empty))
        XCTAssertEqual(t.targets.filter { $0 == "TrentService.GenerateDataKey" }.count, 4)
    }
}

final class KMSEndpointSecurityReviewTests: XCTestCase {
    /// KMS answers carry plaintext data keys: a plain-HTTP endpoint off the machine is refused
    /// before any request; https anywhere and http on loopback (moto) are accepted.
    func testPlainHTTPKMSEndpointOffLoopbackIsRefused() throws {
        let creds = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: AWSSecretKey("secret"))
        func make(_ url: String) throws -> KMSClient {
            try KMSClient.make(region: "us-east-1", credentials: creds,
                               environment: AWSEnvironment(variables: ["AWS_ENDPOINT_URL_KMS": url], home: "/nonexistent-home"))
        }
        for url in ["http://kms.internal.example:8080", "http://10.0.0.5", "http://127.0.0.1.example.com"] {
            XCTAssertThrowsError(try make(url), url) { e in
                XCTAssertEqual((e as? AWSError)?.code, "InsecureEndpoint")
                XCTAssertEqual((e as? AWSError)?.category, .configuration)
            }
        }
        for url in ["https://kms.internal.example:8443", "http://127.0.0.1:4566", "http://localhost:4566", "http://[::1]:4566"] {
            XCTAssertNoThrow(try make(url), url)
        }
    }
}
