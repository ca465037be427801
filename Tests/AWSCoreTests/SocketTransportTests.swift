#if canImport(Glibc)
import Glibc
#endif
import AWSCore
import Foundation
import XCTest

/// A loopback HTTP server scripted per connection: each accepted connection runs `script` on its
/// own thread. Lets the tests send what real servers send (chunked bodies, 100 Continue, a
/// keep-alive connection closed while idle, a truncated body, garbage) to `SocketHTTPTransport`.
final class ScriptedHTTPServer: @unchecked Sendable {
    final class Conn {
        let fd: Int32
        var buffer: [UInt8] = []
        init(fd: Int32) { self.fd = fd }

        /// One request: its head (request line and headers, as text) and its Content-Length body.
        func readRequest() -> (head: String, body: [UInt8])? {
            while true {
                if let end = find([13, 10, 13, 10]) {
                    let head = String(decoding: buffer[0..<end], as: UTF8.self)
                    buffer.removeFirst(end + 4)
                    var length = 0
                    for line in head.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
                        length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? 0
                    }
                    while buffer.count < length { guard fill() else { return nil } }
                    let body = Array(buffer[0..<length])
                    buffer.removeFirst(length)
                    return (head, body)
                }
                guard fill() else { return nil }
            }
        }

        private func find(_ pattern: [UInt8]) -> Int? {
            guard buffer.count >= pattern.count else { return nil }
            for i in 0...(buffer.count - pattern.count) where Array(buffer[i..<i + pattern.count]) == pattern { return i }
            return nil
        }

        private func fill() -> Bool {
            var b = [UInt8](repeating: 0, count: 65536)
            let n = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { return false }
            buffer.append(contentsOf: b[0..<n])
            return true
        }

        /// False once the client has gone.
        @discardableResult func write(_ s: String) -> Bool { write(Array(s.utf8)) }
        @discardableResult func write(_ bytes: [UInt8]) -> Bool {
            var at = 0
            while at < bytes.count {
                let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + at, bytes.count - at, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return false }
                at += n
            }
            return true
        }
    }

    let port: UInt16
    private let listener: Int32
    private let lock = NSLock()
    private var _accepted = 0
    private var _heads: [String] = []
    var accepted: Int { lock.lock(); defer { lock.unlock() }; return _accepted }
    /// Every request head read through `Conn.readRequest` by a script that recorded it.
    var heads: [String] { lock.lock(); defer { lock.unlock() }; return _heads }
    func record(_ head: String) { lock.lock(); _heads.append(head); lock.unlock() }

    init(_ script: @escaping @Sendable (Conn, Int, ScriptedHTTPServer) -> Void) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) == 0 && listen(listener, 16) == 0 && getsockname(listener, $0, &len) == 0 }
        }
        guard ok else { close(listener); throw NSError(domain: "ScriptedHTTPServer", code: Int(errno)) }
        self.listener = listener
        port = UInt16(bigEndian: addr.sin_port)
        Thread.detachNewThread { [weak self] in
            while true {
                let fd = accept(listener, nil, nil)
                if fd < 0 { return }
                guard let self else { close(fd); return }
                self.lock.lock(); self._accepted += 1; let n = self._accepted; self.lock.unlock()
                Thread.detachNewThread {
                    script(Conn(fd: fd), n, self)
                    close(fd)
                }
            }
        }
    }

    deinit { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

    var base: String { "http://127.0.0.1:\(port)" }
}

final class SocketTransportTests: XCTestCase {
    let transport = SocketHTTPTransport(maximumIdleConnectionsPerHost: 4)

    func get(_ server: ScriptedHTTPServer, _ path: String = "/o", method: String = "GET", body: Data = Data(), timeout: TimeInterval = 10) throws -> HTTPResponse {
        try transport.send(HTTPRequest(method: method, url: URL(string: server.base + path)!, body: body, timeout: timeout))
    }

