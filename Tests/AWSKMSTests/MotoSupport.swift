import AWSCore
import AWSKMS
import Foundation
import XCTest

/// The moto server that `make test` starts (scripts/aws/with-moto.sh; scripts/aws/moto.sh
/// documents the variables). Without it these tests skip, or fail under
/// HSMBACKUP_REQUIRE_EXTERNAL=1.
struct Moto {
    let endpoint: URL
    let region: String
    let account: String
    let accessKeyID: String
    let secretAccessKey: String
    let venv: String

    static func require(file: StaticString = #filePath, line: UInt = #line) throws -> Moto {
        let env = ProcessInfo.processInfo.environment
        guard let e = env["HSMBACKUP_TEST_AWS_ENDPOINT"], let endpoint = URL(string: e), let akid = env["HSMBACKUP_TEST_AWS_ACCESS_KEY_ID"],
              let secret = env["HSMBACKUP_TEST_AWS_SECRET_ACCESS_KEY"], let venv = env["HSMBACKUP_TEST_AWS_VENV"] else {
            let why = "no moto server: run through `make test` or scripts/aws/with-moto.sh (HSMBACKUP_TEST_AWS_* unset)"
            if env["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" { throw MissingExternal(why + ", and HSMBACKUP_REQUIRE_EXTERNAL=1") }
            throw XCTSkip(why)
        }
        return Moto(endpoint: endpoint, region: env["HSMBACKUP_TEST_AWS_REGION"] ?? "us-east-1",
                    account: env["HSMBACKUP_TEST_AWS_ACCOUNT"] ?? "123456789012", accessKeyID: akid, secretAccessKey: secret, venv: venv)
    }

    var credentials: AWSCredentials {
        AWSCredentials(accessKeyID: accessKeyID, secretAccessKey: AWSSecretKey(secretAccessKey), source: "moto")
    }

    /// The environment a child process (hsmbackup, aws, aws-encryption-cli) gets to reach moto.
    func processEnvironment(secret: String? = nil) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        for k in env.keys where k.hasPrefix("AWS_") { env.removeValue(forKey: k) }
        env["AWS_ACCESS_KEY_ID"] = accessKeyID
        env["AWS_SECRET_ACCESS_KEY"] = secret ?? secretAccessKey
        env["AWS_ENDPOINT_URL"] = endpoint.absoluteString
        env["AWS_REGION"] = region
        env["AWS_DEFAULT_REGION"] = region
        env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/credentials"
        env["AWS_CONFIG_FILE"] = "/nonexistent/config"
        return env
    }

    /// An AWSEnvironment for library calls (no process variables involved).
    var environment: AWSEnvironment {
        AWSEnvironment(variables: ["AWS_ENDPOINT_URL_KMS": endpoint.absoluteString, "AWS_REGION": region], home: "/nonexistent")
    }

    func kms(transport: HTTPTransport = DefaultHTTPTransport.shared, credentials: AWSCredentials? = nil) -> KMSClient {
        KMSClient(client: AWSClient(service: "kms", region: region, endpoint: endpoint, credentials: credentials ?? self.credentials,
                                    signingOptions: .standard, transport: transport, retry: RetryPolicy(maximumAttempts: 3)))
    }

    /// A fresh symmetric key; returns its ARN.
    func createKey(_ description: String = "hsmbackup test") throws -> String {
        try kms().createKey(description: description).arn
    }

    func keyring(_ id: String, transport: HTTPTransport = DefaultHTTPTransport.shared) throws -> AWSKMSKeyring {
        try AWSKMSKeyring.make(id, credentials: credentials, environment: environment, transport: transport, retry: RetryPolicy(maximumAttempts: 3))
    }
}

/// A test that needs moto fails with this (instead of skipping) under HSMBACKUP_REQUIRE_EXTERNAL=1.
struct MissingExternal: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Runs a program with an environment; captures stdout, stderr and the exit status.
struct ProcessRun: CustomStringConvertible {
    let command: [String]
    let stdout: String
    let stderr: String
    let status: Int32

    var description: String { "$ \(command.joined(separator: " "))\n\(stdout)[stderr] \(stderr)[exit \(status)]" }

    static func run(_ executable: String, _ args: [String], environment: [String: String], cwd: String? = nil) throws -> ProcessRun {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.environment = environment
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let tmp = FileManager.default.temporaryDirectory
        let out = tmp.appendingPathComponent("kms-out-\(UUID().uuidString)"), err = tmp.appendingPathComponent("kms-err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: err) }
        let o = try FileHandle(forWritingTo: out), e = try FileHandle(forWritingTo: err)
        p.standardOutput = o
        p.standardError = e
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try o.close(); try e.close()
        return ProcessRun(command: [URL(fileURLWithPath: executable).lastPathComponent] + args,
                          stdout: String(decoding: try Data(contentsOf: out), as: UTF8.self),
                          stderr: String(decoding: try Data(contentsOf: err), as: UTF8.self), status: p.terminationStatus)
    }
}

/// The hsmbackup binary built next to the test bundle.
enum HSMBackupBinary {
    static var path: String {
        if let o = ProcessInfo.processInfo.environment["HSMBACKUP_BIN"] { return o }
        let bundle = Bundle(for: Marker.self).bundleURL
        for dir in [bundle, bundle.deletingLastPathComponent()] {
            let c = dir.appendingPathComponent("hsmbackup")
            if FileManager.default.isExecutableFile(atPath: c.path) { return c.path }
        }
        return bundle.deletingLastPathComponent().appendingPathComponent("hsmbackup").path
    }
    private final class Marker {}
}

/// A transport that passes every request to the socket transport and keeps a copy of what was sent.
final class RecordingTransport: HTTPTransport, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var requests: [HTTPRequest] = []
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        // A copy of the body: KMSClient zeroes an Encrypt body (it holds the data key) where it
        // lies once the call is over, which would reach a recorded copy sharing its storage.
        var kept = request
        kept.body = Data([UInt8](request.body))
        lock.lock(); requests.append(kept); lock.unlock()
        return try SocketHTTPTransport.shared.send(request)
    }
    var operations: [String] { requests.compactMap { $0.headers["x-amz-target"] } }
    func json(_ i: Int) -> [String: Any] { (try? JSONSerialization.jsonObject(with: requests[i].body)) as? [String: Any] ?? [:] }
}
