// The S3 store's tests run against a real moto server on loopback, started by `make test`
// (scripts/aws/with-moto.sh exports HSMBACKUP_TEST_AWS_*). Without it they skip, or fail when
// HSMBACKUP_REQUIRE_EXTERNAL=1 (as `make test` sets).
import AWSCore
import BackupCrypto
import ByteCoding
import Foundation
import ObjectStore
@testable import S3Store
import XCTest

struct Moto {
    let endpoint: String
    let region: String
    let accessKeyID: String
    let secretAccessKey: String
    let venv: String

    /// The server the harness started, or a skip (a failure under HSMBACKUP_REQUIRE_EXTERNAL=1).
    static func require() throws -> Moto {
        let env = ProcessInfo.processInfo.environment
        guard let e = env["HSMBACKUP_TEST_AWS_ENDPOINT"], let k = env["HSMBACKUP_TEST_AWS_ACCESS_KEY_ID"],
              let s = env["HSMBACKUP_TEST_AWS_SECRET_ACCESS_KEY"] else {
            let why = "no moto server: HSMBACKUP_TEST_AWS_* not set (run through `make test` or scripts/aws/with-moto.sh)"
            if env["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" { XCTFail(why); throw XCTSkip("failed: " + why) }
            throw XCTSkip(why)
        }
        return Moto(endpoint: e, region: env["HSMBACKUP_TEST_AWS_REGION"] ?? "us-east-1", accessKeyID: k, secretAccessKey: s,
                    venv: env["HSMBACKUP_TEST_AWS_VENV"] ?? "")
    }

    var credentials: AWSCredentials { AWSCredentials(accessKeyID: accessKeyID, secretAccessKey: AWSSecretKey(secretAccessKey)) }

    /// A transport with short backoff (the retries are counted, not timed).
    func transport(secret: String? = nil, clock: AWSClock = AWSCore.SystemClock()) -> AWSCoreS3Transport {
        let creds = secret.map { AWSCredentials(accessKeyID: accessKeyID, secretAccessKey: AWSSecretKey($0)) } ?? credentials
        return AWSCoreS3Transport(credentials: creds, retry: RetryPolicy(maximumAttempts: 8, baseDelay: 0.01, maximumDelay: 0.05), clock: clock)
    }

    /// The environment a CLI child needs to reach moto with these credentials.
    var cliEnvironment: [String: String] {
        ["AWS_ACCESS_KEY_ID": accessKeyID, "AWS_SECRET_ACCESS_KEY": secretAccessKey, "AWS_REGION": region,
         "AWS_ENDPOINT_URL_S3": endpoint, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"]
    }

    static func bucketName(_ tag: String) -> String {
        "hsmb-\(tag)-" + Hex.encode(SecureRandom.bytes(count: 5))
    }

    /// A store of `count` fresh buckets (prefix `p/x`) on `endpoint` (default: moto itself).
    func makeStore(replicas count: Int = 3, quorum: Int? = nil, endpoint: String? = nil, transport: AWSCoreS3Transport? = nil,
                   tag: String = "t", home: String? = nil) throws -> (S3ObjectStore, S3StoreConfiguration) {
        let url = endpoint ?? self.endpoint
        let replicas = try (0..<count).map { _ in
            S3StoreConfiguration.Replica(location: try S3Location(bucket: Self.bucketName(tag), prefix: "p/x"),
                                         endpoint: S3Endpoint(url: url, region: region))
        }
        // 7 MiB parts: the smallest the store takes, so the multipart tests stay small.
        let config = try S3StoreConfiguration(storeId: SecureRandom.bytes(count: 16), writeQuorum: quorum ?? (count / 2 + 1),
                                              replicas: replicas, partSize: 7 << 20)
        let root = home ?? NSTemporaryDirectory() + "hsmb-s3-" + UUID().uuidString
        let store = try StoreLocator.createS3(root: root, configuration: config, transport: transport ?? self.transport())
        return (store, config)
    }

    /// A raw request to moto (out-of-band changes the store did not make).
    func raw(_ method: String, _ bucket: String, _ key: String = "", query: [(String, String)] = [], body: [UInt8] = []) throws -> S3Response {
        try transport().send(S3Request(method: method, bucket: bucket, key: key, query: query, body: body),
                             endpoint: S3Endpoint(url: endpoint, region: region))
    }

    /// Deletes a bucket and everything in it (a lost replica).
    func destroyBucket(_ bucket: String) throws {
        let list = try raw("GET", bucket, query: [("list-type", "2")])
        for k in XMLScan(list.body).all("Key") { _ = try raw("DELETE", bucket, k) }
        let uploads = try raw("GET", bucket, query: [("uploads", "")])
        for u in XMLScan(uploads.body).blocks("Upload") {
            _ = try raw("DELETE", bucket, u.first("Key")!, query: [("uploadId", u.first("UploadId")!)])
        }
        let r = try raw("DELETE", bucket)
        XCTAssertTrue(r.isSuccess, "delete bucket \(bucket): \(r.status) \(String(decoding: r.body, as: UTF8.self))")
    }
}

/// Deterministic bytes for a test object.
func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: n)
    for i in 0..<n {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

/// Starts `python3 SCRIPT ARGS` (SCRIPT relative to the repository) and returns the numbers on
/// the first line it prints: the helper servers under scripts/ print their ports there.
func startPythonHelper(_ process: Process, script: String, _ arguments: [String]) throws -> [Int] {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(script).path
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", path] + arguments
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    var line = [UInt8]()
    while true {
        let b = out.fileHandleForReading.readData(ofLength: 1)
        guard let c = b.first, c != 0x0a else { break }
        line.append(c)
    }
    return String(decoding: line, as: UTF8.self).split(separator: " ").compactMap { Int($0) }
}

/// A fault proxy (scripts/s3/faultproxy.py) in front of moto, stopped when released.
final class FaultProxy {
    let process = Process()
    let url: String

    init(upstream: String, arguments: [String]) throws {
        let ports = try startPythonHelper(process, script: "scripts/s3/faultproxy.py", [upstream] + arguments)
        guard ports.count == 1 else { throw StoreError(.ioError, "the fault proxy did not start") }
        url = "http://127.0.0.1:\(ports[0])"
    }

    func stats() throws -> [String: Int] {
        let data = try control(URL(string: url + "/__faultproxy/stats")!)
        return (try JSONSerialization.jsonObject(with: data) as? [String: Int]) ?? [:]
    }

    /// GET of one of the proxy's own control paths (through the project's HTTP client: there is
    /// no FoundationNetworking, so `Data(contentsOf:)` reads files only).
    func control(_ url: URL) throws -> Data {
        let t = SocketHTTPTransport(maximumIdleConnectionsPerHost: 0, proxies: .direct)
        let r = try t.send(HTTPRequest(method: "GET", url: url))
        guard r.status == 200 else { throw StoreError(.ioError, "the fault proxy answered \(r.status) to \(url.path)") }
        return r.body
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
    }
}

/// A clock `offset` seconds away from the system's (a machine whose clock is wrong).
struct OffsetClock: AWSClock {
    let offset: TimeInterval
    func now() -> Date { Date().addingTimeInterval(offset) }
}

/// Wraps the real transport: HEAD answers 404 for `hidden` keys (so a put's pre-check does not
/// see an object and the create-only PUT itself must refuse it).
final class HidingTransport: S3Transport, @unchecked Sendable {
    let inner: S3Transport
    let hidden: String
    init(_ inner: S3Transport, hiding key: String) { self.inner = inner; hidden = key }
    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        if r.method == "HEAD", r.key.hasSuffix("/" + hidden), !r.key.contains(".hsmbackup") { return S3Response(status: 404, headers: [:], body: []) }
        return try inner.send(r, endpoint: endpoint)
    }
}
