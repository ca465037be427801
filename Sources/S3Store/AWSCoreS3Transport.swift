// The S3 store's transport on AWSCore: one signing, retrying `AWSClient` per endpoint (path-style
// for a custom endpoint: `<endpoint>/<bucket>/<key>`; virtual-hosted on AWS:
// `https://<bucket>.s3.<region>.amazonaws.com/<key>`, path-style for a bucket with a dot in its
// name, which the wildcard certificate does not cover: `https://s3.<region>.amazonaws.com/<bucket>/<key>`). AWSCore signs every attempt afresh (SigV4,
// S3 rules), retries throttling and server errors with backoff and full jitter, and corrects the
// clock from a RequestTimeTooSkewed answer's Date header. An error answer comes back here as an
// `S3Response` with a synthesized `<Error>` body, so the store maps statuses and codes in one place.
import AWSCore
import ByteCoding
import Foundation
import ObjectStore

public final class AWSCoreS3Transport: S3Transport, @unchecked Sendable {
    let credentials: AWSCredentials
    let http: HTTPTransport
    let retry: RetryPolicy
    let clock: AWSClock
    let sleeper: AWSSleeper
    private let lock = NSLock()
    private var clients: [String: AWSClient] = [:]

    /// Credentials from the AWS conventions (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    /// AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/credentials).
    public convenience init() throws {
        let creds: AWSCredentials
        do { creds = try AWSCredentialsResolver.resolve() } catch let e as AWSError {
            throw StoreError(.accessDenied, "no AWS credentials for the S3 store: \(e.message)")
        }
        self.init(credentials: creds)
    }

    public init(credentials: AWSCredentials, http: HTTPTransport = DefaultHTTPTransport.shared, retry: RetryPolicy = .default,
                clock: AWSClock = AWSCore.SystemClock(), sleeper: AWSSleeper = ThreadSleeper()) {
        self.credentials = credentials
        self.http = http
        self.retry = retry
        self.clock = clock
        self.sleeper = sleeper
    }

    func client(_ endpoint: S3Endpoint, bucket: String) throws -> AWSClient {
        let base = endpoint.baseURL(bucket: bucket)
        let id = base + "|" + endpoint.region
        lock.lock()
        defer { lock.unlock() }
        if let c = clients[id] { return c }
        guard let url = URL(string: base) else { throw StoreError(.invalidArgument, "\(base) is not a URL") }
        let c = AWSClient(service: "s3", region: endpoint.region, endpoint: url, credentials: credentials, signingOptions: .s3,
                          transport: http, retry: retry, clock: clock, sleeper: sleeper)
        clients[id] = c
        return c
    }

    /// Server time minus local time as learnt by the client of `endpoint` (tests).
    public func clockSkew(_ endpoint: S3Endpoint, bucket: String) throws -> TimeInterval { try client(endpoint, bucket: bucket).clockSkew }

    public func holdsBodiesOnce(_ endpoint: S3Endpoint) -> Bool {
        guard let url = URL(string: endpoint.url ?? "https://s3.\(endpoint.region).amazonaws.com") else { return false }
        return http.holdsBodiesOnce(for: url)
    }

    static let bareNames: Set<String> = ["uploads", "delete", "location", "versioning", "lifecycle"]

