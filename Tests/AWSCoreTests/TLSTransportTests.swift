#if canImport(Glibc)
import Glibc
#endif
import AWSCore
import BackupCrypto
import ByteCoding
import Foundation
import XCTest

// HTTPS through `SocketHTTPTransport` (TLS on libssl) against loopback servers with throwaway
// certificates: scripts/tls/testpki.sh makes a test CA and server certificates (localhost and
// its addresses, another name, an expired one, one from a CA nobody trusts) with the openssl CLI;
// scripts/tls/tlsfront.py terminates TLS (in front of moto for the S3 and KMS requests, or
// answering test paths itself) and counts connections, handshakes, SNI names and TLS versions;
// scripts/tls/connectproxy.py is an HTTP proxy (CONNECT and absolute form, optional Basic
// credentials). They need python3 and openssl (skipped without them, failed under
// HSMBACKUP_REQUIRE_EXTERNAL=1); the moto-backed tests need scripts/aws/with-moto.sh as well.

/// The throwaway PKI and the helper servers.
enum TLSFixture {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func script(_ path: String) -> String { repository.appendingPathComponent(path).path }

    static func requireTools() throws {
        for tool in ["python3", "openssl"] {
            let found = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
                .contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
            if !found {
                let why = "\(tool) is not on PATH: the TLS tests need python3 and the openssl CLI"
                if ProcessInfo.processInfo.environment["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" {
                    throw MissingExternal(description: why + ", and HSMBACKUP_REQUIRE_EXTERNAL=1")
                }
                throw XCTSkip(why)
            }
        }
    }

    private static let made: Result<String, Error> = Result {
        let dir = NSTemporaryDirectory() + "hsmb-tls-pki-" + UUID().uuidString
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["bash", script("scripts/tls/testpki.sh"), dir]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw MissingExternal(description: "scripts/tls/testpki.sh failed (\(p.terminationStatus))") }
        return dir
    }

    /// The directory of the PKI (made once per test process, in the temp directory).
    static func pki() throws -> String {
        try requireTools()
        return try made.get()
    }

    /// Trusts the test CA only.
    static func trust() throws -> TLSTrust { .bundle(path: try pki() + "/ca.pem", source: "the test CA") }

    /// A transport that trusts the test CA and ignores the environment's proxies.
    static func transport(trust: TLSTrust? = nil, proxies: ProxySettings = .direct, requestDeadline: TimeInterval = 1800) throws -> SocketHTTPTransport {
        SocketHTTPTransport(maximumIdleConnectionsPerHost: 4, requestDeadline: requestDeadline, trust: try trust ?? Self.trust(), proxies: proxies)
    }

    /// The test servers' bodies: byte i is i % 251.
    static func pattern(_ n: Int) -> Data {
        let cycle = Data((0..<251).map { UInt8($0) })
        var d = Data(capacity: n + 251)
        while d.count < n { d.append(cycle) }
        return d.prefix(n)
    }
}

/// A helper process that prints its port(s) on its first line; stopped when released.
class HelperProcess {
    let process = Process()
    let ports: [UInt16]

    init(arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        var line = [UInt8]()
        while true {
            let b = out.fileHandleForReading.readData(ofLength: 1)
            guard let c = b.first, c != 0x0a else { break }
            line.append(c)
        }
        ports = String(decoding: line, as: UTF8.self).split(separator: " ").compactMap { UInt16($0) }
        guard !ports.isEmpty else {
            process.terminate()
            throw MissingExternal(description: "\(arguments.first ?? "?") did not start")
        }
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
    }

    /// GET of a plain-HTTP stats path, as JSON (a transport of its own: no pooling, no proxy).
    func json(port: UInt16, path: String) throws -> [String: Any] {
        let t = SocketHTTPTransport(maximumIdleConnectionsPerHost: 0, proxies: .direct)
        let r = try t.send(HTTPRequest(method: "GET", url: URL(string: "http://127.0.0.1:\(port)\(path)")!))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: r.body) as? [String: Any])
    }
}

/// scripts/tls/tlsfront.py: `cert` is a name from testpki.sh (localhost, other, expired, untrusted).
final class TLSFront: HelperProcess {
    var port: UInt16 { ports[0] }

    init(cert: String = "localhost", upstream: String? = nil, host: String = "127.0.0.1", _ extra: [String] = []) throws {
        let pki = try TLSFixture.pki()
        var args = [TLSFixture.script("scripts/tls/tlsfront.py"), "--cert", "\(pki)/\(cert).pem", "--key", "\(pki)/\(cert).key", "--host", host]
        if let upstream { args += ["--upstream", upstream] }
        try super.init(arguments: args + extra)
    }

    func stats() throws -> [String: Any] { try json(port: ports[1], path: "/stats") }
    func count(_ key: String) throws -> Int { try XCTUnwrap(try stats()[key] as? Int, key) }
    func list(_ key: String) throws -> [String] { try XCTUnwrap(try stats()[key] as? [String], key) }
}

/// scripts/tls/connectproxy.py.
final class ConnectProxy: HelperProcess {
    var port: UInt16 { ports[0] }

    init(_ extra: [String] = []) throws {
        try TLSFixture.requireTools()
        try super.init(arguments: [TLSFixture.script("scripts/tls/connectproxy.py")] + extra)
    }

    func stats() throws -> [String: Any] { try json(port: port, path: "/__proxy/stats") }
    func connects() throws -> [String] { try XCTUnwrap(try stats()["connects"] as? [String]) }
}

final class TLSTransportTests: XCTestCase {
    func get(_ t: HTTPTransport, _ url: String, method: String = "GET", body: Data = Data(), timeout: TimeInterval = 20,
             sink: HTTPBodySink? = nil, idempotent: Bool? = nil) throws -> HTTPResponse {
        try t.send(HTTPRequest(method: method, url: URL(string: url)!, body: body, timeout: timeout, responseSink: sink, idempotent: idempotent))
    }

