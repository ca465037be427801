// HTTP/1.1 over a plain TCP socket, for `http://` endpoints (moto, MinIO or Ceph RGW on a private
// network). The request body is written from the caller's buffer and a response body with a
// Content-Length is read straight into one buffer of that size, in reads of up to 1 MiB; so a
// part or a ranged read costs its size once in memory and a few system calls per MiB. URLSession
// on Linux costs about twice a body in memory and, measured on an 8 MiB ranged GET, receives in
// 8 KiB pieces with five or six system calls and a thread hand-off per piece (libcurl's multi
// handle driven through dispatch sources); against moto sharing 2 cores, that CPU was the gap to
// the AWS CLI. `https://` is not handled here (no TLS): `DefaultHTTPTransport` sends it through
// URLSession.
//
// Supported: Content-Length and chunked response bodies, a body read to the end of the connection,
// interim 1xx answers (at most 8), HEAD/204/304 without a body, keep-alive reuse of idle connections
// (an idle connection the server closed is detected before reuse; a reused connection that dies
// before any byte of the answer is retried once on a new one, a request that is not
// `idempotent` only when it was not wholly written), `request.timeout` as the longest
// wait of each read or write. A request whose body is not streamed must end within
// `requestDeadline` (default 30 min); a streamed body must bring at least `minimumProgressBytes`
// (64 KiB) in every `progressWindow` (120 s) once it has begun (both checked after each read or
// write, so a silent server is caught by `request.timeout` and a trickling one at most one
// `request.timeout` late). A streamed 2xx body (`request.responseSink`) goes to the sink in pieces
// of at most 1 MiB whatever its framing (Content-Length, chunked, to the end of the connection),
// so memory stays bounded whatever its size. Framing: chunked decoding only when the
// Transfer-Encoding values joined are exactly `chunked` (any other coding: read to the end, no
// reuse); a connection is not kept after an answer with both Transfer-Encoding and
// Content-Length, after a 101, or when bytes follow the body. Request bodies always go with
// Content-Length (never chunked: S3 refuses it).
#if canImport(Glibc)
import Glibc
#endif
import Foundation

public final class SocketHTTPTransport: HTTPTransport, @unchecked Sendable {
    public static let shared = SocketHTTPTransport()

    /// Longest status line + header block accepted from a server.
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
    private let lock = NSLock()
    private var idle: [String: [Int32]] = [:]

    public init(maximumIdleConnectionsPerHost: Int = 16, connectTimeout: TimeInterval = 10, requestDeadline: TimeInterval = 1800,
                minimumProgressBytes: Int = 64 * 1024, progressWindow: TimeInterval = 120) {
        HeapSetting.apply()
        maximumIdlePerHost = maximumIdleConnectionsPerHost
        self.connectTimeout = connectTimeout
        self.requestDeadline = requestDeadline
        self.minimumProgressBytes = minimumProgressBytes
        self.progressWindow = progressWindow
    }

    deinit {
        for fds in idle.values { for fd in fds { close(fd) } }
    }

    public func holdsBodiesOnce(for url: URL) -> Bool { url.scheme?.lowercased() == "http" }

    public func streamsResponseBodies(for url: URL) -> Bool { url.scheme?.lowercased() == "http" }

    // MARK: sending

    public func send(_ request: HTTPRequest) throws -> HTTPResponse {
        let target = try Target(request)
        let head = Self.head(request, target)
        // A kept-alive connection may have been closed by the server since: if it dies before any
        // byte of the answer, the request goes once more on a new connection (one that is not
        // idempotent only if it was not wholly written: else the server may have run it).
        if let fd = takeIdle(target.poolKey) {
            do {
                return try exchange(fd, reused: true, request, target, head)
            } catch is StaleConnection {}
        }
        let fd = try connect(target, request)
        return try exchange(fd, reused: false, request, target, head)
    }

    /// A reused connection died before any byte of the answer.
    private struct StaleConnection: Error {}