    public func send(_ request: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        let c = try client(endpoint, bucket: request.bucket)
        let key = AWSURIEncoding.encodePath(request.key)
        let path = endpoint.pathStyle(bucket: request.bucket) ? "/" + request.bucket + "/" + key : "/" + key
        var payloadHash: String?
        var headers: [(String, String)] = []
        for (n, v) in request.headers {
            if n.lowercased() == "x-amz-content-sha256" { payloadHash = v } else { headers.append((n, v)) }
        }
        let query = request.query.map { ($0.0, Self.bareNames.contains($0.0) && $0.1.isEmpty ? nil : Optional($0.1)) }
        let hasUploadId = request.query.contains { $0.0 == "uploadId" }
        var req = AWSRequest(method: request.method, path: path, query: query, headers: HTTPHeaders(headers),
                             body: request.payload, payloadHash: payloadHash, operation: Self.operation(request),
                             resource: "\(request.bucket)/\(request.key)", timeout: 120,
                             errorInSuccessBody: request.method == "POST" && hasUploadId)
        req.responseSink = request.responseSink
        req.maximumResponseBytes = request.maximumResponseBytes
        // A streamed GET is not retried by the client after a transfer failure (it would fetch
        // the whole range again): the store resumes it from where it got to. Throttling and
        // clock skew, refused before any byte, are still retried here.
        if request.responseSink != nil { req.idempotent = false }
        do {
            let r = try c.send(req)
            var h: [String: String] = [:]
            for (n, v) in r.headers { h[n.lowercased()] = v }
            var resp = S3Response(status: r.status, headers: h, payload: r.body)
            resp.bodyStreamed = r.bodyStreamed
            return resp
        } catch let e as AWSError {
            switch e.kind {
            case .service:
                let body = "<Error><Code>\(XMLScan.escape(e.code))</Code><Message>\(XMLScan.escape(e.message))</Message>"
                    + (e.requestID.map { "<RequestId>\(XMLScan.escape($0))</RequestId>" } ?? "") + "</Error>"
                return S3Response(status: e.status ?? 500, headers: [:], body: Array(body.utf8))
            case .credentials:
                throw StoreError(.accessDenied, "\(request.summary): \(e)")
            case .configuration:
                throw StoreError(.invalidArgument, "\(request.summary): \(e)")
            case .transport, .invalidResponse:
                throw S3TransportError(request: request.summary, reason: "\(e)")
            }
        }
    }

    static func operation(_ r: S3Request) -> String {
        let names = Set(r.query.map(\.0))
        switch r.method {
        case "PUT": return names.contains("partNumber") ? "UploadPart" : r.key.isEmpty ? "CreateBucket" : "PutObject"
        case "POST": return names.contains("uploads") ? "CreateMultipartUpload" : "CompleteMultipartUpload"
        case "DELETE": return names.contains("uploadId") ? "AbortMultipartUpload" : r.key.isEmpty ? "DeleteBucket" : "DeleteObject"
        case "HEAD": return r.key.isEmpty ? "HeadBucket" : "HeadObject"
        default: return names.contains("list-type") ? "ListObjectsV2" : names.contains("uploads") ? "ListMultipartUploads" : "GetObject"
        }
    }
}

extension S3StoreConfiguration {
    /// The configuration `store init --s3 URL... [--endpoint URL] [--region R] [--quorum N]`
    /// writes: the region from the option, else the AWS conventions (AWS_REGION,
    /// AWS_DEFAULT_REGION, the profile), else us-east-1 for a custom endpoint; the endpoint from
    /// the option, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / the profile's endpoint_url,
    /// else AWS itself. A resolved custom endpoint is written into the file, so the store does
    /// not move when the environment changes.
    public static func resolve(urls: [String], endpoint: String?, region: String?, writeQuorum: Int?,
                               partSize: Int = defaultPartSize, singlePutLimit: Int? = nil,
                               storeId: [UInt8]) throws -> S3StoreConfiguration {
        do {
            let explicitRegion = try AWSConfiguration.region(explicit: region)
            var ep = try AWSConfiguration.endpoint(service: "s3", region: explicitRegion ?? "us-east-1", explicit: endpoint)
            let r: String
            if let explicitRegion { r = explicitRegion } else if ep.isCustom { r = "us-east-1" } else {
                r = try AWSConfiguration.requireRegion(for: "the S3 store")
                ep = try AWSConfiguration.endpoint(service: "s3", region: r, explicit: endpoint)
            }
            if ep.isCustom { try validateEndpoint(ep.url.absoluteString) }
            let replicas = try urls.map { Replica(location: try S3Location(url: $0), endpoint: S3Endpoint(url: ep.isCustom ? ep.url.absoluteString : nil, region: r)) }
            return try S3StoreConfiguration(storeId: storeId, writeQuorum: writeQuorum ?? (replicas.count / 2 + 1), replicas: replicas,
                                            partSize: partSize, singlePutLimit: singlePutLimit)
        } catch let e as AWSError {
            throw StoreError(.invalidArgument, "\(e.message)")
        }
    }
}
