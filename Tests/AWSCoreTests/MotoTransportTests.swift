import AWSCore
import BackupCrypto
import ByteCoding
import Foundation
import XCTest

/// AWSCore end to end against moto with signature checks on (scripts/aws/moto.sh): the socket
/// transport (directly and as the default the clients use) and the S3 rules of the signer (path
/// encoded once, `x-amz-content-sha256`), with the S3 requests a store makes. The same requests
/// over HTTPS are in TLSTransportTests. Skips without moto; fails under HSMBACKUP_REQUIRE_EXTERNAL=1.
struct MissingExternal: Error, CustomStringConvertible { let description: String }

final class MotoTransportTests: XCTestCase {
    struct Server {
        let endpoint: URL
        let credentials: AWSCredentials
    }

    static func server() throws -> Server {
        let env = ProcessInfo.processInfo.environment
        guard let e = env["HSMBACKUP_TEST_AWS_ENDPOINT"], let url = URL(string: e), let akid = env["HSMBACKUP_TEST_AWS_ACCESS_KEY_ID"],
              let secret = env["HSMBACKUP_TEST_AWS_SECRET_ACCESS_KEY"] else {
            let why = "no moto server: run through `make test` or scripts/aws/with-moto.sh"
            if env["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" { throw MissingExternal(description: why + ", and HSMBACKUP_REQUIRE_EXTERNAL=1") }
            throw XCTSkip(why)
        }
        return Server(endpoint: url, credentials: AWSCredentials(accessKeyID: akid, secretAccessKey: AWSSecretKey(secret)))
    }

    static func s3(_ s: Server, credentials: AWSCredentials? = nil, transport: HTTPTransport = DefaultHTTPTransport.shared) -> AWSClient {
        AWSClient(service: "s3", region: "us-east-1", endpoint: s.endpoint, credentials: credentials ?? s.credentials,
                  signingOptions: .s3, transport: transport, retry: RetryPolicy(maximumAttempts: 2))
    }

    func testS3RequestsThroughTheDefaultTransportWithSignatureChecks() throws {
        // What AWSClient, KMSClient and the S3 store use when given nothing else.
        try Self.s3Requests(through: DefaultHTTPTransport.shared, server: try Self.server())
    }

    func testS3RequestsThroughTheSocketTransportWithSignatureChecks() throws {
        try Self.s3Requests(through: SocketHTTPTransport.shared, server: try Self.server())
    }

    /// The S3 requests a store makes, through `transport` to `s` (moto, or a TLS front before it).
    static func s3Requests(through transport: HTTPTransport, server s: Server) throws {
        let c = s3(s, transport: transport)
        let bucket = "awscore-\(UUID().uuidString.prefix(8).lowercased())"
        _ = try c.send(AWSRequest(method: "PUT", path: "/" + bucket, operation: "CreateBucket"))
        // A key with every character class that needs encoding, sent once-encoded and signed as sent.
        let key = "dir/a b+c$~\u{E9}=&(1).txt"
        let path = "/" + bucket + AWSURIEncoding.encodePath("/" + key)
        let body = Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        let digest = SHA256Hasher.hash([UInt8](body))
        var h = HTTPHeaders()
        h.add("If-None-Match", "*")
        h.add("x-amz-checksum-sha256", Data(digest).base64EncodedString())
        let put = try c.send(AWSRequest(method: "PUT", path: path, headers: h, body: body, payloadHash: Hex.encode(digest), operation: "PutObject"))
        XCTAssertEqual(put.status, 200)
        XCTAssertNotNil(put.headers["etag"])
        // Create-only: a second PUT is 412, a semantic answer, not retried.
        XCTAssertThrowsError(try c.send(AWSRequest(method: "PUT", path: path, headers: h, body: body, operation: "PutObject"))) { e in
            let e = e as! AWSError
            XCTAssertEqual(e.status, 412)
            XCTAssertEqual(e.category, .preconditionFailed)
            XCTAssertEqual(e.attempts, 1)
        }
        // Ranged GET comes back verbatim (identity encoding).
        var range = HTTPHeaders()
        range.add("Range", "bytes=1000-1999")
        let part = try c.send(AWSRequest(method: "GET", path: path, headers: range, operation: "GetObject"))
        XCTAssertEqual(part.status, 206)
        XCTAssertEqual(part.body, body.subdata(in: 1000..<2000))
        XCTAssertEqual(part.headers["content-range"], "bytes 1000-1999/\(body.count)")
        // Listing with a query that needs encoding.
        let list = try c.send(AWSRequest(method: "GET", path: "/" + bucket, query: [("list-type", "2"), ("prefix", "dir/a b+")], operation: "ListObjectsV2"))
        let xml = try AWSXMLNode.parse(list.body)
        XCTAssertEqual(xml.children("Contents").map { $0.value("Key") }, [key])
        // HEAD of a missing key: 404 with no body, mapped by status.
        XCTAssertThrowsError(try c.send(AWSRequest(method: "HEAD", path: "/" + bucket + "/missing", operation: "HeadObject"))) { e in
            XCTAssertEqual((e as? AWSError)?.category, .notFound)
        }
        // A POST with an empty body (multipart initiate) and its abort.
        let initiate = try c.send(AWSRequest(method: "POST", path: path, query: [("uploads", nil)], operation: "CreateMultipartUpload"))
        let uploadID = try XCTUnwrap(try AWSXMLNode.parse(initiate.body).value("UploadId"))
        let abort = try c.send(AWSRequest(method: "DELETE", path: path, query: [("uploadId", uploadID)], operation: "AbortMultipartUpload"))
        XCTAssertEqual(abort.status, 204)
        _ = try c.send(AWSRequest(method: "DELETE", path: path, operation: "DeleteObject"))
        _ = try c.send(AWSRequest(method: "DELETE", path: "/" + bucket, operation: "DeleteBucket"))
    }

    func testWrongSecretIsAnAuthenticationError() throws {
        let s = try Self.server()
        let bad = AWSCredentials(accessKeyID: s.credentials.accessKeyID, secretAccessKey: AWSSecretKey("wrong"))
        XCTAssertThrowsError(try Self.s3(s, credentials: bad).send(AWSRequest(method: "GET", path: "/", operation: "ListBuckets"))) { e in
            let e = e as! AWSError
            XCTAssertEqual(e.code, "SignatureDoesNotMatch")
            XCTAssertEqual(e.category, .authentication)
            XCTAssertEqual(e.attempts, 1)
        }
    }

    func testNoListenerIsATransportErrorAfterTheRetries() throws {
        // Port 9 on loopback: nothing listens (connection refused), so no answer at all.
        let c = AWSClient(service: "s3", region: "us-east-1", endpoint: URL(string: "http://127.0.0.1:9")!,
                          credentials: AWSCredentials(accessKeyID: "A", secretAccessKey: AWSSecretKey("s")), signingOptions: .s3,
                          retry: RetryPolicy(maximumAttempts: 2, baseDelay: 0.01))
        XCTAssertThrowsError(try c.send(AWSRequest(method: "GET", path: "/b", operation: "ListObjectsV2"))) { e in
            let e = e as! AWSError
            XCTAssertEqual(e.kind, .transport)
            XCTAssertEqual(e.attempts, 2)
            XCTAssertTrue(e.isRetryable)
        }
    }
}
