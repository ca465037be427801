import BackupCrypto
import ByteCoding
import Foundation

/// One request to an AWS service, before signing.
public struct AWSRequest: Sendable {
    public var method: String
    /// The wire path after the endpoint's own path, starting with `/`, already percent-encoded
    /// (`AWSURIEncoding.encodePath`; an S3 key is encoded exactly once).
    public var path: String
    /// Query items in order; a nil value is a bare name (`uploads`). Encoded by the client.
    public var query: [(String, String?)]
    public var headers: HTTPHeaders
    public var body: Data
    /// Hex SHA-256 of `body` when the caller already has it (an S3 part), or `UNSIGNED-PAYLOAD`;
    /// nil: computed.
    public var payloadHash: String?
    /// For messages: the operation ("PutObject", "GenerateDataKey") and what it is about.
    public var operation: String
    public var resource: String?
    /// Seconds without progress before an attempt fails.
    public var timeout: TimeInterval
    /// Treat a 2xx whose body is an `<Error>` document as that error (S3 Complete/Copy).
    public var errorInSuccessBody: Bool
    /// False for a request that must not run twice (KMS CreateKey would make a second key,
    /// CreateAlias would fail on the alias its first attempt made): after a transport failure or
    /// a 5xx, where the service may have applied it, it is not retried; throttling and clock
    /// skew (refused before anything happened) still are.
    public var idempotent: Bool = true
    /// Where a 2xx body goes as it arrives when the transport streams (`HTTPRequest.responseSink`).
    public var responseSink: HTTPBodySink?
    /// The largest 2xx body expected when it is not streamed (`HTTPRequest.maximumResponseBytes`).
    public var maximumResponseBytes: Int?

    public init(method: String, path: String = "/", query: [(String, String?)] = [], headers: HTTPHeaders = HTTPHeaders(),
                body: Data = Data(), payloadHash: String? = nil, operation: String, resource: String? = nil,
                timeout: TimeInterval = 60, errorInSuccessBody: Bool = false) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.payloadHash = payloadHash
        self.operation = operation
        self.resource = resource
        self.timeout = timeout
        self.errorInSuccessBody = errorInSuccessBody
    }
}

/// A signing, retrying client for one service at one endpoint and region. Every attempt is
/// signed afresh with the clock corrected by the last known skew; retryable failures
/// (`AWSError.isRetryable`) are retried under the `RetryPolicy` with full-jitter backoff; a
/// clock-skew error (`RequestTimeTooSkewed`, KMS "Signature expired") sets the skew from the
/// answer's `Date` header and retries at once. Any non-2xx answer becomes an `AWSError` (kind
/// `.service`) with the service's code and message. Thread-safe: share one per endpoint.
public final class AWSClient: @unchecked Sendable {
    public let service: String
    public let region: String
    public let endpoint: URL
    public let credentials: AWSCredentials
    public let signer: SigV4Signer
    public let transport: HTTPTransport
    public let retry: RetryPolicy
    public let clock: AWSClock
    public let sleeper: AWSSleeper

    private let lock = NSLock()
    private var _skew: TimeInterval = 0

    /// `service` is the signing name (`s3`, `kms`); `signingOptions` `.s3` for S3, `.standard` otherwise.
    public init(service: String, region: String, endpoint: URL, credentials: AWSCredentials,
                signingOptions: SigV4Signer.Options = .standard, transport: HTTPTransport = DefaultHTTPTransport.shared,
                retry: RetryPolicy = .default, clock: AWSClock = SystemClock(), sleeper: AWSSleeper = ThreadSleeper()) {
        self.service = service
        self.region = region
        self.endpoint = endpoint
        self.credentials = credentials
        self.signer = SigV4Signer(service: service, region: region, options: signingOptions)
        self.transport = transport
        self.retry = retry
        self.clock = clock
        self.sleeper = sleeper
    }

    /// Server time minus local time, as last learnt from a skew error (0 until then).
    public var clockSkew: TimeInterval {
        lock.lock(); defer { lock.unlock() }
        return _skew
    }

    /// The URL a request goes to: endpoint (with its own base path) + path + encoded query.
    public func url(for request: AWSRequest) throws -> URL {
        var base = endpoint.absoluteString
        if base.hasSuffix("/") { base.removeLast() }
        var s = base + (request.path.hasPrefix("/") ? request.path : "/" + request.path)
        if !request.query.isEmpty { s += "?" + AWSURIEncoding.query(request.query) }
        guard let url = URL(string: s) else {
            throw AWSError(kind: .configuration, service: service, operation: request.operation, code: "InvalidURL",
                           message: "cannot form a URL from \(base) and path \(request.path)", resource: request.resource)
        }
        return url
    }

    /// Sends `request`, retrying as described above; returns the 2xx answer (with the number of
    /// attempts) or throws the last `AWSError`.
    public func send(_ request: AWSRequest) throws -> HTTPResponse {
        let url = try url(for: request)
        let payloadHash = request.payloadHash ?? Hex.encode(Self.sha256(request.body))
        var attempt = 0
        while true {
            attempt += 1
            var http = HTTPRequest(method: request.method, url: url, headers: request.headers, body: request.body, timeout: request.timeout,
                                   responseSink: request.responseSink, idempotent: request.idempotent)
            http.maximumResponseBytes = request.maximumResponseBytes
            let skew = clockSkew
            signer.sign(&http, credentials: credentials, date: clock.now().addingTimeInterval(skew), payloadHash: payloadHash)
            let error: AWSError
            do {
                var response = try transport.send(http)
                response.attempts = attempt
                if (200..<300).contains(response.status) {
                    if request.errorInSuccessBody, let e = AWSErrorParser.errorInSuccessBody(response.body) {
                        error = AWSError(kind: .service, service: service, operation: request.operation, status: response.status,
                                         code: e.code, message: e.message, requestID: e.requestID, resource: request.resource, attempts: attempt)
                    } else {
                        return response
                    }
                } else {
                    let p = AWSErrorParser.parse(status: response.status, headers: response.headers, body: response.body)
                    error = AWSError(kind: .service, service: service, operation: request.operation, status: response.status,
                                     code: p.code, message: p.message, requestID: p.requestID, resource: request.resource, attempts: attempt)
                    if error.isClockSkew, let serverDate = Self.httpDate(response.headers["date"]) {
                        let newSkew = serverDate.timeIntervalSince(clock.now())
                        lock.lock(); _skew = newSkew; lock.unlock()
                        if attempt < retry.maximumAttempts { continue }
                    }
                }
            } catch let e as AWSError {
                error = AWSError(kind: e.kind, service: service, operation: request.operation, status: e.status, code: e.code,
                                 message: e.message, requestID: e.requestID, resource: request.resource, attempts: attempt)
            }
            let mayHaveBeenApplied = error.category == .transport || error.category == .serverError
            guard error.isRetryable, attempt < retry.maximumAttempts, request.idempotent || !mayHaveBeenApplied else { throw error }
            sleeper.sleep(seconds: retry.delay(afterAttempt: attempt))
        }
    }

    /// SHA-256 of a body, hashed where it lies: a KMS Encrypt body holds a data key, and a copy
    /// (`Array(body)`) would be freed unwiped.
    static func sha256(_ body: Data) -> [UInt8] {
        let h = SHA256Hasher()
        body.withUnsafeBytes { h.update($0) }
        return h.finalize()
    }

    /// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form of HTTP's `Date`.
    public static func httpDate(_ s: String?) -> Date? {
        guard let s else { return nil }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return f.date(from: s)
    }
}
