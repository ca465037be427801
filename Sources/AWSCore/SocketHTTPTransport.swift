// HTTP/1.1 over a socket of our own, for `http://` and `https://` endpoints (S3, KMS, moto,
// MinIO, Ceph RGW); TLS on OpenSSL's libssl (TLSConnection.swift has the rules: TLS 1.2 at least,
// the chain verified against the system trust store or `AWS_CA_BUNDLE` / the profile's
// `ca_bundle`, the host name checked, SNI; no way to turn verification off), proxies from the
// environment (HTTPProxy.swift: `https_proxy` through CONNECT, `http_proxy` in absolute form,
// `no_proxy`). The request body is written from the caller's buffer and a response body with a
// Content-Length is read straight into one buffer of that size, in reads of up to 1 MiB (over TLS,
// a record of up to 16 KiB per read); so a part or a ranged read costs its size once in memory.
// URLSession on Linux (the transport before this one, on libcurl) cost about twice a body in
// memory, received in 8 KiB pieces with five or six system calls and a thread hand-off per piece,
// and made every process load FoundationNetworking and libcurl's ~30 libraries at start.
//
// Supported: Content-Length and chunked response bodies, a body read to the end of the connection,
// interim 1xx answers (at most 8), HEAD/204/304 without a body, keep-alive reuse of idle connections
// (an idle connection the server closed is detected before reuse: over TLS, records that arrived
// meanwhile are processed first, so a session ticket does not count as a close but close_notify,
// the end of the stream or unasked data do; a reused connection that dies before any byte of the
// answer is retried once on a new one, a request that is not `idempotent` only when it was not
// wholly written), `request.timeout` as the longest wait of each read or write, all its polls
// together (the socket is non-blocking and every wait is a poll, also inside TLS when libssl wants
// to read or write: a peer that trickles the bytes of one TLS record, each within the timeout,
// gets no more time than a silent one). A request whose body is not streamed must end within
// `requestDeadline` (default 30 min); a streamed body must bring at least `minimumProgressBytes`
// (64 KiB) in every `progressWindow` (120 s) once it has begun (both checked after each read or
// write, and each also the end of every wait, so neither a silent nor a trickling server outlasts
// them). A streamed 2xx body (`request.responseSink`) goes to the sink in pieces
// of at most 1 MiB whatever its framing (Content-Length, chunked, to the end of the connection),
// so memory stays bounded whatever its size. Framing: chunked decoding only when the
// Transfer-Encoding values joined are exactly `chunked` (any other coding: read to the end, no
// reuse); a connection is not kept after an answer with both Transfer-Encoding and
// Content-Length, after a 101, or when bytes follow the body. Request bodies always go with
// Content-Length (never chunked: S3 refuses it).
//
// TLS and the end of a body: a 2xx body delimited by the end of the connection (no Content-Length,
// not chunked) is accepted over TLS only when the server ended it with close_notify; a TLS stream
// that just stops may have been cut by anyone on the path, so that is a `ConnectionClosed` error
// (retryable) rather than a silently short body. Content-Length and chunked bodies carry their own
// end and are unaffected; an error body (non-2xx, kept only for its message) is taken as it came.
// The transport sends close_notify itself on every TLS connection it closes.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

public final class SocketHTTPTransport: HTTPTransport, @unchecked Sendable {
    /// The process's transport: trust from `AWS_CA_BUNDLE` / the profile's `ca_bundle` (read at
    /// the first `https://` request), proxies from the environment (read when it is made).
    public static let shared = SocketHTTPTransport()

    /// Longest status line + header block accepted from a server (and from a proxy's CONNECT answer).
    public static let maximumHeaderBytes = 64 * 1024
    /// Largest body held in memory (one that is not streamed to a sink): a Content-Length above
    /// it is refused before anything is allocated, a chunked or close-delimited body when it grows past it.
    public static let maximumBodyBytes = 1 << 31
    /// Most bytes kept of a non-2xx body (an S3 or KMS error is a few hundred): the rest is not
    /// read, and the connection is closed.
    public static let maximumErrorBodyBytes = 1 << 20
    /// Longest chunk-size line of a chunked body.
    static let maximumChunkLineBytes = 1024
    /// Most trailer fields after a chunked body (their bytes are bounded by `maximumHeaderBytes`).
    public static let maximumTrailerLines = 64
    /// Most interim (1xx) answers before the final one.
    public static let maximumInterimAnswers = 8
    /// Largest single read from the socket, and largest piece handed to a sink.
    public static let readSize = 1 << 20

    private let maximumIdlePerHost: Int
    private let connectTimeout: TimeInterval
    /// Longest a request may take (sending, the answer head, a body that is not streamed).
    public let requestDeadline: TimeInterval
    /// A streamed body fails with `Timeout` when fewer than `minimumProgressBytes` arrived in a
    /// `progressWindow`.
    public let minimumProgressBytes: Int
    public let progressWindow: TimeInterval
    /// The proxies requests go through.
    public let proxies: ProxySettings
    /// The trust given at init; nil: `TLSTrust.resolve()` at the first `https://` request.
    private let trust: TLSTrust?
    private let lock = NSLock()
    private var idle: [String: [Channel]] = [:]
    private var tlsContext: TLSContext?

    public init(maximumIdleConnectionsPerHost: Int = 16, connectTimeout: TimeInterval = 10, requestDeadline: TimeInterval = 1800,
                minimumProgressBytes: Int = 64 * 1024, progressWindow: TimeInterval = 120,
                trust: TLSTrust? = nil, proxies: ProxySettings? = nil) {
        HeapSetting.apply()
        maximumIdlePerHost = maximumIdleConnectionsPerHost
        self.connectTimeout = connectTimeout
        self.requestDeadline = requestDeadline
        self.minimumProgressBytes = minimumProgressBytes
        self.progressWindow = progressWindow
        self.trust = trust
        self.proxies = proxies ?? ProxySettings()
    }

    deinit {
        for channels in idle.values { for c in channels { c.close() } }
    }

    public func holdsBodiesOnce(for url: URL) -> Bool { Self.handles(url) }

    public func streamsResponseBodies(for url: URL) -> Bool { Self.handles(url) }

    static func handles(_ url: URL) -> Bool {
        let s = url.scheme?.lowercased()
        return s == "http" || s == "https"
    }

