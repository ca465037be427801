import AWSCore
import BackupCrypto
import Foundation
import XCTest

/// A transport that answers from a script and records what it was sent (a real
/// `HTTPTransport`, in memory: the retry loop, signing and error parsing run unchanged).
final class ScriptedTransport: HTTPTransport, @unchecked Sendable {
    enum Step { case respond(Int, [(String, String)], String); case fail(String) }
    private let lock = NSLock()
    private var steps: [Step]
    private(set) var sent: [HTTPRequest] = []
    init(_ steps: [Step]) { self.steps = steps }
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        lock.lock(); defer { lock.unlock() }
        sent.append(request)
        guard !steps.isEmpty else { XCTFail("unexpected request \(request.method) \(request.url)"); throw AWSError(kind: .transport, service: "test", operation: "x", code: "NoScript", message: "script ran out") }
        switch steps.removeFirst() {
        case .respond(let status, let headers, let body):
            return HTTPResponse(status: status, headers: HTTPHeaders(headers), body: Data(body.utf8))
        case .fail(let code):
            throw AWSError(kind: .transport, service: "http", operation: request.method, code: code, message: "connection reset by peer")
        }
    }
}

/// A clock that moves only when told to, and a sleeper that records and advances it.
final class ManualClock: AWSClock, AWSSleeper, @unchecked Sendable {
    private let lock = NSLock()
    private var t: Date
    private(set) var sleeps: [Double] = []
    init(_ t: Date) { self.t = t }
    func now() -> Date { lock.lock(); defer { lock.unlock() }; return t }
    func sleep(seconds: Double) { lock.lock(); sleeps.append(seconds); t = t.addingTimeInterval(seconds); lock.unlock() }
}

final class ClientTests: XCTestCase {
    let creds = AWSCredentials(accessKeyID: "AKIDTEST", secretAccessKey: AWSSecretKey("test-secret"))
    let start = Date(timeIntervalSince1970: 1_700_000_000)

    func client(_ t: ScriptedTransport, _ clock: ManualClock, attempts: Int = 8, base: Double = 0.1, options: SigV4Signer.Options = .s3) -> AWSClient {
        AWSClient(service: "s3", region: "us-east-1", endpoint: URL(string: "http://127.0.0.1:9000")!, credentials: creds,
                  signingOptions: options, transport: t,
                  retry: RetryPolicy(maximumAttempts: attempts, baseDelay: base, maximumDelay: 20, random: { 0.5 }),
                  clock: clock, sleeper: clock)
    }

    /// The caller's bound on a 2xx body (and its idempotency) reach the transport on every attempt.
    func testTheResponseBoundAndIdempotencyReachTheTransport() throws {
        let t = ScriptedTransport([.fail("ConnectionReset"), .respond(200, [], "ok")])
        var req = AWSRequest(method: "GET", path: "/b/k", operation: "GetObject")
        req.maximumResponseBytes = 4096
        XCTAssertEqual(try client(t, ManualClock(start)).send(req).status, 200)
        XCTAssertEqual(t.sent.map(\.maximumResponseBytes), [4096, 4096])
        XCTAssertEqual(t.sent.map(\.idempotent), [true, true])
    }

