import Foundation

/// Reads the code, message and request id of an AWS error answer (S3-KMS digest §2 "Errors",
/// §3 "Errors"):
/// - JSON protocols (KMS): `{"__type": "...", "message": "..."}` (`Message` also accepted); the
///   code may also arrive in the `x-amzn-ErrorType` header. The code is normalised: cut at the
///   first `:`, then keep what follows the last `#`
///   (`com.amazonaws.kms#NotFoundException:http://…` → `NotFoundException`).
/// - XML (S3 `<Error>`, query services' `<ErrorResponse><Error>`): the first `<Code>` and
///   `<Message>` anywhere, `<RequestId>`.
/// - No body (HEAD, some 404/412/503): a code from the status (`NotFound`, `PreconditionFailed`, …).
public enum AWSErrorParser {
    public struct Parsed: Sendable, Equatable {
        public let code: String
        public let message: String
        public let requestID: String?

        public init(code: String, message: String, requestID: String?) {
            self.code = code
            self.message = message
            self.requestID = requestID
        }
    }

    public static func parse(status: Int, headers: HTTPHeaders, body: Data) -> Parsed {
        let requestID = headers["x-amzn-requestid"] ?? headers["x-amz-request-id"]
        let trimmed = body.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        if trimmed.first == 0x7B, let obj = try? JSONSerialization.jsonObject(with: Data(trimmed)) as? [String: Any] {
            let raw = (obj["__type"] as? String) ?? (obj["code"] as? String) ?? (obj["Code"] as? String) ?? headers["x-amzn-errortype"] ?? ""
            let message = (obj["message"] as? String) ?? (obj["Message"] as? String) ?? (obj["errorMessage"] as? String) ?? ""
            let code = normalize(raw)
            return Parsed(code: code.isEmpty ? statusCode(status) : code, message: message, requestID: requestID)
        }
        if trimmed.first == 0x3C, let root = try? AWSXMLNode.parse(trimmed), let code = root.first("Code")?.text, !code.isEmpty {
            let message = root.first("Message")?.text ?? ""
            return Parsed(code: code, message: message, requestID: root.first("RequestId")?.text ?? root.first("RequestID")?.text ?? requestID)
        }
        if let t = headers["x-amzn-errortype"] {
            return Parsed(code: normalize(t), message: "", requestID: requestID)
        }
        let text = String(decoding: body.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return Parsed(code: statusCode(status), message: text.isEmpty ? "HTTP \(status) with no error body" : "HTTP \(status): \(text)", requestID: requestID)
    }

    /// If a 2xx body is an `<Error>` document (S3 CompleteMultipartUpload and CopyObject can
    /// answer 200 and fail), its parsed error.
    public static func errorInSuccessBody(_ body: Data) -> Parsed? {
        let trimmed = body.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        guard trimmed.first == 0x3C, let root = try? AWSXMLNode.parse(trimmed), root.name == "Error", let code = root.value("Code") else { return nil }
        return Parsed(code: code, message: root.value("Message") ?? "", requestID: root.value("RequestId"))
    }

    public static func normalize(_ raw: String) -> String {
        var s = raw
        if let colon = s.firstIndex(of: ":") { s = String(s[..<colon]) }
        if let hash = s.lastIndex(of: "#") { s = String(s[s.index(after: hash)...]) }
        return s.trimmingCharacters(in: .whitespaces)
    }

    static func statusCode(_ status: Int) -> String {
        switch status {
        case 400: return "BadRequest"
        case 403: return "Forbidden"
        case 404: return "NotFound"
        case 409: return "Conflict"
        case 412: return "PreconditionFailed"
        case 416: return "InvalidRange"
        case 429: return "TooManyRequestsException"
        case 500: return "InternalError"
        case 503: return "ServiceUnavailable"
        default: return "HTTP\(status)"
        }
    }
}
