import AWSCore
import AWSKMS
import BackupCrypto
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

/// scripts/tls/connectproxy.py: an HTTP proxy (CONNECT and absolute form) that counts what it saw.
final class RecordingProxy {
    let process = Process()
    let port: UInt16

    init() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/tls/connectproxy.py").path
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        var line = [UInt8]()
        while let c = out.fileHandleForReading.readData(ofLength: 1).first, c != 0x0a { line.append(c) }
        guard let p = UInt16(String(decoding: line, as: UTF8.self)) else {
            process.terminate()
            throw MissingExternal("scripts/tls/connectproxy.py did not start (python3 needed)")
        }
        port = p
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
    }

    /// The CONNECT targets and the absolute-form request lines it was sent.
    func seen() throws -> [String] {
        let t = SocketHTTPTransport(maximumIdleConnectionsPerHost: 0, proxies: .direct)
        let r = try t.send(HTTPRequest(method: "GET", url: URL(string: "http://127.0.0.1:\(port)/__proxy/stats")!))
        let stats = try XCTUnwrap(try JSONSerialization.jsonObject(with: r.body) as? [String: Any])
        return (stats["connects"] as? [String] ?? []) + (stats["forwards"] as? [String] ?? [])
    }
}

final class KMSLoopbackProxyTests: XCTestCase {
    /// GenerateDataKey and Decrypt answer with the data key in plaintext: a plain-HTTP KMS
    /// endpoint (allowed only on loopback, as moto or LocalStack at http://localhost:4566) must
    /// never be sent through http_proxy, whatever no_proxy says.
    func testALoopbackKMSEndpointIsNeverSentThroughAProxy() throws {
        let moto = try Moto.require()
        let proxy = try RecordingProxy()
        let port = try XCTUnwrap(moto.endpoint.port)
        let via = "http://127.0.0.1:\(proxy.port)"
        let transport = SocketHTTPTransport(proxies: ProxySettings(variables: ["http_proxy": via, "https_proxy": via, "no_proxy": ""]))
        let arn = try moto.createKey("loopback and proxies")
        let ctx = try EncryptionContext(["purpose": "no-proxy"])
        for host in ["localhost", "127.0.0.1"] {
            let kms = try KMSClient.make(region: moto.region, credentials: moto.credentials,
                                         environment: AWSEnvironment(variables: ["AWS_ENDPOINT_URL_KMS": "http://\(host):\(port)"], home: "/nonexistent"),
                                         transport: transport, retry: RetryPolicy(maximumAttempts: 1))
            let key = try kms.generateDataKey(keyID: arn, numberOfBytes: 32, context: ctx)
            XCTAssertEqual(key.plaintext.count, 32)
            let back = try kms.decrypt(keyID: arn, ciphertextBlob: key.ciphertextBlob, context: ctx)
            XCTAssertTrue(back.plaintext.constantTimeEquals(key.plaintext), host)
        }
        XCTAssertEqual(try proxy.seen(), [], "the proxy saw a KMS request")
    }
}
