// The small request interface the S3 store is written against (spec/FORMAT.md section 5.11).
// One implementation signs with AWSCore's SigV4 signer and sends through AWSCore's HTTP
// transport (`AWSCoreS3Transport`); tests may put a fault-injecting transport in between.
import AWSCore
import Foundation

/// Where one replica's requests go: a custom endpoint (MinIO, Ceph RGW, R2, moto: path-style
/// addressing) or AWS itself (`endpoint` nil: virtual-hosted `https://<bucket>.s3.<region>.amazonaws.com`,
/// path-style `https://s3.<region>.amazonaws.com/<bucket>` for a bucket name with a dot).
public struct S3Endpoint: Hashable, Sendable, Codable {
    /// `http(s)://host[:port]`, no path; nil for AWS.
    public let url: String?
    public let region: String

    public init(url: String?, region: String) {
        self.url = url.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.region = region
    }

    /// Path-style for every custom endpoint (they often lack wildcard DNS and certificates), and
    /// on AWS for a bucket name with a dot: `a.b.s3.<region>.amazonaws.com` is two labels deep,
    /// which the wildcard certificate `*.s3.<region>.amazonaws.com` does not cover.
    public func pathStyle(bucket: String) -> Bool { url != nil || bucket.contains(".") }

    /// Where requests about `bucket` go: the custom endpoint, else the bucket's AWS host (or the
    /// regional host itself when the bucket is addressed path-style).
    public func baseURL(bucket: String) -> String {
        if let url { return url }
        return pathStyle(bucket: bucket) ? "https://s3.\(region).amazonaws.com" : "https://\(bucket).s3.\(region).amazonaws.com"
    }

    /// The base URL and the path of `bucket`/`key` (key already percent-encoded per segment).
    public func url(bucket: String, encodedKey: String) -> String {
        if pathStyle(bucket: bucket) {
            return baseURL(bucket: bucket) + "/" + bucket + (encodedKey.isEmpty ? "/" : "/" + encodedKey)
        }
        return baseURL(bucket: bucket) + "/" + encodedKey
    }
}

/// One S3 request: the method, the bucket and the full key inside it ("" for the bucket itself),
/// query parameters (a valueless one such as `uploads` has value ""), headers to send and sign,
/// and the body (bounded: at most one part). The body is kept as `Data`, the type the HTTP
/// transport sends, so a multi-MiB part is not copied again on its way down.
public struct S3Request: Sendable {
    public var method: String
    public var bucket: String
    public var key: String
    public var query: [(String, String)]
    public var headers: [(String, String)]
    public var payload: Data
    /// Where a 2xx answer's body goes as it arrives, when the transport streams (a transport
    /// that does not returns it in `S3Response.payload`, which the caller must then deliver).
    public var responseSink: HTTPBodySink?
    /// The largest 2xx body the caller expects when it is not streamed (a record, a marker, the
    /// catalog, a listing page, a ranged window): a transport that enforces it refuses a larger
    /// one before holding it (`HTTPRequest.maximumResponseBytes`). Nil: no bound of the caller's.
    public var maximumResponseBytes: Int?

    /// The body as bytes (a copy; large bodies go through `payload`).
    public var body: [UInt8] {
        get { [UInt8](payload) }
        set { payload = Data(newValue) }
    }

    public init(method: String, bucket: String, key: String = "", query: [(String, String)] = [],
                headers: [(String, String)] = [], body: [UInt8] = []) {
        self.init(method: method, bucket: bucket, key: key, query: query, headers: headers, payload: Data(body))
    }

    public init(method: String, bucket: String, key: String = "", query: [(String, String)] = [],
                headers: [(String, String)] = [], payload: Data) {
        self.method = method
        self.bucket = bucket
        self.key = key
        self.query = query
        self.headers = headers
        self.payload = payload
    }

    /// A short description for error messages: `PUT bucket/key?uploads`.
    public var summary: String {
        let q = query.isEmpty ? "" : "?" + query.map { $0.1.isEmpty ? $0.0 : "\($0.0)=\($0.1)" }.joined(separator: "&")
        return "\(method) \(bucket)/\(key)\(q)"
    }
}