    private func exchange(_ fd: Int32, reused: Bool, _ request: HTTPRequest, _ target: Target, _ head: [UInt8]) throws -> HTTPResponse {
        var keep = false
        defer { if keep { putIdle(fd, target.poolKey) } else { close(fd) } }
        // The request's timeout as the longest wait of each read and write (a reused connection
        // may have carried a request with another).
        let timeout = max(0.001, request.timeout)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // The whole request is bounded too (a server trickling a byte per `timeout` would not be).
        let conn = Connection(fd: fd, request: request, transport: self)
        do {
            if request.body.count <= 64 * 1024 {
                var all = head
                all.append(contentsOf: request.body)
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
                let (kept, cut) = try conn.readCapped(limit) { chunked ? try conn.readChunked($0) : try conn.readToEnd($0) }
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
            body = isError ? try conn.readCapped(limit) { try conn.readToEnd($0) }.0 : try conn.readToEnd(limit: limit)
        }
        return (HTTPResponse(status: status, headers: headers, body: body), reusable && conn.cleanEnd)
    }

    /// The Content-Length, if the answer has one (an answer with Transfer-Encoding ignores it).
    private func contentLength(_ headers: HTTPHeaders, _ request: HTTPRequest, _ target: Target) throws -> Int? {
        guard let cl = headers.values("content-length").first else { return nil }
        let values = Set(headers.values("content-length").map { $0.trimmingCharacters(in: .whitespaces) })
        let text = cl.trimmingCharacters(in: .whitespaces)
        guard values.count == 1, !text.isEmpty, text.allSatisfy(\.isASCIIDigit), let v = UInt64(text), let n = Int(exactly: v) else {
            throw transportError(request, "MalformedResponse", "\(target.hostPort): invalid Content-Length \(headers.values("content-length"))")
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
            throw transportError(request, "MalformedResponse", "not an HTTP/1.x status line: \(statusLine.prefix(80))")
        }
        var headers = HTTPHeaders()
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                  !line[..<colon].contains(where: { $0 == " " || $0 == "\t" }) else {
                throw transportError(request, "MalformedResponse", "a header line without a name: \(line.prefix(80))")
            }
            headers.add(String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return (String(parts[0]), status, headers)
    }

    // MARK: the request

    /// Where a request goes: host, port and the request-target exactly as signed.
    struct Target {
        let host: String
        let port: UInt16
        let hostHeader: String
        let requestTarget: String
        var poolKey: String { "\(host):\(port)" }
        var hostPort: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

        init(_ request: HTTPRequest) throws {
            let url = request.url
            guard url.scheme?.lowercased() == "http", let host = url.host, !host.isEmpty else {
                throw AWSError(kind: .configuration, service: "http", operation: request.method, code: "UnsupportedURL",
                               message: "\(url.scheme ?? "?")://\(url.host ?? ""): the socket transport sends http:// only (https goes through URLSession)")
            }
            let port = url.port ?? 80
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

    static func head(_ request: HTTPRequest, _ target: Target) -> [UInt8] {
        var s = "\(request.method) \(target.requestTarget) HTTP/1.1\r\n"
        var h = request.headers
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

    private func takeIdle(_ key: String) -> Int32? {
        while true {
            lock.lock()
            guard var fds = idle[key], let fd = fds.popLast() else { lock.unlock(); return nil }
            idle[key] = fds
            lock.unlock()
            // An idle connection must have nothing to read: readable means the server closed it
            // (or sent something unasked for); either way it is not reused.
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 0) == 0 { return fd }
            close(fd)
        }
    }

    private func putIdle(_ fd: Int32, _ key: String) {
        lock.lock()
        var fds = idle[key] ?? []
        if fds.count < maximumIdlePerHost {
            fds.append(fd)
            idle[key] = fds
            lock.unlock()
        } else {
            lock.unlock()
            close(fd)
        }
    }

    private func connect(_ target: Target, _ request: HTTPRequest) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(target.host, String(target.port), &hints, &list)
        guard rc == 0, let first = list else {
            throw transportError(request, "TransportError", "\(target.hostPort): cannot resolve: \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError: Int32 = 0
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
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
            // Blocking from here on, with the request's timeout as the longest wait per read/write.
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            return fd
        }
        let code = lastError == ECONNREFUSED ? "ConnectionRefused" : lastError == ETIMEDOUT ? "Timeout" : "TransportError"
        throw transportError(request, code, "\(target.hostPort): cannot connect: \(String(cString: strerror(lastError)))")
    }

    fileprivate func transportError(_ request: HTTPRequest, _ code: String, _ message: String) -> AWSError {
        AWSError(kind: .transport, service: "http", operation: request.method, code: code, message: "http://" + message)
    }

    /// One connection's reads and writes, with a buffer for what was read past the answer head.
    fileprivate final class Connection {
        let fd: Int32
        let request: HTTPRequest
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

        init(fd: Int32, request: HTTPRequest, transport: SocketHTTPTransport) {
            self.fd = fd
            self.request = request
            self.transport = transport
            deadline = Self.now() &+ Self.nanoseconds(transport.requestDeadline)
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

        private var hostPort: String { "\(request.url.host ?? "?"):\(request.url.port ?? 80)" }

        private func failure(_ what: String, _ err: Int32) -> AWSError {
            let code = err == EAGAIN || err == EWOULDBLOCK ? "Timeout" : "TransportError"
            let why = code == "Timeout" ? "no progress in \(request.timeout) s" : String(cString: strerror(err))
            return transport.transportError(request, code, "\(hostPort): \(what): \(why)")
        }

        func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

        func write(_ bytes: UnsafeRawBufferPointer) throws {
            var at = 0
            while at < bytes.count {
                let n = Glibc.send(fd, bytes.baseAddress! + at, bytes.count - at, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw failure("sending the request", errno)
                }
                at += n
                try progressed(0, "sending the request")
            }
        }

        /// Reads once into `buffer`; false at the end of the connection.
        private func fill(_ what: String) throws -> Bool {
            if chunk.isEmpty { chunk = [UInt8](repeating: 0, count: 64 * 1024) }
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw failure(what, errno)
                }
                if n == 0 { sawEOF = true; return false }
                buffer.append(contentsOf: chunk[0..<n])
                try progressed(n, what)
                return true
            }
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
                    let r = recv(fd, dst.baseAddress! + at, min(n - at, SocketHTTPTransport.readSize), 0)
                    if r < 0 {
                        if errno == EINTR { continue }
                        throw failure("reading the body (\(at) of \(n) bytes)", errno)
                    }
                    if r == 0 {
                        sawEOF = true
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
            defer { piece.deallocate() }
            while at < n {
                let r = recv(fd, piece.baseAddress!, min(n - at, piece.count), 0)
                if r < 0 {
                    if errno == EINTR { continue }
                    throw failure("reading the body (\(at) of \(n) bytes)", errno)
                }
                if r == 0 {
                    sawEOF = true
                    throw transport.transportError(request, "ConnectionClosed", "\(hostPort): the connection ended after \(at) of \(n) body bytes")
                }
                try handOver { try deliver(UnsafeRawBufferPointer(rebasing: piece[0..<r])) }
                at += r
                try progressed(r, "reading the body")
            }
        }

        /// A body that ends with the connection, to `deliver` in pieces of up to `readSize`.
        func readToEnd(_ deliver: (UnsafeRawBufferPointer) throws -> Void) throws {
            if !buffer.isEmpty {
                try buffer.withUnsafeBytes { p in try handOver { try deliver(p) } }
                buffer = []
            }
            let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: SocketHTTPTransport.readSize, alignment: 16)
            defer { piece.deallocate() }
            while true {
                let r = recv(fd, piece.baseAddress!, piece.count, 0)
                if r < 0 {
                    if errno == EINTR { continue }
                    throw failure("reading the body", errno)
                }
                if r == 0 { sawEOF = true; return }
                try handOver { try deliver(UnsafeRawBufferPointer(rebasing: piece[0..<r])) }
                try progressed(r, "reading the body")
            }
        }

        /// A body that ends with the connection, held whole (up to `limit` bytes).
        func readToEnd(limit: Int) throws -> Data {
            var body = Data()
            try readToEnd { p in
                try checkSize(body.count + p.count, limit)
                body.append(contentsOf: p)
            }
            return body
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
                    throw transport.transportError(request, "MalformedResponse", "\(hostPort): bad chunk size line \(String(decoding: line.prefix(40), as: UTF8.self))")
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

        /// A chunked body held whole (up to `limit` bytes).
        func readChunked(limit: Int) throws -> Data {
            var body = Data()
            try readChunked(limit: limit) { body.append(contentsOf: $0) }
            return body
        }
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
