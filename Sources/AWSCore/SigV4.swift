import BackupCrypto
import ByteCoding
import Foundation

/// AWS Signature Version 4 (S3-KMS digest §1; AWS "Create a signed AWS API request").
///
/// Canonical request = method \n canonical URI \n canonical query \n canonical headers \n
/// signed headers \n payload hash. String to sign = "AWS4-HMAC-SHA256" \n amzDate \n scope \n
/// hex(SHA-256(canonical request)). Signing key = HMAC chain "AWS4"+secret → date → region →
/// service → "aws4_request". Implemented: header signing (Authorization), session tokens
/// (signed), S3's rules (path encoded once, not normalised; `x-amz-content-sha256` sent and
/// signed). Not implemented: presigned query signing, SigV4a, aws-chunked streaming payloads.
public struct SigV4Signer: Sendable {
    public struct Options: Sendable, Equatable {
        /// Remove `.`/`..` segments and collapse `//` before encoding (every service but S3).
        public var normalizePath: Bool
        /// Encode the (already encoded) wire path again, `%` → `%25` (every service but S3).
        /// When false, the wire path is signed as sent, with only bytes outside the unreserved
        /// set (and `/`, `%`) encoded.
        public var doubleEncodePath: Bool
        /// Send and sign `x-amz-content-sha256` with the payload hash (S3 requires it).
        public var addContentSHA256Header: Bool

        public init(normalizePath: Bool, doubleEncodePath: Bool, addContentSHA256Header: Bool) {
            self.normalizePath = normalizePath
            self.doubleEncodePath = doubleEncodePath
            self.addContentSHA256Header = addContentSHA256Header
        }

        /// KMS and every JSON/query service.
        public static let standard = Options(normalizePath: true, doubleEncodePath: true, addContentSHA256Header: false)
        /// S3 and S3-compatible stores.
        public static let s3 = Options(normalizePath: false, doubleEncodePath: false, addContentSHA256Header: true)
    }

    /// Everything a signature was made of, for tests and debugging (no secret in it).
    public struct Signature: Sendable {
        public let canonicalRequest: String
        public let stringToSign: String
        public let signedHeaders: String
        public let signature: String
        public let authorization: String
        public let amzDate: String
        public let scope: String
    }

    public static let algorithm = "AWS4-HMAC-SHA256"
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// Headers never signed: the HTTP stack may add or rewrite them.
    public static let unsignedHeaders: Set<String> = [
        "authorization", "user-agent", "accept-encoding", "expect", "connection", "transfer-encoding",
        "x-amzn-trace-id", "keep-alive", "proxy-authorization", "te", "upgrade",
    ]

    public let service: String
    public let region: String
    public let options: Options

    public init(service: String, region: String, options: Options) {
        self.service = service
        self.region = region
        self.options = options
    }

    // MARK: the signature