    func testRetriesThrottlingWithBackoffAndSignsEachAttemptAfresh() throws {
        let slow = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        let t = ScriptedTransport([.respond(503, [], slow), .respond(500, [], "<Error><Code>InternalError</Code><Message>x</Message></Error>"),
                                   .fail("ConnectionReset"), .respond(200, [("ETag", "\"abc\"")], "")])
        let clock = ManualClock(start)
        let r = try client(t, clock, base: 2).send(AWSRequest(method: "PUT", path: "/b/k%20x", body: Data("hello".utf8), operation: "PutObject"))
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.attempts, 4)
        XCTAssertEqual(clock.sleeps, [1, 2, 4]) // 0.5 × min(20, 2·2^(n-1))
        XCTAssertEqual(t.sent.count, 4)
        let dates = t.sent.map { $0.headers["x-amz-date"]! }
        XCTAssertEqual(Set(dates).count, 4, "each attempt carries its own date")
        for (i, req) in t.sent.enumerated() {
            XCTAssertEqual(req.headers.values("authorization").count, 1)
            XCTAssertEqual(req.url.absoluteString, "http://127.0.0.1:9000/b/k%20x")
            // The signature verifies for that attempt's date.
            var again = HTTPRequest(method: req.method, url: req.url, headers: HTTPHeaders(), body: req.body)
            let d = clock.now().addingTimeInterval(-[7, 6, 4, 0][i])
            let sig = SigV4Signer(service: "s3", region: "us-east-1", options: .s3).sign(&again, credentials: creds, date: d)
            XCTAssertEqual(req.headers["authorization"], sig.authorization, "attempt \(i + 1)")
        }
    }

    func testNonRetryableErrorsAreNotRetried() {
        for (status, body, code, category) in [
            (412, "<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message><Condition>If-None-Match</Condition></Error>", "PreconditionFailed", AWSError.Category.preconditionFailed),
            (403, "<Error><Code>SignatureDoesNotMatch</Code><Message>bad</Message></Error>", "SignatureDoesNotMatch", .authentication),
            (404, "", "NotFound", .notFound),
            (400, "{\"__type\":\"com.amazonaws.kms#NotFoundException:http://internal\",\"message\":\"Key 'x' does not exist\"}", "NotFoundException", .notFound),
        ] {
            let t = ScriptedTransport([.respond(status, [("x-amz-request-id", "RID")], body)])
            let clock = ManualClock(start)
            XCTAssertThrowsError(try client(t, clock).send(AWSRequest(method: "GET", path: "/b/k", operation: "GetObject", resource: "b/k"))) { e in
                let e = e as! AWSError
                XCTAssertEqual(e.code, code)
                XCTAssertEqual(e.status, status)
                XCTAssertEqual(e.category, category)
                XCTAssertEqual(e.attempts, 1)
                XCTAssertFalse(e.isRetryable)
                XCTAssertTrue(e.description.contains("s3 GetObject (b/k): \(code) (HTTP \(status))"), e.description)
            }
            XCTAssertEqual(t.sent.count, 1)
            XCTAssertEqual(clock.sleeps, [])
        }
    }

    func testRetriesStopAtTheLimitAndReportTheAttempts() {
        let t = ScriptedTransport(Array(repeating: .respond(503, [], "<Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>"), count: 3))
        let clock = ManualClock(start)
        XCTAssertThrowsError(try client(t, clock, attempts: 3).send(AWSRequest(method: "GET", operation: "ListObjectsV2"))) { e in
            let e = e as! AWSError
            XCTAssertEqual(e.code, "ServiceUnavailable")
            XCTAssertEqual(e.attempts, 3)
            XCTAssertTrue(e.description.hasSuffix("after 3 attempts"), e.description)
        }
        XCTAssertEqual(t.sent.count, 3)
        XCTAssertEqual(clock.sleeps.count, 2)
    }

    func testClockSkewIsCorrectedFromTheDateHeader() throws {
        // The local clock is 20 minutes behind the server's.
        let server = start.addingTimeInterval(1200)
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX"); f.timeZone = TimeZone(identifier: "GMT"); f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let t = ScriptedTransport([
            .respond(403, [("Date", f.string(from: server))], "<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message></Error>"),
            .respond(200, [], ""),
        ])
        let clock = ManualClock(start)
        let c = client(t, clock)
        _ = try c.send(AWSRequest(method: "HEAD", path: "/b/k", operation: "HeadObject"))
        XCTAssertEqual(clock.sleeps, [], "a skew is retried at once")
        XCTAssertEqual(c.clockSkew, 1200, accuracy: 1)
        XCTAssertEqual(t.sent[0].headers["x-amz-date"], SigV4Signer.amzDate(start))
        XCTAssertEqual(t.sent[1].headers["x-amz-date"], SigV4Signer.amzDate(server))
    }

    func testKMSSignatureExpiredIsClockSkew() {
        let e = AWSError(kind: .service, service: "kms", operation: "Decrypt", status: 400, code: "InvalidSignatureException",
                         message: "Signature expired: 20261204T120000Z is now earlier than 20261204T121000Z (20261204T122500Z - 15 min.)")
        XCTAssertEqual(e.category, .clockSkew)
        XCTAssertTrue(e.isRetryable)
    }

    func testAnErrorInsideA200IsAnError() {
        let t = ScriptedTransport([.respond(200, [], "<?xml version=\"1.0\"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"),
                                   .respond(200, [], "<CompleteMultipartUploadResult><ETag>&quot;e-2&quot;</ETag></CompleteMultipartUploadResult>")])
        let clock = ManualClock(start)
        let r = try? client(t, clock).send(AWSRequest(method: "POST", path: "/b/k", query: [("uploadId", "U")], operation: "CompleteMultipartUpload", errorInSuccessBody: true))
        XCTAssertEqual(r?.attempts, 2)
        XCTAssertEqual(try AWSXMLNode.parse(r!.body).value("ETag"), "\"e-2\"")
        XCTAssertEqual(t.sent[0].url.absoluteString, "http://127.0.0.1:9000/b/k?uploadId=U")
    }

    func testFullJitterStaysUnderTheCeiling() {
        let p = RetryPolicy(maximumAttempts: 8, baseDelay: 0.1, maximumDelay: 20, random: { 0.999 })
        XCTAssertEqual((1...10).map { p.ceiling(afterAttempt: $0) }, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 20, 20])
        for n in 1...10 { XCTAssertLessThan(p.delay(afterAttempt: n), p.ceiling(afterAttempt: n)) }
        XCTAssertEqual(RetryPolicy(random: { 0 }).delay(afterAttempt: 5), 0)
    }

    func testEndpointWithBasePathAndPort() throws {
        let t = ScriptedTransport([.respond(204, [], "")])
        let c = AWSClient(service: "s3", region: "us-east-1", endpoint: URL(string: "https://gw.example.com:8443/storage/")!, credentials: creds,
                          signingOptions: .s3, transport: t, retry: .none, clock: ManualClock(start), sleeper: ManualClock(start))
        _ = try c.send(AWSRequest(method: "DELETE", path: "/b/a%2Bb", operation: "DeleteObject"))
        XCTAssertEqual(t.sent[0].url.absoluteString, "https://gw.example.com:8443/storage/b/a%2Bb")
    }
}