    func testAContentLengthBodyBothWaysAndTheRequestAsSigned() throws {
        let body = Data((0..<(3 << 20) + 17).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        let server = try ScriptedHTTPServer { c, _, s in
            guard let (head, got) = c.readRequest() else { return }
            s.record(head)
            c.write("HTTP/1.1 200 OK\r\nContent-Length: \(got.count)\r\nConnection: close\r\n\r\n")
            c.write(got)
        }
        var h = HTTPHeaders()
        h.add("X-Amz-Date", "20261205T000000Z")
        let url = URL(string: server.base + "/bucket/dir/a%20b%2Bc%24~%C3%A9%3D%26.txt?partNumber=2&uploadId=a%2Fb")!
        let r = try transport.send(HTTPRequest(method: "PUT", url: url, headers: h, body: body))
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, body)
        let head = try XCTUnwrap(server.heads.first)
        let lines = head.components(separatedBy: "\r\n")
        // The path and query go exactly as signed (percent-encoded once, not re-encoded or decoded).
        XCTAssertEqual(lines[0], "PUT /bucket/dir/a%20b%2Bc%24~%C3%A9%3D%26.txt?partNumber=2&uploadId=a%2Fb HTTP/1.1")
        XCTAssertTrue(lines.contains("Host: 127.0.0.1:\(server.port)"))
        XCTAssertTrue(lines.contains("Content-Length: \(body.count)"))
        XCTAssertTrue(lines.contains("X-Amz-Date: 20261205T000000Z"))
        XCTAssertTrue(lines.contains("Accept-Encoding: identity"))
        XCTAssertFalse(lines.contains { $0.lowercased().hasPrefix("transfer-encoding") })
    }