    /// Signs the parts of a request. `path` and `query` are as sent on the wire (percent-encoded;
    /// `query` without `?`, nil or empty for none); `headers` must include `host` and every
    /// header to sign, including `x-amz-date` (`amzDate`), `x-amz-security-token` and
    /// `x-amz-content-sha256` when they are sent.
    public func signature(method: String, path: String, query: String?, headers: HTTPHeaders, payloadHash: String,
                          credentials: AWSCredentials, amzDate: String) -> Signature {
        let canonicalHeaders = Self.canonicalHeaders(headers)
        let signedHeaders = canonicalHeaders.map(\.name).joined(separator: ";")
        let canonicalRequest = [
            method.uppercased(),
            canonicalURI(path),
            Self.canonicalQuery(query ?? ""),
            canonicalHeaders.map { "\($0.name):\($0.value)\n" }.joined(),
            signedHeaders,
            payloadHash,
        ].joined(separator: "\n")
        let day = String(amzDate.prefix(8))
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = [Self.algorithm, amzDate, scope, Hex.encode(SHA256Hasher.hash(Array(canonicalRequest.utf8)))]
            .joined(separator: "\n")
        let key = signingKey(secret: credentials.secretAccessKey, day: day)
        let mac = (try? key.withUnsafeBytes { try HMAC.authenticationCode(.sha256, key: $0, data: Array(stringToSign.utf8)) })
        let signature = mac.map { Hex.encode($0.unsafeCopy()) } ?? ""
        let authorization = "\(Self.algorithm) Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return Signature(canonicalRequest: canonicalRequest, stringToSign: stringToSign, signedHeaders: signedHeaders,
                         signature: signature, authorization: authorization, amzDate: amzDate, scope: scope)
    }

    /// Signs `request` in place for the moment `date`: removes any earlier signature, adds
    /// `X-Amz-Date`, `X-Amz-Security-Token` (session credentials), `X-Amz-Content-SHA256` (S3)
    /// and `Authorization`. `payloadHash` is the hex SHA-256 of the body (computed when nil) or
    /// `UNSIGNED-PAYLOAD`. Call it again for every attempt.
    @discardableResult
    public func sign(_ request: inout HTTPRequest, credentials: AWSCredentials, date: Date, payloadHash: String? = nil) -> Signature {
        for name in ["authorization", "x-amz-date", "x-amz-security-token"] { request.headers.remove(name) }
        if options.addContentSHA256Header { request.headers.remove("x-amz-content-sha256") }
        let hash = payloadHash ?? Hex.encode(request.body.withUnsafeBytes { SHA256Hasher.hash(Array($0)) })
        let amzDate = Self.amzDate(date)
        request.headers.add("X-Amz-Date", amzDate)
        if let token = credentials.sessionToken { request.headers.add("X-Amz-Security-Token", token) }
        if options.addContentSHA256Header { request.headers.add("X-Amz-Content-SHA256", hash) }
        var toSign = request.headers
        if !toSign.contains("host") { toSign.add("host", Self.hostHeader(request.url)) }
        let comps = URLComponents(url: request.url, resolvingAgainstBaseURL: false)
        let path = comps?.percentEncodedPath ?? "/"
        let sig = signature(method: request.method, path: path.isEmpty ? "/" : path, query: comps?.percentEncodedQuery,
                            headers: toSign, payloadHash: hash, credentials: credentials, amzDate: amzDate)
        request.headers.add("Authorization", sig.authorization)
        return sig
    }

    /// The `host` header value: the host, with `:port` unless it is the scheme's default.
    public static func hostHeader(_ url: URL) -> String {
        var host = url.host ?? ""
        if host.contains(":"), !host.hasPrefix("[") { host = "[\(host)]" } // IPv6 literal
        if let port = url.port {
            let scheme = url.scheme?.lowercased()
            if !((scheme == "https" && port == 443) || (scheme == "http" && port == 80)) { return "\(host):\(port)" }
        }
        return host
    }

    /// `yyyyMMdd'T'HHmmss'Z'` in UTC.
    public static func amzDate(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tm.tm_year + 1900)\(two(tm.tm_mon + 1))\(two(tm.tm_mday))T\(two(tm.tm_hour))\(two(tm.tm_min))\(two(tm.tm_sec))Z"
    }

    // MARK: parts

    /// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, day), region), service), "aws4_request").
    public func signingKey(secret: AWSSecretKey, day: String) -> SecureBytes {
        var k0 = Array("AWS4".utf8)
        secret.bytes.withUnsafeBytes { k0.append(contentsOf: $0) }
        defer { wipe(&k0) }
        do {
            let kDate = try k0.withUnsafeBytes { try HMAC.authenticationCode(.sha256, key: $0, data: Array(day.utf8)) }
            let kRegion = try kDate.withUnsafeBytes { try HMAC.authenticationCode(.sha256, key: $0, data: Array(region.utf8)) }
            let kService = try kRegion.withUnsafeBytes { try HMAC.authenticationCode(.sha256, key: $0, data: Array(service.utf8)) }
            return try kService.withUnsafeBytes { try HMAC.authenticationCode(.sha256, key: $0, data: Array("aws4_request".utf8)) }
        } catch {
            // HMAC-SHA256 from OpenSSL does not fail on valid inputs; a failure is an environment bug.
            fatalError("HMAC-SHA256 failed: \(error)")
        }
    }

    /// The canonical URI for this signer's options.
    public func canonicalURI(_ wirePath: String) -> String {
        var path = wirePath.isEmpty ? "/" : wirePath
        if options.normalizePath { path = Self.normalize(path) }
        if options.doubleEncodePath { return AWSURIEncoding.encodePath(path) }
        // Signed as sent: only bytes that cannot appear on the wire are encoded.
        var out: [UInt8] = []
        for c in path.utf8 {
            if AWSURIEncoding.isUnreserved(c) || c == 0x2F || c == 0x25 { out.append(c) } else {
                out.append(contentsOf: AWSURIEncoding.encode(bytes: [c], keepSlash: false).utf8)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Removes `.` and `..` segments and empty segments; keeps a trailing slash.
    public static func normalize(_ path: String) -> String {
        var segments: [Substring] = []
        for seg in path.split(separator: "/", omittingEmptySubsequences: true) {
            if seg == "." { continue }
            if seg == ".." { if !segments.isEmpty { segments.removeLast() }; continue }
            segments.append(seg)
        }
        var out = "/" + segments.joined(separator: "/")
        if path.hasSuffix("/"), !segments.isEmpty { out += "/" }
        return out
    }

    /// Names and values decoded then encoded (`/` too), sorted by name then value, `k=v&…`;
    /// a bare name is signed as `name=`.
    public static func canonicalQuery(_ query: String) -> String {
        if query.isEmpty { return "" }
        var items: [(String, String)] = []
        for part in query.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = AWSURIEncoding.encode(bytes: AWSURIEncoding.decode(String(kv[0])), keepSlash: false)
            let value = kv.count > 1 ? AWSURIEncoding.encode(bytes: AWSURIEncoding.decode(String(kv[1])), keepSlash: false) : ""
            items.append((name, value))
        }
        items.sort { a, b in
            a.0 == b.0 ? Array(a.1.utf8).lexicographicallyPrecedes(Array(b.1.utf8)) : Array(a.0.utf8).lexicographicallyPrecedes(Array(b.0.utf8))
        }
        return items.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    /// Lower-case names, values trimmed with inner whitespace runs collapsed to one space,
    /// repeated names joined with `,` in order, sorted by name; unsigned names left out.
    public static func canonicalHeaders(_ headers: HTTPHeaders) -> [(name: String, value: String)] {
        var byName: [String: [String]] = [:]
        var order: [String] = []
        for (name, value) in headers {
            let n = name.lowercased()
            if unsignedHeaders.contains(n) { continue }
            if byName[n] == nil { order.append(n) }
            byName[n, default: []].append(collapse(value))
        }
        return order.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            .map { (name: $0, value: byName[$0]!.joined(separator: ",")) }
    }

    static func collapse(_ value: String) -> String {
        var out: [UInt8] = []
        var pendingSpace = false
        for c in value.utf8 {
            if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D {
                pendingSpace = !out.isEmpty
            } else {
                if pendingSpace { out.append(0x20); pendingSpace = false }
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