final class ErrorParsingTests: XCTestCase {
    func testKMSJSONError() {
        let p = AWSErrorParser.parse(status: 400, headers: HTTPHeaders([("x-amzn-RequestId", "r1")]),
                                     body: Data(#"{"__type":"AccessDeniedException","Message":"User is not authorized"}"#.utf8))
        XCTAssertEqual(p, .init(code: "AccessDeniedException", message: "User is not authorized", requestID: "r1"))
    }

    func testErrorTypeHeaderOnly() {
        let p = AWSErrorParser.parse(status: 400, headers: HTTPHeaders([("X-Amzn-ErrorType", "ThrottlingException:http://internal.amazon.com/")]), body: Data())
        XCTAssertEqual(p.code, "ThrottlingException")
    }

    func testQueryServiceXMLError() {
        // moto answers a KMS request with bad credentials in the IAM/STS XML form.
        let body = """
        <ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code>\
        <Message>The security token included in the request is invalid.</Message></Error><RequestId>abc</RequestId></ErrorResponse>
        """
        let p = AWSErrorParser.parse(status: 403, headers: HTTPHeaders(), body: Data(body.utf8))
        XCTAssertEqual(p, .init(code: "InvalidClientTokenId", message: "The security token included in the request is invalid.", requestID: "abc"))
        XCTAssertEqual(AWSError(kind: .service, service: "kms", operation: "Encrypt", status: 403, code: p.code, message: p.message).category, .authentication)
    }

    func testS3XMLErrorAndNoBody() {
        let p = AWSErrorParser.parse(status: 404, headers: HTTPHeaders(), body: Data("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>a&amp;b</Key><RequestId>R</RequestId></Error>".utf8))
        XCTAssertEqual(p.code, "NoSuchKey")
        XCTAssertEqual(p.requestID, "R")
        XCTAssertEqual(AWSErrorParser.parse(status: 412, headers: HTTPHeaders(), body: Data()).code, "PreconditionFailed")
        XCTAssertEqual(AWSErrorParser.parse(status: 500, headers: HTTPHeaders(), body: Data("<html>oops</html>".utf8)).code, "InternalError")
    }

    func testXMLReader() throws {
        let doc = """
        <?xml version="1.0" encoding="UTF-8"?>
        <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><IsTruncated>true</IsTruncated>
         <!-- a comment --><Contents><Key>snap/a&lt;&#233;&#x263A;</Key><ETag>&quot;d41d&quot;</ETag><Size>0</Size></Contents>
         <Contents><Key><![CDATA[x&y]]></Key></Contents><CommonPrefixes><Prefix>dir/</Prefix></CommonPrefixes><Empty/></ListBucketResult>
        """
        let root = try AWSXMLNode.parse(Array(doc.utf8))
        XCTAssertEqual(root.name, "ListBucketResult")
        XCTAssertEqual(root.attributes["xmlns"], "http://s3.amazonaws.com/doc/2006-03-01/")
        XCTAssertEqual(root.children("Contents").map { $0.value("Key") }, ["snap/a<é☺", "x&y"])
        XCTAssertEqual(root.children("Contents")[0].value("ETag"), "\"d41d\"")
        XCTAssertEqual(root.first("Prefix")?.text, "dir/")
        XCTAssertEqual(root.value("Empty"), "")
        for bad in ["<a><b></a>", "<a>", "<a></a><b/>", "<!DOCTYPE a><a/>", "<a>&bogus;</a>", "", "text"] {
            XCTAssertThrowsError(try AWSXMLNode.parse(Array(bad.utf8)), bad)
        }
    }
}