    func testAChunkedBodyWithExtensionsAndTrailersIsDecoded() throws {
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            c.write("5;name=value\r\nhello\r\n")
            c.write("1\r\n \r\n")
            c.write("A\r\n0123456789\r\n")
            c.write("0\r\nX-Trailer: t\r\n\r\n")
        }
        let r = try get(server)
        XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "hello 0123456789")
    }

    func testABodyThatEndsWithTheConnection() throws {
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end")
        }
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "to the end")
    }

    func testKeepAliveReusesTheConnectionAndHeadHasNoBody() throws {
        let server = try ScriptedHTTPServer { c, _, s in
            while let (head, _) = c.readRequest() {
                s.record(head)
                if head.hasPrefix("HEAD") {
                    c.write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                } else {
                    c.write("HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing")
                }
            }
        }
        let h = try get(server, method: "HEAD")
        XCTAssertEqual(h.status, 200)
        XCTAssertEqual(h.body.count, 0)
        XCTAssertEqual(h.headers["content-length"], "1000")
        let g = try get(server)
        XCTAssertEqual(g.status, 404)
        XCTAssertEqual(String(decoding: g.body, as: UTF8.self), "missing")
        XCTAssertEqual(try get(server, method: "HEAD").status, 200)
        XCTAssertEqual(server.heads.count, 3)
        XCTAssertEqual(server.accepted, 1, "all three requests on one kept-alive connection")
    }

    func testAKeptAliveConnectionTheServerClosedIsReplacedWithoutAnError() throws {
        // The first connection answers once and then closes while idle, as servers do after their
        // keep-alive timeout; the next request must go on a new connection, not fail.
        let server = try ScriptedHTTPServer { c, n, _ in
            guard c.readRequest() != nil else { return }
            c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n#\(n)")
            if n == 1 { return }
            while c.readRequest() != nil { c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n#\(n)") }
        }
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "#1")
        // Whether the close has arrived before the next request (the idle check drops the
        // connection) or after it was sent (no byte of an answer: sent again on a new one), the
        // request succeeds.
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "#2")
        XCTAssertEqual(server.accepted, 2)
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "#2")
        XCTAssertEqual(server.accepted, 2)
    }

    func testInterimAnswersAreSkipped() throws {
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        }
        let r = try get(server, method: "PUT", body: Data("x".utf8))
        XCTAssertEqual(r.status, 201)
        XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "ok")
    }

    func testATruncatedBodyIsATransportError() throws {
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n")
            c.write([UInt8](repeating: 1, count: 50))
        }
        XCTAssertThrowsError(try get(server)) { e in
            let e = e as? AWSError
            XCTAssertEqual(e?.kind, .transport)
            XCTAssertEqual(e?.code, "ConnectionClosed")
            XCTAssertTrue(e?.message.contains("50 of 100") ?? false, e?.message ?? "")
            XCTAssertEqual(e?.isRetryable, true)
        }
    }

    func testMalformedAnswersAreRefused() throws {
        for answer in ["SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n", "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
                       "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n",
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\n",
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                       // Only hex digits (Int(_:radix:) alone takes a sign).
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-0\r\n\r\n",
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"] {
            let server = try ScriptedHTTPServer { c, _, _ in
                _ = c.readRequest()
                c.write(answer)
            }
            XCTAssertThrowsError(try get(server), answer) { e in
                XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse", "\(answer): \(e)")
            }
        }
    }

    func testAnOversizedHeadIsRefused() throws {
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 200 OK\r\n")
            for _ in 0..<2000 { c.write("X-Filler: " + String(repeating: "a", count: 60) + "\r\n") }
            c.write("\r\n")
        }
        XCTAssertThrowsError(try get(server)) { e in XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse") }
    }

    func testNoAnswerWithinTheTimeoutIsATimeout() throws {
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            // Never answers; holds the connection until the client gives up.
            _ = c.readRequest()
        }
        XCTAssertThrowsError(try get(server, timeout: 0.3)) { e in
            XCTAssertEqual((e as? AWSError)?.kind, .transport)
            XCTAssertEqual((e as? AWSError)?.code, "Timeout")
        }
    }

    func testARefusedConnectionIsNamed() throws {
        // A port that was free a moment ago: nothing listens there.
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) == 0 && getsockname(s, $0, &len) == 0 } }
        let port = UInt16(bigEndian: addr.sin_port)
        close(s)
        XCTAssertThrowsError(try transport.send(HTTPRequest(method: "GET", url: URL(string: "http://127.0.0.1:\(port)/x")!))) { e in
            XCTAssertEqual((e as? AWSError)?.kind, .transport)
            XCTAssertEqual((e as? AWSError)?.code, "ConnectionRefused")
        }
    }

    func testHTTPSIsNeverSentInTheClearAndTheDefaultRoutesBothSchemesToTheSocketTransport() throws {
        // An https:// URL whose server speaks plain HTTP: the first bytes on the wire are a TLS
        // ClientHello (a handshake record, 0x16 0x03), never the request; the handshake fails,
        // finally (no retry), with a reason that names the likely mistake.
        let first = LockedBytes()
        let server = try ScriptedHTTPServer { c, _, _ in
            var b = [UInt8](repeating: 0, count: 4096)
            let n = b.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { first.set(Array(b[0..<n])) }
            c.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        XCTAssertThrowsError(try transport.send(HTTPRequest(method: "GET", url: URL(string: "https://127.0.0.1:\(server.port)/secret-path")!))) { e in
            let e = e as? AWSError
            XCTAssertEqual(e?.kind, .transport)
            XCTAssertEqual(e?.code, "TLSHandshakeFailed", "\(String(describing: e))")
            XCTAssertTrue(e?.message.contains("https://127.0.0.1:\(server.port)") ?? false, "\(String(describing: e))")
            XCTAssertTrue(e?.message.contains("not a TLS server") ?? false, "\(String(describing: e))")
            XCTAssertEqual(e?.isRetryable, false)
        }
        XCTAssertEqual(Array(first.value.prefix(2)), [0x16, 0x03])
        XCTAssertFalse(String(decoding: first.value, as: UTF8.self).contains("secret-path"))
        // Other schemes are refused before anything is sent.
        XCTAssertThrowsError(try transport.send(HTTPRequest(method: "GET", url: URL(string: "ftp://127.0.0.1:9/x")!))) { e in
            XCTAssertEqual((e as? AWSError)?.kind, .configuration)
        }
        // Both schemes stream and hold a body once, through the default transport too.
        for u in ["http://127.0.0.1:9/", "https://s3.amazonaws.com/"] {
            let url = URL(string: u)!
            XCTAssertTrue(transport.holdsBodiesOnce(for: url), u)
            XCTAssertTrue(transport.streamsResponseBodies(for: url), u)
            XCTAssertTrue(DefaultHTTPTransport().holdsBodiesOnce(for: url), u)
            XCTAssertTrue(DefaultHTTPTransport().streamsResponseBodies(for: url), u)
        }
        let plain = RecordingHTTP(), tls = RecordingHTTP()
        let d = DefaultHTTPTransport(plain: plain, tls: tls)
        _ = try d.send(HTTPRequest(method: "GET", url: URL(string: "http://127.0.0.1:9/a")!))
        _ = try d.send(HTTPRequest(method: "GET", url: URL(string: "https://bucket.s3.us-east-1.amazonaws.com/b")!))
        XCTAssertEqual(plain.paths, ["/a"])
        XCTAssertEqual(tls.paths, ["/b"])
    }

    // MARK: streamed bodies, limits, framing

    /// Records what a sink is handed; signals `first` at the first piece.
    final class RecordingSink: HTTPBodySink, @unchecked Sendable {
        let first = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var _statuses: [Int] = []
        private var _pieces: [Int] = []
        private var _bytes: [UInt8] = []
        var statuses: [Int] { lock.lock(); defer { lock.unlock() }; return _statuses }
        var pieces: [Int] { lock.lock(); defer { lock.unlock() }; return _pieces }
        var bytes: [UInt8] { lock.lock(); defer { lock.unlock() }; return _bytes }
        func begin(status: Int, headers: HTTPHeaders) throws { lock.lock(); _statuses.append(status); lock.unlock() }
        func receive(_ bytes: UnsafeRawBufferPointer) throws {
            lock.lock()
            if _pieces.isEmpty { first.signal() }
            _pieces.append(bytes.count)
            _bytes.append(contentsOf: bytes)
            lock.unlock()
        }
    }

    func testChunkedAndCloseDelimitedBodiesGoToTheSinkPieceByPiece() throws {
        let body = (0..<(6 << 20) + 5).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        for chunked in [true, false] {
            let sink = RecordingSink()
            // The server sends the first 3 MiB, then waits until the sink has had a piece: a
            // transport that collected the body whole first would never hand it one.
            let sawPieceFirst = LockedFlag()
            let server = try ScriptedHTTPServer { c, _, _ in
                _ = c.readRequest()
                c.write("HTTP/1.1 200 OK\r\n" + (chunked ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n") + "\r\n")
                let first = Array(body[0..<(3 << 20)])
                c.write(chunked ? Array("\(String(first.count, radix: 16))\r\n".utf8) + first + Array("\r\n".utf8) : first)
                if sink.first.wait(timeout: .now() + 60) == .success { sawPieceFirst.set() }
                var at = 3 << 20
                var size = 1
                while at < body.count {
                    // Chunks from 1 byte to a few MiB (those cut into pieces of at most readSize).
                    let n = min(size, body.count - at)
                    let piece = Array(body[at..<at + n])
                    c.write(chunked ? Array("\(String(n, radix: 16));x=y\r\n".utf8) + piece + Array("\r\n".utf8) : piece)
                    at += n
                    size = size >= 2 << 20 ? 1 : size * 7
                }
                if chunked { c.write("0\r\nX-Checksum: none\r\n\r\n") }
            }
            let r = try transport.send(HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!, responseSink: sink))
            XCTAssertTrue(r.bodyStreamed)
            XCTAssertEqual(r.body.count, 0)
            XCTAssertEqual(sink.statuses, [200])
            XCTAssertTrue(sawPieceFirst.value, "chunked \(chunked): the sink had nothing before the whole body had come")
            XCTAssertTrue(sink.bytes == body, "chunked \(chunked)")
            XCTAssertLessThanOrEqual(sink.pieces.max() ?? 0, SocketHTTPTransport.readSize, "chunked \(chunked)")
            XCTAssertGreaterThan(sink.pieces.count, 6)
        }
    }

    func testEndlessInterimAnswersAreRefused() throws {
        for count in [SocketHTTPTransport.maximumInterimAnswers, 1000] {
            let server = try ScriptedHTTPServer { c, _, _ in
                _ = c.readRequest()
                for _ in 0..<count { guard c.write("HTTP/1.1 100 Continue\r\n\r\n") else { return } }
                c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            }
            if count == SocketHTTPTransport.maximumInterimAnswers {
                XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "ok")
            } else {
                XCTAssertThrowsError(try get(server)) { e in
                    XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse")
                    XCTAssertTrue((e as? AWSError)?.message.contains("interim") ?? false, "\(e)")
                }
            }
        }
    }

    func testATrailerFloodIsRefused() throws {
        for streamed in [false, true] {
            let server = try ScriptedHTTPServer { c, _, _ in
                _ = c.readRequest()
                c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
                for i in 0..<100_000 { guard c.write("X-T\(i): a\r\n") else { return } }
                c.write("\r\n")
            }
            let sink = RecordingSink()
            XCTAssertThrowsError(try transport.send(HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!, responseSink: streamed ? sink : nil))) { e in
                XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse")
                XCTAssertTrue((e as? AWSError)?.message.contains("trailers") ?? false, "\(e)")
            }
        }
    }

    func testATricklingServerFailsAtTheRequestDeadline() throws {
        // Each read waits at most 10 s and a byte comes every 20 ms: only the whole-request
        // deadline (0.5 s here) stops it, in the head or in a body that is not streamed.
        let t = SocketHTTPTransport(requestDeadline: 0.5)
        for head in [true, false] {
            let server = try ScriptedHTTPServer { c, _, _ in
                _ = c.readRequest()
                let text = head ? "HTTP/1.1 200 OK\r\nX-Slow: " + String(repeating: "a", count: 60_000) + "\r\n\r\n"
                    : "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + String(repeating: "b", count: 100_000)
                for b in text.utf8 {
                    guard c.write([b]) else { return }
                    usleep(20_000)
                }
            }
            XCTAssertThrowsError(try t.send(HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!, timeout: 10))) { e in
                XCTAssertEqual((e as? AWSError)?.kind, .transport)
                XCTAssertEqual((e as? AWSError)?.code, "Timeout")
                XCTAssertTrue((e as? AWSError)?.message.contains("took longer than 0.5 s") ?? false, "\(e)")
            }
        }
    }

    func testATricklingStreamedBodyFailsTheProgressCheck() throws {
        // A streamed body has no deadline (it lasts as long as the reader reads), but each
        // window (0.3 s here) must bring 1000 bytes; a byte every 20 ms does not.
        let t = SocketHTTPTransport(requestDeadline: 0.2, minimumProgressBytes: 1000, progressWindow: 0.3)
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + String(repeating: "c", count: 5000))
            for _ in 0..<95_000 {
                guard c.write([0x63]) else { return }
                usleep(20_000)
            }
        }
        let sink = RecordingSink()
        XCTAssertThrowsError(try t.send(HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!, timeout: 10, responseSink: sink))) { e in
            XCTAssertEqual((e as? AWSError)?.code, "Timeout")
            XCTAssertTrue((e as? AWSError)?.message.contains("fewer than the 1000 required") ?? false, "\(e)")
        }
        XCTAssertGreaterThanOrEqual(sink.bytes.count, 5000)
    }

    func testTimeASinkWaitsForItsReaderIsNotCountedAgainstTheServer() throws {
        // The sink holds its first piece 1.5 s (a reader busy elsewhere) while the progress window
        // is 1 s: the server, which sent what it could meanwhile, is not failed for it.
        let t = SocketHTTPTransport(minimumProgressBytes: 1000, progressWindow: 1)
        final class SlowSink: HTTPBodySink, @unchecked Sendable {
            let released = DispatchSemaphore(value: 0)
            private let lock = NSLock()
            private var _count = 0
            var count: Int { lock.lock(); defer { lock.unlock() }; return _count }
            func begin(status: Int, headers: HTTPHeaders) throws {}
            func receive(_ bytes: UnsafeRawBufferPointer) throws {
                lock.lock(); _count += bytes.count; let first = _count == bytes.count; lock.unlock()
                if first { Thread.sleep(forTimeInterval: 1.5); released.signal() }
            }
        }
        let sink = SlowSink()
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + String(repeating: "a", count: 100))
            usleep(100_000)
            c.write(String(repeating: "b", count: 100))
            _ = sink.released.wait(timeout: .now() + 30)
            c.write(String(repeating: "c", count: 1800))
        }
        let r = try t.send(HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!, timeout: 10, responseSink: sink))
        XCTAssertTrue(r.bodyStreamed)
        XCTAssertEqual(sink.count, 2000)
    }

    func testTransferCodingsOtherThanChunkedAreReadToTheEnd() throws {
        // gzip then chunked, in two fields: not `chunked` alone, so the body is what comes until the
        // connection ends, undecoded.
        let raw = "5\r\nhello\r\n0\r\n\r\n"
        let server = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + raw)
        }
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), raw)
        // chunked in two fields is chunked.
        let two = try ScriptedHTTPServer { c, _, _ in
            _ = c.readRequest()
            c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + raw)
        }
        XCTAssertEqual(String(decoding: try get(two).body, as: UTF8.self), "hello")
    }

    func testAmbiguousOrOverlongAnswersDoNotLeaveTheirConnectionForReuse() throws {
        let odd = ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                   "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"]
        for answer in odd {
            let server = try ScriptedHTTPServer { c, n, _ in
                var first = n == 1
                while c.readRequest() != nil {
                    guard c.write(first ? answer : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") else { return }
                    first = false
                }
            }
            let r = try get(server)
            XCTAssertEqual(String(decoding: r.body, as: UTF8.self), r.status == 101 ? "" : "ok", answer)
            XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "ok", answer)
            XCTAssertEqual(server.accepted, 2, answer)
            // A plain answer leaves it for reuse.
            XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "ok", answer)
            XCTAssertEqual(server.accepted, 2, answer)
        }
    }

    func testAStaleConnectionReplaysOnlyWhatMayRunTwice() throws {
        // The first connection answers one request, then reads the next and closes without an
        // answer (as a server whose keep-alive timer fired just as the request arrived).
        let server = try ScriptedHTTPServer { c, n, s in
            guard let (head, _) = c.readRequest() else { return }
            s.record(head)
            c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n#\(n)")
            if n == 1 {
                if let (head, _) = c.readRequest() { s.record(head) }
                return
            }
            while let (head, _) = c.readRequest() {
                s.record(head)
                c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n#\(n)")
            }
        }
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "#1")
        // A POST (CompleteMultipartUpload, KMS CreateKey) the server may have run is not sent again.
        XCTAssertThrowsError(try get(server, "/p?uploadId=u", method: "POST", body: Data("x".utf8))) { e in
            XCTAssertEqual((e as? AWSError)?.code, "ConnectionClosed")
            XCTAssertTrue((e as? AWSError)?.message.contains("not idempotent") ?? false, "\(e)")
        }
        XCTAssertEqual(server.heads.filter { $0.hasPrefix("POST") }.count, 1)
        XCTAssertEqual(server.accepted, 1)
        // The same stale connection under a GET: sent again on a new connection.
        XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "#2")
        // A POST marked idempotent (KMS Decrypt) is sent again too.
        let s2 = try ScriptedHTTPServer { c, n, s in
            while let (head, _) = c.readRequest() {
                s.record(head)
                if n == 1 && s.heads.count == 2 { return }
                c.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n#\(n)")
            }
        }
        XCTAssertEqual(String(decoding: try get(s2).body, as: UTF8.self), "#1")
        let r = try transport.send(HTTPRequest(method: "POST", url: URL(string: s2.base + "/d")!, body: Data("x".utf8), idempotent: true))
        XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "#2")
        XCTAssertEqual(s2.heads.filter { $0.hasPrefix("POST") }.count, 2)
    }

    func testAnErrorBodyIsCutAtItsBoundAndItsConnectionClosed() throws {
        let cap = SocketHTTPTransport.maximumErrorBodyBytes
        for chunked in [false, true] {
            let server = try ScriptedHTTPServer { c, n, _ in
                while c.readRequest() != nil {
                    if n == 1 {
                        let big = [UInt8](repeating: 0x45, count: 5 << 20)
                        if chunked {
                            c.write("HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n")
                            for _ in 0..<5 { guard c.write(Array("100000\r\n".utf8) + big[0..<(1 << 20)] + Array("\r\n".utf8)) else { return } }
                            c.write("0\r\n\r\n")
                        } else {
                            c.write("HTTP/1.1 500 Internal Server Error\r\nContent-Length: \(big.count)\r\n\r\n")
                            guard c.write(big) else { return }
                        }
                    } else {
                        c.write("HTTP/1.1 503 Slow Down\r\nContent-Length: 4\r\n\r\nslow")
                    }
                }
            }
            let r = try get(server)
            XCTAssertEqual(r.status, 500)
            XCTAssertEqual(r.body.count, cap, "chunked \(chunked)")
            // The rest was not read: the connection is not reused; a small error body leaves it reusable.
            XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "slow")
            XCTAssertEqual(String(decoding: try get(server).body, as: UTF8.self), "slow")
            XCTAssertEqual(server.accepted, 2, "chunked \(chunked)")
        }
    }

    func testA2xxBodyLargerThanExpectedIsRefused() throws {
        let answers = ["HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + String(repeating: "x", count: 1000),
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + String(repeating: "x", count: 1000) + "\r\n0\r\n\r\n",
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + String(repeating: "32\r\n" + String(repeating: "x", count: 50) + "\r\n", count: 20) + "0\r\n\r\n",
                       "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + String(repeating: "x", count: 1000)]
        for answer in answers {
            for limit in [100, 1000] {
                let server = try ScriptedHTTPServer { c, _, _ in
                    _ = c.readRequest()
                    c.write(answer)
                }
                var request = HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!)
                request.maximumResponseBytes = limit
                if limit == 1000 {
                    XCTAssertEqual(try transport.send(request).body.count, 1000, answer)
                } else {
                    XCTAssertThrowsError(try transport.send(request), answer) { e in
                        XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse", "\(e)")
                        XCTAssertTrue((e as? AWSError)?.message.contains("more than 100 bytes") ?? false, "\(e)")
                    }
                }
            }
        }
    }

    func testControlCharactersFromTheServerAreEscapedInErrors() throws {
        // Server and proxy text in an error message ends up on a terminal: ESC and the other
        // controls are shown as \xNN, never sent as they are.
        func controlFree(_ s: String) -> Bool { !s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F } }
        let answers: [(answer: String, shown: String)] = [
            ("HTTP/1.1 2x0 \u{1B}[31mred\r\n\r\n", #"not an HTTP/1.x status line: HTTP/1.1 2x0 \x1B[31mred"#),
            ("HTTP/1.1 200 OK\r\n\u{1B}]0;title\u{07}\r\n\r\n", #"a header line without a name: \x1B]0;title\x07"#),
            ("HTTP/1.1 200 OK\r\nContent-Length: 12\u{1B}[2J\r\n\r\n", #"invalid Content-Length 12\x1B[2J"#),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\u{1B}[2J\r\n", #"bad chunk size line zz\x1B[2J"#),
        ]
        for (answer, shown) in answers {
            let server = try ScriptedHTTPServer { c, _, s in
                guard let (head, _) = c.readRequest() else { return }
                s.record(head)
                c.write(answer)
            }
            XCTAssertThrowsError(try get(server), shown) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.code, "MalformedResponse", "\(String(describing: e))")
                XCTAssertTrue(e?.message.contains(shown) ?? false, "\(String(describing: e))")
                XCTAssertTrue(controlFree(e?.message ?? "\u{1B}"), "\(String(describing: e))")
            }
            XCTAssertEqual(server.heads.count, 1)
        }
        // A proxy's answer to CONNECT: its status line, its reason phrase.
        let connectAnswers: [(answer: String, code: String, shown: String)] = [
            ("HTTP/1.1 403 Forbidden\u{1B}[2J\u{1B}[H\r\n\r\n", "ProxyConnectRefused", #"refused CONNECT: HTTP 403 Forbidden\x1B[2J\x1B[H"#),
            ("HTTP/1.1 502 Bad\u{7F}Gateway\r\n\r\n", "ProxyConnectFailed", #"could not open the tunnel: HTTP 502 Bad\x7FGateway"#),
            ("HTTP/1.1 4\u{1B}3 x\r\n\r\n", "ProxyConnectFailed", #"no HTTP status line: HTTP/1.1 4\x1B3 x"#),
        ]
        for (answer, code, shown) in connectAnswers {
            let proxy = try ScriptedHTTPServer { c, _, s in
                guard let (head, _) = c.readRequest() else { return }
                s.record(head)
                c.write(answer)
            }
            let t = SocketHTTPTransport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(proxy.port)"]))
            XCTAssertThrowsError(try t.send(HTTPRequest(method: "GET", url: URL(string: "https://proxied-host:8443/x")!, timeout: 5)), shown) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.code, code, "\(String(describing: e))")
                XCTAssertTrue(e?.message.contains(shown) ?? false, "\(String(describing: e))")
                XCTAssertTrue(controlFree(e?.message ?? "\u{1B}"), "\(String(describing: e))")
            }
            XCTAssertEqual(proxy.heads.map { $0.components(separatedBy: "\r\n")[0] }, ["CONNECT proxied-host:8443 HTTP/1.1"])
        }
    }

    func testChunkedAndCloseDelimitedBodiesHeldWholeArriveIntactAcrossManyReads() throws {
        // Such bodies (a KMS answer may be one) grow in a buffer that is wiped whenever it moves
        // and when it is dropped; the wiping itself cannot be seen from here, only that every byte
        // arrives, in order, and that the size bound still holds.
        let n = (3 << 20) + 12345
        let body = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 11) }
        for chunked in [true, false] {
            let server = try ScriptedHTTPServer { c, _, _ in
                guard c.readRequest() != nil else { return }
                if chunked {
                    c.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    var at = 0, size = 1
                    while at < body.count {
                        let k = min(size, body.count - at)
                        guard c.write(Array(String(k, radix: 16).utf8) + [13, 10] + Array(body[at..<at + k]) + [13, 10]) else { return }
                        at += k
                        size = size * 3 + 1
                    }
                    c.write("0\r\n\r\n")
                } else {
                    c.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    for at in stride(from: 0, to: body.count, by: 7001) {
                        guard c.write(Array(body[at..<min(at + 7001, body.count)])) else { return }
                    }
                }
            }
            XCTAssertTrue(try get(server).body == Data(body), "chunked \(chunked)")
            var limited = HTTPRequest(method: "GET", url: URL(string: server.base + "/o")!)
            limited.maximumResponseBytes = n - 1
            XCTAssertThrowsError(try transport.send(limited), "chunked \(chunked)") { e in
                XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse", "\(e)")
            }
            // A small one, as a KMS answer is.
            let small = try ScriptedHTTPServer { c, _, _ in
                guard c.readRequest() != nil else { return }
                c.write(chunked ? "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n\"b\"\r\n1\r\n}\r\n0\r\n\r\n"
                                : "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\":\"b\"}")
            }
            XCTAssertEqual(String(decoding: try get(small).body, as: UTF8.self), #"{"a":"b"}"#)
        }
    }
}

final class LockedBytes: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: [UInt8] = []
    var value: [UInt8] { lock.lock(); defer { lock.unlock() }; return _value }
    func set(_ v: [UInt8]) { lock.lock(); _value = v; lock.unlock() }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var _value = false
    var value: Bool { lock.lock(); defer { lock.unlock() }; return _value }
    func set() { lock.lock(); _value = true; lock.unlock() }
}

final class RecordingHTTP: HTTPTransport, @unchecked Sendable {
    private let lock = NSLock()
    private var _paths: [String] = []
    var paths: [String] { lock.lock(); defer { lock.unlock() }; return _paths }
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        lock.lock(); _paths.append(request.url.path); lock.unlock()
        return HTTPResponse(status: 200, headers: HTTPHeaders(), body: Data())
    }
}
