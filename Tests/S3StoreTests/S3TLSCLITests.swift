// The CLI end to end over HTTPS: an S3 store on `https://localhost:PORT` and an AWS KMS key on
// the same kind of endpoint, both through scripts/tls/tlsfront.py (TLS with a throwaway test CA
// from scripts/tls/testpki.sh) in front of moto (signature checks on), trusted through
// AWS_CA_BUNDLE. Then the ways it must fail: a CA that did not sign the server's certificate
// (exit 74, each request one attempt: no retries), a CA bundle that cannot be read (exit 64, no
// connection), and no bundle at all (the system store does not know the test CA: 74). Also
// proxies (scripts/tls/connectproxy.py): never for the loopback endpoints, whatever the variables
// say; through HTTPS_PROXY for an endpoint off loopback (a name only the proxy knows), where a
// proxy variable the transport cannot use is exit 64 (its password never printed). Needs
// moto (scripts/aws/with-moto.sh), python3 and openssl; skips without them, fails under
// HSMBACKUP_REQUIRE_EXTERNAL=1.
import AWSCore
import Foundation
import XCTest

final class S3TLSCLITests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var binary: URL { S3CLITests.binary }

    /// Runs a program, capturing stdout, stderr and the exit code.
    static func run(_ executable: String, _ args: [String], env: [String: String]) throws -> (out: String, err: String, code: Int32) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.environment = env
        let dir = FileManager.default.temporaryDirectory
        let out = dir.appendingPathComponent("s3tls-\(UUID().uuidString)"), err = dir.appendingPathComponent("s3tls-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: err) }
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return (String(decoding: try Data(contentsOf: out), as: UTF8.self), String(decoding: try Data(contentsOf: err), as: UTF8.self), p.terminationStatus)
    }

    /// The test PKI (scripts/tls/testpki.sh) in a fresh directory.
    func makePKI(_ root: String) throws -> String {
        for tool in ["python3", "openssl"] where !(ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
            .contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }) {
            let why = "\(tool) is not on PATH"
            if ProcessInfo.processInfo.environment["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" { XCTFail(why); throw XCTSkip("failed: " + why) }
            throw XCTSkip(why)
        }
        let pki = root + "/pki"
        let r = try Self.run("/usr/bin/env", ["bash", Self.repository.appendingPathComponent("scripts/tls/testpki.sh").path, pki],
                             env: ProcessInfo.processInfo.environment)
        XCTAssertEqual(r.code, 0, r.err)
        return pki
    }

    /// scripts/tls/tlsfront.py in front of `upstream` (or, with `proxy`, scripts/tls/connectproxy.py);
    /// stopped when released.
    final class Front {
        let process = Process()
        let port: Int
        let statsPort: Int

        init(pki: String, upstream: String, proxy: Bool = false, extra: [String] = []) throws {
            let ports = try proxy ? startPythonHelper(process, script: "scripts/tls/connectproxy.py", extra)
                : startPythonHelper(process, script: "scripts/tls/tlsfront.py",
                                    ["--cert", pki + "/localhost.pem", "--key", pki + "/localhost.key", "--upstream", upstream] + extra)
            guard ports.count == (proxy ? 1 : 2) else { process.terminate(); throw XCTSkip("a helper server did not start") }
            (port, statsPort) = (ports[0], proxy ? ports[0] : ports[1])
        }

        deinit {
            process.terminate()
            process.waitUntilExit()
        }

        func stats() throws -> [String: Any] {
            let t = SocketHTTPTransport(maximumIdleConnectionsPerHost: 0, proxies: .direct)
            let path = port == statsPort ? "/__proxy/stats" : "/stats"
            let r = try t.send(HTTPRequest(method: "GET", url: URL(string: "http://127.0.0.1:\(statsPort)\(path)")!))
            return try XCTUnwrap(try JSONSerialization.jsonObject(with: r.body) as? [String: Any])
        }

        func count(_ key: String) throws -> Int { try XCTUnwrap(try stats()[key] as? Int, key) }
    }

    /// A KMS key on moto (over plain HTTP, straight to moto: only its use goes through TLS).
    func createKMSKey(_ moto: Moto) throws -> String {
        let kms = AWSClient(service: "kms", region: moto.region, endpoint: URL(string: moto.endpoint)!, credentials: moto.credentials,
                            transport: SocketHTTPTransport(proxies: .direct))
        var h = HTTPHeaders()
        h.add("X-Amz-Target", "TrentService.CreateKey")
        h.add("Content-Type", "application/x-amz-json-1.1")
        var r = AWSRequest(method: "POST", headers: h, body: Data(#"{"Description":"hsmbackup TLS CLI test"}"#.utf8), operation: "CreateKey")
        r.idempotent = false
        let doc = try JSONSerialization.jsonObject(with: try kms.send(r).body) as? [String: Any]
        return try XCTUnwrap((doc?["KeyMetadata"] as? [String: Any])?["Arn"] as? String)
    }

    func testStoreInitBackupCreateAndVerifyOverHTTPSAndTheWaysTLSMustFail() throws {
        let moto = try Moto.require()
        let root = NSTemporaryDirectory() + "hsmb-s3tls-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let pki = try makePKI(root)
        let front = try Front(pki: pki, upstream: moto.endpoint)
        let arn = try createKMSKey(moto)
        let endpoint = "https://localhost:\(front.port)"

        // The child's environment: moto's credentials, the test CA as AWS_CA_BUNDLE, KMS on the
        // TLS endpoint too; nothing AWS_* or proxy-related inherited.
        var base = ProcessInfo.processInfo.environment.filter {
            !$0.key.hasPrefix("AWS_") && !["http_proxy", "https_proxy", "no_proxy"].contains($0.key.lowercased())
        }
        base["HSMBACKUP_HOME"] = root + "/home"
        base["AWS_ACCESS_KEY_ID"] = moto.accessKeyID
        base["AWS_SECRET_ACCESS_KEY"] = moto.secretAccessKey
        base["AWS_REGION"] = moto.region
        base["AWS_CONFIG_FILE"] = "/nonexistent"
        base["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
        base["AWS_ENDPOINT_URL_KMS"] = endpoint
        base["AWS_CA_BUNDLE"] = pki + "/ca.pem"
        @discardableResult
        func hsmbackup(_ code: Int32, _ args: [String], _ extra: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> (out: String, err: String) {
            let r = try Self.run(Self.binary.path, args, env: base.merging(extra) { $1 })
            XCTAssertEqual(r.code, code, "$ hsmbackup \(args.joined(separator: " "))\n\(r.out)[stderr] \(r.err)", file: file, line: line)
            XCTAssertFalse(r.out.contains(moto.secretAccessKey) || r.err.contains(moto.secretAccessKey), "a secret in the output", file: file, line: line)
            return (r.out, r.err)
        }

        let bucket = Moto.bucketName("tls")
        XCTAssertTrue(try hsmbackup(0, ["store", "init", "--s3", "s3://\(bucket)/hsm/fleet", "--endpoint", endpoint]).out.contains("created S3 store"))
        let src = root + "/hsm-src"
        try hsmbackup(0, ["manufacturer", "create", "acme"])
        try hsmbackup(0, ["operator", "init"])
        try hsmbackup(0, ["hsm", "create", src, "--manufacturer", "acme", "--model", "M1", "--serial", "S1", "--cluster", "c1"])
        try hsmbackup(0, ["hsm", "populate", src, "--keys", "12", "--users", "3", "--seed", "11"])
        let created = try hsmbackup(0, ["backup", "create", "--hsm", src, "--kms-key", arn, "--json"]).out
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(created.utf8)) as? [String: Any])?["backupId"] as? String, created)
        XCTAssertTrue(try hsmbackup(0, ["backup", "list"]).out.contains(id))
        let verified = try hsmbackup(0, ["verify", id, "--level", "full", "--hsm", src, "--kms-key", arn]).out
        XCTAssertTrue(verified.contains("PASS"), verified)

        // All of it over TLS: S3 and the KMS calls (GenerateDataKey on create, Decrypt on verify).
        let stats = try front.stats()
        XCTAssertEqual(stats["handshake_failures"] as? Int, 0)
        XCTAssertGreaterThan(stats["requests"] as? Int ?? 0, 10)
        XCTAssertEqual(Set(stats["versions"] as? [String] ?? []), ["TLSv1.3"])
        let targets = stats["amz_targets"] as? [String] ?? []
        XCTAssertTrue(targets.contains("TrentService.GenerateDataKey"), "\(targets)")
        XCTAssertTrue(targets.contains("TrentService.Decrypt"), "\(targets)")

        // A CA that did not sign the server's certificate: 74, the reason, and no retries: each
        // request is one attempt (the client would make 8 of a retryable failure, with backoff).
        // The store asks for the replica marker once per operation of the command that needs a
        // replica (7 for `backup list`, each a single connection refused at the handshake).
        var before = try front.count("connections")
        let started = Date()
        let wrong = try hsmbackup(74, ["backup", "list"], ["AWS_CA_BUNDLE": pki + "/untrusted-ca.pem"]).err
        XCTAssertTrue(wrong.contains("CertificateVerifyFailed"), wrong)
        XCTAssertTrue(wrong.contains("https://localhost:\(front.port)"), wrong)
        XCTAssertTrue(wrong.contains("unable to get local issuer certificate"), wrong)
        XCTAssertTrue(wrong.contains("untrusted-ca.pem (AWS_CA_BUNDLE)"), wrong)
        XCTAssertFalse(wrong.contains("attempts"), "retried: \(wrong)")
        let refused = try front.count("connections") - before
        XCTAssertGreaterThanOrEqual(refused, 1)
        XCTAssertLessThan(refused, 8, "a retry storm: \(refused) connections")
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
        // (The server counts a failed handshake once it has read the client's alert.)
        let settled = Date().addingTimeInterval(5)
        while try front.count("handshake_failures") < refused && Date() < settled { usleep(20_000) }
        XCTAssertEqual(try front.count("handshake_failures"), refused)

        // No bundle: the system store, which does not hold the test CA.
        before = try front.count("connections")
        var noBundle = base
        noBundle.removeValue(forKey: "AWS_CA_BUNDLE")
        let system = try Self.run(Self.binary.path, ["backup", "list"], env: noBundle)
        XCTAssertEqual(system.code, 74, system.err)
        XCTAssertTrue(system.err.contains("the system trust store"), system.err)
        XCTAssertLessThan(try front.count("connections") - before, 8)
        // The system store is OpenSSL's default locations: SSL_CERT_FILE moves them (to the test
        // CA here), and a good chain then passes without AWS_CA_BUNDLE.
        let moved = try Self.run(Self.binary.path, ["backup", "list"], env: noBundle.merging(["SSL_CERT_FILE": pki + "/ca.pem"]) { $1 })
        XCTAssertEqual(moved.code, 0, moved.err)
        XCTAssertTrue(moved.out.contains(id), moved.out)

        // A bundle that cannot be read: 64 (a configuration error, as for a KMS key), and no
        // connection at all; for `store init` too.
        before = try front.count("connections")
        for args in [["backup", "list"], ["verify", id, "--level", "structure"],
                     ["--home", root + "/home2", "store", "init", "--s3", "s3://\(bucket)-2/x", "--endpoint", endpoint]] {
            let unreadable = try hsmbackup(64, args, ["AWS_CA_BUNDLE": root + "/no-such-ca.pem"]).err
            XCTAssertTrue(unreadable.contains("the CA bundle \(root)/no-such-ca.pem from AWS_CA_BUNDLE cannot be read"), unreadable)
        }
        XCTAssertEqual(try front.count("connections") - before, 0)

        // Proxies. The store and the KMS endpoint are on localhost, and loopback never goes through
        // a proxy, whatever NO_PROXY says (a plain-http KMS on loopback would otherwise hand the
        // proxy the data keys in the clear): the proxy sees nothing, and a proxy variable the
        // transport could not use does not concern these endpoints.
        let proxy = try Front(pki: pki, upstream: "", proxy: true, extra: ["--map", "proxied-host=127.0.0.1"])
        let via = "http://127.0.0.1:\(proxy.port)"
        XCTAssertTrue(try hsmbackup(0, ["backup", "list"], ["HTTPS_PROXY": via, "http_proxy": via]).out.contains(id))
        XCTAssertTrue(try hsmbackup(0, ["verify", id, "--level", "full", "--hsm", src, "--kms-key", arn],
                                    ["https_proxy": via, "no_proxy": ""]).out.contains("PASS"))
        XCTAssertEqual(try proxy.stats()["connects"] as? [String], [])
        XCTAssertEqual(try proxy.stats()["forwards"] as? [String], [])
        XCTAssertTrue(try hsmbackup(0, ["backup", "list"], ["https_proxy": "socks5://user:hunter2@127.0.0.1:1080"]).out.contains(id))
        // An endpoint off loopback goes through HTTPS_PROXY (CONNECT), as behind a corporate proxy:
        // proxied-host is in the test certificate and known only to the proxy (a name without a dot,
        // so moto takes the bucket from the path). A proxy variable the transport cannot use is then
        // a configuration error (64) naming it, its password never printed.
        let home3 = root + "/home3"
        XCTAssertTrue(try hsmbackup(0, ["--home", home3, "store", "init", "--s3", "s3://\(bucket)-3/x", "--endpoint", "https://proxied-host:\(front.port)"],
                                    ["HTTPS_PROXY": via]).out.contains("created S3 store"))
        try hsmbackup(0, ["--home", home3, "backup", "list"], ["HTTPS_PROXY": via])
        let connects = try proxy.stats()["connects"] as? [String] ?? []
        XCTAssertFalse(connects.isEmpty)
        XCTAssertEqual(Set(connects), ["proxied-host:\(front.port)"])
        let socks = try hsmbackup(64, ["--home", home3, "backup", "list"], ["https_proxy": "socks5://user:hunter2@127.0.0.1:1080"]).err
        XCTAssertTrue(socks.contains("InvalidProxy") && socks.contains("https_proxy"), socks)
        XCTAssertFalse(socks.contains("hunter2"), socks)
        XCTAssertEqual(try proxy.stats()["connects"] as? [String] ?? [], connects)

        // And the right bundle, direct, still works.
        XCTAssertTrue(try hsmbackup(0, ["backup", "list"]).out.contains(id))
    }

    func testAnEndpointHostThatIsNotANameOrAnAddressIsAUsageError() throws {
        // A percent-encoded CR LF in the host would have split the request head; refused before
        // anything is sent (no server is needed: nothing may be contacted), and shown escaped.
        let root = NSTemporaryDirectory() + "hsmb-s3host-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
        env["HSMBACKUP_HOME"] = root + "/home"
        env["AWS_ACCESS_KEY_ID"] = "AKIDEXAMPLE"
        env["AWS_SECRET_ACCESS_KEY"] = "secret"
        env["AWS_CONFIG_FILE"] = "/nonexistent"
        env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
        for endpoint in ["https://x%0D%0AX-Evil%3A%20y", "http://127.0.0.1%00.evil.example:9000", "http://a_b.invalid:9000"] {
            let r = try Self.run(Self.binary.path, ["store", "init", "--s3", "s3://bucket-x/p", "--endpoint", endpoint], env: env)
            XCTAssertEqual(r.code, 64, "\(endpoint): \(r.err)")
            XCTAssertTrue(r.err.contains("is not a DNS name or an IP address"), "\(endpoint): \(r.err)")
            XCTAssertFalse(r.err.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "\(endpoint): \(r.err)")
        }
    }
}
