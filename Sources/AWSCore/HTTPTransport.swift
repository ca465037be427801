import Foundation

/// HTTP header fields in the order they were added; names compare case-insensitively.
public struct HTTPHeaders: Sendable, Sequence, CustomStringConvertible {
    public private(set) var entries: [(name: String, value: String)]

    public init(_ entries: [(String, String)] = []) {
        self.entries = entries.map { (name: $0.0, value: $0.1) }
    }

    /// The first value of `name`, or nil.
    public subscript(_ name: String) -> String? {
        let n = name.lowercased()
        return entries.first { $0.name.lowercased() == n }?.value
    }

    /// Every value of `name`, in order.
    public func values(_ name: String) -> [String] {
        let n = name.lowercased()
        return entries.filter { $0.name.lowercased() == n }.map(\.value)
    }

    public func contains(_ name: String) -> Bool { self[name] != nil }

    /// Adds a field (keeps any earlier one of the same name).
    public mutating func add(_ name: String, _ value: String) { entries.append((name: name, value: value)) }

    /// Replaces every field of `name` with one.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        entries.append((name: name, value: value))
    }

    public mutating func remove(_ name: String) {
        let n = name.lowercased()
        entries.removeAll { $0.name.lowercased() == n }
    }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { entries.makeIterator() }

    /// Names only: values may hold a session token or a signature.
    public var description: String { "HTTPHeaders(" + entries.map(\.name).joined(separator: ", ") + ")" }
}

/// One HTTP request with a body of known length (never chunked: S3 refuses it).
public struct HTTPRequest: Sendable {
    public var method: String
    /// Absolute URL; its path and query are sent as written (already percent-encoded).
    public var url: URL
    public var headers: HTTPHeaders
    public var body: Data
    /// Seconds without progress before the request fails (`AWSError.Kind.transport`).
    public var timeout: TimeInterval
    /// Where a 2xx answer's body goes as it arrives, if the transport streams (then
    /// `HTTPResponse.bodyStreamed` is true and `body` empty); a transport that does not stream
    /// ignores it and returns the body whole, as for any other status.
    public var responseSink: HTTPBodySink?
    /// Whether the request may run twice. A transport sends a request again on its own (a kept-alive
    /// connection found dead) only when it is, or when it was not wholly written. Default: every
    /// method but POST.
    public var idempotent: Bool
    /// The largest 2xx body the caller expects when it is not streamed: a larger one is refused
    /// (`MalformedResponse`) by a transport that enforces it (`SocketHTTPTransport`; at most 2 GiB).
    public var maximumResponseBytes: Int?

    public init(method: String, url: URL, headers: HTTPHeaders = HTTPHeaders(), body: Data = Data(), timeout: TimeInterval = 60,
                responseSink: HTTPBodySink? = nil, idempotent: Bool? = nil) {
        self.idempotent = idempotent ?? (method != "POST")
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.responseSink = responseSink
    }
}

/// Receives a response body piece by piece, on the thread that sent the request. `begin` comes
/// before each attempt's body (again when a client retries: what an earlier attempt delivered is
/// the sink's to discard or skip); an error thrown by either method stops the transfer (the
/// connection is closed) and comes out of `send` as it was thrown.
public protocol HTTPBodySink: AnyObject, Sendable {
    func begin(status: Int, headers: HTTPHeaders) throws
    func receive(_ bytes: UnsafeRawBufferPointer) throws
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    /// The whole body (bounded by what the request asked for: use ranged GETs for large objects).
    public var body: Data
    /// How many attempts the client made to get this answer (1 without retries).
    public var attempts: Int
    /// The body went to the request's `responseSink` (and `body` is empty).
    public var bodyStreamed: Bool

    public init(status: Int, headers: HTTPHeaders, body: Data, attempts: Int = 1, bodyStreamed: Bool = false) {
        self.status = status
        self.headers = headers
        self.body = body
        self.attempts = attempts
        self.bodyStreamed = bodyStreamed
    }
}

/// Sends one HTTP request and returns the whole answer, blocking the calling thread (the
/// library above is synchronous; run parallel requests on several threads). Implementations
/// throw `AWSError` with kind `.transport` when no HTTP answer arrived; any status, 4xx and 5xx
/// included, is a response, not an error. They must send the headers given (and may add
/// `Host`, `Content-Length`, `User-Agent`, which are never signed) and the path verbatim.
public protocol HTTPTransport: Sendable {
    func send(_ request: HTTPRequest) throws -> HTTPResponse
    /// Whether a response body from `url` costs its size once in memory (read into one buffer, as
    /// `SocketHTTPTransport` does); a transport that holds more returns false. Callers size their reads by it.
    func holdsBodiesOnce(for url: URL) -> Bool
    /// Whether a 2xx body from `url` goes to `HTTPRequest.responseSink` as it arrives, in bounded
    /// pieces whatever its size and framing (false: the body comes back whole and the sink is ignored).
    func streamsResponseBodies(for url: URL) -> Bool
}

extension HTTPTransport {
    public func holdsBodiesOnce(for url: URL) -> Bool { false }
    public func streamsResponseBodies(for url: URL) -> Bool { false }
}

/// The transport the AWS clients (S3 store, KMS) use unless given another: `http://` and
/// `https://` both through `SocketHTTPTransport.shared` (TLS on libssl; proxies and the CA bundle
/// from the environment). There is no other HTTP stack in the process: FoundationNetworking, and
/// libcurl with it, are not linked. `plain` and `tls` replace it per scheme (tests).
public final class DefaultHTTPTransport: HTTPTransport, @unchecked Sendable {
    public static let shared = DefaultHTTPTransport()

    let plain: HTTPTransport
    let tls: HTTPTransport

    public init(plain: HTTPTransport? = nil, tls: HTTPTransport? = nil) {
        self.plain = plain ?? SocketHTTPTransport.shared
        self.tls = tls ?? SocketHTTPTransport.shared
    }

    public func send(_ request: HTTPRequest) throws -> HTTPResponse {
        try route(request.url).send(request)
    }

    public func holdsBodiesOnce(for url: URL) -> Bool { route(url).holdsBodiesOnce(for: url) }

    public func streamsResponseBodies(for url: URL) -> Bool { route(url).streamsResponseBodies(for: url) }

    private func route(_ url: URL) -> HTTPTransport {
        url.scheme?.lowercased() == "http" ? plain : tls
    }
}
