import AWSCore
import AWSKMS
import BackupCrypto
import Envelope
import Foundation
import XCTest

/// Answers the first `failures` requests itself with a KMS JSON error, then passes every request
/// on to moto: the retry loop meets a real throttling answer shape and a real server after it.
final class FlakyKMSTransport: HTTPTransport, @unchecked Sendable {
    private let lock = NSLock()
    private var failures: [(Int, String)]
    private(set) var sent = 0
    init(_ failures: [(Int, String)]) { self.failures = failures }
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        lock.lock()
        sent += 1
        let next = failures.isEmpty ? nil : failures.removeFirst()
        lock.unlock()
        if let (status, type) = next {
            return HTTPResponse(status: status, headers: HTTPHeaders([("Content-Type", "application/x-amz-json-1.1")]),
                                body: Data(#"{"__type":"\#(type)","message":"injected by the test"}"#.utf8))
        }
        return try SocketHTTPTransport.shared.send(request)
    }
}

final class NoSleep: AWSSleeper, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var sleeps: [Double] = []
    func sleep(seconds: Double) { lock.lock(); sleeps.append(seconds); lock.unlock() }
}

final class KMSRetryAndSessionTests: XCTestCase {
    func testThrottlingAndInternalErrorsAreRetriedThenSucceed() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let flaky = FlakyKMSTransport([(400, "ThrottlingException"), (500, "KMSInternalException"), (400, "com.amazonaws.kms#DependencyTimeoutException")])
        let sleeper = NoSleep()
        let client = KMSClient(client: AWSClient(service: "kms", region: moto.region, endpoint: moto.endpoint, credentials: moto.credentials,
                                                 transport: flaky, retry: RetryPolicy(maximumAttempts: 4, random: { 1 }), sleeper: sleeper))
        let ring = AWSKMSKeyring(key: try KMSKeyIdentifier(arn), client: client)
        let message = try EnvelopeEncryptor.encrypt(Array("retried".utf8), keyrings: [ring])
        XCTAssertEqual(flaky.sent, 4)
        XCTAssertEqual(sleeper.sleeps, [0.1, 0.2, 0.4])
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [try moto.keyring(arn)]).plaintext, Array("retried".utf8))
    }

    func testNonRetryableKMSErrorsAreNotRetried() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let flaky = FlakyKMSTransport([(400, "AccessDeniedException")])
        let sleeper = NoSleep()
        let client = KMSClient(client: AWSClient(service: "kms", region: moto.region, endpoint: moto.endpoint, credentials: moto.credentials,
                                                 transport: flaky, retry: RetryPolicy(maximumAttempts: 4), sleeper: sleeper))
        XCTAssertThrowsError(try client.generateDataKey(keyID: arn, numberOfBytes: 32, context: .empty)) { e in
            XCTAssertEqual((e as? AWSError)?.code, "AccessDeniedException")
            XCTAssertEqual((e as? AWSError)?.category, .accessDenied)
        }
        XCTAssertEqual(flaky.sent, 1)
        XCTAssertEqual(sleeper.sleeps, [])
    }

    /// Temporary credentials (STS AssumeRole) sign with `X-Amz-Security-Token`; moto checks the
    /// token, so a tampered one is refused.
    func testSessionCredentialsFromAssumeRole() throws {
        let moto = try Moto.require()
        let arn = try moto.createKey()
        let iam = AWSClient(service: "iam", region: "us-east-1", endpoint: moto.endpoint, credentials: moto.credentials, retry: .none)
        let role = "hsmb-role-\(UUID().uuidString.prefix(8))"
        let trust = #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#
        let created = try query(iam, ["Action": "CreateRole", "Version": "2010-05-08", "RoleName": role, "AssumeRolePolicyDocument": trust])
        let roleARN = try XCTUnwrap(created.first("Arn")?.text)
        _ = try query(iam, ["Action": "PutRolePolicy", "Version": "2010-05-08", "RoleName": role, "PolicyName": "kms",
                            "PolicyDocument": #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#])
        let sts = AWSClient(service: "sts", region: "us-east-1", endpoint: moto.endpoint, credentials: moto.credentials, retry: .none)
        let assumed = try query(sts, ["Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": roleARN, "RoleSessionName": "hsmb"])
        let c = try XCTUnwrap(assumed.first("Credentials"))
        let session = AWSCredentials(accessKeyID: try XCTUnwrap(c.value("AccessKeyId")), secretAccessKey: AWSSecretKey(try XCTUnwrap(c.value("SecretAccessKey"))),
                                     sessionToken: try XCTUnwrap(c.value("SessionToken")))
        XCTAssertTrue(session.accessKeyID.hasPrefix("ASIA"))
        let rec = RecordingTransport()
        let ring = AWSKMSKeyring(key: try KMSKeyIdentifier(arn), client: moto.kms(transport: rec, credentials: session))
        let message = try EnvelopeEncryptor.encrypt(Array("session".utf8), keyrings: [ring])
        XCTAssertEqual(rec.requests[0].headers["x-amz-security-token"], session.sessionToken)
        XCTAssertTrue(rec.requests[0].headers["authorization"]!.contains("x-amz-security-token"))
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(message, keyrings: [ring]).plaintext, Array("session".utf8))
        // The same keys with an altered token are refused by the server.
        let tampered = AWSCredentials(accessKeyID: session.accessKeyID, secretAccessKey: session.secretAccessKey, sessionToken: session.sessionToken! + "x")
        XCTAssertThrowsError(try moto.kms(credentials: tampered).generateDataKey(keyID: arn, numberOfBytes: 32, context: .empty)) { e in
            XCTAssertEqual((e as? AWSError)?.category, .authentication, "\(e)")
        }
    }

    /// A query-protocol call (IAM, STS): form-encoded POST, XML answer.
    func query(_ client: AWSClient, _ params: [String: String]) throws -> AWSXMLNode {
        let form = params.sorted { $0.key < $1.key }
            .map { AWSURIEncoding.encodeQueryComponent($0.key) + "=" + AWSURIEncoding.encodeQueryComponent($0.value) }.joined(separator: "&")
        var h = HTTPHeaders()
        h.add("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
        let r = try client.send(AWSRequest(method: "POST", path: "/", headers: h, body: Data(form.utf8), operation: params["Action"]!))
        return try AWSXMLNode.parse(r.body)
    }
}