    /// Where certificates are checked against: the trust given at init, else resolved now
    /// (`AWS_CA_BUNDLE`, the profile's `ca_bundle`, the system store). Throws what
    /// `TLSTrust.resolve` throws (a config file that cannot be read).
    public func effectiveTrust() throws -> TLSTrust {
        try trust ?? TLSTrust.resolve(.process)
    }

    /// Makes the TLS context now rather than at the first `https://` request: a CA bundle that
    /// cannot be read throws its configuration error (`InvalidCABundle`) here, before any request
    /// (the CLI calls it when it opens a store on an `https://` endpoint).
    public func prepareTLS() throws {
        _ = try context()
    }

    /// The shared TLS context, made at the first `https://` request. A CA bundle that cannot be
    /// read fails that request (and is tried again by the next: nothing falls back to another store).
    private func context() throws -> TLSContext {
        lock.lock()
        if let c = tlsContext { lock.unlock(); return c }
        lock.unlock()
        let made = try TLSContext.make(trust: try effectiveTrust())
        lock.lock()
        defer { lock.unlock() }
        if let c = tlsContext { return c }
        tlsContext = made
        return made
    }

    // MARK: sending

    public func send(_ request: HTTPRequest) throws -> HTTPResponse {
        let target = try Target(request)
        let route: Route
        do {
            route = try proxies.proxy(scheme: target.scheme, host: target.host).map { target.secure ? .tunnel($0) : .forward($0) } ?? .direct
        } catch let e as AWSError {
            throw AWSError(kind: e.kind, service: "http", operation: request.method, code: e.code, message: "\(target.origin): \(e.message)")
        }
        let head = Self.head(request, target, route)
        let key = target.poolKey(route)
        // A kept-alive connection may have been closed by the server since: if it dies before any
        // byte of the answer, the request goes once more on a new connection (one that is not
        // idempotent only if it was not wholly written: else the server may have run it).
        if let channel = takeIdle(key) {
            do {
                return try exchange(channel, reused: true, request, target, head, key)
            } catch is StaleConnection {}
        }
        let channel = try open(target, route, request)
        return try exchange(channel, reused: false, request, target, head, key)
    }

    /// A reused connection died before any byte of the answer.
    private struct StaleConnection: Error {}

    private func exchange(_ channel: Channel, reused: Bool, _ request: HTTPRequest, _ target: Target, _ head: [UInt8],
                          _ key: String) throws -> HTTPResponse {
        var keep = false
        defer { if keep { putIdle(channel, key) } else { channel.close() } }
        // The request's timeout is the longest wait of each read and write (a reused connection
        // may have carried a request with another); the whole request is bounded too (a server
        // trickling a byte per `timeout` would not be).
        let conn = Connection(channel: channel, request: request, target: target, transport: self)
        do {
            if request.body.count <= 64 * 1024 {
                // One write for a small body; the copy (a KMS Encrypt body holds a data key) is wiped.
                var all = head
                all.append(contentsOf: request.body)
                defer { Self.wipe(&all) }
                try conn.write(all)
            } else {
                try conn.write(head)
                try request.body.withUnsafeBytes { try conn.write($0) }
            }
        } catch let e as AWSError {
            if reused && e.code != "Timeout" { throw StaleConnection() }
            throw e
        }
        guard let (response, reusable) = try readResponse(conn, request, target, reused: reused) else {
            if reused && request.idempotent { throw StaleConnection() }
            throw transportError(request, "ConnectionClosed", "\(target.hostPort): the server closed the connection without an answer"
                                 + (reused ? " (a kept-alive one; the request is not idempotent, so it is not sent again)" : ""))
        }
        keep = reusable
        return response
    }

    // MARK: the answer

    /// The answer and whether the connection can carry another request; nil when the connection
    /// ended before any byte of it (a stale reused connection).
    private func readResponse(_ conn: Connection, _ request: HTTPRequest, _ target: Target, reused: Bool) throws -> (HTTPResponse, Bool)? {
        var status = 0
        var version = ""
        var headers = HTTPHeaders()
        var first = true
        var interim = 0
        // Interim 1xx answers (100 Continue, 103 Early Hints) are skipped, up to a bound.
        repeat {
            guard let block = try conn.readHeaderBlock(allowCleanEOF: first && reused) else { return nil }
            first = false
            (version, status, headers) = try parseHead(block, request)
            if (100..<200).contains(status) && status != 101 {
                interim += 1
                guard interim <= Self.maximumInterimAnswers else {
                    throw transportError(request, "MalformedResponse", "\(target.hostPort): more than \(Self.maximumInterimAnswers) interim (1xx) answers")
                }
            }
        } while (100..<200).contains(status) && status != 101
        let connectionTokens = headers.values("connection").flatMap { $0.lowercased().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        var reusable = version == "HTTP/1.1" ? !connectionTokens.contains("close") : connectionTokens.contains("keep-alive")
        // Transfer codings, every Transfer-Encoding field joined; chunked decoding only for exactly `chunked`.
        let hasCodings = headers.contains("transfer-encoding")
        let codings = headers.values("transfer-encoding").joined(separator: ",").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty }
        let chunked = codings == ["chunked"]
        // Ambiguous framing (request smuggling's ground) or a switched protocol: never reused.
        if (hasCodings && headers.contains("content-length")) || status == 101 { reusable = false }
        let sink = (200..<300).contains(status) ? request.responseSink : nil
        // A body held whole: an error's is cut at `maximumErrorBodyBytes` (and the connection
        // closed), a 2xx one larger than expected is refused.
        let isError = !(200..<300).contains(status)
        let limit = isError ? Self.maximumErrorBodyBytes : min(request.maximumResponseBytes ?? .max, Self.maximumBodyBytes)
        var body = Data()
        if request.method == "HEAD" || status == 204 || status == 304 || (100..<200).contains(status) {
            body = Data()
        } else if hasCodings {
            if !chunked { reusable = false }
            if let sink {
                // Straight into the sink, piece by piece: memory is bounded whatever the body's size.
                try sink.begin(status: status, headers: headers)
                conn.startProgressWindow()
                if chunked { try conn.readChunked { try sink.receive($0) } } else { try conn.readToEnd { try sink.receive($0) } }
                return (HTTPResponse(status: status, headers: headers, body: Data(), bodyStreamed: true), reusable && conn.cleanEnd)
            }
            if isError {
                let (kept, cut) = try conn.readCapped(limit) { chunked ? try conn.readChunked($0) : try conn.readToEnd(requireCloseNotify: false, $0) }
                body = kept
                if cut { reusable = false }
            } else {
                body = chunked ? try conn.readChunked(limit: limit) : try conn.readToEnd(limit: limit)
            }
        } else if let n = try contentLength(headers, request, target) {
            if let sink {
                try sink.begin(status: status, headers: headers)
                conn.startProgressWindow()
                try conn.stream(n) { try sink.receive($0) }
                return (HTTPResponse(status: status, headers: headers, body: Data(), bodyStreamed: true), reusable && conn.cleanEnd)
            }
            if isError && n > limit {
                body = try conn.readExactly(limit, limit: limit)
                reusable = false
            } else {
                body = try conn.readExactly(n, limit: limit)
            }
        } else {
            reusable = false
            if let sink {
                try sink.begin(status: status, headers: headers)
                conn.startProgressWindow()
                try conn.readToEnd { try sink.receive($0) }
                return (HTTPResponse(status: status, headers: headers, body: Data(), bodyStreamed: true), false)
            }
            body = isError ? try conn.readCapped(limit) { try conn.readToEnd(requireCloseNotify: false, $0) }.0 : try conn.readToEnd(limit: limit)
        }
        return (HTTPResponse(status: status, headers: headers, body: body), reusable && conn.cleanEnd)
    }