    /// A client whose retries would show: eight attempts, short backoff.
    func client(_ url: String, transport: HTTPTransport, service: String = "s3") -> AWSClient {
        AWSClient(service: service, region: "us-east-1", endpoint: URL(string: url)!,
                  credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: AWSSecretKey("secret")),
                  signingOptions: service == "s3" ? .s3 : .standard, transport: transport,
                  retry: RetryPolicy(maximumAttempts: 8, baseDelay: 0.001, maximumDelay: 0.01))
    }

    // MARK: S3 and KMS over HTTPS (moto behind the TLS front, signature checks on)

    func testS3RequestsOverHTTPSWithSignatureChecksAndTheCABundleFromAWS_CA_BUNDLE() throws {
        let moto = try MotoTransportTests.server()
        let front = try TLSFront(upstream: moto.endpoint.absoluteString)
        // The trust comes the way the CLI gets it: AWS_CA_BUNDLE.
        let trust = try TLSTrust.resolve(AWSEnvironment(variables: ["AWS_CA_BUNDLE": try TLSFixture.pki() + "/ca.pem"], home: "/nonexistent"))
        XCTAssertEqual(trust, .bundle(path: try TLSFixture.pki() + "/ca.pem", source: "AWS_CA_BUNDLE"))
        let t = try TLSFixture.transport(trust: trust)
        let https = MotoTransportTests.Server(endpoint: URL(string: "https://localhost:\(front.port)")!, credentials: moto.credentials)
        try MotoTransportTests.s3Requests(through: t, server: https)
        // Every request (about ten, a 3 MiB PUT and an error answer among them) on one kept-alive
        // TLS connection: one handshake, TLS 1.3, SNI localhost.
        XCTAssertGreaterThanOrEqual(try front.count("requests"), 9)
        XCTAssertGreaterThanOrEqual(try front.count("forwarded"), 9)
        XCTAssertEqual(try front.count("connections"), 1)
        XCTAssertEqual(try front.count("handshakes"), 1)
        XCTAssertEqual(try front.list("versions"), ["TLSv1.3"])
        XCTAssertEqual(try front.list("sni"), ["localhost"])
        // A wrong secret is still the service's answer (the signature is checked through TLS).
        let bad = AWSClient(service: "s3", region: "us-east-1", endpoint: https.endpoint,
                            credentials: AWSCredentials(accessKeyID: moto.credentials.accessKeyID, secretAccessKey: AWSSecretKey("wrong")),
                            signingOptions: .s3, transport: t)
        XCTAssertThrowsError(try bad.send(AWSRequest(method: "GET", path: "/", operation: "ListBuckets"))) { e in
            XCTAssertEqual((e as? AWSError)?.code, "SignatureDoesNotMatch", "\(e)")
        }
    }

    func testKMSRequestsOverHTTPSWithSignatureChecks() throws {
        let moto = try MotoTransportTests.server()
        let front = try TLSFront(upstream: moto.endpoint.absoluteString)
        let kms = AWSClient(service: "kms", region: "us-east-1", endpoint: URL(string: "https://localhost:\(front.port)")!,
                            credentials: moto.credentials, transport: try TLSFixture.transport(), retry: RetryPolicy(maximumAttempts: 2))
        func call(_ op: String, _ json: [String: Any], idempotent: Bool = true) throws -> [String: Any] {
            var h = HTTPHeaders()
            h.add("X-Amz-Target", "TrentService.\(op)")
            h.add("Content-Type", "application/x-amz-json-1.1")
            var r = AWSRequest(method: "POST", headers: h, body: try JSONSerialization.data(withJSONObject: json), operation: op)
            r.idempotent = idempotent
            return try XCTUnwrap(try JSONSerialization.jsonObject(with: try kms.send(r).body) as? [String: Any])
        }
        let created = try call("CreateKey", ["Description": "over TLS"], idempotent: false)
        let arn = try XCTUnwrap((created["KeyMetadata"] as? [String: Any])?["Arn"] as? String)
        let generated = try call("GenerateDataKey", ["KeyId": arn, "NumberOfBytes": 32, "EncryptionContext": ["purpose": "tls-test"]])
        let plaintext = try XCTUnwrap(generated["Plaintext"] as? String)
        let blob = try XCTUnwrap(generated["CiphertextBlob"] as? String)
        let decrypted = try call("Decrypt", ["CiphertextBlob": blob, "EncryptionContext": ["purpose": "tls-test"]])
        XCTAssertEqual(decrypted["Plaintext"] as? String, plaintext)
        XCTAssertEqual(Data(base64Encoded: plaintext)?.count, 32)
        XCTAssertEqual(try front.count("handshakes"), 1)
        XCTAssertEqual(try front.count("requests"), 3)
    }

    // MARK: connections

    func testKeepAliveOverTLSOneHandshakeForManyRequests() throws {
        let front = try TLSFront()
        let t = try TLSFixture.transport()
        for n in [0, 1, 1000, 300_000] {
            let r = try get(t, "https://localhost:\(front.port)/__tls/bytes?n=\(n)")
            XCTAssertEqual(r.status, 200)
            XCTAssertTrue(r.body == TLSFixture.pattern(n), "n=\(n)")
        }
        let big = Data((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        XCTAssertTrue(try get(t, "https://localhost:\(front.port)/__tls/echo", method: "PUT", body: big).body == big)
        XCTAssertEqual(try get(t, "https://localhost:\(front.port)/__tls/bytes?n=10", method: "HEAD").body.count, 0)
        XCTAssertEqual(try front.count("requests"), 6)
        XCTAssertEqual(try front.count("connections"), 1, "one kept-alive TLS connection")
        XCTAssertEqual(try front.count("handshakes"), 1)
        XCTAssertEqual(try front.list("versions"), ["TLSv1.3"])
    }

    func testAPooledTLSConnectionTheServerClosedIsDetectedBeforeReuse() throws {
        // The server closes a connection idle for 0.3 s: with close_notify, and (an abrupt close)
        // without. The next request is a POST that must not run twice: had the dead connection
        // been reused, it would have failed as not idempotent; it goes on a new connection.
        for notify in [true, false] {
            let front = try TLSFront(notify ? ["--idle-close", "0.3"] : ["--idle-close", "0.3", "--no-close-notify"])
            let t = try TLSFixture.transport()
            XCTAssertEqual(try get(t, "https://localhost:\(front.port)/__tls/bytes?n=5").body.count, 5)
            let deadline = Date().addingTimeInterval(10)
            while try front.count("idle_closes") < 1 && Date() < deadline { usleep(50_000) }
            XCTAssertEqual(try front.count("idle_closes"), 1, "notify \(notify)")
            usleep(100_000)
            let r = try get(t, "https://localhost:\(front.port)/__tls/echo", method: "POST", body: Data("once".utf8), idempotent: false)
            XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "once", "notify \(notify)")
            XCTAssertEqual(try front.count("connections"), 2, "notify \(notify)")
            XCTAssertEqual(try front.count("requests"), 2, "notify \(notify): the POST was sent once")
        }
    }

    func testAStaleTLSConnectionIsRetriedOnlyForWhatMayRunTwice() throws {
        // /__tls/drop-next: the server reads the next request on the connection and closes it
        // without an answer (its keep-alive timer fired as the request arrived).
        let front = try TLSFront()
        let t = try TLSFixture.transport()
        let base = "https://localhost:\(front.port)"
        XCTAssertEqual(String(decoding: try get(t, base + "/__tls/drop-next").body, as: UTF8.self), "ok")
        XCTAssertThrowsError(try get(t, base + "/__tls/echo", method: "POST", body: Data("x".utf8), idempotent: false)) { e in
            XCTAssertEqual((e as? AWSError)?.code, "ConnectionClosed", "\(e)")
            XCTAssertTrue((e as? AWSError)?.message.contains("not idempotent") ?? false, "\(e)")
            XCTAssertTrue((e as? AWSError)?.message.hasPrefix("https://localhost:\(front.port)") ?? false, "\(e)")
        }
        XCTAssertEqual(try front.count("connections"), 1)
        XCTAssertEqual(String(decoding: try get(t, base + "/__tls/drop-next").body, as: UTF8.self), "ok")
        XCTAssertEqual(try get(t, base + "/__tls/bytes?n=7").body, TLSFixture.pattern(7))
        XCTAssertEqual(try front.count("connections"), 3, "the GET went again on a new connection")
    }

    func testFramingStreamingAndSizeLimitsOverTLS() throws {
        let front = try TLSFront()
        let t = try TLSFixture.transport()
        let n = 5 << 20
        for chunked in [false, true] {
            let url = "https://localhost:\(front.port)/__tls/bytes?n=\(n)" + (chunked ? "&chunked=1" : "")
            XCTAssertTrue(try get(t, url).body == TLSFixture.pattern(n), "chunked \(chunked)")
            let sink = SocketTransportTests.RecordingSink()
            let r = try get(t, url, sink: sink)
            XCTAssertTrue(r.bodyStreamed)
            XCTAssertTrue(Data(sink.bytes) == TLSFixture.pattern(n), "chunked \(chunked)")
            XCTAssertLessThanOrEqual(sink.pieces.max() ?? 0, SocketHTTPTransport.readSize)
            var limited = HTTPRequest(method: "GET", url: URL(string: url)!)
            limited.maximumResponseBytes = n - 1
            XCTAssertThrowsError(try t.send(limited)) { e in XCTAssertEqual((e as? AWSError)?.code, "MalformedResponse", "\(e)") }
        }
        // One connection until the first refused body (not read, so not left for reuse), then another.
        XCTAssertEqual(try front.count("handshakes"), 2)
    }

    func testABodyEndingWithTheConnectionNeedsCloseNotify() throws {
        // A body delimited by the end of the connection is whole only if the server said so with
        // close_notify; a TLS stream that just stops may have been cut short.
        let front = try TLSFront()
        let t = try TLSFixture.transport()
        let n = 300_000
        let ok = "https://localhost:\(front.port)/__tls/eof?n=\(n)&notify=1"
        XCTAssertTrue(try get(t, ok).body == TLSFixture.pattern(n))
        let sink = SocketTransportTests.RecordingSink()
        XCTAssertTrue(try get(t, ok, sink: sink).bodyStreamed)
        XCTAssertTrue(Data(sink.bytes) == TLSFixture.pattern(n))
        let cut = "https://localhost:\(front.port)/__tls/eof?n=\(n)&notify=0"
        for streamed in [false, true] {
            XCTAssertThrowsError(try get(t, cut, sink: streamed ? SocketTransportTests.RecordingSink() : nil)) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.code, "ConnectionClosed", "\(String(describing: e))")
                XCTAssertTrue(e?.message.contains("without close_notify after \(n) body bytes") ?? false, "\(String(describing: e))")
                XCTAssertEqual(e?.isRetryable, true)
            }
        }
    }

    func testNoAnswerOverTLSIsATimeout() throws {
        let front = try TLSFront()
        let t = try TLSFixture.transport()
        let start = Date()
        XCTAssertThrowsError(try get(t, "https://localhost:\(front.port)/__tls/stall", timeout: 0.5)) { e in
            XCTAssertEqual((e as? AWSError)?.code, "Timeout", "\(e)")
            XCTAssertTrue((e as? AWSError)?.message.contains("no progress in 0.5 s") ?? false, "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    }

    // MARK: certificates and protocol versions

    func testRefusedCertificatesFailClearlyAndAreNotRetried() throws {
        let cases: [(cert: String, reason: String)] = [
            ("untrusted", "unable to get local issuer certificate"),
            ("other", "hostname mismatch (the certificate is not for localhost)"),
            ("expired", "certificate has expired"),
        ]
        for (cert, reason) in cases {
            let front = try TLSFront(cert: cert)
            let c = client("https://localhost:\(front.port)", transport: try TLSFixture.transport())
            XCTAssertThrowsError(try c.send(AWSRequest(method: "GET", path: "/b", operation: "ListObjectsV2"))) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.kind, .transport, cert)
                XCTAssertEqual(e?.code, "CertificateVerifyFailed", "\(cert): \(String(describing: e))")
                XCTAssertTrue(e?.message.contains("https://localhost:\(front.port)") ?? false, "\(cert): \(String(describing: e))")
                XCTAssertTrue(e?.message.contains(reason) ?? false, "\(cert): \(String(describing: e))")
                XCTAssertTrue(e?.message.contains("the test CA") ?? false, "\(cert): names the trust used: \(String(describing: e))")
                XCTAssertEqual(e?.isRetryable, false)
                XCTAssertEqual(e?.attempts, 1, "\(cert): not retried")
            }
            XCTAssertEqual(try front.count("connections"), 1, "\(cert): one attempt, no retry storm")
            XCTAssertEqual(try front.count("handshakes"), 0, cert)
        }
        // The test CA is in no system store: with the default trust, a good certificate is refused too.
        let front = try TLSFront()
        XCTAssertThrowsError(try get(try TLSFixture.transport(trust: .system), "https://localhost:\(front.port)/__tls/bytes?n=1")) { e in
            XCTAssertEqual((e as? AWSError)?.code, "CertificateVerifyFailed", "\(e)")
            XCTAssertTrue((e as? AWSError)?.message.contains("the system trust store") ?? false, "\(e)")
        }
    }

    func testIPLiteralsAreVerifiedAsAddressesAndGetNoSNI() throws {
        let front = try TLSFront()
        let t = try TLSFixture.transport()
        XCTAssertEqual(try get(t, "https://127.0.0.1:\(front.port)/__tls/bytes?n=3").body, TLSFixture.pattern(3))
        XCTAssertEqual(try front.list("sni"), ["(none)"], "no SNI for an IP literal")
        XCTAssertEqual(try get(t, "https://localhost:\(front.port)/__tls/bytes?n=3").body, TLSFixture.pattern(3))
        XCTAssertEqual(try front.list("sni"), ["(none)", "localhost"])
        // A certificate without the address.
        let other = try TLSFront(cert: "other")
        XCTAssertThrowsError(try get(t, "https://127.0.0.1:\(other.port)/__tls/bytes?n=1")) { e in
            XCTAssertEqual((e as? AWSError)?.code, "CertificateVerifyFailed", "\(e)")
            XCTAssertTrue((e as? AWSError)?.message.contains("IP address mismatch") ?? false, "\(e)")
        }
        // IPv6 in brackets (when this host has ::1).
        guard let v6 = try? TLSFront(host: "::1") else { return }
        XCTAssertEqual(try get(t, "https://[::1]:\(v6.port)/__tls/bytes?n=4").body, TLSFixture.pattern(4))
        XCTAssertEqual(try v6.count("handshakes"), 1)
        XCTAssertEqual(try v6.list("sni"), ["(none)"])
    }

    func testServersOfferingOnlyTLS10Or11AreRefusedAndTLS12IsAccepted() throws {
        let old = try TLSFront(["--tls-max", "1.1"])
        let c = client("https://localhost:\(old.port)", transport: try TLSFixture.transport())
        XCTAssertThrowsError(try c.send(AWSRequest(method: "GET", path: "/b", operation: "ListObjectsV2"))) { e in
            let e = e as? AWSError
            XCTAssertEqual(e?.code, "TLSHandshakeFailed", "\(String(describing: e))")
            XCTAssertTrue(e?.message.contains("requires TLS 1.2 or later") ?? false, "\(String(describing: e))")
            XCTAssertEqual(e?.isRetryable, false)
            XCTAssertEqual(e?.attempts, 1)
        }
        XCTAssertEqual(try old.count("handshakes"), 0)
        XCTAssertEqual(try old.count("connections"), 1)
        let tls12 = try TLSFront(["--tls-max", "1.2"])
        XCTAssertEqual(try get(try TLSFixture.transport(), "https://localhost:\(tls12.port)/__tls/bytes?n=2").body, TLSFixture.pattern(2))
        XCTAssertEqual(try tls12.list("versions"), ["TLSv1.2"])
    }

    // MARK: trust configuration

    func testTheCABundleComesFromAWS_CA_BUNDLEThenTheProfileAndAnUnreadableOneIsAnError() throws {
        let home = NSTemporaryDirectory() + "hsmb-tls-home-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: home + "/.aws", withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: home) }
        try Data("[default]\nregion = us-east-1\n[profile ops]\nca_bundle = ~/corp-ca.pem\n".utf8).write(to: URL(fileURLWithPath: home + "/.aws/config"))
        XCTAssertEqual(try TLSTrust.resolve(AWSEnvironment(variables: [:], home: home)), .system)
        XCTAssertEqual(try TLSTrust.resolve(AWSEnvironment(variables: ["AWS_PROFILE": "ops"], home: home)),
                       .bundle(path: home + "/corp-ca.pem", source: "ca_bundle in \(home)/.aws/config (profile ops)"))
        XCTAssertEqual(try TLSTrust.resolve(AWSEnvironment(variables: ["AWS_PROFILE": "ops", "AWS_CA_BUNDLE": "/etc/x.pem"], home: home)),
                       .bundle(path: "/etc/x.pem", source: "AWS_CA_BUNDLE"))

        // A bundle that cannot be used fails the request (configuration, not retried), never
        // falling back to another store, and before any connection is made.
        let front = try TLSFront()
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: home + "/garbage.pem"))
        for (path, why) in [(home + "/missing.pem", "cannot be read"), (home, "cannot be read"), (home + "/garbage.pem", "holds no certificate")] {
            let t = try TLSFixture.transport(trust: .bundle(path: path, source: "AWS_CA_BUNDLE"))
            XCTAssertThrowsError(try client("https://localhost:\(front.port)", transport: t).send(AWSRequest(method: "GET", path: "/", operation: "ListBuckets"))) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.kind, .configuration, path)
                XCTAssertEqual(e?.code, "InvalidCABundle", path)
                XCTAssertTrue(e?.message.contains("the CA bundle \(path) from AWS_CA_BUNDLE \(why)") ?? false, "\(String(describing: e))")
                XCTAssertEqual(e?.attempts, 1)
            }
        }
        XCTAssertEqual(try front.count("connections"), 0)
        // The same bundle that works, from a config profile.
        try FileManager.default.copyItem(atPath: try TLSFixture.pki() + "/ca.pem", toPath: home + "/corp-ca.pem")
        let t = try TLSFixture.transport(trust: try TLSTrust.resolve(AWSEnvironment(variables: ["AWS_PROFILE": "ops"], home: home)))
        XCTAssertEqual(try get(t, "https://localhost:\(front.port)/__tls/bytes?n=9").body, TLSFixture.pattern(9))
    }

    // MARK: proxies

    func testProxyVariablesAndNoProxyMatching() throws {
        let p = ProxySettings(variables: ["https_proxy": "http://alice:s%40cret@proxy.corp:3128/", "HTTPS_PROXY": "http://ignored:1",
                                          "http_proxy": "proxy2.corp", "no_proxy": " .internal.example, 10.0.0.0/8,fd00::/8, [fe80::5],*.bad,"])
        let https = try XCTUnwrap(try p.proxy(scheme: "https", host: "s3.eu-west-1.amazonaws.com"))
        XCTAssertEqual(https.hostPort, "proxy.corp:3128")
        XCTAssertEqual(https.source, "https_proxy")
        XCTAssertTrue(https.hasCredentials)
        XCTAssertFalse("\(https) \(p)".contains("s%40cret") || "\(https) \(p)".contains("s@cret") || "\(https) \(p)".contains("alice"), "\(https) \(p)")
        let http = try XCTUnwrap(try p.proxy(scheme: "http", host: "minio.lan"))
        XCTAssertEqual(http.hostPort, "proxy2.corp:1080", "no scheme is http; no port is 1080, as in libcurl")
        XCTAssertEqual(http.source, "http_proxy")
        for direct in ["internal.example", "s3.internal.example", "10.1.2.3", "fd00::5", "[fd00::5]", "fe80::5", "[fe80::5]", "INTERNAL.EXAMPLE."] {
            XCTAssertNil(try p.proxy(scheme: "https", host: direct), direct)
        }
        for proxied in ["notinternal.example", "11.0.0.1", "fe80::1", "localhost.evil.com", "127.0.0.1.example.com", "x.bad", "0.0.0.0"] {
            XCTAssertNotNil(try p.proxy(scheme: "https", host: proxied), proxied)
        }
        XCTAssertNil(try ProxySettings(variables: ["https_proxy": "http://p:1", "NO_PROXY": "*"]).proxy(scheme: "https", host: "anything"))
        XCTAssertNil(try ProxySettings(variables: ["https_proxy": "http://p:1"]).proxy(scheme: "http", host: "h"), "https_proxy is for https only")
        XCTAssertEqual(try ProxySettings(variables: ["https_proxy": "[::1]:8080"]).proxy(scheme: "https", host: "h")?.hostPort, "[::1]:8080")
        // Unsupported or malformed: a configuration error naming the variable, never the value.
        for bad in ["socks5://u:pw@p:1080", "https://u:pw@p:443", "http://u:pw@p:99999", "http://u:pw@:8080"] {
            XCTAssertThrowsError(try ProxySettings(variables: ["HTTPS_PROXY": bad]).proxy(scheme: "https", host: "h"), bad) { e in
                XCTAssertEqual((e as? AWSError)?.code, "InvalidProxy", bad)
                XCTAssertTrue((e as? AWSError)?.message.hasPrefix("HTTPS_PROXY: ") ?? false, "\(e)")
                XCTAssertFalse("\(e)".contains("pw"), "\(e)")
            }
        }
        // ... unless the host goes direct anyway.
        XCTAssertNil(try ProxySettings(variables: ["https_proxy": "socks5://p", "no_proxy": "h"]).proxy(scheme: "https", host: "h"))
    }

    /// A plain-HTTP server on 127.0.0.1 that records each request head and answers `body`.
    func recordingServer(_ body: String = "fine!") throws -> ScriptedHTTPServer {
        try ScriptedHTTPServer { c, _, s in
            guard let (head, _) = c.readRequest() else { return }
            s.record(head)
            c.write("HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body)
        }
    }

    func firstLines(_ server: ScriptedHTTPServer) -> [String] { server.heads.map { $0.components(separatedBy: "\r\n")[0] } }

    func forwards(_ proxy: ConnectProxy) throws -> [String] { try XCTUnwrap(try proxy.stats()["forwards"] as? [String]) }

    func testLoopbackDestinationsAreNeverProxied() throws {
        // KMS on http://localhost:4566 (moto, LocalStack) answers with plaintext data keys: through
        // an http_proxy they would cross the network in the clear. Loopback goes direct whatever
        // no_proxy says, for http and https alike.
        let settings = ProxySettings(variables: ["https_proxy": "http://proxy.corp:3128", "http_proxy": "http://proxy.corp:3128", "no_proxy": "corp.example"])
        for host in ["localhost", "LOCALHOST", "localhost.", "kms.localhost", "a.b.LOCALHOST.", "127.0.0.1", "127.1.2.3", "127.255.255.254",
                     "::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"] {
            for scheme in ["http", "https"] { XCTAssertNil(try settings.proxy(scheme: scheme, host: host), "\(scheme)://\(host)") }
        }
        for host in ["localhost.evil.com", "notlocalhost", "localhost-1", "xlocalhost", "127.0.0.1.example.com", "128.0.0.1", "126.255.255.255",
                     "::2", "0.0.0.0", "vm"] {
            XCTAssertNotNil(try settings.proxy(scheme: "http", host: host), host)
        }
        // A proxy variable that cannot be used does not concern a loopback destination either.
        XCTAssertNil(try ProxySettings(variables: ["https_proxy": "socks5://p:1080"]).proxy(scheme: "https", host: "localhost"))

        // On the wire: https to localhost and 127.0.0.1, http to 127.0.0.1 and localhost, with both
        // proxy variables set and no_proxy empty: the proxy sees nothing, the servers every request.
        let proxy = try ConnectProxy()
        let front = try TLSFront()
        let server = try recordingServer("local")
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(proxy.port)",
                                                                            "http_proxy": "http://127.0.0.1:\(proxy.port)", "no_proxy": ""]))
        XCTAssertEqual(try get(t, "https://localhost:\(front.port)/__tls/bytes?n=4").body, TLSFixture.pattern(4))
        XCTAssertEqual(try get(t, "https://127.0.0.1:\(front.port)/__tls/bytes?n=4").body, TLSFixture.pattern(4))
        for host in ["127.0.0.1", "localhost"] {
            XCTAssertEqual(String(decoding: try get(t, "http://\(host):\(server.port)/key").body, as: UTF8.self), "local", host)
        }
        XCTAssertEqual(try proxy.connects(), [])
        XCTAssertEqual(try forwards(proxy), [])
        XCTAssertEqual(try front.count("requests"), 2)
        XCTAssertEqual(firstLines(server), ["GET /key HTTP/1.1", "GET /key HTTP/1.1"], "origin form: straight to the server")
        // IPv6 loopback (when this host has ::1).
        if let v6 = try? TLSFront(host: "::1") {
            XCTAssertEqual(try get(t, "https://[::1]:\(v6.port)/__tls/bytes?n=2").body, TLSFixture.pattern(2))
            XCTAssertEqual(try v6.count("requests"), 1)
            XCTAssertEqual(try proxy.connects(), [])
        }
    }

    // 0.0.0.0 below: this host (Linux connects it to the loopback interface), but neither a loopback
    // name nor a loopback address, so whether it goes through the proxy is up to the variables.

    func testUppercaseHTTP_PROXYIsIgnoredAsLibcurlDoes() throws {
        // Under CGI, HTTP_PROXY is set from a request's `Proxy:` header (httpoxy): libcurl reads only
        // http_proxy for http://, and so does the transport. HTTPS_PROXY and NO_PROXY are read.
        XCTAssertNil(try ProxySettings(variables: ["HTTP_PROXY": "http://attacker.example:8080"]).proxy(scheme: "http", host: "minio.lan"))
        XCTAssertNil(try ProxySettings(variables: ["HTTP_PROXY": "socks5://attacker.example"]).proxy(scheme: "http", host: "minio.lan"),
                     "not read, so not an error either")
        XCTAssertEqual(try ProxySettings(variables: ["http_proxy": "http://p:1", "HTTP_PROXY": "http://q:2"]).proxy(scheme: "http", host: "minio.lan")?.hostPort, "p:1")
        XCTAssertEqual(try ProxySettings(variables: ["HTTPS_PROXY": "http://q:2"]).proxy(scheme: "https", host: "s3.amazonaws.com")?.source, "HTTPS_PROXY")
        XCTAssertNil(try ProxySettings(variables: ["HTTPS_PROXY": "http://q:2", "NO_PROXY": "amazonaws.com"]).proxy(scheme: "https", host: "s3.amazonaws.com"))
        XCTAssertNil(try ProxySettings(variables: ["http_proxy": "http://q:2", "NO_PROXY": "lan"]).proxy(scheme: "http", host: "minio.lan"))

        // On the wire: with HTTP_PROXY only, straight to the server; with http_proxy, through the proxy.
        let proxy = try ConnectProxy()
        let server = try recordingServer("direct")
        let upper = SocketHTTPTransport(proxies: ProxySettings(variables: ["HTTP_PROXY": "http://127.0.0.1:\(proxy.port)"]))
        XCTAssertEqual(String(decoding: try get(upper, "http://0.0.0.0:\(server.port)/o").body, as: UTF8.self), "direct")
        XCTAssertEqual(try forwards(proxy), [])
        XCTAssertEqual(firstLines(server), ["GET /o HTTP/1.1"])
        let lower = SocketHTTPTransport(proxies: ProxySettings(variables: ["http_proxy": "http://127.0.0.1:\(proxy.port)"]))
        XCTAssertEqual(String(decoding: try get(lower, "http://0.0.0.0:\(server.port)/o").body, as: UTF8.self), "direct")
        XCTAssertEqual(try forwards(proxy), ["GET http://0.0.0.0:\(server.port)/o HTTP/1.1"])
        XCTAssertEqual(server.heads.count, 2)
    }

    func testAStarInNoProxyBypassesEverythingOnlyAsTheWholeValue() throws {
        for whole in ["*", " * ", "\t*"] {
            XCTAssertNil(try ProxySettings(variables: ["https_proxy": "http://p:1", "no_proxy": whole]).proxy(scheme: "https", host: "s3.amazonaws.com"), whole)
        }
        for list in ["example.com,*", "*,example.com", " * , example.com", "*.example.com", ",*,"] {
            let p = ProxySettings(variables: ["https_proxy": "http://p:1", "http_proxy": "http://p:1", "no_proxy": list])
            XCTAssertNotNil(try p.proxy(scheme: "https", host: "s3.amazonaws.com"), list)
            XCTAssertNotNil(try p.proxy(scheme: "http", host: "minio.lan"), list)
        }
        XCTAssertNil(try ProxySettings(variables: ["https_proxy": "http://p:1", "no_proxy": "*,example.com"]).proxy(scheme: "https", host: "s3.example.com"),
                     "the other entries still apply")

        // On the wire: no_proxy=example.com,* leaves the proxy in use; NO_PROXY naming the host does not.
        let proxy = try ConnectProxy()
        let server = try recordingServer()
        let t = SocketHTTPTransport(proxies: ProxySettings(variables: ["http_proxy": "http://127.0.0.1:\(proxy.port)", "no_proxy": "example.com,*"]))
        XCTAssertEqual(String(decoding: try get(t, "http://0.0.0.0:\(server.port)/o").body, as: UTF8.self), "fine!")
        XCTAssertEqual(try forwards(proxy), ["GET http://0.0.0.0:\(server.port)/o HTTP/1.1"])
        let bypass = SocketHTTPTransport(proxies: ProxySettings(variables: ["http_proxy": "http://127.0.0.1:\(proxy.port)", "NO_PROXY": "example.com, 0.0.0.0"]))
        XCTAssertEqual(String(decoding: try get(bypass, "http://0.0.0.0:\(server.port)/p").body, as: UTF8.self), "fine!")
        XCTAssertEqual(try forwards(proxy).count, 1, "the proxy saw only the first")
        XCTAssertEqual(firstLines(server), ["GET /o HTTP/1.1", "GET /p HTTP/1.1"])
    }

    func testHTTPSThroughAConnectProxyWithAndWithoutCredentialsAndNoProxyBypass() throws {
        // proxied-host (a name in the test certificate) resolves nowhere but in the proxy (--map):
        // a request to it can only have gone through the proxy.
        let front = try TLSFront()
        let map = ["--map", "proxied-host=127.0.0.1"]
        let url = "https://proxied-host:\(front.port)/__tls/bytes?n=20000"
        // No credentials.
        let open = try ConnectProxy(map)
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(open.port)"]))
        XCTAssertTrue(try get(t, url).body == TLSFixture.pattern(20000))
        XCTAssertTrue(try get(t, url).body == TLSFixture.pattern(20000))
        XCTAssertEqual(try open.connects(), ["proxied-host:\(front.port)"], "one tunnel, reused")
        XCTAssertEqual(try front.count("handshakes"), 1)
        XCTAssertEqual(try front.list("sni"), ["proxied-host"], "TLS is with the endpoint, through the tunnel")

        // Basic credentials from the URL (percent-decoded), never in a message.
        let guarded = try ConnectProxy(["--auth", "ops:p@ss word"] + map)
        let good = try TLSFixture.transport(proxies: ProxySettings(variables: ["HTTPS_PROXY": "http://ops:p%40ss%20word@127.0.0.1:\(guarded.port)"]))
        XCTAssertTrue(try get(good, url).body == TLSFixture.pattern(20000))
        XCTAssertEqual(try guarded.connects(), ["proxied-host:\(front.port)"])
        XCTAssertEqual(try guarded.stats()["with_credentials"] as? [Bool], [true])
        for (proxyURL, hint) in [("http://ops:wrong-pw@127.0.0.1:\(guarded.port)", "refused the credentials in HTTPS_PROXY"),
                                 ("http://127.0.0.1:\(guarded.port)", "wants credentials")] {
            let bad = try TLSFixture.transport(proxies: ProxySettings(variables: ["HTTPS_PROXY": proxyURL]))
            XCTAssertThrowsError(try client("https://proxied-host:\(front.port)", transport: bad).send(AWSRequest(method: "GET", path: "/", operation: "ListBuckets"))) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.code, "ProxyConnectRefused", "\(String(describing: e))")
                XCTAssertTrue(e?.message.contains("the proxy 127.0.0.1:\(guarded.port) (from HTTPS_PROXY) refused CONNECT: HTTP 407") ?? false, "\(String(describing: e))")
                XCTAssertTrue(e?.message.contains(hint) ?? false, "\(String(describing: e))")
                XCTAssertFalse("\(String(describing: e))".contains("wrong-pw"))
                XCTAssertEqual(e?.isRetryable, false)
                XCTAssertEqual(e?.attempts, 1)
            }
        }
        XCTAssertEqual(try guarded.stats()["refused"] as? Int, 2)

        // NO_PROXY naming the host: straight to the endpoint, the proxy sees nothing. (0.0.0.0 is
        // not in the certificate: the handshake is refused, by the endpoint the request reached.)
        let bypass = try ConnectProxy(map)
        let direct = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(bypass.port)", "NO_PROXY": "example.com,0.0.0.0"]))
        let before = try front.count("connections")
        XCTAssertThrowsError(try get(direct, "https://0.0.0.0:\(front.port)/__tls/bytes?n=1")) { e in
            XCTAssertEqual((e as? AWSError)?.code, "CertificateVerifyFailed", "\(e)")
        }
        XCTAssertEqual(try bypass.connects(), [])
        XCTAssertEqual(try front.count("connections"), before + 1)

        // A proxy that cannot reach the endpoint answers 502: a transport failure, retryable.
        XCTAssertThrowsError(try get(t, "https://proxied-host:9/x")) { e in
            XCTAssertEqual((e as? AWSError)?.code, "ProxyConnectFailed", "\(e)")
            XCTAssertTrue((e as? AWSError)?.message.contains("HTTP 502") ?? false, "\(e)")
            XCTAssertEqual((e as? AWSError)?.isRetryable, true)
        }
        XCTAssertEqual(try open.connects(), ["proxied-host:\(front.port)", "proxied-host:9"])
    }

    func testATunnelToANameOnlyTheProxyKnowsIsVerifiedAgainstThatName() throws {
        // other.example resolves nowhere but in the proxy: the request can only have gone through
        // it, and the certificate (for other.example) was checked against the endpoint's name.
        let front = try TLSFront(cert: "other")
        let proxy = try ConnectProxy(["--map", "other.example=127.0.0.1"])
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(proxy.port)"]))
        XCTAssertEqual(try get(t, "https://other.example:\(front.port)/__tls/bytes?n=6").body, TLSFixture.pattern(6))
        XCTAssertEqual(try proxy.connects(), ["other.example:\(front.port)"])
        XCTAssertEqual(try front.list("sni"), ["other.example"])
    }

    func testPlainHTTPThroughAProxyInAbsoluteForm() throws {
        let server = try recordingServer()
        let proxy = try ConnectProxy(["--auth", "u:pw", "--map", "proxied-host=127.0.0.1"])
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["http_proxy": "http://u:pw@127.0.0.1:\(proxy.port)"]))
        XCTAssertEqual(String(decoding: try get(t, "http://proxied-host:\(server.port)/bucket/a%20b?list-type=2").body, as: UTF8.self), "fine!")
        XCTAssertEqual(try forwards(proxy), ["GET http://proxied-host:\(server.port)/bucket/a%20b?list-type=2 HTTP/1.1"])
        XCTAssertEqual(try proxy.stats()["with_credentials"] as? [Bool], [true])
        let lines = try XCTUnwrap(server.heads.first).components(separatedBy: "\r\n")
        XCTAssertEqual(lines[0], "GET /bucket/a%20b?list-type=2 HTTP/1.1")
        XCTAssertTrue(lines.contains("Host: proxied-host:\(server.port)"), "\(lines)")
        XCTAssertFalse(lines.contains { $0.lowercased().hasPrefix("proxy-") }, "\(lines)")
    }

    func testS3OverHTTPSThroughAProxyWithSignatureChecks() throws {
        let moto = try MotoTransportTests.server()
        let front = try TLSFront(upstream: moto.endpoint.absoluteString)
        let proxy = try ConnectProxy(["--auth", "ops:pw", "--map", "proxied-host=127.0.0.1"])
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://ops:pw@127.0.0.1:\(proxy.port)"]))
        // A host without a dot: moto takes the bucket from the path (as for localhost).
        try MotoTransportTests.s3Requests(through: t, server: .init(endpoint: URL(string: "https://proxied-host:\(front.port)")!, credentials: moto.credentials))
        XCTAssertEqual(try proxy.connects(), ["proxied-host:\(front.port)"])
        XCTAssertEqual(try front.count("handshakes"), 1)
    }

    // MARK: endpoint hosts

    func testHostsThatAreNotNamesOrAddressesAreRefusedBeforeAnyConnection() throws {
        // url.host is percent-decoded: a CR LF there would split the CONNECT line, Host and the
        // absolute-form request line; a NUL would cut the name short where C reads it.
        // (The proxy maps the names that decode to something it could look up: had a request
        // reached it, it would not have gone further than this host.)
        let proxy = try ConnectProxy(["proxied-host", "a_b.invalid", "a..b"].flatMap { ["--map", "\($0)=127.0.0.1"] })
        let server = try recordingServer()
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(proxy.port)",
                                                                            "http_proxy": "http://127.0.0.1:\(proxy.port)"]))
        let cases: [(url: String, shown: String)] = [
            ("https://x%0D%0AX-Evil%3A%20y/", "x%0D%0AX-Evil%3A%20y"),
            ("http://x%0D%0AX-Evil%3A%20y:\(server.port)/", "x%0D%0AX-Evil%3A%20y"),
            ("http://127.0.0.1%00.evil.example:\(server.port)/", "127.0.0.1%00.evil.example"),
            ("http://localhost%00.evil.example:\(server.port)/", "localhost%00.evil.example"),
            ("https://proxied%2Dhost/", "proxied%2Dhost"),
            ("https://a_b.invalid/", "a_b.invalid"),
            ("http://a..b:\(server.port)/", "a..b"),
            ("http://[fe80::1%25lo]:\(server.port)/", "fe80::1%25lo"),
        ]
        for (url, shown) in cases {
            XCTAssertThrowsError(try get(t, url, timeout: 2), url) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.kind, .configuration, "\(url): \(String(describing: e))")
                XCTAssertEqual(e?.code, "InvalidEndpoint", "\(url): \(String(describing: e))")
                XCTAssertTrue(e?.message.contains(shown) ?? false, "\(url): \(String(describing: e))")
                XCTAssertFalse(e?.message.contains { $0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false } ?? true, "\(url): \(String(describing: e))")
                XCTAssertEqual(e?.isRetryable, false)
            }
        }
        XCTAssertEqual(try proxy.connects(), [])
        XCTAssertEqual(try forwards(proxy), [])
        XCTAssertEqual(server.accepted, 0)
        // The same rule for endpoints from the command line, the environment and the config file.
        for bad in ["https://x%0D%0AX-Evil%3A%20y", "http://127.0.0.1%00.evil.example:4566", "http://a_b.example", "http://[fe80::1%25eth0]:4566",
                    "https://s3%2Eamazonaws.com", "http://a\u{1B}[2Jb:4566", "http://-:80", "http://a.-b.example"] {
            XCTAssertThrowsError(try AWSConfiguration.parse(bad, source: "AWS_ENDPOINT_URL"), bad) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.kind, .configuration, bad)
                XCTAssertEqual(e?.code, "InvalidEndpoint", bad)
                XCTAssertTrue(e?.message.contains("from AWS_ENDPOINT_URL") ?? false, "\(String(describing: e))")
                XCTAssertFalse(e?.message.contains { $0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false } ?? true, "\(String(describing: e))")
            }
        }
        for good in ["http://127.0.0.1:4566", "http://localhost:4566", "http://[::1]:4566", "https://s3.eu-west-1.amazonaws.com",
                     "https://minio-1.internal.example:9000/", "http://10.0.0.5:9000", "https://LOCALHOST.", "http://proxied-host:8080/base"] {
            XCTAssertNoThrow(try AWSConfiguration.parse(good, source: "test"), good)
        }
    }

    func testShorthandIPv4HostsAreRefusedBeforeAnyConnection() throws {
        // getaddrinfo reads these as 127.0.0.1 (inet_aton); to the loopback rule, no_proxy and the
        // certificate check they would be names, so with http_proxy set a request would have gone
        // to the proxy in cleartext. They are refused (InvalidEndpoint) before any connection.
        let proxy = try ConnectProxy()
        let server = try recordingServer("local")
        let t = try TLSFixture.transport(proxies: ProxySettings(variables: ["https_proxy": "http://127.0.0.1:\(proxy.port)",
                                                                            "http_proxy": "http://127.0.0.1:\(proxy.port)", "no_proxy": ""]))
        let forms = ["127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "127.000.000.001", "0x7F000001", "127.0.1", "127.1.", "1.2.3", "0"]
        for host in forms {
            XCTAssertFalse(AWSConfiguration.isValidHost(host), host)
            for url in ["http://\(host):\(server.port)/key", "https://\(host):\(server.port)/key"] {
                XCTAssertThrowsError(try get(t, url, timeout: 2), url) { e in
                    let e = e as? AWSError
                    XCTAssertEqual(e?.kind, .configuration, "\(url): \(String(describing: e))")
                    XCTAssertEqual(e?.code, "InvalidEndpoint", "\(url): \(String(describing: e))")
                    XCTAssertTrue(e?.message.contains(host) ?? false, "\(url): \(String(describing: e))")
                    XCTAssertEqual(e?.isRetryable, false)
                }
            }
            XCTAssertThrowsError(try AWSConfiguration.parse("http://\(host):4566", source: "AWS_ENDPOINT_URL"), host) { e in
                XCTAssertEqual((e as? AWSError)?.code, "InvalidEndpoint", host)
            }
        }
        XCTAssertEqual(try proxy.connects(), [])
        XCTAssertEqual(try forwards(proxy), [])
        XCTAssertEqual(server.accepted, 0)
        // The loopback rule reads IPv4 as the resolver does (for callers that do not validate).
        for host in ["127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "127.000.000.001", "[127.1]"] {
            XCTAssertTrue(ProxySettings.isLoopback(host), host)
        }
        for host in ["128.1", "0x80.0.0.1", "2147483648", "0200.0.0.1", "0", "127.0.0.1 x", "1e2"] {
            XCTAssertFalse(ProxySettings.isLoopback(host), host)
        }
        // The plain forms still go direct with both proxy variables set.
        for host in ["127.0.0.1", "localhost"] {
            XCTAssertTrue(AWSConfiguration.isValidHost(host), host)
            XCTAssertEqual(String(decoding: try get(t, "http://\(host):\(server.port)/key").body, as: UTF8.self), "local", host)
        }
        XCTAssertTrue(AWSConfiguration.isValidHost("[::1]"))
        XCTAssertEqual(firstLines(server), ["GET /key HTTP/1.1", "GET /key HTTP/1.1"], "origin form: straight to the server")
        if let v6 = try? TLSFront(host: "::1") {
            XCTAssertEqual(try get(t, "https://[::1]:\(v6.port)/__tls/bytes?n=2").body, TLSFixture.pattern(2))
            XCTAssertEqual(try v6.count("requests"), 1)
        }
        XCTAssertEqual(try proxy.connects(), [])
        XCTAssertEqual(try forwards(proxy), [])
        for good in ["http://127.0.0.1:4566", "http://localhost:4566", "http://[::1]:4566", "http://10.0.0.5:9000", "https://s3.eu-west-1.amazonaws.com",
                     "https://0x7f.example:9000", "https://1.2.3.example"] {
            XCTAssertNoThrow(try AWSConfiguration.parse(good, source: "test"), good)
        }
    }

    // MARK: a peer that trickles a TLS record

    /// A TLS server (Python's ssl over memory BIOs, so it controls every byte on the wire) that
    /// answers each request with records whose bytes go out one at a time, `pace` seconds apart:
    /// libssl has no complete record, hence no plaintext, until the last one.
    /// `/record`: the whole answer (head and a 100-byte body) in one record, trickled.
    /// `/body`: the head and 2000 body bytes at once, then a record of the last 200, trickled.
    static let trickleServer = #"""
    import socket, ssl, sys, threading, time
    cert, key, pace = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    print(ls.getsockname()[1], flush=True)

    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(120)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        t = ctx.wrap_bio(inc, out, server_side=True)
        def send(paced=False):
            data = out.read()
            if not paced:
                c.sendall(data)
                return
            for i in range(len(data)):
                c.sendall(data[i:i + 1])
                time.sleep(pace)
        def call(f, *a):
            while True:
                try:
                    return f(*a)
                except ssl.SSLWantReadError:
                    send()
                    b = c.recv(65536)
                    if not b:
                        raise EOFError()
                    inc.write(b)
        try:
            call(t.do_handshake)
            send()
            req = b""
            while b"\r\n\r\n" not in req:
                req += call(t.read, 65536)
            send()
            path = req.split(b" ")[1]
            if path == b"/record":
                t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"r" * 100)
                send(paced=True)
            elif path == b"/body":
                t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2200\r\n\r\n" + b"a" * 2000)
                send()
                t.write(b"b" * 200)
                send(paced=True)
            time.sleep(30)
        except Exception:
            pass
        finally:
            c.close()

    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """#

    func testAPeerTricklingOneTLSRecordIsStoppedAtTheDeadlineNotDaysLater() throws {
        // One byte every 0.25 s, well within each read's timeout: libssl asks for more after each
        // byte, and had every poll waited a whole `timeout` afresh, one record of a few hundred
        // bytes at a byte per 59 s would hold a request for hours. Each read now waits up to one
        // absolute bound: its own `timeout` in all, the request deadline, the progress window.
        let pki = try TLSFixture.pki()
        let server = try HelperProcess(arguments: ["-c", Self.trickleServer, pki + "/localhost.pem", pki + "/localhost.key", "0.25"])
        let base = "https://localhost:\(server.ports[0])"
        func expectTimeout(_ t: SocketHTTPTransport, _ path: String, timeout: TimeInterval, sink: HTTPBodySink? = nil,
                           within bound: TimeInterval, saying text: String, line: UInt = #line) {
            let start = Date()
            XCTAssertThrowsError(try get(t, base + path, timeout: timeout, sink: sink), line: line) { e in
                let e = e as? AWSError
                XCTAssertEqual(e?.kind, .transport, "\(String(describing: e))", line: line)
                XCTAssertEqual(e?.code, "Timeout", "\(String(describing: e))", line: line)
                XCTAssertTrue(e?.message.contains(text) ?? false, "\(String(describing: e))", line: line)
            }
            XCTAssertLessThan(Date().timeIntervalSince(start), bound, path, line: line)
        }
        // The request deadline (1.5 s), each read allowed 5 s.
        expectTimeout(try TLSFixture.transport(requestDeadline: 1.5), "/record", timeout: 5, within: 4, saying: "took longer than 1.5 s")
        // One read's timeout (1 s) in all, not per poll.
        expectTimeout(try TLSFixture.transport(), "/record", timeout: 1, within: 3, saying: "no progress in 1.0 s")
        // A streamed body: the progress window (1000 bytes in 1 s), each read allowed 10 s.
        let streaming = SocketHTTPTransport(maximumIdleConnectionsPerHost: 0, requestDeadline: 1800, minimumProgressBytes: 1000, progressWindow: 1,
                                            trust: try TLSFixture.trust(), proxies: .direct)
        let sink = SocketTransportTests.RecordingSink()
        expectTimeout(streaming, "/body", timeout: 10, sink: sink, within: 5, saying: "fewer than the 1000 required")
        XCTAssertEqual(sink.bytes.count, 2000)
    }
}
