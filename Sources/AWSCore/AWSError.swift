import Foundation

/// The one error type of AWSCore and of the clients built on it (AWS KMS, S3). `code` is the
/// service's error code exactly as it sent it (normalised: `ThrottlingException`, `NoSuchKey`),
/// or one of ours for failures that never reached a service (`kind` says which).
/// Never carries a secret: messages name the access key id at most.
public struct AWSError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The service answered with an error status (or a 200 that carries an `<Error>` body).
        case service
        /// No HTTP answer: connection refused or reset, DNS, TLS, timeout.
        case transport
        /// No credentials found, or a credentials file that does not parse.
        case credentials
        /// No region, an endpoint URL that is not one, an identifier that is not an ARN.
        case configuration
        /// The service answered 2xx with a body we cannot read (not the JSON/XML expected).
        case invalidResponse
    }

    /// How a caller should treat the error; derived from the status and code.
    public enum Category: String, Sendable {
        case notFound            // NoSuchKey, NoSuchBucket, NoSuchUpload, NotFoundException, 404
        case preconditionFailed  // 412 PreconditionFailed: a semantic answer (already exists / changed), never retried
        case conflict            // 409 ConditionalRequestConflict and the like: restart the write
        case authentication      // bad or missing credentials, bad signature, expired token
        case accessDenied        // the credentials are valid but not allowed
        case throttled           // SlowDown, ThrottlingException, ...: retried
        case serverError         // 5xx, InternalError, KMSInternalException, ...: retried
        case clockSkew           // RequestTimeTooSkewed, "Signature expired": corrected from Date and retried
        case invalidRequest      // other 4xx: a bug or a bad argument; not retried
        case keyUnusable         // KMS: DisabledException, KMSInvalidStateException, InvalidCiphertext, IncorrectKey, InvalidKeyUsage
        case transport           // no HTTP answer
        case configuration       // credentials or configuration missing or malformed
        case invalidResponse
    }

    public let kind: Kind
    /// The signing name of the service ("s3", "kms").
    public let service: String
    /// The operation ("GenerateDataKey", "PutObject"), for messages.
    public let operation: String
    /// The HTTP status, when the service answered.
    public let status: Int?
    public let code: String
    public let message: String
    public let requestID: String?
    /// What the request was about (a key ARN, a bucket/key), for messages.
    public let resource: String?
    /// How many attempts were made (1 when the error was not retryable).
    public let attempts: Int

    public init(kind: Kind, service: String, operation: String, status: Int? = nil, code: String, message: String,
                requestID: String? = nil, resource: String? = nil, attempts: Int = 1) {
        self.kind = kind
        self.service = service
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.requestID = requestID
        self.resource = resource
        self.attempts = attempts
    }

    /// A copy with another attempt count (the retry loop fills it in).
    public func with(attempts: Int) -> AWSError {
        AWSError(kind: kind, service: service, operation: operation, status: status, code: code, message: message,
                 requestID: requestID, resource: resource, attempts: attempts)
    }

    public static func configuration(_ code: String, _ message: String, service: String = "aws", operation: String = "configure") -> AWSError {
        AWSError(kind: .configuration, service: service, operation: operation, code: code, message: message)
    }

    /// `text` (from a server, a proxy or the user) made safe for a message that may reach a
    /// terminal: C0 controls, DEL and C1 controls (ESC, CR, LF, NUL, CSI …) as `\xNN`.
    public static func escapingControls<S: StringProtocol>(_ text: S) -> String {
        var out = ""
        for u in text.unicodeScalars {
            if u.value < 0x20 || (0x7F...0x9F).contains(u.value) {
                let hex = Array("0123456789ABCDEF")
                out += "\\x" + String(hex[Int(u.value >> 4)]) + String(hex[Int(u.value & 0xF)])
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    /// Bytes as printable ASCII for a message: anything else (controls, DEL, bytes from 0x80 on) as `\xNN`.
    public static func escapingControls<C: Collection>(bytes: C) -> String where C.Element == UInt8 {
        var out = ""
        let hex = Array("0123456789ABCDEF")
        for b in bytes {
            if b >= 0x20 && b < 0x7F { out.unicodeScalars.append(Unicode.Scalar(b)) } else {
                out += "\\x" + String(hex[Int(b >> 4)]) + String(hex[Int(b & 0xF)])
            }
        }
        return out
    }

    public static func credentials(_ message: String) -> AWSError {
        AWSError(kind: .credentials, service: "aws", operation: "credentials", code: "NoCredentials", message: message)
    }

    // MARK: classification

    static let throttlingCodes: Set<String> = [
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "LimitExceededException",
        "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "EC2ThrottledException",
    ]
    static let transientCodes: Set<String> = [
        "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout", "RequestTimeoutException",
        "DependencyTimeoutException", "KMSInternalException", "KeyUnavailableException", "ServiceUnavailableException",
        "PriorRequestNotComplete",
    ]
    static let authenticationCodes: Set<String> = [
        "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidClientTokenId", "UnrecognizedClientException",
        "InvalidSignatureException", "ExpiredToken", "ExpiredTokenException", "MissingAuthenticationToken",
        "MissingAuthenticationTokenException", "IncompleteSignature", "IncompleteSignatureException",
        "AuthFailure", "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
    ]
    static let keyUnusableCodes: Set<String> = [
        "DisabledException", "KMSInvalidStateException", "InvalidCiphertextException", "IncorrectKeyException",
        "InvalidKeyUsageException", "InvalidGrantTokenException",
    ]

    public var category: Category {
        switch kind {
        case .transport: return .transport
        case .credentials, .configuration: return .configuration
        case .invalidResponse: return .invalidResponse
        case .service: break
        }
        if isClockSkew { return .clockSkew }
        if Self.throttlingCodes.contains(code) { return .throttled }
        if Self.transientCodes.contains(code) { return .serverError }
        if Self.authenticationCodes.contains(code) { return .authentication }
        if code == "AccessDenied" || code == "AccessDeniedException" || code == "Forbidden" { return .accessDenied }
        if Self.keyUnusableCodes.contains(code) { return .keyUnusable }
        if code.hasPrefix("NoSuch") || code == "NotFoundException" || code == "NotFound" || status == 404 { return .notFound }
        if status == 412 || code == "PreconditionFailed" { return .preconditionFailed }
        if status == 409 { return .conflict }
        if status == 429 { return .throttled }
        if let s = status, s >= 500 { return .serverError }
        if status == 403 { return .accessDenied }
        return .invalidRequest
    }

    /// The request time was too far from the service's clock.
    public var isClockSkew: Bool {
        guard kind == .service else { return false }
        if code == "RequestTimeTooSkewed" || code == "RequestExpired" { return true }
        return code == "InvalidSignatureException" && message.contains("Signature expired")
    }

    /// Transport failures another attempt cannot cure: the server's certificate was refused (an
    /// untrusted chain, another host's name, expired), no TLS version or cipher both sides accept
    /// (a TLS 1.0/1.1-only server, or not TLS at all), a proxy that refused the CONNECT tunnel (407,
    /// 403, …). Retrying them would only repeat the same handshake or refusal, with backoff.
    public static let finalTransportCodes: Set<String> = ["CertificateVerifyFailed", "TLSHandshakeFailed", "ProxyConnectRefused"]

    /// Worth another attempt (signed afresh): throttling, 5xx, timeouts, no answer at all (but
    /// not the final transport failures above).
    public var isRetryable: Bool {
        if kind == .transport && Self.finalTransportCodes.contains(code) { return false }
        switch category {
        case .throttled, .serverError, .transport, .clockSkew: return true
        default: return false
        }
    }

    public var description: String {
        var s = "\(service) \(operation)"
        if let resource { s += " (\(resource))" }
        switch kind {
        case .service:
            s += ": \(code)"
            if let status { s += " (HTTP \(status))" }
            if !message.isEmpty { s += ": \(message)" }
        default:
            s += ": \(kind.rawValue) error [\(code)]: \(message)"
        }
        if let requestID { s += " [request id \(requestID)]" }
        if attempts > 1 { s += " after \(attempts) attempts" }
        return s
    }
}