    /// The Content-Length, if the answer has one (an answer with Transfer-Encoding ignores it).
    private func contentLength(_ headers: HTTPHeaders, _ request: HTTPRequest, _ target: Target) throws -> Int? {
        guard let cl = headers.values("content-length").first else { return nil }
        let values = Set(headers.values("content-length").map { $0.trimmingCharacters(in: .whitespaces) })
        let text = cl.trimmingCharacters(in: .whitespaces)
        guard values.count == 1, !text.isEmpty, text.allSatisfy(\.isASCIIDigit), let v = UInt64(text), let n = Int(exactly: v) else {
            throw transportError(request, "MalformedResponse",
                                 "\(target.hostPort): invalid Content-Length \(AWSError.escapingControls(headers.values("content-length").joined(separator: ", ").prefix(80)))")
        }
        return n
    }

    private func parseHead(_ block: [UInt8], _ request: HTTPRequest) throws -> (String, Int, HTTPHeaders) {
        guard let text = String(bytes: block, encoding: .isoLatin1) else {
            throw transportError(request, "MalformedResponse", "an answer head that is not text")
        }
        var lines = text.components(separatedBy: "\r\n")
        while lines.last == "" { lines.removeLast() }
        guard let statusLine = lines.first else { throw transportError(request, "MalformedResponse", "an empty answer head") }
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]), (100...599).contains(status) else {
            throw transportError(request, "MalformedResponse", "not an HTTP/1.x status line: \(AWSError.escapingControls(statusLine.prefix(80)))")
        }
        var headers = HTTPHeaders()
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                  !line[..<colon].contains(where: { $0 == " " || $0 == "\t" }) else {
                throw transportError(request, "MalformedResponse", "a header line without a name: \(AWSError.escapingControls(line.prefix(80)))")
            }
            headers.add(String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return (String(parts[0]), status, headers)
    }

    // MARK: the request

    /// Where a request goes: scheme, host, port and the request-target exactly as signed.
    struct Target {
        let secure: Bool
        /// The host, brackets stripped from an IPv6 literal.
        let host: String
        let port: UInt16
        let hostHeader: String
        let requestTarget: String
        var scheme: String { secure ? "https" : "http" }
        var hostPort: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
        var origin: String { "\(scheme)://\(hostPort)" }

        /// Connections are pooled by endpoint and by the proxy they go through.
        func poolKey(_ route: Route) -> String {
            switch route {
            case .direct: return origin
            case .tunnel(let p), .forward(let p): return origin + " via " + p.hostPort
            }
        }

        init(_ request: HTTPRequest) throws {
            let url = request.url
            let scheme = url.scheme?.lowercased()
            guard scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty else {
                throw AWSError(kind: .configuration, service: "http", operation: request.method, code: "UnsupportedURL",
                               message: "\(AWSError.escapingControls(url.scheme ?? "?"))://\(AWSError.escapingControls(url.host ?? "")): only http:// and https:// URLs with a host are sent")
            }
            // The host goes into the CONNECT line, Host and the absolute-form request line, and to
            // getaddrinfo: as written (percent-encoded form), a DNS name or an IP literal only.
            let raw = URLComponents(url: url, resolvingAgainstBaseURL: false)?.percentEncodedHost ?? host
            guard AWSConfiguration.isValidHost(raw) else {
                throw AWSError(kind: .configuration, service: "http", operation: request.method, code: "InvalidEndpoint",
                               message: "\(scheme ?? "?")://\(AWSError.escapingControls(raw)): " + AWSConfiguration.invalidHostReason(raw))
            }
            secure = scheme == "https"
            let port = url.port ?? (secure ? 443 : 80)
            guard let p = UInt16(exactly: port), p > 0 else {
                throw AWSError(kind: .configuration, service: "http", operation: request.method, code: "UnsupportedURL", message: "port \(port) out of range")
            }
            self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            self.port = p
            hostHeader = SigV4Signer.hostHeader(url)
            // The path and query as they were signed (URLComponents' percent-encoded forms).
            let comps = URLComponents(url: url, resolvingAgainstBaseURL: false)
            var t = comps?.percentEncodedPath ?? "/"
            if t.isEmpty { t = "/" }
            if let q = comps?.percentEncodedQuery { t += "?" + q }
            requestTarget = t
        }
    }

    /// How a connection reaches its endpoint.
    enum Route {
        case direct
        /// https through an HTTP proxy: CONNECT, then TLS with the endpoint inside the tunnel.
        case tunnel(ProxySettings.Proxy)
        /// http through an HTTP proxy: requests in absolute form.
        case forward(ProxySettings.Proxy)
    }

    static func head(_ request: HTTPRequest, _ target: Target, _ route: Route = .direct) -> [UInt8] {
        var requestTarget = target.requestTarget
        var h = request.headers
        h.remove("proxy-authorization")
        if case .forward(let proxy) = route {
            // Absolute form (RFC 9112 3.2.2); Host and the signature stay the endpoint's.
            requestTarget = "http://" + target.hostHeader + target.requestTarget
            if let auth = proxy.authorization { h.add("Proxy-Authorization", auth) }
        }
        var s = "\(request.method) \(requestTarget) HTTP/1.1\r\n"
        if !h.contains("host") { s += "Host: \(target.hostHeader)\r\n" }
        if !h.contains("user-agent") { h.add("User-Agent", "hsmbackup") }
        if !h.contains("accept-encoding") { h.add("Accept-Encoding", "identity") }
        h.remove("content-length")
        h.remove("transfer-encoding")
        h.remove("connection")
        let hasBody = !request.body.isEmpty || request.method == "PUT" || request.method == "POST"
        if hasBody {
            if !h.contains("content-type") { h.add("Content-Type", "application/octet-stream") }
            h.add("Content-Length", String(request.body.count))
        }
        for (name, value) in h {
            // A CR or LF in a value would split the request; such a value is never produced here.
            s += name + ": " + value.replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ") + "\r\n"
        }
        s += "\r\n"
        return Array(s.utf8)
    }

    // MARK: connections

    private func takeIdle(_ key: String) -> Channel? {
        while true {
            lock.lock()
            guard var channels = idle[key], let c = channels.popLast() else { lock.unlock(); return nil }
            idle[key] = channels
            lock.unlock()
            // An idle connection must have nothing to read: the server closed it (or sent
            // something unasked for); either way it is not reused.
            if c.isReusable() { return c }
            c.close()
        }
    }

    private func putIdle(_ channel: Channel, _ key: String) {
        lock.lock()
        var channels = idle[key] ?? []
        if channels.count < maximumIdlePerHost {
            channels.append(channel)
            idle[key] = channels
            lock.unlock()
        } else {
            lock.unlock()
            channel.close()
        }
    }

    /// A new connection to the endpoint: TCP to it or to its proxy, the CONNECT tunnel, the TLS handshake.
    private func open(_ target: Target, _ route: Route, _ request: HTTPRequest) throws -> Channel {
        // The TLS context first: a CA bundle that cannot be read fails before any connection.
        let tls = target.secure ? try context() : nil
        let channel: Channel
        switch route {
        case .direct:
            channel = Channel(fd: try connect(host: target.host, port: target.port, request, target, via: nil))
        case .tunnel(let p), .forward(let p):
            channel = Channel(fd: try connect(host: p.host, port: p.port, request, target, via: p))
        }
        do {
            if case .tunnel(let proxy) = route { try tunnel(channel, through: proxy, target, request) }
            if let tls { try startTLS(channel, tls, target, request) }
        } catch {
            channel.close()
            throw error
        }
        return channel
    }

    /// The TLS handshake, each wait bounded by the connect timeout (or the request's, if shorter),
    /// the whole by their sum of a few round trips: 4 waits' worth.
    private func startTLS(_ channel: Channel, _ context: TLSContext, _ target: Target, _ request: HTTPRequest) throws {
        let wait = max(0.001, min(connectTimeout, request.timeout))
        let session: TLSSession
        do { session = try TLSSession.make(context: context, fd: channel.fd, host: target.host) } catch let f as TLSFailure {
            throw transportError(request, f.code, "\(target.hostPort): \(f.reason)")
        }
        do {
            try channel.handshake(session, wait: wait, total: 4 * wait)
        } catch let f as Channel.Failure {
            throw Connection.error(f, request: request, target: target, transport: self, what: "TLS handshake", timeout: wait)
        }
    }

    /// CONNECT host:port through `proxy` on `channel`; returns once the proxy answered 2xx.
    private func tunnel(_ channel: Channel, through proxy: ProxySettings.Proxy, _ target: Target, _ request: HTTPRequest) throws {
        var s = "CONNECT \(target.hostPort) HTTP/1.1\r\nHost: \(target.hostPort)\r\nUser-Agent: hsmbackup\r\n"
        if let auth = proxy.authorization { s += "Proxy-Authorization: \(auth)\r\n" }
        s += "\r\n"
        let conn = Connection(channel: channel, request: request, target: target, transport: self)
        let at = "\(target.hostPort): the proxy \(proxy.hostPort) (from \(proxy.source))"
        let block: [UInt8]?
        do {
            try conn.write(Array(s.utf8))
            block = try conn.readHeaderBlock(allowCleanEOF: true)
        } catch let e as AWSError {
            throw transportError(request, e.code == "Timeout" ? "Timeout" : "ProxyConnectFailed", "\(at): CONNECT failed: \(e.message)")
        }
        guard let block else {
            throw transportError(request, "ProxyConnectFailed", "\(at) closed the connection without answering CONNECT")
        }
        // The proxy's text goes into messages escaped (an ESC in a reason phrase would reach the terminal).
        let lineBytes = block.prefix { $0 != 13 }
        let line = String(decoding: lineBytes, as: UTF8.self)
        let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]) else {
            throw transportError(request, "ProxyConnectFailed", "\(at) answered CONNECT with no HTTP status line: \(AWSError.escapingControls(bytes: lineBytes.prefix(80)))")
        }
        let reason = parts.count > 2 ? " " + AWSError.escapingControls(parts[2].prefix(80)) : ""
        guard (200..<300).contains(status) else {
            // A refusal is the proxy's decision (407: credentials, 403: policy): not retried. A
            // 5xx (the proxy could not reach the endpoint) is a transport failure like any other.
            let code = status >= 500 ? "ProxyConnectFailed" : "ProxyConnectRefused"
            let auth = status == 407 ? (proxy.hasCredentials ? " (the proxy refused the credentials in \(proxy.source))"
                                                            : " (the proxy wants credentials: http://user:password@host:port in \(proxy.source))") : ""
            let what = status >= 500 ? "could not open the tunnel" : "refused CONNECT"
            throw transportError(request, code, "\(at) \(what): HTTP \(status)\(reason)\(auth)")
        }
        // Nothing may come before our TLS handshake (a proxy that sent a body would desynchronise it).
        guard conn.buffer.isEmpty else {
            throw transportError(request, "ProxyConnectFailed", "\(at) sent bytes after its CONNECT answer")
        }
    }

    private func connect(host: String, port: UInt16, _ request: HTTPRequest, _ target: Target, via proxy: ProxySettings.Proxy?) throws -> Int32 {
        let what = proxy.map { "\(target.hostPort): the proxy \($0.hostPort) (from \($0.source))" } ?? target.hostPort
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw transportError(request, "TransportError", "\(what): cannot resolve: \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError: Int32 = 0
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            // Non-blocking from the start and for good: every wait is a poll with a timeout.
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), a.pointee.ai_protocol)
            if fd < 0 { lastError = errno; continue }
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 {
                if errno != EINPROGRESS { lastError = errno; close(fd); continue }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let n = poll(&p, 1, Int32(min(connectTimeout, request.timeout) * 1000))
                var soError: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                if n <= 0 { lastError = n == 0 ? ETIMEDOUT : errno; close(fd); continue }
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
                if soError != 0 { lastError = soError; close(fd); continue }
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            return fd
        }
        let code = lastError == ECONNREFUSED ? "ConnectionRefused" : lastError == ETIMEDOUT ? "Timeout" : "TransportError"
        throw transportError(request, code, "\(what): cannot connect: \(String(cString: strerror(lastError)))")
    }

    /// Zeroes an array's whole allocation, the capacity past its count included.
    fileprivate static func wipe(_ a: inout [UInt8]) {
        guard a.capacity > 0 else { return }
        a.append(contentsOf: repeatElement(0, count: a.capacity - a.count))
        a.withUnsafeMutableBytes { p in explicit_bzero(p.baseAddress!, p.count) }
    }

    /// Appends to `a` (a buffer that may hold a KMS data key), moving it into a larger allocation
    /// itself when it is full, so the old one is wiped before it is freed (`append` would free it as it was).
    fileprivate static func appendWiping(_ bytes: ArraySlice<UInt8>, to a: inout [UInt8]) {
        if a.count + bytes.count > a.capacity {
            var grown = [UInt8]()
            grown.reserveCapacity(max(a.capacity * 2, a.count + bytes.count, 4096))
            grown.append(contentsOf: a)
            wipe(&a)
            a = grown
        }
        a.append(contentsOf: bytes)
    }

    /// A body held whole that may be secret (a KMS answer without Content-Length): grown by
    /// moving into a larger allocation and wiping the old one; handed out as `Data` over the same
    /// storage, which is wiped when the last copy of that `Data` lets it go.
    fileprivate final class WipingBody {
        private var storage: UnsafeMutableRawPointer?
        private var capacity = 0
        private(set) var count = 0

        deinit {
            if let storage {
                explicit_bzero(storage, capacity)
                storage.deallocate()
            }
        }

        func append(_ bytes: UnsafeRawBufferPointer) {
            guard let from = bytes.baseAddress, bytes.count > 0 else { return }
            if count + bytes.count > capacity {
                let size = max(capacity * 2, count + bytes.count, 4096)
                let grown = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
                if let old = storage {
                    grown.copyMemory(from: old, byteCount: count)
                    explicit_bzero(old, capacity)
                    old.deallocate()
                }
                storage = grown
                capacity = size
            }
            (storage! + count).copyMemory(from: from, byteCount: bytes.count)
            count += bytes.count
        }

        /// The bytes, without a copy; this object is empty afterwards.
        func take() -> Data {
            guard let p = storage, count > 0 else { return Data() }
            let size = capacity
            let n = count
            storage = nil
            capacity = 0
            count = 0
            return Data(bytesNoCopy: p, count: n, deallocator: .custom { q, _ in
                explicit_bzero(q, size)
                q.deallocate()
            })
        }
    }

    /// An error of `request` (kind `.transport`); `message` starts with host:port and gets the
    /// scheme in front.
    fileprivate func transportError(_ request: HTTPRequest, _ code: String, _ message: String) -> AWSError {
        AWSError(kind: .transport, service: "http", operation: request.method, code: code,
                 message: (request.url.scheme?.lowercased() ?? "http") + "://" + message)
    }

    /// One connection's reads and writes, with a buffer for what was read past the answer head.
    fileprivate final class Connection {
        let channel: Channel
        let request: HTTPRequest
        let target: Target
        unowned let transport: SocketHTTPTransport
        /// Bytes read but not consumed yet.
        var buffer: [UInt8] = []
        var sawEOF = false
        /// Scratch for reads into `buffer`.
        private var chunk: [UInt8] = []
        /// When the request must be over (monotonic nanoseconds), until a streamed body begins.
        private var deadline: UInt64?
        /// While a body streams: the end of the current progress window and the bytes it brought.
        private var windowEnd: UInt64?
        private var windowBytes = 0

        init(channel: Channel, request: HTTPRequest, target: Target, transport: SocketHTTPTransport) {
            self.channel = channel
            self.request = request
            self.target = target
            self.transport = transport
            deadline = Self.now() &+ Self.nanoseconds(transport.requestDeadline)
        }

        deinit {
            // What passed through the scratch buffers may be a KMS data key (in base64): wiped.
            SocketHTTPTransport.wipe(&buffer)
            SocketHTTPTransport.wipe(&chunk)
        }

        private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
        private static func nanoseconds(_ t: TimeInterval) -> UInt64 { UInt64(max(0, min(t, 1e9)) * 1e9) }

        /// The body streams from here on: instead of the whole-request deadline, each progress
        /// window must bring `minimumProgressBytes`.
        func startProgressWindow() {
            deadline = nil
            windowEnd = Self.now() &+ Self.nanoseconds(transport.progressWindow)
            windowBytes = 0
        }

        /// Counts `n` bytes just received (or sent) and throws `Timeout` when the request is past
        /// its deadline or a streamed body brought too little in its last window.
        private func progressed(_ n: Int, _ what: String) throws {
            windowBytes += n
            let t = Self.now()
            if let d = deadline, t >= d {
                throw transport.transportError(request, "Timeout", "\(hostPort): \(what): the request took longer than \(transport.requestDeadline) s")
            }
            if let w = windowEnd, t >= w {
                guard windowBytes >= transport.minimumProgressBytes else {
                    throw transport.transportError(request, "Timeout",
                                                   "\(hostPort): \(what): \(windowBytes) bytes in \(transport.progressWindow) s, fewer than the \(transport.minimumProgressBytes) required")
                }
                windowEnd = t &+ Self.nanoseconds(transport.progressWindow)
                windowBytes = 0
            }
        }

        /// Runs `deliver` (a sink, which may wait for its reader): the time it takes is not the
        /// server's, so the progress window is extended by it.
        private func handOver(_ deliver: () throws -> Void) throws {
            guard let w = windowEnd else { return try deliver() }
            let t0 = Self.now()
            defer { windowEnd = w &+ (Self.now() &- t0) }
            try deliver()
        }

        /// The answer ended where its framing said and nothing follows it: the connection can be reused.
        var cleanEnd: Bool { !sawEOF && buffer.isEmpty }

        private var hostPort: String { target.hostPort }

        /// A channel failure as the request's error: `Timeout` after `timeout` seconds without
        /// progress, `TransportError` with the system's reason, or the TLS failure's code and reason.
        static func error(_ f: Channel.Failure, request: HTTPRequest, target: Target, transport: SocketHTTPTransport, what: String,
                          timeout: TimeInterval) -> AWSError {
            switch f {
            case .timeout:
                return transport.transportError(request, "Timeout", "\(target.hostPort): \(what): no progress in \(timeout) s")
            case .system(let err):
                return transport.transportError(request, "TransportError", "\(target.hostPort): \(what): \(String(cString: strerror(err)))")
            case .tls(let t):
                return transport.transportError(request, t.code, "\(target.hostPort): \(what): \(t.reason)")
            }
        }

        private func failure(_ what: String, _ f: Channel.Failure) -> AWSError {
            Self.error(f, request: request, target: target, transport: transport, what: what, timeout: request.timeout)
        }

        /// The longest wait of one read or write.
        private var timeout: TimeInterval { max(0.001, request.timeout) }

        /// What ends the wait of one read or write begun at `start`.
        private enum Limit { case call, deadline, window }

        /// When the wait of one read or write begun at `start` ends (monotonic nanoseconds), and
        /// why: `timeout` after `start` in all (a peer trickling the bytes of one TLS record, each
        /// within `timeout`, gives libssl no plaintext: every poll restarting the wait would let it
        /// hold the request for days), the request's deadline, or the end of the progress window.
        private func limit(from start: UInt64) -> (UInt64, Limit) {
            var end = start &+ Self.nanoseconds(timeout)
            var why = Limit.call
            if let d = deadline, d < end { (end, why) = (d, .deadline) }
            if let w = windowEnd, w < end { (end, why) = (w, .window) }
            return (end, why)
        }

        /// Runs one channel read or write under `limit`: a wait past it throws the `Timeout` of
        /// the limit reached (the progress window, when it had brought enough, starts anew instead).
        private func bounded(_ what: String, _ op: (UInt64) throws -> Int) throws -> Int {
            let start = Self.now()
            while true {
                let (end, why) = limit(from: start)
                do {
                    return try op(end)
                } catch Channel.Failure.timeout {
                    switch why {
                    case .call:
                        throw failure(what, .timeout)
                    case .deadline:
                        throw transport.transportError(request, "Timeout", "\(hostPort): \(what): the request took longer than \(transport.requestDeadline) s")
                    case .window:
                        guard windowBytes >= transport.minimumProgressBytes else {
                            throw transport.transportError(request, "Timeout",
                                                           "\(hostPort): \(what): \(windowBytes) bytes in \(transport.progressWindow) s, fewer than the \(transport.minimumProgressBytes) required")
                        }
                        windowEnd = Self.now() &+ Self.nanoseconds(transport.progressWindow)
                        windowBytes = 0
                    }
                } catch let f as Channel.Failure {
                    throw failure(what, f)
                }
            }
        }

        /// Up to `n` bytes into `p`; 0 at the end of the connection (`sawEOF`).
        private func receive(_ p: UnsafeMutableRawPointer, _ n: Int, _ what: String) throws -> Int {
            let r = try bounded(what) { try channel.read(p, n, until: $0) }
            if r == 0 { sawEOF = true }
            return r
        }

        func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

        func write(_ bytes: UnsafeRawBufferPointer) throws {
            var at = 0
            while at < bytes.count {
                let n = try bounded("sending the request") { try channel.write(bytes.baseAddress! + at, bytes.count - at, until: $0) }
                at += n
                try progressed(0, "sending the request")
            }
        }

        /// Reads once into `buffer`; false at the end of the connection.
        private func fill(_ what: String) throws -> Bool {
            if chunk.isEmpty { chunk = [UInt8](repeating: 0, count: 64 * 1024) }
            let n = try chunk.withUnsafeMutableBytes { try receive($0.baseAddress!, $0.count, what) }
            if n == 0 { return false }
            SocketHTTPTransport.appendWiping(chunk[0..<n], to: &buffer)
            try progressed(n, what)
            return true
        }

        /// The status line and headers, up to and without the blank line; nil when the connection
        /// ended cleanly before any byte (only when `allowCleanEOF`).
        func readHeaderBlock(allowCleanEOF: Bool) throws -> [UInt8]? {
            var scanned = 0
            while true {
                if buffer.count >= 4 {
                    var i = max(0, scanned - 3)
                    while i + 3 < buffer.count {
                        if buffer[i] == 13, buffer[i + 1] == 10, buffer[i + 2] == 13, buffer[i + 3] == 10 {
                            let block = Array(buffer[0..<i])
                            buffer.removeFirst(i + 4)
                            return block
                        }
                        i += 1
                    }
                    scanned = buffer.count
                }
                guard buffer.count <= SocketHTTPTransport.maximumHeaderBytes else {
                    throw transport.transportError(request, "MalformedResponse", "\(hostPort): answer head longer than \(SocketHTTPTransport.maximumHeaderBytes) bytes")
                }
                let got: Bool
                do { got = try fill("reading the answer") } catch let e as AWSError {
                    if allowCleanEOF && buffer.isEmpty && e.code == "TransportError" { return nil }
                    throw e
                }
                if !got {
                    if allowCleanEOF && buffer.isEmpty { return nil }
                    throw transport.transportError(request, "ConnectionClosed", "\(hostPort): the connection ended inside the answer head")
                }
            }
        }

        /// Refuses a body of more than `limit` bytes held in memory.
        func checkSize(_ n: Int, _ limit: Int) throws {
            guard n <= limit else {
                throw transport.transportError(request, "MalformedResponse", "\(hostPort): a body of more than \(limit) bytes")
            }
        }

        private struct BodyCut: Error {}

        /// At most `cap` bytes of what `read` delivers, and whether there was more (then the
        /// rest is left unread).
        func readCapped(_ cap: Int, _ read: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> (Data, Bool) {
            var body = Data()
            do {
                try read { p in
                    let n = min(p.count, cap - body.count)
                    body.append(contentsOf: UnsafeRawBufferPointer(rebasing: p[0..<n]))
                    if n < p.count { throw BodyCut() }
                }
                return (body, false)
            } catch is BodyCut {
                return (body, true)
            }
        }

        /// Exactly `n` body bytes: what is buffered, then straight from the socket into the body.
        func readExactly(_ n: Int, limit: Int) throws -> Data {
            try checkSize(n, limit)
            var body = Data(count: n)
            let have = min(buffer.count, n)
            if have > 0 {
                body.withUnsafeMutableBytes { dst in buffer.withUnsafeBytes { src in dst.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: have) } }
                buffer.removeFirst(have)
            }
            var at = have
            try body.withUnsafeMutableBytes { (dst: UnsafeMutableRawBufferPointer) in
                while at < n {
                    let r = try receive(dst.baseAddress! + at, min(n - at, SocketHTTPTransport.readSize), "reading the body (\(at) of \(n) bytes)")
                    if r == 0 {
                        throw transport.transportError(request, "ConnectionClosed", "\(hostPort): the connection ended after \(at) of \(n) body bytes")
                    }
                    at += r
                    try progressed(r, "reading the body")
                }
            }
            return body
        }

        /// Exactly `n` body bytes to `deliver`, in pieces of up to `readSize` (one buffer reused).
        func stream(_ n: Int, _ deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
            var at = 0
            if !buffer.isEmpty {
                let have = min(buffer.count, n)
                try buffer.withUnsafeBytes { p in try handOver { try deliver(UnsafeRawBufferPointer(rebasing: p[0..<have])) } }
                buffer.removeFirst(have)
                at = have
            }
            guard at < n else { return }
            let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: min(n - at, SocketHTTPTransport.readSize), alignment: 16)
            var used = 0
            defer {
                // What passed through may be secret (a chunk of a KMS answer): wiped before it is freed.
                explicit_bzero(piece.baseAddress!, used)
                piece.deallocate()
            }
            while at < n {
                let r = try receive(piece.baseAddress!, min(n - at, piece.count), "reading the body (\(at) of \(n) bytes)")
                used = max(used, r)
                if r == 0 {
                    throw transport.transportError(request, "ConnectionClosed", "\(hostPort): the connection ended after \(at) of \(n) body bytes")
                }
                try handOver { try deliver(UnsafeRawBufferPointer(rebasing: piece[0..<r])) }
                at += r
                try progressed(r, "reading the body")
            }
        }

        /// A body that ends with the connection, to `deliver` in pieces of up to `readSize`. Over
        /// TLS, with `requireCloseNotify`, an end without close_notify is an error (the body may
        /// have been cut short by anyone on the path); a plain TCP end is the end.
        func readToEnd(requireCloseNotify: Bool = true, _ deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
            var total = buffer.count
            if !buffer.isEmpty {
                try buffer.withUnsafeBytes { p in try handOver { try deliver(p) } }
                // Emptied, not dropped: its bytes are wiped and its allocation kept (wiped again at the end).
                SocketHTTPTransport.wipe(&buffer)
                buffer.removeAll(keepingCapacity: true)
            }
            let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: SocketHTTPTransport.readSize, alignment: 16)
            var used = 0
            defer {
                explicit_bzero(piece.baseAddress!, used)
                piece.deallocate()
            }
            while true {
                let r = try receive(piece.baseAddress!, piece.count, "reading the body")
                used = max(used, r)
                if r == 0 {
                    if requireCloseNotify && channel.endedWithoutCloseNotify {
                        throw transport.transportError(request, "ConnectionClosed",
                                                       "\(hostPort): the TLS connection ended without close_notify after \(total) body bytes; "
                                                       + "a body that ends with the connection may have been cut short, so it is not accepted")
                    }
                    return
                }
                total += r
                try handOver { try deliver(UnsafeRawBufferPointer(rebasing: piece[0..<r])) }
                try progressed(r, "reading the body")
            }
        }

        /// A body that ends with the connection, held whole (up to `limit` bytes); grown without
        /// leaving unwiped copies behind (`WipingBody`).
        func readToEnd(limit: Int) throws -> Data {
            let body = WipingBody()
            try readToEnd { p in
                try checkSize(body.count + p.count, limit)
                body.append(p)
            }
            return body.take()
        }

        /// One CRLF-terminated line (without it), at most `limit` bytes.
        private func readLine(limit: Int) throws -> [UInt8] {
            var scanned = 0
            while true {
                var i = max(0, scanned - 1)
                while i + 1 < buffer.count {
                    if buffer[i] == 13, buffer[i + 1] == 10 {
                        let line = Array(buffer[0..<i])
                        buffer.removeFirst(i + 2)
                        return line
                    }
                    i += 1
                }
                scanned = buffer.count
                guard buffer.count <= limit else {
                    throw transport.transportError(request, "MalformedResponse", "\(hostPort): a chunked-body line longer than \(limit) bytes")
                }
                guard try fill("reading a chunked body") else {
                    throw transport.transportError(request, "ConnectionClosed", "\(hostPort): the connection ended inside a chunked body")
                }
            }
        }

        /// A chunked body (RFC 9112 7.1) to `deliver`, each chunk in pieces of up to `readSize`:
        /// size lines in hex digits only (extensions ignored), then at most `maximumTrailerLines`
        /// trailer fields of at most `maximumHeaderBytes` in all.
        func readChunked(limit: Int = .max, _ deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
            var total = 0
            while true {
                let line = try readLine(limit: SocketHTTPTransport.maximumChunkLineBytes)
                var size = line.prefix { $0 != UInt8(ascii: ";") }
                while let b = size.last, b == 32 || b == 9 { size.removeLast() }
                while let b = size.first, b == 32 || b == 9 { size.removeFirst() }
                let isHex: (UInt8) -> Bool = { (48...57).contains($0) || (65...70).contains($0) || (97...102).contains($0) }
                guard !size.isEmpty, size.count <= 15, size.allSatisfy(isHex), let n = Int(String(decoding: size, as: UTF8.self), radix: 16) else {
                    throw transport.transportError(request, "MalformedResponse", "\(hostPort): bad chunk size line \(AWSError.escapingControls(bytes: line.prefix(40)))")
                }
                if n == 0 {
                    var lines = 0
                    var bytes = 0
                    while true {
                        let trailer = try readLine(limit: SocketHTTPTransport.maximumHeaderBytes)
                        if trailer.isEmpty { return }
                        lines += 1
                        bytes += trailer.count + 2
                        guard lines <= SocketHTTPTransport.maximumTrailerLines, bytes <= SocketHTTPTransport.maximumHeaderBytes else {
                            throw transport.transportError(request, "MalformedResponse",
                                                           "\(hostPort): trailers beyond \(SocketHTTPTransport.maximumTrailerLines) lines or \(SocketHTTPTransport.maximumHeaderBytes) bytes")
                        }
                    }
                }
                // A body held whole is refused before a chunk that would take it past its bound.
                if limit != .max { try checkSize(total + n, limit) }
                total += n
                try stream(n, deliver)
                guard try readLine(limit: 2).isEmpty else {
                    throw transport.transportError(request, "MalformedResponse", "\(hostPort): a chunk not followed by CRLF")
                }
            }
        }

        /// A chunked body held whole (up to `limit` bytes); grown without leaving unwiped copies
        /// behind (`WipingBody`).
        func readChunked(limit: Int) throws -> Data {
            let body = WipingBody()
            try readChunked(limit: limit) { body.append($0) }
            return body.take()
        }
    }
}