/// The service's answer: status, headers (names lower-cased) and body, whatever the status.
public struct S3Response: Sendable {
    public let status: Int
    public let headers: [String: String]
    /// The body as the HTTP transport delivered it (ranged reads slice it without copying).
    public let payload: Data
    /// The body went to the request's `responseSink` (`payload` is empty).
    public var bodyStreamed = false

    /// The body as bytes (a copy; fine for XML answers, large bodies go through `payload`).
    public var body: [UInt8] { [UInt8](payload) }

    public init(status: Int, headers: [String: String], body: [UInt8]) {
        self.init(status: status, headers: headers, payload: Data(body))
    }

    public init(status: Int, headers: [String: String], payload: Data) {
        self.status = status
        var lower: [String: String] = [:]
        for (k, v) in headers { lower[k.lowercased()] = v }
        self.headers = lower
        self.payload = payload
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
    public var isSuccess: Bool { (200..<300).contains(status) }
}

/// Sends S3 requests: signs each attempt afresh, retries the retryable failures (5xx, SlowDown,
/// RequestTimeout, connection errors) with backoff and jitter, and returns the final response
/// whatever its status. Throws only when no response came (`S3TransportError`).
public protocol S3Transport: Sendable {
    func send(_ request: S3Request, endpoint: S3Endpoint) throws -> S3Response
    /// Whether a response body to `endpoint` costs its size once in memory (it arrives into one
    /// buffer, as with `SocketHTTPTransport`); the store then reads in larger windows.
    func holdsBodiesOnce(_ endpoint: S3Endpoint) -> Bool
}

extension S3Transport {
    public func holdsBodiesOnce(_ endpoint: S3Endpoint) -> Bool { false }
}

/// No answer from the service (connection refused, timeout, retries exhausted without a response).
public struct S3TransportError: Error, CustomStringConvertible, Sendable {
    public let request: String
    public let reason: String
    public init(request: String, reason: String) { self.request = request; self.reason = reason }
    public var description: String { "\(request): no answer: \(reason)" }
}

/// An S3 error response: status, the service's code and message (from the XML body; a HEAD or
/// an empty body has only the status).
public struct S3ServiceError: Error, CustomStringConvertible, Sendable {
    public let status: Int
    public let code: String
    public let message: String
    public let request: String
    public let requestId: String?

    public init(status: Int, code: String, message: String, request: String, requestId: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.request = request
        self.requestId = requestId
    }

    /// Parses an `<Error>` body; falls back to the status for an empty or non-XML body.
    public init(_ response: S3Response, request: String) {
        let xml = XMLScan(response.body)
        let code = xml.first("Code") ?? Self.defaultCode(response.status)
        self.init(status: response.status, code: code, message: xml.first("Message") ?? "HTTP \(response.status)",
                  request: request, requestId: xml.first("RequestId") ?? response.header("x-amz-request-id"))
    }

    static func defaultCode(_ status: Int) -> String {
        switch status {
        case 403: return "AccessDenied"
        case 404: return "NotFound"
        case 412: return "PreconditionFailed"
        case 409: return "Conflict"
        case 416: return "InvalidRange"
        case 503: return "ServiceUnavailable"
        default: return "HTTP\(status)"
        }
    }

    public var description: String {
        "\(request): S3 \(code) (HTTP \(status)): \(message)\(requestId.map { " [request id \($0)]" } ?? "")"
    }

    public var isNoSuchBucket: Bool { code == "NoSuchBucket" }
    public var isNotFound: Bool { status == 404 && !isNoSuchBucket }
    public var isPreconditionFailed: Bool { status == 412 }
    /// Credentials or permissions: no retry helps.
    public var isAuthFailure: Bool {
        status == 403 && code != "RequestTimeTooSkewed"
            || ["InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken", "AccessDenied",
                "AuthorizationHeaderMalformed", "InvalidToken"].contains(code)
    }
}