/// One connection: a non-blocking socket of ours, with TLS over it for `https://`. Every wait is a
/// poll that ends by the caller's absolute limit; libssl's WANT_READ / WANT_WRITE are waited for
/// the same way (a TLS read may need to write and a write to read), all the waits of one call
/// together bounded by that one limit. Closing sends close_notify on a TLS connection whose
/// session is sound, then closes the socket.
final class Channel {
    enum Failure: Error {
        case timeout
        case system(Int32)
        case tls(TLSFailure)
    }

    let fd: Int32
    private(set) var tls: TLSSession?
    private var closed = false
    /// The peer ended a TLS stream without close_notify (the socket just closed).
    private(set) var endedWithoutCloseNotify = false

    init(fd: Int32) { self.fd = fd }

    deinit { close() }

    /// The TLS handshake with `session` over this socket, each wait at most `wait` seconds and
    /// all of it at most `total`.
    func handshake(_ session: TLSSession, wait: TimeInterval, total: TimeInterval) throws {
        tls = session
        let end = DispatchTime.now().uptimeNanoseconds &+ UInt64(max(0, total) * 1e9)
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < end else { throw Failure.timeout }
            let step = min(end, now &+ UInt64(max(0, wait) * 1e9))
            switch session.handshake() {
            case .done: return
            case .wantRead: try self.wait(POLLIN, until: step)
            case .wantWrite: try self.wait(POLLOUT, until: step)
            case .closed:
                throw Failure.tls(TLSFailure(code: "ConnectionClosed", reason: "the server closed the connection during the TLS handshake"))
            case .failed(let f): throw Failure.tls(f)
            }
        }
    }

    /// Up to `n` bytes into `p`; 0 at the end of the stream. Waits (every poll, however many libssl
    /// asks for) end at `end` (monotonic nanoseconds): then `Failure.timeout`. Bytes already
    /// there are returned whatever the time.
    func read(_ p: UnsafeMutableRawPointer, _ n: Int, until end: UInt64) throws -> Int {
        while true {
            if let tls {
                // libssl's buffered bytes come first: a poll is made only when it wants more.
                switch tls.read(p, n) {
                case .done(let k): return k
                case .wantRead: try wait(POLLIN, until: end)
                case .wantWrite: try wait(POLLOUT, until: end)
                case .closed(let notify):
                    if !notify { endedWithoutCloseNotify = true }
                    return 0
                case .failed(let f): throw Failure.tls(f)
                }
            } else {
                let k = recv(fd, p, n, 0)
                if k >= 0 { return k }
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { try wait(POLLIN, until: end); continue }
                throw Failure.system(e)
            }
        }
    }

    /// Writes some of the `n` bytes at `p` (at least one); every wait ends at `end`, as for `read`.
    func write(_ p: UnsafeRawPointer, _ n: Int, until end: UInt64) throws -> Int {
        while true {
            if let tls {
                switch tls.write(p, n) {
                case .done(let k): return k
                case .wantRead: try wait(POLLIN, until: end)
                case .wantWrite: try wait(POLLOUT, until: end)
                case .closed: throw Failure.system(EPIPE)
                case .failed(let f): throw Failure.tls(f)
                }
            } else {
                let k = send(fd, p, n, Int32(MSG_NOSIGNAL))
                if k >= 0 { return k }
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { try wait(POLLOUT, until: end); continue }
                throw Failure.system(e)
            }
        }
    }

    /// Until the socket is ready for `events` (or has an error or hang-up, which the next call
    /// reports), at the latest until `end` (monotonic nanoseconds); `Failure.timeout` once it passed.
    private func wait(_ events: Int32, until end: UInt64) throws {
        var p = pollfd(fd: fd, events: Int16(events), revents: 0)
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < end else { throw Failure.timeout }
            let ms = Int32(clamping: min((end - now + 999_999) / 1_000_000, 1_000_000_000))
            let r = poll(&p, 1, ms)
            if r > 0 { return }
            if r == 0 { continue } // the clock decides (a poll may end a little early)
            if errno == EINTR { continue }
            throw Failure.system(errno)
        }
    }

    private var readable: Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) != 0
    }

    /// Whether an idle connection can carry another request: nothing arrived on it since its last
    /// answer. Over TLS, what arrived is handed to libssl first: records that carry no data
    /// (a TLS 1.3 session ticket, a key update) leave it usable; data, close_notify or the end of
    /// the stream do not.
    func isReusable() -> Bool {
        guard !closed else { return false }
        guard let tls else { return !readable }
        guard tls.established, !tls.broken else { return false }
        for _ in 0..<8 {
            if tls.hasPendingData { return false }
            if !readable && !tls.hasBufferedInput { return true }
            var byte: UInt8 = 0
            switch tls.peek(&byte, 1) {
            case .wantRead: continue
            default: return false
            }
        }
        return false
    }

    /// close_notify (TLS), then the socket; once.
    func close() {
        guard !closed else { return }
        closed = true
        tls?.shutdown()
        Glibc.close(fd)
    }
}

private extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so after
/// the first multi-MiB body every later one comes from the heap arenas of the threads that
/// allocated it, which keep it: measured, 64 ranged GETs of 8 MiB left the process 59 MiB larger.
/// A fixed 1 MiB threshold keeps large bodies in mmap'd blocks that go back to the system when
/// freed (the same run: +18 MiB). Set once, when the first transport is made.
enum HeapSetting {
    private static let once: Void = {
        #if os(Linux)
        // mallopt is in <malloc.h>, which the Glibc module does not import; M_MMAP_THRESHOLD is -3.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        if let f = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
            _ = unsafeBitCast(f, to: Mallopt.self)(-3, 1 << 20)
        }
        #endif
    }()

    static func apply() { once }
}
